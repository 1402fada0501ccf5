"""Wire format v1: one captured window as bytes (see docs/wire-format.md).

Little-endian; a 48-byte header, then the samples channel-major. The decoder checks
every field and raises `WireError` with a short, stable `reason` (used as a counter
label) and a human `detail`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from ballpass.models.window import MAX_WINDOW_SAMPLES

MAGIC = b"BP"
VERSION = 1
HEADER = struct.Struct("<2sBBBBBBQqdfIfI")
HEADER_SIZE = HEADER.size  # 48
_CRC_OFFSET = 44
MAX_CHANNELS = 3
# Per channel: the most the site file and a remote config take too (docs/config.md). A
# window of 2^24 samples fits mosquitto's packet size, and it took 1.5 GB to process.
MAX_SAMPLES = MAX_WINDOW_SAMPLES

FLAG_HISTORICAL = 0x01
FLAG_CLIPPED = 0x02
_KNOWN_FLAGS = FLAG_HISTORICAL | FLAG_CLIPPED


class Kind(IntEnum):
    """What a window measures, with its unit."""

    ACCELERATION = 1  # g
    TEMPERATURE = 2  # °C
    SHAFT_SPEED = 3  # Hz


SENSOR_KINDS = {"acceleration": Kind.ACCELERATION, "temperature": Kind.TEMPERATURE}
"""A sensor's `kind` in the site config -> the kind of its windows (the only ones a gateway
captures and the stream handles)."""


class DType(IntEnum):
    INT16 = 1  # counts × scale
    FLOAT32 = 2


_ITEMSIZE = {DType.INT16: 2, DType.FLOAT32: 4}
_NUMPY: dict[DType, np.dtype[Any]] = {DType.INT16: np.dtype("<i2"),
                                      DType.FLOAT32: np.dtype("<f4")}


class WireError(ValueError):
    """A message that is not a valid v1 window. `reason` is a stable counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Window:
    """One captured window.

    `samples` has shape (n_channels, n_samples) in physical units (g, °C or Hz);
    `t0_ns` is the UTC time of the first sample in ns since the epoch; `shaft_hz` is NaN
    when the gateway does not know the speed.
    """

    seq: int
    t0_ns: int
    fs_hz: float
    samples: np.ndarray
    kind: Kind = Kind.ACCELERATION
    shaft_hz: float = math.nan
    historical: bool = False
    clipped: bool = False

    @property
    def n_channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[1])


def _shaft_hz_ok(shaft_hz: float) -> bool:
    return math.isnan(shaft_hz) or (math.isfinite(shaft_hz) and shaft_hz >= 0)


def encode(window: Window, dtype: DType = DType.FLOAT32, scale: float = 1.0) -> bytes:
    """Encode a window. With `DType.INT16`, samples are rounded to counts of `scale` units."""
    samples = np.asarray(window.samples)
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= MAX_CHANNELS \
            or not 1 <= samples.shape[1] <= MAX_SAMPLES:
        raise ValueError(f"samples: need shape (1..3, 1..{MAX_SAMPLES}), got {samples.shape}")
    if not (math.isfinite(window.fs_hz) and window.fs_hz > 0):
        raise ValueError(f"fs_hz: must be finite and > 0, got {window.fs_hz}")
    if not 0 <= window.seq < 2**64:
        raise ValueError(f"seq: must fit in u64, got {window.seq}")
    if not _shaft_hz_ok(window.shaft_hz):
        raise ValueError(f"shaft_hz: must be NaN or finite >= 0, got {window.shaft_hz}")
    if dtype == DType.INT16:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: must be finite and > 0, got {scale}")
        body = np.clip(np.rint(samples / scale), -32768, 32767).astype("<i2")
    else:
        scale = 1.0
        with np.errstate(over="ignore"):
            body = samples.astype("<f4")
        if not np.all(np.isfinite(body)):  # what `decode` refuses: fail here, not there
            raise ValueError("samples: not finite as float32 (|x| > 3.4e38, inf or NaN)")
    flags = (FLAG_HISTORICAL if window.historical else 0) | (
        FLAG_CLIPPED if window.clipped else 0
    )
    header = HEADER.pack(
        MAGIC, VERSION, flags, int(window.kind), int(dtype), samples.shape[0], 0,
        window.seq, window.t0_ns, float(window.fs_hz), scale, samples.shape[1],
        float(window.shaft_hz), 0,
    )
    message = bytearray(header + body.tobytes())
    struct.pack_into("<I", message, _CRC_OFFSET, zlib.crc32(message))
    return bytes(message)


