"""File replay: a recording played back as if a sensor were capturing it now.

Registered as the `replay` entry point of `ballpass.drivers`. Reads ``.npz`` (numpy),
``.wav`` (PCM, stdlib `wave`) or ``.csv`` (one column per channel) at `open()`, then
returns consecutive bursts, looping at the end. With ``loop = false`` the end is final:
`SourceFinished` ("end of recording"), which the gateway reports once and does not
retry (a re-open would play the recording again from the start).

Real-time pacing: a read of n samples takes n / fs_hz seconds of wall time, as a real
capture does. When reads follow each other without a pause (``interval_s`` equal to the
window length: continuous capture), each window's `t0` is the previous window's end, so
the stream sees an unbroken signal; otherwise `t0` is the time the read started.

Values × `scale` are the sensor's unit (g, or °C for temperature sensors). For ``.wav``
the samples are first normalised to [-1, 1) of full scale. The file's own sample rate
(``fs_hz`` array in ``.npz``, the frame rate of ``.wav``) must equal the sensor's `fs_hz`.
Only numpy and the stdlib: the gateway stays light.

Sample config block (one ``[[gateway.sensor]]``): `SAMPLE_CONFIG`.
"""

from __future__ import annotations

import csv
import math
import os
import time
import wave
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers.base import (
    Capture,
    DeclaredOptions,
    SensorFault,
    SourceFinished,
    check_options,
    option,
    path_option,
)

OPTIONS = ("path", "array", "columns", "scale", "loop", "pace")

SAMPLE_CONFIG = """
[site]
id = "plant1"
[[asset]]
id = "pump3"
kind = "pump"
bearing = "SKF 6205"
shaft_hz = 29.95
[[gateway]]
id = "gw-bench"
[[gateway.sensor]]
id = "pump3-replay"
driver = "replay"
asset = "pump3"
fs_hz = 25600
window_samples = 25600
interval_s = 1          # = window length: continuous capture
[gateway.sensor.options]
path = "recordings/pump3.npz"   # .npz, .wav or .csv; relative to the working dir
array = "signal"        # .npz: which array (default "signal", else the only one)
columns = [0]           # .csv: column indices or header names (default: all, at most 3)
scale = 1.0             # file units → g (°C for temperature sensors)
loop = true             # start over at the end (false: stop there, "end of recording")
pace = true             # a read takes n / fs_hz of wall time, as a real capture
"""


def load_recording(path: str, *, array: str | None = None,
                   columns: list[Any] | None = None) -> tuple[np.ndarray, float | None]:
    """(samples of shape (n_channels, n) as float64, the file's sample rate or None)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            name = array or ("signal" if "signal" in names else None)
            if name is None:
                arrays = [n for n in names if z[n].ndim >= 1 and z[n].size > 1]
                if len(arrays) != 1:
                    raise ValueError(f"{path}: name the array (options.array) among {names}")
                name = arrays[0]
            if name not in names:
                raise ValueError(f"{path}: no array {name!r} (has {names})")
            data = np.asarray(z[name], dtype=np.float64)
            fs = float(z["fs_hz"]) if "fs_hz" in names and z["fs_hz"].size == 1 else None
    elif ext == ".wav":
        with wave.open(path, "rb") as w:
            width, channels, fs = w.getsampwidth(), w.getnchannels(), float(w.getframerate())
            raw = w.readframes(w.getnframes())
        data = _pcm(raw, width).reshape(-1, channels).T
    elif ext == ".csv":
        data = _csv(path, columns)
        fs = None
    else:
        raise ValueError(f"{path}: unsupported file type {ext!r} (.npz, .wav or .csv)")
    if data.ndim == 1:
        data = data[np.newaxis, :]
    elif data.ndim == 2 and data.shape[0] > 3 and data.shape[1] <= 3:
        data = data.T  # (n, channels) → channel-major
    if data.ndim != 2 or not 1 <= data.shape[0] <= 3 or data.shape[1] < 1:
        raise ValueError(f"{path}: need 1 to 3 channels of samples, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: contains non-finite values")
    return np.ascontiguousarray(data), fs


def _pcm(raw: bytes, width: int) -> np.ndarray:
    """PCM frames → floats in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2") / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    if width == 4:
        return np.frombuffer(raw, "<i4") / 2147483648.0
    raise ValueError(f"unsupported WAV sample width {width} bytes")


