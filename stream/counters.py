"""The stream service's counters: what it took, wrote, refused and why (status, metrics)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StreamCounters:
    received: int = 0  # window messages taken from the broker, duplicates included
    ingested: int = 0  # distinct windows accepted for processing
    written: int = 0  # windows whose points InfluxDB accepted
    spooled: int = 0  # windows whose points the database refused (kept in the spool)
    dead_lettered: int = 0  # windows refused alone (kept in the dead-letter file)
    duplicates: int = 0
    replayed: int = 0  # windows taken in before a crash and redelivered: written, not counted
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    write_retries: int = 0
    alerts_fired: int = 0
    alerts_resolved: int = 0
    # Refusals come from the event loop, the batch's worker thread and the spool's thread:
    # `+=` on a Counter is several steps, and one could be lost between them.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def refuse(self, reason: str, n: int = 1, *, dead_lettered: bool = False) -> None:
        """Count `n` messages refused for `reason` (and kept in the dead-letter file)."""
        with self._lock:
            self.rejected[reason] += n
            if dead_lettered:
                self.dead_lettered += n

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received, "ingested": self.ingested, "written": self.written,
            "spooled": self.spooled, "dead_lettered": self.dead_lettered,
            "duplicates": self.duplicates, "replayed": self.replayed,
            "rejected": dict(self.rejected),
            "write_retries": self.write_retries, "alerts_fired": self.alerts_fired,
            "alerts_resolved": self.alerts_resolved,
        }
