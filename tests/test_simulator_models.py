"""Machine-level extras (looseness, gear mesh), sensor faults, the thermal housing, and the
simulated driver following a trajectory in compressed simulated time."""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
import pytest

from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers import SensorFault
from ballpass.models.catalog import lookup
from ballpass.simulators import driver as driver_mod
from ballpass.simulators import sensor_faults
from ballpass.simulators.conditions import HEALTHY_TEMP_C, THERMAL_TAU_S
from ballpass.simulators.driver import SimulatedDriver
from ballpass.simulators.signals import synthesize
from ballpass.simulators.thermal import Housing, target_c

ORDERS = lookup("SKF 6205").orders()
FS = 25600.0
N = 25600
SHAFT = 25.0  # integer-Hz lines fall on 1 Hz bins of a 1 s window
H = 3600.0


def line_g(x: np.ndarray, hz: float) -> float:
    """Peak amplitude (g) of the line at `hz` (Hann window, 1 Hz bins)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) / (x.size / 4)
    k = round(hz * x.size / FS)
    return float(spec[k - 1:k + 2].max())


def make(**kwargs: Any) -> np.ndarray:
    return synthesize("normal", ORDERS, SHAFT, FS, N, rng=np.random.default_rng(3), **kwargs)


def test_looseness_adds_harmonics_and_half_orders() -> None:
    base, loose = make(), make(looseness=1.0)
    for h in (3, 5, 7, 9):
        assert line_g(loose, h * SHAFT) > 5 * line_g(base, h * SHAFT), h
    assert line_g(loose, 2.5 * SHAFT) > 5 * line_g(base, 2.5 * SHAFT)
    # The velocity of each harmonic follows the model: 2 mm/s / sqrt(h) at severity 1.
    v_mm_s = line_g(loose, 4 * SHAFT) / math.sqrt(2) * 9.80665 / (2 * math.pi * 4 * SHAFT) * 1e3
    assert v_mm_s == pytest.approx(2.0 / math.sqrt(4), rel=0.1)


def test_gear_mesh_with_sidebands_that_grow_with_wear() -> None:
    teeth = 23
    mesh = teeth * SHAFT
    healthy, worn = make(gear_teeth=teeth), make(gear_teeth=teeth, gear_wear=1.0)
    assert line_g(healthy, mesh) == pytest.approx(0.08 * math.sqrt(2), rel=0.05)
    assert line_g(healthy, 2 * mesh) > 10 * line_g(make(), 2 * mesh)
    for j in (1, 2):
        ratio_h = line_g(healthy, mesh + j * SHAFT) / line_g(healthy, mesh)
        ratio_w = line_g(worn, mesh + j * SHAFT) / line_g(worn, mesh)
        assert ratio_w > 3 * ratio_h
    assert line_g(make(), mesh) < 0.2 * line_g(healthy, mesh)  # no gear, no mesh


def test_gear_lines_above_nyquist_are_left_out() -> None:
    x = synthesize("normal", ORDERS, SHAFT, 2000.0, 2000, rng=np.random.default_rng(1),
                   gear_teeth=30)  # mesh 750 Hz; 2nd and 3rd harmonics above 1 kHz
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("kwargs, named", [
    ({"looseness": -1.0}, "looseness"), ({"gear_teeth": 3}, "gear_teeth"),
    ({"gear_wear": math.nan}, "gear_wear"), ({"load": 2.0}, "load"),
    ({"hf_extra": -0.1}, "hf_extra"),
])
def test_bad_extras_name_the_item(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        make(**kwargs)


def test_hf_extra_raises_the_high_frequency_floor() -> None:
    x, y = make(), make(hf_extra=1.0)
    band = lambda s: float(np.sqrt(np.mean(np.abs(np.fft.rfft(s))[7000:11000] ** 2)))  # noqa: E731
    assert band(y) > 3 * band(x)


def test_sensor_faults() -> None:
    rng = np.random.default_rng(0)
    x = make()
    sat, clipped = sensor_faults.apply("saturation", x, rng)
    assert clipped and sat.max() < 0.5 * x.max() and np.mean(sat == sat.max()) > 0.001
    flat, clipped = sensor_faults.apply("flatline", x, rng)
    assert not clipped and np.ptp(flat) == 0.0
    spikes, _ = sensor_faults.apply("spikes", x, rng)
    assert np.abs(spikes).max() >= 20.0 and np.sum(np.abs(spikes - x) > 1.0) <= 8
    drop, _ = sensor_faults.apply("dropouts", x, rng)
    zeros = np.mean(drop == 0.0)
    assert 0.004 < zeros < 0.1
    assert np.array_equal(x, make())  # input untouched
    with pytest.raises(ValueError, match="sensor fault"):
        sensor_faults.apply("disconnect", x, rng)


def test_housing_follows_a_first_order_lag() -> None:
    h = Housing(40.0, tau_s=100.0)
    assert h.step(100.0, 50.0) == pytest.approx(50.0 - 10.0 * math.exp(-1.0))
    # Independent of how often it is read.
    a, b = Housing(40.0, 100.0), Housing(40.0, 100.0)
    a.step(300.0, 50.0)
    for _ in range(30):
        b.step(10.0, 50.0)
    assert a.temp_c == pytest.approx(b.temp_c)
    assert target_c("normal", 0.0, 1.0) == HEALTHY_TEMP_C
    assert target_c("normal", 0.0, 0.4) < HEALTHY_TEMP_C
    assert target_c("lubrication", 1.0, 1.0) > target_c("outer_race", 1.0, 1.0) > HEALTHY_TEMP_C


def asset() -> AssetConfig:
    return AssetConfig(id="pump3", kind="pump", bearing=lookup("SKF 6205"), shaft_hz=29.95)


def sensor(kind: str = "acceleration", **options: Any) -> SensorConfig:
    fs = 1.0 if kind == "temperature" else FS
    n = 16 if kind == "temperature" else 8192
    return SensorConfig(id="pump3-de", driver="simulated", asset="pump3", fs_hz=fs,
                        window_samples=n, interval_s=20.0, kind=kind, options=options)


class FakeClock:
    """Replaces the driver's wall clock so simulated hours pass in no time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ns = 1_800_000_000 * 10**9
        monkeypatch.setattr(driver_mod, "time", types.SimpleNamespace(time_ns=lambda: self.ns))

    def advance_h(self, hours: float, time_scale: float = 1.0) -> None:
        self.ns += int(hours * H / time_scale * 1e9)


