"""Rolling-element bearing kinematics: defect frequencies from geometry.

The classic rigid-body formulas (no slip), as in Randall & Antoni, "Rolling element
bearing diagnostics — A tutorial", MSSP 25 (2011), eq. 1-4. With the outer race
stationary and the inner race turning at the shaft rate fr:

    FTF  = fr/2 · (1 − d/D·cos φ)                 cage (fundamental train)
    BPFO = n·fr/2 · (1 − d/D·cos φ)               ball pass, outer race
    BPFI = n·fr/2 · (1 + d/D·cos φ)               ball pass, inner race
    BSF  = D·fr/(2d) · (1 − (d/D·cos φ)²)         ball spin (a ball defect strikes
                                                   both races: its line is 2×BSF)

Real bearings slip 1-2 %, so the stream searches each line within a tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DefectOrders:
    """Defect frequencies as multiples of the shaft rate (orders, dimensionless)."""

    bpfo: float
    bpfi: float
    bsf: float
    ftf: float

    def at(self, shaft_hz: float) -> DefectFrequencies:
        """Defect frequencies in Hz at a shaft rate in Hz."""
        return DefectFrequencies(
            bpfo=self.bpfo * shaft_hz,
            bpfi=self.bpfi * shaft_hz,
            bsf=self.bsf * shaft_hz,
            ftf=self.ftf * shaft_hz,
        )


@dataclass(frozen=True)
class DefectFrequencies:
    """Defect frequencies in Hz. `bsf` is the ball spin frequency; a ball defect shows at 2×bsf."""

    bpfo: float
    bpfi: float
    bsf: float
    ftf: float


@dataclass(frozen=True)
class BearingGeometry:
    """Geometry of a rolling-element bearing.

    `element_diameter` and `pitch_diameter` share any unit (only their ratio matters);
    `contact_angle_deg` is in degrees (0 for a deep-groove ball bearing under radial load).
    """

    n_elements: int
    element_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.n_elements < 3:
            raise ValueError(f"n_elements: must be >= 3, got {self.n_elements}")
        if not self.element_diameter > 0:
            raise ValueError(f"element_diameter: must be > 0, got {self.element_diameter}")
        if not self.pitch_diameter > self.element_diameter:
            raise ValueError(
                "pitch_diameter: must be > element_diameter, "
                f"got {self.pitch_diameter} <= {self.element_diameter}"
            )
        if not 0.0 <= self.contact_angle_deg < 90.0:
            raise ValueError(
                f"contact_angle_deg: must be in [0, 90), got {self.contact_angle_deg}"
            )

    def orders(self) -> DefectOrders:
        """Defect frequencies per unit shaft rate (orders)."""
        ratio = self.element_diameter / self.pitch_diameter * math.cos(
            math.radians(self.contact_angle_deg)
        )
        n = self.n_elements
        return DefectOrders(
            bpfo=n / 2.0 * (1.0 - ratio),
            bpfi=n / 2.0 * (1.0 + ratio),
            bsf=self.pitch_diameter / (2.0 * self.element_diameter) * (1.0 - ratio * ratio),
            ftf=0.5 * (1.0 - ratio),
        )

    def defect_frequencies(self, shaft_hz: float) -> DefectFrequencies:
        """Defect frequencies in Hz at a shaft rate in Hz."""
        return self.orders().at(shaft_hz)
