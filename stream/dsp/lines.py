"""Discrete line search in amplitude spectra: amplitude and SNR over the local floor.

For each target frequency the strongest local maximum within ±tolerance is the line;
its floor is the median of `noise_bins` bins on each side just outside the search zone
(median, so neighbouring lines and sidebands do not lift the floor).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ballpass.stream.dsp._check import check_fs

_TINY = 1e-15
"""Added to line and floor (g) so an all-zero spectrum reads 0 dB instead of NaN."""


@njit(cache=True, nogil=True)
def _line_search(
    spec: np.ndarray, df: float, targets: np.ndarray, tol: float, noise_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find lines near `targets` (B, L, H) Hz in `spec` (B, M) with bin spacing `df` Hz.

    Returns frequency (Hz), amplitude (units of spec) and SNR (dB) of each, shape (B, L, H).
    Search zone: the bins nearest f(1−tol) .. f(1+tol) (a line inside the tolerance
    peaks in the bin nearest its frequency, half a bin out at worst), within
    1 .. M−2. The line is
    the largest bin in the zone that is ≥ both neighbours; if the zone holds no local
    maximum (only the flank of a stronger line outside), the bin nearest the target is
    read instead. A target whose zone lies beyond the spectrum reads 0 and 0 dB.
    """
    b, m = spec.shape
    _, nl, nh = targets.shape
    freq = np.zeros((b, nl, nh))
    amp = np.zeros((b, nl, nh))
    snr = np.zeros((b, nl, nh))
    for i in range(b):
        for li in range(nl):
            for h in range(nh):
                f = targets[i, li, h]
                freq[i, li, h] = f
                # Nearest bins to the zone edges: a line just inside the tolerance
                # peaks in the bin nearest its frequency, which may lie half a bin out.
                k_lo = math.floor(f * (1.0 - tol) / df + 0.5)
                k_hi = math.floor(f * (1.0 + tol) / df + 0.5)
                k_lo = max(1, k_lo)
                k_hi = min(m - 2, k_hi)
                if k_lo > k_hi:
                    continue
                best = -1
                for k in range(k_lo, k_hi + 1):
                    v = spec[i, k]
                    is_peak = v >= spec[i, k - 1] and v >= spec[i, k + 1]
                    if is_peak and (best < 0 or v > spec[i, best]):
                        best = k
                if best < 0:
                    best = min(max(round(f / df), k_lo), k_hi)
                a_lo = max(1, k_lo - noise_bins)
                b_hi = min(m - 1, k_hi + noise_bins)
                cnt = (k_lo - a_lo) + (b_hi - k_hi)
                if cnt > 0:
                    nb = np.empty(cnt)
                    c = 0
                    for k in range(a_lo, k_lo):
                        nb[c] = spec[i, k]
                        c += 1
                    for k in range(k_hi + 1, b_hi + 1):
                        nb[c] = spec[i, k]
                        c += 1
                    floor = np.median(nb)
                else:
                    floor = 0.0
                a = spec[i, best]
                freq[i, li, h] = best * df
                amp[i, li, h] = a
                snr[i, li, h] = 20.0 * math.log10((a + _TINY) / (floor + _TINY))
    return freq, amp, snr


def line_search(
    spec: np.ndarray, df_hz: float, targets_hz: np.ndarray, tol: float, noise_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Public wrapper of `_line_search`: (freq_hz, amplitude, snr_db), each shaped like targets.

    `spec` (B, M) float64 amplitude spectra, `targets_hz` (B, L, H) finite ≥ 0.
    """
    if not isinstance(spec, np.ndarray) or spec.ndim != 2 or spec.dtype != np.float64:
        raise ValueError("spec: expected a (B, M) float64 array")
    if spec.shape[1] < 3:
        raise ValueError(f"spec: need at least 3 bins, got {spec.shape[1]}")
    df = check_fs(df_hz)
    t = np.ascontiguousarray(targets_hz, dtype=np.float64)
    if t.ndim != 3 or t.shape[0] != spec.shape[0]:
        raise ValueError(f"targets_hz: expected shape ({spec.shape[0]}, L, H), got {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("targets_hz: must be finite and >= 0")
    if not 0.0 <= tol < 1.0:
        raise ValueError(f"tol: must be in [0, 1), got {tol}")
    if noise_bins < 1:
        raise ValueError(f"noise_bins: must be >= 1, got {noise_bins}")
    return _line_search(np.ascontiguousarray(spec), df, t, float(tol), int(noise_bins))