TRAJ = {"condition": "outer_race", "onset_h": 10, "incipient_h": 10, "developed_h": 10,
        "severe_h": 10, "max_severity": 3.0}


def test_driver_follows_the_trajectory_in_compressed_time(monkeypatch) -> None:
    clock = FakeClock(monkeypatch)
    drv = SimulatedDriver(sensor(trajectory=TRAJ, time_scale=3600.0, t_start_ns=clock.ns,
                                 seed=1), asset())
    drv.open()
    rms, stages = [], []
    for hour in (0, 15, 25, 38):
        clock.ns = drv._t_start_ns + int(hour * H / 3600.0 * 1e9)  # 1 wall s = 1 h
        stages.append(drv.state_at(drv.sim_time_s(clock.ns))[0])
        rms.append(float(np.sqrt(np.mean(drv.read(8192).samples ** 2))))
    assert stages == ["healthy", "incipient", "developed", "severe"]
    assert rms == sorted(rms) and rms[-1] > 5 * rms[0]


def test_temperature_lags_the_fault_with_the_thermal_time_constant(monkeypatch) -> None:
    clock = FakeClock(monkeypatch)
    traj = {**TRAJ, "condition": "lubrication", "onset_h": 0.001, "incipient_h": 0.001,
            "developed_h": 0.001, "severe_h": 0.001, "max_severity": 1.0}
    drv = SimulatedDriver(sensor("temperature", trajectory=traj, t_start_ns=clock.ns,
                                 tau_s=THERMAL_TAU_S), asset())
    drv.open()
    first = float(drv.read(16).samples.mean())
    assert first == pytest.approx(HEALTHY_TEMP_C, abs=0.2)
    clock.advance_h(THERMAL_TAU_S / H)  # one time constant later: 63 % of the step
    one_tau = float(drv.read(16).samples.mean())
    clock.advance_h(5 * THERMAL_TAU_S / H)
    settled = float(drv.read(16).samples.mean())
    step = target_c("lubrication", 1.0, 1.0) - HEALTHY_TEMP_C
    assert settled == pytest.approx(HEALTHY_TEMP_C + step, abs=0.2)
    assert (one_tau - HEALTHY_TEMP_C) / step == pytest.approx(1 - math.exp(-1), abs=0.03)


def test_batch_profile_changes_speed_and_temperature(monkeypatch) -> None:
    clock = FakeClock(monkeypatch)
    drv = SimulatedDriver(sensor(profile="batch", cycle_h=1.0, t_start_ns=clock.ns,
                                 speed_jitter=0.0), asset())
    drv.open()
    speeds = set()
    for _ in range(12):
        speeds.add(round(drv.read(1024).shaft_hz, 3))
        clock.advance_h(0.1)
    assert {round(29.95 * f, 3) for f in (0.6, 1.0, 0.8)} == speeds


