"""The per-sensor online model: learning, calibrated score, changes, trend, bad input."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from ballpass.config import OnlinePolicy
from ballpass.stream.online.model import Observation, SensorModel, project

T0 = 1_767_225_600 * 10**9
MIN = 60 * 10**9


def feats(rng: np.random.Generator, bpfo: float = 0.0, vel: float = 0.9) -> dict[str, float]:
    return {
        "rms_g": 0.08 * (1 + 0.05 * rng.standard_normal()), "peak_g": 0.3,
        "crest": 4.0 + 0.2 * rng.standard_normal(),
        "kurtosis": 3.0 + 0.1 * rng.standard_normal(), "skewness": 0.0,
        "velocity_rms_mm_s": vel * (1 + 0.03 * rng.standard_normal()),
        "bpfo_snr_db": 3 + bpfo + rng.standard_normal(), "bpfi_snr_db": 3 + rng.standard_normal(),
        "bsf_snr_db": 3 + rng.standard_normal(), "ftf_snr_db": 3 + rng.standard_normal(),
        "hf_floor": 0.01 * (1 + 0.05 * rng.standard_normal()),
        "x1_g": 0.003 * (1 + 0.05 * rng.standard_normal()),
        "x2_g": 0.001 * (1 + 0.05 * rng.standard_normal()),
    }


def model(**kw: object) -> SensorModel:
    policy = OnlinePolicy(**{"learn_hours": 1.0, "learn_windows": 300, **kw})  # type: ignore[arg-type]
    return SensorModel(policy, 2.8, 4.5)


def learned(rng: np.random.Generator, n: int = 300, shaft: float = 25.0) -> tuple[SensorModel, int]:
    m = model()
    for i in range(n):
        r = m.update(Observation(T0 + i * MIN, i, shaft, feats(rng)))
        assert r.state == "learning" or i == n - 1
        assert r.score is None
    return m, n


def test_learning_phase_then_calibrated_scores() -> None:
    rng = np.random.default_rng(1)
    m, n = learned(rng)
    assert m.ready and m.status()["state"] == "ready"
    scores = []
    for i in range(n, n + 3000):
        r = m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng)))
        assert r.score is not None and 0.0 <= r.score <= 1.0
        assert not r.anomaly
        scores.append(r.score)
    # The score is calibrated on the sensor's own healthy history: about 10 % of healthy
    # windows exceed 0.9 (a threshold is a false-alarm rate).
    frac = float(np.mean(np.array(scores) >= 0.9))
    assert 0.03 < frac < 0.2, frac


def test_the_baseline_waits_for_hours_and_windows() -> None:
    rng = np.random.default_rng(2)
    m = model(learn_hours=24.0, learn_windows=100)
    for i in range(500):  # 500 minutes < 24 h
        m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng)))
    assert not m.ready
    m.update(Observation(T0 + 25 * 3600 * 10**9, 501, 25.0, feats(rng)))
    assert m.ready


def test_a_new_defect_line_is_an_anomaly_and_a_change() -> None:
    rng = np.random.default_rng(3)
    m, n = learned(rng)
    flags, events = [], []
    for i in range(n, n + 60):
        r = m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng, bpfo=12.0)))
        flags.append(r.anomaly)
        events += [e for e in r.events if e["event"] == "change"]
    assert all(flags[3:]), flags
    assert any(e["feature"] == "bpfo_snr_db" for e in events), events


def test_bad_input_is_counted_and_never_an_anomaly() -> None:
    rng = np.random.default_rng(4)
    m, n = learned(rng)
    i = n
    bad = feats(rng)
    bad["kurtosis"] = math.nan
    r = m.update(Observation(T0 + i * MIN, i, 25.0, bad))
    assert r.skipped == "nan_features" and r.score is None and not r.anomaly
    r = m.update(Observation(T0 + (i + 1) * MIN, 0, 25.0, feats(rng)))  # seq restarts
    assert not r.anomaly
    r = m.update(Observation(T0 - 3600 * 10**9, 1, 25.0, feats(rng)))  # clock jumps back
    assert not r.anomaly
    for k in range(40):  # a speed never seen: learns that band, never scores it meanwhile
        r = m.update(Observation(T0 + (i + 2 + k) * MIN, 2 + k, 40.0, feats(rng, vel=2.0)))
        assert not r.anomaly
    assert m.update(Observation(T0 + (i + 50) * MIN, 60, math.nan, feats(rng))).skipped \
        == "no_speed"
    c = m.status()
    assert c["nan_features"] == 1 and c["seq_restart"] == 1 and c["clock_backwards"] == 1
    assert c["unseen_band"] == 1 and c["no_speed"] == 1


def test_trend_projects_days_to_zones_and_is_null_without_history() -> None:
    rng = np.random.default_rng(5)
    m = model(learn_windows=50, learn_hours=0.0)
    # 1 mm/s per day from 1.0 mm/s, one window every 10 min.
    results = []
    for i in range(6 * 24 * 2):
        t_s = i * 600.0
        vel = 1.0 + t_s / 86400.0
        r = m.update(Observation(T0 + int(t_s * 1e9), i, 25.0, feats(rng, vel=vel)))
        results.append(r)
        if i < 6 * 5:  # fewer than trend_min_points hourly points: no guess
            assert r.days_to_zone_d is None
    last = results[-1]
    assert last.days_to_zone_d is not None and last.days_to_zone_c is not None
    now_vel = 1.0 + (6 * 24 * 2 - 1) * 600.0 / 86400.0
    # The zone trend is exponential in the fault's part of the velocity (stream/online/
    # trend.py): a rise that is only linear is projected earlier than its straight line,
    # never later, and not absurdly early.
    assert 0.3 * (4.5 - now_vel) < last.days_to_zone_d.days <= 4.5 - now_vel
    d = last.days_to_zone_d
    assert d.hi is not None and d.lo <= d.days <= d.hi
    assert last.velocity_trend_mm_s_per_day == pytest.approx(1.0, rel=0.15)


def test_project_without_rise_is_null() -> None:
    assert project(None, 4.5) is None
    assert project((-1e-6, -1e-7, 1e-7, 1.0), 4.5) is None
    assert project((0.0, 1e-5, 2e-5, 5.0), 4.5).days == 0.0  # type: ignore[union-attr]


def test_the_model_pickles_and_continues_identically() -> None:
    rng = np.random.default_rng(6)
    m, n = learned(rng)
    clone = pickle.loads(pickle.dumps(m))
    f = feats(rng, bpfo=5.0)
    a = m.update(Observation(T0 + n * MIN, n, 25.0, f))
    b = clone.update(Observation(T0 + n * MIN, n, 25.0, f))
    assert a.score == b.score


def test_false_alarm_learns_the_recent_windows() -> None:
    rng = np.random.default_rng(7)
    m, n = learned(rng)
    for i in range(n, n + 5):
        m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng, bpfo=6.0)))
    before = m.update(Observation(T0 + (n + 5) * MIN, n + 5, 25.0, feats(rng, bpfo=6.0))).score
    for _ in range(20):
        m.learn_recent_as_normal()
    after = m.update(Observation(T0 + (n + 6) * MIN, n + 6, 25.0, feats(rng, bpfo=6.0))).score
    assert before is not None and after is not None and after < before
    m.rebaseline()
    assert m.status()["state"] == "learning" and m.status()["rebaselines"] == 1


def test_a_rough_machine_physics_calls_faulty_says_why_and_learns_on_a_false_alarm() -> None:
    # A healthy but rough machine in zone C: physics calls every window imbalance, so no
    # window is learned. The status says so, the result says why it is not scored, and a
    # false alarm learns the recent windows toward the learning phase (was: learned 0,
    # skipped "band_learning", a false alarm learned bands but not the phase).
    rng = np.random.default_rng(8)
    m = model(learn_windows=100, band_min_windows=5)
    i = 0
    r = None
    for i in range(50):
        r = m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng), physics="imbalance"))
    assert r is not None and r.skipped == "physics_fault" and r.score is None
    status = m.status()
    assert status["learned_windows"] == 0 and status["not_learned"] == 50
    n_recent = m.policy.anomaly_n
    assert m.learn_recent_as_normal() == n_recent
    assert m.status()["learned_windows"] == n_recent
    assert m.learn_recent_as_normal() == n_recent  # the same windows again: counted once
    assert m.status()["learned_windows"] == n_recent
    # A false alarm per anomaly_n windows: the learning phase completes.
    while not m.ready and i < 2000:
        for _ in range(n_recent):
            i += 1
            r = m.update(Observation(T0 + i * MIN, i, 25.0, feats(rng), physics="imbalance"))
        m.learn_recent_as_normal()
    assert m.ready, m.status()
    clone = pickle.loads(pickle.dumps(m))
    assert clone.status() == m.status()
