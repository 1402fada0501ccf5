"""Linux IIO accelerometers (ADXL345, ADXL355, IIS3DWB, ... with their kernel drivers).

Registered as the `iio` entry point of `ballpass.drivers`. The device is found under
``/sys/bus/iio/devices/iio:deviceN/`` by its `name` file (or by ``iio:deviceN``, which the
kernel numbers in probe order: not stable across boots). When several devices share the
name (two ADXL355 on one machine: drive end and non-drive end), `options.label` (the
kernel's ``label`` attribute, from the device tree's ``label`` property) and/or
`options.bus_id` (the bus device in the real sysfs path: ``spi0.1``, ``1-001d``) pick one;
more than one match is a `SensorFault` naming them, never a silent first pick. Two modes:

- ``buffered`` (default): the kernel's triggered buffer. `open()` enables the chosen
  axes' scan elements (``scan_elements/in_accel_{x,y,z}_en``, their ``_index`` and
  ``_type`` such as ``le:s16/16>>0``), turns off the timestamp channel, sets
  ``buffer/length`` and reads ``/dev/iio:deviceN``. For continuous capture
  (``interval_s`` equal to the window length) the buffer stays enabled between reads, so
  windows join without gaps; otherwise it is enabled for each read and disabled after, so
  a window never holds stale samples. The device is read without blocking: a device that
  stops delivering (dead trigger, stuck data-ready interrupt) is a `SensorFault` after
  ``2 × n / fs_hz + READ_GRACE_S`` seconds, not a capture thread hung for ever.
  Continuous windows' `t0` come from the clock when the read waited for fresh data and
  are chained (previous `t0` + n / fs_hz) only through the kernel's backlog (see
  `_chain_t0`).
- ``sysfs``: polls ``in_accel_{x,y,z}_raw`` at `fs_hz` (paced by the clock). Only for
  slow rates (a few hundred Hz) or boards without a buffer. A window whose reads could
  not keep up with `fs_hz` is a `SensorFault` naming the rate achieved
  (`base.check_pacing`), not a window labelled with a rate it was not sampled at.

Counts become g with ``in_accel_scale`` (or ``in_accel_{x}_scale``), which IIO gives in
m/s² per count: ``g = (raw + offset) × scale / 9.80665``. At `open()` the device's
``sampling_frequency`` must equal the sensor's `fs_hz` (within 0.5 %); if not, the driver
writes `fs_hz` to it and reads it back. The buffer is disabled first: one left enabled
(a gateway killed mid-capture) makes drivers that claim direct mode (st_lsm6dsx for the
IIS3DWB, ...) refuse the write with EBUSY. A device that is missing, unreadable or
disappears raises `SensorFault`; the gateway reports it and retries.

Sample config block (one ``[[gateway.sensor]]``): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import select
import time
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers.base import (
    Capture,
    DeclaredOptions,
    SensorFault,
    check_options,
    check_pacing,
    option,
    root_path,
)
from ballpass.log import kv

log = logging.getLogger(__name__)

STANDARD_GRAVITY = 9.80665
"""m/s² per g: IIO reports acceleration in m/s²."""

OPTIONS = ("device", "label", "bus_id", "mode", "axes", "root", "buffer_length",
           "set_frequency")
READ_GRACE_S = 1.0
"""Seconds a buffered read may wait beyond twice the window's duration before it is a
`SensorFault` ("no data"): room for a slow trigger start, not for a dead one."""
T0_TOLERANCE_S = 0.05
"""How far (s) chained continuous `t0`s may be from the clock before they are re-anchored."""
RATE_TOLERANCE = 0.01
"""How far (a fraction) a device's real rate may be off `fs_hz` without warnings: the
0.5 % `sampling_frequency` mismatch `open()` accepts plus the device clock's own error."""
_AXES = ("x", "y", "z")
_TYPE_RE = re.compile(r"^(le|be):([su])(\d+)/(\d+)(?:X(\d+))?>>(\d+)$")

