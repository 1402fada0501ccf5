"""Run-to-failure trajectories and operating profiles (pure functions of time)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ballpass.simulators.degradation import (
    DEVELOPED_START,
    FAULT_CONDITIONS,
    INCIPIENT_START,
    STAGES,
    OperatingProfile,
    Trajectory,
    random_profile,
    random_trajectory,
    wear_floor,
)

H = 3600.0


def test_stages_and_severity_along_a_trajectory() -> None:
    t = Trajectory("outer_race", onset_s=10 * H, incipient_s=20 * H, developed_s=30 * H,
                   severe_s=40 * H, max_severity=3.0)
    assert t.stage_starts_s == {"healthy": 0.0, "incipient": 10 * H, "developed": 30 * H,
                                "severe": 60 * H, "failure": 100 * H}
    assert t.failure_s == 100 * H
    assert t.at(-5.0) == ("healthy", 0.0)
    assert t.at(9.99 * H) == ("healthy", 0.0)
    assert t.at(10 * H) == ("incipient", pytest.approx(INCIPIENT_START))
    assert t.at(30 * H) == ("developed", pytest.approx(DEVELOPED_START))
    assert t.at(60 * H) == ("severe", pytest.approx(1.0))
    assert t.at(100 * H).severity == pytest.approx(3.0)
    assert t.at(1000 * H) == ("severe", pytest.approx(3.0))  # stays failed
    stage, severity = t.at(45 * H)  # unpacks as (stage, severity)
    assert stage == "developed" and DEVELOPED_START < severity < 1.0
    d = t.to_dict()
    assert d["condition"] == "outer_race" and d["stage_starts_s"]["severe"] == 60 * H


@given(st.integers(0, 2**32 - 1), st.floats(1.0, 1e4))
def test_random_trajectories_grow_monotonically_through_every_stage(seed: int,
                                                                    horizon_h: float) -> None:
    t = random_trajectory(seed, horizon_h * H)
    assert t == random_trajectory(seed, horizon_h * H)  # deterministic
    assert t.condition in FAULT_CONDITIONS
    assert 0.1 * horizon_h * H <= t.onset_s <= 0.5 * horizon_h * H
    assert 0.8 * horizon_h * H <= t.failure_s <= 1.2 * horizon_h * H
    times = np.linspace(0, 1.2 * t.failure_s, 400)
    sev = t.severity(times)
    assert np.all(np.diff(sev) >= -1e-12)
    assert [s for s in STAGES if any(t.at(x).stage == s for x in times)] == list(STAGES)


def test_random_trajectory_condition_can_be_fixed_and_seeds_differ() -> None:
    assert random_trajectory(3, 100 * H, condition="ball").condition == "ball"
    assert len({random_trajectory(s, 100 * H) for s in range(20)}) == 20


@pytest.mark.parametrize("kwargs, named", [
    ({"condition": "normal"}, "condition"),
    ({"condition": "rust"}, "condition"),
    ({"onset_s": -1.0}, "onset_s"),
    ({"incipient_s": 0.0}, "incipient_s"),
    ({"severe_s": math.inf}, "severe_s"),
    ({"max_severity": 0.5}, "max_severity"),
])
def test_bad_trajectory_names_the_field(kwargs: dict, named: str) -> None:
    args = {"condition": "inner_race", "onset_s": 0.0, "incipient_s": 1.0, "developed_s": 1.0,
            "severe_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match=named):
        Trajectory(**args)


def test_wear_floor_only_for_severe_bearing_damage() -> None:
    assert wear_floor("outer_race", 0.9) == 0.0
    assert wear_floor("outer_race", 2.0) > 0.0
    assert wear_floor("imbalance", 3.0) == 0.0


def test_batch_profile_cycles_through_its_phases() -> None:
    p = OperatingProfile("batch", cycle_s=100.0)
    phases = [p.at(t)[0] for t in np.arange(0.0, 200.0, 1.0)]
    assert set(phases) == {"charge", "react", "discharge"}
    assert p.at(10.0) == p.at(110.0)  # periodic
    assert p.at(50.0) == ("react", 1.0, 1.0)
    assert p.max_speed == 1.0
    assert OperatingProfile().at(123.0) == ("steady", 1.0, 1.0)
    r = random_profile(4)
    assert r == random_profile(4) and 3 * H <= r.cycle_s <= 6 * H
    with pytest.raises(ValueError, match="profile"):
        OperatingProfile("chaotic")
