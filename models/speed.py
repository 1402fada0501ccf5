"""Shaft speed: which source to trust, and an estimate from the spectrum when none is given.

Precedence (docs/diagnosis.md): the speed a window carries (a gateway with a keyphasor),
then the latest tachometer reading of the asset (topic `bp/v1/{site}/{gateway}/{sensor}/tacho`,
JSON `{"t_ns", "shaft_hz"}`, no older than `TACHO_MAX_AGE_S`), then the asset's configured
`shaft_hz`, then `estimate_shaft_hz` on the window itself.

The estimate looks for the 1× line and its harmonics: residual imbalance puts a line at the
shaft rate on every rotating machine, and any non-linearity (looseness, misalignment, the
coupling) adds its harmonics, so a harmonic series whose fundamental is itself present is
the signature of the shaft (Randall, "Vibration-based condition monitoring", 2011, ch. 2).
A harmonic sum over candidate rates picks the series; the fundamental must stand out of its
floor so that a subharmonic (f/2, whose even harmonics are the real series) cannot win; the
rate is refined from the highest present harmonic (precision grows with the harmonic number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

TACHO_MAX_AGE_S: float = 60.0
"""A tachometer reading older than this (relative to the window) no longer describes it."""

SPEED_RANGE_HZ: tuple[float, float] = (1.0, 500.0)
"""Default plausible shaft range: 60 to 30 000 r/min (ISO 20816-3 covers 120 to 30 000;
reactor agitators and gearbox output shafts turn down to 60 r/min). A 1 Hz shaft needs a
window of at least `MIN_BINS` s (bins of 0.1 Hz); `models.window` gives 20 revolutions."""

N_HARMONICS: int = 5
"""Harmonics 1..5 of a candidate rate enter the harmonic sum."""

LINE_DB: float = 10.0
"""A harmonic counts as present this far above its local median floor (p ~ 1e-3 per bin
for a noise-only spectrum, as the defect lines in `stream.thresholds.LINE_SNR_DB`)."""

FLOOR_BINS: int = 51
"""Median-filter width (bins) of the local floor."""

FUNDAMENTAL_DB: float = 16.0
"""The 1× line itself must stand this far over its floor (p ~ 1e-12 for a noise bin): a
chance 10 dB bin at f/2 would otherwise turn the real series (its even harmonics) into a
subharmonic estimate. Residual imbalance makes 1× the strongest shaft line on most machines."""

MIN_PRESENT: int = 3
"""The fundamental plus at least two more of harmonics 2..5 must be present: two lines at
10 dB by chance are common among ~1000 candidate rates, three are not (p ~ 1e-8 each)."""

MIN_BINS: float = 10.0
"""Lowest candidate rate, in frequency bins (see `estimate_shaft_hz`)."""

CLUSTER: float = 0.03
"""Candidates within this relative distance of the lowest valid one are the same series."""


@dataclass(frozen=True)
class SpeedEstimate:
    """Shaft rate (Hz, NaN when none), confidence in [0, 1], reliable flag and a reason."""

    shaft_hz: float
    confidence: float
    reliable: bool
    reason: str


def _snr_db(amp: np.ndarray) -> np.ndarray:
    floor = median_filter(amp, size=FLOOR_BINS, mode="nearest")
    return 20.0 * np.log10((amp + 1e-15) / (floor + 1e-15))


def _peak_near(snr: np.ndarray, k: float) -> int:
    """The stronger of the two bins around fractional bin `k` (a line falls in one of them)."""
    k0 = min(max(math.floor(k), 1), snr.size - 2)
    return k0 if snr[k0] >= snr[k0 + 1] else k0 + 1


def _peak_in(snr: np.ndarray, k_lo: float, k_hi: float) -> int:
    """Bin of the largest SNR between fractional bins `k_lo` and `k_hi` (inclusive, rounded)."""
    lo = min(max(math.floor(k_lo + 0.5), 1), snr.size - 2)
    hi = min(max(math.floor(k_hi + 0.5), lo), snr.size - 2)
    return lo + int(np.argmax(snr[lo : hi + 1]))


def _interpolate(amp: np.ndarray, k: int) -> float:
    """Fractional bin of the peak at `k` (parabola through the log amplitudes)."""
    if not 1 <= k < amp.size - 1:
        return float(k)
    a, b, c = (math.log(max(v, 1e-30)) for v in amp[k - 1 : k + 2])
    den = a - 2.0 * b + c
    return k + (0.5 * (a - c) / den if den < 0 else 0.0)


def estimate_shaft_hz(
    amp: np.ndarray,
    df_hz: float,
    range_hz: tuple[float, float] = SPEED_RANGE_HZ,
) -> SpeedEstimate:
    """Estimate the shaft rate from one Hann amplitude spectrum `amp` (M bins, `df_hz` Hz apart).

    Searches `range_hz` (lo, hi) in Hz. Never raises on data: a spectrum without a clear
    harmonic series returns NaN, `reliable=False` and the reason.
    """
    lo, hi = float(range_hz[0]), float(range_hz[1])
    if not (math.isfinite(df_hz) and df_hz > 0 and 0 < lo < hi):
        return SpeedEstimate(math.nan, 0.0, False, f"bad search range {range_hz} or df {df_hz}")
    amp = np.asarray(amp, dtype=np.float64).ravel()
    m = amp.size
    if m < 8 or not np.all(np.isfinite(amp)):
        return SpeedEstimate(math.nan, 0.0, False, "spectrum too short or not finite")
    # A 1× line must sit well clear of DC: below ~10 bins the Hann leakage of the mean and
    # the steep low-frequency rise of the spectrum make the median floor meaningless.
    lo = max(lo, MIN_BINS * df_hz)
    hi = min(hi, (m - 2) * df_hz)
    if lo >= hi:
        return SpeedEstimate(
            math.nan, 0.0, False, f"frequency resolution {df_hz:.3g} Hz too coarse for the range"
        )
    snr = _snr_db(amp)
    capped = np.clip(snr, 0.0, 30.0)  # one huge line must not outvote a whole series
    cands = np.arange(lo, hi, df_hz / 2.0)
    score = np.zeros(cands.size)
    n_present = np.zeros(cands.size, dtype=np.int64)
    fund_ok = np.zeros(cands.size, dtype=bool)
    for j, f in enumerate(cands):
        total = 0.0
        count = 0
        for h in range(1, N_HARMONICS + 1):
            if h * f >= (m - 2) * df_hz:
                break
            k = _peak_near(snr, h * f / df_hz)
            total += capped[k]
            count += 1
            if snr[k] >= LINE_DB:
                n_present[j] += 1
            if h == 1:
                fund_ok[j] = snr[k] >= FUNDAMENTAL_DB
        score[j] = total / max(count, 1)
    valid = fund_ok & (n_present >= MIN_PRESENT)
    if not valid.any():
        best = int(np.argmax(score))
        return SpeedEstimate(
            math.nan,
            0.0,
            False,
            "speed estimate unreliable: no harmonic series (1x plus two more harmonics "
            f"{LINE_DB:g} dB over the floor) in {lo:.3g}-{hi:.3g} Hz; strongest candidate "
            f"{cands[best]:.3g} Hz",
        )
    # The shaft is the slowest periodic source of a rotating machine: bearing defect
    # trains (BPFO, BPFI), gear meshes and blade passes are faster and also make harmonic
    # series. So the lowest valid series wins; among candidates within the speed tolerance
    # of it (one line seen from neighbouring half-bins), the best harmonic sum.
    f_low = float(cands[np.flatnonzero(valid)[0]])
    near = valid & (cands <= f_low * (1.0 + CLUSTER))
    best = int(np.argmax(np.where(near, score, -np.inf)))
    f0 = float(cands[best])

    # Refine harmonic by harmonic (bootstrapping): each present harmonic is looked for
    # within 1.5 bins of h times the current estimate, and the estimate becomes the
    # h²-weighted mean of f_h/h (the error of f_h/h falls as 1/h).
    k1 = _peak_in(snr, f0 * (1.0 - CLUSTER) / df_hz, f0 * (1.0 + CLUSTER) / df_hz)
    f_est = _interpolate(amp, k1) * df_hz
    present = [1]
    num, den = f_est, 1.0
    for h in range(2, N_HARMONICS + 1):
        centre = h * f_est / df_hz
        if centre >= m - 3:
            break
        k = _peak_in(snr, centre - 1.5, centre + 1.5)
        if snr[k] >= LINE_DB:
            present.append(h)
            num += h * h * _interpolate(amp, k) * df_hz / h
            den += h * h
            f_est = num / den
    conf = min(1.0, len(present) / N_HARMONICS)
    return SpeedEstimate(
        f_est, float(conf), True, f"1x {f_est:.3f} Hz from shaft harmonics {present}"
    )


def choose_shaft_hz(
    window_hz: float | None,
    tacho: tuple[float, float] | None,
    config_hz: float | None,
    window_t_s: float,
) -> tuple[float, str]:
    """The shaft rate (Hz) by precedence and its source ("window", "tacho", "config"), or
    (NaN, "") when the spectrum must be used. `tacho` is (shaft_hz, t_s) of the latest reading.
    """
    if window_hz is not None and math.isfinite(window_hz) and window_hz > 0:
        return float(window_hz), "window"
    if tacho is not None:
        hz, t_s = tacho
        if math.isfinite(hz) and hz > 0 and abs(window_t_s - t_s) <= TACHO_MAX_AGE_S:
            return float(hz), "tacho"
    if config_hz is not None and math.isfinite(config_hz) and config_hz > 0:
        return float(config_hz), "config"
    return math.nan, ""
