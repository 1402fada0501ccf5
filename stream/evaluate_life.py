"""`ballpass evaluate-life SPEC.toml`: run-to-failure recordings through the stream's path.

Each `[[run]]` of the spec is one bearing's life: an `.npz` with windows `signal`
(n, channels, samples) or (n, samples), in g, and their times `t_s` (s since the start of
the run). Every window becomes a wire `Window` (simulated time: a fixed epoch plus `t_s`)
of one sensor of a one-asset site config and goes, in time order, through the stream's
own `Pipeline.process` (feature extraction, physics diagnosis, online model, alert state
machine) — nothing is reimplemented here. End of life is the last window's time (the test
was stopped there) unless the run gives `end_of_life_s`.

Per run the report gives: the first `watch` and the first `alarm` with their lead time
before end of life (s and % of life); alarms (firing transitions) in the first half of
life (false alarms: a bearing in an accelerated test is taken as healthy there); the
time-to-zone-D projections (`days_to_zone_d`, `stream/online/trend.py`) against the truth
(end of life): of the estimates made in the last 30 % of life, the fraction whose
interval [lo, hi] holds the remaining life; and an SVG plot of the health indicators and
alert states over life. Spec format: docs/evaluate-life.md.

Nothing in ballpass may be fitted to the recordings this measures.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ballpass.config import (
    ISO_FOUNDATIONS,
    AlertPolicy,
    AssetConfig,
    BrokerConfig,
    Config,
    ConfigError,
    GatewayConfig,
    InfluxConfig,
    OnlinePolicy,
    SensorConfig,
    SiteConfig,
    StreamConfig,
    TableReader,
    _parse_alert_policy,
    _parse_online,
    one_of,
    parse_bearing,
    positive,
    read_toml,
)
from ballpass.log import kv
from ballpass.models.bearing import BearingGeometry
from ballpass.stream.recordings import READ_ERRORS, check_scale, npz_array

log = logging.getLogger(__name__)

EPOCH_NS = 1_325_376_000 * 10**9
"""Simulated start of every run (2012-01-01T00:00:00Z, ns): window i is at EPOCH + t_s[i]."""

FIRST_HALF = 0.5
"""Alarms before this fraction of life are counted as false alarms."""

LATE_SHARE = 0.3
"""Projections made in the last 30 % of life are scored against the end of life."""

DAY_S = 86400.0
STATES = ("normal", "watch", "alarm")


@dataclass(frozen=True)
class Run:
    """One run-to-failure recording of a spec. `name` is its key path (`run[2]`)."""

    where: str
    name: str
    path: Path
    fs_hz: float
    shaft_hz: float
    bearing: BearingGeometry
    signal_key: str = "signal"
    time_key: str = "t_s"
    channel: int = 0
    end_of_life_s: float | None = None
    iso_group: int = 2
    iso_foundation: str = "rigid"
    online: OnlinePolicy = field(default_factory=OnlinePolicy)
    alert: AlertPolicy = field(default_factory=AlertPolicy)
    scale: float | None = None
    """g per unit of the file's signal (1/9.80665 for m/s²); None: the file is in g."""


# --- spec ----------------------------------------------------------------------------------


