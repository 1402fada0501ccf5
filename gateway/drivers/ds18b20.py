"""1-Wire DS18B20 thermometers through the kernel's w1-therm driver.

Registered as the `ds18b20` entry point of `ballpass.drivers`. Reads
``/sys/bus/w1/devices/28-*/w1_slave``, which holds two lines::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The first must end in ``YES`` (the kernel's CRC check) and its nine scratchpad bytes are
checked again here (Dallas/Maxim CRC-8); the second gives ``t=`` in milli-°C, which must
agree with the temperature in scratchpad bytes 0-1 (int16, 1/16 °C). A missing device, a
CRC ``NO``, garbage, a value outside the DS18B20's -55..125 °C range, an all-zero
scratchpad (its CRC is 0 too: a device that lost power or stopped answering) and the
power-on reset value (85 °C with the reset scratchpad: no conversion ran) raise
`SensorFault` (reported on the status topic, retried).

Each read of `w1_slave` starts a conversion that takes up to 750 ms at 12 bits, and the
1-Wire traffic around it (reset, ROM match, convert, read scratchpad: ~20 ms) comes on
top, so one reading takes up to 0.8 s (`READING_S`) and a window of `window_samples`
readings at least that many times that: `fs_hz` above 1 / 0.8 s = 1.25 Hz (`MAX_FS_HZ`)
is a config error; use a low `fs_hz` (e.g. 1 Hz) and a small window. Readings are paced
at `fs_hz` by the clock; a window whose readings fell behind their nominal times (a slow
bus, retries) is a `SensorFault` naming the rate the bus can do, never a window labelled
with a rate it was not sampled at.

Sample config block (one ``[[gateway.sensor]]``): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import glob
import os
import re
import time

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

OPTIONS = ("device", "root")
MIN_C, MAX_C = -55.0, 125.0
"""The DS18B20's measuring range, °C."""
CONVERSION_S = 0.75
"""Longest 12-bit temperature conversion, s (datasheet t_CONV)."""
BUS_S = 0.05
"""1-Wire bus time of one `w1_slave` read, s, with margin: reset, ROM match, convert and
read-scratchpad commands at standard speed take ~20 ms; the kernel adds its own delays."""
READING_S = CONVERSION_S + BUS_S
"""Longest time one reading takes, s: the conversion plus the bus traffic around it."""
MAX_FS_HZ = 1.0 / READING_S
"""Highest `fs_hz` one device can be read at, Hz (1.25: 1 / 0.8 s). 1 / `CONVERSION_S`
(1.33 Hz) passed config but every window then failed the pacing check."""

SAMPLE_CONFIG = """
[site]
id = "plant1"
[[asset]]
id = "agitator3"
kind = "agitator"
bearing = "SKF 6205"
[[gateway]]
id = "gw-reactor3"
[[gateway.sensor]]
id = "agitator3-de-temp"
driver = "ds18b20"
kind = "temperature"
asset = "agitator3"
fs_hz = 1             # one reading per second (each takes up to 0.8 s)
window_samples = 16
interval_s = 60
[gateway.sensor.options]
device = "28-0316a2793aff"   # the 1-Wire id; default: the only 28-* device present
"""

# 85.000 °C as the DS18B20 holds it at power-on: temperature 0x0550 and byte 6 at its
# reset value 0x0C (a converted 85.000 °C has 0x10 there).
_POWER_ON = (b"\x50\x05", 0x0C)

_LINE1 = re.compile(r"^((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)$")
_LINE2 = re.compile(r"^(?:[0-9a-f]{2} ){9}t=(-?\d+)$")


def crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial x⁸+x⁵+x⁴+1, reflected 0x8C)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def parse_w1_slave(text: str, where: str = "w1_slave") -> float:
    """The temperature in °C from a `w1_slave` file's text; SensorFault when invalid."""
    lines = text.strip().splitlines()
    if len(lines) != 2:
        raise SensorFault(f"{where}: expected 2 lines, got {len(lines)}: {text[:60]!r}")
    m1 = _LINE1.match(lines[0].strip())
    m2 = _LINE2.match(lines[1].strip())
    if m1 is None or m2 is None:
        raise SensorFault(f"{where}: unreadable: {text[:80]!r}")
    if m1.group(3) != "YES":
        raise SensorFault(f"{where}: CRC check failed (crc={m1.group(2)} NO; bad wiring or "
                          "a missing pull-up?)")
    scratchpad = bytes.fromhex(m1.group(1))
    if crc8(scratchpad) != 0:
        raise SensorFault(f"{where}: scratchpad CRC mismatch ({m1.group(1).strip()})")
    if not any(scratchpad):
        raise SensorFault(f"{where}: all-zero scratchpad (the device lost power or does "
                          "not answer)")
    if (scratchpad[:2], scratchpad[6]) == _POWER_ON:
        raise SensorFault(f"{where}: 85 °C power-on value, no conversion ran (power "
                          "lost, or parasite power too weak?)")
    milli = int(m2.group(1))
    celsius = milli / 1000.0
    if not MIN_C <= celsius <= MAX_C:
        raise SensorFault(f"{where}: {celsius:g} °C is outside the DS18B20 range")
    if abs(milli - _scratchpad_milli_c(scratchpad)) >= 1:
        raise SensorFault(f"{where}: t={milli} disagrees with the scratchpad "
                          f"({m1.group(1).strip()})")
    return celsius


def _scratchpad_milli_c(scratchpad: bytes) -> float:
    """The temperature in the scratchpad, m°C, as w1-therm computes `t=` (which truncates
    it to an integer): int16 in bytes 0-1 in 1/16 °C; a GX20MH01 clone (config bit 7 set)
    adds two low bits from byte 4, in 1/64 °C."""
    raw, per_c = int.from_bytes(scratchpad[:2], "little"), 16
    if scratchpad[4] & 0x80:
        raw, per_c = ((raw << 2) | (scratchpad[4] & 3)) & 0xFFFF, 64
    return (raw - (raw >> 15) * 0x10000) * 1000 / per_c


class Ds18b20Driver(DeclaredOptions):
    """A `Driver` for one DS18B20; samples (1, n) in °C."""

    OPTIONS = OPTIONS

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        options = dict(sensor.options)
        check_options(options, OPTIONS)
        if sensor.kind != "temperature":
            raise ValueError(f"kind: the ds18b20 driver measures temperature, "
                             f"got {sensor.kind!r}")
        if sensor.fs_hz > MAX_FS_HZ * 1.0001:
            raise ValueError(f"fs_hz: a DS18B20 reading takes up to {READING_S:g} s "
                             f"({CONVERSION_S:g} s conversion plus 1-Wire bus time), so "
                             f"at most {MAX_FS_HZ:.3g} Hz; got {sensor.fs_hz:g}")
        self.sensor = sensor
        self.device = option(options, "device", str, None)
        self.w1_root = root_path(options, "/sys/bus/w1/devices")
        self.path: str | None = None

    def open(self) -> None:
        if self.device:
            path = os.path.join(self.w1_root, str(self.device), "w1_slave")
            if not os.path.exists(path):
                raise SensorFault(f"no 1-Wire device {self.device!r} under {self.w1_root} "
                                  "(unplugged, or w1-gpio/w1-therm not loaded?)")
        else:
            found = sorted(glob.glob(os.path.join(glob.escape(self.w1_root), "28-*",
                                                  "w1_slave")))
            if len(found) != 1:
                raise SensorFault(f"options.device not set and {len(found)} DS18B20 devices "
                                  f"under {self.w1_root}; name one")
            path = found[0]
        self.path = path

    def read(self, n_samples: int) -> Capture:
        if self.path is None:
            raise SensorFault("ds18b20 driver is not open")
        out = np.empty((1, n_samples))
        period = 1.0 / self.sensor.fs_hz
        t0 = time.time_ns()
        start = time.monotonic()
        late = 0.0
        for i in range(n_samples):
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = -delay  # the last sample's lateness is what the window's span shows
            try:
                with open(self.path, encoding="ascii", errors="replace") as f:
                    text = f.read()
            except OSError as e:
                raise SensorFault(f"cannot read {self.path}: {e.strerror or e}") from None
            out[0, i] = parse_w1_slave(text, self.path)
        check_pacing(self.path, n_samples, self.sensor.fs_hz, max(late, 0.0),
                     time.monotonic() - start)
        return Capture(samples=out, t0_ns=t0)

    def close(self) -> None:
        self.path = None

    def __repr__(self) -> str:
        return f"Ds18b20Driver(sensor={self.sensor.id!r}, device={self.device!r})"