SAMPLE_CONFIG = """
[site]
id = "plant1"
[[asset]]
id = "agitator3"
kind = "agitator"
bearing = "SKF 6205"
shaft_hz = 24.75
[[gateway]]
id = "gw-reactor3"
[[gateway.sensor]]
id = "agitator3-de"
driver = "iio"
asset = "agitator3"
fs_hz = 3200            # must match (or be settable in) the device's sampling_frequency
window_samples = 8192
interval_s = 10
[gateway.sensor.options]
device = "adxl355"      # the IIO `name` file, or "iio:device0" (probe order: not stable)
mode = "buffered"       # "buffered" (/dev/iio:deviceN) or "sysfs" (polled *_raw, slow rates)
axes = ["x", "y", "z"]  # 1 to 3 of x, y, z; one channel each, in this order
buffer_length = 16384   # kernel buffer, samples (default: 2 × window_samples)
set_frequency = true    # write fs_hz to sampling_frequency when it differs
[[gateway.sensor]]
id = "agitator3-nde"    # a second ADXL355 on the same gateway: pick it by label or bus
driver = "iio"
asset = "agitator3"
fs_hz = 3200
window_samples = 8192
interval_s = 10
[gateway.sensor.options]
device = "adxl355"
label = "non-drive-end" # the kernel's `label` attribute (device tree: label = "...")
bus_id = "spi0.1"       # and/or the bus device in its real sysfs path (spi0.1, 1-001d)
"""


def parse_scan_type(text: str) -> tuple[str, bool, int, int, int]:
    """``le:s16/16>>0`` → (endian '<' or '>', signed, bits, storage bits, shift)."""
    m = _TYPE_RE.match(text.strip())
    if m is None:
        raise SensorFault(f"unsupported IIO scan type {text.strip()!r}")
    endian, sign, bits, storage, repeat, shift = m.groups()
    if repeat not in (None, "1"):
        raise SensorFault(f"IIO scan type with repeat is not supported: {text.strip()!r}")
    storage_bits = int(storage)
    if storage_bits not in (8, 16, 32, 64) or not 0 < int(bits) <= storage_bits:
        raise SensorFault(f"unsupported IIO scan type {text.strip()!r}")
    return ("<" if endian == "le" else ">"), sign == "s", int(bits), storage_bits, int(shift)


