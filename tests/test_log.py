"""One event, one line: the `event=name key=value` format of ballpass.log.kv."""

from __future__ import annotations

from ballpass.log import kv


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
