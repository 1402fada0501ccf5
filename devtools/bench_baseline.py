"""The straightforward version of the stream's features, for `ballpass bench` only.

One window at a time with numpy and scipy, the way an engineer writes it from a textbook
(Randall & Antoni, MSSP 25 (2011)): scipy.stats for the moments, np.fft for spectra,
a Butterworth filter bank with `sosfiltfilt` and `scipy.signal.hilbert` for the kurtogram
and the envelope, a median floor for each line. It computes the same fields as
`ballpass.stream.features.extract` (same bands, thresholds and line search rules), so the
bench can run the same `diagnose` on both and compare speed on equal work. Filters are
designed once per band and rate (cached), not per window: the baseline is plain, not
careless. It is not used by the stream.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import scipy.signal
import scipy.stats

from ballpass.models.bearing import DefectOrders
from ballpass.stream import thresholds as th
from ballpass.stream.dsp.impacts import _MEDIAN_SAMPLES
from ballpass.stream.dsp.mains import mains_share
from ballpass.stream.features import FeatureBatch

_FILTER_ORDER = 4
"""Butterworth order of each band-pass (applied forward and backward: order 8 overall)."""


def _hann_amplitude(x: np.ndarray) -> np.ndarray:
    """Hann single-sided amplitude spectrum, a bin-centred sinusoid of amplitude A reads A."""
    n = x.size
    w = np.hanning(n + 1)[:-1]  # periodic Hann
    spec = np.abs(np.fft.rfft((x - x.mean()) * w)) * 2.0 / w.sum()
    spec[0] *= 0.5
    if n % 2 == 0:
        spec[-1] *= 0.5
    return spec


def _band_ms(spec: np.ndarray, n: int, fs: float, lo: float, hi: float,
             integrate: bool) -> float:
    """Mean square of the band [lo, hi] Hz from a one-sided DFT (Parseval)."""
    f = np.fft.rfftfreq(n, 1.0 / fs)
    sel = (f >= lo) & (f <= hi) & (f > 0)
    p = np.abs(spec[sel]) ** 2 * 2.0 / (n * n)
    if n % 2 == 0 and sel[-1]:
        p[-1] *= 0.5
    if integrate:
        p = p / (2.0 * np.pi * f[sel]) ** 2
    return float(p.sum())


def _line(spec: np.ndarray, df: float, f: float, tol: float, noise_bins: int
          ) -> tuple[float, float, float]:
    """The line near `f` Hz: (frequency Hz, amplitude, SNR dB over the median floor)."""
    m = spec.size
    k_lo = max(1, round(f * (1 - tol) / df))
    k_hi = min(m - 2, round(f * (1 + tol) / df))
    if k_lo > k_hi:
        return f, 0.0, 0.0
    k = np.arange(k_lo, k_hi + 1)
    peaks = k[(spec[k] >= spec[k - 1]) & (spec[k] >= spec[k + 1])]
    best = int(peaks[np.argmax(spec[peaks])]) if peaks.size else \
        min(max(round(f / df), k_lo), k_hi)
    floor_bins = np.r_[spec[max(1, k_lo - noise_bins):k_lo],
                       spec[k_hi + 1:min(m - 1, k_hi + noise_bins) + 1]]
    floor = float(np.median(floor_bins)) if floor_bins.size else 0.0
    a = float(spec[best])
    return best * df, a, 20 * math.log10((a + 1e-15) / (floor + 1e-15))


@functools.lru_cache(maxsize=256)
def _bandpass(fs: float, lo: float, hi: float) -> np.ndarray:
    nyq = fs / 2
    if lo <= 0:
        return scipy.signal.butter(_FILTER_ORDER, hi, btype="lowpass", fs=fs, output="sos")
    if hi >= nyq * 0.999:
        return scipy.signal.butter(_FILTER_ORDER, lo, btype="highpass", fs=fs, output="sos")
    return scipy.signal.butter(_FILTER_ORDER, [lo, hi], btype="bandpass", fs=fs, output="sos")


def pipeline_bands(fs: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The kurtogram's candidate bands of the pipeline as DFT bin ranges [lo, hi).

    The baseline scans the same bands as the pipeline (equal work); only the way each
    band's envelope is computed differs (a filter here, a bin range there).
    """
    from ballpass.stream.dsp import envelope

    if hasattr(envelope, "kurtogram_bands"):  # the fast kurtogram (1/3-binary tree)
        lo, hi, _ = envelope.kurtogram_bands(fs, n)
        return lo, hi
    return envelope.candidate_bands(fs, n, th.ENV_LEVELS)  # type: ignore[attr-defined]


