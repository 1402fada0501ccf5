"""De-duplication of windows by (sensor, seq).

MQTT QoS 1 delivers at least once and the gateway re-sends after an outage, so the
same window can arrive twice. A window counts as seen only once it is written (the
service calls `mark` after the write), so a failed write is processed again on redelivery.
"""

from __future__ import annotations

from collections import OrderedDict


class Deduplicator:
    """Remembers the last `horizon` sequence numbers of each sensor."""

    def __init__(self, horizon: int = 8192) -> None:
        self.horizon = horizon
        # Per sensor, the marked seqs in marking order: the oldest is forgotten first.
        self._seen: dict[str, OrderedDict[int, None]] = {}

    def seen(self, sensor: str, seq: int) -> bool:
        return seq in self._seen.get(sensor, ())

    def mark(self, sensor: str, seq: int) -> None:
        seen = self._seen.setdefault(sensor, OrderedDict())
        if seq in seen:
            return
        seen[seq] = None
        if len(seen) > self.horizon:
            seen.popitem(last=False)