def test_scheduled_sensor_faults_and_disconnection(monkeypatch) -> None:
    clock = FakeClock(monkeypatch)
    drv = SimulatedDriver(sensor(t_start_ns=clock.ns, sensor_fault=[
        {"kind": "disconnect", "start_h": 1, "end_h": 2},
        {"kind": "saturation", "start_h": 3}]), asset())
    drv.open()
    assert not drv.read(1024).clipped
    clock.advance_h(1.5)
    with pytest.raises(SensorFault, match="disconnection"):
        drv.read(1024)
    clock.advance_h(1.0)
    assert not drv.read(1024).clipped  # reconnected
    clock.advance_h(1.0)
    assert drv.read(1024).clipped  # saturating from 3 h on
    flat = SimulatedDriver(sensor(sensor_fault="flatline"), asset())
    flat.open()
    assert np.ptp(flat.read(1024).samples) == 0.0


def test_random_trajectory_option_is_deterministic_for_a_seed() -> None:
    a = SimulatedDriver(sensor(trajectory="random", horizon_h=100, seed=9), asset())
    b = SimulatedDriver(sensor(trajectory="random", horizon_h=100, seed=9), asset())
    assert a.trajectory == b.trajectory and a.trajectory is not None
    assert a.fault == a.trajectory.condition


@pytest.mark.parametrize("options, named", [
    ({"trajectory": {**TRAJ, "onset": 3}}, "options.trajectory.onset: unknown key"),
    ({"trajectory": {**TRAJ, "condition": "rust"}}, "options.trajectory.condition"),
    ({"trajectory": {**TRAJ, "incipient_h": -1}}, "incipient_s"),
    ({"trajectory": TRAJ, "fault": "ball"}, "either fault/severity or a trajectory"),
    ({"time_scale": 0}, "options.time_scale"),
    ({"profile": "wild"}, "options.profile"),
    ({"sensor_fault": "smoke"}, "options.sensor_fault.kind: unknown sensor fault 'smoke'"),
    ({"sensor_fault": [{"kind": "spikes", "start_h": 5, "end_h": 2}]},
     "options.sensor_fault[0]: need 0 <= start_h < end_h"),
    ({"gear_teeth": 500}, "options.gear_teeth: gear mesh"),
    ({"looseness": -1}, "options.looseness"),
    ({"horizon_h": 5}, "options.horizon_h"),
])
def test_bad_driver_options_name_the_key(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("(", r"\(")):
        SimulatedDriver(sensor(**options), asset())


def test_the_sample_config_block_in_the_driver_docs_builds_a_driver() -> None:
    import tomllib

    from ballpass.config import parse

    doc = driver_mod.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\n\n", 1)[0]
    sample = "\n".join(line[4:] for line in block.splitlines())
    asset_block = ('[[asset]]\nid = "pump3"\nkind = "gearbox"\nbearing = "SKF 6205"\n'
                   'shaft_hz = 29.95\n[[gateway]]\nid = "gw1"\n')
    config = parse(tomllib.loads('[site]\nid = "s"\n' + asset_block + sample))
    (gateway,) = config.gateways
    (s,) = gateway.sensors
    drv = SimulatedDriver(s, config.asset("pump3"))
    assert drv.fault == "outer_race" and drv.gear_teeth == 23 and drv.time_scale == 2016
    # The commented trajectory table, uncommented, replaces fault/severity.
    traj = "\n".join(line.replace("# ", "", 1) for line in sample.splitlines()
                     if line.startswith(("# [gateway", "# condition", "# onset_h",
                                         "# incipient_h", "# developed_h", "# severe_h",
                                         "# max_severity")))
    plain = "\n".join(line for line in sample.splitlines()
                      if not line.startswith(("fault", "severity")))
    config = parse(tomllib.loads('[site]\nid = "s"\n' + asset_block + plain + "\n" + traj))
    drv = SimulatedDriver(config.gateways[0].sensors[0], config.asset("pump3"))
    assert drv.trajectory is not None and drv.trajectory.onset_s == 24 * H


@pytest.mark.parametrize("shaft_hz", [1.5, 5.0, 25.0])
def test_the_true_velocity_is_the_one_the_stream_reads_at_any_speed(shaft_hz: float) -> None:
    """Before: the ground truth (zone crossings) measured 10-1000 Hz whatever the speed, so
    a 1.5 Hz shaft's imbalance read 0.18 mm/s there and 5.3 mm/s (zone D) in the stream."""
    from ballpass.models.catalog import lookup
    from ballpass.simulators.degradation import velocity_curve
    from ballpass.simulators.signals import synthesize
    from ballpass.stream.features import extract

    orders = lookup("SKF 6205").orders()
    n = 2 ** int(np.ceil(np.log2(25600 * 30 / shaft_hz)))  # 30 revolutions or more
    truth = velocity_curve("imbalance", orders, shaft_hz, 25600.0, n, np.array([1.0]),
                           windows=1)[0]
    x = synthesize("imbalance", orders, shaft_hz, 25600.0, n, severity=1.0,
                   rng=np.random.default_rng(0))
    read = extract(x[None, :], 25600.0, np.array([shaft_hz]), orders).row(0)
    assert truth == pytest.approx(read["velocity_rms_mm_s"], rel=0.05)
