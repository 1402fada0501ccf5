"""Time to an ISO 20816 zone boundary: a robust two-component trend of velocity RMS.

Physics. A machine's velocity RMS is the healthy machine's own vibration plus a fault's,
from independent sources, so their powers add: V² = Vb² + E², with Vb the healthy
baseline (the speed band's learned level) and E the fault's part. A fault's part grows
by its own mechanism: steadily while a defect wears (linear), then faster and faster as
the damage feeds on itself (exponential: a spall sheds debris that spalls the races,
clearance lets the impacts grow). Run-to-failure records show both regimes, the late one
exponential (e.g. the IMS/NASA and PRONOSTIA bearing tests).

Fit. Per time bucket (`trend_bucket_s`) the medians of V and of the baseline; only
buckets since the trend became significant (the first upward change the Page-Hinkley
detector on log velocity found, `mark_change`), the last `max_points` of them (the local
growth rate: a rate that changes, as damage accelerates, is followed). Theil-Sen of ln E
against time: E(t) = E_now·exp(r·t), so the velocity reaches a boundary B when
E = sqrt(B² − Vb²). The interval is Sen's (1968) distribution-free confidence interval of
the Theil-Sen slope (90 %, from the ranks of the pairwise slopes, Kendall's S variance),
carried to the crossing time.

Why not a straight line: a linear projection cannot see the acceleration of the late
stages, so it overestimates the remaining time exactly when it matters; a rise that is
truly linear is projected early by the exponential model, which errs on the safe side.
Measured on simulated fleets (seeds 100-103, not the reported ones): choosing between a
linear and an exponential fit by their residuals doubled the median error against the
exponential fit alone (docs/online-models.md).

Interval: the slope's confidence interval covers only the sampling error of the fit, not
the model's error (a fault's growth changes regime: the severe stage accelerates at a time
no trend of the past can see), so the interval is widened by the model's own measured error:
at least [days / 3, 2.5 × days] (`MODEL_ERROR_LO`, `MODEL_ERROR_HI`), the 5th and 95th
percentiles of truth / estimate of `days_to_zone_d` on simulated fleets (seeds 100-119, not
the reported ones; docs/online-models.md). It is a simulated model error: real
run-to-failure records may need other factors.

Null (not a guess) with fewer than `min_points` buckets since the change, before any
upward change, or when the slope's lower confidence bound does not rise (no evidence
that it is getting worse).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

DAY_S = 86400.0
_Z90 = 1.6448536269514722  # two-sided 90 % normal quantile
# Model error of the projected time (factor on the days; see the module docstring): the
# 5th and 95th percentiles of truth / estimate were 0.33 and 2.47 (seeds 100-119).
MODEL_ERROR_LO = 1.0 / 3.0
MODEL_ERROR_HI = 2.5


@dataclass
class Interval:
    """A projected time (days) with its interval; `hi` None = unbounded."""

    days: float
    lo: float
    hi: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"days": round(self.days, 3), "lo": round(self.lo, 3),
                "hi": None if self.hi is None else round(self.hi, 3)}


def theil_sen(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(slope lower 90 % bound, slope, slope upper bound, intercept) of y against t.

    Slope: median of the pairwise slopes; bounds: Sen's (1968) confidence interval, the
    pairwise slopes of rank (N − C)/2 and (N + C)/2 with C = z·sqrt(n(n−1)(2n+5)/18).
    Intercept: median of y − slope·t.
    """
    n = t.size
    i, j = np.triu_indices(n, 1)
    dt = t[j] - t[i]
    keep = dt != 0
    slopes = np.sort((y[j] - y[i])[keep] / dt[keep])
    m = slopes.size
    mid = float(np.median(slopes))
    c = _Z90 * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    lo_k = max(math.floor((m - c) / 2.0), 0)
    hi_k = min(math.ceil((m + c) / 2.0), m - 1)
    return float(slopes[lo_k]), mid, float(slopes[hi_k]), float(np.median(y - mid * t))


@dataclass(frozen=True)
class Fit:
    """The exponential fit at the last bucket (`t_s`, s): growth rate of ln E per s with
    its 90 % bounds, the fault part E (mm/s) there and the baseline Vb (mm/s)."""

    lo: float
    mid: float
    hi: float
    level: float
    baseline: float
    t_s: float
    level_lo: float = math.nan  # E now on the line of slope `lo` through the data
    level_hi: float = math.nan  # and of slope `hi`


