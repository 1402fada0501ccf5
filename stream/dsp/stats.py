"""Time-domain statistics of acceleration windows, batched over rows.

Every kernel takes a (B, N) float64 array of acceleration in g and returns per-row
values. The mean (sensor offset, gravity on a DC-coupled sensor) is removed first:
an accelerometer's vibration statistics are about the AC part.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ballpass.stream.dsp._check import check_windows

STAT_NAMES: tuple[str, ...] = ("rms_g", "peak_g", "crest", "kurtosis", "skewness", "clip_fraction")


@njit(cache=True)
def _moments(x: np.ndarray) -> np.ndarray:
    """Per row: rms (g), peak |x| (g), crest, kurtosis (Pearson), skewness, clip fraction.

    Two passes (mean, then central moments) for accuracy. A constant row has rms 0 and
    crest, kurtosis and skewness 0 (undefined; 0 keeps the row writable to InfluxDB, and
    the diagnosis reports such a row as a sensor fault). The clip fraction is the share of
    samples sitting exactly at the row's maximum or minimum value: a clipped sensor
    produces runs of identical extreme values.
    """
    b, n = x.shape
    out = np.zeros((b, 6))
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
        n_ext = 0
        if hi > lo:
            for j in range(n):
                if row[j] == hi or row[j] == lo:
                    n_ext += 1
        out[i, 0] = rms
        out[i, 1] = peak
        if m2 > 0.0:
            out[i, 2] = peak / rms
            out[i, 3] = m4 / (m2 * m2)
            out[i, 4] = m3 / (m2 * rms)
        out[i, 5] = n_ext / n
    return out


def moments(x: np.ndarray) -> np.ndarray:
    """(B, 6) array of rms_g, peak_g, crest, kurtosis, skewness, clip_fraction per row.

    `x` is (B, N) float64 acceleration in g; see `_moments`.
    """
    return _moments(check_windows(x))