def check_name(v: str) -> str | None:
    """A run name is the plot's file name (`PLOTS/NAME.svg`): one plain path component."""
    if not v.strip():
        return "must not be empty"
    if "/" in v or "\\" in v or ".." in v:
        return "is the plot's file name (PLOTS/NAME.svg): no '/', '\\' or '..'"
    if any(ord(c) < 32 for c in v):
        return "is the plot's file name (PLOTS/NAME.svg): no control characters"
    return None


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _parse_run(r: TableReader, online: OnlinePolicy, alert: AlertPolicy) -> Run | None:
    path = r.path_value("path")
    if "path" not in r.table:
        r.fail("path", "is required")
    name = r.get("name", str, path.stem if path else "", check=check_name)
    fs_hz = r.get("fs_hz", float, required=True, check=positive)
    shaft_hz = r.get("shaft_hz", float, required=True, check=positive)
    bearing = parse_bearing(r)
    signal_key = r.get("signal_key", str, "signal", check=_not_empty)
    time_key = r.get("time_key", str, "t_s", check=_not_empty)
    scale = r.get("scale", float, check=check_scale)
    channel = r.get("channel", int, 0, check=lambda v: None if v >= 0 else "must be >= 0")
    eol = r.get("end_of_life_s", float, check=positive)
    iso_group = r.get("iso_group", int, 2,
                      check=lambda v: None if v in (1, 2) else "must be 1 or 2")
    iso_foundation = r.get("iso_foundation", str, "rigid", check=one_of(*ISO_FOUNDATIONS))
    run_online = _parse_online(r.sub("online")) if "online" in r.table else online
    run_alert = _parse_alert_policy(r.sub("alert")) if "alert" in r.table else alert
    r.finish()
    if path is not None and not path.is_file():
        r.fail("path", f"no such file {str(path)!r}")
        return None
    if path is not None and signal_key and time_key:
        try:
            with np.load(path, allow_pickle=False) as z:
                for key, what in ((signal_key, "signal_key"), (time_key, "time_key")):
                    if key not in z.files:
                        r.fail(what, f"no array {key!r} in {path.name} "
                               f"(it has: {', '.join(z.files)})")
        except READ_ERRORS as e:
            r.fail("path", f"cannot read {path.name}: {e}")
    if None in (path, name, fs_hz, shaft_hz, bearing, signal_key, time_key, channel) or (
            "scale" in r.table and scale is None):
        return None
    assert path is not None and bearing is not None and name is not None
    assert fs_hz is not None and shaft_hz is not None and channel is not None
    return Run(r.path, name, path, fs_hz, shaft_hz, bearing, str(signal_key), str(time_key),
               channel, eol, iso_group, iso_foundation, run_online, run_alert, scale)


def parse_spec(data: dict[str, Any], base: Path = Path(".")) -> list[Run]:
    """The runs of a parsed spec; raises ConfigError with every problem and its key path.

    Top-level `[online]` and `[alert]` tables (the site config's `[asset.online]` and
    `[asset.alert]` keys, validated by the same code) apply to every run without its own.
    """
    errors: list[str] = []
    root = TableReader(data, "", errors, base)
    online = _parse_online(root.sub("online")) if "online" in data else OnlinePolicy()
    alert = _parse_alert_policy(root.sub("alert")) if "alert" in data else AlertPolicy()
    tables = root.tables("run")
    root.finish()
    if not tables and not errors:
        errors.append("run: the spec lists no [[run]] table")
    runs = [_parse_run(t, online, alert) for t in tables]
    seen: dict[str, str] = {}
    for r in runs:
        if r is not None and r.name in seen:
            errors.append(f"{r.where}.name: {r.name!r} is also {seen[r.name]}'s name (plots "
                          "and reports are per name)")
        elif r is not None:
            seen[r.name] = r.where
    if errors:
        raise ConfigError(errors)
    return [r for r in runs if r is not None]


def load_spec(path: str | Path) -> list[Run]:
    """Load and validate a life spec; paths inside are relative to the spec file."""
    path = Path(path)
    return parse_spec(read_toml(path, "the life spec"), base=path.resolve().parent)


