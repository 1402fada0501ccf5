"""Sensor drivers, found by name through the `ballpass.drivers` entry-point group.

Third-party packages add a driver by declaring an entry point; nothing here imports a
driver module until a sensor names it. `validate` checks a sensor's driver name and
options when the site file is loaded (docs/config.md, "Driver options").
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ballpass.config import AssetConfig, SensorConfig, did_you_mean
from ballpass.gateway.drivers.base import (
    Capture,
    Driver,
    DriverFactory,
    SensorFault,
    SourceFinished,
)

__all__ = ["Capture", "Driver", "DriverFactory", "SensorFault", "SourceFinished", "available",
           "load", "validate"]

GROUP = "ballpass.drivers"


def available() -> list[str]:
    """Names of every installed driver."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load(name: str) -> DriverFactory:
    """The driver class registered as `name`; KeyError naming the known drivers otherwise."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    raise KeyError(f"unknown driver {name!r} (installed: {', '.join(available()) or 'none'})")


def validate(sensor: SensorConfig, asset: AssetConfig) -> list[str]:
    """Every problem of `sensor.driver` and `sensor.options`, each `KEY: problem` relative
    to the sensor (`driver: unknown driver 'iiio'; did you mean 'iio'?`,
    `options.devce: unknown option; did you mean 'device'?`); [] when valid.

    Imports only the named driver's module (the simulated one only when a sensor uses it).
    A driver class with `validate_options` answers for itself; one without is built once
    (drivers do no I/O in the constructor) and its ValueError is the problem.
    """
    names = available()
    if sensor.driver not in names:
        hint = did_you_mean(sensor.driver, names) or \
            f" (installed: {', '.join(names) or 'none'})"
        return [f"driver: unknown driver {sensor.driver!r}{hint}"]
    try:
        cls = load(sensor.driver)
    except Exception as e:  # a broken third-party package: its error, not a traceback
        return [f"driver: cannot load driver {sensor.driver!r}: {type(e).__name__}: {e}"]
    check = getattr(cls, "validate_options", None)
    try:
        if check is not None:
            return list(check(sensor, asset))
        cls(sensor, asset)
    except ValueError as e:
        return [str(e)]
    except Exception as e:  # a driver bug on odd values must not crash the config load
        return [f"options: rejected by driver {sensor.driver!r}: {type(e).__name__}: {e}"]
    return []
