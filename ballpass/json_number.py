"""A number from parsed JSON, which may be a bool or an integer of any size."""

from __future__ import annotations

from typing import Any


def json_number(value: Any) -> float | None:
    """`value` as a float; None for a bool, a non-number or an integer too large for a
    float (JSON allows any size; `float()` of one raises OverflowError). May be inf or nan
    only when the JSON parser made them so (Python's accepts `Infinity`, `NaN`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
