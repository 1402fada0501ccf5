"""Labelled recordings for `ballpass evaluate`: the spec file and the signal readers.

A spec is a TOML file with one `[[recording]]` table per recording (see EVALUATION.md):

    [[recording]]
    path = "data/105.mat"      # relative to the spec file
    key = "X105_DE_time"       # .npz array name, or dotted field path in a MATLAB v5 .mat
    # column = 1               # instead of key: 0-based column of a text file (whitespace
    #                          # or comma separated), or the channel of a .wav
    fs_hz = 12000
    # scale = 0.10197          # g per unit of the file (here m/s²); required for integer data
    shaft_hz = 29.95
    label = "inner_race"
    bearing = "SKF 6205"       # or a [recording.geometry] table
    window = 8192              # samples per window (optional; default from fs and shaft)
    max_windows = 8            # optional cap
    resample_hz = 12000        # optional: resample before cutting windows
    group = "0.028in"          # optional: records reported apart

`load_spec` validates everything it can without reading the signals (the files exist,
top-level keys and columns exist) and raises one `ConfigError` listing every problem with
its key path, like the site config. `read_signal` reads one recording as float64 g; a file
that does not read (truncated, bad CRC) is a ConfigError naming `recording[i].path`.
Spec format: docs/evaluate.md.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ballpass.config import (
    FAULT_CLASSES,
    ISO_FOUNDATIONS,
    ConfigError,
    TableReader,
    one_of,
    parse_bearing,
    positive,
    read_toml,
)
from ballpass.models.bearing import BearingGeometry
from ballpass.models.window import MAX_WINDOW_SAMPLES, default_window_samples

DEFAULT_WINDOW = 8192
"""The `Recording` field's default for code that builds one by hand; a spec without
`window` gets `models.window.default_window_samples(rate, shaft)` instead (8192 at 12 kHz
and 1800 r/min)."""

DEFAULT_GROUP = "default"
"""Group of records that give none."""

_MAX_RESAMPLE_TERMS = 1000
"""Largest up/down factor of the polyphase resampler (rates are rounded to this ratio)."""

TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".dat", ".asc")
"""Suffixes read as text (one sample per line; whitespace or comma separated columns)."""

SUPPORTED = ".npz, .mat (MATLAB v5), .wav, text (" + ", ".join(TEXT_SUFFIXES) + ")"

READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, TypeError, EOFError, KeyError, IndexError, MemoryError,
    NotImplementedError, zipfile.BadZipFile, zlib.error, struct.error)
"""What numpy, scipy.io and zipfile raise on a damaged file (truncated, bad CRC or deflate
data, a garbled header): reported as that recording's problem, never a traceback."""


@dataclass(frozen=True)
class Recording:
    """One labelled recording of a spec. `name` is its key path (`recording[3]`) for errors."""

    name: str
    path: Path
    key: str | None
    column: int | None
    fs_hz: float
    shaft_hz: float
    label: str
    bearing: BearingGeometry
    window: int = DEFAULT_WINDOW
    max_windows: int | None = None
    resample_hz: float | None = None
    group: str = DEFAULT_GROUP
    iso_group: int = 2
    iso_foundation: str = "rigid"
    window_reason: str = ""
    """Why `window` has its length: "given in the spec" or the default's reason."""
    scale: float | None = None
    """g per unit of the file's samples (1/9.80665 for m/s²); None: the file is in g."""

    @property
    def rate_hz(self) -> float:
        """The sample rate the windows are cut at (after any resampling), Hz."""
        return self.resample_hz if self.resample_hz is not None else self.fs_hz


