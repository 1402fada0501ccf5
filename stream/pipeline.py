"""From decoded windows to features, diagnoses, alert transitions and InfluxDB points.

Pure orchestration of the maths: no MQTT, no HTTP. `process` takes a batch of decoded
windows, groups them by (fs, length) so the Numba kernels run batched, and returns what
the service must write and publish. Alert state advances window by window, in seq
order per sensor; the service de-duplicates the windows it wrote, and the alert state
remembers the seqs it took in, so a window redelivered by the broker after a crash (taken
in, not yet acknowledged) is written again but counts once (`BatchOutput.replayed`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, Config, SensorConfig
from ballpass.log import kv
from ballpass.models.speed import choose_shaft_hz, estimate_shaft_hz
from ballpass.stream.alerts import AlertTracker, severity
from ballpass.stream.diagnosis import Diagnosis, diagnose
from ballpass.stream.dsp.spectrum import amplitude_spectrum
from ballpass.stream.faults import Fault
from ballpass.stream.features import extract
from ballpass.stream.impact_history import ImpactHistory
from ballpass.stream.messages import (
    alert_message,
    alert_point,
    diagnosis_message,
    finite_or_none,
    temperature_point,
    undiagnosed_message,
    vibration_points,
    window_points,
)
from ballpass.stream.online import OnlineModels
from ballpass.stream.sinks.lineprotocol import Point
from ballpass.wire import Kind, Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """A decoded window with where it came from."""

    site: str
    gateway: str
    sensor: str
    window: Window


@dataclass(frozen=True)
class Result:
    """One window's outcome (made anew, never changed, as it goes through the layers)."""

    incoming: Incoming
    asset: str
    diagnosis: Diagnosis | None = None
    features: dict[str, float] = field(default_factory=dict)
    state: str = "normal"  # alert state after this window
    line_amp_g: float = math.nan  # strongest defect-line envelope amplitude (g)
    shaft_hz: float = math.nan  # the speed the diagnosis used (window, tacho, config, estimate)
    online: dict[str, Any] = field(default_factory=dict)  # online layer (diagnosis JSON)