def read_run(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, samples) float64 g of the run's channel, times (n,) s), in time order.

    Raises ConfigError naming the run's keys when the arrays do not fit, and `run[i].path`
    when the file does not read (truncated, bad CRC). The signal is multiplied by
    `run.scale` (g per unit) when given; integer samples need one."""
    try:
        with np.load(run.path, allow_pickle=False) as z:
            sig = npz_array(z, run.signal_key, f"{run.where}.signal_key")
            t = np.asarray(npz_array(z, run.time_key, f"{run.where}.time_key"),
                           dtype=np.float64)
    except ConfigError:
        raise
    except READ_ERRORS as e:
        raise ConfigError([f"{run.where}.path: cannot read {run.path.name} (run "
                           f"{run.name!r}): {type(e).__name__}: {e}"]) from None
    if run.scale is None and np.issubdtype(sig.dtype, np.integer):
        raise ConfigError([f"{run.where}.scale: is required for integer samples "
                           f"({sig.dtype}) in {run.path.name}: g per count"])
    if sig.ndim == 2:
        sig = sig[:, None, :]
    if sig.ndim != 3:
        raise ConfigError([f"{run.where}.signal_key: need (windows, channels, samples) or "
                           f"(windows, samples), got shape {sig.shape}"])
    if run.channel >= sig.shape[1]:
        raise ConfigError([f"{run.where}.channel: {run.path.name} has {sig.shape[1]} "
                           f"channel(s) (0-based), got {run.channel}"])
    if t.ndim != 1 or t.size != sig.shape[0] or not np.isfinite(t).all():
        raise ConfigError([f"{run.where}.time_key: need {sig.shape[0]} finite times, got "
                           f"shape {t.shape}"])
    if t.size < 2:
        raise ConfigError([f"{run.where}: need at least 2 windows, got {t.size}"])
    order = np.argsort(t, kind="stable")
    if np.any(np.diff(t[order]) <= 0):
        raise ConfigError([f"{run.where}.time_key: times must be distinct"])
    x = np.ascontiguousarray(sig[order, run.channel, :], dtype=np.float64)
    if run.scale is not None:
        x *= run.scale
    return x, t[order]


# --- running ------------------------------------------------------------------------------


def site_config(run: Run, n_samples: int, interval_s: float) -> Config:
    """The one-asset, one-sensor site config the run goes through (as a site file would
    give it): the run's bearing, speed, ISO class, online and alert policies."""
    asset = AssetConfig("bearing", "other", run.bearing, run.shaft_hz, None, run.iso_group,
                        run.iso_foundation, run.online, run.alert)
    sensor = SensorConfig("acc", "replay", asset.id, run.fs_hz, n_samples, interval_s)
    return Config(SiteConfig("life"), BrokerConfig(), InfluxConfig(),
                  StreamConfig(state_dir=Path("."), alert=run.alert), (asset,),
                  (GatewayConfig("rig", (sensor,)),), ())


@dataclass
class Step:
    """One window's outcome, as the stream produced it."""

    t_s: float
    diagnosis: str
    state: str
    iso_zone: str
    rms_g: float
    velocity_mm_s: float
    kurtosis: float
    score: float | None
    online_state: str
    days_to_zone_d: dict[str, float | None] | None

    def as_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(v, 5)
        return {"t_s": round(self.t_s, 3), "diagnosis": self.diagnosis, "state": self.state,
                "iso_zone": self.iso_zone, "rms_g": r(self.rms_g),
                "velocity_mm_s": r(self.velocity_mm_s), "kurtosis": r(self.kurtosis),
                "anomaly_score": r(self.score), "online_state": self.online_state,
                "days_to_zone_d": self.days_to_zone_d}


def simulate(run: Run, windows: np.ndarray, t_s: np.ndarray) -> list[Step]:
    """Every window through `Pipeline.process`, one at a time in time order (the stream
    advances alert state window by window in seq order)."""
    from ballpass.stream.pipeline import Incoming, Pipeline
    from ballpass.wire import Window

    interval = float(np.median(np.diff(t_s)))
    pipe = Pipeline(site_config(run, windows.shape[1], interval), state_dir=None)
    steps: list[Step] = []
    for seq, (x, t) in enumerate(zip(windows, t_s, strict=True)):
        w = Window(seq, EPOCH_NS + round(float(t) * 1e9), run.fs_hz, x[None, :],
                   shaft_hz=run.shaft_hz)
        out = pipe.process([Incoming("life", "rig", "acc", w)])
        res = out.results[0]
        d = res.diagnosis
        f = res.features
        steps.append(Step(float(t), d.diagnosis if d else "", res.state,
                          d.iso_zone if d else "", f.get("rms_g", math.nan),
                          f.get("velocity_rms_mm_s", math.nan), f.get("kurtosis", math.nan),
                          res.online.get("anomaly_score"), res.online.get("state") or "",
                          res.online.get("days_to_zone_d")))
    return steps


@dataclass
class LifeResult:
    """The report of one run (see `score`)."""

    run: Run
    steps: list[Step]
    end_of_life_s: float
    figures: dict[str, Any]

    def as_json(self, with_steps: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.run.name, "path": str(self.run.path),
                               "end_of_life_s": round(self.end_of_life_s, 3), **self.figures}
        if with_steps:
            out["windows"] = [s.as_json() for s in self.steps]
        return out


def _lead(t: float | None, eol: float) -> dict[str, float | None]:
    if t is None:
        return {"t_s": None, "lead_s": None, "lead_pct_of_life": None}
    return {"t_s": round(t, 3), "lead_s": round(eol - t, 3),
            "lead_pct_of_life": round(100.0 * (eol - t) / eol, 3)}


