"""Late bearing damage raises the ISO velocity; the true zone C/D crossing times the
simulator exports are where the simulated velocity, measured as the stream measures it,
actually crosses the boundaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ballpass.config import load
from ballpass.models import iso20816
from ballpass.models.catalog import lookup
from ballpass.simulators import degradation as deg
from ballpass.simulators import fleet
from ballpass.simulators.signals import synthesize
from ballpass.stream.dsp.spectrum import velocity_rms

ORDERS = lookup("SKF 6205").orders()
FS, N, SHAFT = 12000.0, 4096, 25.0
_, ZONE_C, ZONE_D = iso20816.boundaries(2, "rigid")


def measured(condition: str, severity: float, seed: int, windows: int = 9) -> float:
    """Median velocity (mm/s) the stream's DSP reads on simulated windows, with the wear
    the simulated driver adds."""
    rng = np.random.default_rng(seed)
    x = np.stack([synthesize(condition, ORDERS, SHAFT, FS, N, severity=severity, rng=rng,
                             hf_extra=deg.wear_floor(condition, severity),
                             wear_mm_s=deg.wear_velocity(condition, severity))
                  for _ in range(windows)])
    return float(np.median(velocity_rms(x, FS)))


def test_wear_velocity_starts_with_the_developed_stage_and_only_for_bearings() -> None:
    assert deg.wear_velocity("outer_race", deg.DEVELOPED_START) == 0.0
    assert deg.wear_velocity("inner_race", 1.0) > 0.0
    assert deg.wear_velocity("lubrication", 2.0) > deg.wear_velocity("lubrication", 1.0)
    assert deg.wear_velocity("imbalance", 3.0) == 0.0
    # An incipient bearing fault leaves the velocity where a healthy machine has it.
    assert measured("ball", 0.3, 1) == pytest.approx(measured("normal", 0.0, 1), rel=0.1)


@pytest.mark.parametrize("condition", ["outer_race", "inner_race", "ball", "lubrication"])
def test_run_to_failure_crosses_zone_c_then_d_before_failure(condition: str) -> None:
    traj = deg.random_trajectory(3, 30 * 86400.0, condition=condition)
    cross = deg.zone_crossings_s(traj, ORDERS, SHAFT, FS, N, {"C": ZONE_C, "D": ZONE_D})
    c, d = cross["C"], cross["D"]
    starts = traj.stage_starts_s
    assert c is not None and d is not None
    assert starts["developed"] < c < d < starts["failure"]
    # Measured with the stream's DSP on fresh windows (other random draws than the
    # curve's): below each boundary shortly before its crossing, above it shortly after.
    margin = 0.04 * traj.severe_s
    for t, boundary in ((c, ZONE_C), (d, ZONE_D)):
        before = traj.at(t - margin).severity
        after = traj.at(t + margin).severity
        assert measured(condition, before, 7) < boundary < measured(condition, after, 7)


def test_shaft_faults_and_a_short_life_cross_or_not_as_the_velocity_says() -> None:
    imb = deg.Trajectory("imbalance", 0.0, 10 * 86400.0, 10 * 86400.0, 5 * 86400.0, 2.0)
    cross = deg.zone_crossings_s(imb, ORDERS, SHAFT, FS, N, {"C": ZONE_C, "D": ZONE_D})
    # Imbalance adds 4.5 mm/s of 1x per unit severity: zone D inside the developed stage.
    assert cross["D"] is not None
    assert imb.stage_starts_s["developed"] < cross["D"] < imb.stage_starts_s["severe"]
    # A large machine on a flexible foundation (zone D at 11 mm/s) is never reached by a
    # bearing that fails at severity 2.
    brg = deg.Trajectory("outer_race", 0.0, 86400.0, 86400.0, 86400.0, 2.0)
    big = deg.zone_crossings_s(brg, ORDERS, SHAFT, FS, N,
                               {"D": iso20816.boundaries(1, "flexible")[2]})
    assert big["D"] is None
    assert brg.time_of(brg.at(2.5 * 86400.0).severity) == pytest.approx(2.5 * 86400.0)


def test_ground_truth_exports_the_crossing_times(tmp_path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(fleet.site_toml(2), encoding="utf-8")
    config = load(site)
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        '[scenario]\nname = "t"\nseed = 1\ntime_scale = 3600\nhorizon_h = 30\n'
        '[[fault]]\nasset = "r01-motor"\ncondition = "inner_race"\nonset_h = 1\n'
        'incipient_h = 8\ndeveloped_h = 8\nsevere_h = 8\nmax_severity = 2.5\n'
        '[[fault]]\nasset = "r02-pump"\ncondition = "ball"\nseverity = 1.0\n',
        encoding="utf-8")
    sc = fleet.load_scenario(scenario)
    applied, faults = fleet.apply(config, sc, t_start_ns=10**18)
    truth = json.loads(json.dumps(fleet.truth(applied, sc, faults, 10**18, sc.time_scale)))
    traj, const = truth["faults"]
    assert "iso_zone_crossings_s" not in const  # a constant fault has no crossing
    cross = traj["iso_zone_crossings_s"]
    starts = traj["trajectory"]["stage_starts_s"]
    assert starts["developed"] < cross["C"] < cross["D"] < starts["failure"]
    ns = traj["iso_zone_crossings_ns"]
    assert ns["D"] == pytest.approx(10**18 + cross["D"] / 3600 * 1e9, abs=1e3)
