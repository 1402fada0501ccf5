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

`read()` returns at once: the gateway's capture schedule does the pacing.
"""

from __future__ import annotations

import difflib
import logging
import math
import time
import zlib
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers.base import Capture, SensorFault
from ballpass.simulators.conditions import CONDITION_NAMES, DEFAULT_NOISE_G
from ballpass.simulators.signals import synthesize, temperature, validate

log = logging.getLogger(__name__)

OPTIONS = (
    "fault", "severity", "seed", "noise_g", "shaft_hz", "report_shaft_hz", "speed_jitter",
    "range_g",
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


class SimulatedDriver:
    """A `Driver` that synthesises bursts of a machine in a chosen condition.

    Acceleration sensors return samples of shape (1, n) in g; temperature sensors
    return (1, n) in °C. Deterministic for a seed: two drivers built from the same
    config produce the same sequence of bursts (t0 aside).
    """

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        options = dict(sensor.options)
        for key in options:
            if key not in OPTIONS:
                close = difflib.get_close_matches(key, OPTIONS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"options.{key}: unknown option{hint} (known: {', '.join(OPTIONS)})"
                )
        if sensor.kind not in ("acceleration", "temperature"):
            raise ValueError(
                f"kind: the simulated driver makes acceleration or temperature, "
                f"got {sensor.kind!r}"
            )

        fault = options.get("fault", "normal")
        if fault not in CONDITION_NAMES:
            close = difflib.get_close_matches(str(fault), CONDITION_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
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
            try:
                validate(fault, self._orders, shaft_hz * (1.0 + _JITTER_SIGMAS * jitter),
                         sensor.fs_hz, severity, noise_g)
            except ValueError as e:
                raise ValueError(f"options.fault: {e}") from None

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
        self._rng = np.random.default_rng(seed)
        self._open = False
        self._t_origin_ns: int | None = None

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
        if self.sensor.kind == "temperature":
            samples = temperature(self.fault, int(n_samples), severity=self.severity,
                                  rng=self._rng)
            # A temperature probe knows no speed; the vibration sensor reports it.
            return Capture(samples=samples.reshape(1, -1), t0_ns=t0_ns)

        assert self.shaft_hz is not None  # checked in the constructor for acceleration
        speed = self.shaft_hz * (1.0 + self.speed_jitter * float(self._rng.standard_normal()))
        if self._t_origin_ns is None:
            self._t_origin_ns = t0_ns
        samples = synthesize(
            self.fault, self._orders, speed, self.sensor.fs_hz, int(n_samples),
            severity=self.severity, rng=self._rng, noise_g=self.noise_g,
            # The shaft lines' phase follows wall time, like a keyphasor would.
            t0_s=(t0_ns - self._t_origin_ns) * 1e-9,
        )
        clipped = False
        if self.range_g is not None:
            # An accelerometer saturates at its full scale; the gateway flags the window.
            clipped = bool(np.any(np.abs(samples) >= self.range_g))
            if clipped:
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
