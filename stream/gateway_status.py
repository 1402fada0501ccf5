"""Validation of a gateway's status message at the edge of the stream (pure, no I/O).

The status JSON (ARCHITECTURE.md section 5, `gateway/status.py`) comes from a gateway, so
it is untrusted input: it is shown on the evidence page, kept in the stream's status
file and written to InfluxDB. `parse_status` turns the payload bytes plus the site and
gateway of the topic it arrived on into a typed `GatewayStatus`, or a reason string that
names the offending field. Only the fields below are kept; anything else in the message
is ignored (not stored), so a newer gateway with extra fields still reports its state.

Contract checked:
- the payload is at most `MAX_PAYLOAD` bytes of UTF-8 JSON, an object;
- `state` is "online" or "offline" (required; the last will is `{"state": "offline"}`);
- `gateway` and `site`, when present, match the id pattern and equal the topic's;
- `version` is a printable string of at most `MAX_VERSION` characters;
- `started_at` and `t` are ISO 8601 UTC strings or finite non-negative numbers (s);
- `counters` holds only known names, each a non-negative int (bool is not an int here);
- `sensors` maps at most `MAX_SENSORS` ids (id pattern) to `{"state": "ok"|"fault"|
  "disabled", "reason": str}` (reasons are cut to MAX_REASON characters);
- `problems` maps at most `MAX_PROBLEMS` names to reasons (same bounds);
- `config` is `{"state": "none"|"applied"|"rejected", "reason", "t"}`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ballpass.json_number import json_number

ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
STATES = ("online", "offline")
SENSOR_STATES = ("ok", "fault", "disabled")
CONFIG_STATES = ("none", "applied", "rejected")
COUNTERS = ("captured", "queued", "published", "dropped", "replayed")
MAX_PAYLOAD = 64 * 1024  # bytes
MAX_VERSION = 64  # characters
MAX_REASON = 500  # characters
MAX_SENSORS = 256
MAX_PROBLEMS = 32
MAX_COUNTER = 2**63 - 1  # fits an InfluxDB integer field


@dataclass(frozen=True)
class SensorStatus:
    state: str  # ok | fault | disabled
    reason: str = ""


@dataclass(frozen=True)
class GatewayStatus:
    """A validated status; `as_dict` is what the stream stores and shows."""

    state: str
    gateway: str
    site: str
    version: str | None = None
    started_at: str | float | None = None
    t: str | float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    sensors: dict[str, SensorStatus] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "gateway": self.gateway,
                               "site": self.site, "version": self.version,
                               "started_at": self.started_at, "t": self.t,
                               "counters": dict(self.counters),
                               "sensors": {k: {"state": v.state, "reason": v.reason}
                                           for k, v in self.sensors.items()},
                               "problems": dict(self.problems)}
        if self.config is not None:
            out["config"] = dict(self.config)
        return out


class _Bad(Exception):
    pass


def _text(value: Any, where: str, limit: int, *, cut: bool = False) -> str:
    """A printable string of at most `limit` characters; with `cut`, a longer one is
    shortened (a reason is free text: a long one must not hide the gateway's state)."""
    if not isinstance(value, str):
        raise _Bad(f"{where}: must be a string, got {type(value).__name__}")
    if len(value) > limit:
        if not cut:
            raise _Bad(f"{where}: longer than {limit} characters ({len(value)})")
        value = value[: limit - 1] + "…"
    if any(not c.isprintable() for c in value):
        raise _Bad(f"{where}: contains control characters")
    return value


def _id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise _Bad(f"{where}: must match {ID_PATTERN.pattern}, got {_short(value)}")
    return value


def _time(value: Any, where: str) -> str | float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Bad(f"{where}: must be an ISO 8601 time or seconds, got a boolean")
    if isinstance(value, int | float):
        seconds = json_number(value)
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            raise _Bad(f"{where}: must be finite and >= 0, got {_short(value)}")
        return seconds
    if isinstance(value, str) and len(value) <= 40 and ISO_TIME.fullmatch(value):
        return value
    raise _Bad(f"{where}: must be an ISO 8601 time or seconds, got {_short(value)}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where}: must be an object, got {type(value).__name__}")
    return value


def _short(value: Any) -> str:
    """A bounded repr for a reason string (the reason goes to a log line)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def parse_status(payload: bytes | bytearray | str, site: str, gateway: str
                 ) -> GatewayStatus | str:
    """The validated status of `gateway` in `site` (from the topic), or why not."""
    try:
        return _parse(payload, site, gateway)
    except _Bad as e:
        return str(e)


def _parse(payload: bytes | bytearray | str, site: str, gateway: str) -> GatewayStatus:
    _id(site, "topic site")
    _id(gateway, "topic gateway")
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(raw) > MAX_PAYLOAD:
        raise _Bad(f"payload: larger than {MAX_PAYLOAD} bytes ({len(raw)})")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Bad(f"payload: not UTF-8 JSON ({_short(str(e))})") from None
    data = _object(data, "status")
    state = data.get("state")
    if state not in STATES:
        raise _Bad(f"state: must be one of {'|'.join(STATES)}, got {_short(state)}")
    for key, topic_value in (("gateway", gateway), ("site", site)):
        if key in data and _id(data[key], key) != topic_value:
            raise _Bad(f"{key}: {data[key]!r} differs from the topic's {topic_value!r}")
    version = None if data.get("version") is None else _text(data["version"], "version",
                                                              MAX_VERSION)
    counters: dict[str, int] = {}
    for name, value in _object(data.get("counters") or {}, "counters").items():
        if name not in COUNTERS:
            raise _Bad(f"counters.{_short(name)}: unknown counter "
                       f"(known: {', '.join(COUNTERS)})")
        if isinstance(value, bool) or not isinstance(value, int) \
                or not 0 <= value <= MAX_COUNTER:
            raise _Bad(f"counters.{name}: must be a non-negative integer, got "
                       f"{_short(value)}")
        counters[name] = value
    sensors_in = _object(data.get("sensors") or {}, "sensors")
    if len(sensors_in) > MAX_SENSORS:
        raise _Bad(f"sensors: more than {MAX_SENSORS} entries ({len(sensors_in)})")
    sensors: dict[str, SensorStatus] = {}
    for sid, entry in sensors_in.items():
        _id(sid, "sensors key")
        entry = _object(entry, f"sensors.{sid}")
        s_state = entry.get("state")
        if s_state not in SENSOR_STATES:
            raise _Bad(f"sensors.{sid}.state: must be one of {'|'.join(SENSOR_STATES)}, "
                       f"got {_short(s_state)}")
        reason = _text(entry.get("reason") or "", f"sensors.{sid}.reason", MAX_REASON,
                       cut=True)
        sensors[sid] = SensorStatus(s_state, reason)
    problems_in = _object(data.get("problems") or {}, "problems")
    if len(problems_in) > MAX_PROBLEMS:
        raise _Bad(f"problems: more than {MAX_PROBLEMS} entries ({len(problems_in)})")
    problems = {_id(name, "problems key"): _text(reason, f"problems.{name}", MAX_REASON,
                                                 cut=True)
                for name, reason in problems_in.items()}
    config = None
    if data.get("config") is not None:
        c = _object(data["config"], "config")
        if c.get("state") not in CONFIG_STATES:
            raise _Bad(f"config.state: must be one of {'|'.join(CONFIG_STATES)}, got "
                       f"{_short(c.get('state'))}")
        config = {"state": c["state"],
                  "reason": _text(c.get("reason") or "", "config.reason", MAX_REASON,
                                  cut=True),
                  "t": _text(c.get("t") or "", "config.t", 40)}
    return GatewayStatus(state, gateway, site, version, _time(data.get("started_at"),
                         "started_at"), _time(data.get("t"), "t"), counters, sensors,
                         problems, config)
