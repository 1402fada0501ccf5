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

Model error (`ModelError`, the table in `trend_calibration.json`). The fit cannot see a
change of regime (the severe stage accelerates at a time no trend of the past announces),
so its error is structural and depends on how far it is extrapolated: measured on
simulated fleets, the raw projection is too short early in the developed stage and too
long late in it. One table corrects both the estimate and its interval: per bin of the
extrapolation length x = ln(E_boundary / E_now) (quantile bins, piecewise constant, the
end bins held beyond the learned range), the 5th, 50th and 95th percentiles of
truth / raw estimate. days = raw × p50(x); the interval is at least raw × [p05(x), p95(x)]
and at least the slope's own confidence interval (its sampling error). One table per
zone boundary, C and D (a table with only D serves C too).

The shipped table was learned on simulated run-to-failure fleets of seeds 100-119 (not
the reported seeds 0-19) by `ballpass evaluate-fleet --first-seed 100 --seeds 20
--calibrate-out PATH`, which runs the raw projection and pools every estimate in watch or
alarm before the simulator's crossing; its provenance (command, seeds, date, commit,
counts per bin) is in the file. It learns the simulator's stage timing as much as
physics: a plant with its own run-to-failure histories replaces it with a table of the
same format (`[asset.online] trend_calibration = "path"`, `trend.learn_calibration`
builds one from (x, raw estimate, true days) triples). docs/online-models.md §4.

Null (not a guess) with fewer than `min_points` buckets since the change, before any
upward change, or when the slope's lower confidence bound does not rise (no evidence
that it is getting worse).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DAY_S = 86400.0
_Z90 = 1.6448536269514722  # two-sided 90 % normal quantile
DEFAULT_CALIBRATION = Path(__file__).with_name("trend_calibration.json")
"""The shipped model-error table (simulated fleets; see the module docstring)."""
CALIBRATION_FORMAT = "ballpass-trend-calibration"
CALIBRATION_VERSION = 1
ZONES = ("C", "D")
STALE_GAP_BUCKETS = 2
"""Empty buckets (no window: the machine stopped, the sensor or its link was down) after
which the fit is stale. The model grows the fault's part with running time, and wall time
is all there is: across a stop it would count the projection down (to 0, zone D "now")
while the machine stood still. So past this gap the projection is null and the history
since the change starts again at the next bucket; one missed window (a bucket empty at an
hourly cadence) is not a stop.

The gap is counted in the trend's own cadence, not in buckets alone: the spacing is
max(bucket, median (low) spacing of the last CADENCE_BUCKETS closed buckets), at most
MAX_SPACING_S, so a sensor that sends every 4 h (or every day) is not stopped at every
window, and a 30-day stop is a stop at any cadence."""
CADENCE_BUCKETS = 16
"""Closed buckets (before and since the change) whose spacing is the trend's cadence."""
MAX_SPACING_S = DAY_S
"""The largest cadence a stop is measured against (a sensor's `interval_s` is at most a
day): a stop, however sparse the windows before it, is stale after 3 days (or 3 buckets,
if longer)."""


@dataclass
class Interval:
    """A projected time (days) with its interval; `hi` None = unbounded."""

    days: float
    lo: float
    hi: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"days": round(self.days, 3), "lo": round(self.lo, 3),
                "hi": None if self.hi is None else round(self.hi, 3)}


class CalibrationError(ValueError):
    """A model-error table that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ModelError:
    """Truth / raw estimate of the projected days as a function of the extrapolation
    length x = ln(E_boundary / E_now): piecewise constant over bins of x, the bins at
    either end extended to all x beyond them (no extrapolation of the table).

    `edges` are the inner bin edges (ascending, one fewer than the bins); a bin holds
    x in (edge below, edge above]. Per bin the 5th, 50th and 95th percentiles.
    """

    edges: tuple[float, ...]
    p05: tuple[float, ...]
    p50: tuple[float, ...]
    p95: tuple[float, ...]

    def factors(self, x: float) -> tuple[float, float, float]:
        """(p05, p50, p95) of truth / estimate for extrapolation length `x`."""
        i = bisect.bisect_left(self.edges, x) if math.isfinite(x) else (
            0 if x < 0 else len(self.edges))
        return self.p05[i], self.p50[i], self.p95[i]


IDENTITY = ModelError((), (1.0,), (1.0,), (1.0,))
"""No correction: the raw projection, its interval the slope's alone."""


