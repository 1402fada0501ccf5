"""Saturation by short clips: on a quiet machine an impact's crest can pass the rail for one
or two samples only, and every such crest is held at the same level.

Before: in a quiet window (noise below the rails' tolerance) only excursions that `_kinked`
found flat between two kinks counted, and it judges none shorter than three samples, so a
sensor clipping at every impact counted nothing on its rails and read as a healthy machine.
The rule for one- or two-sample excursions (`stats._capped`) must still leave the smooth
peaks of clean periodic signals uncounted: those touch the tolerance with one or two samples
at every cycle, at low oversampling or when the sampling grid is commensurate with the period.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_dsp as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from ballpass.models.catalog import lookup
from ballpass.stream import thresholds as th
from ballpass.stream.diagnosis import diagnose
from ballpass.stream.dsp import stats
from ballpass.stream.features import extract

N = 8192
RAIL_G = 0.5


def _impact(per_cycle: float, width: int, zeta: float, contact: float) -> np.ndarray:
    """A resonance (`per_cycle` samples a cycle, damping `zeta`) struck by a Hann force pulse
    `contact` samples long, sampled with its largest crest on a sample (width 1) or midway
    between two (width 2): from a 16-times finer grid, so the crest's shape is the physics'
    and not the sampling's."""
    up = 16
    k = np.arange(int(12 * per_cycle * up)) / up
    ring = np.exp(-zeta * 2 * np.pi * k / per_cycle) * np.sin(2 * np.pi * k / per_cycle)
    fine = np.convolve(ring, np.hanning(int(contact * up) + 2)[1:-1])[: k.size]
    crest = int(np.argmax(fine))
    p = fine[(crest - (0 if width == 1 else up // 2)) % up :: up][:300]
    return p / np.abs(p).max()


def _quiet_machine_with_clipped_impacts(fs: float, resonance_hz: float, widths: list[int],
                                        zeta: float, contact: float, seed: int) -> np.ndarray:
    """A quiet machine (a 0.01 g line and 1e-5 g of sensor noise) struck once per
    `len(widths)`-th of the window, each impact scaled (between a quarter and three quarters
    of its possible range) so that exactly `widths[i]` of its samples pass the +-0.5 g rails,
    which clip them."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / fs
    x = 0.01 * np.sin(2 * np.pi * 159.2 * t + 0.4) + 1e-5 * rng.standard_normal(N)
    for start, width in zip(np.linspace(100, N - 400, len(widths)).astype(int), widths,
                            strict=True):
        p = _impact(fs / resonance_hz, width, zeta, contact)
        under = x[start : start + p.size]
        # Per sample, the gain at which it reaches a rail: `width` samples pass between the
        # width-th smallest and the next.
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.sort(np.where(p > 0, (RAIL_G - under) / p,
                                    np.where(p < 0, (-RAIL_G - under) / p, np.inf)))
        x[start : start + p.size] += (gain[width - 1] + (gain[width] - gain[width - 1])
                                      * rng.uniform(0.25, 0.75)) * p
    return np.clip(x, -RAIL_G, RAIL_G)


def _rail_runs(x: np.ndarray) -> np.ndarray:
    on = np.abs(x) >= RAIL_G
    edges = np.diff(np.concatenate([[0], on.astype(int), [0]]))
    return np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]


def _short_runs_judged(row: np.ndarray) -> int:
    """How many excursions of one or two samples the quiet-window rule judges in `row`
    (0 if the window is not quiet), by the arithmetic of `stats._moments`."""
    n = row.size
    stride = max(1, n // th.SPIKE_SAMPLES)
    idx = np.arange(stride, n, stride)
    tol = th.SENSOR_PLATEAU_TOL * 1.4826 * float(np.median(np.abs(row[idx] - row[idx - 1])))
    j = idx[idx >= 4]
    d4 = np.abs(row[j - 4] - 4 * row[j - 3] + 6 * row[j - 2] - 4 * row[j - 1] + row[j])
    if not np.median(d4) < tol * math.sqrt(70) / 1.4826:
        return 0
    depth = tol + th.SENSOR_PLATEAU_SPREAD * 1.4826 * float(np.median(d4)) / math.sqrt(70)
    near = (row >= row.max() - depth) | (row <= row.min() + depth)
    edges = np.diff(np.concatenate([[0], near.astype(int), [0]]))
    return int(np.sum(np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0] <= 2))


IMPACTS = [  # (fs, resonance, damping, contact in samples): 25-43 samples a cycle
    (25600.0, 1000.0, 0.05, 3.0),
    (25600.0, 600.0, 0.1, 5.0),
    (12800.0, 500.0, 0.05, 3.0),
    (51200.0, 1600.0, 0.1, 5.0),
]


@pytest.mark.parametrize("widths", [[1] * 20, [2] * 20, [1, 2] * 10],
                         ids=["one sample", "two samples", "one or two"])
@pytest.mark.parametrize(("fs", "resonance_hz", "zeta", "contact"), IMPACTS)
def test_impacts_clipped_for_one_or_two_samples_count_on_the_rails(
        fs: float, resonance_hz: float, zeta: float, contact: float, widths: list[int]) -> None:
    x = np.stack([_quiet_machine_with_clipped_impacts(fs, resonance_hz, widths, zeta, contact,
                                                      seed) for seed in (0, 1)])
    for row in x:
        assert sorted(set(_rail_runs(row))) == sorted(set(widths))  # only short clips
        assert _short_runs_judged(row) >= len(widths)  # quiet: the short-run rule decides
    on_rails = np.sum(np.abs(x) >= RAIL_G, axis=1)
    got = np.rint(stats.moments(x)[:, 5] * N)
    assert np.all(got >= on_rails) and np.all(got <= on_rails + 2), (got, on_rails)
    assert np.all(got >= th.SENSOR_PLATEAU_SAMPLES)
    np.testing.assert_array_equal(got, np.rint(ref.moments(x)[:, 5] * N))


def test_a_sensor_clipping_each_impact_for_a_sample_or_two_is_a_sensor_fault() -> None:
    """Before: `normal`, or a machine diagnosis from the clipped impacts."""
    fs = 25600.0
    x = _quiet_machine_with_clipped_impacts(fs, 1000.0, [1, 2] * 10, 0.05, 3.0, 0)[None, :]
    got = diagnose(extract(x, fs, np.array([22.0]), lookup("SKF 6205").orders()), 0)
    assert got.diagnosis == "sensor_fault" and "saturated" in got.reason, got.reason


def _smooth_periodic() -> tuple[np.ndarray, list[str]]:
    """Clean periodic signals whose peaks reach the rails' tolerance with one or two samples
    at every cycle: sines, asymmetric (2nd harmonic) and flattened (3rd, 5th harmonic) peaks,
    at 9 to 160 samples a cycle, periods commensurate with the rule's strided samples (16,
    32, 64: the window's sigma then reads one phase of the fourth differences) and not, at
    several phases, without noise, with 1e-6 and 1e-4 of it, or quantised by a 16-bit ADC."""
    rng = np.random.default_rng(21)
    t = np.arange(N)
    shapes = {
        "sine": lambda th_: np.sin(th_),
        "2nd harmonic 0.3": lambda th_: np.sin(th_) + 0.3 * np.sin(2 * th_ + 1.0),
        "2nd harmonic flattening": lambda th_: np.sin(th_) + 0.2 * np.cos(2 * th_),
        "3rd harmonic 1/27": lambda th_: np.sin(th_) + np.sin(3 * th_) / 27,
        "5th harmonic 1/25": lambda th_: np.sin(th_) - np.sin(5 * th_) / 25,
    }
    rows, names = [], []
    for per_cycle in (9.3, 12.7, 16.0, 23.9, 32.0, 47.1, 64.0, 80.4, 160.8):
        for phase in (0.0, 1.26, 2.51, 4.4):
            th_ = 2 * np.pi * t / per_cycle + phase
            for name, shape in shapes.items():
                x = shape(th_)
                lsb = 8.0 * np.abs(x).max() / 65536
                for noise, label in ((0.0, "clean"), (1e-6, "1e-6"), (1e-4, "1e-4"),
                                     (None, "16-bit")):
                    rows.append(np.round(x / lsb) * lsb if noise is None
                                else x + noise * rng.standard_normal(N))
                    names.append(f"{name}, {per_cycle} a cycle, phase {phase}, {label}")
    return np.array(rows), names


def test_smooth_peaks_touching_the_tolerance_with_one_or_two_samples_are_not_rails() -> None:
    """In quiet windows, where the rule decides. (A window whose own fourth differences
    reach the tolerance, e.g. a harmonic at under 8 samples a cycle, is not quiet: there
    every sample in the band counts, which this rule does not touch.)"""
    x, names = _smooth_periodic()
    judged = np.array([_short_runs_judged(row) for row in x])
    quiet = judged > 0
    assert np.sum(judged >= 16) > 400  # rows whose peaks are put to the short-run rule
    got = np.rint(stats.moments(x[quiet])[:, 5] * N)
    assert got.max() == 0, [(np.array(names)[quiet][i], got[i]) for i in np.nonzero(got)[0]]
    np.testing.assert_array_equal(got, np.rint(ref.moments(x[quiet])[:, 5] * N))


def test_a_tones_top_never_reads_as_capped() -> None:
    """The rule's premise: the summed fourth differences at a tone's one or two top samples
    are never positive towards the inside of the rail, at any frequency or phase."""
    k = np.arange(-3, 4)
    for w in np.linspace(0.01, 0.99 * np.pi, 400):
        for phase in np.linspace(-0.5, 0.5, 41) * w:  # the top sample within half a step
            x = np.cos(w * k + phase)
            d4 = x[:-4] - 4 * x[1:-3] + 6 * x[2:-2] - 4 * x[3:-1] + x[4:]  # centred on -1..1
            assert d4[1] >= -1e-12
            second = 0 if x[2] > x[4] else 2  # the higher neighbour of the top sample
            assert d4[1] + d4[second] >= -1e-12


@settings(max_examples=40, deadline=None)
@given(st.floats(9.0, 200.0), st.floats(0.0, 2 * np.pi), st.sampled_from([0.0, 1e-6, 1e-4]),
       st.lists(st.tuples(st.integers(0, N - 2), st.integers(1, 2)), max_size=30),
       st.integers(0, 2**31))
def test_moments_of_quiet_windows_with_short_clips_match_reference(
        per_cycle: float, phase: float, noise: float, clips: list[tuple[int, int]],
        seed: int) -> None:
    """Kernel and reference agree where the short-run rule decides: quiet sines with one or
    two samples held at a rail here and there (on a crest, a flank, the window's ends)."""
    t = np.arange(N)
    x = np.sin(2 * np.pi * t / per_cycle + phase)
    x += noise * np.random.default_rng(seed).standard_normal(N)
    rail = float(np.abs(x).max())
    for at, width in clips:
        x[at : at + width] = math.copysign(rail, x[at])
    np.testing.assert_array_equal(stats.moments(x[None, :])[:, 5],
                                  ref.moments(x[None, :])[:, 5])
