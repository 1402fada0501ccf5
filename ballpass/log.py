"""Logging set-up: one line per event, `event=name key=value ...`."""

from __future__ import annotations

import logging
import sys
from typing import Any


def kv(event: str, **fields: Any) -> str:
    """Format one event line: `event=name key=value ...`; values with spaces are quoted,
    and line breaks are escaped (`\\n`) so that one event stays one line."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\n\r\t'):
            text = '"' + (text.replace("\\", "\\\\").replace('"', '\\"')
                          .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")) + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger to stderr (or `stream`) as `time level logger message`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and influxdb-client are chatty at INFO; their errors still reach us.
    for noisy in ("paho", "urllib3", "influxdb_client", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
