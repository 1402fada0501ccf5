"""Speed figures of the simulator, collected by `ballpass bench` (see BENCHMARKS.md).

`sim_cpu_s_per_sensor_s`: CPU seconds spent by the simulated driver per simulated
sensor-second at 25.6 kHz (one-second bursts of a gearbox sensor with a growing
outer-race fault, gear mesh and the batch profile: the most expensive configuration).
Target ≤ 0.01 (1 % of a core per sensor), so a 50-reactor fleet fits on a laptop.
`sim_cpu_s_per_sensor_s_healthy`: the same for a healthy machine (baseline: the cheapest
model). `sim_fleet50_core_share`: the share of one core the 150 vibration sensors of
`ballpass simulate site --reactors 50` need at their default schedule (16384 samples
every 10 s).
"""

from __future__ import annotations

import time

from ballpass.config import AssetConfig, SensorConfig
from ballpass.models.catalog import lookup

FS_HZ = 25600.0


def _cpu_per_sensor_s(options: dict, bursts: int) -> float:
    from ballpass.simulators.driver import SimulatedDriver

    asset = AssetConfig(id="r01-gearbox", kind="gearbox", bearing=lookup("SKF 6208"),
                        shaft_hz=24.75)
    sensor = SensorConfig(id="r01-gearbox-in", driver="simulated", asset=asset.id,
                          fs_hz=FS_HZ, window_samples=int(FS_HZ), interval_s=1.0,
                          options=options)
    drv = SimulatedDriver(sensor, asset)
    drv.open()
    drv.read(int(FS_HZ))  # warm the per-(n, fs) cache, as a running gateway has
    start = time.process_time()
    for _ in range(bursts):
        drv.read(int(FS_HZ))
    cpu = time.process_time() - start
    drv.close()
    return cpu / bursts  # each burst is one sensor-second


def figures(quick: bool = False) -> dict[str, float]:
    """The simulator's figures (CPU seconds per simulated sensor-second, core share)."""
    bursts = 20 if quick else 200
    full = _cpu_per_sensor_s({
        "trajectory": {"condition": "outer_race", "onset_h": 0, "incipient_h": 1,
                       "developed_h": 1, "severe_h": 1},
        "time_scale": 3600.0, "gear_teeth": 23, "gear_wear": 0.5, "looseness": 0.3,
        "profile": "batch", "seed": 1}, bursts)
    healthy = _cpu_per_sensor_s({"seed": 1}, bursts)
    window_s, interval_s, sensors = 16384 / FS_HZ, 10.0, 150
    return {
        "sim_cpu_s_per_sensor_s": round(full, 5),
        "sim_cpu_s_per_sensor_s_healthy": round(healthy, 5),
        "sim_fleet50_core_share": round(full * window_s / interval_s * sensors, 4),
    }
