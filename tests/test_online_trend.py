"""Time to an ISO zone: the exponential trend of the fault's part of the velocity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ballpass.config import OnlinePolicy
from ballpass.stream.online.model import Observation, SensorModel
from ballpass.stream.online.trend import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    DAY_S,
    VelocityTrend,
    extrapolation,
    load_calibration,
    parse_calibration,
    project,
    theil_sen,
)

HOUR = 3600.0
BASE = 0.9  # healthy velocity (mm/s)


def fault_part(t_s: float, e0: float = 0.4, days_per_e: float = 2.0) -> float:
    """E(t) = e0·exp(t / (days_per_e days)): a fault growing exponentially from t = 0."""
    return e0 * math.exp(t_s / (days_per_e * DAY_S))


def crossing_s(boundary: float, e0: float = 0.4, days_per_e: float = 2.0) -> float:
    """When V = sqrt(BASE² + E²) reaches `boundary` (s)."""
    return days_per_e * DAY_S * math.log(math.sqrt(boundary**2 - BASE**2) / e0)


def test_exponential_series_crossing_time_is_inside_the_interval() -> None:
    rng = np.random.default_rng(11)
    trend = VelocityTrend(HOUR, 24, 6)
    trend.mark_change(0.0, rising=True)
    t_now = 2.0 * DAY_S
    for k in range(int(t_now / 600.0) + 1):  # one window every 10 min for two days
        t = k * 600.0
        v = math.hypot(BASE, fault_part(t)) * (1.0 + 0.03 * rng.standard_normal())
        trend.add(t, v, BASE * (1.0 + 0.01 * rng.standard_normal()))
    fit = trend.current()
    assert fit is not None and fit.lo > 0
    for boundary in (2.8, 4.5):
        p = project(fit, boundary, t_now)  # raw: the fit and the slope's interval
        assert p is not None and p.hi is not None
        truth = (crossing_s(boundary) - t_now) / DAY_S
        assert p.lo <= truth <= p.hi, (boundary, p, truth)
        assert p.days == pytest.approx(truth, rel=0.15)
        assert p.lo < p.days < p.hi


def test_null_without_change_without_points_and_without_a_significant_rise() -> None:
    rng = np.random.default_rng(12)
    flat = VelocityTrend(HOUR, 24, 6)
    for k in range(48):  # a day and a half of healthy hours, no change detected
        flat.add(k * HOUR, BASE * (1 + 0.03 * rng.standard_normal()), BASE)
    assert flat.current() is None
    flat.mark_change(48 * HOUR, rising=True)
    for k in range(48, 52):
        flat.add(k * HOUR, BASE * (1 + 0.03 * rng.standard_normal()), BASE)
    assert flat.current() is None  # fewer than min_points buckets since the change
    for k in range(52, 80):
        flat.add(k * HOUR, BASE * 1.2 * (1 + 0.03 * rng.standard_normal()), BASE)
    fit = flat.current()
    assert fit is not None
    assert project(fit, 4.5) is None  # a step, not a rise: no guess
    flat.mark_change(80 * HOUR, rising=False)  # a fall (repair) ends the history
    assert flat.current() is None


def test_theil_sen_bounds_bracket_the_true_slope_and_resist_outliers() -> None:
    rng = np.random.default_rng(13)
    t = np.arange(30, dtype=float)
    y = 0.5 * t + rng.standard_normal(30)
    y[[3, 17]] += 40.0  # two wild points
    lo, mid, hi, icpt = theil_sen(t, y)
    assert lo < 0.5 < hi and mid == pytest.approx(0.5, abs=0.1)
    assert icpt == pytest.approx(0.0, abs=1.5)


def test_the_sensor_model_projects_from_the_first_rise_on() -> None:
    """Through the model: a healthy day, then an exponential rise. The change detector
    starts the trend; the projection is null before; the raw projection of its fit finds
    the true crossing, the model's (corrected by the shipped table) holds it."""
    rng = np.random.default_rng(14)
    m = SensorModel(OnlinePolicy(learn_hours=12.0, learn_windows=60), 2.8, 4.5)
    t0 = 1_767_225_600.0
    onset = DAY_S
    last = None
    for k in range(int(3.5 * DAY_S / 600.0)):
        t = k * 600.0
        e = fault_part(t - onset) if t >= onset else 0.0
        v = math.hypot(BASE, e) * (1.0 + 0.03 * rng.standard_normal())
        feats = {"rms_g": 0.08, "peak_g": 0.3, "crest": 4.0, "kurtosis": 3.0,
                 "velocity_rms_mm_s": v, "bpfo_snr_db": 3.0, "bpfi_snr_db": 3.0,
                 "bsf_snr_db": 3.0, "ftf_snr_db": 3.0, "hf_floor": 0.01, "x1_g": 0.003,
                 "x2_g": 0.001}
        r = m.update(Observation(int((t0 + t) * 1e9), k, 25.0, feats))
        if t < onset:
            assert r.days_to_zone_d is None
        last = (t, r)
    assert last is not None
    t, r = last
    assert r.days_to_zone_d is not None and r.days_to_zone_c is not None
    truth = (onset + crossing_s(4.5) - t) / DAY_S
    d = r.days_to_zone_d
    assert d.hi is not None and d.lo <= truth <= d.hi
    fit = m.vel_zone.current()
    raw = project(fit, 4.5, t0 + t)
    assert fit is not None and raw is not None
    assert raw.days == pytest.approx(truth, rel=0.2)
    x = extrapolation(fit, 4.5)
    assert x is not None
    assert d.days == pytest.approx(raw.days * load_calibration().zone("D").factors(x)[1])


