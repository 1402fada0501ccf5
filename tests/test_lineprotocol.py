"""Line protocol encoding: exact lines, escaping round-trips, and influxd reading it back."""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballpass.services import Influxd
from ballpass.stream.sinks.influx import V1Writer, query_v1
from ballpass.stream.sinks.lineprotocol import Point, encode, encode_point

# --- a small reference parser (test side) ----------------------------------------------


def _split(text: str, seps: str) -> tuple[str, str, str]:
    """Unescaped text up to the first unescaped char in `seps`: (token, sep, rest)."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c in seps:
            return "".join(out), c, text[i + 1:]
        out.append(c)
        i += 1
    return "".join(out), "", ""


def _field_value(text: str) -> tuple[Any, str]:
    if text.startswith('"'):
        out = []
        i = 1
        while text[i] != '"':
            if text[i] == "\\" and text[i + 1] in '\\"':
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out), text[i + 1:]
    end = min((text.find(c) for c in ", " if c in text), default=len(text))
    raw, rest = text[:end], text[end:]
    if raw in ("t", "f"):
        return raw == "t", rest
    if raw.endswith("i"):
        return int(raw[:-1]), rest
    return float(raw), rest


def parse_line(line: str) -> Point:
    measurement, sep, rest = _split(line, ", ")
    tags = {}
    while sep == ",":
        key, _, rest = _split(rest, "=")
        value, sep, rest = _split(rest, ", ")
        tags[key] = value
    fields: dict[str, Any] = {}
    while True:
        key, _, rest = _split(rest, "=")
        fields[key], rest = _field_value(rest)
        if rest.startswith(" "):
            return Point(measurement, tags, fields, int(rest[1:]))
        assert rest.startswith(","), rest
        rest = rest[1:]


# --- strategies ------------------------------------------------------------------------

# Lone surrogates too: json.loads makes one of "\ud83d" in an operator's command.
_surrogates = st.characters(categories=["Cs"])
_name_chars = st.one_of(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"), _surrogates)
names = st.text(_name_chars, min_size=1, max_size=10).filter(
    lambda s: s != "time" and not s.startswith("_"))
measurements = names.filter(lambda s: not s.startswith("#"))
tag_values = st.text(_name_chars, min_size=1, max_size=12)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), _surrogates),
            max_size=20),
)
now_ns = time.time_ns()
times = st.integers(now_ns - 86_400 * 10**9, now_ns)


def _replaced(s: str) -> str:
    """`s` as the encoder writes it: each lone surrogate replaced by U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)


@st.composite
def points(draw: st.DrawFn) -> Point:
    # Keys still distinct once written (two surrogates become the same U+FFFD).
    tag_keys = draw(st.lists(names.map(lambda s: "t" + s), max_size=4, unique_by=_replaced))
    field_keys = draw(st.lists(names.map(lambda s: "f" + s), min_size=1, max_size=4,
                               unique_by=_replaced))
    return Point(draw(measurements), {k: draw(tag_values) for k in tag_keys},
                 {k: draw(field_values) for k in field_keys}, draw(times))


# --- exact encoding --------------------------------------------------------------------


def test_encode_known_line() -> None:
    p = Point("vibration", {"sensor": "de", "site": "plant a"},
              {"rms_g": 0.25, "seq": 7, "ok": True, "state": 'say "hi"\\'}, 1_700_000_000 * 10**9)
    assert encode([p]) == (
        'vibration,sensor=de,site=plant\\ a rms_g=0.25,seq=7i,ok=t,state="say \\"hi\\"\\\\" '
        "1700000000000000000\n")


def test_escaping_of_measurement_keys_and_tags() -> None:
    line = encode_point(Point("a b,c=d", {"k 1,=": "v 1,=x"}, {"f=1 ,": 1.5}, 1))
    assert line == "a\\ b\\,c=d,k\\ 1\\,\\==v\\ 1\\,\\=x f\\=1\\ \\,=1.5 1"


def test_tags_sorted_and_empty_tag_values_left_out() -> None:
    line = encode_point(Point("m", {"z": "1", "a": "2", "empty": ""}, {"x": 1.0}, 5))
    assert line == "m,a=2,z=1 x=1.0 5"


def test_non_finite_fields_skipped_and_numpy_types() -> None:
    p = Point("m", {}, {"nan": math.nan, "inf": -math.inf, "x": np.float32(0.5),
                        "n": np.int64(-3), "b": np.bool_(False)}, 10)
    assert encode_point(p) == "m x=0.5,n=-3i,b=f 10"


