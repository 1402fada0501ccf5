"""Envelope analysis: band selection by spectral kurtosis and the envelope spectrum.

A local bearing defect makes a train of impacts, each ringing a structural resonance
(kHz). Band-passing around that resonance and demodulating (envelope of the analytic
signal) brings the impact rate (BPFO, BPFI, ...) down to low frequency, where the
envelope spectrum shows it as lines (Randall & Antoni, MSSP 25 (2011), sec. 3).

The band is the one with the highest spectral kurtosis (SK) of its complex envelope in
the fast kurtogram (Antoni, "Fast computation of the kurtogram for the detection of
transient faults", MSSP 21 (2007)): a 1/3-binary tree of band-pass filters over
[0, fs/2]; level k (k = 0, 1, 2, ...) splits it into 2**k bands of width fs/2**(k+1),
level k + 0.6 (k >= 1, log2(3) - 1 ≈ 0.585) into 3·2**(k-1) bands of width fs/(3·2**k).
Antoni builds the tree from quasi-analytic FIR filters with decimation; here each filter
is ideal in the frequency domain: for a band holding a bin range of the DFT, the complex
envelope sampled at the band's own rate is the inverse DFT of just those bins (the shift
to baseband does not change |c|). A band of m bins costs one inverse FFT of m points,
so each level of the tree costs about one FFT of N/2 points, like Antoni's decimated
tree. Only bands the caller can use (wide enough, above a floor) are computed.
"""

from __future__ import annotations

import numpy as np
import rocket_fft  # noqa: F401  (registers np.fft support inside @njit)
from numba import njit

from ballpass.stream.dsp._check import check_fs, check_windows
from ballpass.stream.dsp.impacts import _impact_row
from ballpass.stream.dsp.spectrum import (
    _amplitude_row_into,
    _hann_sum,
    _hann_table,
    _rfft_rows,
)

_EMPTY_BAND = 1e-20
"""Band energy below this fraction of the row's energy counts as empty (round-off)."""


@njit(cache=True, nogil=True)
def _fast_len(m: int) -> int:
    """Smallest length >= m whose only prime factors are 2, 3 and 5 (a fast FFT size)."""
    n = m
    while True:
        r = n
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return n
        n += 1


@njit(cache=True, nogil=True)
def _sk_bands(
    spec: np.ndarray, lo_bins: np.ndarray, hi_bins: np.ndarray, use: np.ndarray
) -> np.ndarray:
    """Spectral kurtosis of the complex envelope of each band, (B, K).

    `spec` is the (B, M) one-sided DFT; band k holds bins lo_bins[k] .. hi_bins[k]-1;
    `use` (B, K) bool says which bands to compute (the others read 0).
    SK = E|c|⁴ / (E|c|²)² − 2: 0 for gaussian noise, −1 for a pure tone, large for
    impacts. A band without energy (relative to the whole row) gets 0.
    The band's m bins are zero-padded to the next 2·3·5-smooth length m' (the 1/3 levels
    give m = N/(3·2**k), e.g. 683, a prime that costs pocketfft a Bluestein transform,
    3-4x slower): the envelope is then read at m' points (m' < 1.07·m for m > 100) of the
    same band-limited curve, which leaves SK an estimate of the same quantity.
    """
    b = spec.shape[0]
    kk = lo_bins.shape[0]
    out = np.zeros((b, kk))
    for i in range(b):
        total = 0.0
        for k in range(spec.shape[1]):
            total += spec[i, k].real ** 2 + spec[i, k].imag ** 2
        for k in range(kk):
            if not use[i, k]:
                continue
            m = hi_bins[k] - lo_bins[k]
            c = np.zeros(_fast_len(m), dtype=np.complex128)
            c[:m] = spec[i, lo_bins[k] : hi_bins[k]]
            np.fft.ifft(c, out=c)  # in place: level 0's band is half the window
            m2 = 0.0
            m4 = 0.0
            for j in range(c.shape[0]):
                p = c[j].real ** 2 + c[j].imag ** 2
                m2 += p
                m4 += p * p
            m = c.shape[0]
            # A band holding only FFT round-off (relative energy < 1e-20) has no defined SK.
            if m2 > _EMPTY_BAND * total:
                m2 /= m
                m4 /= m
                out[i, k] = m4 / (m2 * m2) - 2.0
    return out


