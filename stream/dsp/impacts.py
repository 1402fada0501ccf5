"""Impact intervals: how often the envelope's impacts follow each other at a defect's period.

A defect is struck once per period P of its kinematic rate (1/BPFO, 1/BPFI, 1/(2·BSF)).
When its strikes keep one phase for the whole window, the envelope spectrum shows the rate
as a line. A ball's do not: the defect on the ball strikes only while the ball's wandering
spin axis brings it into the contact track, so the strikes come in short runs whose phase
jumps from run to run, and the lines smear into the floor (the CWRU ball records; Smith &
Randall, MSSP 64-65 (2015), find most of them undiagnosable by envelope spectra). Inside a
run, though, consecutive strikes are still P apart (2P when one strike is too weak to see).
Counting the lags between impacts tests for that local period without needing phase.

Per window: impacts are the envelope's local maxima above median + k·MAD (estimated on at
most `_MEDIAN_SAMPLES` evenly strided samples, a robust level the impacts themselves barely
move), a maximum within `gap` samples of the last kept impact replacing it when larger (one
impact's ringing gives several maxima). For each impact and each of its next `max_lags`
impacts, the lag over each family's period, m = lag / P, is counted as a *hit* when it falls
in a `hit` range (around 1 and 2) and as a *flank* when it falls in a `flank` range (around
them, where a lag lands no more often than anywhere else when the impacts have no period).
The flanks give the rate of lags expected without a period; the diagnosis pools the counts
of a sensor's recent windows and tests hits against it (`ballpass.stream.impact_history`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MEDIAN_SAMPLES = 512
"""Samples the envelope's median and MAD are estimated on (strided): the median of 512
samples is within about 5 % of the row's, and two selections on 512 cost 4x less than on
2048 (measured: 20 against 50 µs per window of 8192 in `ballpass bench`'s batch)."""


@njit(cache=True, nogil=True)
def _impact_times(env: np.ndarray, k_mad: float, gap: int) -> np.ndarray:
    """Indices of the impacts of one envelope row (see the module docstring)."""
    n = env.shape[0]
    stride = max(1, n // _MEDIAN_SAMPLES)
    sub = env[::stride].copy()
    med = np.median(sub)
    mad = 1.4826 * np.median(np.abs(sub - med))
    level = med + k_mad * mad
    # Kept impacts are local maxima (two apart at least) and `gap` apart: room for n // 2 + 1
    # was 16 MB at 2^22 samples, this bound is what they can take.
    out = np.empty(n // max(2, gap) + 1, dtype=np.int64)
    count = 0
    for j in range(1, n - 1):
        v = env[j]
        if v > level and v > env[j - 1] and v >= env[j + 1]:
            if count > 0 and j - out[count - 1] < gap:
                if v > env[out[count - 1]]:
                    out[count - 1] = j
                continue
            out[count] = j
            count += 1
    return out[:count]


@njit(cache=True, nogil=True)
def _interval_counts(
    times: np.ndarray,
    periods: np.ndarray,
    hit: np.ndarray,
    flank: np.ndarray,
    max_lags: int,
    out: np.ndarray,
) -> None:
    """Add the hit and flank counts of impact `times` (samples) for each period (samples)
    to `out` (F, 2): column 0 hits, column 1 flanks."""
    t = times.shape[0]
    for a in range(t):
        for b in range(a + 1, min(a + 1 + max_lags, t)):
            lag = float(times[b] - times[a])
            for f in range(periods.shape[0]):
                m = lag / periods[f]
                for r in range(hit.shape[0]):
                    if hit[r, 0] < m < hit[r, 1]:
                        out[f, 0] += 1.0
                for r in range(flank.shape[0]):
                    if flank[r, 0] < m < flank[r, 1]:
                        out[f, 1] += 1.0


@njit(cache=True, nogil=True)
def _impact_row(
    env: np.ndarray,
    periods: np.ndarray,
    k_mad: float,
    gap: int,
    hit: np.ndarray,
    flank: np.ndarray,
    max_lags: int,
    counts: np.ndarray,
) -> int:
    """Impact-interval counts of one envelope row into `counts` (F, 2); returns the number
    of impacts."""
    times = _impact_times(env, k_mad, gap)
    counts[:, :] = 0.0
    _interval_counts(times, periods, hit, flank, max_lags, counts)
    return times.shape[0]


@njit(cache=True, nogil=True)
def _impact_rows(
    env: np.ndarray,
    periods: np.ndarray,
    k_mad: float,
    gaps: np.ndarray,
    hit: np.ndarray,
    flank: np.ndarray,
    max_lags: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`_impact_row` over a batch: env (B, N), periods (B, F) and gaps (B,) in samples."""
    b = env.shape[0]
    counts = np.zeros((b, periods.shape[1], 2))
    n_impacts = np.zeros(b)
    for i in range(b):
        n_impacts[i] = _impact_row(env[i], periods[i], k_mad, gaps[i], hit, flank, max_lags,
                                   counts[i])
    return counts, n_impacts


def impact_interval_counts(
    env: np.ndarray,
    periods: np.ndarray,
    k_mad: float,
    gaps: np.ndarray,
    hit: np.ndarray,
    flank: np.ndarray,
    max_lags: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Hit and flank counts (B, F, 2) and the number of impacts (B,) of each envelope row.

    env: (B, N) envelopes (g); periods: (B, F) defect periods in samples (> 0); gaps: (B,)
    merge distance in samples (>= 1); hit, flank: (R, 2) ranges of lag / period; k_mad:
    impact level in MADs above the median; max_lags: successors each impact is paired with.
    """
    env = np.ascontiguousarray(env, dtype=np.float64)
    periods = np.ascontiguousarray(periods, dtype=np.float64)
    gaps = np.ascontiguousarray(gaps, dtype=np.int64)
    if env.ndim != 2 or periods.ndim != 2 or periods.shape[0] != env.shape[0]:
        raise ValueError(f"env (B, N) and periods (B, F) expected, got {env.shape}, "
                         f"{periods.shape}")
    if gaps.shape != (env.shape[0],) or np.any(gaps < 1):
        raise ValueError(f"gaps: need ({env.shape[0]},) values >= 1, got {gaps}")
    if not np.all(np.isfinite(periods) & (periods > 0)):
        raise ValueError("periods: must be finite and > 0")
    return _impact_rows(env, periods, float(k_mad), gaps,
                        np.ascontiguousarray(hit, dtype=np.float64),
                        np.ascontiguousarray(flank, dtype=np.float64), int(max_lags))
