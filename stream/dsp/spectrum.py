"""Spectra of acceleration windows and band levels from them (Parseval), batched over rows.

`_rfft_rows` is the plain (rectangular) one-sided DFT, used for band energies where
Parseval must hold exactly. `_amplitude_spectrum` is the Hann-windowed single-sided
amplitude spectrum used to read discrete lines: a sinusoid of amplitude A g centred on
a bin reads A g (off-bin, the Hann scalloping loss is at most 1.42 dB).
FFTs run inside numba through rocket-fft (imported for its side effect).
"""

from __future__ import annotations

import numpy as np
import rocket_fft  # noqa: F401  (registers np.fft support inside @njit)
from numba import njit

from ballpass.stream.dsp._check import check_fs, check_windows
from ballpass.stream.thresholds import G_TO_M_S2

_HANN_TABLE_MAX = 1 << 16
"""Longest window (samples) whose Hann window the envelope kernels tabulate: up to here the
table (512 kB) is shared by a batch's rows; beyond it, the batch has few rows (the stream
bounds a batch's samples) and the 32 MB a table of 2^22 takes is not worth a cosine per
sample saved."""


@njit(cache=True, nogil=True)
def _hann_at(j: int, n: int) -> float:
    """Sample j of the periodic Hann window of length n."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * j / n)


@njit(cache=True, nogil=True)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window of length n (the DFT-even form used for spectral analysis)."""
    w = np.empty(n)
    for j in range(n):
        w[j] = _hann_at(j, n)
    return w


@njit(cache=True, nogil=True)
def _hann_table(n: int) -> np.ndarray:
    """`_hann(n)` up to `_HANN_TABLE_MAX` samples, else an empty table: computed per sample."""
    if n <= _HANN_TABLE_MAX:
        return _hann(n)
    return np.empty(0)


@njit(cache=True, nogil=True)
def _hann_sum(n: int, table: np.ndarray) -> float:
    """sum(w) of the Hann window of length n, from its `_hann_table`."""
    if table.shape[0] == n:
        return table.sum()
    acc = 0.0
    for j in range(n):
        acc += _hann_at(j, n)
    return acc


@njit(cache=True, nogil=True)
def _rfft_rows(x: np.ndarray) -> np.ndarray:
    """One-sided DFT of each row, (B, N//2+1) complex128, no window, no scaling."""
    return np.fft.rfft(x, axis=-1)


@njit(cache=True, nogil=True)
def _amplitude_row_into(row: np.ndarray, table: np.ndarray, scale: float, c: np.ndarray,
                        out: np.ndarray) -> None:
    """Hann amplitude spectrum of one row into `out` (N//2+1), scaled by `scale`; see
    `_amplitude_spectrum`. Windows `row` (N,) in place (it is lost) and takes its DFT into
    `c` (N//2+1 complex): no buffer of its own. `table` is `_hann_table(N)` (or `_hann(N)`);
    empty, the window is computed per sample."""
    n = row.shape[0]
    mean = row.mean()
    if table.shape[0] == n:
        for j in range(n):
            row[j] = (row[j] - mean) * table[j]
    else:
        for j in range(n):
            row[j] = (row[j] - mean) * _hann_at(j, n)
    np.fft.rfft(row, out=c)
    # |c| as sqrt(re² + im²): numba's complex abs goes through hypot, 4x slower here.
    for k in range(c.shape[0]):
        out[k] = np.sqrt(c[k].real ** 2 + c[k].imag ** 2) * scale
    out[0] *= 0.5
    if n % 2 == 0:
        out[-1] *= 0.5


