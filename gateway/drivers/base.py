"""The driver interface: one small Protocol every sensor driver implements.

A driver is created from one sensor's config (`SensorConfig`, with its free-form
`options` table), opened once, then asked for bursts of samples. It raises
`SensorFault` for a device problem (unplugged, read error, garbage); the gateway
reports that on the status topic and retries, it never crashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ballpass.config import AssetConfig, SensorConfig, did_you_mean


class SensorFault(Exception):
    """A device problem the gateway reports and retries (reason in the message)."""


@dataclass(frozen=True)
class Capture:
    """One burst read from a device.

    `samples`: shape (n_channels, n_samples), physical units (g for acceleration,
    °C for temperature); `t0_ns`: UTC time of the first sample (ns since epoch);
    `shaft_hz`: speed at capture in Hz when the device knows it, else NaN;
    `clipped`: the device saturated during the burst.
    """

    samples: np.ndarray
    t0_ns: int
    shaft_hz: float = math.nan
    clipped: bool = False


@runtime_checkable
class Driver(Protocol):
    """A sensor driver. Construct with `Driver(sensor, asset)`; no I/O in the constructor."""

    def open(self) -> None:
        """Acquire the device; raise SensorFault when it is missing."""

    def read(self, n_samples: int) -> Capture:
        """Capture one burst of `n_samples` per channel at the configured rate."""

    def close(self) -> None:
        """Release the device. Safe to call twice."""


class DriverFactory(Protocol):
    def __call__(self, sensor: SensorConfig, asset: AssetConfig) -> Driver: ...


def check_options(options: dict, known: tuple[str, ...]) -> None:
    """ValueError naming the first option not in `known`, with the closest known name."""
    for key in options:
        if key not in known:
            raise ValueError(f"options.{key}: unknown option{did_you_mean(key, known)} "
                             f"(known: {', '.join(known)})")


def option(options: dict, key: str, kind: type | tuple[type, ...], default: object) -> object:
    """`options[key]` (or `default`), ValueError naming the key when its type is wrong.

    Ints are accepted where a float is asked for; bools never count as numbers.
    """
    value = options.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if value is not None and (not isinstance(value, kinds)
                              or (isinstance(value, bool) and bool not in kinds)):
        names = "/".join(k.__name__ for k in kinds)
        raise ValueError(f"options.{key}: must be {names}, got {value!r}")
    return value


def root_path(options: dict, path: str) -> str:
    """`path` (absolute, e.g. ``/sys/bus/iio``) below the `root` option (default ``/``).

    Tests point `root` at a fake device tree built in a temporary dir.
    """
    import os

    root = option(options, "root", str, "/")
    assert isinstance(root, str)
    return os.path.join(root, path.lstrip("/"))
