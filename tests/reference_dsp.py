"""Slow, obvious numpy/scipy versions of the DSP kernels in ballpass.stream.dsp.

Each function does the textbook computation one row at a time, by a different route
where one exists (scipy.stats moments, time-domain r.m.s. after an inverse FFT,
scipy.signal.hilbert), so that the kernels are checked against something independent.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import scipy.signal
import scipy.stats

G = 9.80665


def moments(x: np.ndarray, plateau_tol: float = 0.05, spike_k: float = 8.0,
            spike_isolation: float = 0.25, spike_samples: int = 256, plateau_kink: float = 0.5,
            plateau_noise: float = 5.0, plateau_spread: float = 8.0) -> np.ndarray:
    """rms, peak, crest, kurtosis (Pearson), skewness, clip fraction, spikes per row."""
    out = np.zeros((x.shape[0], 7))
    for i, row in enumerate(x):
        d = row - row.mean()
        rms = math.sqrt(np.mean(d**2))
        peak = float(np.max(np.abs(d)))
        out[i, 0] = rms
        out[i, 1] = peak
        if np.mean(d**2) > 0:
            out[i, 2] = peak / rms
            out[i, 3] = scipy.stats.kurtosis(row, fisher=False, bias=True)
            out[i, 4] = scipy.stats.skew(row, bias=True)
        if row.max() <= row.min():
            continue
        n = row.size
        stride = max(1, n // spike_samples)
        idx = np.arange(stride, n, stride)
        step = 1.4826 * float(np.median(np.abs(row[idx] - row[idx - 1]))) if idx.size else 0.0
        tol = plateau_tol * step
        on_band = (row >= row.max() - tol) | (row <= row.min() + tol)
        j = idx[idx >= 4]
        d4 = np.abs(row[j - 4] - 4 * row[j - 3] + 6 * row[j - 2] - 4 * row[j - 1] + row[j])
        # The noise sigma is 1.4826 × median |d4| / sqrt(70): is it below the tolerance?
        if not (j.size and np.median(d4) < tol * math.sqrt(70) / 1.4826):
            out[i, 5] = np.mean(on_band)
        else:
            sigma = 1.4826 * float(np.median(d4)) / math.sqrt(70)
            depth = tol + plateau_spread * sigma
            near = (row >= row.max() - depth) | (row <= row.min() + depth)
            noise = plateau_noise * math.sqrt(6) * sigma
            rail = 0
            for s, e in _runs(near):
                is_top = row[s] >= row.max() - depth
                if (_capped(row, s, e, is_top, sigma, plateau_noise, plateau_kink) if e - s < 2
                        else _kinked(row, s, e, is_top, noise, plateau_kink)):
                    rail += int(on_band[s : e + 1].sum())
            out[i, 5] = rail / n
        sub = row[::stride]
        med = float(np.median(sub))
        limit = spike_k * 1.4826 * float(np.median(np.abs(sub - med)))
        dev = np.abs(row - med)
        if limit > 0:
            for j in np.nonzero(dev > limit)[0]:
                if not 4 <= j < n - 4:
                    continue
                near = [dev[k] for k in (j - 4, j - 3, j - 2, j + 2, j + 3, j + 4)]
                wide = min(dev[j - 1], dev[j + 1]) >= 0.5 * dev[j]
                out[i, 6] += all(v < spike_isolation * dev[j] for v in near) and not wide
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1, strict=True))


def _kinked(row: np.ndarray, s: int, e: int, is_top: bool, noise: float, kink: float) -> bool:
    """Whether the run row[s..e] is flat inside and bends sharply at both edges: the
    curvatures (second differences at lag q, positive when bending towards the rail) at the
    q + 1 positions from s - 1 on, and from e + 1 back, both exceed 1/(1 - kink) times the
    least one between them and the one 2q beyond the edge, each by more than `noise`."""
    size = e - s + 1
    q = max(1, (size - 1) // 3)
    if size < 3 or s - 1 - 3 * q < 0 or e + 1 + 3 * q >= row.size:
        return False

    def bend(k: np.ndarray | int) -> np.ndarray:
        return (-1.0 if is_top else 1.0) * (row[k - q] - 2.0 * row[k] + row[k + q])

    c = bend(np.arange(s - 1, e + 2))
    left, right, mid = c[: q + 1].max(), c[size + 1 - q :].max(), c[q + 1 : size + 1 - q].min()
    return bool((1.0 - kink) * min(left, right) - mid > noise
                and left - bend(s - 1 - 2 * q) > noise and right - bend(e + 1 + 2 * q) > noise)


def _capped(row: np.ndarray, s: int, e: int, is_top: bool, sigma: float, noise_k: float,
            kink: float) -> bool:
    """Whether the run row[s..e] of one or two samples sits below the cubic through the two
    samples on each side: its fourth differences, summed and positive towards the inside of
    the rail, exceed `noise_k` sigmas of their noise and, per sample, 1/(1 - kink) times the
    largest |fourth difference| centred 3 to 12 samples out on the side where that is
    smaller; two samples differ by at most `noise_k` sigmas of a difference."""
    if s < 14 or e + 14 >= row.size:
        return False
    if e > s and abs(row[e] - row[s]) > noise_k * math.sqrt(2) * sigma:
        return False

    def d4(k: np.ndarray) -> np.ndarray:
        return row[k - 2] - 4.0 * row[k - 1] + 6.0 * row[k] - 4.0 * row[k + 1] + row[k + 2]

    inward = (-1.0 if is_top else 1.0) * sum(float(v) for v in d4(np.arange(s, e + 1)))
    size = e - s + 1
    if not inward > noise_k * math.sqrt(70 if size == 1 else 28) * sigma:
        return False
    m = np.arange(3, 13)
    quieter = min(float(np.abs(d4(s - m)).max()), float(np.abs(d4(e + m)).max()))
    return bool((1.0 - kink) * inward > size * quieter)


def amplitude_spectrum(x: np.ndarray) -> np.ndarray:
    """Hann (periodic) one-sided amplitude spectrum: a bin-centred sine of amplitude A reads A."""
    n = x.shape[1]
    w = scipy.signal.get_window("hann", n, fftbins=True)
    out = []
    for row in x:
        s = np.abs(np.fft.rfft((row - row.mean()) * w)) * 2.0 / w.sum()
        s[0] /= 2.0
        if n % 2 == 0:
            s[-1] /= 2.0
        out.append(s)
    return np.array(out)


def bin_hz(n: int, fs: float) -> np.ndarray:
    """Frequency (Hz) of each one-sided bin, k·(fs/N) as the kernels compute it: a band
    edge exactly on a bin is then inside on both sides (np.fft.rfftfreq's k/(N·(1/fs))
    can round it just below, e.g. bin 9 of N = 36 at fs = 1000 Hz)."""
    return np.arange(n // 2 + 1) * (fs / n)


def band_rms(x: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    """R.m.s. in the time domain of each row after zeroing every bin outside [lo, hi] (and DC)."""
    n = x.shape[1]
    f = bin_hz(n, fs)
    keep = (f >= lo) & (f <= hi) & (f > 0)
    return np.array([np.sqrt(np.mean(np.fft.irfft(np.fft.rfft(r) * keep, n) ** 2)) for r in x])


def velocity_rms(x: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    """Velocity r.m.s. (mm/s): integrate each bin (÷ j2πf), inverse FFT, r.m.s. in time."""
    n = x.shape[1]
    f = bin_hz(n, fs)
    keep = (f >= lo) & (f <= hi) & (f > 0)
    out = []
    for r in x:
        a = np.fft.rfft(r * G) * keep
        v = np.zeros_like(a)
        v[keep] = a[keep] / (2j * np.pi * f[keep])
        out.append(np.sqrt(np.mean(np.fft.irfft(v, n) ** 2)) * 1000.0)
    return np.array(out)


def spectral_kurtosis(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """SK = E|c|⁴/(E|c|²)² − 2 of the complex envelope of each band [lo, hi) of bins.

    The complex envelope of the band's m = hi − lo bins, read at m' points (m' the
    smallest 2·3·5-smooth length >= m, as the kernel does for speed), is written out as
    its definition, a sum of complex exponentials (a DFT matrix product, no FFT), for
    bands up to 1024 bins; wider bands (the matrix would take > 16 MB) use numpy's ifft.
    """
    out = np.zeros((x.shape[0], lo.size))
    for i, r in enumerate(x):
        spec = np.fft.rfft(r)
        for k in range(lo.size):
            m = int(hi[k] - lo[k])
            mp = smooth_length(m)
            if m <= 1024:
                basis = np.exp(2j * np.pi * np.outer(np.arange(mp), np.arange(m)) / mp) / mp
                c = basis @ spec[lo[k] : hi[k]]
            else:
                c = np.fft.ifft(spec[lo[k] : hi[k]], mp)
            p = np.abs(c) ** 2
            if p.sum() > 1e-20 * np.sum(np.abs(spec) ** 2):
                out[i, k] = np.mean(p**2) / p.mean() ** 2 - 2.0
    return out


@functools.cache
def smooth_length(m: int) -> int:
    """Smallest n >= m of the form 2**a · 3**b · 5**c (by enumeration)."""
    return min(
        2**a * 3**b * 5**c
        for a in range(40)
        for b in range(26)
        for c in range(18)
        if 2**a * 3**b * 5**c >= m
    )


def kurtogram_bands(fs: float, n: int, max_level: int) -> list[tuple[float, int, int]]:
    """(level, lo bin, hi bin) of Antoni's 1/3-binary tree, from band edges in Hz.

    Level k: 2**k bands of fs/2**(k+1) Hz; level k + 0.6: 3·2**(k−1) bands of
    fs/(3·2**k) Hz (MSSP 21 (2007), fig. 4); edges to the nearest bin, DC and Nyquist
    outside every band, bands under 4 bins dropped.
    """
    df = Fraction(fs) / n  # exact: an edge half-way between two bins rounds up
    out = []
    specs = [(0.0, 1)] + [
        (lev, nb)
        for k in range(1, max_level + 1)
        for lev, nb in ((k, 2**k), (k + 0.6, 3 * 2 ** (k - 1)))
    ]
    for lev, nb in specs:
        bw = Fraction(fs) / 2 / nb
        for m in range(nb):
            lo = max(1, math.floor(m * bw / df + 0.5))
            hi = min(n // 2, math.floor((m + 1) * bw / df + 0.5))
            if hi - lo >= 4:
                out.append((float(lev), lo, hi))
    return out


def select_band(
    x: np.ndarray, fs: float, min_lo_hz: float, min_width_hz: np.ndarray, max_level: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (lo_hz, hi_hz, SK) of the tree band of highest SK among bands whose lower
    edge is >= min_lo_hz and width >= min_width_hz[i]; NaNs when none qualifies."""
    n = x.shape[1]
    df = fs / n
    bands = kurtogram_bands(fs, n, max_level)
    lo = np.array([b[1] for b in bands])
    hi = np.array([b[2] for b in bands])
    out = np.full((3, x.shape[0]), np.nan)
    for i in range(x.shape[0]):
        ok = (lo * df >= min_lo_hz) & ((hi - lo) * df >= min_width_hz[i])
        if ok.any():
            sk = np.full(lo.size, -np.inf)
            sk[ok] = spectral_kurtosis(x[i : i + 1], lo[ok], hi[ok])[0]
            k = int(np.argmax(sk))
            out[:, i] = lo[k] * df, hi[k] * df, sk[k]
    return out[0], out[1], out[2]