@njit(cache=True, nogil=True)
def _envelope(spec: np.ndarray, n: int, lo_bin: np.ndarray, hi_bin: np.ndarray) -> np.ndarray:
    """Envelope |analytic signal| (B, n) of each row band-passed to bins [lo_bin, hi_bin).

    The analytic signal of the band-passed row is the inverse DFT of its positive-frequency
    bins doubled (the band excludes DC and Nyquist), exactly what scipy.signal.hilbert
    computes from the band-passed signal.
    """
    b = spec.shape[0]
    out = np.empty((b, n))
    y = np.zeros(n, dtype=np.complex128)
    for i in range(b):
        _envelope_row(spec[i], lo_bin[i], hi_bin[i], y, out[i])
    return out


@njit(cache=True, nogil=True)
def _envelope_row(spec_row: np.ndarray, lo: int, hi: int, y: np.ndarray, env: np.ndarray) -> None:
    """Envelope of one row's band [lo, hi) into `env`; `y` is complex scratch of length n.

    `env` may be the first n float64 of `y`'s own buffer (`_envelope_scratch`):
    sample j is written after bin j, which lies at or past it, was read."""
    y[:] = 0.0
    for k in range(lo, hi):
        y[k] = 2.0 * spec_row[k]
    np.fft.ifft(y, out=y)  # in place: a second (n,) complex array was 64 MB at 2^22
    for j in range(env.shape[0]):
        env[j] = np.sqrt(y[j].real ** 2 + y[j].imag ** 2)