def _csv(path: str, columns: list[Any] | None) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"{path}: empty")
    header: list[str] | None = None
    try:
        [float(x) for x in rows[0]]
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    width = len(rows[0]) if rows else 0
    if columns is None:
        idx = list(range(width))
    else:
        idx = []
        for c in columns:
            if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < width:
                idx.append(c)
            elif isinstance(c, str) and header and c in header:
                idx.append(header.index(c))
            else:
                raise ValueError(f"options.columns: no column {c!r} in {path} "
                                 f"(header: {header})")
    try:
        data = np.array([[float(r[i]) for i in idx] for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: not a numeric CSV ({e})") from None
    return data.T


class ReplayDriver(DeclaredOptions):
    """A `Driver` that plays a recording in a loop; samples (n_channels, n)."""

    OPTIONS = OPTIONS

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        options = dict(sensor.options)
        check_options(options, OPTIONS)
        self.sensor = sensor
        path = path_option(options, "path", None)
        if not path:
            raise ValueError("options.path: required (a .npz, .wav or .csv file)")
        self.path = str(path)
        self.array = option(options, "array", str, None)
        self.columns = option(options, "columns", list, None)
        scale = option(options, "scale", float, 1.0)
        assert isinstance(scale, float)
        if not (math.isfinite(scale) and scale != 0):
            raise ValueError(f"options.scale: must be a finite non-zero number, got {scale!r}")
        self.scale = scale
        self.loop = bool(option(options, "loop", bool, True))
        self.pace = bool(option(options, "pace", bool, True))
        self._data: np.ndarray | None = None
        self._pos = 0
        self._next_t0: int | None = None  # end of the previous window (continuous mode)

    def open(self) -> None:
        try:
            data, fs = load_recording(self.path, array=self.array,  # type: ignore[arg-type]
                                      columns=self.columns)  # type: ignore[arg-type]
        except OSError as e:
            raise SensorFault(f"cannot read recording {self.path}: {e.strerror or e}") from None
        except (ValueError, EOFError, wave.Error) as e:
            raise SensorFault(f"recording {self.path}: {e}") from None
        if fs is not None and not math.isclose(fs, self.sensor.fs_hz, rel_tol=1e-6):
            raise SensorFault(f"recording {self.path} is sampled at {fs:g} Hz, the sensor's "
                              f"fs_hz is {self.sensor.fs_hz:g} Hz")
        self._data = data * self.scale
        self._pos = 0
        self._next_t0 = None

    def read(self, n_samples: int) -> Capture:
        data = self._data
        if data is None:
            raise SensorFault(f"replay of {self.path} is not open")
        total = data.shape[1]
        if not self.loop and self._pos + n_samples > total:
            raise SourceFinished(f"end of recording {self.path} (loop = false)")
        idx = (self._pos + np.arange(n_samples)) % total
        out = data[:, idx]
        self._pos = (self._pos + n_samples) % total
        duration_ns = round(n_samples / self.sensor.fs_hz * 1e9)
        now = time.time_ns()
        # Continuous when this read starts within a few ms of the previous window's end.
        t0 = self._next_t0 if (self._next_t0 is not None
                               and abs(now - self._next_t0) < 50_000_000) else now
        self._next_t0 = t0 + duration_ns
        if self.pace:
            delay = (self._next_t0 - time.time_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
        return Capture(samples=out, t0_ns=t0)

    def close(self) -> None:
        self._data = None

    def __repr__(self) -> str:
        return f"ReplayDriver(sensor={self.sensor.id!r}, path={self.path!r})"
