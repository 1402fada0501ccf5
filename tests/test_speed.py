"""Shaft speed: precedence of the sources and the estimate from the spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ballpass.models.catalog import lookup
from ballpass.models.speed import TACHO_MAX_AGE_S, choose_shaft_hz, estimate_shaft_hz
from ballpass.simulators.signals import synthesize
from ballpass.stream.dsp.spectrum import amplitude_spectrum


def test_precedence_window_then_tacho_then_config() -> None:
    assert choose_shaft_hz(30.0, (20.0, 100.0), 25.0, 100.0) == (30.0, "window")
    assert choose_shaft_hz(math.nan, (20.0, 100.0), 25.0, 101.0) == (20.0, "tacho")
    # A stale tachometer reading no longer describes the window.
    stale = choose_shaft_hz(math.nan, (20.0, 0.0), 25.0, TACHO_MAX_AGE_S + 1.0)
    assert stale == (25.0, "config")
    hz, source = choose_shaft_hz(None, None, None, 0.0)
    assert math.isnan(hz) and source == ""


@pytest.mark.parametrize(
    ("bearing", "fs", "n", "shaft"),
    [
        ("SKF 6205", 25600.0, 16384, 24.7),
        ("SKF 6205", 12000.0, 8192, 49.0),
        ("SKF 6203", 51200.0, 65536, 24.7),
        ("SKF 6203", 25600.0, 16384, 140.0),
    ],
)
def test_estimate_on_simulated_machines(bearing: str, fs: float, n: int, shaft: float) -> None:
    # Healthy and imbalanced machines at several rates, speeds and bearings: the estimate
    # lands within the defect-line tolerance (2 %), and says it is reliable.
    rng = np.random.default_rng(int(shaft * 10))
    orders = lookup(bearing).orders()
    for condition in ("normal", "imbalance"):
        x = synthesize(condition, orders, shaft, fs, n, rng=rng)
        est = estimate_shaft_hz(amplitude_spectrum(x[None, :]), fs / n, (5.0, 200.0))
        assert est.reliable, est.reason
        assert est.shaft_hz == pytest.approx(shaft, rel=0.005), est.reason
        assert 0.0 < est.confidence <= 1.0


def test_no_shaft_lines_is_unreliable_with_a_reason() -> None:
    rng = np.random.default_rng(3)
    est = estimate_shaft_hz(amplitude_spectrum(rng.standard_normal((1, 8192))), 12000 / 8192)
    assert not est.reliable and math.isnan(est.shaft_hz)
    assert "unreliable" in est.reason or "no line" in est.reason


def test_bad_spectra_never_raise() -> None:
    for amp, df in ((np.full(100, np.nan), 1.0), (np.zeros(4), 1.0), (np.ones(1000), -1.0)):
        est = estimate_shaft_hz(amp, df)
        assert not est.reliable and est.reason
