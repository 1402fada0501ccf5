"""Windows in revolutions: the default window from the sample rate and the shaft speed
(`models.window`), and where it is used (evaluation specs, the site config, check-config,
the simulated agitator scenario)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ballpass.config import ConfigError, parse
from ballpass.models import window as mw
from ballpass.models.window import MAX_WINDOW_SAMPLES, default_window_samples
from ballpass.simulators.record import (
    AGITATOR_SHAFTS_HZ,
    REFERENCE_SHAFTS_HZ,
    write_record,
    write_speed_spec,
)
from ballpass.stream import thresholds as th
from ballpass.stream.evaluate import evaluate_record, run, summary
from ballpass.stream.recordings import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_rule_agrees_with_the_diagnosis() -> None:
    # models may not import the stream: the two copies of the minimum must agree.
    assert mw.MIN_REVOLUTIONS == th.MIN_REVOLUTIONS
    assert 1.0 / mw.MIN_REVOLUTIONS <= th.MAX_RESOLUTION_SHAFT_FRACTION


@pytest.mark.parametrize("fs", [1000.0, 10000.0, 12000.0, 25600.0, 48800.0, 100000.0])
@pytest.mark.parametrize("shaft", [0.5, 1.0, 1.5, 7.0, 25.0, 29.95, 60.0, 100.0, 400.0])
def test_default_window_meets_the_diagnosis_rules(fs: float, shaft: float) -> None:
    n, reason = default_window_samples(fs, shaft)
    assert n & (n - 1) == 0 and 16 <= n <= MAX_WINDOW_SAMPLES
    revs = n * shaft / fs
    assert revs >= th.MIN_REVOLUTIONS
    assert fs / n <= th.MAX_RESOLUTION_SHAFT_FRACTION * shaft
    assert f"{n} samples" in reason and "revolutions" in reason
    if n > mw.MIN_SAMPLES:  # the smallest power of two with the target: half is too short
        assert (n // 2) * shaft / fs < mw.TARGET_REVOLUTIONS


def test_cwru_default_is_unchanged_and_the_issue_rig_gets_enough_revolutions() -> None:
    assert default_window_samples(12000.0, 29.95)[0] == 8192
    n, reason = default_window_samples(48800.0, 25.0)
    assert n == 65536 and n * 25.0 / 48800.0 >= mw.TARGET_REVOLUTIONS, reason


def test_cap_falls_back_to_the_minimum_then_to_the_cap() -> None:
    n, reason = default_window_samples(100000.0, 1.0, cap=1 << 20)
    assert n == 1 << 19 and n * 1.0 / 100000.0 >= mw.MIN_REVOLUTIONS
    assert "cap" in reason
    n, reason = default_window_samples(100000.0, 0.1, cap=1 << 20)
    assert n == 1 << 20 and "fewer than" in reason


@pytest.mark.parametrize("fs, shaft", [(0.0, 25.0), (12000.0, math.nan), (12000.0, -1.0)])
def test_bad_rates_are_named(fs: float, shaft: float) -> None:
    with pytest.raises(ValueError, match=r"fs_hz|shaft_hz"):
        default_window_samples(fs, shaft)


def _spec(path: Path, fs: float, shaft: float, label: str, **extra: object) -> list:
    return parse_spec({"recording": [{"path": str(path), "key": "signal", "fs_hz": fs,
                                      "shaft_hz": shaft, "label": label,
                                      "bearing": "SKF 6205", **extra}]})


def test_issue_rig_insufficient_with_8192_diagnosed_with_no_window(tmp_path: Path) -> None:
    # The issue's report: 48.8 kHz, 25 Hz shaft; a fixed 8192-sample window spans 4.2
    # revolutions and every window said insufficient_data.
    f = write_record(tmp_path / "or.npz", "outer_race", "SKF 6205", 25.0, 48800.0, 4.0, seed=3)
    rec = _spec(f, 48800.0, 25.0, "outer_race")[0]
    assert rec.window == 65536 and rec.window_reason.startswith("default window 65536")
    old = evaluate_record(replace(rec, window=8192))
    assert old.predicted == "insufficient_data" and "4.2 revolutions" in old.reason
    new = evaluate_record(rec)
    assert new.predicted == "outer_race", new.reason
    given = _spec(f, 48800.0, 25.0, "outer_race", window=16384)[0]
    assert given.window == 16384 and "given" in given.window_reason


CELLS = [(fs, shaft) for fs in (10000.0, 25600.0, 48800.0, 100000.0)
         for shaft in (1.0, 3.0, 10.0, 30.0, 100.0)]
FAULTS = ("outer_race", "inner_race", "ball", "normal")


@pytest.mark.slow
def test_any_rate_and_speed_gets_a_real_diagnosis_with_no_window(tmp_path: Path) -> None:
    """10-100 kHz × 1-100 Hz shafts, one fault per cell (rotating through the fault set),
    one default window each: every record is diagnosed as its fault."""
    wrong = []
    for k, (fs, shaft) in enumerate(CELLS):
        fault = FAULTS[k % len(FAULTS)]
        n, _ = default_window_samples(fs, shaft)
        f = write_record(tmp_path / f"{k}.npz", fault, "SKF 6205", shaft, fs, (n + 1) / fs,
                         seed=k)
        rec = _spec(f, fs, shaft, fault)[0]
        r = evaluate_record(rec)
        assert r.windows == 1
        if not r.correct:
            wrong.append((fs, shaft, fault, r.predicted, r.reason))
    assert not wrong


@pytest.mark.slow
def test_agitators_at_60_to_120_rpm_score_as_well_as_at_1500(tmp_path: Path) -> None:
    """The agitator scenario (`ballpass simulate agitators`) and the same machines at 1500
    r/min, scored as `ballpass evaluate` scores them (record vote, accuracy per group)."""
    spec = write_speed_spec(tmp_path, AGITATOR_SHAFTS_HZ + REFERENCE_SHAFTS_HZ, windows=2)
    recs = load_spec(spec)
    assert all(r.window_reason.startswith("default") for r in recs)
    data = summary(run(recs))
    groups = data["groups"]
    ref = groups["1500 r/min"]["accuracy"]
    slow = [groups[f"{s * 60:g} r/min"]["accuracy"] for s in AGITATOR_SHAFTS_HZ]
    assert ref >= 5 / 6, groups["1500 r/min"]
    assert min(slow) >= ref, {g: v["confusion"] for g, v in groups.items()}


def _site(sensor: dict, shaft: float | None = 25.0) -> dict:
    asset = {"id": "m1", "kind": "agitator", "bearing": "SKF 6205"}
    if shaft is not None:
        asset["shaft_hz"] = shaft
    return {"site": {"id": "plant1"}, "asset": [asset],
            "gateway": [{"id": "gw1", "sensor": [{"id": "s1", "driver": "simulated",
                                                 "asset": "m1", "fs_hz": 25600,
                                                 "interval_s": 60.0, **sensor}]}]}


def test_site_config_window_defaults_from_the_asset_speed() -> None:
    s = parse(_site({}, shaft=1.0)).gateways[0].sensors[0]
    assert s.window_samples == default_window_samples(25600.0, 1.0)[0] == 524288
    assert s.window_reason.startswith("default window 524288")
    s = parse(_site({"window_samples": 4096})).gateways[0].sensors[0]
    assert s.window_samples == 4096 and "given" in s.window_reason


def test_site_config_window_needs_a_speed_or_samples() -> None:
    with pytest.raises(ConfigError) as e:
        parse(_site({}, shaft=None))
    assert e.value.errors == ["gateway[0].sensor[0].window_samples: is required (asset m1 "
                              "has no shaft_hz, from which the default follows)"]
    with pytest.raises(ConfigError) as e:  # 20 s of 1 Hz shaft do not fit a 10 s interval
        parse(_site({"interval_s": 10.0}, shaft=1.0))
    assert e.value.errors[0].startswith("gateway[0].sensor[0].interval_s: must be >= "
                                        "window_samples / fs_hz = 20.48 s")


def test_check_config_says_which_window_and_why() -> None:
    r = subprocess.run([sys.executable, "-m", "ballpass", "check-config",
                        str(ROOT / "examples" / "site.toml")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert ("gateway gw-r01 sensor r01-agitator-de: default window 32768 samples = 1.28 s "
            "= 31.7 revolutions") in lines[1]
    assert lines[2] == "gateway gw-r01 sensor r01-pump-de: window_samples = 16384 given"


def test_evaluate_prints_one_window_line_per_record(tmp_path: Path) -> None:
    f = write_record(tmp_path / "n.npz", "normal", "SKF 6205", 2.0, 10000.0, 30.0, seed=1)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[[recording]]\npath = "{f.name}"\nkey = "signal"\nfs_hz = 10000\n'
                    'shaft_hz = 2.0\nlabel = "normal"\nbearing = "SKF 6205"\n',
                    encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "evaluate", str(spec)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("recording[0] n.npz: default window 131072 samples"), first
    assert "all records: 1/1 correct" in r.stdout


def test_speed_estimate_down_to_60_rpm() -> None:
    from ballpass.models.catalog import lookup
    from ballpass.models.speed import estimate_shaft_hz
    from ballpass.simulators.signals import synthesize
    from ballpass.stream.dsp.spectrum import amplitude_spectrum

    orders = lookup("SKF 6205").orders()
    for shaft in (1.0, 1.37):
        n, _ = default_window_samples(10000.0, shaft)
        x = synthesize("imbalance", orders, shaft, 10000.0, n, looseness=0.3,
                       rng=np.random.default_rng(1))
        est = estimate_shaft_hz(amplitude_spectrum(x[None, :]), 10000.0 / n)
        assert est.reliable and abs(est.shaft_hz - shaft) < 0.005 * shaft, est


def test_remote_config_keeps_the_default_or_names_its_override() -> None:
    from ballpass.gateway.remote import ConfigRejected, parse_remote

    gw = parse(_site({}, shaft=1.0)).gateways[0]
    base = gw.sensors[0]
    same, _ = parse_remote(b'{"sensors": {"s1": {"interval_s": 30}}}', gw).sensors["s1"]
    assert same.window_samples == base.window_samples == 524288
    assert same.window_reason == base.window_reason
    new, _ = parse_remote(b'{"sensors": {"s1": {"window_samples": 65536}}}', gw).sensors["s1"]
    assert new.window_samples == 65536 and "remote config" in new.window_reason
    with pytest.raises(ConfigRejected) as e:  # the long default still has to fit
        parse_remote(b'{"sensors": {"s1": {"interval_s": 5}}}', gw)
    assert e.value.errors[0].startswith("sensors.s1.interval_s: must be >= window_samples")