def score(steps: list[Step], end_of_life_s: float) -> dict[str, Any]:
    """The figures of one run from its steps (times s from the run's start).

    - `first_watch`, `first_alarm`: time of the first window in that state (alarm: the
      first firing), lead = end of life − that time, also in % of life; None if never.
    - `alarms_first_half`: firing transitions (normal/watch → alarm) before
      FIRST_HALF × life; `watch_first_half`: windows in watch there.
    - `projections`: of the windows at or after (1 − LATE_SHARE) × life with a
      `days_to_zone_d` estimate, how many, and how many intervals [lo, hi] (hi None =
      unbounded) hold the true remaining life (end of life − window time).
    """
    eol = end_of_life_s
    half = FIRST_HALF * eol
    first: dict[str, float | None] = {"watch": None, "alarm": None}
    firings: list[float] = []
    prev = "normal"
    for s in steps:
        if s.state in first and first[s.state] is None:
            first[s.state] = s.t_s
        if s.state == "alarm" and prev != "alarm":
            firings.append(s.t_s)
        prev = s.state
    late = [s for s in steps if s.t_s >= (1.0 - LATE_SHARE) * eol]
    estimates = [s for s in late if s.days_to_zone_d is not None]
    held = 0
    errors: list[float] = []
    for s in estimates:
        assert s.days_to_zone_d is not None
        truth = (eol - s.t_s) / DAY_S
        lo, hi, days = (s.days_to_zone_d.get("lo"), s.days_to_zone_d.get("hi"),
                        s.days_to_zone_d.get("days"))
        if lo is not None and lo <= truth and (hi is None or truth <= hi):
            held += 1
        if days is not None:
            errors.append((days - truth) * DAY_S)
    zone_d = next((s.t_s for s in steps if s.iso_zone == "D"), None)
    diag: dict[str, int] = {}
    for s in steps:
        diag[s.diagnosis] = diag.get(s.diagnosis, 0) + 1
    ready = next((s.t_s for s in steps if s.online_state == "ready"), None)
    return {
        "windows": len(steps),
        "first_watch": _lead(first["watch"], eol),
        "first_alarm": _lead(first["alarm"], eol),
        "alarm_before_end": first["alarm"] is not None and first["alarm"] < eol,
        "alarms": len(firings),
        "alarms_first_half": sum(t < half for t in firings),
        "watch_windows_first_half": sum(s.state == "watch" and s.t_s < half for s in steps),
        "online_ready": _lead(ready, eol),
        "first_zone_d": _lead(zone_d, eol),
        "diagnoses": dict(sorted(diag.items(), key=lambda kv: -kv[1])),
        "projections": {
            "late_windows": len(late), "estimates": len(estimates), "held": held,
            "held_fraction": round(held / len(estimates), 4) if estimates else None,
            "median_error_s": round(statistics.median(errors), 1) if errors else None,
        },
    }


def evaluate_run(run: Run) -> LifeResult:
    """Read, simulate and score one run."""
    windows, t = read_run(run)
    eol = run.end_of_life_s if run.end_of_life_s is not None else float(t[-1])
    if eol <= float(t[0]):
        raise ConfigError([f"{run.where}.end_of_life_s: must be after the first window "
                           f"({t[0]:g} s), got {eol:g}"])
    # Life runs from the first window to the end of life: a file's clock need not start
    # at 0, and windows after a failure defined earlier than the last file are not life.
    alive, t0 = t <= eol, float(t[0])
    windows, t, eol = windows[alive], t[alive] - t0, eol - t0
    steps = simulate(run, windows, t)
    figures = score(steps, eol)
    log.info(kv("life_run", run=run.name, windows=len(steps), end_of_life_s=round(eol, 1),
                first_alarm_lead_pct=figures["first_alarm"]["lead_pct_of_life"],
                alarms_first_half=figures["alarms_first_half"]))
    return LifeResult(run, steps, eol, figures)


