"""The vibration simulator: determinism, realistic statistics, and the physics a standard
envelope analysis (band-pass, Hilbert envelope, spectrum; Randall & Antoni) must find."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.signal as ss
import scipy.stats as st
from hypothesis import given, settings
from hypothesis import strategies as hs

from ballpass.models.catalog import lookup
from ballpass.simulators.conditions import CONDITION_NAMES, CONDITIONS
from ballpass.simulators.signals import (
    defect_hz,
    hf_band_hz,
    resonances_hz,
    synthesize,
    temperature,
)

ORDERS = lookup("SKF 6205").orders()  # the CWRU drive-end bearing
FS = 25600.0
SHAFT = 29.95  # Hz, 1797 rpm as in CWRU at 0 hp


def sim(condition: str, seed: int = 0, *, fs: float = FS, seconds: float = 1.0,
        shaft: float = SHAFT, **kw: float) -> np.ndarray:
    return synthesize(condition, ORDERS, shaft, fs, int(fs * seconds),
                      rng=np.random.default_rng(seed), **kw)


def envelope_spectrum(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectrum of the Hilbert envelope of x band-passed around the resonances."""
    lo = 0.6 * resonances_hz(fs)[0]
    hi = min(1.4 * resonances_hz(fs)[-1], 0.45 * fs)
    sos = ss.butter(4, (lo, hi), "bandpass", fs=fs, output="sos")
    env = np.abs(ss.hilbert(ss.sosfiltfilt(sos, x)))
    spec = np.abs(np.fft.rfft(env - env.mean())) / env.size
    return np.fft.rfftfreq(env.size, 1.0 / fs), spec


def line_snr(freq: np.ndarray, spec: np.ndarray, hz: float, tol: float = 0.02) -> float:
    """Peak within ±tol of `hz` over the median of the envelope spectrum 5-700 Hz."""
    near = (freq >= hz * (1 - tol) - 0.5) & (freq <= hz * (1 + tol) + 0.5)
    band = (freq > 5.0) & (freq < 700.0)
    return float(spec[near].max() / np.median(spec[band]))


def kurtosis(x: np.ndarray) -> float:
    return float(st.kurtosis(x, fisher=False))


def line_amplitude(x: np.ndarray, fs: float, hz: float) -> float:
    """Peak amplitude (g) of a sinusoid at `hz` (Hann window, ±2 bins)."""
    w = np.hanning(x.size)
    spec = np.abs(np.fft.rfft(x * w)) * 2.0 / w.sum()
    k = round(hz * x.size / fs)
    return float(spec[max(k - 2, 0):k + 3].max())


# --- determinism and shape -------------------------------------------------------------


@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_seed_makes_it_deterministic(condition: str) -> None:
    a, b, c = sim(condition, 7), sim(condition, 7), sim(condition, 8)
    assert a.dtype == np.float64 and a.shape == (int(FS),)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.isfinite(a))


def test_impact_phase_is_random_per_window() -> None:
    # The phase of the BPFO envelope line over 16 windows of one generator is spread
    # around the circle (uniform phases give a mean resultant length near 0.25).
    rng = np.random.default_rng(3)
    n = int(FS)
    bpfo = ORDERS.bpfo * SHAFT
    phases = []
    for _ in range(16):
        x = synthesize("outer_race", ORDERS, SHAFT, FS, n, rng=rng)
        sos = ss.butter(4, (2000.0, 6000.0), "bandpass", fs=FS, output="sos")
        env = np.abs(ss.hilbert(ss.sosfiltfilt(sos, x)))
        phases.append(np.angle(np.fft.rfft(env)[round(bpfo * n / FS)]))
    assert abs(np.mean(np.exp(1j * np.array(phases)))) < 0.6


def test_t0_sets_the_shaft_phase_like_a_keyphasor() -> None:
    # Half a shaft turn later the 1× line is inverted; bearing parts are unaffected.
    n = int(FS)
    kw = dict(noise_g=0.0, severity=1.0)
    a = synthesize("imbalance", ORDERS, SHAFT, FS, n, rng=np.random.default_rng(1), **kw)
    b = synthesize("imbalance", ORDERS, SHAFT, FS, n, rng=np.random.default_rng(1),
                   t0_s=0.5 / SHAFT, **kw)
    lowpass = ss.butter(4, 45.0, fs=FS, output="sos")
    xa, xb = ss.sosfiltfilt(lowpass, a), ss.sosfiltfilt(lowpass, b)
    assert np.corrcoef(xa, xb)[0, 1] < -0.9


# --- realistic amplitudes (CWRU drive end: healthy 0.07 g, 0.007" outer race 0.6 g) ------


@pytest.mark.parametrize("fs", [12000.0, FS])
def test_healthy_machine_is_quiet_and_gaussian(fs: float) -> None:
    for seed in range(3):
        x = sim("normal", seed, fs=fs)
        assert 0.04 < x.std() < 0.12
        assert abs(kurtosis(x) - 3.0) < 0.5
        assert abs(x.mean()) < 0.01


