"""Logging set-up: one line per event, `event=name key=value ...` (or one JSON object).

`kv(...)` returns an `Event`: the kv text itself (a `str`, so it logs and compares as
before) that also keeps the event name and the fields, so the JSON format
(`setup(fmt="json")`, `ballpass --log-format json`) writes the same event names and
keys without re-parsing the text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from typing import Any

FORMATS = ("kv", "json")
# Keys of every JSON line; an event field of the same name is written as `_name`.
_RESERVED = ("ts", "level", "logger", "event", "msg", "exc")


class Event(str):
    """One event line, `event=name key=value ...`, with its parts: `event` (the name)
    and `fields` (the values as given, not yet formatted)."""

    event: str
    fields: dict[str, Any]

    def __new__(cls, event: str, fields: dict[str, Any]) -> Event:
        self = super().__new__(cls, _format(event, fields))
        self.event = event
        self.fields = fields
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (a QueueHandler) keeps the parts
        return (Event, (self.event, self.fields))


def kv(event: str, **fields: Any) -> Event:
    """Format one event line: `event=name key=value ...`; values with spaces are quoted,
    and line breaks are escaped (`\\n`) so that one event stays one line."""
    return Event(event, fields)


def _format(event: str, fields: dict[str, Any]) -> str:
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\n\r\t'):
            text = '"' + (text.replace("\\", "\\\\").replace('"', '\\"')
                          .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")) + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _json_value(value: Any) -> Any:
    """A field value as JSON: numbers, bools, None and strings as they are; a float that
    JSON cannot hold (NaN, ±inf) and anything else as its text (as kv writes it)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` (UTC, ISO 8601 with ms), `level`, `logger`,
    `event` and the event's fields; `msg` for a message that is not a `kv` event (a
    third-party library's); `exc`, the formatted traceback, when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name}
        if isinstance(record.msg, Event) and not record.args:
            out["event"] = record.msg.event
            for key, value in record.msg.fields.items():
                out[f"_{key}" if key in _RESERVED else key] = _json_value(value)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "INFO", stream: Any = None, fmt: str = "kv") -> None:
    """Route every logger to stderr (or `stream`): `fmt` "kv" writes
    `time level logger message`, "json" one JSON object per line (`JsonFormatter`)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and influxdb-client are chatty at INFO; their errors still reach us.
    for noisy in ("paho", "urllib3", "influxdb_client", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
