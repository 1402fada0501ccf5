"""Diagnosis on synthetic signals made here: healthy, outer race, inner race, ball, and
the guard rails (sensor faults, short windows, shaft-rate faults)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ballpass.models.catalog import lookup
from ballpass.stream import thresholds as th
from ballpass.stream.diagnosis import DIAGNOSES, Diagnosis, diagnose
from ballpass.stream.features import extract

ORDERS = lookup("SKF 6205").orders()

# --- Synthetic vibration, made here ------------------------------------------------------
# A local defect strikes once per pass of a rolling element; each strike rings a structural
# resonance that decays in about a millisecond (McFadden & Smith 1984; Randall & Antoni 2011,
# fig. 3). Strike times jitter by a fraction of a percent because the elements slip.

FS = 25600.0
N = 16384
SHAFT = 25.0


def healthy(
    rng: np.random.Generator,
    n: int = N,
    fs: float = FS,
    shaft: float = SHAFT,
    x1_g: float = 0.02,
    noise_g: float = 0.05,
) -> np.ndarray:
    """1× shaft sinusoid (random phase) plus white gaussian noise, in g."""
    t = np.arange(n) / fs
    return x1_g * np.sin(2 * np.pi * shaft * t + rng.uniform(0, 2 * np.pi)) + noise_g * (
        rng.standard_normal(n)
    )


def impacts(
    rng: np.random.Generator,
    rate_hz: float,
    amp_g: float,
    n: int = N,
    fs: float = FS,
    resonance_hz: float = 3500.0,
    decay_s: float = 0.0008,
    modulation: tuple[float, float] | None = None,
    jitter: float = 0.005,
) -> np.ndarray:
    """A train of decaying resonances at `rate_hz` (g).

    `modulation` = (frequency Hz, depth): strike amplitudes follow
    1 + depth·cos(2π f t), e.g. an inner-race defect carried through the load zone
    once per shaft turn.
    """
    x = np.zeros(n)
    period = 1.0 / rate_hz
    ring_n = int(8 * decay_s * fs)
    tr = np.arange(ring_n) / fs
    ring = np.exp(-tr / decay_s) * np.sin(2 * np.pi * resonance_hz * tr)
    t = rng.uniform(0, period)
    while t < n / fs:
        a = amp_g
        if modulation is not None:
            a *= 1.0 + modulation[1] * np.cos(2 * np.pi * modulation[0] * t)
        k = round(t * fs)
        m = min(ring_n, n - k)
        x[k : k + m] += a * ring[:m]
        t += period * (1.0 + jitter * rng.standard_normal())
    return x


def run(x: np.ndarray, fs: float = FS, shaft: float = SHAFT, **kw) -> list[Diagnosis]:
    x = np.atleast_2d(x)
    batch = extract(x, fs, np.full(x.shape[0], shaft), ORDERS)
    return [diagnose(batch, i, **kw) for i in range(x.shape[0])]


def check(d: Diagnosis) -> None:
    assert d.diagnosis in DIAGNOSES
    assert 0.0 <= d.confidence <= 1.0
    assert d.reason


def test_healthy_machines_are_normal() -> None:
    # False alarms are costly: every window of many healthy machines must be normal,
    # at several speeds and noise levels.
    rng = np.random.default_rng(20816)
    rows, shafts = [], []
    for shaft in (10.0, 25.0, 29.95, 50.0):
        for noise in (0.01, 0.05, 0.3):
            for _ in range(3):
                rows.append(healthy(rng, shaft=shaft, noise_g=noise))
                shafts.append(shaft)
    x = np.array(rows)
    batch = extract(x, FS, np.array(shafts), ORDERS)
    got = [diagnose(batch, i) for i in range(len(rows))]
    for d in got:
        check(d)
    assert [d.diagnosis for d in got] == ["normal"] * len(rows), [d.reason for d in got]
    assert all(d.iso_zone in ("A", "B") for d in got)


def test_outer_race_impacts_are_outer_race() -> None:
    rng = np.random.default_rng(1)
    bpfo = ORDERS.bpfo * SHAFT
    x = np.array([healthy(rng) + impacts(rng, bpfo, 0.5) for _ in range(3)])
    for d in run(x):
        check(d)
        assert d.diagnosis == "outer_race", d.reason
        assert d.confidence > 0.5
        assert any(e.line == "BPFO" and e.harmonic == 1 for e in d.evidence)
        bp = next(e for e in d.evidence if e.line == "BPFO" and e.harmonic == 1)
        assert bp.freq_hz == pytest.approx(bpfo, rel=th.SPEED_TOLERANCE)
        assert bp.snr_db >= th.LINE_SNR_DB


def test_inner_race_with_shaft_modulation_is_inner_race() -> None:
    rng = np.random.default_rng(2)
    bpfi = ORDERS.bpfi * SHAFT
    x = np.array(
        [healthy(rng) + impacts(rng, bpfi, 0.5, modulation=(SHAFT, 0.9)) for _ in range(3)]
    )
    for d in run(x):
        check(d)
        assert d.diagnosis == "inner_race", d.reason
        lines = {e.line for e in d.evidence}
        assert "BPFI" in lines and lines & {"BPFI-1x", "BPFI+1x"}


def test_ball_with_cage_modulation_is_ball() -> None:
    rng = np.random.default_rng(3)
    bsf2 = 2 * ORDERS.bsf * SHAFT
    x = np.array(
        [
            healthy(rng) + impacts(rng, bsf2, 0.5, modulation=(ORDERS.ftf * SHAFT, 0.9))
            for _ in range(3)
        ]
    )
    for d in run(x):
        check(d)
        assert d.diagnosis == "ball", d.reason


def test_faults_are_found_at_another_rate_and_speed() -> None:
    # CWRU-like acquisition: 12 kHz, 8192 samples, 1797 r/min, resonance near 3 kHz.
    rng = np.random.default_rng(4)
    fs, n, shaft = 12000.0, 8192, 1797 / 60
    bpfo = ORDERS.bpfo * shaft
    x = healthy(rng, n, fs, shaft) + impacts(rng, bpfo, 0.4, n, fs, resonance_hz=3000.0)
    (d,) = run(x, fs, shaft)
    assert d.diagnosis == "outer_race", d.reason


def test_sensor_faults() -> None:
    rng = np.random.default_rng(5)
    flat = np.full(N, 0.7)
    nan = healthy(rng)
    nan[100] = np.nan
    clipped = np.clip(healthy(rng, noise_g=1.0), -1.5, 1.5)
    absurd = healthy(rng)
    absurd[10] = 5000.0
    got = run(np.array([flat, nan, clipped, absurd, healthy(rng)]))
    for d in got:
        check(d)
    assert [d.diagnosis for d in got] == ["sensor_fault"] * 4 + ["normal"]
    assert "flat" in got[0].reason and "non-finite" in got[1].reason
    assert "saturated" in got[2].reason and "peak" in got[3].reason


def test_too_short_window_is_insufficient_data() -> None:
    rng = np.random.default_rng(6)
    # 1024 samples at 25.6 kHz: 25 Hz bins for a 25 Hz shaft, one revolution.
    (d,) = run(healthy(rng, n=1024))
    check(d)
    assert d.diagnosis == "insufficient_data"
    assert "revolutions" in d.reason


def test_imbalance_and_misalignment_need_a_high_zone() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(N) / FS
    one_x = 0.4 * np.sin(2 * np.pi * SHAFT * t)  # about 17.6 mm/s at 25 Hz: zone D
    two_x = 0.4 * np.sin(2 * np.pi * 2 * SHAFT * t + 0.3)
    noise = 0.02 * rng.standard_normal(N)
    got = run(np.array([one_x + noise, 0.5 * one_x + two_x + noise, 0.02 * one_x + noise]))
    assert [d.diagnosis for d in got] == ["imbalance", "misalignment", "normal"]
    assert got[0].iso_zone == "D" and got[2].iso_zone == "A"
    # The same 1× level on a large machine on a flexible foundation is still high.
    (big,) = run(one_x + noise, iso_group=1, iso_foundation="flexible")
    assert big.iso_zone == "D"


def test_misalignment_reads_the_2x_to_1x_ratio_in_velocity() -> None:
    """Before: the g lines were compared, so a 2x of 30 % of 1x in mm/s (60 % in g: the
    same velocity at twice the frequency is twice the acceleration) was misalignment."""
    rng = np.random.default_rng(8)
    t = np.arange(N) / FS
    one_x = 0.4 * np.sin(2 * np.pi * SHAFT * t)
    noise = 0.02 * rng.standard_normal(N)
    ratios = (0.3, 0.7)  # 2x/1x in velocity
    got = run(np.array([one_x + 2 * r * 0.4 * np.sin(4 * np.pi * SHAFT * t) + noise
                        for r in ratios]))
    assert [d.diagnosis for d in got] == ["imbalance", "misalignment"], [d.reason for d in got]
    assert "2x/1x = 0.70 in velocity" in got[1].reason


def test_loud_broadband_noise_is_not_a_shaft_fault() -> None:
    # 1 g of white noise puts the velocity in zone D, but no 1× or 2× line stands out.
    rng = np.random.default_rng(10)
    got = run(rng.standard_normal((4, N)))
    assert all(d.iso_zone in ("C", "D") for d in got)
    assert not {d.diagnosis for d in got} & {"imbalance", "misalignment"}, [d.reason for d in got]


def test_lubrication_is_broadband_high_frequency_without_impacts() -> None:
    rng = np.random.default_rng(8)
    hf = np.fft.irfft(np.fft.rfft(rng.standard_normal(N)) * (np.fft.rfftfreq(N, 1 / FS) > 7000))
    x = healthy(rng) + 2.0 * hf / hf.std()
    (d,) = run(x)
    assert d.diagnosis == "lubrication", d.reason


def test_diagnose_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(9)
    batch = extract(np.atleast_2d(healthy(rng)), FS, np.array([SHAFT]), ORDERS)
    with pytest.raises(IndexError):
        diagnose(batch, 3)
    with pytest.raises(ValueError, match="group"):
        diagnose(batch, 0, iso_group=3)
    with pytest.raises(ValueError, match="foundation"):
        diagnose(batch, 0, iso_foundation="jelly")


def test_false_alarm_rate_on_gaussian_noise() -> None:
    # 400 windows of white noise: measured rate is about 3e-4 per window, so more than
    # 2 non-normal windows here would mean the line rules lost their statistical margin.
    rng = np.random.default_rng(11)
    x = 0.05 * rng.standard_normal((400, 8192))
    batch = extract(x, 12000.0, np.full(400, 1797 / 60), ORDERS)
    got = [diagnose(batch, i).diagnosis for i in range(400)]
    assert sum(d != "normal" for d in got) <= 2, Counter(got)


def test_bad_input_is_never_a_bearing_fault() -> None:
    from ballpass.models.bearing import DefectOrders

    # Each bad input gives sensor_fault or insufficient_data with a reason, never an exception.
    rng = np.random.default_rng(12)
    inf = healthy(rng)
    inf[5] = np.inf
    clipped = np.clip(healthy(rng, noise_g=0.5) + impacts(rng, ORDERS.bpfo * SHAFT, 2.0), -0.6, 0.6)
    got = run(np.array([inf, np.zeros(N), clipped]))
    assert [d.diagnosis for d in got] == ["sensor_fault"] * 3, [d.reason for d in got]
    # Too short for the lowest lines: 4096 samples at 25.6 kHz is 6.25 Hz per bin, and a
    # 25 Hz shaft has its FTF at 10 Hz (1.6 bins).
    (short,) = run(healthy(rng, n=4096) + impacts(rng, ORDERS.bpfo * SHAFT, 0.5, n=4096))
    assert short.diagnosis == "insufficient_data", short.reason
    # A bearing with a very slow cage (FTF 0.1 order) at the same window: the cage rule.
    slow_cage = DefectOrders(ORDERS.bpfo, ORDERS.bpfi, ORDERS.bsf, 0.1)
    x = np.atleast_2d(healthy(rng, n=16384))
    batch = extract(x, FS, np.array([SHAFT]), slow_cage)
    d = diagnose(batch, 0)
    assert d.diagnosis == "insufficient_data" and "cage" in d.reason, d.reason
    # Sample rate too low for the lines: 2 kHz leaves no demodulation band above 500 Hz
    # twice as wide as the third BPFI harmonic of a 25 Hz shaft.
    fs = 2000.0
    x = healthy(rng, n=4096, fs=fs) + impacts(rng, ORDERS.bpfo * SHAFT, 0.5, n=4096, fs=fs,
                                                resonance_hz=700.0)
    (slow,) = run(x, fs=fs)
    assert slow.diagnosis == "insufficient_data" and "sample rate" in slow.reason, slow.reason


def test_nonsensical_geometry_is_refused() -> None:
    from ballpass.models.bearing import BearingGeometry, DefectOrders

    with pytest.raises(ValueError, match="pitch_diameter"):
        BearingGeometry(9, 10.0, 5.0)
    with pytest.raises(ValueError, match="n_elements"):
        BearingGeometry(1, 1.0, 5.0)
    with pytest.raises(ValueError, match="orders"):
        extract(np.ones((1, N)), FS, np.array([SHAFT]), DefectOrders(-1.0, 5.0, 2.0, 0.4))