@dataclass
class BatchOutput:
    results: list[Result]
    points: list[Point]
    alerts: list[dict[str, Any]]  # alert JSON of each firing/resolved transition
    # Windows whose online or alert step raised, with why: the caller refuses them.
    failed: list[tuple[Incoming, str]] = field(default_factory=list)
    # Windows the state had taken in before (redelivered after a crash): written only.
    replayed: int = 0

    def add(self, other: BatchOutput) -> None:
        """Append `other` (the output of more windows or commands) to this one."""
        self.results += other.results
        self.points += other.points
        self.alerts += other.alerts
        self.failed += other.failed
        self.replayed += other.replayed


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
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as e:
            raise ValueError(f"tacho {sensor}: expected JSON {{t_ns, shaft_hz}}: "
                             f"{str(e)[:200]}") from e
        if not (math.isfinite(hz) and hz > 0 and math.isfinite(t_ns)):
            raise ValueError(f"tacho {sensor}: shaft_hz must be > 0 and t_ns finite")
        self.tacho[asset] = (hz, t_ns / 1e9)
        return asset

    def take_temperature(self, item: Incoming) -> float:
        """The mean of a temperature window (°C), from now on its asset's temperature."""
        celsius = float(np.mean(item.window.samples))
        self.online.temperature(self.sensors[item.sensor][1].id, celsius)
        return celsius

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

    def export_sensor(self, sensor: str) -> dict[str, Any]:
        """Everything the pipeline remembers of `sensor` (its online model, alert states,
        impact evidence): what moves with it to another worker (stream/cluster/state.py)."""
        machine = self.alerts.sensors.get(sensor)
        instrument = self.alerts.instruments.get(sensor)
        return {"online": self.online.models.get(sensor),
                "machine": machine.to_json() if machine is not None else None,
                "instrument": instrument.to_json() if instrument is not None else None,
                "impacts": self.impacts.export(sensor)}

    def import_sensor(self, sensor: str, state: dict[str, Any]) -> None:
        """Take over `sensor`'s state from `export_sensor` (possibly of another worker)."""
        self.online.adopt(sensor, state.get("online"))
        self.alerts.adopt(sensor, state.get("machine"), state.get("instrument"))
        self.impacts.restore(sensor, state.get("impacts") or [])

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
                celsius = self.take_temperature(item)
                results.append(Result(item, asset.id))
                points.append(temperature_point(item, asset.id, celsius))
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

        # A window the kernels or the diagnosis cannot take fails the batch, which the
        # service then runs window by window: its impact counts must not be added twice.
        with self.impacts.undo_on_error({item.sensor for item in batch}):
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
                    # Once per batch, not per window: the rows and each window's strongest
                    # line.
                    rows = feats.rows()
                    line_amp = feats.line_amp_g.reshape(len(group), -1).max(axis=1).tolist()
                    for i, (item, shaft) in enumerate(group):
                        asset = self.sensors[item.sensor][1]
                        pooled = self.impacts.add(item.sensor, feats.impact_counts[i])
                        diag = diagnose(feats, i, asset.iso_group, asset.iso_foundation, pooled,
                                        clipped_at_source=item.window.clipped,
                                        levels=asset.levels, row=rows[i])
                        results.append(Result(item, asset.id, diag, rows[i],
                                              line_amp_g=line_amp[i], shaft_hz=shaft))

        # Alert state advances in seq order per sensor, whatever order the groups ran in.
        results.sort(key=lambda r: (r.incoming.sensor, r.incoming.window.seq))
        with self.alerts.batch():  # saved once, before the caller tells anyone
            return self._advance(results, points)

    def _advance(self, results: list[Result], points: list[Point]) -> BatchOutput:
        """Online layer and alert state of the batch's diagnosed results, in order.

        A window whose step raises is left out as `failed`, the others go on: retrying the
        batch would advance their state twice (and lose or repeat their alerts).
        """
        kept: list[Result] = []
        alerts: list[dict[str, Any]] = []
        failed: list[tuple[Incoming, str]] = []
        replayed = 0
        for r in results:
            if r.diagnosis is None:
                kept.append(r)
                continue
            w = r.incoming.window
            try:
                if self.alerts.includes(r.incoming.sensor, w.seq, w.t0_ns):
                    # Taken in before a crash, perhaps not written: its features again
                    # (the same values; InfluxDB keeps one row per series and time). Its
                    # online verdict and state of then are gone: no diagnosis row, no step.
                    points += vibration_points(r)
                    replayed += 1
                    continue
                # A window that fails here leaves its sensor's alert states as they were.
                saved = self.alerts.snapshot(r.incoming.sensor)
                try:
                    r, extra, fired = self._advance_one(r)
                except BaseException:
                    self.alerts.restore(r.incoming.sensor, saved)
                    raise
            except Exception as e:
                log.exception(kv("window_failed", sensor=r.incoming.sensor, seq=w.seq))
                failed.append((r.incoming, f"seq {w.seq}: {e!r}"))
                continue
            points += extra
            alerts += fired
            kept.append(r)
        return BatchOutput(kept, points, alerts, failed, replayed)

    def _advance_one(self, r: Result) -> tuple[Result, list[Point], list[dict[str, Any]]]:
        """One diagnosed result through the online layer and the alert state: the result,
        its points and its alerts."""
        assert r.diagnosis is not None
        item = r.incoming
        points: list[Point] = []
        alerts: list[dict[str, Any]] = []
        days_d = None
        features, diag, online = r.features, r.diagnosis, r.online
        if features:
            # Online layer: score, trend, changes; an anomaly physics cannot name
            # becomes `unknown_anomaly`.
            features, diag, online, days_d = self._online(r, points)
        diagnosis, t0 = diag.diagnosis, item.window.t0_ns
        transitions = [t for t in (
            self.alerts.update_instrument(item.sensor, diagnosis, t0),
            self.alerts.update(item.sensor, diagnosis, t0,
                               severity(diagnosis, diag.iso_zone, days_d)))
            if t is not None]
        # One new result, not a `replace` per layer (two were 5 % of `process`).
        r = Result(item, r.asset, diag, features, self.alerts.state(item.sensor),
                   r.line_amp_g, r.shaft_hz, online)
        if transitions:
            message = diagnosis_message(r)
            for t in transitions:
                alert = alert_message(t, message)
                alerts.append(alert)
                points.append(alert_point(alert, t0))
        points += window_points(r)
        # Last, when nothing can raise any more: a window refused (raised) is not taken in.
        self._last[item.sensor] = r
        self.alerts.include(item.sensor, item.window.seq, t0)
        for alert in alerts:
            self.alerts.hold(alert, t0)
        return r, points, alerts

    def _online(self, r: Result, points: list[Point]
                ) -> tuple[dict[str, float], Diagnosis, dict[str, Any], float | None]:
        """The features, diagnosis and online fields of result `r` with the online layer's
        verdict; and its days to zone D, if known."""
        assert r.diagnosis is not None
        item, w = r.incoming, r.incoming.window
        # The physics' speed: a tacho-only asset (no shaft_hz set) had none here, so it never
        # got a model, and with both the model banded by the nominal speed, not the real one.
        o, extra = self.online.observe(item.site, item.gateway, item.sensor, w.t0_ns, w.seq,
                                       r.shaft_hz, r.features, r.line_amp_g,
                                       r.diagnosis.diagnosis)
        points += extra
        features = r.features if o.score is None else {**r.features, "anomaly_score": o.score}
        diagnosis = r.diagnosis
        # A window too short for the lines (insufficient_data) still has its levels, which
        # is all the anomaly score reads: its anomaly is one too.
        if o.anomaly and diagnosis.diagnosis in (Fault.NORMAL, Fault.INSUFFICIENT_DATA):
            why = ("no known fault pattern" if diagnosis.diagnosis == Fault.NORMAL else
                   f"lines not readable: {diagnosis.reason}")
            diagnosis = Diagnosis(
                Fault.UNKNOWN_ANOMALY, o.score or 0.0, (),
                f"anomaly score {o.score:.4f} >= threshold in most recent windows, {why}",
                diagnosis.iso_zone)
        online = {
            "state": o.state, "progress": self.online.progress(item.sensor),
            "anomaly_score": None if o.score is None else round(o.score, 5),
            "skipped": o.skipped or None,
            "velocity_trend_mm_s_per_day": finite_or_none(o.velocity_trend_mm_s_per_day),
            "line_trend_g_per_day": finite_or_none(o.line_trend_g_per_day),
            "days_to_zone_c": o.days_to_zone_c.as_dict() if o.days_to_zone_c else None,
            "days_to_zone_d": o.days_to_zone_d.as_dict() if o.days_to_zone_d else None,
        }
        days = o.days_to_zone_d.days if o.days_to_zone_d else None
        return features, diagnosis, online, days

    def apply_command(self, command: Any, t_ns: int | None = None) -> BatchOutput:
        """Apply an operator command (rebaseline, ack, false_alarm): `actions` points and
        the alerts its transitions resolve (held with the alert state, saved once)."""
        with self.alerts.batch():
            return self._apply_command(command, t_ns)

    def _apply_command(self, command: Any, t_ns: int | None) -> BatchOutput:
        repeated = self.online.repeated(command)
        if repeated is not None:
            # Delivered again: its `actions` point again, nothing applied twice (nor the
            # impact evidence, cleared by the first, cleared again).
            return BatchOutput([], repeated, [])
        points, transitions = self.online.apply(command, t_ns)
        if points and command.get("action") == "rebaseline":
            self.impacts.clear(command["sensor"])  # maintenance done: the old defect is gone
        t_ns = points[0].time_ns if points else time.time_ns()
        alerts: list[dict[str, Any]] = []
        for t in transitions:
            alert = alert_message(t, self._latest_message(t.sensor, t.diagnosis, t_ns))
            alerts.append(alert)
            points.append(alert_point(alert, t_ns))
        for alert in alerts:
            self.alerts.hold(alert, t_ns)
        return BatchOutput([], points, alerts)

    def _latest_message(self, sensor: str, diagnosis: str, t_ns: int) -> dict[str, Any]:
        """The diagnosis JSON of `sensor`'s latest window, with its alert state now.

        After a restart or a partition move this process may have diagnosed no window of
        it, yet an operator's rebaseline still resolves the alarm it took over: on-call
        must get that "resolved", so the config says who the sensor is instead.
        """
        state = self.alerts.state(sensor)
        last = self._last.get(sensor)
        if last is not None:
            self._last[sensor] = replace(last, state=state)
            return diagnosis_message(self._last[sensor])
        gateway, _ = self.config.sensor_index()[sensor]
        return undiagnosed_message(
            self.config.site.id, gateway.id, sensor, self.sensors[sensor][1].id, t_ns, diagnosis,
            state, "no window of this sensor diagnosed since this process took it over")