def summary(results: list[LifeResult]) -> dict[str, Any]:
    """Totals over the runs, against the issue's targets."""
    leads = [r.figures["first_alarm"]["lead_pct_of_life"] for r in results
             if r.figures["alarm_before_end"]]
    est = sum(r.figures["projections"]["estimates"] for r in results)
    held = sum(r.figures["projections"]["held"] for r in results)
    n = len(results)
    med = statistics.median(leads) if leads else None
    return {
        "runs": n,
        "alarmed_before_end": len(leads),
        "median_lead_pct_of_life": None if med is None else round(med, 3),
        "alarms_first_half": sum(r.figures["alarms_first_half"] for r in results),
        "late_estimates": est, "late_estimates_held": held,
        "late_held_fraction": round(held / est, 4) if est else None,
        "targets": {
            "alarm_before_end_5_of_6": len(leads) >= math.ceil(5 * n / 6),
            "median_lead_ge_10pct": med is not None and med >= 10.0,
            "no_alarm_first_half": sum(r.figures["alarms_first_half"] for r in results) == 0,
            "late_held_ge_80pct": est > 0 and held / est >= 0.8,
        },
    }


# --- plot ---------------------------------------------------------------------------------

_COLOURS = {"normal": "#4caf50", "watch": "#ffb300", "alarm": "#e53935"}


def svg(result: LifeResult, width: int = 720, height: int = 300) -> str:
    """An SVG of the run: r.m.s. (g, log scale) and velocity (mm/s, log scale) against the
    share of life, the anomaly score (0-1), and a strip of the alert state per window."""
    steps, eol = result.steps, result.end_of_life_s
    left, right, top, strip = 60, 20, 30, 18
    plot_h = height - top - 50 - strip
    x0, x1 = left, width - right

    def px(t: float) -> float:
        return x0 + (x1 - x0) * min(max(t / eol, 0.0), 1.0)

    def series(values: list[float], lo: float, hi: float, log_scale: bool) -> str:
        pts = []
        for s, v in zip(steps, values, strict=True):
            if not (math.isfinite(v) and (v > 0 or not log_scale)):
                continue
            a = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) \
                if log_scale else (v - lo) / (hi - lo)
            pts.append(f"{px(s.t_s):.1f},{top + plot_h * (1 - min(max(a, 0), 1)):.1f}")
        return " ".join(pts)

    rms = [s.rms_g for s in steps]
    vel = [s.velocity_mm_s for s in steps]
    finite = [v for v in rms + vel if math.isfinite(v) and v > 0]
    lo = 10 ** math.floor(math.log10(min(finite))) if finite else 0.01
    hi = 10 ** math.ceil(math.log10(max(finite))) if finite else 100.0
    if hi <= lo:
        hi = lo * 10
    score_ = [s.score if s.score is not None else math.nan for s in steps]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{_esc(result.run.name)}: '
           f'health indicators and alert state over life (end of life '
           f'{eol / 3600:.2f} h)</text>',
           f'<rect x="{x0}" y="{top}" width="{x1 - x0}" height="{plot_h}" fill="none" '
           'stroke="#999"/>']
    ready = next((s.t_s for s in steps if s.online_state == "ready"), eol)
    out.append(f'<rect x="{x0}" y="{top}" width="{px(ready) - x0:.1f}" height="{plot_h}" '
               'fill="#f3f3f3"/>')
    out.append(f'<text x="{x0 + 4}" y="{top + plot_h - 6}" fill="#888">online model '
               'learning</text>')
    decades = round(math.log10(hi / lo))
    for k in range(decades + 1):
        y = top + plot_h * (1 - k / decades)
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{lo * 10 ** k:g}</text>')
    for frac in (0.0, 0.25, 0.5, 0.7, 1.0):
        x = px(frac * eol)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" '
                   f'stroke="#ddd" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 18}" text-anchor="middle">'
                   f'{frac:.0%}</text>')
    out.append(f'<polyline fill="none" stroke="#1e88e5" stroke-width="1.5" '
               f'points="{series(rms, lo, hi, True)}"/>')
    out.append(f'<polyline fill="none" stroke="#8e24aa" stroke-width="1.5" '
               f'points="{series(vel, lo, hi, True)}"/>')
    out.append(f'<polyline fill="none" stroke="#757575" stroke-width="1" '
               f'stroke-dasharray="4,2" points="{series(score_, 0.0, 1.0, False)}"/>')
    ys = top + plot_h + 6
    for k, s in enumerate(steps):
        t_next = steps[k + 1].t_s if k + 1 < len(steps) else eol
        xa, xb = px(s.t_s), max(px(t_next), px(s.t_s) + 1)
        out.append(f'<rect x="{xa:.1f}" y="{ys}" width="{xb - xa:.1f}" height="{strip}" '
                   f'fill="{_COLOURS.get(s.state, "#bbb")}"/>')
    out.append(f'<text x="{x0 - 4}" y="{ys + 13}" text-anchor="end">state</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{height - 4}" text-anchor="middle">'
               'share of life (time / end of life)</text>')
    legend = [("#1e88e5", "r.m.s. (g)"), ("#8e24aa", "velocity r.m.s. (mm/s)"),
              ("#757575", "anomaly score (0-1, linear)"), (_COLOURS["watch"], "watch"),
              (_COLOURS["alarm"], "alarm")]
    lx = x0 + 6
    for colour, label in legend:
        out.append(f'<rect x="{lx}" y="{top + 6}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 13}" y="{top + 15}">{_esc(label)}</text>')
        lx += 20 + 6 * len(label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- text ---------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[LifeResult], total: dict[str, Any]) -> str:
    """The readable report: one line per run, then the totals against the targets."""
    from ballpass.stream.evaluate import _table

    rows = [["run", "life h", "windows", "first watch lead", "first alarm lead",
             "alarms 1st half", "late est.", "held", "zone D lead"]]
    for r in results:
        f = r.figures
        fw, fa, zd = f["first_watch"], f["first_alarm"], f["first_zone_d"]
        p = f["projections"]
        rows.append([
            r.run.name, f"{r.end_of_life_s / 3600:.2f}", str(f["windows"]),
            "-" if fw["t_s"] is None else f"{fw['lead_s'] / 60:.1f} min "
            f"({fw['lead_pct_of_life']:.1f} %)",
            "-" if fa["t_s"] is None else f"{fa['lead_s'] / 60:.1f} min "
            f"({fa['lead_pct_of_life']:.1f} %)",
            str(f["alarms_first_half"]), str(p["estimates"]),
            "-" if p["held_fraction"] is None else f"{p['held']} ({p['held_fraction']:.0%})",
            "-" if zd["t_s"] is None else f"{zd['lead_pct_of_life']:.1f} %"])
    t = total["targets"]
    lines = [_table(rows, right={1, 2, 5, 6}), "",
             f"alarm before end of life: {total['alarmed_before_end']}/{total['runs']} "
             f"(target >= 5 of 6: {'met' if t['alarm_before_end_5_of_6'] else 'NOT met'})",
             f"median lead of the first alarm: {_fmt(total['median_lead_pct_of_life'])} % "
             f"of life (target >= 10 %: {'met' if t['median_lead_ge_10pct'] else 'NOT met'})",
             f"alarms in the first half of life: {total['alarms_first_half']} "
             f"(target 0: {'met' if t['no_alarm_first_half'] else 'NOT met'})",
             f"zone-D projections in the last 30 % of life holding the end of life: "
             f"{total['late_estimates_held']}/{total['late_estimates']} "
             f"(target >= 80 %: {'met' if t['late_held_ge_80pct'] else 'NOT met'})"]
    return "\n".join(lines) + "\n"


