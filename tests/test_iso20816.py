"""ISO 20816-3 zones: the boundary table and the zone of a velocity."""

from __future__ import annotations

import pytest

from ballpass.models import iso20816


@pytest.mark.parametrize(
    ("group", "foundation", "bounds"),
    [
        (1, "rigid", (2.3, 4.5, 7.1)),
        (1, "flexible", (3.5, 7.1, 11.0)),
        (2, "rigid", (1.4, 2.8, 4.5)),
        (2, "flexible", (2.3, 4.5, 7.1)),
    ],
)
def test_boundaries_and_zones(group: int, foundation: str, bounds: tuple[float, ...]) -> None:
    assert iso20816.boundaries(group, foundation) == bounds
    ab, bc, cd = bounds
    assert iso20816.zone(0.0, group, foundation) == "A"
    assert iso20816.zone(ab * 0.999, group, foundation) == "A"
    assert iso20816.zone(ab, group, foundation) == "B"  # a boundary starts the upper zone
    assert iso20816.zone(bc * 0.999, group, foundation) == "B"
    assert iso20816.zone(bc, group, foundation) == "C"
    assert iso20816.zone(cd, group, foundation) == "D"
    assert iso20816.zone(1000.0, group, foundation) == "D"


def test_defaults_and_case() -> None:
    assert iso20816.zone(2.0) == "B"  # group 2, rigid
    assert iso20816.zone(2.0, 1, "Rigid") == "A"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="group"):
        iso20816.zone(1.0, 3, "rigid")
    with pytest.raises(ValueError, match="foundation"):
        iso20816.zone(1.0, 1, "soft")
    with pytest.raises(ValueError, match="velocity"):
        iso20816.zone(-1.0)
    with pytest.raises(ValueError, match="velocity"):
        iso20816.zone(float("nan"))


def test_every_zone_has_a_meaning() -> None:
    assert set(iso20816.ZONE_MEANING) == {"A", "B", "C", "D"}
