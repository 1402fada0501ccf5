"""One sensor's online model: its own normal, its anomaly score, changes and trend.

`SensorModel.update(obs)` takes one window's features (an `Observation`) and returns an
`OnlineResult`. Everything is plain Python and numpy, pickles (persistence) and costs
well under 200 µs per window (figure `online_update_us`).

Baseline: per operating band (shaft speed in bands `speed_band_pct` wide), running mean
and variance of a feature vector (log levels, kurtosis, crest, defect-line SNRs,
temperature). Learned during the learning phase (the later of `learn_hours` of operation
and `learn_windows` windows), only from windows physics finds no fault in (`learnable`),
then frozen: a slow degradation must not become the new normal. A band first met after
learning learns its own `band_min_windows` windows and is not scored meanwhile (counted
as `unseen_band`). A window that is not learned because physics names a fault in it is
counted (`not_learned`) and, when no band can score it, skipped as `physics_fault`; an
operator's false alarm learns such windows and counts them toward `learn_windows`.

Score: the largest one-sided z-score over the features (faults raise levels, lines and
temperature), mapped to [0, 1] through the empirical distribution of the same statistic on
the sensor's own learning windows (each scored before it was learned), with an
exponential tail fitted above the 90th percentile (each excess capped at `_TAIL_OUTLIER`
median excesses, so one outlier cannot own it). So `score >= 0.999` is a window that
the sensor's healthy history exceeds with probability 1e-3: a known false-alarm rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift

from ballpass.config import OnlinePolicy
from ballpass.stream.faults import NOT_A_FAULT
from ballpass.stream.online import trend
from ballpass.stream.online.trend import Interval, VelocityTrend

FEATURES: tuple[str, ...] = (
    "log_rms_g", "log_velocity", "kurtosis", "crest", "bpfo_snr_db", "bpfi_snr_db",
    "bsf_snr_db", "ftf_snr_db", "log_hf_floor", "log_x1_g", "log_x2_g", "temp_c",
)
"""Baseline features, in vector order. log_* are natural logs of the `vibration` field."""

# The `vibration` field each feature but temp_c is read from, and those taken the log of.
_RAW: tuple[str, ...] = (
    "rms_g", "velocity_rms_mm_s", "kurtosis", "crest", "bpfo_snr_db", "bpfi_snr_db",
    "bsf_snr_db", "ftf_snr_db", "hf_floor", "x1_g", "x2_g")
_LOGGED: tuple[int, ...] = tuple(i for i, f in enumerate(FEATURES) if f.startswith("log_"))
# Floors on each feature's standard deviation, so a very steady feature does not turn a
# measurement-resolution step into a large z (natural-log units, dB, -, °C).
_STD_FLOOR = np.array([0.02, 0.02, 0.05, 0.05, 0.5, 0.5, 0.5, 0.5, 0.02, 0.05, 0.05, 0.2])
# Change detection (Page-Hinkley on the feature's z-score) on these features.
CHANGE_FEATURES: tuple[str, ...] = (
    "log_velocity", "bpfo_snr_db", "bpfi_snr_db", "bsf_snr_db", "ftf_snr_db", "temp_c")
_CHANGE_IDX = tuple(FEATURES.index(f) for f in CHANGE_FEATURES)
_CLIP_Z = 6.0  # learning updates are clipped to ±6 σ so one outlier does not skew a band
_CAL_MAX = 4000  # calibration statistics kept per sensor (learning or ready)
# An excess over the calibration's 90th percentile beyond this many median excesses is
# an outlier for the tail's scale: an exponential tail puts 1 in 1 000 of its values
# beyond 10 medians (e^-(10 ln 2)).
_TAIL_OUTLIER = 10.0
# Windows in a row whose time is before the model's clock after which their time becomes
# the clock: one window stamped ahead (an RTC or NTP glitch) must not hold the clock, and
# every later window out of the trend, until real time catches up with it. Ten in a row
# agreeing on an earlier time outvote one stamp; a gateway replaying a few windows out of
# order stays a `clock_backwards` count.
_CLOCK_REANCHOR_WINDOWS = 10
_DAY_S = 86400.0
# Buckets (hours by default) the zone trend keeps since the change: a week.
_ZONE_TREND_POINTS = 168

STATE_VERSION = 1
"""Version of the pickled `SensorModel`; a file of another version is moved aside."""
COMMAND_IDS_KEPT = 64  # far more than the commands unacknowledged at any time

CommandRecord = tuple[int, dict[str, str], dict[str, Any]]
"""The `actions` point an operator command made: its time (ns), tags and fields."""


@dataclass
class Observation:
    """One window as the online layer sees it. Times in ns since the epoch."""

    t_ns: int
    seq: int
    shaft_hz: float
    features: dict[str, float]  # the `vibration` fields of the window
    line_amp_g: float = math.nan  # strongest defect-line envelope amplitude (g)
    temp_c: float = math.nan  # latest temperature of the asset (°C), NaN if none
    physics: str = "normal"  # the physics diagnosis of the window


@dataclass
class OnlineResult:
    """What the online layer adds to one window."""

    state: str  # "learning" | "ready"
    score: float | None  # anomaly score in [0, 1], None while not scorable
    anomaly: bool  # score high in k of the last n windows
    days_to_zone_c: Interval | None = None
    days_to_zone_d: Interval | None = None
    velocity_trend_mm_s_per_day: float | None = None
    line_trend_g_per_day: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""  # why the window was not scored ("" when it was)


class _Band:
    """Running mean and variance of the feature vector in one operating band (Welford)."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self, d: int) -> None:
        self.n = np.zeros(d)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)

    def std(self) -> np.ndarray:
        var = np.where(self.n > 1, self.m2 / np.maximum(self.n - 1, 1), 0.0)
        return np.maximum(np.sqrt(var), _STD_FLOOR)

    def z(self, x: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
        """z-scores of `x`; `std`: `self.std()`, if the caller has it already."""
        return (x - self.mean) / (self.std() if std is None else std)

    def learn(self, x: np.ndarray, std: np.ndarray | None = None) -> None:
        """Learn `x`; `std`: `self.std()` as it is now, if the caller has it already."""
        ok = np.isfinite(x)
        # Robustness: a learning window far outside the band moves it only as far as
        # ±_CLIP_Z σ would; per feature, once that feature has a std to clip by (a
        # temperature first seen late has n = 0 and mean 0 while the levels have many).
        s = self.std() if std is None else std
        x = np.where(self.n > 20, np.clip(x, self.mean - _CLIP_Z * s, self.mean + _CLIP_Z * s),
                     x)
        n = self.n + ok
        delta = np.where(ok, x - self.mean, 0.0)
        mean = self.mean + np.where(ok, delta / np.maximum(n, 1), 0.0)
        self.m2 = self.m2 + np.where(ok, delta * (x - mean), 0.0)
        self.mean, self.n = mean, n

    def count(self) -> int:
        return int(self.n[0])


class _Trend:
    """Robust trend of one level: hourly medians, Theil-Sen slope over the last points."""

    def __init__(self, bucket_s: float, points: int) -> None:
        self.bucket_s = bucket_s
        self.bucket: int | None = None
        self.values: list[float] = []
        self.t: deque[float] = deque(maxlen=points)
        self.y: deque[float] = deque(maxlen=points)
        self.fit: tuple[float, float, float, float] | None = None  # slope lo, mid, hi, level

    def add(self, t_s: float, y: float) -> None:
        b = int(t_s // self.bucket_s)
        if self.bucket is not None and b != self.bucket and self.values:
            mid_s = (self.bucket + 0.5) * self.bucket_s
            # Times strictly rise: after a clock re-anchor a bucket already closed is not
            # added again.
            if not self.t or mid_s > self.t[-1]:
                self.t.append(mid_s)
                self.y.append(float(np.median(self.values)))
                self.fit = None
            self.values = []
        self.bucket = b
        if math.isfinite(y):
            self.values.append(y)

    def slope(self, min_points: int) -> tuple[float, float, float, float] | None:
        """(slope 10th pct, median, 90th pct per s, level at the last point), or None."""
        if len(self.t) < min_points:
            return None
        if self.fit is None:
            t = np.fromiter(self.t, float)
            y = np.fromiter(self.y, float)
            i, j = np.triu_indices(t.size, 1)
            slopes = (y[j] - y[i]) / (t[j] - t[i])
            lo, mid, hi = np.percentile(slopes, [10.0, 50.0, 90.0])
            level = float(np.median(y - mid * t) + mid * t[-1])
            self.fit = (float(lo), float(mid), float(hi), level)
        return self.fit

    def drop_open(self) -> None:
        """Forget the open bucket (its windows were stamped ahead of the clock)."""
        self.bucket, self.values = None, []

    def clear(self) -> None:
        self.bucket, self.values, self.fit = None, [], None
        self.t.clear()
        self.y.clear()


def learnable(physics: str) -> bool:
    """Whether a window with this physics diagnosis may be learned as normal (baseline and
    calibration): `normal`, or `insufficient_data` (too short for the lines, its levels
    are still the machine's). A window physics names a fault or a `sensor_fault` is not
    the machine's normal."""
    return physics in NOT_A_FAULT


def project(fit: tuple[float, float, float, float] | None, boundary: float) -> Interval | None:
    """Days until a linearly rising level reaches `boundary`; None without a rising trend.
    (The model's time to a zone comes from `trend.VelocityTrend`.)"""
    if fit is None:
        return None
    lo, mid, hi, level = fit
    if level >= boundary:
        return Interval(0.0, 0.0, 0.0)
    if mid <= 0.0:
        return None
    gap = boundary - level
    days = gap / mid / _DAY_S
    return Interval(days, gap / hi / _DAY_S, gap / lo / _DAY_S if lo > 0 else None)


class SensorModel:
    """The online model of one sensor (see the module docstring)."""

    version = STATE_VERSION

    def __init__(self, policy: OnlinePolicy, zone_c_mm_s: float, zone_d_mm_s: float) -> None:
        self.policy = policy
        self.zone_c = zone_c_mm_s
        self.zone_d = zone_d_mm_s
        self.reset()
        self.counters: dict[str, int] = {
            "windows": 0, "nan_features": 0, "seq_restart": 0, "clock_backwards": 0,
            "unseen_band": 0, "no_speed": 0, "rebaselines": 0, "false_alarms_learned": 0,
            "not_learned": 0,
        }
        # The operator commands applied to this model, by id, with the `actions` point
        # each made (oldest first, at most COMMAND_IDS_KEPT), kept with it and through a
        # rebaseline: a command the broker delivers again must not be applied twice, and
        # its point is written again (the stream may have stopped before writing it).
        self.commands: dict[str, CommandRecord | None] = {}

    def reset(self) -> None:
        """Forget the baseline (maintenance done): learn again from the next window."""
        d = len(FEATURES)
        self.bands: dict[int, _Band] = {}
        self.learned = 0
        self.first_t_ns: int | None = None
        self.ready = False
        self.cal: list[float] = []
        self.cal_sorted = np.zeros(0)
        self.tail = (math.inf, 1.0)  # (q90, mean excess above it)
        self.high: deque[bool] = deque(maxlen=self.policy.anomaly_n)
        self.detectors = [drift.PageHinkley(min_instances=30, delta=0.25, threshold=25.0,
                                            mode="both") for _ in _CHANGE_IDX]
        self.vel_trend = _Trend(self.policy.trend_bucket_s, self.policy.trend_points)
        self.vel_zone = self._zone_trend()
        self.line_trend = _Trend(self.policy.trend_bucket_s, self.policy.trend_points)
        self.last_t_ns: int | None = None
        self.backwards_run = 0  # windows in a row before the clock (_CLOCK_REANCHOR_WINDOWS)
        self.last_seq: int | None = None
        # The last windows (band, features, learned already): what a false alarm learns.
        self.recent: deque[tuple[int, np.ndarray, bool]] = deque(
            maxlen=self.policy.anomaly_n)
        self._d = d

    def _zone_trend(self) -> VelocityTrend:
        p = self.policy
        return VelocityTrend(p.trend_bucket_s, p.trend_points,
                             p.trend_min_points)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state saved before the zone trend existed keeps its baseline and starts it.
        self.__dict__.update(state)
        if "vel_zone" not in state:
            self.vel_zone = self._zone_trend()
        if "commands" not in state:
            # Saved when only the ids were kept: their points are not known (None).
            self.commands = dict.fromkeys(state.get("command_ids", ()))
            self.__dict__.pop("command_ids", None)
        if "backwards_run" not in state:
            self.backwards_run = 0
        # Saved before the physics-fault windows were counted: none counted, and the recent
        # windows taken as learned (a false alarm does not count them toward learning).
        self.counters.setdefault("not_learned", 0)
        self.recent = deque(((r[0], r[1], True) if len(r) == 2 else r for r in self.recent),
                            maxlen=self.recent.maxlen)
        # A state saved before the median-excess tail: kept to _CAL_MAX and its tail fitted
        # again, so an outlier calibrated then no longer owns it.
        del self.cal[:-_CAL_MAX]
        if self.ready:
            self._calibrate()

    def remember_command(self, command_id: str, record: CommandRecord) -> None:
        """Keep `command_id` as applied, with its `actions` point (the oldest beyond
        COMMAND_IDS_KEPT forgotten)."""
        self.commands[command_id] = record
        while len(self.commands) > COMMAND_IDS_KEPT:
            del self.commands[next(iter(self.commands))]

    # --- features --------------------------------------------------------------------

    def _band(self, shaft_hz: float) -> int:
        return math.floor(math.log(shaft_hz) / math.log1p(self.policy.speed_band_pct / 100))

    @staticmethod
    def values(obs: Observation) -> list[float]:
        """The feature vector (`FEATURES` order) as Python floats."""
        get, nan, log = obs.features.get, math.nan, math.log
        out = [get(name, nan) for name in _RAW]
        for k in _LOGGED:
            v = out[k]
            out[k] = log(v) if v > 0 else nan
        out.append(obs.temp_c)
        return out

    def _scoring_band(self, band: int) -> _Band | None:
        """The band itself when it has learned enough, else a ready neighbour."""
        need = self.policy.band_min_windows
        for b in (band, band - 1, band + 1):
            s = self.bands.get(b)
            if s is not None and s.count() >= need:
                return s
        return None

    # --- calibration -----------------------------------------------------------------

    def _add_cal(self, stat: float) -> None:
        """One calibration statistic (a healthy window's, out of sample); the last
        _CAL_MAX kept, while learning as when ready."""
        self.cal.append(stat)
        if len(self.cal) > _CAL_MAX:
            del self.cal[:-_CAL_MAX]

    def _calibrate(self) -> None:
        c = np.sort(np.asarray(self.cal, dtype=float))
        if c.size < 20:
            self.cal_sorted = c
            self.tail = (math.inf, 1.0)
            return
        q90 = float(c[int(0.9 * (c.size - 1))])
        self.cal_sorted = c
        excess = c[c > q90] - q90
        # The exponential tail's scale: the mean excess, each excess capped at
        # _TAIL_OUTLIER × the median excess. One window scored far out (a spike of kurtosis
        # 400 gives a statistic over 1 000) moved the plain mean, and the statistic needed
        # for score >= 0.999, from about 4 to over 1 000; capped, it moves it by at most
        # _TAIL_OUTLIER medians / the tail's count. A cap at a fixed statistic squashed a
        # heavy-tailed sensor's real tail (false alarms 25-65 times the design rate for a
        # 90th percentile of 5.5-5.9); the median alone (/ ln 2) is right for an
        # exponential tail but not for the lighter tails of real sensors (2 false alarms in
        # 2 174 healthy sensor-days of the fleet evaluation, 0 with the mean).
        if excess.size:
            excess = np.minimum(excess, _TAIL_OUTLIER * float(np.median(excess)))
        self.tail = (q90, max(float(excess.mean()) if excess.size else 0.0, 0.05))

    def score_of(self, stat: float) -> float:
        """Calibrated score in [0, 1] of a statistic: 1 − P(healthy stat > it)."""
        c = self.cal_sorted
        if c.size == 0:
            return 0.0
        q90, beta = self.tail
        if stat <= q90:
            return float(np.searchsorted(c, stat, side="right")) / (c.size + 1)
        return 1.0 - 0.1 * math.exp(-(stat - q90) / beta)

    def threshold_stat(self) -> float:
        """The statistic at the anomaly threshold (for tests and docs)."""
        q90, beta = self.tail
        return q90 + beta * math.log(0.1 / (1.0 - self.policy.anomaly_threshold))

    # --- one window ------------------------------------------------------------------

    def update(self, obs: Observation) -> OnlineResult:
        p = self.policy
        self.counters["windows"] += 1
        events: list[dict[str, Any]] = []
        # Sequence and clock: count and log oddities, never let them reach the maths.
        clock_ok = True
        if self.last_seq is not None and obs.seq < self.last_seq:
            self.counters["seq_restart"] += 1
            events.append({"event": "seq_restart", "detail": f"{self.last_seq}->{obs.seq}"})
        self.last_seq = obs.seq
        if self.last_t_ns is not None and obs.t_ns < self.last_t_ns:
            self.counters["clock_backwards"] += 1
            self.backwards_run += 1
            behind_s = (self.last_t_ns - obs.t_ns) / 1e9
            if self.backwards_run >= _CLOCK_REANCHOR_WINDOWS:
                # The earlier time is the clock: the stamp ahead was the outlier.
                self._reanchor_clock(obs.t_ns)
                events.append({"event": "clock_reanchored",
                               "detail": f"{_CLOCK_REANCHOR_WINDOWS} windows in a row "
                                         f"{behind_s:.3f}s before the clock"})
            else:
                clock_ok = False
                if self.backwards_run == 1:
                    # One event per run (the counter has every window): a clock held
                    # ahead must not write an event and a log line per window.
                    events.append({"event": "clock_backwards", "detail": f"{behind_s:.3f}s"})
        else:
            self.last_t_ns = obs.t_ns
            self.backwards_run = 0
        if self.first_t_ns is None:
            self.first_t_ns = obs.t_ns

        values = self.values(obs)
        x = np.array(values)
        state = "ready" if self.ready else "learning"
        if not (math.isfinite(obs.shaft_hz) and obs.shaft_hz > 0):
            self.counters["no_speed"] += 1
            self.high.append(False)
            return OnlineResult(state, None, False, events=events, skipped="no_speed")
        # Temperature may be absent (no sensor); every other feature must be finite.
        if not all(map(math.isfinite, values[:-1])):
            self.counters["nan_features"] += 1
            self.high.append(False)
            events.append({"event": "nan_features", "detail": "non-finite features"})
            return OnlineResult(state, None, False, events=events, skipped="nan_features")

        band_id = self._band(obs.shaft_hz)
        scorer = self._scoring_band(band_id)
        stat = math.nan
        z = None
        scorer_std = None  # the scorer's std, for its `learn` below if it is `band`
        if scorer is not None:
            scorer_std = scorer.std()
            z = scorer.z(x, scorer_std)
            zz = np.where(np.isfinite(z), z, 0.0)
            stat = float(zz.max())

        result = OnlineResult(state, None, False, events=events)
        band = self.bands.get(band_id)
        learned = False  # this window learned into its band
        not_learned = False  # a window to learn that physics names a fault in
        if not self.ready:
            # Only a window physics finds no fault in is the machine's normal: a sensor
            # fault's spike or a named fault would widen the band and own the tail.
            if learnable(obs.physics):
                if (math.isfinite(stat) and scorer is not None
                        and scorer.count() >= 2 * p.band_min_windows):
                    # Out-of-sample statistic of a healthy window: calibration material.
                    self._add_cal(stat)
                if band is None:
                    band = self.bands[band_id] = _Band(self._d)
                band.learn(x, scorer_std if band is scorer else None)
                self.learned += 1
                learned = True
            else:
                not_learned = True
            hours = (obs.t_ns - self.first_t_ns) / 3.6e12
            if self.learned >= p.learn_windows and hours >= p.learn_hours and len(self.cal) >= 20:
                self.ready = True
                self._calibrate()
                events.append({"event": "baseline_ready",
                               "detail": f"windows={self.learned} bands={len(self.bands)}"})
        else:
            if band is None or band.count() < p.band_min_windows:
                if band is None:
                    band = self.bands[band_id] = _Band(self._d)
                    self.counters["unseen_band"] += 1
                    events.append({"event": "unseen_band",
                                   "detail": f"shaft_hz={obs.shaft_hz:.3f}"})
                if scorer is None:
                    if learnable(obs.physics):
                        band.learn(x)
                        learned = True
                    else:
                        not_learned = True
            if scorer is not None:
                result.score = self.score_of(stat)
        if not_learned:
            self.counters["not_learned"] += 1
        if scorer is None:
            # Why no band can score it: a fault physics names is not learned (a rough
            # machine physics always calls faulty learns nothing: `not_learned` says so).
            result.skipped = "physics_fault" if not_learned else "band_learning"
        high = result.score is not None and result.score >= p.anomaly_threshold
        self.high.append(high)
        result.anomaly = high and sum(self.high) >= p.anomaly_k
        self.recent.append((band_id, x, learned))

        # Change detection on the z-scores of key features, from the first window a band
        # can score (learning included, so a change right after learning is still one).
        if z is not None:
            zs = z.tolist()  # Python floats: cheaper to test and clip than numpy scalars
            for det, i in zip(self.detectors, _CHANGE_IDX, strict=True):
                zi = zs[i]
                if not math.isfinite(zi):
                    continue
                det.update(float(min(max(zi, -_CLIP_Z), _CLIP_Z)))
                if det.drift_detected:
                    events.append({"event": "change", "feature": FEATURES[i],
                                   "detail": f"z={zi:.2f}", "value": zi})

        # Trends (wall time of the window; a clock that went back is not a trend).
        t_s = obs.t_ns / 1e9
        # The zone trend starts at the first upward change of log velocity, whatever the
        # clock did: a change seen while the clock is held must not be lost (its own
        # time is the best one there is).
        for e in events:
            if e.get("event") == "change" and e.get("feature") == "log_velocity":
                self.vel_zone.mark_change(t_s, rising=e["value"] > 0)
        if clock_ok:
            vel = obs.features.get("velocity_rms_mm_s", math.nan)
            self.vel_trend.add(t_s, vel)
            self.line_trend.add(t_s, obs.line_amp_g)
            base = math.exp(scorer.mean[1]) if scorer is not None else math.nan
            self.vel_zone.add(t_s, vel, base)
        fit = self.vel_trend.slope(p.trend_min_points)
        if fit is not None:
            result.velocity_trend_mm_s_per_day = fit[1] * _DAY_S
        zfit = self.vel_zone.current()
        if zfit is not None:
            # The projections corrected by the model-error table (read once per file).
            cal = trend.load_calibration(p.trend_calibration)
            result.days_to_zone_c = trend.project(zfit, self.zone_c, t_s, cal.zone("C"))
            result.days_to_zone_d = trend.project(zfit, self.zone_d, t_s, cal.zone("D"))
        lfit = self.line_trend.slope(p.trend_min_points)
        if lfit is not None:
            result.line_trend_g_per_day = lfit[1] * _DAY_S
        return result

    def _reanchor_clock(self, t_ns: int) -> None:
        """Take `t_ns` (ns) as the clock: the windows in the trends' open buckets were
        stamped ahead of it and are dropped, and the learning clock starts no later."""
        self.last_t_ns = t_ns
        self.backwards_run = 0
        if self.first_t_ns is not None and t_ns < self.first_t_ns:
            self.first_t_ns = t_ns
        self.vel_trend.drop_open()
        self.line_trend.drop_open()
        self.vel_zone.drop_open()

    # --- operator actions ------------------------------------------------------------

    def rebaseline(self) -> None:
        self.reset()
        self.counters["rebaselines"] += 1

    def learn_recent_as_normal(self) -> int:
        """False alarm: learn the recent windows into their bands and the calibration.

        While learning, the windows not learned yet (physics named a fault in them: a
        rough machine physics calls faulty) count toward `learn_windows` and, as in
        `update`, are calibration material when a band can score them out of sample."""
        n = 0
        recent = list(self.recent)
        for band_id, x, learned in recent:
            scorer = self._scoring_band(band_id)
            counts = not self.ready and not learned
            if scorer is not None and (self.ready or (
                    counts and scorer.count() >= 2 * self.policy.band_min_windows)):
                z = scorer.z(x)
                self._add_cal(float(np.where(np.isfinite(z), z, 0.0).max()))
            self.bands.setdefault(band_id, _Band(self._d)).learn(x)
            if counts:
                self.learned += 1
            n += 1
        self.recent.clear()
        self.recent.extend((band_id, x, True) for band_id, x, _ in recent)
        if self.ready:
            self._calibrate()
        self.high.clear()
        self.counters["false_alarms_learned"] += 1
        return n

    def progress(self) -> float:
        """The share of the learning phase done (1.0 when ready), to 3 decimals."""
        progress = 1.0 if self.ready else min(1.0, self.learned
                                              / max(self.policy.learn_windows, 1))
        return round(progress, 3)

    def status(self) -> dict[str, Any]:
        return {"state": "ready" if self.ready else "learning",
                "learned_windows": self.learned, "progress": self.progress(),
                "bands": len(self.bands), **self.counters}
