"""The simulated sensor driver: a machine in a chosen condition, no hardware.

Registered as the `simulated` entry point of `ballpass.drivers`. It runs inside the
gateway process, so it imports only the stdlib, numpy and ballpass's light packages.

Sample config block (one `[[gateway.sensor]]`)::

    [[gateway.sensor]]
    id = "pump3-de"
    driver = "simulated"
    asset = "pump3"
    fs_hz = 25600
    window_samples = 25600
    interval_s = 10
    [gateway.sensor.options]
    fault = "outer_race"      # normal, outer_race, inner_race, ball, cage, imbalance,
                              # misalignment, lubrication
    severity = 1.0            # >= 0; 1.0 is a developed fault, 0.0 healthy
    seed = 7                  # default: crc32 of the sensor id (stable across runs)
    noise_g = 0.02            # white sensor noise, g RMS
    shaft_hz = 29.95          # default: the asset's shaft_hz
    report_shaft_hz = true    # put the speed into each capture, as a tachometer would
    speed_jitter = 0.002      # relative burst-to-burst speed variation (1 σ)
    range_g = 50.0            # optional full scale (g): samples clip there, flagged
    # Machine-level extras (any fault):
    looseness = 0.5           # >= 0: shaft harmonics to 10x and half orders
    gear_teeth = 23           # a gearbox: pinion teeth on this shaft (mesh + sidebands)
    gear_wear = 0.0           # >= 0: sidebands grow with wear
    # Simulated time and operating profile:
    time_scale = 2016         # simulated seconds per wall second (a week in 5 minutes)
    # t_start_ns = ...        # wall time (ns) of simulated time 0; default: first read
    profile = "batch"         # "steady" or "batch": a reactor's speed/load cycle
    cycle_h = 4               # batch cycle length (default: 3-6 h from the seed)
    tau_s = 1800              # thermal time constant of the housing (temperature kind)
    # Sensor faults: a kind always on, or a list scheduled in simulated hours:
    sensor_fault = [{ kind = "disconnect", start_h = 30, end_h = 32 }]
    # Degradation in simulated time, instead of fault/severity (or trajectory = "random",
    # drawn from the seed, failing around horizon_h = 168):
    # [gateway.sensor.options.trajectory]
    # condition = "outer_race"
    # onset_h = 24
    # incipient_h = 48
    # developed_h = 48
    # severe_h = 24
    # max_severity = 2.5

`read()` returns at once: the gateway's capture schedule does the pacing.
Simulated time is `(t0_ns - t_start_ns) * time_scale`; the stage, severity, speed, load
and temperature follow it, so a run-to-failure week plays in minutes.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, SensorConfig, did_you_mean
from ballpass.gateway.drivers.base import Capture, DeclaredOptions, SensorFault, check_options
from ballpass.simulators import sensor_faults
from ballpass.simulators.conditions import (
    CONDITION_NAMES,
    DEFAULT_NOISE_G,
    TEMP_NOISE_C,
    THERMAL_TAU_S,
)
from ballpass.simulators.degradation import (
    OperatingProfile,
    Trajectory,
    random_profile,
    random_trajectory,
    wear_floor,
    wear_velocity,
)
from ballpass.simulators.signals import synthesize, validate
from ballpass.simulators.thermal import Housing, target_c

log = logging.getLogger(__name__)

OPTIONS = (
    "fault", "severity", "seed", "noise_g", "shaft_hz", "report_shaft_hz", "speed_jitter",
    "range_g", "looseness", "gear_teeth", "gear_wear", "trajectory", "horizon_h",
    "time_scale", "t_start_ns", "profile", "cycle_h", "tau_s", "sensor_fault",
)
#: Largest accepted speed_jitter (relative); more is not a steady machine.
MAX_SPEED_JITTER = 0.2
#: When checking the defect line against Nyquist, allow this many σ of speed jitter.
_JITTER_SIGMAS = 6.0


def _number(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValueError(f"options.{key}: must be a finite number, got {value!r}")
    return float(value)


def _hours(table: dict[str, Any], key: str, where: str, default: float | None = None
           ) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValueError(f"{where}.{key}: must be a finite number (hours), got {value!r}")
    return float(value)


def _trajectory(options: dict[str, Any], seed: int) -> Trajectory | None:
    """The `trajectory` option: a table of stage times in hours, or "random"."""
    spec = options.get("trajectory")
    if spec is None:
        if "horizon_h" in options:
            raise ValueError("options.horizon_h: only used with trajectory = \"random\"")
        return None
    if spec == "random":
        horizon = _number(options, "horizon_h", 168.0)
        if horizon <= 0:
            raise ValueError(f"options.horizon_h: must be > 0, got {horizon!r}")
        return random_trajectory(seed, horizon * 3600.0)
    if not isinstance(spec, dict):
        raise ValueError(f"options.trajectory: must be a table or \"random\", got {spec!r}")
    known = ("condition", "onset_h", "incipient_h", "developed_h", "severe_h",
             "max_severity")
    for key in spec:
        if key not in known:
            raise ValueError(f"options.trajectory.{key}: unknown key{did_you_mean(key, known)}")
    # The hours are read first: their errors carry the key path already.
    where = "options.trajectory"
    onset, incipient, developed, severe, max_severity = (
        _hours(spec, "onset_h", where, 0.0), _hours(spec, "incipient_h", where, 24.0),
        _hours(spec, "developed_h", where, 48.0), _hours(spec, "severe_h", where, 24.0),
        _hours(spec, "max_severity", where, 2.5))
    try:
        return Trajectory(
            condition=str(spec.get("condition", "")), onset_s=onset * 3600.0,
            incipient_s=incipient * 3600.0, developed_s=developed * 3600.0,
            severe_s=severe * 3600.0, max_severity=max_severity,
        )
    except ValueError as e:  # Trajectory's own checks name the field, not the path
        raise ValueError(f"options.trajectory.{e}") from None


def _profile(options: dict[str, Any], seed: int) -> OperatingProfile:
    kind = options.get("profile", "steady")
    if kind not in ("steady", "batch"):
        raise ValueError(f"options.profile: must be 'steady' or 'batch', got {kind!r}")
    profile = random_profile(seed, kind)
    if "cycle_h" in options:
        cycle = _number(options, "cycle_h", 4.0)
        if cycle <= 0:
            raise ValueError(f"options.cycle_h: must be > 0, got {cycle!r}")
        profile = OperatingProfile(kind, cycle * 3600.0, profile.offset_s % (cycle * 3600.0))
    return profile


def _sensor_fault_schedule(spec: Any) -> tuple[tuple[str, float, float], ...]:
    """The `sensor_fault` option as (kind, start_s, end_s) in simulated time."""
    if spec is None:
        return ()
    items = [spec] if isinstance(spec, str | dict) else spec
    if not isinstance(items, list):
        raise ValueError(f"options.sensor_fault: must be a kind, a table or a list of "
                         f"tables, got {spec!r}")
    out = []
    for i, item in enumerate(items):
        where = "options.sensor_fault" + (f"[{i}]" if isinstance(spec, list) else "")
        if isinstance(item, str):
            item = {"kind": item}
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a kind or a table, got {item!r}")
        for key in item:
            if key not in ("kind", "start_h", "end_h"):
                raise ValueError(f"{where}.{key}: unknown key (known: kind, start_h, end_h)")
        kind = item.get("kind")
        if kind not in sensor_faults.SENSOR_FAULTS:
            hint = did_you_mean(str(kind), sensor_faults.SENSOR_FAULTS)
            raise ValueError(f"{where}.kind: unknown sensor fault {kind!r}{hint} "
                             f"(known: {', '.join(sensor_faults.SENSOR_FAULTS)})")
        start = _hours(item, "start_h", where, 0.0)
        end = _hours(item, "end_h", where, math.inf) if "end_h" in item else math.inf
        if not 0 <= start < end:
            raise ValueError(f"{where}: need 0 <= start_h < end_h, got {start!r}, {end!r}")
        out.append((kind, start * 3600.0, end * 3600.0))
    return tuple(out)


class SimulatedDriver(DeclaredOptions):
    """A `Driver` that synthesises bursts of a machine in a chosen condition.

    Acceleration sensors return samples of shape (1, n) in g; temperature sensors
    return (1, n) in °C. Deterministic for a seed: two drivers built from the same
    config produce the same sequence of bursts (t0 aside).
    """

    OPTIONS = OPTIONS

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        options = dict(sensor.options)
        check_options(options, OPTIONS)
        if sensor.kind not in ("acceleration", "temperature"):
            raise ValueError(
                f"kind: the simulated driver makes acceleration or temperature, "
                f"got {sensor.kind!r}"
            )

        fault = options.get("fault", "normal")
        if fault not in CONDITION_NAMES:
            hint = did_you_mean(str(fault), CONDITION_NAMES)
            raise ValueError(
                f"options.fault: unknown condition {fault!r}{hint} "
                f"(known: {', '.join(CONDITION_NAMES)})"
            )
        severity = _number(options, "severity", 1.0)
        if severity < 0:
            raise ValueError(f"options.severity: must be >= 0, got {severity!r}")
        seed = options.get("seed", zlib.crc32(sensor.id.encode("utf-8")))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"options.seed: must be an integer >= 0, got {seed!r}")
        noise_g = _number(options, "noise_g", DEFAULT_NOISE_G)
        if noise_g < 0:
            raise ValueError(f"options.noise_g: must be >= 0, got {noise_g!r}")
        report = options.get("report_shaft_hz", True)
        if not isinstance(report, bool):
            raise ValueError(f"options.report_shaft_hz: must be true or false, got {report!r}")
        jitter = _number(options, "speed_jitter", 0.002)
        if not 0.0 <= jitter <= MAX_SPEED_JITTER:
            raise ValueError(
                f"options.speed_jitter: must be in [0, {MAX_SPEED_JITTER}], got {jitter!r}"
            )

        range_g: float | None = None
        if "range_g" in options:
            range_g = _number(options, "range_g", 0.0)
            if range_g <= 0:
                raise ValueError(f"options.range_g: must be > 0, got {range_g!r}")

        looseness = _number(options, "looseness", 0.0)
        gear_wear = _number(options, "gear_wear", 0.0)
        for key, value in (("looseness", looseness), ("gear_wear", gear_wear)):
            if value < 0:
                raise ValueError(f"options.{key}: must be >= 0, got {value!r}")
        gear_teeth = options.get("gear_teeth", 0)
        if isinstance(gear_teeth, bool) or not isinstance(gear_teeth, int) \
                or not (gear_teeth == 0 or 5 <= gear_teeth <= 500):
            raise ValueError(f"options.gear_teeth: must be an integer in 5..500, "
                             f"got {gear_teeth!r}")
        time_scale = _number(options, "time_scale", 1.0)
        if time_scale <= 0:
            raise ValueError(f"options.time_scale: must be > 0, got {time_scale!r}")
        t_start = options.get("t_start_ns")
        if t_start is not None and (isinstance(t_start, bool) or not isinstance(t_start, int)):
            raise ValueError(f"options.t_start_ns: must be an integer (ns), got {t_start!r}")
        tau_s = _number(options, "tau_s", THERMAL_TAU_S)
        if tau_s <= 0:
            raise ValueError(f"options.tau_s: must be > 0, got {tau_s!r}")
        trajectory = _trajectory(options, seed)
        if trajectory is not None and ("fault" in options or "severity" in options):
            raise ValueError("options.trajectory: give either fault/severity or a "
                             "trajectory, not both")
        if trajectory is not None:
            fault = trajectory.condition
        profile = _profile(options, seed)
        schedule = _sensor_fault_schedule(options.get("sensor_fault"))

        shaft_hz: float | None
        if "shaft_hz" in options:
            shaft_hz = _number(options, "shaft_hz", 0.0)
            if shaft_hz <= 0:
                raise ValueError(f"options.shaft_hz: must be > 0, got {shaft_hz!r}")
        else:
            shaft_hz = asset.shaft_hz
        self._orders = asset.bearing.orders()
        if sensor.kind == "acceleration":
            if shaft_hz is None:
                raise ValueError(
                    f"options.shaft_hz: required because asset {asset.id!r} has no shaft_hz"
                )
            # Fail at start-up, not at the first burst, when the defect line cannot be
            # sampled at this rate (even at the fastest jittered speed).
            fastest = shaft_hz * profile.max_speed * (1.0 + _JITTER_SIGMAS * jitter)
            key = "trajectory.condition" if trajectory is not None else "fault"
            try:
                validate(fault, self._orders, fastest, sensor.fs_hz, severity, noise_g)
            except ValueError as e:
                raise ValueError(f"options.{key}: {e}") from None
            if gear_teeth and gear_teeth * fastest >= sensor.fs_hz / 2:
                raise ValueError(
                    f"options.gear_teeth: gear mesh at {gear_teeth * fastest:.6g} Hz "
                    f"({gear_teeth} teeth) is not below the Nyquist frequency "
                    f"{sensor.fs_hz / 2:g} Hz")

        self.sensor = sensor
        self.asset = asset
        self.fault: str = fault
        self.severity = severity
        self.seed: int = seed
        self.noise_g = noise_g
        self.shaft_hz = shaft_hz
        self.report_shaft_hz = report
        self.speed_jitter = jitter
        self.range_g = range_g
        self.looseness = looseness
        self.gear_teeth = int(gear_teeth)
        self.gear_wear = gear_wear
        self.trajectory = trajectory
        self.profile = profile
        self.time_scale = time_scale
        self.sensor_fault_schedule = schedule
        self._t_start_ns: int | None = t_start
        self._rng = np.random.default_rng(seed)
        self._open = False
        self._t_origin_ns: int | None = None
        self._stage: str | None = None
        self._housing: Housing | None = None
        self._housing_tau_s = tau_s
        self._last_sim_s = 0.0

    def sim_time_s(self, t_ns: int) -> float:
        """Simulated time (s) at wall time `t_ns` (ns since epoch)."""
        if self._t_start_ns is None:
            self._t_start_ns = t_ns
        return (t_ns - self._t_start_ns) * 1e-9 * self.time_scale

    def state_at(self, t_s: float) -> tuple[str, float]:
        """(stage, severity) of the simulated machine at simulated time `t_s` (s)."""
        if self.trajectory is None:
            return ("healthy" if self.fault == "normal" or self.severity == 0 else "fixed",
                    self.severity)
        point = self.trajectory.at(t_s)
        return point.stage, point.severity

    def _active_sensor_fault(self, t_s: float) -> str | None:
        for kind, start_s, end_s in self.sensor_fault_schedule:
            if start_s <= t_s < end_s:
                return kind
        return None

    def open(self) -> None:
        """Start the simulated device (no I/O). Opening twice is harmless."""
        if not self._open:
            self._open = True
            log.info("event=sim_open sensor=%s kind=%s fault=%s severity=%g seed=%d",
                     self.sensor.id, self.sensor.kind, self.fault, self.severity, self.seed)

    def read(self, n_samples: int) -> Capture:
        """One burst of `n_samples` at `sensor.fs_hz`, returned immediately.

        `t0_ns` is the wall-clock time at the start of the call; `shaft_hz` is the
        (jittered) speed the burst was made at, or NaN with `report_shaft_hz = false`
        and for temperature sensors.
        Raises SensorFault when the driver is not open.
        """
        if not self._open:
            raise SensorFault(f"sensor {self.sensor.id}: simulated driver is not open")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) \
                or n_samples < 1:
            raise ValueError(f"n_samples: must be an integer >= 1, got {n_samples!r}")
        t0_ns = time.time_ns()
        t_s = self.sim_time_s(t0_ns)
        stage, severity = self.state_at(t_s)
        if stage != self._stage:
            log.info("event=sim_stage sensor=%s condition=%s stage=%s severity=%.3g "
                     "sim_h=%.2f", self.sensor.id, self.fault, stage, severity, t_s / 3600.0)
            self._stage = stage
        _, speed_factor, load = self.profile.at(t_s)
        fault_kind = self._active_sensor_fault(t_s)
        if fault_kind == "disconnect":
            raise SensorFault(f"sensor {self.sensor.id}: simulated disconnection "
                              f"(no answer from the device)")

        if self.sensor.kind == "temperature":
            target = target_c(self.fault, severity, load)
            if self._housing is None:  # starts settled at its first operating point
                self._housing = Housing(target, self._housing_tau_s)
            level = self._housing.step(t_s - self._last_sim_s, target)
            self._last_sim_s = t_s
            samples = level + TEMP_NOISE_C * self._rng.standard_normal(int(n_samples))
            clipped = False
            if fault_kind is not None:
                samples, clipped = sensor_faults.apply(fault_kind, samples, self._rng)
            # A temperature probe knows no speed; the vibration sensor reports it.
            return Capture(samples=samples.reshape(1, -1), t0_ns=t0_ns, clipped=clipped)

        assert self.shaft_hz is not None  # checked in the constructor for acceleration
        speed = self.shaft_hz * speed_factor * (
            1.0 + self.speed_jitter * float(self._rng.standard_normal()))
        if self._t_origin_ns is None:
            self._t_origin_ns = t0_ns
        samples = synthesize(
            self.fault, self._orders, speed, self.sensor.fs_hz, int(n_samples),
            severity=severity, rng=self._rng, noise_g=self.noise_g,
            # The shaft lines' phase follows wall time, like a keyphasor would.
            t0_s=(t0_ns - self._t_origin_ns) * 1e-9,
            load=load, looseness=self.looseness, gear_teeth=self.gear_teeth,
            gear_wear=self.gear_wear, hf_extra=wear_floor(self.fault, severity),
            wear_mm_s=wear_velocity(self.fault, severity),
        )
        clipped = False
        if fault_kind is not None:
            samples, clipped = sensor_faults.apply(fault_kind, samples, self._rng)
        # An accelerometer saturates at its full scale; the gateway flags the window.
        if self.range_g is not None and np.any(np.abs(samples) >= self.range_g):
            clipped = True
            np.clip(samples, -self.range_g, self.range_g, out=samples)
        return Capture(
            samples=samples.reshape(1, -1),
            t0_ns=t0_ns,
            shaft_hz=speed if self.report_shaft_hz else math.nan,
            clipped=clipped,
        )

    def close(self) -> None:
        """Stop the simulated device. Safe to call twice."""
        if self._open:
            self._open = False
            log.info("event=sim_close sensor=%s", self.sensor.id)

    def __repr__(self) -> str:
        return (f"SimulatedDriver(sensor={self.sensor.id!r}, fault={self.fault!r}, "
                f"severity={self.severity:g}, seed={self.seed})")