def decode_scan(raw: bytes, channels: list[dict[str, Any]]) -> np.ndarray:
    """Raw buffer bytes → int64 counts of shape (len(channels), n), channel order as given.

    Each channel dict has ``index``, ``type`` (as `parse_scan_type` returns). Records
    follow the kernel's layout: channels by scan index, each aligned to its own storage
    size, the record padded to the largest storage size.
    """
    layout = sorted(channels, key=lambda c: c["index"])
    offset = 0
    largest = 1
    for c in layout:
        size = c["type"][3] // 8
        offset = (offset + size - 1) // size * size
        c["_offset"] = offset
        offset += size
        largest = max(largest, size)
    record = (offset + largest - 1) // largest * largest
    if len(raw) % record:
        raise SensorFault(f"IIO buffer read of {len(raw)} bytes is not whole records of "
                          f"{record} bytes")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    out = np.empty((len(channels), rows.shape[0]), dtype=np.int64)
    for i, c in enumerate(channels):
        endian, signed, bits, storage, shift = c["type"]
        size = storage // 8
        dt = np.dtype(f"{endian}u{size}")
        v = rows[:, c["_offset"]:c["_offset"] + size].copy().view(dt)[:, 0].astype(np.uint64)
        v = (v >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        vi = v.astype(np.int64)
        if signed:
            sign = 1 << (bits - 1)
            vi = (vi ^ sign) - sign
        out[i] = vi
    return out


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError as e:
        raise SensorFault(f"cannot read {path}: {e.strerror or e}") from None


def _write_text(path: str, value: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as e:
        raise SensorFault(f"cannot write {path}: {e.strerror or e}") from None


def _selector(options: dict[str, Any], key: str) -> str | None:
    """A device selector option (`label`, `bus_id`): a name, not a path; ValueError."""
    value = option(options, key, str, None)
    if value is None:
        return None
    assert isinstance(value, str)
    if not value.strip() or "/" in value or "\0" in value:
        raise ValueError(f"options.{key}: must be a non-empty name without '/', got {value!r}")
    return value


def _read_optional(path: str) -> str | None:
    """A sysfs attribute's text, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _bus_path(path: str) -> list[str]:
    """The components of a device dir's real sysfs path (the /sys/bus link resolved):
    ``['sys', 'devices', 'platform', ..., 'spi0.1', 'iio:device0']``."""
    return os.path.realpath(path).split(os.sep)


def _describe(path: str) -> str:
    """``iio:device1 (label 'drive-end', bus spi0.1)`` for a fault message."""
    label = _read_optional(os.path.join(path, "label"))
    parts = _bus_path(path)
    bus = parts[-2] if len(parts) >= 2 else "?"
    named = f"label {label!r}" if label else "no label"
    return f"{os.path.basename(path)} ({named}, bus {bus})"


def _float(path: str) -> float:
    text = _read_text(path)
    try:
        return float(text)
    except ValueError:
        raise SensorFault(f"{path}: not a number: {text[:40]!r}") from None


class IioDriver(DeclaredOptions):
    """A `Driver` for one IIO accelerometer; samples (n_axes, n) in g."""

    OPTIONS = OPTIONS

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        options = dict(sensor.options)
        check_options(options, OPTIONS)
        self.sensor = sensor
        self.device = option(options, "device", str, None)
        if not self.device:
            raise ValueError("options.device: required (the IIO name, e.g. 'adxl355', "
                             "or 'iio:device0')")
        self.label: str | None = _selector(options, "label")
        self.bus_id: str | None = _selector(options, "bus_id")
        self.mode = option(options, "mode", str, "buffered")
        if self.mode not in ("buffered", "sysfs"):
            raise ValueError(f"options.mode: must be 'buffered' or 'sysfs', got {self.mode!r}")
        axes = option(options, "axes", list, list(_AXES))
        assert isinstance(axes, list)
        if not 1 <= len(axes) <= 3 or any(a not in _AXES for a in axes) \
                or len(set(axes)) != len(axes):
            raise ValueError(f"options.axes: 1 to 3 distinct of 'x', 'y', 'z', got {axes!r}")
        self.axes: list[str] = axes
        length = option(options, "buffer_length", int, 2 * sensor.window_samples)
        assert isinstance(length, int)
        if length < sensor.window_samples:
            raise ValueError(f"options.buffer_length: must be >= window_samples "
                             f"({sensor.window_samples}), got {length}")
        self.buffer_length = length
        self.set_frequency = bool(option(options, "set_frequency", bool, True))
        self.sys_root = root_path(options, "/sys/bus/iio/devices")
        self.dev_root = root_path(options, "/dev")
        # Continuous: windows follow each other, so the buffer stays on between reads.
        self.continuous = sensor.interval_s <= sensor.window_samples / sensor.fs_hz * 1.01
        self.path: str | None = None
        self._fd: int | None = None
        self._enabled = False
        self._scales: np.ndarray = np.ones(len(axes))
        self._offsets: np.ndarray = np.zeros(len(axes))
        self._channels: list[dict[str, Any]] = []
        self._record = 0
        self._next_t0: int | None = None  # chained t0 of the next continuous window, ns

    # --- Driver --------------------------------------------------------------------------

    def open(self) -> None:
        self.path = self._find()
        self._next_t0 = None  # re-anchor to the clock after every (re-)open
        # Before anything else: a buffer left enabled (a gateway killed mid-capture) makes
        # drivers that claim direct mode refuse sampling_frequency (and *_raw) with EBUSY,
        # which would fault every re-open for ever. Scan elements need it off too.
        self._set_enable(False)
        self._check_frequency()
        self._scales, self._offsets = self._calibration()
        if self.mode == "buffered":
            self._setup_buffer()

    def read(self, n_samples: int) -> Capture:
        if self.path is None:
            raise SensorFault(f"IIO device {self.device!r} is not open")
        if not os.path.isdir(self.path):
            raise SensorFault(f"IIO device {self.device!r} disappeared ({self.path})")
        if self.mode == "sysfs":
            counts, t0 = self._poll(n_samples)
        else:
            counts, t0 = self._read_buffer(n_samples)
        g = (counts + self._offsets[:, None]) * (self._scales[:, None] / STANDARD_GRAVITY)
        return Capture(samples=g, t0_ns=t0)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        self._next_t0 = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._enabled and self.path is not None:
            self._enabled = False
            with contextlib.suppress(SensorFault):  # the device is gone: nothing to turn off
                self._set_enable(False)

    # --- setup ---------------------------------------------------------------------------

    def _find(self) -> str:
        assert isinstance(self.device, str)
        if re.fullmatch(r"iio:device\d+", self.device):
            path = os.path.join(self.sys_root, self.device)
            named = [path] if os.path.isdir(path) else []
        else:
            named = [p for p in sorted(glob.glob(os.path.join(glob.escape(self.sys_root),
                                                             "iio:device*")))
                     if _read_optional(os.path.join(p, "name")) == self.device]
        if not named:
            raise SensorFault(f"no IIO device {self.device!r} under {self.sys_root} "
                              "(not connected, or its kernel driver not loaded?)")
        found = named
        if self.label is not None:
            found = [p for p in found
                     if _read_optional(os.path.join(p, "label")) == self.label]
        if self.bus_id is not None:
            found = [p for p in found if self.bus_id in _bus_path(p)]
        if len(found) == 1:
            return found[0]
        listed = "; ".join(_describe(p) for p in named)
        if not found:
            wanted = ", ".join(f"{k} {v!r}" for k, v in (("label", self.label),
                                                         ("bus_id", self.bus_id)) if v)
            raise SensorFault(f"no IIO device {self.device!r} with {wanted} under "
                              f"{self.sys_root}; found: {listed}")
        # Two sensors of one model (drive end, non-drive end) must not both bind to the
        # first: the second would publish the first one's data under its own id.
        raise SensorFault(f"{len(found)} IIO devices match {self.device!r}: {listed}; set "
                          "options.label (the kernel's label attribute) and/or "
                          "options.bus_id (e.g. 'spi0.1') to pick one")

    def _attr(self, name: str) -> str:
        assert self.path is not None
        return os.path.join(self.path, name)

    def _check_frequency(self) -> None:
        want = float(self.sensor.fs_hz)
        path = self._attr("sampling_frequency")
        if not os.path.exists(path):
            path = self._attr("in_accel_sampling_frequency")
        have = _float(path)
        if math.isclose(have, want, rel_tol=0.005):
            return
        if self.set_frequency:
            _write_text(path, f"{want:g}")
            have = _float(path)
            if math.isclose(have, want, rel_tol=0.005):
                return
        raise SensorFault(f"{self.device}: sampling_frequency is {have:g} Hz, the sensor's "
                          f"fs_hz is {want:g} Hz (see {path}_available)")

    def _calibration(self) -> tuple[np.ndarray, np.ndarray]:
        scales, offsets = [], []
        for axis in self.axes:
            scale_path = self._attr(f"in_accel_{axis}_scale")
            if not os.path.exists(scale_path):
                scale_path = self._attr("in_accel_scale")
            scale = _float(scale_path)
            if not (math.isfinite(scale) and scale > 0):
                raise SensorFault(f"{scale_path}: scale must be > 0, got {scale!r}")
            scales.append(scale)
            offset_path = self._attr(f"in_accel_{axis}_offset")
            if not os.path.exists(offset_path):
                offset_path = self._attr("in_accel_offset")
            offsets.append(_float(offset_path) if os.path.exists(offset_path) else 0.0)
        return np.array(scales), np.array(offsets)

    def _setup_buffer(self) -> None:
        scan = self._attr("scan_elements")
        if not os.path.isdir(scan):
            raise SensorFault(f"{self.device}: no scan_elements (no buffer support); "
                              "use mode = \"sysfs\"")
        # open() has turned the buffer off: scan elements can only change while it is off.
        for entry in sorted(os.listdir(scan)):
            if entry.endswith("_en"):
                wanted = any(entry == f"in_accel_{a}_en" for a in self.axes)
                _write_text(os.path.join(scan, entry), "1" if wanted else "0")
        self._channels = []
        for axis in self.axes:
            base = os.path.join(scan, f"in_accel_{axis}")
            index = _read_text(base + "_index")
            if not index.isdigit():
                raise SensorFault(f"{base}_index: not an index: {index!r}")
            self._channels.append({"index": int(index),
                                   "type": parse_scan_type(_read_text(base + "_type"))})
        # Record size: same layout rule as decode_scan.
        offset, largest = 0, 1
        for c in sorted(self._channels, key=lambda c: c["index"]):
            size = c["type"][3] // 8
            offset = (offset + size - 1) // size * size + size
            largest = max(largest, size)
        self._record = (offset + largest - 1) // largest * largest
        _write_text(self._attr("buffer/length"), str(self.buffer_length))
        dev = os.path.join(self.dev_root, os.path.basename(self.path or ""))
        try:
            # Non-blocking: a blocking read of a device that stopped delivering would hang
            # the capture thread (and stop/reconfigure) for ever; poll() bounds the wait.
            self._fd = os.open(dev, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise SensorFault(f"cannot open {dev}: {e.strerror or e} (is the gateway user "
                              "in the iio group? see deploy/99-ballpass-iio.rules)") from None
        if self.continuous:
            self._set_enable(True)

    def _set_enable(self, on: bool) -> None:
        path = self._attr("buffer/enable")
        if os.path.exists(path):
            _write_text(path, "1" if on else "0")
        self._enabled = on

    # --- capture -------------------------------------------------------------------------

    def _read_buffer(self, n: int) -> tuple[np.ndarray, int]:
        if self._fd is None:
            raise SensorFault(f"IIO device {self.device!r} buffer is not open")
        if not self._enabled:
            self._set_enable(True)
        fs = self.sensor.fs_hz
        want = n * self._record
        limit_s = 2 * n / fs + READ_GRACE_S
        chunks: list[bytes] = []
        got = 0
        start = last_data = time.monotonic()
        waited = False  # some data came after a wait: the last sample is from about now
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        try:
            while got < want:
                try:
                    chunk = os.read(self._fd, want - got)
                except BlockingIOError:
                    now = time.monotonic()
                    left = start + limit_s - now
                    if left <= 0:
                        raise SensorFault(
                            f"{self.device}: no data for {now - last_data:.1f} s "
                            f"({got // self._record} of {n} samples after {now - start:.1f} "
                            f"s, limit {limit_s:.1f} s; trigger or data-ready interrupt "
                            "stopped?)") from None
                    waited = True
                    poller.poll(max(1, math.ceil(left * 1000)))
                    continue
                if not chunk:
                    raise SensorFault(f"{self.device}: end of data after {got // self._record} "
                                      f"of {n} samples")
                chunks.append(chunk)
                got += len(chunk)
                last_data = time.monotonic()
        except OSError as e:
            raise SensorFault(f"{self.device}: buffer read failed: {e.strerror or e}") from None
        finally:
            if not self.continuous:
                self._set_enable(False)
        # The last sample arrived about now (when the read had to wait for it; from a
        # backlog it may be older); the first n / fs earlier.
        clock_t0 = time.time_ns() - round(n / fs * 1e9)
        t0 = self._chain_t0(n, clock_t0, waited) if self.continuous else clock_t0
        return decode_scan(b"".join(chunks), [dict(c) for c in self._channels]), t0

    def _chain_t0(self, n: int, clock_t0: int, waited: bool) -> int:
        """The `t0` (ns) of a continuous window of `n` samples.

        A read that waited for its last sample took fresh data: the clock is exact, so its
        `t0` is the clock's and seeds the chain. A read served from the kernel's backlog
        (after a stall) is chained: the previous window's end, as the clock would give
        windows read at once nearly the same `t0`. Chaining fresh reads too would add the
        device's rate error (up to `RATE_TOLERANCE`) window after window: a sawtooth
        against the clock and a re-anchor warning every few windows.

        The chain is checked against the clock either way: off by more than
        `T0_TOLERANCE_S` plus the device's rate error over the chained span (and, from the
        backlog, plus the kernel buffer, `buffer_length` / fs) it cannot be right and is
        re-anchored with a warning (`event=iio_timebase_reanchored`). Samples the kernel
        dropped (the buffer full: the gateway did not read for longer than
        `buffer_length` / fs) leave a gap inside a window that claims to be contiguous;
        the driver cannot see that window, only the chain falling behind the clock
        afterwards.
        """
        fs = self.sensor.fs_hz
        span = round(n / fs * 1e9)
        chained = self._next_t0
        t0 = clock_t0
        if chained is not None:
            backlog_s = self.buffer_length / fs
            allowed_s = (T0_TOLERANCE_S + RATE_TOLERANCE * (n / fs + backlog_s)
                         + (0.0 if waited else backlog_s))
            drift = chained - clock_t0  # > 0: the chain is ahead of the clock
            if abs(drift) > allowed_s * 1e9:
                log.warning(kv("iio_timebase_reanchored", sensor=self.sensor.id,
                               device=self.device, drift_ms=round(drift / 1e6, 1),
                               hint="samples lost (buffer overflow), the device's rate "
                                    "off fs_hz, or the clock stepped"))
            elif not waited:
                t0 = chained
        self._next_t0 = t0 + span
        return t0

    def _poll(self, n: int) -> tuple[np.ndarray, int]:
        paths = [self._attr(f"in_accel_{a}_raw") for a in self.axes]
        out = np.empty((len(paths), n), dtype=np.float64)
        period = 1.0 / self.sensor.fs_hz
        t0 = time.time_ns()
        start = time.monotonic()
        late = 0.0
        for i in range(n):
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = -delay  # the last sample's lateness is what the window's span shows
            for k, p in enumerate(paths):
                text = _read_text(p)
                try:
                    out[k, i] = int(text)
                except ValueError:
                    raise SensorFault(f"{p}: not an integer: {text[:40]!r}") from None
        check_pacing(str(self.device), n, self.sensor.fs_hz, max(late, 0.0),
                     time.monotonic() - start)
        return out, t0

    def __repr__(self) -> str:
        return f"IioDriver(sensor={self.sensor.id!r}, device={self.device!r}, mode={self.mode!r})"