def _kind(path: Path) -> str | None:
    """"npz", "mat", "wav" or "text" by the file's suffix; None: not a supported format."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".mat", ".wav"):
        return suffix[1:]
    return "text" if suffix in TEXT_SUFFIXES else None


def check_scale(v: float) -> str | None:
    """A `scale` (g per unit of the file) is finite and > 0."""
    return None if math.isfinite(v) and v > 0 else "must be a finite number > 0 (g per unit)"


def _integer_needs_scale(dtype: np.dtype[Any], scale: float | None) -> str | None:
    """Integer samples are ADC counts, never g: refuse to guess their unit."""
    if scale is None and np.issubdtype(dtype, np.integer):
        return (f"is required for integer samples ({dtype}): g per count, e.g. "
                "full scale in g / 32768 for 16-bit")
    return None


def _probe(r: TableReader, path: Path, key: str | None, column: int | None,
           fs_hz: float | None, scale: float | None) -> None:
    """Check that the file exists and holds the key or column, without reading the signal."""
    if not path.is_file():
        r.fail("path", f"no such file {str(path)!r}")
        return
    kind = _kind(path)
    if kind is None:
        r.fail("path", f"unsupported file type {path.suffix or '(no suffix)'!r} of "
               f"{path.name}; supported: {SUPPORTED}")
        return
    if kind == "wav":
        if key is not None:
            r.fail("key", "is for .npz and .mat files; a .wav takes `column` (the channel)")
            return
        try:
            rate, dtype, channels = _wav_info(path)
        except READ_ERRORS as e:
            r.fail("path", f"cannot read {path.name}: {e}")
            return
        if column is not None and column >= channels:
            r.fail("column", f"{path.name} has {channels} channel(s) (0-based), got {column}")
        if fs_hz is not None and not math.isclose(rate, fs_hz, rel_tol=1e-9):
            r.fail("fs_hz", f"{path.name} is sampled at {rate} Hz, got {fs_hz:g}")
        problem = _integer_needs_scale(dtype, scale)
        if problem:
            r.fail("scale", problem)
        return
    if kind in ("npz", "mat") and key is None:
        r.fail("key", f"is required for a .{kind} file (the array name)")
        return
    if kind == "text" and column is None:
        r.fail("column", "is required for a text file (0-based column number)")
        return
    if kind == "text" and key is not None:
        r.fail("key", "is for .npz and .mat files; a text file takes `column`")
        return
    if kind in ("npz", "mat") and column is not None:
        r.fail("column", f"is for text files; a .{kind} file takes `key`")
        return
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
            if key not in names:
                r.fail("key", f"no array {key!r} in {path.name} (it has: {', '.join(names)})")
        elif kind == "mat":
            names = _mat_variables(path)
            top = key.split(".")[0] if key else ""
            if top not in names:
                r.fail("key", f"no variable {top!r} in {path.name} (it has: {', '.join(names)})")
        else:
            n_cols = _text_layout(path)[2]
            if column is not None and column >= n_cols:
                r.fail("column", f"{path.name} has {n_cols} column(s) (0-based), got {column}")
    except READ_ERRORS as e:
        r.fail("path", f"cannot read {path.name}: {e}")


def _mat_variables(path: Path) -> list[str]:
    import scipy.io

    try:
        return [name for name, _shape, _cls in scipy.io.whosmat(path)]
    except NotImplementedError as e:  # scipy raises this for v7.3 (HDF5) files
        raise NotImplementedError(
            "MATLAB v7.3 (HDF5) files are not supported; save with -v7 or convert to .npz"
        ) from e


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_layout(path: Path) -> tuple[str | None, int, int]:
    """(delimiter: "," or None for whitespace, lines to skip, columns) of a text file.

    The first line that is not blank or a `#` comment decides: a comma in it makes the
    file comma separated; fields that are not all numbers make it a header line, skipped.
    """
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = 0
        header = False
        for line in f:
            lines += 1
            text = line.split("#", 1)[0]
            if not text.strip():
                continue
            delimiter = "," if "," in text else None
            fields = [x.strip() for x in text.split(delimiter)]
            if not header and not all(_is_number(x) for x in fields if x):
                header = True  # a header: the next data line gives the layout
                skip = lines
                continue
            return delimiter, skip if header else 0, len(fields)
    raise ValueError("no data lines")


def _wav_info(path: Path) -> tuple[float, np.dtype[Any], int]:
    """(sample rate Hz, sample dtype as scipy reads it, channels) of a .wav file."""
    import scipy.io.wavfile

    try:
        rate, data = scipy.io.wavfile.read(path, mmap=True)  # the header, not the samples
    except ValueError:  # scipy maps no 24-bit (3-byte) samples: read them
        rate, data = scipy.io.wavfile.read(path)
    channels = 1 if data.ndim == 1 else data.shape[1]
    dtype = data.dtype
    del data  # the memory map
    return float(rate), dtype, channels


def _wav_bits(path: Path) -> int:
    """Bits per sample of a .wav's `fmt ` chunk (scipy reads 24-bit samples left-justified
    into int32, 256 × the count, and does not say so)."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            raise ValueError("not a RIFF WAVE file")
        order = "<" if head[:4] == b"RIFF" else ">"
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise ValueError("no fmt chunk")
            cid, size = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size)
                return int(struct.unpack(order + "H", fmt[14:16])[0])
            f.seek(size + (size & 1), 1)


