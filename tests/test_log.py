"""One event, one line: the `event=name key=value` format of ballpass.log.kv."""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ballpass.log import kv, setup


def test_plain_values_are_bare_and_floats_short() -> None:
    assert kv("window", sensor="r01-de", seq=42, rms_g=0.123456789) == \
        "event=window sensor=r01-de seq=42 rms_g=0.123457"


def test_values_with_spaces_quotes_or_equals_are_quoted_and_escaped() -> None:
    assert kv("e", reason='Not "authorized" a=b', empty="") == \
        'event=e reason="Not \\"authorized\\" a=b" empty=""'


def test_line_breaks_are_escaped_so_the_event_stays_one_line() -> None:
    line = kv("handler_failed", error="Traceback\n  File x\r\n\tboom", path="C:\\tmp")
    assert "\n" not in line and "\r" not in line and "\t" not in line
    assert line == ('event=handler_failed error="Traceback\\n  File x\\r\\n\\tboom" '
                    'path=C:\\tmp')


def test_an_event_keeps_its_name_and_fields_for_the_json_format() -> None:
    line = kv("window", sensor="s1", seq=3)
    assert isinstance(line, str) and line.event == "window"
    assert line.fields == {"sensor": "s1", "seq": 3}
    assert pickle.loads(pickle.dumps(line)) == line  # a QueueHandler may pickle records


def _json_lines(emit: Callable[[logging.Logger], None]) -> list[dict[str, Any]]:
    out = io.StringIO()
    setup("DEBUG", stream=out, fmt="json")
    try:
        emit(logging.getLogger("ballpass.test"))
    finally:
        setup("INFO")  # back to stderr for the other tests
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_have_the_events_keys_typed_and_exceptions_as_one_field() -> None:
    def emit(log: logging.Logger) -> None:
        log.info(kv("window", sensor="s1", seq=3, rms_g=0.5, late=True, nan=math.nan,
                    level="x", path=Path("/tmp/a b")))
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError as e:
            log.exception(kv("handler_failed", error=e))
        log.warning("plain %s message", "third-party")

    first, failed, plain = _json_lines(emit)
    assert first["event"] == "window" and first["level"] == "INFO"
    assert first["logger"] == "ballpass.test" and first["ts"].endswith("Z")
    assert (first["sensor"], first["seq"], first["rms_g"], first["late"]) == ("s1", 3, 0.5, True)
    assert first["nan"] == "nan" and first["path"] == "/tmp/a b"
    assert first["_level"] == "x"  # a field never hides the line's own keys
    assert failed["error"] == "boom\nsecond line" and failed["level"] == "ERROR"
    assert "Traceback" in failed["exc"] and "RuntimeError: boom" in failed["exc"]
    assert plain == {**plain, "msg": "plain third-party message", "level": "WARNING"}
    assert "event" not in plain


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format: must be one of kv, json"):
        setup("INFO", fmt="yaml")
