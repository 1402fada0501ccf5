"""Sensor drivers, found by name through the `ballpass.drivers` entry-point group.

Third-party packages add a driver by declaring an entry point; nothing here imports a
driver module until a sensor names it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ballpass.gateway.drivers.base import Capture, Driver, DriverFactory, SensorFault

__all__ = ["Capture", "Driver", "DriverFactory", "SensorFault", "available", "load"]

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
