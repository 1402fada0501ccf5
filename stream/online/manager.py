"""The online layer of a site: one `SensorModel` per sensor, persistence, operator actions.

The pipeline calls `observe` for each acceleration window in seq order per sensor (after
the physics diagnosis) and `temperature` for each temperature window; it gets back the
`OnlineResult` and InfluxDB points (`events`). State files: one per sensor in
`{state_dir}/online/{sensor}.v{STATE_VERSION}.pkl`, written atomically (temp file, fsync,
rename). A file that cannot be read, or of another version, is moved aside with a
warning and the sensor learns again; nothing here raises into the stream.

The state files are pickles: the stream trusts its own state dir (like its spool).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

from ballpass.config import AssetConfig, Config
from ballpass.json_number import json_number
from ballpass.log import kv
from ballpass.stream.alerts import AlertTracker, Transition
from ballpass.stream.online.model import (
    STATE_VERSION,
    Observation,
    OnlineResult,
    SensorModel,
)
from ballpass.stream.sinks.lineprotocol import Point

log = logging.getLogger(__name__)

ACTIONS = ("rebaseline", "ack", "false_alarm")
"""Operator actions on the command topic (docs/topics.md)."""
_FORMAT = "ballpass-online"


class OnlineModels:
    """Online models of every acceleration sensor of a site config."""

    def __init__(self, config: Config, alerts: AlertTracker,
                 state_dir: Path | None = None) -> None:
        self.config = config
        self.alerts = alerts
        self.state_dir = state_dir
        self.assets: dict[str, AssetConfig] = {}
        self.site = config.site.id
        for g in config.gateways:
            for s in g.sensors:
                self.assets[s.id] = config.asset(s.asset)
        self.models: dict[str, SensorModel] = {}
        self.temps: dict[str, float] = {}  # latest temperature per asset (°C)
        self.counters = {"state_loaded": 0, "state_saved": 0, "state_moved_aside": 0,
                         "commands": 0, "commands_rejected": 0,
                         "commands_repeated": 0}
        self.pending_points: list[Point] = []  # from loading, flushed with the next batch
        if state_dir is not None:
            for sensor in self.assets:
                self._load(sensor)

    # --- models ----------------------------------------------------------------------

    def _new(self, sensor: str) -> SensorModel:
        asset = self.assets[sensor]
        _, bc, cd = asset.levels.zone_boundaries_mm_s  # its own levels, else ISO 20816-3
        return SensorModel(asset.online, bc, cd)

    def model(self, sensor: str) -> SensorModel:
        m = self.models.get(sensor)
        if m is None:
            m = self.models[sensor] = self._new(sensor)
        return m

    def temperature(self, asset: str, celsius: float) -> None:
        """Latest temperature of `asset` (°C), used as a feature of its vibration sensors."""
        if math.isfinite(celsius):
            self.temps[asset] = celsius

    def observe(self, site: str, gateway: str, sensor: str, t_ns: int, seq: int,
                shaft_hz: float, features: dict[str, float], line_amp_g: float,
                physics: str) -> tuple[OnlineResult, list[Point]]:
        """Update `sensor`'s model with one window; its result and `events` points."""
        asset = self.assets[sensor]
        obs = Observation(t_ns, seq, shaft_hz, features, line_amp_g,
                          self.temps.get(asset.id, math.nan), physics)
        result = self.model(sensor).update(obs)
        points: list[Point] = []
        for e in result.events:
            tags = {"site": site, "gateway": gateway, "sensor": sensor, "asset": asset.id}
            fields: dict[str, Any] = {"detail": e.get("detail", "")}
            if "feature" in e:
                fields["feature"] = e["feature"]
            if "value" in e and math.isfinite(e["value"]):
                fields["value"] = float(e["value"])
            points.append(Point("events", {**tags, "event": e["event"]}, fields, t_ns))
            log.info(kv("online_event", sensor=sensor, kind=e["event"],
                        **{k: v for k, v in e.items() if k != "event"}))
        if self.pending_points:
            points += self.pending_points
            self.pending_points = []
        return result, points

    def status(self, sensor: str) -> dict[str, Any]:
        m = self.models.get(sensor)
        return m.status() if m is not None else {"state": "learning", "learned_windows": 0}

    def progress(self, sensor: str) -> float | None:
        """`status(sensor)["progress"]` (None without a model), without the whole status."""
        m = self.models.get(sensor)
        return m.progress() if m is not None else None

    # --- operator actions ------------------------------------------------------------

    def apply(self, command: Any, t_ns: int | None = None
              ) -> tuple[list[Point], list[Transition]]:
        """Apply one operator command (parsed JSON); its `actions` point and transitions.

        A malformed command is counted, logged and ignored. One delivered again is not
        applied again: the caller asks `repeated` first (Pipeline.apply_command).
        """
        t_ns = time.time_ns() if t_ns is None else t_ns
        self.counters["commands"] += 1
        problem = _check_command(command, self.assets)
        if problem:
            self.counters["commands_rejected"] += 1
            log.warning(kv("command_rejected", reason=problem, command=str(command)[:200]))
            return [], []
        action, sensor = command["action"], command["sensor"]
        by = str(command.get("by") or "unknown")[:64]
        note = str(command.get("note") or "")[:500]
        transitions: list[Transition] = []
        m = self.model(sensor)
        if action == "rebaseline":
            m.rebaseline()
            t = self.alerts.clear(sensor)
            result = "baseline reset, learning again"
        elif action == "false_alarm":
            n = m.learn_recent_as_normal()
            t = self.alerts.clear(sensor)
            result = f"{n} recent windows learned as normal"
        else:
            t = None
            result = "acknowledged" if self.alerts.acknowledge(sensor, by) else "no active alarm"
        if t is not None:
            transitions.append(t)
        asset = self.assets[sensor].id
        fields: dict[str, Any] = {"by": by, "result": result, "note": note}
        requested = json_number(command.get("t"))
        if requested is not None and math.isfinite(requested):
            fields["requested_at"] = requested
        tags = {"site": self.site, "sensor": sensor, "asset": asset, "action": action}
        command_id = _command_id(command)
        if command_id is not None:
            # With its point, not the bare id: if the stream stops before writing it, the
            # broker delivers the command again and the same row is written then.
            m.remember_command(command_id, (t_ns, tags, fields))
        # Now, not at the next periodic save: the alert state saved with this command says
        # the alarm is resolved, and a crash must not bring back the baseline that raised it
        # (nor the command's id and point: it is not acknowledged until they are written).
        self.save(sensor)
        log.info(kv("operator_action", action=action, sensor=sensor, by=by, result=result))
        return [Point("actions", tags, fields, t_ns)], transitions

    def repeated(self, command: Any) -> list[Point] | None:
        """The `actions` point of a command applied before (same `id`: the broker delivered
        it again, its acknowledgement lost with a connection or a stop before its point
        was written), to be written again; None for a command not applied yet.

        The same series and time as the first time: InfluxDB keeps one row. An id saved
        by a version that kept no points gives none (logged).
        """
        command_id = _command_id(command)
        if command_id is None or _check_command(command, self.assets):
            return None
        sensor = command["sensor"]
        m = self.models.get(sensor)
        if m is None or command_id not in m.commands:
            return None
        self.counters["commands"] += 1
        self.counters["commands_repeated"] += 1
        record = m.commands[command_id]
        log.info(kv("command_repeated", id=command_id, action=command["action"],
                    sensor=sensor, actions_point="written again" if record is not None
                    else "not known (applied by an older version)"))
        if record is None:
            return []
        t_ns, tags, fields = record
        return [Point("actions", dict(tags), dict(fields), t_ns)]

    # --- persistence -----------------------------------------------------------------

    def adopt(self, sensor: str, model: SensorModel | None) -> None:
        """Take `sensor`'s model, from its state file or another worker (None: start
        learning)."""
        if model is None:
            self.models.pop(sensor, None)
            return
        fresh = self._new(sensor)
        # The config may have changed since the model was saved: its policy and zones win.
        model.policy, model.zone_c, model.zone_d = fresh.policy, fresh.zone_c, fresh.zone_d
        self.models[sensor] = model
        self.counters["state_loaded"] += 1

    def _dir(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "online"

    def _path(self, sensor: str) -> Path:
        return self._dir() / f"{sensor}.v{STATE_VERSION}.pkl"

    def save_all(self) -> int:
        """Write every sensor's state file atomically, and the alert state (which is also
        written at every transition); the number of sensors written."""
        self.alerts.save()
        n = sum(self.save(sensor) for sensor in list(self.models))
        self.counters["state_saved"] += n
        return n

    def save(self, sensor: str) -> bool:
        """Write `sensor`'s state file atomically; False (logged) if the disk refused it or
        there is no state dir."""
        m = self.models.get(sensor)
        if self.state_dir is None or m is None:
            return False
        blob = pickle.dumps({"format": _FORMAT, "version": STATE_VERSION, "sensor": sensor,
                             "saved_at": time.time(), "model": m},
                            protocol=pickle.HIGHEST_PROTOCOL)
        path = self._path(sensor)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.warning(kv("online_state_save_failed", sensor=sensor, path=path, reason=e))
            return False
        return True

    def _load(self, sensor: str) -> None:
        d = self._dir()
        if not d.is_dir():
            return
        for path in sorted(d.glob(f"{sensor}.v*.pkl")):
            if path != self._path(sensor):
                self._move_aside(sensor, path, f"state file of another version: {path.name}")
        path = self._path(sensor)
        if not path.exists():
            return
        try:
            with path.open("rb") as f:
                data = pickle.load(f)
            ok = (isinstance(data, dict) and data.get("format") == _FORMAT
                  and data.get("version") == STATE_VERSION and data.get("sensor") == sensor
                  and isinstance(data.get("model"), SensorModel)
                  and getattr(data["model"], "version", None) == STATE_VERSION)
            if not ok:
                raise ValueError("not a ballpass online state of this version and sensor")
        except Exception as e:  # any unreadable file (pickle raises many kinds): move aside
            self._move_aside(sensor, path, f"unreadable state file: {type(e).__name__}: {e}")
            return
        model: SensorModel = data["model"]
        self.adopt(sensor, model)
        log.info(kv("online_state_loaded", sensor=sensor, path=path,
                    state=model.status()["state"], learned=model.learned))

    def _move_aside(self, sensor: str, path: Path, reason: str) -> None:
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(path, aside)
        except OSError as e:
            log.warning(kv("online_state_move_failed", sensor=sensor, path=path, reason=e))
        self.counters["state_moved_aside"] += 1
        m = self.model(sensor)
        m.counters["state_moved_aside"] = m.counters.get("state_moved_aside", 0) + 1
        log.warning(kv("online_state_moved_aside", sensor=sensor, path=path, to=aside.name,
                       reason=reason))
        asset = self.assets[sensor].id
        self.pending_points.append(Point("events", {
            "site": self.site, "sensor": sensor, "asset": asset,
            "event": "state_moved_aside"}, {"detail": reason[:500]}, time.time_ns()))


def _command_id(command: Any) -> str | None:
    """The id a command is recognised by when delivered again (None: it has none)."""
    command_id = command.get("id") if isinstance(command, dict) else None
    return command_id[:64] if isinstance(command_id, str) and command_id else None


def _check_command(command: Any, assets: dict[str, AssetConfig]) -> str:
    if not isinstance(command, dict):
        return "not a JSON object"
    if command.get("action") not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}"
    if not isinstance(command.get("sensor"), str) or command["sensor"] not in assets:
        return "unknown sensor"
    return ""
