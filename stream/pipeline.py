"""From decoded windows to features, diagnoses, alert transitions and InfluxDB points.

Pure orchestration of the maths: no MQTT, no HTTP. `process` takes a batch of decoded
windows, groups them by (fs, length) so the Numba kernels run batched, and returns what
the service must write and publish. Alert state advances window by window, in seq
order per sensor; the
service de-duplicates, so a window redelivered by the broker does not count twice.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, Config, SensorConfig
from ballpass.models.speed import choose_shaft_hz, estimate_shaft_hz
from ballpass.stream.alerts import INSTRUMENT_FAULT, AlertTracker, Transition, severity
from ballpass.stream.diagnosis import Diagnosis, diagnose
from ballpass.stream.dsp.spectrum import amplitude_spectrum
from ballpass.stream.features import extract
from ballpass.stream.impact_history import ImpactHistory
from ballpass.stream.online import OnlineModels
from ballpass.stream.sinks.lineprotocol import Point
from ballpass.wire import Kind, Window


@dataclass(frozen=True)
class Incoming:
    """A decoded window with where it came from."""

    site: str
    gateway: str
    sensor: str
    window: Window


@dataclass
class Result:
    """One window's outcome."""

    incoming: Incoming
    asset: str
    diagnosis: Diagnosis | None = None
    features: dict[str, float] = field(default_factory=dict)
    state: str = "normal"  # alert state after this window
    line_amp_g: float = math.nan  # strongest defect-line envelope amplitude (g)
    online: dict[str, Any] = field(default_factory=dict)  # online layer (diagnosis JSON)


@dataclass
class BatchOutput:
    results: list[Result]
    points: list[Point]
    alerts: list[dict[str, Any]]  # alert JSON of each firing/resolved transition


def _tags(item: Incoming, asset: str) -> dict[str, str]:
    return {"site": item.site, "gateway": item.gateway, "sensor": item.sensor, "asset": asset}


def _alert_point(alert: dict[str, Any], t_ns: int) -> Point:
    """The `alerts` row of one alert message (`alert_message`)."""
    return Point("alerts", {k: alert[k] for k in ("site", "sensor", "asset", "status", "kind")},
                 {k: alert[k] for k in ("alert_id", "diagnosis", "confidence", "summary")},
                 t_ns)


