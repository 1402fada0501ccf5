"""ISO 20816-3 evaluation zones from broadband velocity r.m.s.

ISO 20816-3:2022 "Mechanical vibration — Measurement and evaluation of machine
vibration — Part 3: Industrial machinery with a power rating above 15 kW and operating
speeds between 120 r/min and 30 000 r/min", Annex A, Table A.1 (group 1: large machines,
300 kW – 50 MW, or shaft height H ≥ 315 mm) and Table A.2 (group 2: medium machines,
15 kW – 300 kW, or 160 mm ≤ H < 315 mm). The boundaries are unchanged from
ISO 10816-3:2009 Tables A.1/A.2. Measured on bearing housings, velocity r.m.s. over
10 – 1000 Hz for machines above 600 r/min (2 – 1000 Hz from 120 to 600 r/min;
`velocity_band_hz` chooses by speed, and extends the band below 120 r/min).

Zone boundaries, velocity r.m.s. in mm/s:

| group | foundation | A/B | B/C | C/D |
|---|---|---|---|---|
| 1 | rigid | 2.3 | 4.5 | 7.1 |
| 1 | flexible | 3.5 | 7.1 | 11.0 |
| 2 | rigid | 1.4 | 2.8 | 4.5 |
| 2 | flexible | 2.3 | 4.5 | 7.1 |

Zones: A newly commissioned; B acceptable for unrestricted long-term operation;
C unsatisfactory for long-term continuous operation; D severe enough to cause damage.
"""

from __future__ import annotations

import math

SLOW_MACHINE_HZ: float = 10.0
"""Shaft rate (Hz) below which a machine is slow for the velocity band: 600 r/min."""

VELOCITY_BAND_HZ: tuple[float, float] = (10.0, 1000.0)
"""Velocity r.m.s. band (Hz) at 600 r/min and above (ISO 20816-3, sec. 5.2)."""

SLOW_VELOCITY_BAND_HZ: tuple[float, float] = (2.0, 1000.0)
"""Velocity r.m.s. band (Hz) from 120 to 600 r/min (ISO 20816-3, sec. 5.2)."""

STANDARD_LOWEST_HZ: float = 2.0
"""The standard's lowest speed, 120 r/min. Below it (agitators at 60 r/min) it gives no
band; the band then starts at half the shaft rate so that the 1× line, where imbalance
shows, stays inside it (`velocity_band_hz`)."""


def velocity_band_hz(shaft_hz: float) -> tuple[float, float]:
    """The velocity band (lo, hi) in Hz for a shaft turning at `shaft_hz` (Hz).

    ISO 20816-3: 10-1000 Hz at 600 r/min and above, 2-1000 Hz from 120 to 600 r/min.
    Below 120 r/min (outside the standard): shaft_hz/2 to 1000 Hz. An unknown speed (NaN,
    <= 0) gets the band of the standard's common case, 10-1000 Hz.
    """
    f = float(shaft_hz)
    if not (math.isfinite(f) and f > 0.0) or f >= SLOW_MACHINE_HZ:
        return VELOCITY_BAND_HZ
    if f >= STANDARD_LOWEST_HZ:
        return SLOW_VELOCITY_BAND_HZ
    return (0.5 * f, SLOW_VELOCITY_BAND_HZ[1])


ZONE_BOUNDARIES_MM_S: dict[tuple[int, str], tuple[float, float, float]] = {
    (1, "rigid"): (2.3, 4.5, 7.1),
    (1, "flexible"): (3.5, 7.1, 11.0),
    (2, "rigid"): (1.4, 2.8, 4.5),
    (2, "flexible"): (2.3, 4.5, 7.1),
}
"""(A/B, B/C, C/D) velocity r.m.s. boundaries in mm/s, keyed by (machine group, foundation)."""

ZONE_MEANING: dict[str, str] = {
    "A": "newly commissioned",
    "B": "acceptable for unrestricted long-term operation",
    "C": "unsatisfactory for long-term continuous operation",
    "D": "severe enough to cause damage",
}


def boundaries(group: int, foundation: str) -> tuple[float, float, float]:
    """(A/B, B/C, C/D) boundaries in mm/s for machine `group` (1 or 2) and `foundation`.

    `foundation` is "rigid" or "flexible" (case-insensitive). Raises ValueError otherwise.
    """
    key = (group, foundation.lower() if isinstance(foundation, str) else foundation)
    if key not in ZONE_BOUNDARIES_MM_S:
        raise ValueError(
            f"iso 20816-3: unknown group/foundation {group!r}/{foundation!r}; "
            "group must be 1 or 2, foundation 'rigid' or 'flexible'"
        )
    return ZONE_BOUNDARIES_MM_S[key]


def describe(group: int, foundation: str) -> str:
    """Where the default boundaries come from, for people: "ISO 20816-3 group 2 rigid"."""
    return f"ISO 20816-3 group {group} {foundation.lower()}"


def zone(velocity_rms_mm_s: float, group: int = 2, foundation: str = "rigid") -> str:
    """ISO 20816-3 zone "A".."D" of a velocity r.m.s. in mm/s.

    A value on a boundary belongs to the upper zone (the boundary is where the upper
    zone starts). Raises ValueError for a negative or non-finite velocity.
    """
    return zone_of(velocity_rms_mm_s, boundaries(group, foundation))


def zone_of(velocity_rms_mm_s: float, bounds_mm_s: tuple[float, float, float]) -> str:
    """Zone "A".."D" of a velocity r.m.s. (mm/s) against (A/B, B/C, C/D) boundaries in
    mm/s: an asset's own levels or the table's (`boundaries`). A value on a boundary
    belongs to the upper zone. Raises ValueError for a negative or non-finite velocity,
    or boundaries that are not finite, positive and increasing.
    """
    v = float(velocity_rms_mm_s)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"velocity_rms_mm_s: must be finite and >= 0, got {velocity_rms_mm_s}")
    ab, bc, cd = (float(b) for b in bounds_mm_s)
    if not (all(math.isfinite(b) for b in (ab, bc, cd)) and 0.0 < ab < bc < cd):
        raise ValueError(f"zone boundaries: must be finite and 0 < A/B < B/C < C/D mm/s, "
                         f"got {tuple(bounds_mm_s)}")
    if v < ab:
        return "A"
    if v < bc:
        return "B"
    if v < cd:
        return "C"
    return "D"