@pytest.mark.parametrize("fs", [12000.0, FS])
def test_outer_race_fault_is_strong_and_impulsive(fs: float) -> None:
    for seed in range(3):
        x = sim("outer_race", seed, fs=fs)
        assert 0.35 < x.std() < 1.0
        assert 4.5 < kurtosis(x) < 15.0


# A ball's defect is on the contact track only part of the time (its spin axis wanders),
# so a severity-1 ball adds ~0.075 g on average and one second may hold few strikes.
@pytest.mark.parametrize(("condition", "rms_range"), [
    ("inner_race", (0.18, 0.5)), ("ball", (0.07, 0.35)), ("cage", (0.07, 0.2)),
])
def test_other_bearing_faults_are_impulsive(condition: str,
                                            rms_range: tuple[float, float]) -> None:
    x = sim(condition, 1)
    assert rms_range[0] < x.std() < rms_range[1]
    assert kurtosis(x) > 4.0


def test_severity_scales_the_fault_and_zero_is_healthy() -> None:
    rms = [sim("outer_race", 2, severity=s).std() for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in itertools.pairwise(rms))
    healthy = sim("normal", 2).std()
    assert abs(rms[0] - healthy) < 0.15 * healthy
    # Fault power grows with severity²: the 2.0 window is about twice the 1.0 window.
    assert 1.7 < rms[4] / rms[3] < 2.2


# --- envelope analysis finds the defect lines ------------------------------------------


@pytest.mark.parametrize("fs", [12000.0, FS])
@pytest.mark.parametrize("seed", [0, 1])
def test_outer_race_envelope_peaks_at_bpfo(fs: float, seed: int) -> None:
    freq, spec = envelope_spectrum(sim("outer_race", seed, fs=fs, seconds=2.0), fs)
    band = (freq > 5.0) & (freq < 700.0)
    peak = float(freq[band][np.argmax(spec[band])])
    bpfo = ORDERS.bpfo * SHAFT
    assert abs(peak - bpfo) <= 0.02 * bpfo
    assert line_snr(freq, spec, 2 * bpfo) > 5.0  # harmonics too


@pytest.mark.parametrize("seed", [0, 1])
def test_inner_race_envelope_has_bpfi_with_shaft_sidebands(seed: int) -> None:
    freq, spec = envelope_spectrum(sim("inner_race", seed, seconds=2.0), FS)
    bpfi = ORDERS.bpfi * SHAFT
    assert line_snr(freq, spec, bpfi) > 15.0
    # The load zone modulates at the shaft rate: 1× and BPFI ± 1× sidebands.
    assert line_snr(freq, spec, SHAFT) > 5.0
    assert line_snr(freq, spec, bpfi + SHAFT) > 5.0
    assert line_snr(freq, spec, bpfi - SHAFT) > 5.0
    # An outer-race line would be a misdiagnosis.
    assert line_snr(freq, spec, ORDERS.bpfo * SHAFT) < 5.0


def test_ball_envelope_has_twice_bsf_and_cage_modulation() -> None:
    freq, spec = envelope_spectrum(sim("ball", 0, seconds=2.0), FS)
    two_bsf = 2 * ORDERS.bsf * SHAFT
    # Intermittent (the defect leaves the contact track): 13-25 over seeds 0-7, was 15+.
    assert line_snr(freq, spec, two_bsf) > 10.0
    assert line_snr(freq, spec, ORDERS.ftf * SHAFT) > 5.0
    # For the 6205 the 2×BSF + 2×FTF sideband (165.0 Hz) lies within 2 % of BPFI
    # (162.2 Hz), so compare strengths instead of asking for silence there.
    ball = line_snr(freq, spec, two_bsf)
    for other in (ORDERS.bpfo, ORDERS.bpfi):
        assert line_snr(freq, spec, other * SHAFT) < ball / 2.0


def test_cage_envelope_has_ftf() -> None:
    freq, spec = envelope_spectrum(sim("cage", 0, seconds=4.0), FS)
    assert line_snr(freq, spec, ORDERS.ftf * SHAFT) > 10.0


@pytest.mark.parametrize("condition", ["normal", "imbalance", "misalignment", "lubrication"])
def test_no_bearing_lines_without_a_bearing_fault(condition: str) -> None:
    freq, spec = envelope_spectrum(sim(condition, 4, seconds=2.0), FS)
    for order in (ORDERS.bpfo, ORDERS.bpfi, 2 * ORDERS.bsf):
        assert line_snr(freq, spec, order * SHAFT) < 5.0


# --- shaft and lubrication conditions ---------------------------------------------------


def test_imbalance_raises_1x_and_misalignment_raises_2x() -> None:
    normal, imb, mis = (sim(c, 5, seconds=2.0) for c in ("normal", "imbalance",
                                                          "misalignment"))
    one = [line_amplitude(x, FS, SHAFT) for x in (normal, imb, mis)]
    two = [line_amplitude(x, FS, 2 * SHAFT) for x in (normal, imb, mis)]
    assert one[1] > 4 * one[0]
    assert two[2] > 8 * two[0]
    assert two[2] > one[2] > one[0]
    # Imbalance at severity 1.0: 4.5 + 0.8 mm/s RMS at 1× (ISO 20816 zone C/D).
    v_mm_s = one[1] / math.sqrt(2) * 9.80665 / (2 * math.pi * SHAFT) * 1e3
    assert 4.5 < v_mm_s < 6.0