class Pipeline:
    """Feature extraction and diagnosis for the sensors of one site config."""

    def __init__(self, config: Config, state_dir: Path | None = None) -> None:
        """`state_dir`: where the online models keep their state files (None: nowhere)."""
        self.config = config
        self.sensors: dict[str, tuple[SensorConfig, AssetConfig]] = {
            s.id: (s, config.asset(s.asset)) for g in config.gateways for s in g.sensors
        }
        self.alerts = AlertTracker(config.stream.alert, {
            sid: a.alert for sid, (_, a) in self.sensors.items() if a.alert is not None},
            path=state_dir / "alerts.json" if state_dir is not None else None)
        self.online = OnlineModels(config, self.alerts, state_dir)
        self._last: dict[str, Result] = {}  # each sensor's latest diagnosed window
        # Impact-interval counts of each sensor's recent windows (diagnosis rule 3b).
        self.impacts = ImpactHistory()
        # Latest tachometer reading per asset: (shaft_hz, t_s) (models/speed.py precedence).
        self.tacho: dict[str, tuple[float, float]] = {}
        self._tacho_assets: dict[str, str] = {
            a.tacho_sensor: a.id for a in config.assets if a.tacho_sensor
        }

    def update_tacho(self, sensor: str, payload: bytes | str) -> str | None:
        """Record a tachometer message `{"t_ns", "shaft_hz"}` of `sensor`; returns the asset
        it updated, or None (unknown sensor). Raises ValueError on a malformed payload."""
        asset = self._tacho_assets.get(sensor)
        if asset is None:
            return None
        try:
            msg = json.loads(payload)
            hz, t_ns = float(msg["shaft_hz"]), float(msg["t_ns"])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"tacho {sensor}: expected JSON {{t_ns, shaft_hz}}: {e}") from e
        if not (math.isfinite(hz) and hz > 0 and math.isfinite(t_ns)):
            raise ValueError(f"tacho {sensor}: shaft_hz must be > 0 and t_ns finite")
        self.tacho[asset] = (hz, t_ns / 1e9)
        return asset

    def warm_up(self) -> None:
        """Load (or compile, on a first run) the Numba kernels before windows arrive."""
        rng = np.random.default_rng(0)
        for sensor, asset in self.sensors.values():
            if sensor.kind == "acceleration":
                windows = rng.standard_normal((1, sensor.window_samples))
                extract(windows, sensor.fs_hz, np.array([asset.shaft_hz or 25.0]),
                        asset.bearing.orders())
                return

    def knows(self, sensor: str) -> bool:
        return sensor in self.sensors

    def process(self, batch: list[Incoming]) -> BatchOutput:
        """Features and diagnoses of every window in `batch` (sensors must be known)."""
        results: list[Result] = []
        points: list[Point] = []
        batch = sorted(batch, key=lambda item: (item.sensor, item.window.seq))
        groups: dict[tuple[float, int], list[tuple[Incoming, float]]] = defaultdict(list)
        for item in batch:
            _, asset = self.sensors[item.sensor]
            w = item.window
            if w.kind == Kind.TEMPERATURE:
                celsius = float(np.mean(w.samples))
                self.online.temperature(asset.id, celsius)
                results.append(Result(item, asset.id))
                points.append(Point("temperature", _tags(item, asset.id),
                                    {"celsius": celsius}, w.t0_ns))
                continue
            if w.kind != Kind.ACCELERATION:
                results.append(Result(item, asset.id))
                continue
            # Speed precedence: window, tachometer, config, estimate (docs/diagnosis.md).
            shaft, _source = choose_shaft_hz(w.shaft_hz, self.tacho.get(asset.id),
                                             asset.shaft_hz, w.t0_ns / 1e9)
            if not math.isfinite(shaft):
                est = estimate_shaft_hz(
                    amplitude_spectrum(np.ascontiguousarray(w.samples[:1], dtype=np.float64)),
                    w.fs_hz / w.n_samples)
                if not est.reliable:
                    diag = Diagnosis("insufficient_data", 0.0, (), "shaft speed unknown (set "
                                     "asset.shaft_hz, a tacho_sensor or send it with the "
                                     f"window): {est.reason}", "")
                    results.append(Result(item, asset.id, diag))
                    continue
                shaft = est.shaft_hz
            groups[(w.fs_hz, w.n_samples)].append((item, shaft))

        for (fs_hz, _n), members in groups.items():
            # Grouping by bearing too keeps one set of defect orders per kernel call.
            by_bearing: dict[Any, list[tuple[Incoming, float]]] = defaultdict(list)
            for item, shaft in members:
                by_bearing[self.sensors[item.sensor][1].bearing].append((item, shaft))
            for bearing, group in by_bearing.items():
                windows = np.stack([item.window.samples[0] for item, _ in group])
                shafts = np.array([shaft for _, shaft in group], dtype=np.float64)
                feats = extract(windows, fs_hz, shafts, bearing.orders())
                assert feats.impact_counts is not None  # `extract` always counts them
                for i, (item, _) in enumerate(group):
                    asset = self.sensors[item.sensor][1]
                    pooled = self.impacts.add(item.sensor, feats.impact_counts[i])
                    diag = diagnose(feats, i, asset.iso_group, asset.iso_foundation, pooled,
                                    clipped_at_source=item.window.clipped)
                    results.append(Result(item, asset.id, diag, feats.row(i),
                                          line_amp_g=float(np.max(feats.line_amp_g[i]))))

        alerts: list[dict[str, Any]] = []
        # Alert state advances in seq order per sensor, whatever order the groups ran in.
        results.sort(key=lambda r: (r.incoming.sensor, r.incoming.window.seq))
        for r in results:
            if r.diagnosis is None:
                continue
            item = r.incoming
            days_d = None
            if r.features:
                # Online layer: score, trend, changes; an anomaly physics cannot name
                # becomes `unknown_anomaly`.
                days_d = self._online(r, points)
            diagnosis, t0 = r.diagnosis.diagnosis, item.window.t0_ns
            transitions = (
                self.alerts.update_instrument(item.sensor, diagnosis, t0),
                self.alerts.update(item.sensor, diagnosis, t0,
                                   severity(diagnosis, r.diagnosis.iso_zone, days_d)))
            r.state = self.alerts.state(item.sensor)
            self._last[item.sensor] = r
            tags = _tags(item, r.asset)
            for t in transitions:
                if t is not None:
                    alert = alert_message(t, diagnosis_message(r))
                    alerts.append(alert)
                    points.append(_alert_point(alert, t0))
            if r.features:
                fields: dict[str, Any] = {"seq": item.window.seq, **r.features}
                points.append(Point("vibration", tags, fields, item.window.t0_ns))
            points.append(Point("diagnosis", tags, {
                "diagnosis": r.diagnosis.diagnosis, "confidence": float(r.diagnosis.confidence),
                "state": r.state, "iso_zone": r.diagnosis.iso_zone or "",
                **_online_fields(r.online),
            }, item.window.t0_ns))
        return BatchOutput(results, points, alerts)

    def _online(self, r: Result, points: list[Point]) -> float | None:
        """Run the online layer on result `r` (in place); its days to zone D, if known."""
        assert r.diagnosis is not None
        item, w = r.incoming, r.incoming.window
        shaft = w.shaft_hz if math.isfinite(w.shaft_hz) and w.shaft_hz > 0 else (
            self.sensors[item.sensor][1].shaft_hz or math.nan)
        o, extra = self.online.observe(item.site, item.gateway, item.sensor, w.t0_ns, w.seq,
                                       shaft, r.features, r.line_amp_g, r.diagnosis.diagnosis)
        points += extra
        if o.score is not None:
            r.features["anomaly_score"] = o.score
        if o.anomaly and r.diagnosis.diagnosis == "normal":
            r.diagnosis = Diagnosis(
                "unknown_anomaly", o.score or 0.0, (),
                f"anomaly score {o.score:.4f} >= threshold in most recent windows, "
                "no known fault pattern", r.diagnosis.iso_zone)
        status = self.online.status(item.sensor)
        r.online = {
            "state": o.state, "progress": status.get("progress"),
            "anomaly_score": None if o.score is None else round(o.score, 5),
            "skipped": o.skipped or None,
            "velocity_trend_mm_s_per_day": _finite_or_none(o.velocity_trend_mm_s_per_day),
            "line_trend_g_per_day": _finite_or_none(o.line_trend_g_per_day),
            "days_to_zone_c": o.days_to_zone_c.as_dict() if o.days_to_zone_c else None,
            "days_to_zone_d": o.days_to_zone_d.as_dict() if o.days_to_zone_d else None,
        }
        return o.days_to_zone_d.days if o.days_to_zone_d else None

    def apply_command(self, command: Any, t_ns: int | None = None) -> BatchOutput:
        """Apply an operator command (rebaseline, ack, false_alarm): `actions` points and
        the alerts its transitions resolve."""
        points, transitions = self.online.apply(command, t_ns)
        if points and command.get("action") == "rebaseline":
            self.impacts.clear(command["sensor"])  # maintenance done: the old defect is gone
        alerts: list[dict[str, Any]] = []
        for t in transitions:
            last = self._last.get(t.sensor)
            if last is None or last.diagnosis is None:
                continue
            last.state = self.alerts.state(t.sensor)
            alert = alert_message(t, diagnosis_message(last))
            alerts.append(alert)
            points.append(_alert_point(alert, points[0].time_ns if points else time.time_ns()))
        return BatchOutput([], points, alerts)


