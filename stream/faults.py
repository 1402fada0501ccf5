"""The names the diagnosis speaks in: fault classes, envelope lines and their sidebands.

One module, so the diagnosis, the features' array axes and the messages agree. `Fault`
values are the contract's strings (ARCHITECTURE.md section 5: `diagnosis` of the JSON
messages and the InfluxDB `diagnosis` field); `Line` and `Sideband` are the indices of the
second axis of the features' line and sideband arrays (`features.LINES`, `SIDEBANDS`).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Fault(StrEnum):
    """What a window says about its machine (a str: compares and serialises as its value)."""

    NORMAL = "normal"
    OUTER_RACE = "outer_race"
    INNER_RACE = "inner_race"
    BALL = "ball"
    CAGE = "cage"
    LUBRICATION = "lubrication"
    IMBALANCE = "imbalance"
    MISALIGNMENT = "misalignment"
    UNKNOWN_ANOMALY = "unknown_anomaly"
    SENSOR_FAULT = "sensor_fault"
    INSUFFICIENT_DATA = "insufficient_data"


BEARING_FAULTS = frozenset({Fault.OUTER_RACE, Fault.INNER_RACE, Fault.BALL, Fault.CAGE})
NOT_A_FAULT = frozenset({Fault.NORMAL, Fault.INSUFFICIENT_DATA})


class Line(IntEnum):
    """Envelope lines searched, by their index in `features.LINES`."""

    BPFO = 0
    BPFI = 1
    BSF2 = 2  # 2×BSF: a ball strikes both races once per spin
    FTF = 3
    BSF = 4
    SHAFT = 5  # 1×

    @property
    def label(self) -> str:
        """The name in evidence and messages (`features.LINES`)."""
        return LINE_LABELS[self]


LINE_LABELS: tuple[str, ...] = ("BPFO", "BPFI", "2xBSF", "FTF", "BSF", "1x")


class Sideband(IntEnum):
    """Sidebands searched, by their index in `features.SIDEBANDS`."""

    BPFI_MINUS_SHAFT = 0
    BPFI_PLUS_SHAFT = 1
    BSF2_MINUS_FTF = 2
    BSF2_PLUS_FTF = 3


SIDEBAND_LABELS: tuple[str, ...] = ("BPFI-1x", "BPFI+1x", "2xBSF-FTF", "2xBSF+FTF")
