"""De-duplication of windows by source (site, gateway, sensor) and seq.

MQTT QoS 1 delivers at least once and the gateway re-sends after an outage, so the
same window can arrive twice. A window counts as seen only once it is written (the
service calls `mark` after the write), so a failed write is processed again on redelivery.
The source names the gateway, so one gateway's windows can never shadow another's.
"""

from __future__ import annotations

from collections import OrderedDict

Source = tuple[str, str, str]  # (site, gateway, sensor)


class Deduplicator:
    """Remembers the last `horizon` sequence numbers of each source."""

    def __init__(self, horizon: int = 8192) -> None:
        self.horizon = horizon
        # Per source, the marked seqs in marking order: the oldest is forgotten first.
        self._seen: dict[Source, OrderedDict[int, None]] = {}

    def seen(self, source: Source, seq: int) -> bool:
        return seq in self._seen.get(source, ())

    def mark(self, source: Source, seq: int) -> None:
        seen = self._seen.setdefault(source, OrderedDict())
        if seq in seen:
            return
        seen[seq] = None
        if len(seen) > self.horizon:
            seen.popitem(last=False)

    def recent(self, source: Source, n: int) -> list[int]:
        """The last `n` seqs marked for `source`, oldest first (a worker's hand-over)."""
        seen = self._seen.get(source)
        return list(seen)[-n:] if seen else []

    def restore(self, source: Source, seqs: list[int]) -> None:
        """Replace what is remembered of `source` by `seqs` (oldest first)."""
        self._seen[source] = OrderedDict.fromkeys(seqs[-self.horizon:])
