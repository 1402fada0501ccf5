"""Batched vibration features for the stream: one call per batch of same-shape windows.

`extract` runs the Numba kernels of `ballpass.stream.dsp` over a (B, N) batch of
acceleration windows (g) and returns a `FeatureBatch` of per-window arrays. Rows that are
not finite are computed as zeros and flagged (`finite` = 0) so one bad window does not
poison its batch; the diagnosis reports them as sensor faults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ballpass.models import iso20816
from ballpass.models.bearing import DefectOrders
from ballpass.stream import thresholds as th
from ballpass.stream.dsp._check import check_fs, check_windows
from ballpass.stream.dsp.envelope import (
    _envelope_spectrum_impacts,
    _sk_bands,
    kurtogram_bands,
)
from ballpass.stream.dsp.lines import _line_search
from ballpass.stream.dsp.mains import mains_share
from ballpass.stream.dsp.spectrum import (
    _amplitude_from_dft,
    _band_rms,
    _rfft_rows,
    _velocity_rms,
)
from ballpass.stream.dsp.stats import _moments
from ballpass.stream.faults import LINE_LABELS, SIDEBAND_LABELS

LINES: tuple[str, ...] = LINE_LABELS
"""Envelope lines searched, in the order of the second axis of the line arrays. BSF (a
ball's spin rate) is searched besides 2×BSF: a ball defect strikes the outer and the inner
race alternately, and the inner-race strike is weaker (it reaches the sensor through more
interfaces), so the train repeats at BSF and shows odd multiples of BSF (Randall & Antoni
2011, sec. 2.2). Its 2nd harmonic is the 2×BSF line itself. 1x (shaft rate) harmonics in
the envelope mean the shaft modulates the band (looseness, gear wear, rub); a defect line
on a shaft harmonic is then not evidence of its own."""

SIDEBANDS: tuple[str, ...] = SIDEBAND_LABELS
"""Sidebands searched, in the order of the second axis of the sideband arrays."""

IMPACT_FAMILIES: tuple[str, ...] = ("BPFO", "BPFI", "2xBSF")
"""Strike rates whose period the impact intervals are tested for (`dsp.impacts`), in the
order of the second axis of `impact_counts`: the outer race, the inner race and a ball
(struck on both races, so twice per ball turn)."""

ROW_FIELDS: tuple[str, ...] = (
    "rms_g",
    "peak_g",
    "crest",
    "kurtosis",
    "skewness",
    "velocity_rms_mm_s",
    "bpfo_snr_db",
    "bpfi_snr_db",
    "bsf_snr_db",
    "ftf_snr_db",
    "hf_floor",
    "x1_g",
    "x2_g",
)
"""The InfluxDB `vibration` fields a window contributes (ARCHITECTURE.md section 6)."""


@dataclass(frozen=True)
class FeatureBatch:
    """Features of B windows. Every array's first axis is the window index.

    Scalars per window, shape (B,):
      rms_g, peak_g (|x − mean| max), crest, kurtosis (Pearson, gaussian 3), skewness;
      velocity_rms_mm_s (ISO 20816 band by speed, `iso20816.velocity_band_hz`: 10-1000
      Hz, 2-1000 Hz below 600 r/min, shaft/2-1000 Hz below 120 r/min);
      bpfo/bpfi/bsf/ftf_snr_db (strongest
      of harmonics 1-3 of BPFO, BPFI, 2×BSF, FTF in the envelope spectrum, dB over the local
      floor); hf_floor (r.m.s. in g of the band 0.25-0.45 fs); x1_g, x2_g (amplitude in g
      at 1× and 2× shaft, raw Hann spectrum); x1_snr_db, x2_snr_db (those lines over
      their local floor, dB).
    Context per window, shape (B,): shaft_hz, resolution_hz (fs/N), n_revolutions,
      clip_fraction and plateau_samples (the share and count of samples on the window's
      rails), spikes (isolated one-sample excursions), mains_share (power share of mains
      lines off the shaft harmonics) at mains_hz, broadband_flatness (power density 10-1000
      Hz over the high band's: 1 for white noise), finite (1.0 or 0.0), env_lo_hz,
      env_hi_hz, env_sk (the envelope band and its spectral kurtosis); env_band_ok (1.0
      when a band wide enough for the lines above ENV_BAND_MIN_LO_HZ exists, 0.0 when the
      sample rate is too low for them).
    Targets, shape (B, 6): line_target_hz, the kinematic fundamentals in `LINES` order (Hz).
    Evidence, shape (B, 6, 3) (lines in `LINES` order × harmonics 1-3):
      line_freq_hz, line_amp_g (envelope amplitude, g), line_snr_db.
    Sidebands, shape (B, 4, 3) (`SIDEBANDS` order × harmonics 1-3 of the carrier):
      sideband_freq_hz, sideband_snr_db.
    Impacts (`dsp.impacts`): impact_counts (B, 3, 2), per `IMPACT_FAMILIES` the lags between
      the envelope's impacts at the strike period (hits) and around it (flanks);
      n_impacts (B,), the impacts found.
    """

    rms_g: np.ndarray
    peak_g: np.ndarray
    crest: np.ndarray
    kurtosis: np.ndarray
    skewness: np.ndarray
    velocity_rms_mm_s: np.ndarray
    bpfo_snr_db: np.ndarray
    bpfi_snr_db: np.ndarray
    bsf_snr_db: np.ndarray
    ftf_snr_db: np.ndarray
    hf_floor: np.ndarray
    x1_g: np.ndarray
    x2_g: np.ndarray
    x1_snr_db: np.ndarray
    x2_snr_db: np.ndarray
    line_freq_hz: np.ndarray
    line_amp_g: np.ndarray
    line_snr_db: np.ndarray
    sideband_freq_hz: np.ndarray
    sideband_snr_db: np.ndarray
    shaft_hz: np.ndarray
    resolution_hz: np.ndarray
    n_revolutions: np.ndarray
    clip_fraction: np.ndarray
    finite: np.ndarray
    plateau_samples: np.ndarray
    spikes: np.ndarray
    mains_share: np.ndarray
    mains_hz: np.ndarray
    broadband_flatness: np.ndarray
    env_lo_hz: np.ndarray
    env_hi_hz: np.ndarray
    env_sk: np.ndarray
    line_target_hz: np.ndarray | None = None
    env_band_ok: np.ndarray | None = None
    impact_counts: np.ndarray | None = None
    n_impacts: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rms_g.shape[0])

    def row(self, i: int) -> dict[str, float]:
        """The InfluxDB `vibration` fields of window `i` (all but seq and anomaly_score)."""
        return {name: float(getattr(self, name)[i]) for name in ROW_FIELDS}

    def rows(self) -> list[dict[str, float]]:
        """`row(i)` of every window, from one `tolist` per field (a batch's rows at once:
        a numpy scalar per value was a hot spot of the stream's process stage)."""
        columns = [getattr(self, name).tolist() for name in ROW_FIELDS]  # float64 arrays
        return [dict(zip(ROW_FIELDS, values, strict=True))
                for values in zip(*columns, strict=True)]

    def as_dict(self) -> dict[str, np.ndarray]:
        """Every array by field name (for tests and debugging)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def extract(
    windows: np.ndarray, fs_hz: float, shaft_hz: np.ndarray, orders: DefectOrders
) -> FeatureBatch:
    """Compute the features of a batch of acceleration windows.

    windows: (B, N) float64 acceleration in g, all at `fs_hz` (Hz) with the same N ≥ 16.
    shaft_hz: (B,) shaft rate of each window in Hz, finite and > 0.
    orders: defect orders of the bearing (BPFO, BPFI, BSF, FTF per shaft revolution).
    Raises ValueError on a bad shape, dtype, rate or speed.
    """
    x = check_windows(windows, min_samples=16)
    fs = check_fs(fs_hz)
    b, n = x.shape
    shaft = np.ascontiguousarray(shaft_hz, dtype=np.float64)
    if shaft.shape != (b,):
        raise ValueError(f"shaft_hz: expected shape ({b},), got {shaft.shape}")
    if not np.all(np.isfinite(shaft) & (shaft > 0.0)):
        raise ValueError(f"shaft_hz: must be finite and > 0, got {shaft}")
    line_orders = np.array(
        [orders.bpfo, orders.bpfi, 2.0 * orders.bsf, orders.ftf, orders.bsf, 1.0]
    )
    if not np.all(np.isfinite(line_orders) & (line_orders > 0.0)):
        raise ValueError(f"orders: must be finite and > 0, got {orders}")

    finite = np.all(np.isfinite(x), axis=1)
    if not finite.all():
        x = np.where(finite[:, None], x, 0.0)

    # Every argument given: with a default left out, Numba's dispatcher takes its slow
    # path (about 46 us a call).
    stats = _moments(x, th.SENSOR_PLATEAU_TOL, th.SPIKE_K, th.SPIKE_ISOLATION,
                     th.SPIKE_SAMPLES, th.SENSOR_PLATEAU_KINK, th.SENSOR_PLATEAU_NOISE,
                     th.SENSOR_PLATEAU_SPREAD)
    raw = _rfft_rows(x)
    # ISO 20816-3 band by speed (`iso20816.velocity_band_hz`): 10-1000 Hz at 600 r/min
    # and above, 2-1000 Hz below; one kernel call per distinct band in the batch.
    bands = [iso20816.velocity_band_hz(f) for f in shaft]
    velocity = np.empty(b)
    for band in set(bands):
        rows = np.array([bd == band for bd in bands])
        velocity[rows] = _velocity_rms(raw if rows.all() else np.ascontiguousarray(raw[rows]),
                                       n, fs, band[0], band[1])
    hf_lo, hf_hi = th.HF_BAND_LO_FRACTION * fs, th.HF_BAND_HI_FRACTION * fs
    hf = _band_rms(raw, n, fs, hf_lo, hf_hi)
    lf_hi = min(th.VELOCITY_BAND_HI_HZ, hf_lo)
    lf = _band_rms(raw, n, fs, th.VELOCITY_BAND_LO_HZ, lf_hi)
    # Power density ratio (g²/Hz) of the low band to the high band: 1 for white noise.
    flatness = np.where(hf > 0.0, (lf**2 / max(lf_hi - th.VELOCITY_BAND_LO_HZ, 1e-9))
                        / np.maximum(hf**2 / (hf_hi - hf_lo), 1e-300), 0.0)
    df = fs / n
    harm = np.arange(1, th.N_HARMONICS + 1, dtype=np.float64)

    # 1× and 2× shaft in the raw (Hann) spectrum.
    amp = _amplitude_from_dft(raw, n)  # the Hann spectrum, without a second FFT
    shaft_targets = (shaft[:, None] * np.array([1.0, 2.0]))[:, None, :]
    _, x12, x12_snr = _line_search(amp, df, shaft_targets, th.SPEED_TOLERANCE, th.NOISE_FLOOR_BINS)
    hum = [mains_share(amp, df, shaft, f, th.MAINS_HARMONICS, th.MAINS_SHAFT_ORDERS,
                       th.VELOCITY_BAND_LO_HZ) for f in th.MAINS_HZ]
    which = np.argmax(np.stack(hum), axis=0)
    del amp  # (B, N//2+1): 16 MB a row at 2^22 samples, not to be held through the envelope

    # Envelope band: the fast kurtogram's band of highest SK among those wide enough for
    # the lines we read and above the structural range (only those are computed).
    lo_bins, hi_bins, _ = kurtogram_bands(fs, n)
    top_line = (th.N_HARMONICS * line_orders.max() + 1.0) * shaft
    need_bw = th.ENV_BANDWIDTH_FACTOR * top_line
    band_ok = (lo_bins[None, :] * df >= th.ENV_BAND_MIN_LO_HZ) & (
        (hi_bins - lo_bins)[None, :] * df >= need_bw[:, None]
    )
    if lo_bins.size:
        sk = _sk_bands(raw, lo_bins, hi_bins, band_ok)
        masked = np.where(band_ok, sk, -np.inf)
        pick = np.argmax(masked, axis=1)
        lo_sel = lo_bins[pick]
        hi_sel = hi_bins[pick]
        env_sk = sk[np.arange(b), pick]
    else:
        lo_sel = np.zeros(b, dtype=np.int64)
        hi_sel = np.zeros(b, dtype=np.int64)
        env_sk = np.zeros(b)
    # No admissible candidate (low fs or very fast shaft: the tree's bands above
    # ENV_BAND_MIN_LO_HZ are at most fs/4 wide): the widest band above it, from
    # ENV_BAND_MIN_LO_HZ to Nyquist, when that is wide enough (10 kHz at 6000 r/min);
    # otherwise the upper half band, flagged (env_band_ok = 0).
    none_ok = ~band_ok.any(axis=1) if lo_bins.size else np.ones(b, dtype=bool)
    wide_lo = max(1, int(np.ceil(th.ENV_BAND_MIN_LO_HZ / df)))
    wide_hi = n // 2
    wide_ok = none_ok & ((wide_hi - wide_lo) * df >= need_bw)
    if wide_ok.any():
        wide_sk = _sk_bands(raw, np.array([wide_lo]), np.array([wide_hi]), wide_ok[:, None])
        env_sk = np.where(wide_ok, wide_sk[:, 0], env_sk)
    lo_sel = np.where(wide_ok, wide_lo, lo_sel)
    hi_sel = np.where(wide_ok, wide_hi, hi_sel)
    none_ok = none_ok & ~wide_ok
    lo_sel = np.where(none_ok, max(1, n // 4), lo_sel).astype(np.int64)
    hi_sel = np.where(none_ok, n // 2, hi_sel).astype(np.int64)
    env_sk = np.where(none_ok, 0.0, env_sk)
    # Strike periods in samples; maxima closer than a fraction of the shortest are one impact.
    periods = fs / (shaft[:, None] * line_orders[None, :3])
    gaps = np.maximum(1, (th.IMPACT_GAP_FRACTION * periods.min(axis=1)).astype(np.int64))
    env_spec, impact_counts, n_impacts = _envelope_spectrum_impacts(
        raw, n, lo_sel, hi_sel, periods, th.IMPACT_K_MAD, gaps,
        np.array(th.IMPACT_HIT), np.array(th.IMPACT_FLANK), th.IMPACT_MAX_LAGS)

    targets = shaft[:, None, None] * line_orders[None, :, None] * harm[None, None, :]
    lf, la, ls = _line_search(env_spec, df, targets, th.SPEED_TOLERANCE, th.NOISE_FLOOR_BINS)
    carriers = np.stack([targets[:, 1], targets[:, 1], targets[:, 2], targets[:, 2]], axis=1)
    ftf_hz = shaft * orders.ftf
    offsets = np.stack([-shaft, shaft, -ftf_hz, ftf_hz], axis=1)[:, :, None]
    sb_targets = np.maximum(carriers + offsets, 0.0)
    sf, _, ss = _line_search(env_spec, df, sb_targets, th.SPEED_TOLERANCE, th.NOISE_FLOOR_BINS)

    best = ls.max(axis=2)
    return FeatureBatch(
        rms_g=stats[:, 0].copy(),
        peak_g=stats[:, 1].copy(),
        crest=stats[:, 2].copy(),
        kurtosis=stats[:, 3].copy(),
        skewness=stats[:, 4].copy(),
        velocity_rms_mm_s=velocity,
        bpfo_snr_db=best[:, 0].copy(),
        bpfi_snr_db=best[:, 1].copy(),
        bsf_snr_db=best[:, 2].copy(),
        ftf_snr_db=best[:, 3].copy(),
        hf_floor=hf,
        x1_g=x12[:, 0, 0].copy(),
        x2_g=x12[:, 0, 1].copy(),
        x1_snr_db=x12_snr[:, 0, 0].copy(),
        x2_snr_db=x12_snr[:, 0, 1].copy(),
        line_freq_hz=lf,
        line_amp_g=la,
        line_snr_db=ls,
        sideband_freq_hz=sf,
        sideband_snr_db=ss,
        shaft_hz=shaft.copy(),
        resolution_hz=np.full(b, df),
        n_revolutions=shaft * n / fs,
        clip_fraction=stats[:, 5].copy(),
        plateau_samples=np.rint(stats[:, 5] * n),
        spikes=stats[:, 6].copy(),
        mains_share=np.max(np.stack(hum), axis=0),
        mains_hz=np.asarray(th.MAINS_HZ)[which],
        broadband_flatness=flatness,
        finite=finite.astype(np.float64),
        env_lo_hz=lo_sel * df,
        env_hi_hz=hi_sel * df,
        env_sk=env_sk,
        line_target_hz=targets[:, :, 0].copy(),
        env_band_ok=(~none_ok).astype(np.float64),
        impact_counts=impact_counts,
        n_impacts=n_impacts,
    )