def run_all(runs: list[Run]) -> tuple[list[LifeResult], dict[str, Any]]:
    results = [evaluate_run(r) for r in runs]
    return results, summary(results)


def main(spec: Path, json_out: Path | None, plots: Path | None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """The `ballpass evaluate-life` command: 0 when it ran (whatever the figures); a bad
    spec raises ConfigError (the CLI exits 2)."""
    from ballpass.stream.evaluate import Progress, check_output, write_output

    runs = load_spec(spec)
    if json_out is not None:
        check_output(json_out, "--json")
    if plots is not None:
        check_output(plots, "--plots", directory=True)
    progress = Progress(len(runs), err)
    progress.update(0, "loading kernels")
    results: list[LifeResult] = []
    for k, r in enumerate(runs):
        results.append(evaluate_run(r))
        progress.update(k + 1, r.name)
    total = summary(results)
    out.write(table(results, total))
    # The JSON first: it is the report; a plot that fails to write must not lose it.
    if json_out is not None:
        data = {"runs": [r.as_json() for r in results], "summary": total}
        write_output(json_out, json.dumps(data, indent=2) + "\n", "--json")
        out.write(f"wrote {json_out}\n")
    if plots is not None:
        for res in results:
            write_output(plots / f"{res.run.name}.svg", svg(res), "--plots")
        out.write(f"wrote {len(results)} plot(s) to {plots}\n")
    return 0