def envelope(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """|hilbert(band-passed row)|, the band-pass being bins [lo, hi) of the DFT."""
    n = x.shape[1]
    out = []
    for i, r in enumerate(x):
        mask = np.zeros(n // 2 + 1)
        mask[lo[i] : hi[i]] = 1.0
        xb = np.fft.irfft(np.fft.rfft(r) * mask, n)
        out.append(np.abs(scipy.signal.hilbert(xb)))
    return np.array(out)


def line_search(
    spec: np.ndarray, df: float, targets: np.ndarray, tol: float, noise_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop-by-loop version of ballpass.stream.dsp.lines._line_search."""
    _, m = spec.shape
    freq = np.array(targets, dtype=float, copy=True)
    amp = np.zeros(targets.shape)
    snr = np.zeros(targets.shape)
    for idx in np.ndindex(*targets.shape):
        i = idx[0]
        f = targets[idx]
        k_lo = math.floor(f * (1 - tol) / df + 0.5)
        k_hi = math.floor(f * (1 + tol) / df + 0.5)
        k_lo, k_hi = max(1, k_lo), min(m - 2, k_hi)
        if k_lo > k_hi:
            continue
        s = spec[i]
        peaks = [k for k in range(k_lo, k_hi + 1) if s[k] >= s[k - 1] and s[k] >= s[k + 1]]
        best = (
            max(peaks, key=lambda k: (s[k], -k)) if peaks else min(max(round(f / df), k_lo), k_hi)
        )
        noise = np.concatenate(
            [s[max(1, k_lo - noise_bins) : k_lo], s[k_hi + 1 : min(m - 1, k_hi + noise_bins) + 1]]
        )
        floor = float(np.median(noise)) if noise.size else 0.0
        freq[idx] = best * df
        amp[idx] = s[best]
        snr[idx] = 20 * math.log10((s[best] + 1e-15) / (floor + 1e-15))
    return freq, amp, snr


def impact_counts(
    env: np.ndarray, periods: np.ndarray, k_mad: float, gap: int,
    hit: list[tuple[float, float]], flank: list[tuple[float, float]], max_lags: int,
    median_samples: int,
) -> tuple[np.ndarray, int]:
    """Loop-by-loop version of ballpass.stream.dsp.impacts._impact_row for one envelope:
    (hit and flank counts (F, 2), number of impacts)."""
    n = env.size
    sub = env[:: max(1, n // median_samples)]
    med = float(np.median(sub))
    level = med + k_mad * 1.4826 * float(np.median(np.abs(sub - med)))
    times: list[int] = []
    for j in range(1, n - 1):
        if env[j] > level and env[j] > env[j - 1] and env[j] >= env[j + 1]:
            if times and j - times[-1] < gap:
                if env[j] > env[times[-1]]:
                    times[-1] = j
            else:
                times.append(j)
    counts = np.zeros((len(periods), 2))
    for a, ta in enumerate(times):
        for tb in times[a + 1 : a + 1 + max_lags]:
            for f, p in enumerate(periods):
                m = (tb - ta) / p
                counts[f, 0] += sum(lo < m < hi for lo, hi in hit)
                counts[f, 1] += sum(lo < m < hi for lo, hi in flank)
    return counts, len(times)