def _read_wav(path: Path, channel: int) -> np.ndarray:
    """One channel of a .wav in the file's units (counts for integer PCM)."""
    import scipy.io.wavfile

    _rate, data = scipy.io.wavfile.read(path)
    x = data if data.ndim == 1 else data[:, channel]
    if x.dtype == np.uint8:  # 8-bit PCM is offset binary: 128 is zero
        return x.astype(np.float64) - 128.0
    if x.dtype == np.int32 and _wav_bits(path) == 24:
        return x.astype(np.float64) / 256.0  # back to 24-bit counts
    return np.asarray(x)


def _parse_recording(r: TableReader) -> Recording | None:
    path = r.path_value("path")
    if "path" not in r.table:
        r.fail("path", "is required")
    key = r.get("key", str, check=lambda v: None if v.strip() else "must not be empty")
    column = r.get("column", int, check=lambda v: None if v >= 0 else "must be >= 0")
    if key is not None and column is not None:
        r.fail("key", "give either `key` or `column`, not both")
    fs_hz = r.get("fs_hz", float, required=True, check=positive)
    shaft_hz = r.get("shaft_hz", float, required=True, check=positive)
    label = r.get("label", str, required=True, check=one_of(*FAULT_CLASSES))
    bearing = parse_bearing(r)
    window = r.get("window", int,
                   check=lambda v: None if 16 <= v <= MAX_WINDOW_SAMPLES
                   else f"must be in 16..{MAX_WINDOW_SAMPLES}")
    max_windows = r.get("max_windows", int, check=lambda v: None if v >= 1 else "must be >= 1")
    resample_hz = r.get("resample_hz", float, check=positive)
    group = r.get("group", str, DEFAULT_GROUP,
                  check=lambda v: None if v.strip() else "must not be empty")
    iso_group = r.get("iso_group", int, 2,
                      check=lambda v: None if v in (1, 2) else "must be 1 or 2")
    iso_foundation = r.get("iso_foundation", str, "rigid", check=one_of(*ISO_FOUNDATIONS))
    scale = r.get("scale", float, check=check_scale)
    r.finish()
    if path is not None:
        _probe(r, path, key, column, fs_hz, scale)
    if fs_hz is not None and resample_hz is not None:
        ratio = Fraction(resample_hz / fs_hz).limit_denominator(_MAX_RESAMPLE_TERMS)
        if ratio.numerator == 0 or not math.isclose(float(ratio) * fs_hz, resample_hz,
                                                    rel_tol=1e-6):
            r.fail("resample_hz", f"{resample_hz} / {fs_hz} is not a ratio of integers "
                   f"<= {_MAX_RESAMPLE_TERMS}")
    window_reason = ""
    if window is not None:
        window_reason = f"window {window} samples given in the spec"
    elif "window" not in r.table and fs_hz is not None and shaft_hz is not None and (
            resample_hz is not None or "resample_hz" not in r.table):
        window, window_reason = default_window_samples(
            resample_hz if resample_hz is not None else fs_hz, shaft_hz)
        window_reason = "default " + window_reason
    if path is not None and _kind(path) == "wav" and column is None:
        column = 0  # a .wav's first channel
    if None in (path, fs_hz, shaft_hz, label, bearing, window, group) or (
        key is None and column is None
    ) or ("scale" in r.table and scale is None):
        return None
    assert path is not None and bearing is not None  # just checked (`None in` does not narrow)
    return Recording(name=r.path, path=path, key=key, column=column, fs_hz=fs_hz,
                     shaft_hz=shaft_hz, label=label, bearing=bearing, window=window,
                     max_windows=max_windows, resample_hz=resample_hz, group=group,
                     iso_group=iso_group, iso_foundation=iso_foundation,
                     window_reason=window_reason, scale=scale)


def parse_spec(data: dict[str, Any], base: Path = Path(".")) -> list[Recording]:
    """The recordings of a parsed spec table; raises ConfigError with every problem."""
    errors: list[str] = []
    root = TableReader(data, "", errors, base)
    tables = root.tables("recording")
    root.finish()
    if not tables and not errors:
        errors.append("recording: the spec lists no [[recording]] table")
    recordings = [_parse_recording(t) for t in tables]
    if errors:
        raise ConfigError(errors)
    return [rec for rec in recordings if rec is not None]