def mark_historical(message: bytes) -> bytes:
    """The same message with the historical flag set (and its CRC updated)."""
    out = bytearray(message)
    out[3] |= FLAG_HISTORICAL
    struct.pack_into("<I", out, _CRC_OFFSET, 0)
    struct.pack_into("<I", out, _CRC_OFFSET, zlib.crc32(out))
    return bytes(out)


def declared_samples(message: object) -> int:
    """The samples (all channels) a window message's header claims, unchecked; 0 when it
    is no window. What a batch of the message costs, known before it is decoded."""
    if not isinstance(message, bytes | bytearray) or len(message) < HEADER_SIZE \
            or message[:2] != MAGIC:
        return 0
    return int(message[6]) * int.from_bytes(message[36:40], "little")


def decode(message: bytes) -> Window:
    """Decode and check a v1 message; raise `WireError` naming the first bad field."""
    if len(message) < HEADER_SIZE:
        raise WireError("short", f"{len(message)} bytes, header needs {HEADER_SIZE}")
    (magic, version, flags, kind, dtype, n_channels, reserved, seq, t0_ns, fs_hz, scale,
     n_samples, shaft_hz, crc) = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise WireError("magic", f"expected b'BP', got {magic!r}")
    if version != VERSION:
        raise WireError("version", f"unsupported version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise WireError("flags", f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}")
    if kind not in Kind._value2member_map_:
        raise WireError("kind", f"unknown kind {kind}")
    if dtype not in DType._value2member_map_:
        raise WireError("dtype", f"unknown dtype {dtype}")
    if not 1 <= n_channels <= MAX_CHANNELS:
        raise WireError("channels", f"n_channels must be 1-3, got {n_channels}")
    if reserved != 0:
        raise WireError("reserved", f"reserved byte must be 0, got {reserved}")
    if not (math.isfinite(fs_hz) and fs_hz > 0):
        raise WireError("fs_hz", f"fs_hz must be finite and > 0, got {fs_hz}")
    if not (math.isfinite(scale) and scale > 0):
        raise WireError("scale", f"scale must be finite and > 0, got {scale}")
    if dtype == DType.FLOAT32 and scale != 1.0:
        raise WireError("scale", f"scale must be 1.0 for float32, got {scale}")
    if not 1 <= n_samples <= MAX_SAMPLES:
        raise WireError("n_samples", f"n_samples must be 1..{MAX_SAMPLES}, got {n_samples}")
    if not _shaft_hz_ok(shaft_hz):
        raise WireError("shaft_hz", f"shaft_hz must be NaN or finite >= 0, got {shaft_hz}")
    dt = DType(dtype)
    expected = HEADER_SIZE + n_channels * n_samples * _ITEMSIZE[dt]
    if len(message) != expected:
        raise WireError("length", f"{len(message)} bytes, header says {expected}")
    # The CRC field read as 0, without a copy of the message (16 MB at 2^22 float32).
    view = memoryview(message)
    check = zlib.crc32(b"\0\0\0\0", zlib.crc32(view[:_CRC_OFFSET]))
    if zlib.crc32(view[_CRC_OFFSET + 4:], check) != crc:
        raise WireError("crc", f"crc32 mismatch (header 0x{crc:08x})")
    raw = np.frombuffer(message, dtype=_NUMPY[dt], offset=HEADER_SIZE)
    # Checked before the cast: numpy warns casting a signalling NaN (and raises under -W error).
    if dt != DType.INT16 and not np.isfinite(raw).all():
        raise WireError("samples", "non-finite sample values")
    samples = raw.reshape(n_channels, n_samples).astype(np.float64)
    if dt == DType.INT16:
        samples *= scale
    return Window(
        seq=seq, t0_ns=t0_ns, fs_hz=fs_hz, samples=samples, kind=Kind(kind),
        shaft_hz=float(shaft_hz), historical=bool(flags & FLAG_HISTORICAL),
        clipped=bool(flags & FLAG_CLIPPED),
    )