@njit(cache=True, nogil=True)
def _amplitude_spectrum(x: np.ndarray) -> np.ndarray:
    """Hann-windowed single-sided amplitude spectrum (B, N//2+1), in the units of `x`.

    The row mean is removed first; scaling is 2/sum(w) (1/sum(w) at DC and, for even N,
    at Nyquist) so that a bin-centred sinusoid of amplitude A reads A. Row by row: the
    per-row buffers stay in cache, where (B, N) temporaries cost page faults.
    """
    b, n = x.shape
    w = _hann(n)
    scale = 2.0 / w.sum()
    spec = np.empty((b, n // 2 + 1))
    xw = np.empty(n)
    c = np.empty(n // 2 + 1, dtype=np.complex128)
    for i in range(b):
        xw[:] = x[i]
        _amplitude_row_into(xw, w, scale, c, spec[i])
    return spec


@njit(cache=True, nogil=True)
def _mean_free_bin(row: np.ndarray, j: int, n: int) -> complex:
    """Bin j (any integer) of the full DFT of a length-n row, given its one-sided DFT `row`,
    with the mean removed (bin 0 is 0; bin j > N/2 is the conjugate of bin n − j)."""
    j %= n
    if j == 0:
        return 0.0j
    if j < row.shape[0]:
        return row[j]
    return np.conj(row[n - j])


@njit(cache=True, nogil=True)
def _amplitude_from_dft(spec: np.ndarray, n: int) -> np.ndarray:
    """`_amplitude_spectrum` of rows of length `n` from their one-sided DFT `spec`, with no
    second FFT: the periodic Hann window is three lines in frequency, so the windowed DFT
    is X[k]/2 − (X[k−1] + X[k+1])/4, and sum(w) = n/2 (n >= 2)."""
    b, m = spec.shape
    out = np.empty((b, m))
    scale = 4.0 / n
    for i in range(b):
        row = spec[i]
        for k in range(2, m - 1):  # the interior, without the edge cases' branches
            re = 0.5 * row[k].real - 0.25 * (row[k - 1].real + row[k + 1].real)
            im = 0.5 * row[k].imag - 0.25 * (row[k - 1].imag + row[k + 1].imag)
            out[i, k] = np.sqrt(re * re + im * im) * scale
        for k in (0, 1, m - 1):
            if k < m:
                c = 0.5 * _mean_free_bin(row, k, n) - 0.25 * (
                    _mean_free_bin(row, k - 1, n) + _mean_free_bin(row, k + 1, n))
                out[i, k] = np.sqrt(c.real ** 2 + c.imag ** 2) * scale
        out[i, 0] *= 0.5
        if n % 2 == 0:
            out[i, m - 1] *= 0.5
    return out


@njit(cache=True, nogil=True)
def _band_power_weights(n: int, fs: float, lo: float, hi: float, integrate: bool) -> np.ndarray:
    """Per-bin weights turning |X_k|² into mean-square contributions of band [lo, hi] Hz.

    One-sided Parseval: mean(x²) = (|X_0|² + 2·Σ|X_k|² + |X_{N/2}|²) / N². With `integrate`,
    bin k is also divided by (2π f_k)² (acceleration to velocity, f_k > 0).
    """
    nb = n // 2 + 1
    wts = np.zeros(nb)
    df = fs / n
    for k in range(nb):
        f = k * df
        if f < lo or f > hi or f <= 0.0:
            continue
        c = 2.0
        if n % 2 == 0 and k == nb - 1:
            c = 1.0
        c /= n * n
        if integrate:
            c /= (2.0 * np.pi * f) ** 2
        wts[k] = c
    return wts


@njit(cache=True, nogil=True)
def _band_rms(spec: np.ndarray, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """R.m.s. (units of the signal) of the content in [lo, hi] Hz, from `_rfft_rows` output."""
    wts = _band_power_weights(n, fs, lo, hi, False)
    b = spec.shape[0]
    out = np.empty(b)
    for i in range(b):
        acc = 0.0
        for k in range(spec.shape[1]):
            if wts[k] > 0.0:
                acc += wts[k] * (spec[i, k].real ** 2 + spec[i, k].imag ** 2)
        out[i] = np.sqrt(acc)
    return out


@njit(cache=True, nogil=True)
def _velocity_rms(spec: np.ndarray, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Velocity r.m.s. (mm/s) in [lo, hi] Hz from the `_rfft_rows` spectrum of acceleration in g.

    Integration in the frequency domain: V(f) = A(f)·9.80665 / (2πf) m/s, × 1000 for mm/s.
    """
    wts = _band_power_weights(n, fs, lo, hi, True)
    b = spec.shape[0]
    out = np.empty(b)
    k_ms = G_TO_M_S2 * 1000.0
    for i in range(b):
        acc = 0.0
        for k in range(spec.shape[1]):
            if wts[k] > 0.0:
                acc += wts[k] * (spec[i, k].real ** 2 + spec[i, k].imag ** 2)
        out[i] = np.sqrt(acc) * k_ms
    return out


def amplitude_spectrum(x: np.ndarray) -> np.ndarray:
    """Hann single-sided amplitude spectrum of each row of `x` (B, N) in g; shape (B, N//2+1)."""
    return _amplitude_spectrum(check_windows(x))


def band_rms(x: np.ndarray, fs_hz: float, lo_hz: float, hi_hz: float) -> np.ndarray:
    """R.m.s. in g of each row's content between `lo_hz` and `hi_hz` (inclusive), shape (B,)."""
    x = check_windows(x)
    fs = check_fs(fs_hz)
    if not 0.0 <= lo_hz <= hi_hz:
        raise ValueError(f"band: need 0 <= lo_hz <= hi_hz, got {lo_hz}, {hi_hz}")
    return _band_rms(_rfft_rows(x), x.shape[1], fs, float(lo_hz), float(hi_hz))


def velocity_rms(
    x: np.ndarray, fs_hz: float, lo_hz: float = 10.0, hi_hz: float = 1000.0
) -> np.ndarray:
    """Velocity r.m.s. (mm/s) of acceleration rows `x` (g) in [lo_hz, hi_hz] Hz, shape (B,)."""
    x = check_windows(x)
    fs = check_fs(fs_hz)
    if not 0.0 < lo_hz <= hi_hz:
        raise ValueError(f"band: need 0 < lo_hz <= hi_hz, got {lo_hz}, {hi_hz}")
    return _velocity_rms(_rfft_rows(x), x.shape[1], fs, float(lo_hz), float(hi_hz))
