"""InfluxDB line protocol: `Point` and `encode()`.

    measurement,tag=v,tag2=v2 field=1.5,count=3i,ok=t,text="a \\"b\\"" 1700000000000000000

Escaping follows the InfluxDB 1.x/2.x spec: in the measurement, commas and spaces; in
tag keys, tag values and field keys, commas, equals signs and spaces; in string field
values, double quotes and backslashes. Integers get the `i` suffix, floats are written
with `repr` (shortest round-trip form), booleans as `t`/`f`.

Refused with ValueError (no encoding reads back the same on both InfluxDB and
VictoriaMetrics): backslashes and control characters (newline, tab, ...) in the
measurement, keys and tag values; a measurement starting with `#` (a comment line); the
key `time`; empty measurement or keys. Tags with an empty value are left out (InfluxDB
drops them too). NaN and ±inf field values are skipped: line protocol has no way to
write them; a point left with no field raises ValueError so the caller sees it.
Integers outside the signed 64-bit range raise ValueError.

Every line is valid UTF-8: a code point UTF-8 cannot hold (a lone surrogate, which
`json.loads` makes of `"\\ud83d"` in an operator's note) is written as U+FFFD.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

FieldValue = float | int | bool | str

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Point:
    """One line: `measurement`, `tags` (str -> str), `fields`, time in ns since the epoch.

    Its tags and fields are not changed once made: the encoded line is kept (`line`).
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int

    @functools.cached_property
    def line(self) -> str:
        """The encoded line, computed once: the stream checks every point before a write
        and the writer encodes the same points again (that was 4 % of its time)."""
        return _encode_point(self)


def _check_name(kind: str, text: str, allow_empty: bool = False) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{kind} must be a string, got {text!r}")
    if not text and not allow_empty:
        raise ValueError(f"{kind} must not be empty")
    if "\\" in text:
        raise ValueError(f"{kind} {text!r}: backslashes cannot be written unambiguously")
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"{kind} {text!r}: control characters (newline, tab, ...) "
                         "are not allowed")


# Names repeat in every point (the same field keys, a site's few hundred sensor tags), so
# each is checked and escaped once; a bad name raises every time (errors are not cached).
_NAMES_CACHED = 65536
_Encoder = TypeVar("_Encoder", bound=Callable[..., str])


def _names_cached(f: _Encoder) -> _Encoder:
    """`f` remembered for string arguments (anything else, unhashable perhaps, goes to `f`
    itself and its ValueError)."""
    cached = functools.lru_cache(maxsize=_NAMES_CACHED)(f)

    @functools.wraps(f)
    def call(*args: object) -> str:
        return cached(*args) if all(type(a) is str for a in args) else f(*args)
    return call  # type: ignore[return-value]


@_names_cached
def _key(kind: str, key: str) -> str:
    _check_name(kind, key)
    if key == "time":
        raise ValueError(f"{kind} 'time' is reserved by InfluxDB")
    return key.translate(_KEY_ESCAPES)


@_names_cached
def _tag(key: str, value: str) -> str:
    """`,key=value` escaped, or '' for an empty value (left out)."""
    ek = _key("tag key", key)
    _check_name(f"tag {key!r} value", value, allow_empty=True)
    return f",{ek}={value.translate(_KEY_ESCAPES)}" if value else ""


@_names_cached
def _measurement(m: str) -> str:
    _check_name("measurement", m)
    if m.startswith("#"):
        raise ValueError(f"measurement {m!r}: a line starting with '#' is a comment")
    return m.translate(_MEASUREMENT_ESCAPES)


def _field_value(value: object) -> str | None:
    """The encoded value, or None for NaN/inf (skipped)."""
    if type(value) is float:  # most fields: the general checks below cost 4 times more
        return repr(value) if math.isfinite(value) else None
    # bool before int: bool is an int subclass; numpy bools are neither.
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
        return "t" if value else "f"
    if isinstance(value, numbers.Integral):
        n = int(value)
        if not _INT64_MIN <= n <= _INT64_MAX:
            raise ValueError(f"integer field value {n}: outside the signed 64-bit range")
        return f"{n}i"
    if isinstance(value, numbers.Real):
        x = float(value)
        return repr(x) if math.isfinite(x) else None
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    raise ValueError(f"field value {value!r}: must be float, int, bool or str")


def encode_point(point: Point) -> str:
    """One line (no trailing newline); ValueError for what cannot be written."""
    return point.line


def _encode_point(point: Point) -> str:
    m = point.measurement
    parts = [_measurement(m)]
    # Sorted tags: InfluxDB's recommended order, and the same series key every time.
    for k in sorted(point.tags):
        parts.append(_tag(k, point.tags[k]))
    fields = []
    for k, fv in point.fields.items():
        ek = _key("field key", k)
        ev = _field_value(fv)
        if ev is not None:
            fields.append(f"{ek}={ev}")
    if not fields:
        raise ValueError(f"point {m!r} at {point.time_ns}: no finite field value to write "
                         f"(fields {sorted(point.fields)})")
    if isinstance(point.time_ns, bool) or not isinstance(point.time_ns, numbers.Integral):
        raise ValueError(f"time_ns must be an integer (ns since epoch), got {point.time_ns!r}")
    line = f"{''.join(parts)} {','.join(fields)} {int(point.time_ns)}"
    # A lone surrogate cannot be sent (UTF-8 has no encoding for it) and would refuse the
    # whole point, again at each redelivery: its text is kept, the surrogate replaced.
    # isascii() is O(1): most lines skip the search.
    return line if line.isascii() else _SURROGATES.sub("\ufffd", line)


def encode(points: Iterable[Point]) -> str:
    """Line protocol for `points`, one line each, newline-terminated ('' for none)."""
    return "".join(encode_point(p) + "\n" for p in points)