def test_interval_holds_a_change_of_regime_the_fit_cannot_see() -> None:
    """Two days of slow exponential growth, then the damage grows twice as fast (the severe
    stage). The fit of the past projects the slow rate; its slope interval alone (sampling
    error) excludes the true crossing, a model-error band that allows for such a change
    (truth / estimate from 1/3 to 2.5, a plant's table) holds it. (The shipped table does
    not: at this extrapolation length the simulator's fleets had the opposite error, an
    estimate too short; its band is that fleet's, docs/online-models.md §4.)"""
    rng = np.random.default_rng(15)
    trend = VelocityTrend(HOUR, 24, 6)
    trend.mark_change(0.0, rising=True)
    t_now = 2.0 * DAY_S
    for k in range(int(t_now / 600.0) + 1):
        t = k * 600.0
        v = math.hypot(BASE, fault_part(t, days_per_e=3.0)) * (1.0 + 0.01 * rng.standard_normal())
        trend.add(t, v, BASE)
    fit = trend.current()
    assert fit is not None and fit.lo > 0
    raw = project(fit, 4.5, t_now)
    assert raw is not None and raw.hi is not None
    e_now = fault_part(t_now, days_per_e=3.0)
    truth = 1.5 * math.log(math.sqrt(4.5**2 - BASE**2) / e_now)  # days at the doubled rate
    assert truth < 0.6 * raw.days  # the raw projection is far too long: a regime it cannot see
    assert not raw.lo <= truth <= raw.hi  # the slope's interval alone misses it
    x = extrapolation(fit, 4.5)
    assert x is not None
    err = parse_calibration({
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
        "zones": {"D": {"bins": [{"x_lo": 0.0, "x_hi": 5.0, "count": 1, "p05": 1 / 3,
                                  "p50": 1.0, "p95": 2.5}]}}}, "plant.json").zone("D")
    f05, f50, f95 = err.factors(x)
    p = project(fit, 4.5, t_now, err)
    assert p is not None and p.hi is not None
    assert p.days == pytest.approx(f50 * raw.days)
    assert p.lo == pytest.approx(f05 * raw.days)  # the band, not the slope's bound
    assert p.hi >= f95 * raw.days
    assert p.lo <= truth <= p.hi
    shipped = project(fit, 4.5, t_now, load_calibration().zone("D"))
    assert shipped is not None and shipped.lo > truth  # the simulator's timing, not this one


@pytest.mark.parametrize("every_h", [4, 12])
def test_a_sparse_sensor_gets_a_projection(every_h: int) -> None:
    # A sensor sending every 4 h or 12 h (interval_s may be up to a day) with the default
    # hourly bucket: each window is several empty buckets after the last, and the trend's
    # cadence, not the bucket, says whether that is a stop (was: every window a stop,
    # one point kept, no projection ever).
    trend = VelocityTrend(HOUR, 24, 6)
    trend.mark_change(0.0, rising=True)
    step = every_h * HOUR
    p = None
    n = int(6 * DAY_S / step)
    for k in range(n):  # six days of a growing fault (zone D after 7.2 days)
        t = k * step + 60.0
        trend.add(t, math.hypot(BASE, fault_part(t, days_per_e=3.0)), BASE)
        fit = trend.current()
        p = project(fit, 4.5, t) if fit is not None else None
    assert len(trend.t) >= 6
    assert p is not None and p.days > 0, p
    t_now = (n - 1) * step + 60.0
    truth = (crossing_s(4.5, days_per_e=3.0) - t_now) / DAY_S
    assert p.days == pytest.approx(truth, rel=0.2, abs=step / DAY_S)
    # A 30-day stop is still a stop at this cadence.
    fit = trend.current()
    assert fit is not None and project(fit, 4.5, t_now + 30 * DAY_S) is None
