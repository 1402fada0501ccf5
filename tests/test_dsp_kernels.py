"""Every DSP kernel against its slow reference (tests/reference_dsp.py), plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_dsp as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ballpass.stream.dsp import envelope as env
from ballpass.stream.dsp import impacts, lines, spectrum, stats
from ballpass.stream.dsp.envelope import kurtogram_bands, kurtogram_levels

SETTINGS = settings(max_examples=25, deadline=None)
FS = 1000.0


@st.composite
def batches(draw, min_n: int = 16, max_n: int = 257) -> np.ndarray:
    """(B, N) float64 batches, B in 1..5, N odd or even, values in ±10 g.

    Values are quantised to 0.01 g like ADC counts, so hypothesis explores constant rows,
    spikes and steps rather than 1e-300 magnitudes no sensor produces.
    """
    b = draw(st.integers(1, 5))
    n = draw(st.integers(min_n, max_n))
    elems = st.integers(-1000, 1000).map(lambda v: v / 100.0)
    return draw(arrays(np.float64, (b, n), elements=elems))


def noisy(b: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, n))


# --- stats -----------------------------------------------------------------------------


@SETTINGS
@given(batches())
def test_moments_match_reference(x: np.ndarray) -> None:
    got = stats.moments(x)
    want = ref.moments(x)
    # Rows whose spread is near float64 round-off give meaningless higher moments.
    spread = np.ptp(x, axis=1) > 1e-6 * np.maximum(1.0, np.abs(x).max(axis=1))
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got[spread, 2:5], want[spread, 2:5], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got[:, 5:], want[:, 5:], atol=0)


def test_moments_constant_row_and_gaussian() -> None:
    x = np.vstack([np.full(100, 3.0), noisy(1, 200_000, 1)[0, :100]])
    got = stats.moments(x)
    assert got[0].tolist() == [0.0] * 7
    g = stats.moments(noisy(1, 200_000, 2))[0]
    assert g[3] == pytest.approx(3.0, abs=0.05)  # Pearson kurtosis of a gaussian
    assert g[4] == pytest.approx(0.0, abs=0.02)


def test_rails_and_spikes_of_a_saturated_and_a_spiked_signal() -> None:
    rng = np.random.default_rng(4)
    x = 0.1 * rng.standard_normal((3, 8192))
    x[1] = np.clip(x[1], -0.25, 0.25)  # about 1 % of the samples on the rails
    x[2, [100, 5000]] += 50.0  # two electrical spikes: no ringing
    got = stats.moments(x)
    assert got[0, 5] * 8192 < 16 and got[0, 6] == 0  # a clean gaussian: one sample per rail
    on_rails = np.mean(np.abs(x[1]) >= 0.25)
    assert on_rails <= got[1, 5] < on_rails + 0.005  # the rails, and a sliver beside them
    assert got[2, 6] == 2 and got[2, 5] * 8192 < 16


def _sines(clip: float = 1.0) -> np.ndarray:
    """Clean sines, 8192 samples: a handheld calibrator (159.2 Hz, 1 g r.m.s. at 12.8 kHz)
    and imbalance-like 1x lines (25-60 Hz, 0.5 g at 12-51.2 kHz: up to 1700 samples a cycle),
    at several phases, with 0 to 1e-4 g of sensor noise, clipped at `clip` × the amplitude
    (the sensor's noise is part of what the amplifier clips)."""
    rng = np.random.default_rng(13)
    rows = []
    for fs, f, rms in ((12800.0, 159.2, 1.0), (25600.0, 29.95, 0.5), (12000.0, 29.95, 0.5),
                       (51200.0, 30.0, 0.5), (25600.0, 60.0, 0.5), (12000.0, 25.0, 0.5)):
        t = np.arange(8192) / fs
        for phase, noise in ((0.4, 1e-4), (1.9, 3e-5), (4.1, 0.0)):
            a = rms * math.sqrt(2.0)
            x = a * np.sin(2 * np.pi * f * t + phase) + noise * rng.standard_normal(t.size)
            rows.append(np.clip(x, -clip * a, clip * a))
    return np.array(rows)


def test_the_smooth_peaks_of_a_clean_sine_are_not_rails() -> None:
    """Before: every cycle of a clean sine reaches the same extreme, so its smooth peaks
    filled the rails' tolerance (463 samples for the calibrator, 75 for the imbalance):
    `sensor_fault: saturated`."""
    x = _sines()
    got = np.rint(stats.moments(x)[:, 5] * x.shape[1])
    assert got.max() < 16, got
    np.testing.assert_array_equal(got, np.rint(ref.moments(x)[:, 5] * x.shape[1]))


@pytest.mark.parametrize("clip", [0.9, 0.95, 0.99])
def test_a_clean_sine_clipped_below_its_peak_is_on_the_rails(clip: float) -> None:
    x = _sines(clip)
    got = stats.moments(x)[:, 5]
    on_rails = np.mean(np.abs(x) >= np.abs(x).max(axis=1, keepdims=True) - 1e-12,
                       axis=1)
    # Most rail samples count: a rail whose neighbourhood (3 lags) the window cuts is not judged.
    assert np.all(got * x.shape[1] >= 16) and np.all(got >= 0.7 * on_rails), (got, on_rails)
    np.testing.assert_array_equal(got, ref.moments(x)[:, 5])


def test_an_impact_starting_in_a_windows_last_samples_is_not_a_spike() -> None:
    """Before: a resonance struck in the last 1-3 samples, its ringing in the next window,
    looked isolated (the samples past the end counted as quiet) and made a severe
    simulated outer-race window a sensor fault."""
    n, fs = 8192, 25600.0
    k = np.arange(40)
    ring = np.exp(-2 * np.pi * 0.02 * 3000.0 * k / fs) * np.sin(2 * np.pi * 3000.0 * k / fs)
    x = 0.01 * np.random.default_rng(5).standard_normal((4, n))
    for row, start in enumerate((n - 3, n - 2, 2000)):
        x[row, start : start + ring.size] += 5.0 * ring[: n - start]
    x[3, 3000] += 5.0  # an electrical spike: counted
    assert stats.moments(x)[:, 6].tolist() == [0, 0, 0, 1]
    assert ref.moments(x)[:, 6].tolist() == [0, 0, 0, 1]


def test_moments_of_a_sine() -> None:
    t = np.arange(1000) / FS
    got = stats.moments(2.0 * np.sin(2 * np.pi * 50 * t)[None, :])[0]
    assert got[0] == pytest.approx(2.0 / math.sqrt(2), rel=1e-9)
    assert got[2] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert got[3] == pytest.approx(1.5, rel=1e-6)  # kurtosis of a sine


# --- spectra ----------------------------------------------------------------------------


@SETTINGS
@given(batches())
def test_amplitude_spectrum_matches_reference(x: np.ndarray) -> None:
    np.testing.assert_allclose(
        spectrum.amplitude_spectrum(x), ref.amplitude_spectrum(x), rtol=1e-9, atol=1e-9
    )


def test_band_edges_on_a_bin_are_inclusive() -> None:
    """A band [250, 250] Hz holds the bin at exactly 250 Hz (bin 9 of N = 36 at 1 kHz,
    where np.fft.rfftfreq gives 249.99999999999997; hypothesis found it)."""
    n = 36
    x = np.sin(2 * np.pi * 250.0 * np.arange(n) / FS)[None, :]
    np.testing.assert_allclose(spectrum.band_rms(x, FS, 250.0, 250.0), [np.sqrt(0.5)],
                               rtol=1e-12)
    np.testing.assert_allclose(ref.band_rms(x, FS, 250.0, 250.0), [np.sqrt(0.5)], rtol=1e-12)


@SETTINGS
@given(batches(), st.floats(0.0, 250.0), st.floats(0.0, 500.0))
def test_band_rms_matches_reference(x: np.ndarray, lo: float, width: float) -> None:
    hi = lo + width
    np.testing.assert_allclose(
        spectrum.band_rms(x, FS, lo, hi), ref.band_rms(x, FS, lo, hi), rtol=1e-8, atol=1e-9
    )


@SETTINGS
@given(batches(), st.floats(1.0, 100.0), st.floats(0.0, 500.0))
def test_velocity_rms_matches_reference(x: np.ndarray, lo: float, width: float) -> None:
    # Below Nyquist: integrating the (real) Nyquist bin makes it imaginary, which irfft drops.
    hi = min(lo + width, 0.49 * FS)
    np.testing.assert_allclose(
        spectrum.velocity_rms(x, FS, lo, hi), ref.velocity_rms(x, FS, lo, hi), rtol=1e-8, atol=1e-9
    )


@SETTINGS
@given(batches())
def test_parseval_full_band_rms_is_std(x: np.ndarray) -> None:
    np.testing.assert_allclose(
        spectrum.band_rms(x, FS, 0.0, FS), x.std(axis=1), rtol=1e-9, atol=1e-9
    )


@SETTINGS
@given(batches(), st.floats(-5.0, 5.0), st.integers(0, 300))
def test_linearity_and_shift_invariance(x: np.ndarray, a: float, shift: int) -> None:
    np.testing.assert_allclose(
        spectrum.amplitude_spectrum(a * x),
        abs(a) * spectrum.amplitude_spectrum(x),
        rtol=1e-9,
        atol=1e-9,
    )
    v = spectrum.velocity_rms(x, FS, 10.0, 400.0)
    np.testing.assert_allclose(
        spectrum.velocity_rms(a * x, FS, 10.0, 400.0), abs(a) * v, rtol=1e-9, atol=1e-9
    )
    # A circular shift changes only phases, so every band level stays the same.
    rolled = np.roll(x, shift, axis=1)
    np.testing.assert_allclose(
        spectrum.velocity_rms(rolled, FS, 10.0, 400.0), v, rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(
        spectrum.band_rms(rolled, FS, 100.0, 300.0),
        spectrum.band_rms(x, FS, 100.0, 300.0),
        rtol=1e-8,
        atol=1e-9,
    )


def test_sine_reads_its_amplitude_and_velocity() -> None:
    fs, n, f, a = 25600.0, 16384, 50.0, 0.3  # 50 Hz sits on bin 32
    x = a * np.sin(2 * np.pi * f * np.arange(n) / fs)[None, :]
    s = spectrum.amplitude_spectrum(x)[0]
    assert s[32] == pytest.approx(a, rel=1e-9)
    v = spectrum.velocity_rms(x, fs, 10.0, 1000.0)[0]
    assert v == pytest.approx(a * 9.80665e3 / (2 * np.pi * f) / math.sqrt(2), rel=1e-9)
    # Outside the ISO band a line contributes nothing.
    assert spectrum.velocity_rms(x, fs, 100.0, 1000.0)[0] == pytest.approx(0.0, abs=1e-9)


def test_wrappers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="float64"):
        spectrum.amplitude_spectrum(np.zeros((2, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        stats.moments(np.zeros(32))
    with pytest.raises(TypeError):
        stats.moments([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fs_hz"):
        spectrum.velocity_rms(np.zeros((1, 32)), -1.0)
    with pytest.raises(ValueError, match="fs_hz"):
        spectrum.band_rms(np.zeros((1, 32)), float("nan"), 0.0, 1.0)


# --- envelope -----------------------------------------------------------------------------


@SETTINGS
@given(batches(min_n=64, max_n=301))
def test_spectral_kurtosis_matches_reference(x: np.ndarray) -> None:
    lo, hi, _ = kurtogram_bands(FS, x.shape[1], (0.0, 1.0, 1.6, 2.0))
    np.testing.assert_allclose(
        env.spectral_kurtosis(x, lo, hi), ref.spectral_kurtosis(x, lo, hi), rtol=1e-7, atol=1e-7
    )


@SETTINGS
@given(batches(min_n=32, max_n=301), st.data())
def test_envelope_matches_hilbert(x: np.ndarray, data: st.DataObject) -> None:
    b, n = x.shape
    lo = np.array([data.draw(st.integers(1, n // 2 - 1)) for _ in range(b)])
    hi = np.array([data.draw(st.integers(int(k) + 1, n // 2)) for k in lo])
    np.testing.assert_allclose(
        env.envelope(x, lo, hi), ref.envelope(x, lo, hi), rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(
        env.envelope_spectrum(x, lo, hi),
        ref.amplitude_spectrum(ref.envelope(x, lo, hi)),
        rtol=1e-7,
        atol=1e-9,
    )


def test_spectral_kurtosis_gaussian_tone_and_impacts() -> None:
    fs, n = 12000.0, 16384
    lo, hi = np.array([1000]), np.array([3000])
    t = np.arange(n) / fs
    tone = np.sin(2 * np.pi * 2000.0 * t)
    impacts = np.zeros(n)
    impacts[::800] = 1.0
    impacts = np.convolve(impacts, np.exp(-np.arange(200) / 20.0) * np.sin(np.arange(200)))[:n]
    sk = env.spectral_kurtosis(np.vstack([noisy(1, n, 3)[0], tone, impacts]), lo, hi)[:, 0]
    assert abs(sk[0]) < 0.15  # gaussian: 0
    assert sk[1] == pytest.approx(-1.0, abs=0.05)  # pure tone: -1
    assert sk[2] > 5.0  # impulsive


def test_envelope_of_am_signal() -> None:
    fs, n = 12000.0, 12000
    t = np.arange(n) / fs
    x = (1.0 + 0.5 * np.cos(2 * np.pi * 100 * t)) * np.cos(2 * np.pi * 3000 * t)
    lo, hi = np.array([2500]), np.array([3500])  # 1 Hz bins
    e = env.envelope(x[None, :], lo, hi)[0]
    np.testing.assert_allclose(e, 1.0 + 0.5 * np.cos(2 * np.pi * 100 * t), atol=1e-9)
    es = env.envelope_spectrum(x[None, :], lo, hi)[0]
    assert es[100] == pytest.approx(0.5, rel=1e-6)


def test_candidate_bands_are_inside_the_spectrum() -> None:
    for n in (63, 64, 1000, 16384):
        lo, hi, _ = kurtogram_bands(12000.0, n)
        assert lo.size == hi.size
        assert np.all(lo >= 1) and np.all(hi <= n // 2) and np.all(hi - lo >= 4)


@SETTINGS
@given(st.integers(8, 70_000), st.floats(100.0, 100_000.0))
def test_kurtogram_tree_matches_reference(n: int, fs: float) -> None:
    levels = kurtogram_levels(n)
    top = int(levels[-1])
    assert levels == (0.0, *[v for k in range(1, top + 1) for v in (float(k), k + 0.6)])
    assert top == max(1, int(math.log2(n)) - 7)  # 6 levels (+ 6.6) for N = 8192
    lo, hi, lev = kurtogram_bands(fs, n)
    want = ref.kurtogram_bands(fs, n, top)
    assert list(zip(lev.tolist(), lo.tolist(), hi.tolist(), strict=True)) == want
    # Within a level the bands tile the spectrum in order, without overlap, and each is
    # within one bin of its nominal width (two at the ends, which give up DC and Nyquist).
    for v in set(lev.tolist()):
        sel = lev == v
        k = int(v)
        n_bands = 2**k if v == k else 3 * 2 ** (k - 1)
        assert np.all(lo[sel][1:] >= hi[sel][:-1])
        np.testing.assert_allclose(hi[sel] - lo[sel], n / 2 / n_bands, atol=2.01)


@SETTINGS
@given(batches(min_n=64, max_n=301), st.floats(0.1, 20.0), st.data())
def test_spectral_kurtosis_is_scale_invariant_and_masked(
    x: np.ndarray, a: float, data: st.DataObject
) -> None:
    from ballpass.stream.dsp.envelope import _sk_bands
    from ballpass.stream.dsp.spectrum import _rfft_rows

    lo, hi, _ = kurtogram_bands(FS, x.shape[1])
    sk = env.spectral_kurtosis(x, lo, hi)
    np.testing.assert_allclose(env.spectral_kurtosis(a * x, lo, hi), sk, rtol=1e-6, atol=1e-6)
    # SK of a complex envelope is >= -1 (Cauchy-Schwarz: E|c|^4 >= (E|c|^2)^2).
    assert np.all(sk >= -1.0 - 1e-9)
    use = np.array(
        data.draw(arrays(np.bool_, (x.shape[0], lo.size), elements=st.booleans())), dtype=bool
    )
    got = _sk_bands(_rfft_rows(x), lo, hi, use)
    np.testing.assert_array_equal(got[use], sk[use])
    assert np.all(got[~use] == 0.0)


@SETTINGS
@given(st.integers(1, 200_000))
def test_fast_len_is_the_smallest_smooth_length(m: int) -> None:
    from ballpass.stream.dsp.envelope import _fast_len

    assert _fast_len(m) == ref.smooth_length(m)


def test_extract_picks_the_reference_kurtogram_band() -> None:
    # Impacts ringing at 3 kHz (12 kHz, CWRU-like) and at 9 kHz (51.2 kHz), in noise: the
    # pipeline's band is the slow reference's argmax over the same admissible bands.
    from ballpass.models.catalog import lookup
    from ballpass.stream import thresholds as th
    from ballpass.stream.features import extract

    orders = lookup("SKF 6205").orders()
    rng = np.random.default_rng(7)
    for fs, n, f0, shaft in ((12000.0, 8192, 3000.0, 29.95), (51200.0, 16384, 9000.0, 12.0)):
        t = np.arange(n) / fs
        x = 0.2 * rng.standard_normal((3, n))
        for row in x:
            for t0 in np.arange(rng.uniform(0, 0.01), n / fs, 1 / (orders.bpfo * shaft)):
                d = t[t >= t0] - t0
                row[t >= t0] += np.exp(-d / 0.0005) * np.sin(2 * np.pi * f0 * d)
        b = extract(x, fs, np.full(3, shaft), orders)
        need = np.full(3, th.ENV_BANDWIDTH_FACTOR * (3 * orders.bpfi + 1) * shaft)
        lo_hz, hi_hz, sk = ref.select_band(
            x, fs, th.ENV_BAND_MIN_LO_HZ, need, int(kurtogram_levels(n)[-1])
        )
        np.testing.assert_allclose(b.env_lo_hz, lo_hz)
        np.testing.assert_allclose(b.env_hi_hz, hi_hz)
        np.testing.assert_allclose(b.env_sk, sk, rtol=1e-7)
        assert np.all((b.env_lo_hz <= f0) & (f0 <= b.env_hi_hz)) and np.all(sk > 1.0)


# --- line search ----------------------------------------------------------------------------


@SETTINGS
@given(
    st.integers(1, 4),
    st.integers(8, 400),
    st.integers(1, 3),
    st.integers(1, 3),
    st.floats(0.0, 0.1),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
def test_line_search_matches_reference(b, m, nl, nh, tol, nb, seed) -> None:
    rng = np.random.default_rng(seed)
    spec = np.abs(rng.standard_normal((b, m)))
    df = 0.7
    targets = rng.uniform(0.0, m * df * 1.1, size=(b, nl, nh))
    got = lines.line_search(spec, df, targets, tol, nb)
    want = ref.line_search(spec, df, targets, tol, nb)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_line_search_finds_a_line_and_its_snr() -> None:
    spec = np.full((1, 200), 0.01)
    spec[0, 100] = 1.0
    f, a, s = lines.line_search(spec, 1.0, np.array([[[101.5]]]), 0.02, 10)
    assert (f[0, 0, 0], a[0, 0, 0]) == (100.0, 1.0)
    assert s[0, 0, 0] == pytest.approx(40.0)
    # A stronger line just outside the tolerance is not taken for the target's line.
    f, a, s = lines.line_search(spec, 1.0, np.array([[[104.0]]]), 0.02, 10)
    assert a[0, 0, 0] == pytest.approx(0.01) and s[0, 0, 0] == pytest.approx(0.0)


def test_line_search_rejects_bad_input() -> None:
    spec = np.ones((2, 50))
    with pytest.raises(ValueError, match="targets_hz"):
        lines.line_search(spec, 1.0, np.ones((1, 1, 1)), 0.02, 5)
    with pytest.raises(ValueError, match="targets_hz"):
        lines.line_search(spec, 1.0, np.full((2, 1, 1), np.nan), 0.02, 5)
    with pytest.raises(ValueError, match="tol"):
        lines.line_search(spec, 1.0, np.ones((2, 1, 1)), 1.5, 5)


# --- impact intervals ------------------------------------------------------------------

HIT = [(0.95, 1.05), (1.9, 2.1)]
FLANK = [(0.75, 0.9), (1.1, 1.25), (1.5, 1.8), (2.2, 2.5)]


@SETTINGS
@given(
    st.integers(1, 4), st.integers(16, 3001), st.integers(0, 2**32 - 1),
    st.floats(0.5, 8.0), st.integers(1, 40), st.integers(1, 8),
)
def test_impact_counts_match_reference(b, n, seed, k_mad, gap, max_lags) -> None:
    rng = np.random.default_rng(seed)
    # Rayleigh-like envelopes with sparse spikes (impacts), odd and even lengths.
    e = np.abs(rng.standard_normal((b, n)) + 1j * rng.standard_normal((b, n)))
    spikes = rng.random((b, n)) < 0.02
    e[spikes] += rng.uniform(2.0, 30.0, spikes.sum())
    periods = rng.uniform(3.0, 200.0, (b, 3))
    gaps = np.full(b, gap)
    counts, n_imp = impacts.impact_interval_counts(e, periods, k_mad, gaps, np.array(HIT),
                                                   np.array(FLANK), max_lags)
    for i in range(b):
        want, want_n = ref.impact_counts(e[i], periods[i], k_mad, gap, HIT, FLANK, max_lags,
                                          impacts._MEDIAN_SAMPLES)
        np.testing.assert_array_equal(counts[i], want)
        assert n_imp[i] == want_n


def test_impacts_at_a_period_hit_and_random_impacts_do_not() -> None:
    rng = np.random.default_rng(3)
    n, period = 20000, 97.0
    # A smooth background no maximum of which reaches median + 5 MAD, plus 199 impacts.
    background = 0.1 + 0.01 * np.sin(2 * np.pi * np.arange(n) / 50.0)
    periodic = background.copy()
    periodic[(np.arange(1, 200) * period).astype(int)] = 10.0
    random = background.copy()
    random[rng.choice(n, 199, replace=False)] = 10.0
    counts, n_imp = impacts.impact_interval_counts(
        np.stack([periodic, random]), np.full((2, 1), period), 5.0, np.full(2, 20),
        np.array(HIT), np.array(FLANK), 5)
    assert n_imp[0] == 199
    # Periodic: every lag of 1 and 2 periods is a hit (198 + 197), none in the flanks.
    assert counts[0, 0].tolist() == [395.0, 0.0]
    # Random (Poisson-like): hits at the flanks' rate, about 0.3 / 0.9 of the flank count.
    hits, flank = counts[1, 0]
    assert flank > 20 and hits < flank * 0.3 / 0.9 * 2.5


def test_impact_counts_reject_bad_input() -> None:
    good = dict(env=np.ones((1, 64)), periods=np.ones((1, 3)) * 10, k_mad=5.0,
                gaps=np.ones(1), hit=np.array(HIT), flank=np.array(FLANK), max_lags=5)
    for key, bad in (("periods", np.zeros((1, 3))), ("gaps", np.zeros(1)),
                     ("periods", np.ones((2, 3))), ("env", np.ones(64))):
        with pytest.raises(ValueError, match=key if key != "env" else "env"):
            impacts.impact_interval_counts(**{**good, key: bad})


@SETTINGS
@given(batches(min_n=2, max_n=301))
def test_hann_spectrum_from_the_dft_matches_reference(x: np.ndarray) -> None:
    # The periodic Hann window as three lines in frequency: no second FFT (features.extract).
    got = spectrum._amplitude_from_dft(spectrum._rfft_rows(x), x.shape[1])
    np.testing.assert_allclose(got, ref.amplitude_spectrum(x), rtol=1e-9, atol=1e-12)