@dataclass(frozen=True)
class Calibration:
    """A model-error table per zone boundary, where it came from, and its provenance."""

    source: str
    zones: Mapping[str, ModelError]
    provenance: dict[str, Any] = field(default_factory=dict)

    def zone(self, name: str) -> ModelError:
        """The table of zone `name`; a file without zone C uses zone D's for it."""
        return self.zones.get(name) or self.zones["D"]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_calibration(data: Any, source: str) -> Calibration:
    """Validate a model-error document (the JSON of `learn_calibration`); every problem
    raises `CalibrationError` naming `source` and the key."""

    def fail(key: str, message: str) -> CalibrationError:
        return CalibrationError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise fail("(top level)", "must be a JSON object")
    if data.get("format") != CALIBRATION_FORMAT:
        raise fail("format", f"must be {CALIBRATION_FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != CALIBRATION_VERSION:
        raise fail("version", f"must be {CALIBRATION_VERSION}, got {data.get('version')!r}")
    zones = data.get("zones")
    if not isinstance(zones, dict) or "D" not in zones:
        raise fail("zones", "must be an object with at least the key \"D\"")
    out: dict[str, ModelError] = {}
    for name, table in zones.items():
        key = f"zones.{name}"
        if name not in ZONES:
            raise fail(key, f"unknown zone, expected one of {', '.join(ZONES)}")
        bins = table.get("bins") if isinstance(table, dict) else None
        if not isinstance(bins, list) or not bins:
            raise fail(f"{key}.bins", "must be a non-empty list")
        cols: dict[str, list[float]] = {"x_lo": [], "x_hi": [], "p05": [], "p50": [], "p95": []}
        for i, b in enumerate(bins):
            bkey = f"{key}.bins[{i}]"
            if not isinstance(b, dict):
                raise fail(bkey, "must be an object")
            for k, col in cols.items():
                if not _number(b.get(k)):
                    raise fail(f"{bkey}.{k}", f"must be a finite number, got {b.get(k)!r}")
                col.append(float(b[k]))
            count = b.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise fail(f"{bkey}.count", f"must be an integer >= 1, got {count!r}")
            if not cols["x_lo"][i] < cols["x_hi"][i]:
                raise fail(f"{bkey}.x_hi", "must be > x_lo")
            if i and cols["x_lo"][i] != cols["x_hi"][i - 1]:
                raise fail(f"{bkey}.x_lo", "must equal the x_hi of the bin before it")
            if not 0 < cols["p05"][i] <= cols["p50"][i] <= cols["p95"][i]:
                raise fail(bkey, "need 0 < p05 <= p50 <= p95, got "
                           f"{cols['p05'][i]}, {cols['p50'][i]}, {cols['p95'][i]}")
        out[name] = ModelError(tuple(cols["x_hi"][:-1]), tuple(cols["p05"]),
                               tuple(cols["p50"]), tuple(cols["p95"]))
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise fail("provenance", "must be an object")
    return Calibration(source, out, provenance)


@functools.lru_cache(maxsize=64)
def load_calibration(path: str | Path | None = None) -> Calibration:
    """The model-error table in `path` (None: the shipped `DEFAULT_CALIBRATION`), read and
    validated once per path; `CalibrationError` names the file and the key."""
    source = str(Path(path or DEFAULT_CALIBRATION).resolve())
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except OSError as e:
        raise CalibrationError(f"{source}: cannot read: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{source}: not valid JSON: {e}") from e
    return parse_calibration(data, source)


def learn_calibration(samples: Mapping[str, Iterable[tuple[float, float, float]]],
                      bins: int, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The model-error document learned from (x, raw estimate days, true days) triples
    per zone: `bins` bins of x at its quantiles, per bin the 5th, 50th and 95th
    percentiles of truth / estimate and the count. Triples with an estimate or a truth
    that is not > 0 are left out (nothing to correct)."""
    zones: dict[str, Any] = {}
    for name, triples in samples.items():
        a = np.array([t for t in triples if t[1] > 0 and t[2] > 0 and math.isfinite(t[0])],
                     dtype=float).reshape(-1, 3)
        if a.shape[0] < bins:
            raise ValueError(f"zone {name}: {a.shape[0]} estimates for {bins} bins")
        x, ratio = a[:, 0], a[:, 2] / a[:, 1]
        edges = np.unique(np.quantile(x, np.arange(1, bins) / bins))
        idx = np.searchsorted(edges, x, side="left")  # as ModelError.factors
        lows = [float(x.min()), *edges.tolist()]
        highs = [*edges.tolist(), float(x.max())]
        rows = []
        for i in range(edges.size + 1):
            r = ratio[idx == i]
            p05, p50, p95 = np.percentile(r, [5, 50, 95]) if r.size else (1.0, 1.0, 1.0)
            rows.append({"x_lo": round(lows[i], 4), "x_hi": round(highs[i], 4),
                         "count": int(r.size), "p05": round(float(p05), 4),
                         "p50": round(float(p50), 4), "p95": round(float(p95), 4)})
        zones[name] = {"estimates": int(a.shape[0]), "bins": rows}
    return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
            "provenance": dict(provenance), "zones": zones}


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
    bucket_s: float = math.inf  # the trend's bucket (s); inf: never stale (a bare fit)
    spacing_s: float = math.nan  # the trend's cadence (s) when fitted; nan: bucket_s

    def stale(self, now_s: float) -> bool:
        """More than STALE_GAP_BUCKETS empty buckets (of the trend's cadence,
        `spacing_s`) between the fit's last bucket and `now_s` (s)."""
        spacing = self.bucket_s if math.isnan(self.spacing_s) else self.spacing_s
        return now_s - self.t_s > (STALE_GAP_BUCKETS + 1) * spacing


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
        # The times of the last closed buckets (the cadence, `spacing`) and that spacing.
        self.closed: deque[float] = deque(maxlen=CADENCE_BUCKETS + 1)
        self.spacing_s = bucket_s

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A trend saved before the cadence was kept: the bucket until buckets close.
        self.__dict__.update(state)
        if "closed" not in state:
            self.closed = deque(maxlen=CADENCE_BUCKETS + 1)
            self.spacing_s = self.bucket_s

    def _cadence(self, mid_s: float) -> float:
        """The trend's spacing (s) with the bucket at `mid_s` closed: max(bucket, the low
        median of the closed buckets' spacings), at most max(bucket, MAX_SPACING_S). Low
        median: a stop among few spacings does not become the cadence."""
        if not self.closed or mid_s > self.closed[-1]:
            self.closed.append(mid_s)
        gaps = sorted(np.diff(np.fromiter(self.closed, float)).tolist())
        typical = gaps[(len(gaps) - 1) // 2] if gaps else self.bucket_s
        return max(self.bucket_s, min(typical, MAX_SPACING_S))

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
        self.spacing_s = self._cadence(mid_s)
        if self.t and mid_s <= self.t[-1]:
            pass  # a bucket already closed (before a clock re-anchor): times strictly rise
        elif self.change_s is not None and mid_s >= self.change_s:
            if self.t and mid_s - self.t[-1] > (STALE_GAP_BUCKETS + 1) * self.spacing_s:
                # After a stop: the growth before it is not a rate in running time.
                self.t.clear()
                self.v.clear()
                self.b.clear()
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
                   math.exp(float(np.median(y - hi * t))), self.bucket_s, self.spacing_s)

    def drop_open(self) -> None:
        """Forget the open bucket (its windows were stamped ahead of the clock)."""
        self.bucket, self.vel, self.base = None, [], []

    def clear(self) -> None:
        self.bucket, self.vel, self.base = None, [], []
        self.change_s = None
        self.t.clear()
        self.v.clear()
        self.b.clear()
        self.fit, self.stale = None, True
        self.closed.clear()
        self.spacing_s = self.bucket_s


def extrapolation(fit: Fit, boundary: float) -> float | None:
    """x = ln(E_boundary / E_now): how far (in log units of the fault's part) the fit is
    extrapolated to reach `boundary` (mm/s); None when the boundary is at or below the
    baseline, <= 0 when the velocity is there already."""
    if boundary <= fit.baseline:
        return None
    return math.log(math.sqrt(boundary * boundary - fit.baseline ** 2)) - math.log(fit.level)


def project(fit: Fit | None, boundary: float, now_s: float | None = None,
            error: ModelError = IDENTITY) -> Interval | None:
    """Days from `now_s` (default: the fit's last bucket) until the velocity reaches
    `boundary` (mm/s); 0 when it is there already; None without a fit or without a
    significant rise, or when the fit is stale (`Fit.stale`: no window for more than
    STALE_GAP_BUCKETS buckets of the trend's cadence).

    The raw projection follows the fit; `error` (the zone's model-error table, see the
    module docstring) corrects it: days = raw × p50(x), the interval at least
    raw × [p05(x), p95(x)] and at least the slope's own confidence interval. The default,
    `IDENTITY`, gives the raw projection and the slope's interval."""
    if fit is None or (now_s is not None and fit.stale(now_s)):
        return None
    ahead = 0.0 if now_s is None else (now_s - fit.t_s) / DAY_S
    x = extrapolation(fit, boundary)
    if x is None or x <= 0.0:
        return Interval(0.0, 0.0, 0.0)
    if fit.lo <= 0.0:
        return None  # the rise is not significant: no guess
    target = math.log(fit.level) + x

    def days(slope: float, level: float) -> float:
        return max((target - math.log(level)) / slope / DAY_S - ahead, 0.0)

    raw = days(fit.mid, fit.level)
    lo = days(fit.hi, fit.level_hi) if math.isfinite(fit.level_hi) else days(fit.hi, fit.level)
    hi = days(fit.lo, fit.level_lo) if math.isfinite(fit.level_lo) else days(fit.lo, fit.level)
    f05, f50, f95 = error.factors(x)
    return Interval(raw * f50, min(lo, f05 * raw), max(hi, f95 * raw))