def test_floats_use_shortest_repr() -> None:
    line = encode_point(Point("m", {}, {"a": 0.1, "b": 1e300, "c": -2.5e-8, "d": 3.0}, 1))
    assert line == "m a=0.1,b=1e+300,c=-2.5e-08,d=3.0 1"


def test_a_lone_surrogate_is_written_as_the_replacement_character() -> None:
    """Before: the line could not be encoded as UTF-8; the point was refused, and the
    stream crashed spooling it (the command came back at each restart)."""
    note = json.loads('{"note": "checked \\ud83d"}')["note"]
    line = encode_point(Point("actions", {"sensor": "a\udc00"}, {"note": note}, 1))
    assert line == 'actions,sensor=a\ufffd note="checked \ufffd" 1'
    assert line.encode("utf-8") == (
        b'actions,sensor=a\xef\xbf\xbd note="checked \xef\xbf\xbd" 1')


def test_encode_empty_is_empty() -> None:
    assert encode([]) == ""


@pytest.mark.parametrize("point, message", [
    (Point("m", {}, {"x": math.nan}, 1), "no finite field"),
    (Point("m", {}, {}, 1), "no finite field"),
    (Point("", {}, {"x": 1}, 1), "measurement must not be empty"),
    (Point("#m", {}, {"x": 1}, 1), "comment"),
    (Point("m", {"a\\": "b"}, {"x": 1}, 1), "backslash"),
    (Point("m", {"a": "b\nc"}, {"x": 1}, 1), "control characters"),
    (Point("m", {}, {"time": 1}, 1), "reserved"),
    (Point("m", {}, {"x": 2**63}, 1), "64-bit"),
    (Point("m", {}, {"x": [1]}, 1), "must be float, int, bool or str"),
    (Point("m", {}, {"x": 1}, 1.5), "time_ns must be an integer"),  # type: ignore[arg-type]
])
def test_unwritable_points_raise(point: Point, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode([point])


# --- properties ------------------------------------------------------------------------


def _finite(p: Point) -> Point:
    return Point(p.measurement, {k: v for k, v in p.tags.items() if v},
                 dict(p.fields), p.time_ns)


def _utf8(p: Point) -> Point:
    """`p` as written: each lone surrogate replaced by U+FFFD."""
    text = _replaced
    return Point(text(p.measurement), {text(k): text(v) for k, v in p.tags.items()},
                 {text(k): text(v) if isinstance(v, str) else v for k, v in p.fields.items()},
                 p.time_ns)


@settings(max_examples=300)
@given(st.lists(points(), min_size=1, max_size=5))
def test_round_trip_through_reference_parser(batch: list[Point]) -> None:
    text = encode(batch)
    text.encode("utf-8")  # any text: valid UTF-8
    # String fields may hold newlines (InfluxDB reads quoted strings across lines), so
    # parse point by point.
    parsed = [parse_line(encode_point(p)) for p in batch]
    assert text.count("\n") >= len(batch)
    for original, back in zip(batch, parsed, strict=True):
        assert back == _finite(_utf8(original))
        for k, v in original.fields.items():
            assert type(back.fields[_replaced(k)]) is type(v)


_db_numbers = itertools.count()


@settings(max_examples=25, deadline=None)
@given(st.lists(points(), min_size=1, max_size=3))
def test_influxd_accepts_and_returns_encoded_points(influxd: Influxd,
                                                    drawn: list[Point]) -> None:
    # One measurement per point (the index as last char keeps them apart): InfluxDB
    # refuses a field whose type differs from the same field earlier in the measurement.
    batch = [Point(f"{p.measurement}~{i}", p.tags, p.fields, p.time_ns)
             for i, p in enumerate(drawn)]
    db = f"lp_{next(_db_numbers)}"
    influxd.create_database(db)
    try:
        V1Writer(influxd.url, db).write(batch)
        for p in map(_utf8, batch):
            name = p.measurement.replace('"', '\\"')
            rows = query_v1(influxd.url, db, f'SELECT * FROM "{name}" GROUP BY *')
            assert len(rows) == 1, (rows, p)
            row = rows[0]
            assert row["_measurement"] == p.measurement and row["time"] == p.time_ns
            for k, v in p.tags.items():
                assert row.get(k) == (v or None)
            for k, v in p.fields.items():
                if isinstance(v, float):
                    # Go's JSON writes 3.5e16 as 35000000000000000, which json reads as int.
                    assert float(row[k]) == v, (k, row, v)
                else:
                    assert row[k] == v and type(row[k]) is type(v), (k, row, v)
    finally:
        influxd.query(f'DROP DATABASE "{db}"')