def diagnosis_message(result: Result) -> dict[str, Any]:
    """The diagnosis JSON of ARCHITECTURE.md section 5 for one window."""
    item, diag = result.incoming, result.diagnosis
    assert diag is not None
    return {
        "sensor": item.sensor, "gateway": item.gateway, "site": item.site,
        "asset": result.asset, "t": item.window.t0_ns / 1e9, "seq": item.window.seq,
        "diagnosis": diag.diagnosis, "confidence": round(float(diag.confidence), 4),
        "state": result.state, "iso_zone": diag.iso_zone or None,
        "velocity_rms_mm_s": _finite_or_none(result.features.get("velocity_rms_mm_s")),
        "evidence": [
            {"line": e.line, "harmonic": e.harmonic, "freq_hz": round(e.freq_hz, 3),
             "snr_db": round(e.snr_db, 2)} for e in diag.evidence
        ],
        "reason": diag.reason,
        "severity": severity(diag.diagnosis, diag.iso_zone,
                             (result.online.get("days_to_zone_d") or {}).get("days"))
        if diag.diagnosis not in ("normal", "insufficient_data") else None,
        "anomaly_score": result.online.get("anomaly_score"),
        "days_to_zone_c": result.online.get("days_to_zone_c"),
        "days_to_zone_d": result.online.get("days_to_zone_d"),
        "online": {k: v for k, v in result.online.items()
                   if k not in ("anomaly_score", "days_to_zone_c", "days_to_zone_d")} or None,
    }