@njit(cache=True, nogil=True)
def _envelope_scratch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of one scratch buffer of n + 1 complex for the envelope spectrum of a row of
    n samples: the analytic signal y (n complex), the envelope (its first n float64, which
    is then windowed in place) and the envelope's DFT c (its last N//2+1 complex, past the
    envelope for any n). At N = 2^22, 64 MB where separate arrays took 224 MB (plus the
    FFT's own scratch either way)."""
    buf = np.empty(n + 1, dtype=np.complex128)
    flat = buf.view(np.float64)
    return buf[:n], flat[:n], flat[flat.shape[0] - 2 * (n // 2 + 1):].view(np.complex128)


@njit(cache=True, nogil=True)
def _envelope_spectrum(
    spec: np.ndarray, n: int, lo_bin: np.ndarray, hi_bin: np.ndarray
) -> np.ndarray:
    """Hann amplitude spectrum (B, n//2+1) of the envelope of each row's band (g).

    Same as `_amplitude_spectrum(_envelope(...))`, fused row by row so the temporaries
    stay in cache, in the one buffer of `_envelope_scratch`.
    """
    b = spec.shape[0]
    w = _hann_table(n)
    scale = 2.0 / _hann_sum(n, w)
    out = np.empty((b, n // 2 + 1))
    y, env, c = _envelope_scratch(n)
    for i in range(b):
        _envelope_row(spec[i], lo_bin[i], hi_bin[i], y, env)
        _amplitude_row_into(env, w, scale, c, out[i])
    return out


@njit(cache=True, nogil=True)
def _envelope_spectrum_impacts(
    spec: np.ndarray,
    n: int,
    lo_bin: np.ndarray,
    hi_bin: np.ndarray,
    periods: np.ndarray,
    k_mad: float,
    gaps: np.ndarray,
    hit: np.ndarray,
    flank: np.ndarray,
    max_lags: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_envelope_spectrum` plus, from the same envelope, the impact-interval counts
    (B, F, 2) and impact numbers (B,) of `impacts._impact_row` (periods (B, F) and
    gaps (B,) in samples). The impacts are read before the envelope is windowed in place
    (`_envelope_scratch`).
    """
    b = spec.shape[0]
    w = _hann_table(n)
    scale = 2.0 / _hann_sum(n, w)
    out = np.empty((b, n // 2 + 1))
    counts = np.zeros((b, periods.shape[1], 2))
    n_impacts = np.zeros(b)
    y, env, c = _envelope_scratch(n)
    for i in range(b):
        _envelope_row(spec[i], lo_bin[i], hi_bin[i], y, env)
        n_impacts[i] = _impact_row(env, periods[i], k_mad, gaps[i], hit, flank, max_lags,
                                   counts[i])
        _amplitude_row_into(env, w, scale, c, out[i])
    return out, counts, n_impacts


def kurtogram_levels(n: int) -> tuple[float, ...]:
    """Levels of the fast kurtogram for windows of `n` samples: 0, 1, 1.6, ..., L, L.6.

    L = floor(log2 n) − 7 (at least 1; Antoni 2007, sec. 4, keeps the narrowest band's
    complex envelope long enough for a stable kurtosis): 6 for N = 8192, the narrowest
    band (level L.6) then holding N/(3·2**L) ≈ 42 bins.
    """
    top = max(1, (max(n, 2)).bit_length() - 1 - 7)
    out: list[float] = [0.0]
    for k in range(1, top + 1):
        out += [float(k), k + 0.6]
    return tuple(out)


def kurtogram_bands(
    fs_hz: float, n: int, levels: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fast kurtogram's bands as DFT bin ranges [lo, hi) and their level.

    Returns (lo, hi, level): int64, int64, float64 arrays. Level k has 2**k bands, level
    k + 0.6 has 3·2**(k−1) (see the module docstring); the bands of a level tile
    [0, fs/2] without overlap, edges rounded to the nearest bin. Bin 0 (DC) and N//2
    (Nyquist) are never inside a band; a band of fewer than 4 bins is dropped.
    `levels` defaults to `kurtogram_levels(n)`.
    """
    check_fs(fs_hz)
    if n < 8:
        raise ValueError(f"n: need at least 8 samples, got {n}")
    los: list[int] = []
    his: list[int] = []
    levs: list[float] = []
    for lev in kurtogram_levels(n) if levels is None else levels:
        k = int(lev)
        n_bands = 2**k if lev == k else 3 * 2 ** (k - 1)
        for m in range(n_bands):
            # Edge m·N/(2·n_bands) to the nearest bin, in integers (exact, halves round up).
            lo = max(1, (m * n + n_bands) // (2 * n_bands))
            hi = min(n // 2, ((m + 1) * n + n_bands) // (2 * n_bands))
            if hi - lo >= 4:
                los.append(lo)
                his.append(hi)
                levs.append(float(lev))
    return (
        np.asarray(los, dtype=np.int64),
        np.asarray(his, dtype=np.int64),
        np.asarray(levs, dtype=np.float64),
    )


def spectral_kurtosis(x: np.ndarray, lo_bins: np.ndarray, hi_bins: np.ndarray) -> np.ndarray:
    """SK of the complex envelope of each row (g) in each band of bins [lo, hi), shape (B, K)."""
    x = check_windows(x)
    lo, hi = _check_bins(lo_bins, hi_bins, x.shape[1], None)
    use = np.ones((x.shape[0], lo.shape[0]), dtype=np.bool_)
    return _sk_bands(_rfft_rows(x), lo, hi, use)


def envelope(x: np.ndarray, lo_bin: np.ndarray, hi_bin: np.ndarray) -> np.ndarray:
    """Envelope (g) of each row of `x` band-passed to its own bin range [lo_bin[i], hi_bin[i])."""
    x = check_windows(x)
    lo, hi = _check_bins(lo_bin, hi_bin, x.shape[1], x.shape[0])
    return _envelope(_rfft_rows(x), x.shape[1], lo, hi)


def envelope_spectrum(x: np.ndarray, lo_bin: np.ndarray, hi_bin: np.ndarray) -> np.ndarray:
    """Hann amplitude spectrum (g) of each row's envelope, shape (B, N//2+1)."""
    x = check_windows(x)
    lo, hi = _check_bins(lo_bin, hi_bin, x.shape[1], x.shape[0])
    return _envelope_spectrum(_rfft_rows(x), x.shape[1], lo, hi)


def _check_bins(
    lo: np.ndarray, hi: np.ndarray, n: int, rows: int | None
) -> tuple[np.ndarray, np.ndarray]:
    lo = np.ascontiguousarray(lo, dtype=np.int64)
    hi = np.ascontiguousarray(hi, dtype=np.int64)
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ValueError(f"bins: lo and hi must be 1-D of one shape, got {lo.shape}, {hi.shape}")
    if rows is not None and lo.shape[0] != rows:
        raise ValueError(f"bins: need one band per row ({rows}), got {lo.shape[0]}")
    if lo.size and (lo.min() < 1 or hi.max() > n // 2 or np.any(hi - lo < 1)):
        raise ValueError(f"bins: need 1 <= lo < hi <= N//2 = {n // 2}")
    return lo, hi
