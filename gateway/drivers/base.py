"""The driver interface: one small Protocol every sensor driver implements.

A driver is created from one sensor's config (`SensorConfig`, with its free-form
`options` table), opened once, then asked for bursts of samples. It raises
`SensorFault` for a device problem (unplugged, read error, garbage); the gateway
reports that on the status topic and retries, it never crashes.

Options are checked when the site file is loaded (`ballpass.config.load`, so in
`check-config`, `gateway` and `simulate fleet` alike), not when the gateway first opens
the device: a driver class declares `OPTIONS` (the names it accepts) and may define the
classmethod `validate_options(sensor, asset) -> list[str]`. `DeclaredOptions` gives
both from the constructor's own checks (no I/O there), so a rule is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ballpass.config import AssetConfig, SensorConfig, did_you_mean


class SensorFault(Exception):
    """A device problem the gateway reports and retries (reason in the message)."""


class SourceFinished(SensorFault):
    """The source has no more data and never will (a non-looping recording at its end).

    The gateway reports it once and stops capturing from this sensor instead of
    re-opening it: a re-open would start the source over and publish it again.
    """


PACING_TOLERANCE = 0.02
"""Fraction of a window's span by which a paced read's last sample may start late."""
PACING_FLOOR_S = 0.005
"""Lateness (s) always allowed: one scheduler hiccup at the end of a short window."""


def check_pacing(what: str, n: int, fs_hz: float, late_s: float, elapsed_s: float) -> None:
    """SensorFault when a clock-paced read of `n` samples at `fs_hz` (Hz) slipped.

    `late_s`: how far (s) the last sample was read after its nominal time;
    `elapsed_s`: the whole read (s). A device slower than the sample period makes the
    samples drift off their nominal times while the window still says `fs_hz`, so every
    spectral line would be off by the ratio: refuse the window and name the rate the
    device can do.
    """
    allowed = max(PACING_TOLERANCE * (n - 1) / fs_hz, PACING_FLOOR_S)
    if late_s > allowed:
        achievable = n / elapsed_s if elapsed_s > 0 else math.inf
        raise SensorFault(f"{what}: cannot keep up with fs_hz {fs_hz:g} Hz: {n} samples "
                          f"took {elapsed_s:.3f} s instead of {n / fs_hz:.3f} s (last one "
                          f"{late_s:.3f} s late); it can do about {achievable:.3g} Hz")


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
    """A driver class: `cls(sensor, asset)` builds a driver (no I/O).

    Optional (see `ballpass.gateway.drivers.validate`): `OPTIONS`, the option names it
    accepts, and the classmethod `validate_options(sensor, asset) -> list[str]`, each
    error as `options.KEY: problem` (relative to the sensor's key path). A class without
    them is validated by building it once.
    """

    def __call__(self, sensor: SensorConfig, asset: AssetConfig) -> Driver: ...


def unknown_options(options: dict[str, Any], known: tuple[str, ...]) -> list[str]:
    """`options.KEY: unknown option; did you mean 'x'?` for each key not in `known`
    (the list of known names when none is close)."""
    errors = []
    for key in options:
        if key not in known:
            hint = did_you_mean(key, known) or f" (known: {', '.join(known)})"
            errors.append(f"options.{key}: unknown option{hint}")
    return errors


def check_options(options: dict[str, Any], known: tuple[str, ...]) -> None:
    """ValueError naming the first option not in `known`, with the closest known name."""
    errors = unknown_options(options, known)
    if errors:
        raise ValueError(errors[0])


class DeclaredOptions:
    """Mixin for a driver whose constructor validates its options without I/O:
    `validate_options` reports every unknown option, then builds the driver once to run
    the constructor's checks of the values (ValueError `options.KEY: ...`)."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate_options(cls, sensor: SensorConfig, asset: AssetConfig) -> list[str]:
        """Every problem of `sensor.options` for this driver ([] when valid)."""
        errors = unknown_options(sensor.options, cls.OPTIONS)
        if errors:
            return errors
        try:
            cls(sensor, asset)  # type: ignore[call-arg]
        except ValueError as e:
            return [str(e)]
        return []


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

    root = path_option(options, "root", "/", kind="directory")
    assert isinstance(root, str)
    return os.path.join(root, path.lstrip("/"))


def path_option(options: dict[str, Any], key: str, default: str | None,
                kind: str = "file") -> str | None:
    """A file-system path option: a string without NUL bytes (which no system call
    accepts, so it would fail at every open), `~` expanded, and, when it exists, of its
    `kind` ("file" or "directory"). ValueError naming the key."""
    import os

    value = option(options, key, str, default)
    if value is None:
        return None
    assert isinstance(value, str)
    if "\0" in value:
        raise ValueError(f"options.{key}: must be a path without NUL bytes, got {value!r}")
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        raise ValueError(f"options.{key}: must be a path whose ~user exists, got {value!r}")
    wrong = {"file": os.path.isdir, "directory": os.path.isfile}[kind]
    if wrong(expanded):
        other = "a directory" if kind == "file" else "a file"
        raise ValueError(f"options.{key}: must be a {kind}, got {other} {value!r}")
    return expanded