def alert_message(transition: Transition, last: dict[str, Any]) -> dict[str, Any]:
    """The alert JSON (diagnosis fields plus alert_id, status, since, summary, kind, event).

    `kind` "machine" is a machine alarm, `event` its status; `kind` "instrument" is a sensor
    that needs maintenance (`event` "instrument_firing" / "instrument_resolved", severity
    "low"), never a machine alarm (docs/alerting.md).
    """
    firing = transition.status == "firing"
    if transition.kind == "instrument":
        summary = (f"{last['asset']} sensor {transition.sensor} "
                   + ("needs instrument maintenance (not a machine fault): "
                      f"{last.get('reason') or 'sensor fault'}" if firing
                      else "reads plausibly again") + ".")
        return {**last, "diagnosis": INSTRUMENT_FAULT, "kind": "instrument",
                "event": f"instrument_{transition.status}", "severity": "low",
                "alert_id": transition.alert_id, "status": transition.status,
                "since": transition.since_ns / 1e9, "summary": summary,
                "sent_at": time.time()}
    verb = "needs attention" if firing else "is back to normal"
    fault = transition.diagnosis.replace("_", " ")
    summary = (f"{last['asset']} sensor {transition.sensor} {verb}: {fault}"
               + (f", ISO zone {last['iso_zone']}" if last.get("iso_zone") else "")
               + (f", confidence {last['confidence']:.0%}" if firing else "") + ".")
    return {
        **last, "diagnosis": transition.diagnosis if firing else last["diagnosis"],
        "kind": "machine", "event": transition.status,
        "alert_id": transition.alert_id, "status": transition.status,
        "since": transition.since_ns / 1e9, "summary": summary,
        "sent_at": time.time(),
    }


def _online_fields(online: dict[str, Any]) -> dict[str, Any]:
    """InfluxDB `diagnosis` fields of the online layer (absent when unknown)."""
    out: dict[str, Any] = {}
    if online.get("state"):
        out["baseline"] = online["state"]
    for zone in ("c", "d"):
        p = online.get(f"days_to_zone_{zone}")
        if p:
            out[f"days_to_zone_{zone}"] = float(p["days"])
            out[f"days_to_zone_{zone}_lo"] = float(p["lo"])
            if p["hi"] is not None:
                out[f"days_to_zone_{zone}_hi"] = float(p["hi"])
    return out


def _finite_or_none(x: float | None) -> float | None:
    return round(float(x), 4) if x is not None and math.isfinite(x) else None