def load_spec(path: str | Path) -> list[Recording]:
    """Load and validate an evaluation spec. Paths inside are relative to the spec file.

    Raises ConfigError (every problem, with its key path; an unreadable spec too).
    """
    path = Path(path)
    return parse_spec(read_toml(path, "the evaluation spec"), base=path.resolve().parent)


def _mat_field(path: Path, dotted: str, where: str) -> Any:
    import scipy.io

    # simplify_cells turns MATLAB structs into dicts and squeezes unit dimensions, so a
    # dotted path is a chain of dict lookups.
    data = scipy.io.loadmat(path, simplify_cells=True)
    value: Any = data
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(value, dict):
            raise ConfigError([f"{where}.key: {'.'.join(walked)} in {path.name} is not a "
                               f"struct, cannot read field {part!r}"])
        if part not in value:
            names = ", ".join(k for k in value if not k.startswith("__"))
            at = ".".join(walked) or "the file"
            raise ConfigError([f"{where}.key: no field {part!r} in {at} of {path.name} "
                               f"(it has: {names})"])
        value = value[part]
        walked.append(part)
    return value


def npz_array(z: Any, key: str, where: str) -> np.ndarray:
    """Array `key` of an opened .npz; ConfigError naming `where` when it cannot be read
    without pickle (an object array) or is not numeric."""
    try:
        a = np.asarray(z[key])
    except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise ConfigError([f"{where}: {key!r} is not a numeric array ({e})"]) from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ConfigError([f"{where}: {key!r} is not a numeric array (dtype {a.dtype})"])
    return a


def read_signal(rec: Recording) -> np.ndarray:
    """The recording's samples as a 1-D float64 array at `rec.rate_hz` (resampled if asked).

    Raises ConfigError naming the recording when the key or column does not hold a 1-D
    numeric signal, or naming `recording[i].path` when the file does not read (truncated,
    bad CRC, garbled). Samples are multiplied by `rec.scale` (g per unit) when given.
    """
    kind = _kind(rec.path)
    what = f"{rec.name}.{'key' if kind in ('npz', 'mat') else 'column'}"
    try:
        raw = _read_raw(rec, kind)
    except ConfigError:
        raise
    except READ_ERRORS as e:
        raise ConfigError([f"{rec.name}.path: cannot read {rec.path.name}: "
                           f"{type(e).__name__}: {e}"]) from None
    if isinstance(raw, np.ndarray):
        problem = _integer_needs_scale(raw.dtype, rec.scale)
        if problem:
            raise ConfigError([f"{rec.name}.scale: {problem} in {rec.path.name}"])
    try:
        x = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError([f"{what}: not a numeric array in {rec.path.name}: {e}"]) from e
    x = np.squeeze(x)
    if x.ndim != 1:
        raise ConfigError([f"{what}: need a 1-D signal in {rec.path.name}, got shape {x.shape}"])
    if rec.scale is not None:
        x = x * rec.scale
    if rec.resample_hz is not None and rec.resample_hz != rec.fs_hz:
        import scipy.signal

        ratio = Fraction(rec.resample_hz / rec.fs_hz).limit_denominator(_MAX_RESAMPLE_TERMS)
        x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator)
    return np.ascontiguousarray(x, dtype=np.float64)


def _read_raw(rec: Recording, kind: str | None) -> Any:
    """The recording's samples as the file holds them (any READ_ERRORS on a damaged file)."""
    if kind == "npz":
        assert rec.key is not None
        with np.load(rec.path, allow_pickle=False) as z:
            return npz_array(z, rec.key, f"{rec.name}.key")
    if kind == "mat":
        assert rec.key is not None
        return _mat_field(rec.path, rec.key, rec.name)
    if kind == "wav":
        return _read_wav(rec.path, rec.column or 0)
    if kind is None:
        raise ConfigError([f"{rec.name}.path: unsupported file type {rec.path.suffix!r}; "
                           f"supported: {SUPPORTED}"])
    assert rec.column is not None
    try:
        delimiter, skip, _cols = _text_layout(rec.path)
        return np.loadtxt(rec.path, usecols=(rec.column,), ndmin=1, comments="#",
                          delimiter=delimiter, skiprows=skip, encoding="utf-8")
    except ValueError as e:  # a field that is not a number, or not valid UTF-8
        raise ConfigError([f"{rec.name}.column: cannot read column {rec.column} of "
                           f"{rec.path.name}: {e}"]) from e
