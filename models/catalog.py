"""A catalog of common bearings by name.

Geometry as ball count, ball and pitch diameter in mm. SKF 6205-2RS JEM is the drive-end
bearing of the CWRU test rig (9 balls, 0.3126 in balls on a 1.537 in pitch circle, per the
CWRU Bearing Data Center); the 6203 is its fan-end bearing. The other deep-groove bearings
carry their commonly published ball set (6206: 9 × 3/8 in, 6207: 9 × 7/16 in, 6208:
9 × 1/2 in, 6310: 8 × 3/4 in) on the pitch circle midway between bore and outside
diameter (30×62, 35×72, 40×80, 50×110 mm), which is where a deep-groove bearing's balls
run: a pitch a few mm off moves every defect line by more than the ±2 % the diagnosis
searches, so a real defect would be missed.
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
        BearingGeometry(9, 0.375 * _INCH, 46.0, 0.0, name="SKF 6206"),
        BearingGeometry(9, 0.4375 * _INCH, 53.5, 0.0, name="SKF 6207"),
        BearingGeometry(9, 0.5 * _INCH, 60.0, 0.0, name="SKF 6208"),
        BearingGeometry(8, 0.75 * _INCH, 80.0, 0.0, name="SKF 6310"),
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
    # Allow the bare series number ("6205") when exactly one maker lists it; a shorter
    # fragment ("10", "03") is no series number, and would pick whichever key ends with it.
    hits = [g for k, g in _BY_KEY.items() if k.endswith(key)]
    if len(key) >= 4 and len(hits) == 1:
        return hits[0]
    close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown bearing {name!r}{hint} (known: {', '.join(CATALOG)})")
