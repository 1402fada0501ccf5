"""Time-domain statistics of acceleration windows, batched over rows.

Every kernel takes a (B, N) float64 array of acceleration in g and returns per-row
values. The mean (sensor offset, gravity on a DC-coupled sensor) is removed first:
an accelerometer's vibration statistics are about the AC part.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ballpass.stream import thresholds as th
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
def _curvature(row: np.ndarray, k: int, q: int, sign: float) -> float:
    """Second difference of `row` at `k` over lag `q`, signed so that a top (`sign` -1) and
    a bottom (+1) both bend positively."""
    return sign * (row[k - q] - 2.0 * row[k] + row[k + q])


@njit(cache=True, nogil=True)
def _kinked(row: np.ndarray, s: int, e: int, sign: float, noise: float, kink: float) -> bool:
    """Whether the excursion `row[s..e]` near a rail is entered and left with a kink.

    With lag q = max(1, (L - 1) // 3) (L = e - s + 1 samples: the lag grows with the span so
    that a kink's bend, about slope × q, rises above the noise at any oversampling), the
    curvature c(k) over k in [s - 1, e + 1] of a rail is about zero inside (flat) and large
    at both edges (the slope drops to zero within a sample), and falls back to the signal's own
    curvature 2q outside. A smooth peak bends about evenly across its top (a parabola: c
    constant; an asymmetric peak: c linear in k), and a flattened smooth top (harmonics) bends
    more and more away from its top. Kinked: both edges bend `1/(1 - kink)` times more than
    the flattest interior point, and more than 2q outside, each by over `noise`.
    """
    n = row.size
    size = e - s + 1
    q = max(1, (size - 1) // 3)
    if size < 3 or s - 1 - 3 * q < 0 or e + 1 + 3 * q >= n:
        return False  # no interior to be flat, or the window cuts the neighbourhood
    left = -np.inf
    right = -np.inf
    mid = np.inf
    for i in range(size + 2):
        c = _curvature(row, s - 1 + i, q, sign)
        if i <= q:
            left = max(left, c)
        elif i >= size + 1 - q:
            right = max(right, c)
        else:
            mid = min(mid, c)
    return ((1.0 - kink) * min(left, right) - mid > noise
            and left - _curvature(row, s - 1 - 2 * q, q, sign) > noise
            and right - _curvature(row, e + 1 + 2 * q, q, sign) > noise)


@njit(cache=True, nogil=True)
def _d4(row: np.ndarray, j: int) -> float:
    """Fourth difference of `row` centred on `j`."""
    return row[j - 2] - 4.0 * row[j - 1] + 6.0 * row[j] - 4.0 * row[j + 1] + row[j + 2]


@njit(cache=True, nogil=True)
def _capped(row: np.ndarray, s: int, e: int, sign: float, sigma: float, noise_k: float,
            kink: float) -> bool:
    """Whether the excursion `row[s..e]` of one or two samples near a rail is held below the
    course of its neighbours: a clip too short to be flat between two kinks (an impact's
    crest that passed the rail for a sample or two).

    D, the fourth differences centred on the excursion's samples, summed and signed so that
    a top and a bottom both read positive when capped, weighs each sample against the cubic
    through the two samples on each side. A tone of any frequency below Nyquist, at any
    phase, has D4(k) = (2 - 2 cos w)^2 (x(k) - its centre line): at its top D <= 0, its
    samples sit on or above the interpolation. A rail that held samples whose course passed
    it by d raises D by 6 d (one sample) or 2 (d1 + d2) (two), and leaves the fourth
    differences centred 3 or more samples away alone: they are the signal's own. A smooth
    top with D > 0 is flattened by harmonics; where one of them dominates its fourth
    differences (locally a tone), D per sample is at most 1.8 times the largest |D4| 3 to 12
    samples out on either side, at the worst frequency and phase, whereas a clip stands out
    against both sides (against one where an impact's onset is beside its crest).

    Capped: D above `noise_k` sigmas of its noise (sqrt(70) or sqrt(28) sigma), D per
    sample above 1 / (1 - `kink`) times the largest |D4| on the quieter side, two samples
    level to within `noise_k` sigmas of a difference (a rail holds its level), and the
    neighbourhood (14 samples a side) inside the window. A crest sampled fewer than about 10
    times a cycle bends so much by itself that only a deep clip passes.
    """
    if s - 14 < 0 or e + 14 >= row.size:
        return False
    if e > s and abs(row[e] - row[s]) > noise_k * np.sqrt(2.0) * sigma:
        return False
    d = 0.0
    for j in range(s, e + 1):
        d += _d4(row, j)
    d *= sign
    if d <= noise_k * np.sqrt(70.0 if e == s else 28.0) * sigma:
        return False
    left = 0.0
    right = 0.0
    for m in range(3, 13):
        left = max(left, abs(_d4(row, s - m)))
        right = max(right, abs(_d4(row, e + m)))
    return (1.0 - kink) * d > (e - s + 1) * min(left, right)


@njit(cache=True, nogil=True)
def _moments(x: np.ndarray, plateau_tol: float, spike_k: float, spike_isolation: float,
             spike_samples: int, plateau_kink: float = th.SENSOR_PLATEAU_KINK,
             plateau_noise: float = th.SENSOR_PLATEAU_NOISE,
             plateau_spread: float = th.SENSOR_PLATEAU_SPREAD) -> np.ndarray:
    """Per row: rms (g), peak |x| (g), crest, kurtosis (Pearson), skewness, clip fraction,
    spikes.

    Two passes (mean, then central moments) for accuracy, and a third for the sensor's
    health. A constant row has rms 0 and crest, kurtosis and skewness 0 (undefined; 0 keeps
    the row writable to InfluxDB, and the diagnosis reports such a row as a sensor fault).

    Clip fraction: the share of samples within `plateau_tol` × the typical sample-to-sample
    step (1.4826 × the median |step|, over `spike_samples` strided steps) of the row's
    maximum or minimum, on a rail. A saturated sensor piles samples on its rail, flat to within
    its noise. If the noise (sigma: 1.4826 × the median |fourth difference| / sqrt(70), at the
    same strided samples) is at least that tolerance, a smooth peak cannot keep samples in it
    (the noise scatters them) and all count. Below it, a clean periodic signal fills the
    tolerance at every cycle with the smooth top of its peaks, so only the samples of
    excursions (runs of samples within the tolerance + `plateau_spread` sigma of the extreme)
    that `_kinked` finds entered and left with a kink count (`plateau_kink`, `plateau_noise`),
    and of excursions of one or two samples, too short to be flat inside, that `_capped`
    finds held below the course of their neighbours (a short clip of an impact's crest).

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
        # The noise, robustly, from fourth differences ending at the same strided samples (a
        # tone's bend cancels in them; white noise gives them sqrt(70) times its sigma).
        first = max(stride, -(-4 // stride) * stride)
        d4 = np.empty(max(0, (n - 1 - first) // stride + 1))
        for k in range(d4.size):
            j = first + k * stride
            d4[k] = abs(row[j - 4] - 4.0 * row[j - 3] + 6.0 * row[j - 2] - 4.0 * row[j - 1]
                        + row[j])
        # Is sigma below the tolerance, i.e. the median |d4| below this? Counting decides
        # without a median (a sort) unless the middle pair straddles it.
        d4_tol = tol * np.sqrt(70.0) / 1.4826
        above = 0
        for k in range(d4.size):  # branch-free, so that it vectorises
            above += d4[k] >= d4_tol
        quiet = 2 * above < d4.size or (2 * above == d4.size and d4.size > 0
                                        and np.median(d4) < d4_tol)
        n_rail = n_ext
        if quiet:
            # The band is wider than the noise: a smooth peak of a clean periodic signal can
            # fill it at every cycle. Count only samples of excursions kinked at both ends,
            # an excursion reaching `plateau_spread` sigma deeper so that a noisy rail is one.
            sigma = 1.4826 * np.median(d4) / np.sqrt(70.0)
            n_rail = 0
            depth = tol + plateau_spread * sigma
            wtop, wbot = hi - depth, lo + depth
            noise = plateau_noise * np.sqrt(6.0) * sigma  # sigma of a second difference
            # Runs of samples near a rail, by a branch-free pass (each sample writes the next
            # slot, and moves on to the next slot only where a run starts or ends).
            starts = np.empty(n + 2, np.int64)
            ends = np.empty(n + 2, np.int64)
            n_runs = 0
            n_ends = 0
            prev = False
            for j in range(n):
                near = (row[j] >= wtop) | (row[j] <= wbot)
                starts[n_runs] = j
                ends[n_ends] = j - 1
                n_runs += near & ~prev
                n_ends += prev & ~near
                prev = near
            ends[n_ends] = n - 1
            for r in range(n_runs):
                s, e = starts[r], ends[r]
                sign = -1.0 if row[s] >= wtop else 1.0
                if (_capped(row, s, e, sign, sigma, plateau_noise, plateau_kink) if e - s < 2
                        else _kinked(row, s, e, sign, noise, plateau_kink)):
                    for k in range(s, e + 1):
                        n_rail += (row[k] >= top) | (row[k] <= bottom)
        spikes = 0
        if limit > 0.0:
            # Within 4 samples of an end the neighbourhood is cut: an impact that starts in
            # the last samples would look isolated, its ringing being in the next window.
            for j in range(4, n - 4):
                a = abs(row[j] - med)
                if a > limit and _isolated(row, j, med, a, spike_isolation):
                    spikes += 1
        out[i, 5] = n_rail / n
        out[i, 6] = spikes
    return out


def moments(x: np.ndarray, plateau_tol: float = 0.05, spike_k: float = 8.0,
            spike_isolation: float = 0.25, spike_samples: int = 256,
            plateau_kink: float = th.SENSOR_PLATEAU_KINK,
            plateau_noise: float = th.SENSOR_PLATEAU_NOISE,
            plateau_spread: float = th.SENSOR_PLATEAU_SPREAD) -> np.ndarray:
    """(B, 7) array of rms_g, peak_g, crest, kurtosis, skewness, clip_fraction, spikes per
    row. `x` is (B, N) float64 acceleration in g; see `_moments` (the stream passes the
    values of `ballpass.stream.thresholds`)."""
    return _moments(check_windows(x), plateau_tol, spike_k, spike_isolation, spike_samples,
                    plateau_kink, plateau_noise, plateau_spread)
