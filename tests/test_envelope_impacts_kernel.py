"""`_envelope_spectrum_impacts`, the fused kernel `features.extract` calls, against the slow
references (tests/reference_dsp.py): its envelope spectrum, impact-interval counts and
impact numbers, row by row, for odd and even window lengths."""

from __future__ import annotations

import numpy as np
import pytest
import reference_dsp as ref
from hypothesis import given
from hypothesis import strategies as st
from test_dsp_kernels import FLANK, HIT, SETTINGS, batches  # tests/ is on sys.path

from ballpass.stream import thresholds as th
from ballpass.stream.dsp import envelope as env
from ballpass.stream.dsp import impacts
from ballpass.stream.dsp.envelope import _envelope_spectrum_impacts
from ballpass.stream.dsp.spectrum import _rfft_rows


def _check_against_reference(x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                             periods: np.ndarray, k_mad: float, gaps: np.ndarray,
                             hit: list[tuple[float, float]], flank: list[tuple[float, float]],
                             max_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the kernel as `features.extract` does and compare each row; its counts and
    impact numbers for further checks."""
    b, n = x.shape
    spec, counts, n_imp = _envelope_spectrum_impacts(
        _rfft_rows(x), n, lo.astype(np.int64), hi.astype(np.int64), periods, k_mad,
        gaps.astype(np.int64), np.array(hit, dtype=np.float64),
        np.array(flank, dtype=np.float64), max_lags)
    assert spec.shape == (b, n // 2 + 1) and counts.shape == (b, periods.shape[1], 2)
    assert n_imp.shape == (b,)
    ref_env = ref.envelope(x, lo, hi)
    # The impacts are read from the kernel's own envelope (the unfused `env.envelope`,
    # equal to the reference within round-off): a maximum within 1e-15 of its neighbour or
    # of the threshold could otherwise go either way between two correct envelopes.
    fast_env = env.envelope(x, lo, hi)
    np.testing.assert_allclose(fast_env, ref_env, rtol=1e-8, atol=1e-9)
    ref_spec = ref.amplitude_spectrum(ref_env)
    for i in range(b):
        np.testing.assert_allclose(spec[i], ref_spec[i], rtol=1e-7, atol=1e-9,
                                   err_msg=f"row {i}")
        want, want_n = ref.impact_counts(fast_env[i], periods[i], k_mad, int(gaps[i]), hit,
                                         flank, max_lags, impacts._MEDIAN_SAMPLES)
        np.testing.assert_array_equal(counts[i], want, err_msg=f"row {i}")
        assert n_imp[i] == want_n, (i, n_imp[i], want_n)
    return counts, n_imp


@pytest.mark.parametrize("parity", [0, 1], ids=["even", "odd"])
@SETTINGS
@given(batches(min_n=33, max_n=301), st.data())
def test_fused_kernel_matches_references(parity: int, x: np.ndarray,
                                         data: st.DataObject) -> None:
    if x.shape[1] % 2 != parity:
        x = x[:, :-1]
    b, n = x.shape
    # One band per row, as extract picks them: anywhere in 1 .. N//2.
    lo = np.array([data.draw(st.integers(1, n // 2 - 1)) for _ in range(b)])
    hi = np.array([data.draw(st.integers(int(k) + 1, n // 2)) for k in lo])
    n_lines = data.draw(st.integers(1, 3))
    periods = np.array([[data.draw(st.floats(2.0, n / 2)) for _ in range(n_lines)]
                        for _ in range(b)])
    gaps = np.array([data.draw(st.integers(1, 20)) for _ in range(b)])
    k_mad = data.draw(st.floats(0.5, 8.0))
    max_lags = data.draw(st.integers(1, 8))
    _check_against_reference(x, lo, hi, periods, k_mad, gaps, HIT, FLANK, max_lags)


@pytest.mark.parametrize("n", [4096, 4095])
def test_fused_kernel_on_impacts_at_the_product_settings(n: int) -> None:
    """Rows with real impacts (a ringing resonance struck every `period` samples, plus
    noise) at `features.extract`'s thresholds: the counts compared are not all zero."""
    rng = np.random.default_rng(n)
    fs, f_res = 12000.0, 3000.0
    k = np.arange(60)
    ring = np.exp(-2 * np.pi * 0.05 * f_res * k / fs) * np.sin(2 * np.pi * f_res * k / fs)
    strikes = (97.3, 151.0, 211.7)  # samples
    rows = []
    for period in strikes:
        x = 0.05 * rng.standard_normal(n)
        for start in np.arange(period / 2, n - k.size, period).astype(int):
            x[start : start + k.size] += ring
        rows.append(x)
    rows.append(0.05 * rng.standard_normal(n))  # noise only
    x = np.array(rows)
    b = x.shape[0]
    lo = np.full(b, int(2000.0 / fs * n))  # a band around the resonance
    hi = np.full(b, int(4000.0 / fs * n))
    # Row i's own strike period first; the noise row gets them in order.
    periods = np.array([strikes[i:] + strikes[:i] for i in range(3)] + [strikes])
    gaps = np.maximum(1, (th.IMPACT_GAP_FRACTION * periods.min(axis=1)).astype(np.int64))
    counts, n_imp = _check_against_reference(
        x, lo, hi, periods, th.IMPACT_K_MAD, gaps, list(th.IMPACT_HIT),
        list(th.IMPACT_FLANK), th.IMPACT_MAX_LAGS)
    for i, period in enumerate(strikes):
        assert n_imp[i] >= 0.9 * (n / period - 1), (i, n_imp[i])
        assert counts[i, 0, 0] > 0, counts[i]  # its own period is hit
