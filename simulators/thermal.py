"""Bearing-housing temperature with a thermal time constant (pure, stdlib only).

The housing is one thermal mass: it relaxes towards a target temperature set by load and
by friction heat from the fault, with time constant τ (first-order lag). Between two
readings `dt` apart the exact solution of dT/dt = (target − T)/τ is used, so the result
does not depend on how often the sensor is read.
"""

from __future__ import annotations

import math

from ballpass.simulators.conditions import (
    CONDITIONS,
    HEALTHY_TEMP_C,
    LOAD_TEMP_RISE_C,
    THERMAL_TAU_S,
)


def target_c(condition: str, severity: float, load: float) -> float:
    """Steady housing temperature (°C) at `load` (1 = nominal) with the fault at `severity`."""
    return (HEALTHY_TEMP_C - LOAD_TEMP_RISE_C * (1.0 - load)
            + severity * CONDITIONS[condition].temp_rise_c)


class Housing:
    """The temperature state of one bearing housing (°C), advanced in simulated time."""

    def __init__(self, start_c: float, tau_s: float = THERMAL_TAU_S) -> None:
        if not (math.isfinite(tau_s) and tau_s > 0):
            raise ValueError(f"tau_s: must be a finite number > 0, got {tau_s!r}")
        self.temp_c = float(start_c)
        self.tau_s = float(tau_s)

    def step(self, dt_s: float, target: float) -> float:
        """Advance by `dt_s` seconds towards `target` (°C); return the new temperature."""
        if dt_s > 0:
            self.temp_c = target + (self.temp_c - target) * math.exp(-dt_s / self.tau_s)
        return self.temp_c
