"""A bounded set of window seqs, kept as runs of consecutive numbers.

A gateway numbers each sensor's windows 1, 2, 3, ... (a new outbox starts above any earlier
one, gateway/outbox.py), so the seqs a state has taken in are one or a few runs whatever
their count: cheap to test, to keep in memory and to write with the state at every batch.
"""

from __future__ import annotations

import bisect


class SeqRuns:
    """At most `limit` seqs; the lowest are forgotten first (they are the oldest)."""

    def __init__(self, limit: int, runs: list[list[int]] | None = None) -> None:
        """`runs`: as `as_json` returned them ([first, last] pairs, ascending)."""
        if limit < 1:
            raise ValueError(f"limit: need >= 1, got {limit}")
        self.limit = limit
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._count = 0
        for first, last in runs or ():
            first, last = int(first), int(last)
            if last < first or (self._lasts and first <= self._lasts[-1] + 1):
                raise ValueError(f"seq runs: not ascending, disjoint runs: {runs!r:.200}")
            self._firsts.append(first)
            self._lasts.append(last)
            self._count += last - first + 1
        self._forget_oldest()

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def __len__(self) -> int:
        return self._count

    def add(self, seq: int, newest: bool = True) -> None:
        """Remember `seq`. `newest`: its window was captured after every one remembered
        (False: an older one, whose low seq cannot mean that the seqs started again)."""
        if seq in self:
            return
        if newest and self._count >= self.limit and self._firsts and seq < self._firsts[0]:
            # Below everything remembered, nothing to forget below it, and captured after
            # all of them: the gateway's seqs started again (a replaced outbox seeded while
            # its clock was behind, gateway/outbox.py, capturing once the clock is right).
            # Remember the new ones. A low seq of an older window must not wipe the memory:
            # the windows it held would count twice when they come back as replays.
            self._firsts, self._lasts, self._count = [], [], 0
        i = bisect.bisect_right(self._firsts, seq)  # runs [0, i) start at or below seq
        joins_left = i > 0 and self._lasts[i - 1] == seq - 1
        joins_right = i < len(self._firsts) and self._firsts[i] == seq + 1
        if joins_left and joins_right:
            self._lasts[i - 1] = self._lasts[i]
            del self._firsts[i], self._lasts[i]
        elif joins_left:
            self._lasts[i - 1] = seq
        elif joins_right:
            self._firsts[i] = seq
        else:
            self._firsts.insert(i, seq)
            self._lasts.insert(i, seq)
        self._count += 1
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        while self._count > self.limit:
            excess = self._count - self.limit
            size = self._lasts[0] - self._firsts[0] + 1
            if size <= excess:
                del self._firsts[0], self._lasts[0]
                self._count -= size
            else:
                self._firsts[0] += excess
                self._count -= excess

    def as_json(self) -> list[list[int]]:
        """The runs, [first, last] ascending (for `SeqRuns(limit, runs)`)."""
        return [[a, b] for a, b in zip(self._firsts, self._lasts, strict=True)]
