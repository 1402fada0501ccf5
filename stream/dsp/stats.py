"""Time-domain statistics of acceleration windows, batched over rows.

Every kernel takes a (B, N) float64 array of acceleration in g and returns per-row
values. The mean (sensor offset, gravity on a DC-coupled sensor) is removed first:
an accelerometer's vibration statistics are about the AC part.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ballpass.stream.dsp._check import check_windows

STAT_NAMES: tuple[str, ...] = ("rms_g", "peak_g", "crest", "kurtosis", "skewness",
                                "clip_fraction", "spikes")


@njit(cache=True, nogil=True)
def _isolated(row: np.ndarray, j: int, med: float, a: float, spike_isolation: float) -> bool:
    """Whether sample `j` (deviation `a` from `med`) is a spike: at most two samples wide
    (not both next neighbours above half of it), its neighbours 2 to 4 away on both sides
    below `spike_isolation` × `a`."""
    for off in (-4, -3, -2, 2, 3, 4):
        if abs(row[j + off] - med) >= spike_isolation * a:
            return False
    return not (abs(row[j - 1] - med) >= 0.5 * a and abs(row[j + 1] - med) >= 0.5 * a)


@njit(cache=True, nogil=True)
def _moments(x: np.ndarray, plateau_tol: float, spike_k: float, spike_isolation: float,
             spike_samples: int) -> np.ndarray:
    """Per row: rms (g), peak |x| (g), crest, kurtosis (Pearson), skewness, clip fraction,
    spikes.

    Two passes (mean, then central moments) for accuracy, and a third for the sensor's
    health. A constant row has rms 0 and crest, kurtosis and skewness 0 (undefined; 0 keeps
    the row writable to InfluxDB, and the diagnosis reports such a row as a sensor fault).

    Clip fraction: the share of samples within `plateau_tol` × the typical sample-to-sample
    step (1.4826 × the median |step|, over `spike_samples` strided steps) of the row's
    maximum or minimum. A saturated sensor piles
    samples on its rail, flat to within its noise; an unsaturated signal reaches its extreme
    with one sample, its neighbours a typical step away.

    Spikes: samples deviating from the row's median by more than `spike_k` robust standard
    deviations (1.4826 × the median absolute deviation, over `spike_samples` evenly strided
    samples: enough for a robust scale, cheap)
    at most two samples wide (not both next neighbours above half of it), whose neighbours 2
    to 4 samples away on both sides all stay below `spike_isolation` × that deviation. A
    structure struck by an impact rings for milliseconds (many samples);
    an electrical spike is one or two samples wide. The first and last 4 samples are never
    spikes: their neighbourhood is incomplete.
    """
    b, n = x.shape
    out = np.zeros((b, 7))
    for i in range(b):
        row = x[i]
        mean = 0.0
        for j in range(n):
            mean += row[j]
        mean /= n
        m2 = 0.0
        m3 = 0.0
        m4 = 0.0
        peak = 0.0
        hi = row[0]
        lo = row[0]
        for j in range(n):
            d = row[j] - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
            a = abs(d)
            if a > peak:
                peak = a
            if row[j] > hi:
                hi = row[j]
            if row[j] < lo:
                lo = row[j]
        m2 /= n
        m3 /= n
        m4 /= n
        rms = np.sqrt(m2)
        out[i, 0] = rms
        out[i, 1] = peak
        if m2 > 0.0:
            out[i, 2] = peak / rms
            out[i, 3] = m4 / (m2 * m2)
            out[i, 4] = m3 / (m2 * rms)
        if hi <= lo:
            continue
        stride = max(1, n // spike_samples)
        sub = row[::stride].copy()
        # The typical step, robustly: one spike must not widen the rails' tolerance.
        steps = np.abs(row[stride::stride] - row[stride - 1 : n - 1 : stride])
        step = 1.4826 * np.median(steps) if steps.size else 0.0
        tol = plateau_tol * step
        med = np.median(sub)
        limit = spike_k * 1.4826 * np.median(np.abs(sub - med))
        top, bottom = hi - tol, lo + tol
        n_ext = 0
        for j in range(n):  # branch-free, so that it vectorises
            n_ext += (row[j] >= top) | (row[j] <= bottom)
        spikes = 0
        if limit > 0.0:
            # Within 4 samples of an end the neighbourhood is cut: an impact that starts in
            # the last samples would look isolated, its ringing being in the next window.
            for j in range(4, n - 4):
                a = abs(row[j] - med)
                if a > limit and _isolated(row, j, med, a, spike_isolation):
                    spikes += 1
        out[i, 5] = n_ext / n
        out[i, 6] = spikes
    return out


def moments(x: np.ndarray, plateau_tol: float = 0.05, spike_k: float = 8.0,
            spike_isolation: float = 0.25, spike_samples: int = 256) -> np.ndarray:
    """(B, 7) array of rms_g, peak_g, crest, kurtosis, skewness, clip_fraction, spikes per
    row. `x` is (B, N) float64 acceleration in g; see `_moments` (the stream passes the
    values of `ballpass.stream.thresholds`)."""
    return _moments(check_windows(x), plateau_tol, spike_k, spike_isolation, spike_samples)
