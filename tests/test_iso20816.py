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


def test_velocity_band_by_speed() -> None:
    from ballpass.models.iso20816 import velocity_band_hz

    assert velocity_band_hz(25.0) == (10.0, 1000.0)  # 1500 r/min
    assert velocity_band_hz(10.0) == (10.0, 1000.0)  # 600 r/min: the upper band
    assert velocity_band_hz(9.9) == (2.0, 1000.0)
    assert velocity_band_hz(2.0) == (2.0, 1000.0)  # 120 r/min, the standard's lowest
    assert velocity_band_hz(1.0) == (0.5, 1000.0)  # below the standard: 1x kept inside
    assert velocity_band_hz(float("nan")) == (10.0, 1000.0)


def test_the_velocity_feature_takes_the_band_of_each_windows_speed() -> None:
    """A 5 Hz line of 2 mm/s r.m.s. counts on a machine at 300 r/min (2-1000 Hz) and not on
    one at 1500 r/min (10-1000 Hz), in the same batch."""
    import math

    import numpy as np

    from ballpass.models.catalog import lookup
    from ballpass.stream.features import extract

    fs, n, f = 12800.0, 1 << 16, 5.0  # 5 Hz is bin 25.6: leaks a little, inside 0.05 mm/s
    t = np.arange(n) / fs
    amp_g = math.sqrt(2) * 2.0e-3 * 2 * math.pi * f / 9.80665
    x = np.tile(amp_g * np.sin(2 * math.pi * f * t), (2, 1))
    b = extract(x, fs, np.array([f, 25.0]), lookup("SKF 6205").orders())
    assert abs(b.velocity_rms_mm_s[0] - 2.0) < 0.05
    assert b.velocity_rms_mm_s[1] < 0.05


def test_zone_of_takes_an_assets_own_boundaries() -> None:
    """`zone_of` judges by any increasing boundaries (an asset's levels); `zone` is it with
    the table's."""
    own = (1.0, 2.2, 3.8)
    assert [iso20816.zone_of(v, own) for v in (0.5, 1.0, 2.5, 3.8)] == ["A", "B", "C", "D"]
    assert iso20816.zone(2.5) == iso20816.zone_of(2.5, iso20816.boundaries(2, "rigid")) == "B"
    for bad in ((1.0, 1.0, 3.0), (0.0, 2.0, 3.0), (1.0, 2.0, float("inf"))):
        with pytest.raises(ValueError, match="zone boundaries"):
            iso20816.zone_of(1.0, bad)
