"""The dead-letter file: window messages refused alone, with their reason, for an operator.

One JSON object per line: `{"t", "reason", "topic", "detail", "bytes", "payload_b64"}`;
the payload is kept when it is at most `KEEP_PAYLOAD_BYTES` (a window's header and a few
thousand samples; bigger payloads keep only their size). The file is bounded: past
`max_bytes` it is renamed to `deadletter.jsonl.1` (replacing the previous one), so a
gateway that sends nothing but garbage costs at most twice `max_bytes` of disk.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

from ballpass.log import kv

log = logging.getLogger(__name__)

KEEP_PAYLOAD_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class DeadLetters:
    """Appends refused messages to `path`; never raises (a disk failure is logged)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # Called from the event loop, the batch's worker thread and the spool's thread: two
        # rotations at once would put the newer full file over the older one.
        self._lock = threading.Lock()

    def add(self, reason: str, topic: str, detail: str, payload: bytes | None = None) -> None:
        record: dict[str, object] = {"t": time.time(), "reason": reason, "topic": topic,
                                     "detail": detail}
        if payload is not None:
            record["bytes"] = len(payload)
            if len(payload) <= KEEP_PAYLOAD_BYTES:
                record["payload_b64"] = base64.b64encode(payload).decode("ascii")
        line = json.dumps(record) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line)
        except OSError as e:
            log.error(kv("deadletter_write_failed", path=str(self.path), reason=e))
