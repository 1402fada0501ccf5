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

from ballpass.config import AssetConfig, SensorConfig


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
