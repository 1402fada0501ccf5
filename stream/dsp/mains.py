"""Mains hum in an amplitude spectrum: electrical pickup, not vibration.

Pure and batched (numpy; a handful of bins per row). Feeds the diagnosis' sensor conditions
(docs/diagnosis.md rule 1); thresholds live in `ballpass.stream.thresholds`.
"""

from __future__ import annotations

import numpy as np


def mains_share(amp: np.ndarray, df: float, shaft_hz: np.ndarray, mains_hz: float,
                harmonics: int, shaft_orders: int, lo_hz: float) -> np.ndarray:
    """(B,) share of a spectrum's power at mains `mains_hz` (Hz) and its harmonics 1..
    `harmonics` (±2 bins each), leaving out any such line within 2 bins of a shaft harmonic
    1..`shaft_orders` (a machine vibrates there for its own reasons).

    `amp`: (B, M) amplitude spectrum (g) with bin spacing `df` (Hz); the total is the power
    of the bins above `lo_hz` (Hz). Vectorised numpy: a handful of bins per row.
    """
    b, m = amp.shape
    power = amp * amp
    lo = max(1, int(np.ceil(lo_hz / df)))
    total = power[:, lo:].sum(axis=1)
    share = np.zeros(b)
    shafts = shaft_hz[:, None] * np.arange(1, shaft_orders + 1)[None, :]
    for k in range(1, harmonics + 1):
        f = k * mains_hz
        c = round(f / df)
        if c + 2 >= m:
            break
        line = power[:, c - 2 : c + 3].sum(axis=1)
        clear = np.all(np.abs(shafts - f) > 2.0 * df, axis=1)
        share += np.where(clear, line, 0.0)
    return np.where(total > 0.0, share / np.maximum(total, 1e-300), 0.0)
