"""A catalog of common bearings by name.

Geometry from the manufacturers' data (ball count, ball and pitch diameter in mm).
SKF 6205-2RS JEM is the drive-end bearing of the CWRU test rig (9 balls, 0.3126 in
balls on a 1.537 in pitch circle, per the CWRU Bearing Data Center).
"""

from __future__ import annotations

import difflib

from ballpass.models.bearing import BearingGeometry

_INCH = 25.4

CATALOG: dict[str, BearingGeometry] = {
    g.name: g
    for g in (
        BearingGeometry(9, 0.3126 * _INCH, 1.537 * _INCH, 0.0, name="SKF 6205"),
        BearingGeometry(8, 0.2656 * _INCH, 1.122 * _INCH, 0.0, name="SKF 6203"),
        BearingGeometry(8, 7.94, 39.04, 0.0, name="SKF 6206"),
        BearingGeometry(9, 7.94, 44.5, 0.0, name="SKF 6207"),
        BearingGeometry(9, 11.11, 52.5, 0.0, name="SKF 6208"),
        BearingGeometry(8, 12.7, 65.0, 0.0, name="SKF 6310"),
        BearingGeometry(12, 7.94, 38.5, 40.0, name="SKF 7205"),
    )
}


def _key(name: str) -> str:
    return "".join(name.lower().split()).replace("-2rs", "").replace("jem", "")


_BY_KEY = {_key(n): g for n, g in CATALOG.items()}


def lookup(name: str) -> BearingGeometry:
    """The catalog bearing called `name` ("SKF 6205", "skf6205", "6205-2RS JEM" all match).

    Raises KeyError with the closest known names when there is no such bearing.
    """
    key = _key(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    # Allow the bare series number ("6205") when exactly one maker lists it.
    hits = [g for k, g in _BY_KEY.items() if k.endswith(key)]
    if key and len(hits) == 1:
        return hits[0]
    close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown bearing {name!r}{hint} (known: {', '.join(CATALOG)})")
