"""Sensor conditions (issue 15): a broken or badly wired sensor is a `sensor_fault` with a
reason, never a machine fault, and the real CWRU records raise none of them.

Before: saturation with under 1 % of samples on the rails and soft clipping read
imbalance, the wire's clipped flag was ignored, 20-100 g white noise read lubrication,
electrical spikes read unknown_anomaly, mains hum read misalignment, and a 5e-6 g channel
read normal.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ballpass import wire
from ballpass.config import parse
from ballpass.models.catalog import lookup
from ballpass.simulators.signals import synthesize
from ballpass.stream.diagnosis import diagnose
from ballpass.stream.evaluate import windows_of
from ballpass.stream.features import extract
from ballpass.stream.pipeline import Incoming, Pipeline
from ballpass.stream.recordings import load_spec, read_signal

FS, N = 25600.0, 16384
SHAFT = 22.0  # no shaft harmonic within 3 bins of 50, 60 Hz or their odd harmonics
ORDERS = lookup("SKF 6205").orders()
REPO = Path(__file__).resolve().parent.parent
CWRU_SPEC = REPO / "evaluation" / "cwru.toml"


def _machine(condition: str = "normal", seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return scale * synthesize(condition, ORDERS, SHAFT, FS, N, rng=rng,
                              severity=0.0 if condition == "normal" else 1.0)


def _saturated(rail_share: float, rail_g: float, soft_g: float = 0.0) -> np.ndarray:
    """An imbalanced machine scaled so that `rail_share` of its samples pass `rail_g`, then
    clipped there, with `soft_g` of ADC noise added after the rail (soft clipping)."""
    x = _machine("imbalance", 1)
    x *= rail_g / np.quantile(np.abs(x), 1.0 - rail_share)
    rng = np.random.default_rng(2)
    return np.clip(x, -rail_g, rail_g) + soft_g * rng.standard_normal(N)


def _hum(mains_hz: float, amp_g: float) -> np.ndarray:
    t = np.arange(N) / FS
    return _machine() + amp_g * sum(a * np.sin(2 * np.pi * k * mains_hz * t)
                                    for k, a in ((1, 1.0), (3, 0.4), (5, 0.2)))


def _spiked(heights_g: tuple[float, ...]) -> np.ndarray:
    x = _machine()
    where = np.random.default_rng(3).choice(N, len(heights_g), replace=False)
    x[where] += heights_g
    return x


CASES = {
    "saturated at 2 g, 0.5 % on the rails": (_saturated(0.005, 2.0), "saturated"),
    "saturated at 16 g, 0.2 % on the rails": (_saturated(0.002, 16.0), "saturated"),
    "soft clipping at 2 g (1 LSB of noise)": (_saturated(0.005, 2.0, 2.0 / 32768), "saturated"),
    "white noise 20 g": (_machine() + 20.0 * np.random.default_rng(4).standard_normal(N),
                         "broadband noise"),
    "white noise 100 g": (_machine() + 100.0 * np.random.default_rng(5).standard_normal(N),
                          "broadband noise"),
    "three spikes of 50-400 g": (_spiked((50.0, -200.0, 400.0)), "spikes"),
    "mains hum 50 Hz": (_hum(50.0, 0.5), "mains hum: 50 Hz"),
    "mains hum 60 Hz": (_hum(60.0, 0.2), "mains hum: 60 Hz"),
    "a near-dead channel at 5e-6 g": (5e-6 * np.random.default_rng(6).standard_normal(N),
                                      "signal too weak"),
}


def _sine(fs: float, f: float, rms_g: float, noise_g: float, clip: float = 1.0) -> np.ndarray:
    t = np.arange(N) / fs
    x = rms_g * np.sqrt(2.0) * np.sin(2 * np.pi * f * t + 0.4)
    x += noise_g * np.random.default_rng(7).standard_normal(N)
    return np.clip(x, -clip * rms_g * np.sqrt(2.0), clip * rms_g * np.sqrt(2.0))


@pytest.mark.parametrize(("fs", "f", "rms_g", "noise_g"), [
    (12800.0, 159.2, 1.0, 1e-4),  # a handheld accelerometer calibrator
    (12800.0, 159.2, 1.0, 0.0),
    (25600.0, 29.95, 0.5, 1e-4),  # a clean imbalance: 855 samples a cycle
    (25600.0, 29.95, 0.5, 1e-5),
])
def test_a_clean_sine_is_not_saturated_and_clipped_it_is(fs: float, f: float, rms_g: float,
                                                          noise_g: float) -> None:
    """Before: the calibrator and the clean imbalance read `sensor_fault: saturated` (the
    smooth peaks of every cycle sat within the rails' tolerance)."""
    x = np.stack([_sine(fs, f, rms_g, noise_g)] + [_sine(fs, f, rms_g, noise_g, c)
                                                    for c in (0.9, 0.95, 0.99)])
    batch = extract(x, fs, np.full(len(x), f), ORDERS)
    got = [diagnose(batch, i) for i in range(len(x))]
    assert "saturated" not in got[0].reason, got[0].reason
    assert all(d.diagnosis == "sensor_fault" and "saturated" in d.reason for d in got[1:]), \
        [d.reason for d in got]


def _config(tmp: Path) -> object:
    return parse({"site": {"id": "s1"}, "stream": {"state_dir": str(tmp)},
                  "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": SHAFT}],
                  "gateway": [{"id": "g", "sensor": [
                      {"id": "a", "driver": "simulated", "asset": "m", "fs_hz": FS,
                       "window_samples": N, "interval_s": 1}]}]})