class VelocityTrend:
    """Buckets of velocity and of its fault part since the last upward change (see module)."""

    def __init__(self, bucket_s: float, max_points: int, min_points: int) -> None:
        self.bucket_s = bucket_s
        self.min_points = min_points
        self.bucket: int | None = None
        self.vel: list[float] = []
        self.base: list[float] = []
        self.t: deque[float] = deque(maxlen=max_points)
        self.v: deque[float] = deque(maxlen=max_points)
        self.b: deque[float] = deque(maxlen=max_points)
        self.change_s: float | None = None
        self.fit: Fit | None = None
        self.stale = True

    def add(self, t_s: float, velocity: float, baseline: float) -> None:
        """One window's velocity (mm/s) and its band's healthy baseline (mm/s)."""
        b = int(t_s // self.bucket_s)
        if self.bucket is not None and b != self.bucket and self.vel:
            self._close()
        self.bucket = b
        if math.isfinite(velocity) and math.isfinite(baseline) and baseline > 0:
            self.vel.append(velocity)
            self.base.append(baseline)

    def _close(self) -> None:
        assert self.bucket is not None
        mid_s = (self.bucket + 0.5) * self.bucket_s
        if self.change_s is not None and mid_s >= self.change_s:
            self.t.append(mid_s)
            self.v.append(float(np.median(self.vel)))
            self.b.append(float(np.median(self.base)))
            self.stale = True
        self.vel, self.base = [], []

    def mark_change(self, t_s: float, rising: bool) -> None:
        """A change detected at `t_s`: the first rise starts the trend's history, a fall
        (repair, rebaseline) ends it."""
        if rising and self.change_s is None:
            self.change_s = t_s - self.bucket_s  # the bucket that showed it counts
        elif not rising and self.change_s is not None:
            self.change_s = None
            self.t.clear()
            self.v.clear()
            self.b.clear()
            self.fit, self.stale = None, True

    def current(self) -> Fit | None:
        """The fit over the buckets since the change, or None without enough of them."""
        if len(self.t) < self.min_points:
            return None
        if self.stale:
            self.fit = self._fit()
            self.stale = False
        return self.fit

    def _fit(self) -> Fit:
        t = np.fromiter(self.t, float)
        v = np.fromiter(self.v, float)
        base = float(np.median(np.fromiter(self.b, float)))
        t = t - t[-1]  # time relative to the last bucket: the fit's level is "now"
        # Fault part of the velocity; floored at 10 % of the baseline (below that it
        # cannot be told from the healthy level's own scatter).
        e = np.sqrt(np.maximum(v * v - base * base, (0.1 * base) ** 2))
        y = np.log(e)
        lo, mid, hi, icpt = theil_sen(t, y)
        # The bounding slopes pivot about the data, not about "now": a slower line sits
        # lower at the last bucket, a faster one higher (a confidence band's shape).
        return Fit(lo, mid, hi, math.exp(icpt), base, float(self.t[-1]),
                   math.exp(float(np.median(y - lo * t))),
                   math.exp(float(np.median(y - hi * t))))

    def clear(self) -> None:
        self.bucket, self.vel, self.base = None, [], []
        self.change_s = None
        self.t.clear()
        self.v.clear()
        self.b.clear()
        self.fit, self.stale = None, True


def project(fit: Fit | None, boundary: float, now_s: float | None = None) -> Interval | None:
    """Days from `now_s` (default: the fit's last bucket) until the velocity reaches
    `boundary` (mm/s), with the interval from the slope's confidence bounds widened to the
    model's error (at least days × [`MODEL_ERROR_LO`, `MODEL_ERROR_HI`]); 0 when it is
    there already; None without a fit or without a significant rise."""
    if fit is None:
        return None
    ahead = 0.0 if now_s is None else (now_s - fit.t_s) / DAY_S
    if boundary <= fit.baseline:
        return Interval(0.0, 0.0, 0.0)
    target = math.log(math.sqrt(boundary * boundary - fit.baseline ** 2))
    if target <= math.log(fit.level):
        return Interval(0.0, 0.0, 0.0)
    if fit.lo <= 0.0:
        return None  # the rise is not significant: no guess

    def days(slope: float, level: float) -> float:
        return max((target - math.log(level)) / slope / DAY_S - ahead, 0.0)

    mid = days(fit.mid, fit.level)
    lo = days(fit.hi, fit.level_hi) if math.isfinite(fit.level_hi) else days(fit.hi, fit.level)
    hi = days(fit.lo, fit.level_lo) if math.isfinite(fit.level_lo) else days(fit.lo, fit.level)
    return Interval(mid, min(lo, MODEL_ERROR_LO * mid), max(hi, MODEL_ERROR_HI * mid))
