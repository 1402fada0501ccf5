"""Wall-clock jumps, seen against the monotonic clock.

A board without a real-time clock boots with a wrong wall clock and NTP steps it later,
by years at times. The outbox dates its rows by the wall clock for its age bound, so it
follows the jumps (`gateway/outbox.py`); the gateway shows them as a status problem.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOCK_JUMP_S = 2.0
"""A wall-clock step larger than this (s) against the monotonic clock is a jump."""


class ClockWatch:
    """Compares wall-clock and monotonic progress between `check` calls.

    `check` returns the jump in ns (wall minus monotonic progress) when it exceeds
    `threshold_s`, else None. The clocks are injectable for tests.
    """

    def __init__(self, threshold_s: float = CLOCK_JUMP_S, *,
                 wall_ns: Callable[[], int] = time.time_ns,
                 mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.threshold_ns = int(threshold_s * 1e9)
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self._wall, self._mono = wall_ns(), mono_ns()

    @property
    def last_wall_ns(self) -> int:
        """The wall clock at the last `check` (ns since the epoch)."""
        return self._wall

    def check(self) -> int | None:
        wall, mono = self.wall_ns(), self.mono_ns()
        jump = (wall - self._wall) - (mono - self._mono)
        self._wall, self._mono = wall, mono
        return jump if abs(jump) > self.threshold_ns else None

    def mark(self) -> tuple[int, int]:
        """Where the watch is, for `back_to` (a caller that could not act on a jump)."""
        return self._wall, self._mono

    def back_to(self, mark: tuple[int, int]) -> None:
        """Forget the checks since `mark`: the next `check` sees their jumps again."""
        self._wall, self._mono = mark