@pytest.mark.parametrize("name", list(CASES))
def test_each_sensor_condition_is_a_sensor_fault_with_its_reason(name: str,
                                                                   tmp_path: Path) -> None:
    samples, reason = CASES[name]
    pipeline = Pipeline(_config(tmp_path))  # type: ignore[arg-type]
    w = wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=FS, samples=samples.reshape(1, -1))
    [result] = pipeline.process([Incoming("s1", "g", "a", w)]).results
    assert result.diagnosis is not None
    assert result.diagnosis.diagnosis == "sensor_fault", result.diagnosis.reason
    assert reason in result.diagnosis.reason


def test_the_wires_clipped_flag_makes_a_normal_window_a_sensor_fault(tmp_path: Path) -> None:
    pipeline = Pipeline(_config(tmp_path))  # type: ignore[arg-type]
    windows = [wire.decode(wire.encode(wire.Window(
        seq=seq, t0_ns=time.time_ns(), fs_hz=FS, samples=_machine(seed=seq)[None],
        clipped=clipped))) for seq, clipped in ((1, False), (2, True))]
    results = pipeline.process([Incoming("s1", "g", "a", w) for w in windows]).results
    got = [(r.diagnosis.diagnosis, r.diagnosis.reason) for r in results if r.diagnosis]
    assert got[0][0] == "normal" and got[1][0] == "sensor_fault"
    assert "clipped at source" in got[1][1]


def test_healthy_and_faulty_machines_read_as_machines() -> None:
    """The conditions do not take real machine signals: loud faults, impacts, imbalance."""
    x = np.stack([_machine("normal", 7), _machine("outer_race", 8), _machine("inner_race", 9),
                  _machine("imbalance", 10), _machine("outer_race", 11, scale=30.0),
                  _machine("lubrication", 12)])
    batch = extract(x, FS, np.full(len(x), SHAFT), ORDERS)
    got = [diagnose(batch, i) for i in range(len(x))]
    assert [d.diagnosis for d in got if d.diagnosis == "sensor_fault"] == [], \
        [d.reason for d in got]


@pytest.mark.cwru
def test_no_window_of_any_cwru_record_is_a_sensor_fault() -> None:
    if not (REPO.parent / "shared" / "data" / "cwru").is_dir():
        pytest.fail("../shared/data/cwru is missing")
    faults = []
    for rec in load_spec(CWRU_SPEC):
        wins = windows_of(read_signal(rec), rec.window, rec.max_windows)
        batch = extract(wins, rec.rate_hz, np.full(len(wins), rec.shaft_hz),
                        rec.bearing.orders())
        faults += [(rec.path.name, i, d.reason) for i in range(len(wins))
                   if (d := diagnose(batch, i)).diagnosis == "sensor_fault"]
    assert faults == []