def admissible(lo_bins: np.ndarray, hi_bins: np.ndarray, df: float, shaft: float,
               orders: DefectOrders) -> np.ndarray:
    """The bands the pipeline may pick: above ENV_BAND_MIN_LO_HZ and wide enough for the
    highest line searched (the rule of `features.extract`)."""
    top = max(orders.bpfo, orders.bpfi, 2 * orders.bsf, orders.ftf)
    need_bw = th.ENV_BANDWIDTH_FACTOR * (th.N_HARMONICS * top + 1) * shaft
    return (lo_bins * df >= th.ENV_BAND_MIN_LO_HZ) & ((hi_bins - lo_bins) * df >= need_bw)


def _envelope(x: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    return np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(_bandpass(fs, lo, hi), x)))


def features_one(x: np.ndarray, fs: float, shaft: float, orders: DefectOrders
                 ) -> dict[str, object]:
    """Every FeatureBatch field of one window `x` (g) at `fs` Hz, shaft `shaft` Hz."""
    n = x.size
    df = fs / n
    d = x - x.mean()
    rms = float(np.sqrt(np.mean(d * d)))
    peak = float(np.max(np.abs(d)))
    clip, spikes = _rails_and_spikes(x)
    spec = np.fft.rfft(x)
    amp = _hann_amplitude(x)
    x12 = [_line(amp, df, h * shaft, th.SPEED_TOLERANCE, th.NOISE_FLOOR_BINS) for h in (1, 2)]

    # Kurtogram: SK of the envelope in each admissible band; the envelope of the best one.
    line_orders = np.array([orders.bpfo, orders.bpfi, 2 * orders.bsf, orders.ftf, orders.bsf, 1.0])
    lo_bins, hi_bins = pipeline_bands(fs, n)
    ok = admissible(lo_bins, hi_bins, df, shaft, orders)
    band_ok = bool(ok.any())
    best_sk, band = -np.inf, (n // 4 * df, n // 2 * df)
    for lo, hi in zip(lo_bins[ok] * df, hi_bins[ok] * df, strict=True):
        env = _envelope(x, fs, lo, hi)
        p = env * env
        sk = float(np.mean(p * p) / np.mean(p) ** 2 - 2) if p.mean() > 0 else 0.0
        if sk > best_sk:
            best_sk, band = sk, (lo, hi)
    env = _envelope(x, fs, *band)
    env_spec = _hann_amplitude(env)
    impact_counts, n_impacts = _impacts(env, fs / (line_orders[:3] * shaft))

    lines = np.array([[_line(env_spec, df, o * h * shaft, th.SPEED_TOLERANCE,
                             th.NOISE_FLOOR_BINS) for h in range(1, th.N_HARMONICS + 1)]
                      for o in line_orders])  # (6, 3, 3): freq, amp, snr
    ftf = orders.ftf * shaft
    carriers = [line_orders[1], line_orders[1], line_orders[2], line_orders[2]]
    offsets = [-shaft, shaft, -ftf, ftf]
    sides = np.array([[_line(env_spec, df, max(c * h * shaft + off, 0.0), th.SPEED_TOLERANCE,
                             th.NOISE_FLOOR_BINS) for h in range(1, th.N_HARMONICS + 1)]
                      for c, off in zip(carriers, offsets, strict=True)])
    best = lines[:, :, 2].max(axis=1)
    hf_lo, hf_hi = th.HF_BAND_LO_FRACTION * fs, th.HF_BAND_HI_FRACTION * fs
    lf_hi = min(th.VELOCITY_BAND_HI_HZ, hf_lo)
    hf_ms = _band_ms(spec, n, fs, hf_lo, hf_hi, False)
    lf_ms = _band_ms(spec, n, fs, th.VELOCITY_BAND_LO_HZ, lf_hi, False)
    flatness = (lf_ms / (lf_hi - th.VELOCITY_BAND_LO_HZ)) / (hf_ms / (hf_hi - hf_lo)) \
        if hf_ms > 0 else 0.0
    hum = [float(mains_share(amp[None, :], df, np.array([shaft]), f, th.MAINS_HARMONICS,
                             th.MAINS_SHAFT_ORDERS, th.VELOCITY_BAND_LO_HZ)[0])
           for f in th.MAINS_HZ]
    return {
        "rms_g": rms, "peak_g": peak, "crest": peak / rms if rms > 0 else 0.0,
        "kurtosis": float(scipy.stats.kurtosis(x, fisher=True, bias=True)) + 3.0,
        "skewness": float(scipy.stats.skew(x, bias=True)),
        "velocity_rms_mm_s": math.sqrt(_band_ms(spec, n, fs, th.VELOCITY_BAND_LO_HZ,
                                                th.VELOCITY_BAND_HI_HZ, True))
        * th.G_TO_M_S2 * 1000.0,
        "bpfo_snr_db": best[0], "bpfi_snr_db": best[1], "bsf_snr_db": best[2],
        "ftf_snr_db": best[3],
        "hf_floor": math.sqrt(_band_ms(spec, n, fs, th.HF_BAND_LO_FRACTION * fs,
                                       th.HF_BAND_HI_FRACTION * fs, False)),
        "x1_g": x12[0][1], "x2_g": x12[1][1], "x1_snr_db": x12[0][2], "x2_snr_db": x12[1][2],
        "line_freq_hz": lines[:, :, 0], "line_amp_g": lines[:, :, 1],
        "line_snr_db": lines[:, :, 2], "sideband_freq_hz": sides[:, :, 0],
        "sideband_snr_db": sides[:, :, 2], "shaft_hz": shaft, "resolution_hz": df,
        "n_revolutions": shaft * n / fs, "clip_fraction": clip,
        "plateau_samples": float(round(clip * n)), "spikes": float(spikes),
        "mains_share": max(hum), "mains_hz": th.MAINS_HZ[int(np.argmax(hum))],
        "broadband_flatness": flatness,
        "finite": float(np.all(np.isfinite(x))), "env_lo_hz": band[0], "env_hi_hz": band[1],
        "env_sk": best_sk if math.isfinite(best_sk) else 0.0,
        "line_target_hz": line_orders * shaft, "env_band_ok": float(band_ok),
        "impact_counts": impact_counts, "n_impacts": float(n_impacts),
    }


def _rails_and_spikes(x: np.ndarray) -> tuple[float, int]:
    """Share of samples on the rails and isolated spikes (the rule of `dsp.stats._moments`),
    with numpy: a sorted median, then each candidate's neighbours."""
    if x.max() <= x.min():
        return 0.0, 0
    n = x.size
    stride = max(1, n // th.SPIKE_SAMPLES)
    idx = np.arange(stride, n, stride)
    tol = th.SENSOR_PLATEAU_TOL * 1.4826 * float(np.median(np.abs(x[idx] - x[idx - 1])))
    clip = float(np.mean((x >= x.max() - tol) | (x <= x.min() + tol)))
    sub = x[::stride]
    med = float(np.median(sub))
    dev = np.abs(x - med)
    limit = th.SPIKE_K * 1.4826 * float(np.median(np.abs(sub - med)))
    spikes = 0
    for j in np.nonzero(dev[4 : n - 4] > limit)[0] + 4 if limit > 0 else ():
        near = dev[[j - 4, j - 3, j - 2, j + 2, j + 3, j + 4]]
        wide = min(dev[j - 1], dev[j + 1]) >= 0.5 * dev[j]
        spikes += bool(np.all(near < th.SPIKE_ISOLATION * dev[j]) and not wide)
    return clip, spikes


def _impacts(env: np.ndarray, periods: np.ndarray) -> tuple[np.ndarray, int]:
    """Impact-interval hit and flank counts (3, 2) with numpy: scipy's peak finder (its
    `distance` keeps the larger of close maxima), then every lag to the next impacts."""
    sub = env[:: max(1, env.size // _MEDIAN_SAMPLES)]
    med = float(np.median(sub))
    level = med + th.IMPACT_K_MAD * 1.4826 * float(np.median(np.abs(sub - med)))
    gap = max(1, int(th.IMPACT_GAP_FRACTION * periods.min()))
    t, _ = scipy.signal.find_peaks(env, height=level, distance=gap)
    lags = np.concatenate([t[k:] - t[:-k] for k in range(1, th.IMPACT_MAX_LAGS + 1)
                           if t.size > k] or [np.zeros(0)])
    m = lags[None, :] / periods[:, None]
    counts = np.zeros((periods.size, 2))
    for col, ranges in ((0, th.IMPACT_HIT), (1, th.IMPACT_FLANK)):
        for lo, hi in ranges:
            counts[:, col] += ((m > lo) & (m < hi)).sum(axis=1)
    return counts, int(t.size)


def extract_baseline(windows: np.ndarray, fs_hz: float, shaft_hz: np.ndarray,
                     orders: DefectOrders) -> FeatureBatch:
    """`features_one` on each row of `windows` (B, N), stacked into a FeatureBatch."""
    rows = [features_one(windows[i], float(fs_hz), float(shaft_hz[i]), orders)
            for i in range(windows.shape[0])]
    missing = [f.name for f in dataclasses.fields(FeatureBatch) if f.name not in rows[0]]
    if missing:  # the pipeline grew a feature: the baseline must do the same work
        raise NotImplementedError(f"bench_baseline does not compute {', '.join(missing)}")
    return FeatureBatch(**{k: np.array([r[k] for r in rows]) for k in rows[0]})
