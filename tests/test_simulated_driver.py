"""The simulated driver: the Driver contract, its options, determinism, and that it keeps
the gateway process light."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import zlib
from typing import Any

import numpy as np
import pytest
import scipy.stats as st

from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers import Capture, Driver, SensorFault, load
from ballpass.models.catalog import lookup
from ballpass.simulators.driver import SimulatedDriver

BEARING = lookup("SKF 6205")


def asset(shaft_hz: float | None = 29.95) -> AssetConfig:
    return AssetConfig(id="pump3", kind="pump", bearing=BEARING, shaft_hz=shaft_hz)


def sensor(sensor_id: str = "pump3-de", kind: str = "acceleration", fs_hz: float = 25600.0,
           **options: Any) -> SensorConfig:
    return SensorConfig(id=sensor_id, driver="simulated", asset="pump3", fs_hz=fs_hz,
                        window_samples=8192, interval_s=10.0, kind=kind, options=options)


def burst(drv: SimulatedDriver, n: int = 8192) -> Capture:
    drv.open()
    try:
        return drv.read(n)
    finally:
        drv.close()


def test_registered_entry_point_is_this_class() -> None:
    assert load("simulated") is SimulatedDriver


def test_driver_contract_open_read_close() -> None:
    drv = SimulatedDriver(sensor(), asset())
    assert isinstance(drv, Driver)
    drv.open()
    drv.open()  # harmless
    before = time.time_ns()
    cap = drv.read(4096)
    after = time.time_ns()
    assert isinstance(cap, Capture)
    assert cap.samples.shape == (1, 4096) and cap.samples.dtype == np.float64
    assert before <= cap.t0_ns <= after
    assert abs(cap.t0_ns - time.time_ns()) < 1_000_000_000
    assert cap.shaft_hz == pytest.approx(29.95, rel=0.02)
    assert not cap.clipped
    assert np.all(np.isfinite(cap.samples))
    drv.close()
    drv.close()  # safe twice
    with pytest.raises(SensorFault, match="not open"):
        drv.read(16)


def test_read_returns_immediately_and_bursts_differ() -> None:
    drv = SimulatedDriver(sensor(fault="outer_race"), asset())
    drv.open()
    t = time.perf_counter()
    a, b = drv.read(25600), drv.read(25600)
    # Far below the 1 s the burst represents: no pacing inside the driver.
    assert time.perf_counter() - t < 0.5
    assert not np.array_equal(a.samples, b.samples)
    assert b.t0_ns >= a.t0_ns
    drv.close()


def test_read_rejects_a_bad_sample_count() -> None:
    drv = SimulatedDriver(sensor(), asset())
    drv.open()
    with pytest.raises(ValueError, match="n_samples"):
        drv.read(0)
    drv.close()


def test_same_seed_same_bursts_and_default_seed_from_sensor_id() -> None:
    a = burst(SimulatedDriver(sensor(fault="inner_race", seed=11), asset()))
    b = burst(SimulatedDriver(sensor(fault="inner_race", seed=11), asset()))
    assert np.array_equal(a.samples, b.samples)
    assert a.shaft_hz == b.shaft_hz

    default = SimulatedDriver(sensor("pump3-de"), asset())
    assert default.seed == zlib.crc32(b"pump3-de")  # stable across runs, unlike hash()
    other = SimulatedDriver(sensor("pump3-nde"), asset())
    assert not np.array_equal(burst(default).samples, burst(other).samples)


def test_fault_and_severity_options_shape_the_signal() -> None:
    healthy = burst(SimulatedDriver(sensor(seed=1), asset()), 25600).samples[0]
    faulty = burst(SimulatedDriver(sensor(fault="outer_race", severity=1.0, seed=1),
                                   asset()), 25600).samples[0]
    assert 0.04 < healthy.std() < 0.12
    assert abs(st.kurtosis(healthy, fisher=False) - 3.0) < 0.5
    assert faulty.std() > 4 * healthy.std()
    assert st.kurtosis(faulty, fisher=False) > 4.5
    quiet = burst(SimulatedDriver(sensor(seed=1, noise_g=0.0), asset()), 25600).samples[0]
    assert quiet.std() < healthy.std()


def test_shaft_speed_options() -> None:
    own = burst(SimulatedDriver(sensor(shaft_hz=50.0, speed_jitter=0.0), asset(None)))
    assert own.shaft_hz == 50.0
    hidden = burst(SimulatedDriver(sensor(report_shaft_hz=False), asset()))
    assert math.isnan(hidden.shaft_hz)
    drv = SimulatedDriver(sensor(speed_jitter=0.01), asset(30.0))
    drv.open()
    speeds = np.array([drv.read(64).shaft_hz for _ in range(200)])
    drv.close()
    assert abs(speeds.mean() - 30.0) < 0.1 and 0.2 < speeds.std() < 0.4


def test_range_option_clips_and_flags() -> None:
    free = burst(SimulatedDriver(sensor(fault="outer_race", severity=3.0, seed=2), asset()))
    assert not free.clipped
    full_scale = 0.5 * float(np.abs(free.samples).max())
    cap = burst(SimulatedDriver(sensor(fault="outer_race", severity=3.0, seed=2,
                                       range_g=full_scale), asset()))
    assert cap.clipped
    assert float(np.abs(cap.samples).max()) == pytest.approx(full_scale)
    roomy = burst(SimulatedDriver(sensor(range_g=50.0), asset()))
    assert not roomy.clipped


def test_temperature_sensor() -> None:
    healthy = burst(SimulatedDriver(sensor(kind="temperature"), asset(None)), 16)
    assert healthy.samples.shape == (1, 16) and healthy.samples.dtype == np.float64
    assert 38.0 < healthy.samples.mean() < 42.0
    assert math.isnan(healthy.shaft_hz)
    hot = burst(SimulatedDriver(sensor(kind="temperature", fault="inner_race"), asset()), 16)
    assert hot.samples.mean() > healthy.samples.mean() + 4.0


@pytest.mark.parametrize(("options", "named"), [
    ({"fault": "outer"}, "options.fault"),
    ({"falut": "outer_race"}, "options.falut: unknown option; did you mean 'fault'"),
    ({"severity": -1.0}, "options.severity"),
    ({"severity": "high"}, "options.severity"),
    ({"severity": True}, "options.severity"),
    ({"seed": True}, "options.seed"),
    ({"seed": 1.5}, "options.seed"),
    ({"seed": -3}, "options.seed"),
    ({"noise_g": -0.1}, "options.noise_g"),
    ({"shaft_hz": 0.0}, "options.shaft_hz"),
    ({"report_shaft_hz": "yes"}, "options.report_shaft_hz"),
    ({"speed_jitter": -0.01}, "options.speed_jitter"),
    ({"speed_jitter": 1.0}, "options.speed_jitter"),
    ({"range_g": 0}, "options.range_g"),
])
def test_bad_options_name_the_key(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        SimulatedDriver(sensor(**options), asset())


def test_missing_shaft_speed_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"options\.shaft_hz: required"):
        SimulatedDriver(sensor(), asset(None))


def test_defect_line_above_nyquist_is_refused_at_construction() -> None:
    # BPFI at 60 Hz shaft is 325 Hz; 500 Hz sampling cannot carry it.
    with pytest.raises(ValueError, match=r"BPFI.*Nyquist"):
        SimulatedDriver(sensor(fs_hz=500.0, fault="inner_race"), asset(60.0))


def test_other_sensor_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        SimulatedDriver(sensor(kind="pressure"), asset())


def test_driver_keeps_the_gateway_process_light() -> None:
    # The gateway loads the driver through the entry point; none of the stream's heavy
    # dependencies may come with it.
    code = (
        "import json, sys\n"
        "from ballpass.gateway.drivers import load\n"
        "import ballpass.simulators.signals, ballpass.simulators.driver\n"
        "cls = load('simulated')\n"
        "from ballpass.config import AssetConfig, SensorConfig\n"
        "from ballpass.models.catalog import lookup\n"
        "a = AssetConfig('m', 'pump', lookup('SKF 6205'), 25.0)\n"
        "s = SensorConfig('m-de', 'simulated', 'm', 25600.0, 1024, 1.0,"
        " options={'fault': 'ball'})\n"
        "d = cls(s, a); d.open(); d.read(1024); d.close()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    modules = set(json.loads(out.stdout))
    heavy = {"scipy", "numba", "river", "influxdb_client", "llvmlite", "aiomqtt",
             "ballpass.stream"}
    assert "numpy" in modules and "ballpass.simulators.driver" in modules
    assert not {m for m in modules if m.split(".")[0] in heavy or m in heavy}
