"""Ball faults and exclusive attribution on the simulator, across bearings, rates and speeds.

The rules of `stream/diagnosis.py` were written from bearing kinematics; these tests check
them on simulated machines (`ballpass.simulators.signals.synthesize`) that none of them
was tuned on: SKF 6205, 6203 and 6206 bearings and one whose BPFI and 2xBSF coincide,
12, 25.6 and 51.2 kHz, shafts 10-50 Hz.
The window is the shortest power of two that resolves the cage line (about 1.5 Hz bins).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ballpass.models.bearing import BearingGeometry
from ballpass.models.catalog import lookup
from ballpass.simulators.signals import synthesize
from ballpass.stream.diagnosis import diagnose
from ballpass.stream.features import extract

RATES = ((12000.0, 8192), (25600.0, 16384), (51200.0, 32768))
SHAFTS = (10.0, 25.0, 50.0)
BEARING_FAULTS = {"outer_race", "inner_race", "ball", "cage"}
# 8 balls of 5/16 in on a 39 mm pitch: BPFI 4.81x and 2xBSF 4.71x, 2 % apart. (The
# catalog's SKF 6206 had this geometry until its entry was found wrong; the figures below
# were measured on it.)
COINCIDING = BearingGeometry(8, 7.94, 39.04, 0.0, name="coinciding BPFI and 2xBSF")


def diagnoses(bearing: str | BearingGeometry, condition: str, reps: int = 2, seed: int = 0,
              **extra) -> Counter:
    """Diagnosis counts of `reps` windows per (rate, shaft) of one simulated condition."""
    orders = (lookup(bearing) if isinstance(bearing, str) else bearing).orders()
    rng = np.random.default_rng(seed)
    out: Counter[str] = Counter()
    for fs, n in RATES:
        for shaft in SHAFTS:
            x = np.stack(
                [synthesize(condition, orders, shaft, fs, n, rng=rng, **extra) for _ in range(reps)]
            )
            batch = extract(x, fs, np.full(reps, shaft), orders)
            out.update(diagnose(batch, i).diagnosis for i in range(reps))
    return out


@pytest.mark.parametrize("bearing", ["SKF 6205", "SKF 6203", "SKF 6206"])
def test_ball_is_ball_where_its_lines_stand_apart(bearing: str) -> None:
    # On these bearings 2xBSF is at least 14 % from BPFO and BPFI.
    # A simulated ball's defect leaves the contact track for whole cage turns (its spin
    # axis wanders, as on the CWRU rig), so some windows hold too few strikes to name it:
    # measured 44-94 % "ball" over seeds 1-8 (was >= 90 % with a ball always in contact),
    # the rest "normal" or "unknown_anomaly", never a race fault.
    got = diagnoses(bearing, "ball", seed=1)
    assert got["ball"] >= 0.4 * got.total(), got
    assert set(got) <= {"ball", "normal", "unknown_anomaly"}, got


def test_coinciding_inner_race_and_ball_are_not_swapped() -> None:
    # COINCIDING: BPFI 4.81x and 2xBSF 4.71x lie 2 % apart, inside the slip tolerance, so
    # their harmonics read the same peaks. Only the lines one family has and the other
    # lacks (±1x sidebands and the 1x line vs ±FTF sidebands, odd BSF lines and the FTF
    # line) may decide; without them the window is an unknown anomaly, never the other
    # defect. Measured on these 27 + 27 windows: inner 16 right, 11 undecided; ball 14
    # right, 13 undecided; no swap (the fundamental-only rule swapped 35 of 270). Since
    # the simulated ball's contact is intermittent (spin-axis walk), ball 7 right, 15
    # undecided, 5 normal (5-9 of 27 over seeds 3-10), still no swap.
    inner = diagnoses(COINCIDING, "inner_race", reps=3, seed=2)
    ball = diagnoses(COINCIDING, "ball", reps=3, seed=3)
    assert inner["ball"] <= 1 and ball["inner_race"] <= 1, (inner, ball)
    assert inner["inner_race"] >= 0.5 * inner.total(), inner
    assert ball["ball"] >= 0.15 * ball.total(), ball
    assert set(inner) <= {"inner_race", "ball", "unknown_anomaly"}, inner
    assert set(ball) <= {"inner_race", "ball", "unknown_anomaly", "normal"}, ball


def test_undecided_pattern_says_why() -> None:
    orders = COINCIDING.orders()
    rng = np.random.default_rng(4)
    fs, n, shaft = 25600.0, 16384, 10.0
    x = np.stack([synthesize("inner_race", orders, shaft, fs, n, rng=rng) for _ in range(6)])
    batch = extract(x, fs, np.full(6, shaft), orders)
    undecided = [
        d for d in (diagnose(batch, i) for i in range(6)) if d.diagnosis == "unknown_anomaly"
    ]
    assert undecided, "expected at least one window whose BPFI and 2xBSF lines coincide"
    for d in undecided:
        assert "cannot be told apart" in d.reason and d.evidence, d.reason
        assert {e.line for e in d.evidence} >= {"BPFI", "2xBSF"}


@pytest.mark.parametrize("bearing", ["SKF 6205", "SKF 6203", "SKF 6206", COINCIDING])
def test_healthy_machines_show_no_bearing_fault(bearing: str | BearingGeometry) -> None:
    got = diagnoses(bearing, "normal", reps=2, seed=5)
    assert got == Counter({"normal": got.total()}), got


def test_worn_gear_is_not_an_outer_race_fault_on_a_6203() -> None:
    # A worn gear mesh puts ±1..3x sidebands around the mesh, so the envelope holds the
    # shaft harmonics; a 6203's BPFO (3.05x) sits on 3x. Without the shaft-modulation rule
    # 19 of 45 healthy windows were called outer_race here.
    healthy = diagnoses("SKF 6203", "normal", reps=3, seed=6, gear_teeth=23, gear_wear=1.0)
    assert not healthy.keys() & BEARING_FAULTS, healthy
    # A real outer-race fault on the same machine is still found by its off-shaft lines.
    faulty = diagnoses("SKF 6203", "outer_race", reps=1, seed=7, gear_teeth=23, gear_wear=1.0)
    assert faulty["outer_race"] >= 0.9 * faulty.total(), faulty