def test_lubrication_raises_the_high_frequency_floor() -> None:
    def hf_rms(x: np.ndarray) -> float:
        lo, hi = hf_band_hz(FS)
        spec = np.fft.rfft(x)
        freq = np.fft.rfftfreq(x.size, 1.0 / FS)
        band = (freq >= lo) & (freq <= hi)
        return float(np.sqrt(2.0 * np.sum(np.abs(spec[band]) ** 2)) / x.size)

    normal, lub = sim("normal", 6), sim("lubrication", 6)
    assert hf_rms(lub) > 5 * hf_rms(normal)
    assert abs(kurtosis(lub) - 3.0) < 0.5  # a floor, not impacts


def test_temperature_is_plausible_and_rises_with_a_fault() -> None:
    rng = np.random.default_rng(0)
    healthy = temperature("normal", 64, rng=rng)
    hot = temperature("lubrication", 64, rng=rng)
    assert healthy.shape == (64,) and healthy.dtype == np.float64
    assert 38.0 < healthy.mean() < 42.0 and healthy.std() < 0.1
    assert hot.mean() > healthy.mean() + 5.0
    assert temperature("normal", 8, severity=0.0, rng=np.random.default_rng(1)).shape == (8,)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"condition": "outer"}, "condition"),
    ({"condition": "spalling"}, "condition"),
    ({"severity": -0.1}, "severity"),
    ({"severity": math.nan}, "severity"),
    ({"shaft_hz": 0.0}, "shaft_hz"),
    ({"fs_hz": -1.0}, "fs_hz"),
    ({"n_samples": 0}, "n_samples"),
    ({"noise_g": -1.0}, "noise_g"),
    # BPFI of a 60 Hz shaft is 325 Hz: not below Nyquist at 500 Hz.
    ({"condition": "inner_race", "shaft_hz": 60.0, "fs_hz": 500.0}, "BPFI"),
    ({"condition": "ball", "shaft_hz": 60.0, "fs_hz": 500.0}, "BSF"),
    ({"condition": "misalignment", "shaft_hz": 60.0, "fs_hz": 200.0}, "2× shaft"),
])
def test_bad_input_raises_value_error_naming_the_item(kwargs: dict, named: str) -> None:
    args = {"condition": "outer_race", "shaft_hz": SHAFT, "fs_hz": FS, "n_samples": 1024,
            "severity": 1.0, "noise_g": 0.02} | kwargs
    with pytest.raises(ValueError, match=named):
        synthesize(args["condition"], ORDERS, args["shaft_hz"], args["fs_hz"],
                   args["n_samples"], severity=args["severity"], noise_g=args["noise_g"],
                   rng=np.random.default_rng(0))


def test_unknown_condition_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'outer_race'"):
        synthesize("outer-race", ORDERS, SHAFT, FS, 64, rng=np.random.default_rng(0))


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(TypeError, match="rng"):
        synthesize("normal", ORDERS, SHAFT, FS, 64, rng=np.random.RandomState(0))  # type: ignore[arg-type]


def test_defect_hz_names_the_line() -> None:
    assert defect_hz("outer_race", ORDERS, 10.0) == ("BPFO", pytest.approx(35.8477, rel=1e-4))
    assert defect_hz("ball", ORDERS, 10.0)[0] == "2×BSF"
    assert defect_hz("normal", ORDERS, 10.0) == ("1× shaft", 10.0)


# --- properties ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    condition=hs.sampled_from(CONDITION_NAMES),
    fs=hs.sampled_from([2000.0, 8000.0, 12000.0, 25600.0, 51200.0]),
    n=hs.integers(1, 5000),
    shaft=hs.floats(1.0, 60.0),
    severity=hs.floats(0.0, 3.0),
    seed=hs.integers(0, 2**32 - 1),
)
def test_any_valid_input_gives_finite_samples(condition: str, fs: float, n: int,
                                              shaft: float, severity: float,
                                              seed: int) -> None:
    x = synthesize(condition, ORDERS, shaft, fs, n, severity=severity,
                   rng=np.random.default_rng(seed))
    assert x.shape == (n,) and x.dtype == np.float64
    assert np.all(np.isfinite(x))
    # Bounded like a real accelerometer signal: no blow-ups from the normalisation.
    assert np.abs(x).max() < 60.0 * (1.0 + severity)


def test_conditions_table_covers_the_names() -> None:
    assert tuple(CONDITIONS) == CONDITION_NAMES
    assert all(resonance < FS / 2 for resonance in resonances_hz(FS))
    assert all(resonance < 1000.0 for resonance in resonances_hz(2000.0))
