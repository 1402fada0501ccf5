"""A sensor's recent impact-interval evidence, pooled over windows, and its significance.

One window of a ball fault holds too few strikes to show a period (`dsp.impacts`): a ball
strikes in short runs. A fault stays for days, so the counts of a sensor's last
`IMPACT_HISTORY_WINDOWS` windows are summed, and the diagnosis of each window reads the
pooled counts (rule 3b of `diagnosis`). The pooled counts see only windows up to the
current one, in the order they were captured, as the stream sees them.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
from scipy.special import pdtrc

from ballpass.stream import thresholds as th

_HIT_WIDTH = sum(b - a for a, b in th.IMPACT_HIT)
_FLANK_WIDTH = sum(b - a for a, b in th.IMPACT_FLANK)


def expected_hits(flank: float) -> float:
    """Hits expected without a period, from the flank count (lags per unit of lag/period),
    at least 0.5 so that a handful of lags is never significant."""
    return max(flank * _HIT_WIDTH / _FLANK_WIDTH, 0.5)


def interval_score(hits: float, flank: float) -> float:
    """-log10 of the Poisson probability of at least `hits` hits where the flanks expect
    `expected_hits(flank)`: 3 means p = 1e-3. 0 without hits."""
    if hits < 1:
        return 0.0
    p = float(pdtrc(hits - 1.0, expected_hits(flank)))
    return -math.log10(max(p, 1e-300))


class ImpactHistory:
    """Rolling sums of impact-interval counts (F, 2) per sensor over its last `windows`."""

    def __init__(self, windows: int = th.IMPACT_HISTORY_WINDOWS) -> None:
        if windows < 1:
            raise ValueError(f"windows: need >= 1, got {windows}")
        self.windows = windows
        self._recent: dict[str, deque[np.ndarray]] = {}

    def add(self, sensor: str, counts: np.ndarray) -> np.ndarray:
        """Add one window's counts (F, 2) of `sensor`; returns the pooled counts, this
        window included."""
        recent = self._recent.setdefault(sensor, deque(maxlen=self.windows))
        recent.append(np.array(counts, dtype=np.float64))
        return np.sum(recent, axis=0)

    def export(self, sensor: str) -> list[list[list[float]]]:
        """`sensor`'s recent counts, oldest first, as plain lists (for `restore`)."""
        return [c.tolist() for c in self._recent.get(sensor, ())]

    def restore(self, sensor: str, recent: list[list[list[float]]]) -> None:
        self._recent[sensor] = deque((np.array(c, dtype=np.float64) for c in recent),
                                     maxlen=self.windows)

    @contextlib.contextmanager
    def undo_on_error(self, sensors: Iterable[str]) -> Iterator[None]:
        """On an error inside, forget what was added to `sensors` inside (the caller runs
        the windows again, one by one)."""
        saved = {s: list(self._recent[s]) if s in self._recent else None for s in sensors}
        try:
            yield
        except BaseException:
            for s, recent in saved.items():
                if recent is None:
                    self._recent.pop(s, None)
                else:
                    self._recent[s] = deque(recent, maxlen=self.windows)
            raise

    def clear(self, sensor: str) -> None:
        """Forget `sensor`'s evidence (maintenance done: the defect is gone)."""
        self._recent.pop(sensor, None)
