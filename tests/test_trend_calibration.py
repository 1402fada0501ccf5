"""The model-error table of the zone projections: shipped, validated, applied, learned,
and replaceable by a plant's own (`online.trend_calibration`)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from ballpass.config import ConfigError, OnlinePolicy, parse
from ballpass.stream.online import trend
from ballpass.stream.online.model import Observation, SensorModel
from ballpass.stream.online.trend import (
    DAY_S,
    IDENTITY,
    CalibrationError,
    Fit,
    ModelError,
    learn_calibration,
    load_calibration,
    parse_calibration,
    project,
)

ROOT = Path(__file__).resolve().parents[1]


def document(bins: list[tuple[float, float, float, float, float]],
             zones: tuple[str, ...] = ("D",)) -> dict:
    """A table document from (x_lo, x_hi, p05, p50, p95) rows."""
    rows = [{"x_lo": a, "x_hi": b, "count": 10, "p05": p05, "p50": p50, "p95": p95}
            for a, b, p05, p50, p95 in bins]
    return {"format": trend.CALIBRATION_FORMAT, "version": trend.CALIBRATION_VERSION,
            "provenance": {"command": "test"},
            "zones": {z: {"bins": copy.deepcopy(rows)} for z in zones}}


TWO_BINS = [(0.1, 1.0, 0.5, 0.8, 1.5), (1.0, 4.0, 0.3, 1.6, 3.0)]


def write(tmp_path: Path, doc: object, name: str = "table.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_the_shipped_table_loads_with_its_provenance() -> None:
    cal = load_calibration()
    assert cal.source == str(trend.DEFAULT_CALIBRATION.resolve())
    assert set(cal.zones) == {"C", "D"}
    prov = cal.provenance
    # Learned on simulated fleets of seeds 100-119, never on the reported seeds 0-19.
    assert prov["seeds"] == [100, 119] and "--first-seed 100" in prov["command"]
    assert prov["git_commit"] and prov["date"]
    raw = json.loads(trend.DEFAULT_CALIBRATION.read_text(encoding="utf-8"))
    for zone in ("C", "D"):
        counts = [b["count"] for b in raw["zones"][zone]["bins"]]
        assert 5 <= len(counts) <= 8 and min(counts) >= 100, (zone, counts)
    # The package data of an installed wheel includes it.
    py = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "trend_calibration.json" in py["tool"]["setuptools"]["package-data"][
        "ballpass.stream.online"]


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d["zones"].pop("D"), "zones"),
    (lambda d: d["zones"]["D"]["bins"][1].update(p50=0.2), "zones.D.bins[1]"),
    (lambda d: d["zones"]["D"]["bins"][0].pop("count"), "zones.D.bins[0].count"),
    (lambda d: d["zones"]["D"]["bins"][1].update(x_lo=1.5), "zones.D.bins[1].x_lo"),
    (lambda d: d["zones"]["D"]["bins"][0].update(p95="big"), "zones.D.bins[0].p95"),
    (lambda d: d["zones"].update(E=d["zones"]["D"]), "zones.E"),
])
def test_a_bad_table_is_refused_naming_the_file_and_the_key(tmp_path: Path, edit,
                                                            key: str) -> None:
    doc = document(TWO_BINS)
    edit(doc)
    path = write(tmp_path, doc)
    with pytest.raises(CalibrationError) as e:
        load_calibration(path)
    assert str(e.value).startswith(f"{path}: {key}:"), str(e.value)


def test_an_unreadable_or_non_json_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"missing\.json: cannot read"):
        load_calibration(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"bad\.json: not valid JSON"):
        load_calibration(bad)


def a_fit(rate_per_day: float = 0.5, spread: float = 0.1) -> Fit:
    """E(t) = 0.5·exp(rate·t) with slope bounds ±`spread` (relative), baseline 0.9 mm/s."""
    r = rate_per_day / DAY_S
    return Fit(r * (1 - spread), r, r * (1 + spread), 0.5, 0.9, 0.0, 0.5, 0.5)


def test_the_projection_applies_p50_and_the_band_of_the_bin_of_x() -> None:
    err = parse_calibration(document(TWO_BINS), "test").zone("D")
    fit = a_fit()
    for boundary in (1.2, 4.5):
        x = trend.extrapolation(fit, boundary)
        assert x is not None
        raw = project(fit, boundary)
        p = project(fit, boundary, error=err)
        assert raw is not None and p is not None and raw.hi is not None and p.hi is not None
        assert raw.days == pytest.approx(x / 0.5)  # ln-distance over the rate (days)
        f05, f50, f95 = (0.5, 0.8, 1.5) if x <= 1.0 else (0.3, 1.6, 3.0)
        assert p.days == pytest.approx(f50 * raw.days)
        # At least the band, and at least the slope's own interval.
        assert p.lo == pytest.approx(min(raw.lo, f05 * raw.days))
        assert p.hi == pytest.approx(max(raw.hi, f95 * raw.days))
    assert trend.extrapolation(fit, 1.2) < 1.0 < trend.extrapolation(fit, 4.5)  # type: ignore[operator]
    # A loose slope: its upper bound is beyond the band's and is kept.
    loose = a_fit(spread=0.8)
    raw, p = project(loose, 4.5), project(loose, 4.5, error=err)
    assert raw is not None and p is not None and raw.hi is not None
    assert raw.hi > 3.0 * raw.days and p.hi == raw.hi
    assert p.lo == pytest.approx(0.3 * raw.days) and p.lo < raw.lo
    # Outside the learned range of x the end bins hold (no extrapolation of the table).
    assert err.factors(0.01) == (0.5, 0.8, 1.5) and err.factors(40.0) == (0.3, 1.6, 3.0)
    assert err.factors(math.inf) == (0.3, 1.6, 3.0)
    # Already there: 0, whatever the table.
    assert project(fit, 0.95, error=err) == project(fit, 0.95) == trend.Interval(0.0, 0.0, 0.0)
    assert IDENTITY.factors(2.0) == (1.0, 1.0, 1.0)


def test_learning_from_triples_recovers_known_ratios(tmp_path: Path) -> None:
    """Four equally common extrapolation lengths, each with its own truth / estimate
    (log-normal scatter σ = 0.1): four bins recover the medians and the 5 %/95 % points."""
    rng = np.random.default_rng(3)
    ratios = (0.5, 0.8, 1.2, 2.0)
    triples = []
    for k, f in enumerate(ratios):
        for _ in range(2000):
            x = 0.5 + k + 0.2 * rng.random()
            raw = 1.0 + 9.0 * rng.random()
            triples.append((x, raw, raw * f * math.exp(0.1 * rng.standard_normal())))
    triples += [(1.0, 0.0, 3.0), (1.0, 2.0, -1.0)]  # nothing to learn from: left out
    doc = learn_calibration({"D": triples, "C": triples}, 4, {"command": "test"})
    bins = doc["zones"]["D"]["bins"]
    assert [b["count"] for b in bins] == [2000] * 4
    assert doc["zones"]["D"]["estimates"] == 8000
    cal = load_calibration(write(tmp_path, doc))  # the round trip through the file
    for k, f in enumerate(ratios):
        f05, f50, f95 = cal.zone("D").factors(0.6 + k)
        assert f50 == pytest.approx(f, rel=0.02)
        assert f05 == pytest.approx(f * math.exp(-0.1645), rel=0.03)
        assert f95 == pytest.approx(f * math.exp(0.1645), rel=0.03)
    with pytest.raises(ValueError, match="3 estimates for 4 bins"):
        learn_calibration({"D": triples[:3]}, 4, {})


def test_a_table_without_zone_c_serves_zone_c_with_zone_d() -> None:
    cal = parse_calibration(document(TWO_BINS, zones=("D",)), "test")
    assert cal.zone("C") is cal.zone("D")
    both = document(TWO_BINS, zones=("C", "D"))
    both["zones"]["C"]["bins"][0]["p50"] = 0.9
    cal = parse_calibration(both, "test")
    assert cal.zone("C").factors(0.5)[1] == 0.9 and cal.zone("D").factors(0.5)[1] == 0.8


def site(table: str) -> dict:
    return {"site": {"id": "plant1"},
            "asset": [{"id": "m1", "kind": "motor", "bearing": "SKF 6205", "shaft_hz": 25.0,
                       "online": {"trend_calibration": table}}],
            "gateway": [{"id": "gw1", "sensor": [{
                "id": "s1", "driver": "simulated", "asset": "m1", "fs_hz": 25600,
                "window_samples": 8192, "interval_s": 1.0}]}]}


def test_the_config_key_points_at_a_plants_table(tmp_path: Path) -> None:
    good = write(tmp_path, document(TWO_BINS), "plant.json")
    config = parse(site("plant.json"), base=tmp_path)  # relative to the config file
    assert config.asset("m1").online.trend_calibration == good
    assert parse(site(str(good))).asset("m1").online.trend_calibration == good
    assert OnlinePolicy().trend_calibration is None  # the shipped table
    doc = document(TWO_BINS)
    doc["zones"]["D"]["bins"][0]["p05"] = -1.0
    bad = write(tmp_path, doc, "bad.json")
    with pytest.raises(ConfigError) as e:
        parse(site(str(bad)))
    assert e.value.errors == [f"asset[0].online.trend_calibration: {bad}: zones.D.bins[0]: "
                              "need 0 < p05 <= p50 <= p95, got -1.0, 0.8, 1.5"]
    toml = tmp_path / "site.toml"
    toml.write_text(
        '[site]\nid = "plant1"\n\n[[asset]]\nid = "m1"\nkind = "motor"\n'
        'bearing = "SKF 6205"\n[asset.online]\ntrend_calibration = "bad.json"\n\n'
        '[[gateway]]\nid = "gw1"\n[[gateway.sensor]]\nid = "s1"\ndriver = "simulated"\n'
        'asset = "m1"\nfs_hz = 25600\nwindow_samples = 8192\ninterval_s = 1.0\n',
        encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "check-config", str(toml)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "asset[0].online.trend_calibration: " in r.stderr and "bad.json" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_sensor_model_uses_the_configured_table(tmp_path: Path) -> None:
    """Two models see the same exponential rise; one with an identity table, one with a
    plant's table that doubles every projection: their days differ by that factor."""
    ident = write(tmp_path, document([(0.0, 50.0, 1.0, 1.0, 1.0)], ("C", "D")), "id.json")
    double = write(tmp_path, document([(0.0, 50.0, 1.0, 2.0, 4.0)], ("C", "D")), "x2.json")
    models = [SensorModel(OnlinePolicy(learn_hours=12.0, learn_windows=60,
                                       trend_calibration=p), 2.8, 4.5)
              for p in (ident, double)]
    rng = np.random.default_rng(14)
    t0, onset = 1_767_225_600.0, DAY_S
    out = []
    for k in range(int(3.0 * DAY_S / 600.0)):
        t = k * 600.0
        e = 0.4 * math.exp((t - onset) / (2.0 * DAY_S)) if t >= onset else 0.0
        v = math.hypot(0.9, e) * (1.0 + 0.03 * rng.standard_normal())
        feats = {"rms_g": 0.08, "peak_g": 0.3, "crest": 4.0, "kurtosis": 3.0,
                 "velocity_rms_mm_s": v, "bpfo_snr_db": 3.0, "bpfi_snr_db": 3.0,
                 "bsf_snr_db": 3.0, "ftf_snr_db": 3.0, "hf_floor": 0.01, "x1_g": 0.003,
                 "x2_g": 0.001}
        out = [m.update(Observation(int((t0 + t) * 1e9), k, 25.0, feats)) for m in models]
    a, b = (r.days_to_zone_d for r in out)
    assert a is not None and b is not None and a.days > 0
    assert b.days == pytest.approx(2.0 * a.days)
    assert b.hi is not None and b.hi >= 4.0 * a.days
    c = out[1].days_to_zone_c
    assert c is not None and out[0].days_to_zone_c is not None
    assert c.days == pytest.approx(2.0 * out[0].days_to_zone_c.days)


def test_model_error_table_is_piecewise_constant_between_edges() -> None:
    err = ModelError((1.0, 2.0), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    assert [err.factors(x)[1] for x in (0.5, 1.0, 1.01, 2.0, 2.5)] == [1.0, 1.0, 2.0, 2.0, 3.0]
