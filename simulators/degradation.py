"""Degradation over time: run-to-failure trajectories and operating profiles (pure, numpy only).

A `Trajectory` maps simulated time (s) to a stage and a severity. A fault appears at
`onset_s`; it then spends `incipient_s`, `developed_s` and `severe_s` seconds in the
stages *incipient*, *developed* and *severe*; at `failure_s` the machine is run to
failure and stays there at `max_severity`. Severity (1.0 = a developed fault, see
`ballpass.simulators.conditions`) grows smoothly and monotonically:

| stage | severity from → to | growth |
|---|---|---|
| healthy | 0 | — |
| incipient | `INCIPIENT_START` → `DEVELOPED_START` | linear |
| developed | `DEVELOPED_START` → 1.0 | linear |
| severe | 1.0 → `max_severity` | exponential (damage accelerates) |

Late in a bearing's life the lubricant degrades and the surface damage spreads, which
raises the broadband high-frequency floor; `wear_floor(severity)` is that extra floor, as
a lubrication severity, used by the simulated driver. From the developed stage on, the
spall and the wear it causes also raise the low-frequency vibration (velocity in the ISO
20816 band): `wear_velocity(condition, severity)` (mm/s), so a run-to-failure bearing
or lubrication trajectory reaches ISO zone C and then D before it fails
(docs/simulator.md, "Late bearing damage"). `zone_crossings_s` gives the true times at
which the simulated velocity crosses the zone boundaries, measured on simulated windows.

An `OperatingProfile` gives the speed and load factors of a machine over time: steady, or
the batch cycle of a reactor (charge, react, discharge), deterministic for a seed.

`random_trajectory(seed, horizon_s)` draws one trajectory per seed, for fleets and for
offline evaluation (`ballpass evaluate-fleet`). Everything here is a pure function of
its inputs: the same seed gives the same trajectory on every machine.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from ballpass.simulators.conditions import CONDITION_NAMES

__all__ = [
    "FAULT_CONDITIONS",
    "STAGES",
    "OperatingProfile",
    "Point",
    "Trajectory",
    "random_profile",
    "random_trajectory",
    "velocity_curve",
    "wear_floor",
    "wear_velocity",
    "zone_crossings_s",
]

#: Stages in the order a machine passes through them.
STAGES = ("healthy", "incipient", "developed", "severe")
#: Severity at the start of the incipient and developed stages.
INCIPIENT_START = 0.15
DEVELOPED_START = 0.45
#: Conditions a trajectory may grow (every simulated condition but `normal`).
FAULT_CONDITIONS = tuple(c for c in CONDITION_NAMES if c != "normal")
#: Bearing faults whose late stage also raises the high-frequency floor.
_BEARING = ("outer_race", "inner_race", "ball", "cage")
#: Lubrication severity added per unit severity above 1.0 (severe bearing damage).
WEAR_FLOOR_PER_SEVERITY = 0.6
#: Low-frequency velocity (mm/s RMS, 10-1000 Hz) a worn bearing adds per unit severity
#: above DEVELOPED_START (bearing faults and lubrication; see `wear_velocity`).
WEAR_VELOCITY_MM_S = 4.0
#: Conditions whose late stage wears the bearing (clearance, spall spreading).
_WEARING = (*_BEARING, "lubrication")


class Point(NamedTuple):
    """A trajectory at one instant: the stage name and the severity (≥ 0)."""

    stage: str
    severity: float


@dataclass(frozen=True)
class Trajectory:
    """One fault growing from onset to failure. Times in simulated seconds (≥ 0).

    `condition`: one of `FAULT_CONDITIONS`; `onset_s`: when the incipient stage starts;
    `incipient_s`, `developed_s`, `severe_s`: durations of the three stages (> 0);
    `max_severity` (≥ 1): severity at failure.
    """

    condition: str
    onset_s: float
    incipient_s: float
    developed_s: float
    severe_s: float
    max_severity: float = 2.5

    def __post_init__(self) -> None:
        if self.condition not in FAULT_CONDITIONS:
            raise ValueError(f"condition: must be one of {', '.join(FAULT_CONDITIONS)}, "
                             f"got {self.condition!r}")
        if not (math.isfinite(self.onset_s) and self.onset_s >= 0):
            raise ValueError(f"onset_s: must be a finite number >= 0, got {self.onset_s!r}")
        for name in ("incipient_s", "developed_s", "severe_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.max_severity) and self.max_severity >= 1.0):
            raise ValueError(f"max_severity: must be a finite number >= 1, "
                             f"got {self.max_severity!r}")

    @property
    def stage_starts_s(self) -> dict[str, float]:
        """Start time (s) of every stage, plus `failure` (end of the severe stage)."""
        t1 = self.onset_s + self.incipient_s
        t2 = t1 + self.developed_s
        return {"healthy": 0.0, "incipient": self.onset_s, "developed": t1, "severe": t2,
                "failure": t2 + self.severe_s}

    @property
    def failure_s(self) -> float:
        """When the machine fails (s): the end of the severe stage."""
        return self.stage_starts_s["failure"]

    def at(self, t_s: float) -> Point:
        """Stage and severity at simulated time `t_s` (s; before 0 counts as healthy)."""
        starts = self.stage_starts_s
        if t_s < self.onset_s:
            return Point("healthy", 0.0)
        if t_s < starts["developed"]:
            u = (t_s - self.onset_s) / self.incipient_s
            return Point("incipient", INCIPIENT_START + (DEVELOPED_START - INCIPIENT_START) * u)
        if t_s < starts["severe"]:
            u = (t_s - starts["developed"]) / self.developed_s
            return Point("developed", DEVELOPED_START + (1.0 - DEVELOPED_START) * u)
        u = min(1.0, (t_s - starts["severe"]) / self.severe_s)
        # Exponential growth from 1 to max_severity: damage feeds on itself.
        return Point("severe", self.max_severity ** u)

    def time_of(self, severity: float) -> float | None:
        """First time (s) the severity reaches `severity`; None if it never does."""
        starts = self.stage_starts_s
        if severity <= 0.0:
            return 0.0
        if severity <= INCIPIENT_START:
            return self.onset_s
        if severity <= DEVELOPED_START:
            u = (severity - INCIPIENT_START) / (DEVELOPED_START - INCIPIENT_START)
            return self.onset_s + u * self.incipient_s
        if severity <= 1.0:
            u = (severity - DEVELOPED_START) / (1.0 - DEVELOPED_START)
            return starts["developed"] + u * self.developed_s
        if severity <= self.max_severity:
            return starts["severe"] + math.log(severity) / math.log(self.max_severity) \
                * self.severe_s
        return None

    def severity(self, t_s: np.ndarray) -> np.ndarray:
        """Severity at every time of `t_s` (s), vectorised."""
        return np.array([self.at(float(t)).severity for t in np.ravel(t_s)]).reshape(
            np.shape(t_s))

    def to_dict(self) -> dict[str, Any]:
        """Parameters and stage start times, JSON-ready (the ground truth of a run)."""
        return {**asdict(self), "stage_starts_s": self.stage_starts_s}


def wear_floor(condition: str, severity: float) -> float:
    """Lubrication severity a severe bearing fault adds (0 for other conditions or ≤ 1)."""
    if condition not in _BEARING or severity <= 1.0:
        return 0.0
    return WEAR_FLOOR_PER_SEVERITY * (severity - 1.0)


def wear_velocity(condition: str, severity: float) -> float:
    """Low-frequency velocity (mm/s RMS, ISO band) of a worn bearing: 0 before the developed
    stage, then WEAR_VELOCITY_MM_S per unit severity above DEVELOPED_START (bearing faults
    and lubrication; 0 for shaft faults, which raise velocity by their own lines).

    Why: a spall large enough for the rolling elements to drop into it (developed stage)
    gives a step at each entry whose energy is at low frequency, and the material it
    sheds wears the races and opens the clearance, so 1× and a random low-frequency
    "haystack" grow with the damage (docs/simulator.md).
    """
    if condition not in _WEARING or severity <= DEVELOPED_START:
        return 0.0
    return WEAR_VELOCITY_MM_S * (severity - DEVELOPED_START)


@functools.lru_cache(maxsize=64)
def _curve(condition: str, orders: tuple[float, float, float, float], shaft_hz: float,
           fs_hz: float, n_samples: int, severities: tuple[float, ...], load: float,
           windows: int, seed: int, extras: tuple[tuple[str, float], ...]
           ) -> tuple[float, ...]:
    from ballpass.models.bearing import DefectOrders
    from ballpass.models.iso20816 import velocity_band_hz
    from ballpass.simulators.signals import synthesize, velocity_rms_mm_s

    o = DefectOrders(*orders)
    band = velocity_band_hz(shaft_hz)  # the stream's band: wider on slow shafts
    out = []
    for sev in severities:
        # The same random draws at every severity: a smooth, monotone curve.
        rng = np.random.default_rng([seed, 0x5E1])
        v = [velocity_rms_mm_s(synthesize(
            condition, o, shaft_hz, fs_hz, n_samples, severity=sev, rng=rng, load=load,
            hf_extra=wear_floor(condition, sev), wear_mm_s=wear_velocity(condition, sev),
            **dict(extras)),  # type: ignore[arg-type]  # extras: synthesize's float options
            fs_hz, *band) for _ in range(windows)]
        out.append(float(np.median(v)))
    return tuple(out)


def velocity_curve(condition: str, orders: Any, shaft_hz: float, fs_hz: float,
                   n_samples: int, severities: np.ndarray, *, load: float = 1.0,
                   windows: int = 8, seed: int = 0,
                   extras: dict[str, Any] | None = None) -> np.ndarray:
    """Median velocity RMS (mm/s, in the ISO 20816 band for `shaft_hz` as the stream measures
    it, `iso20816.velocity_band_hz`: 10-1000 Hz at 600 r/min and above) of
    `windows` simulated windows of `condition` at each severity, with the wear the
    simulated driver adds (`wear_floor`, `wear_velocity`) and the machine's `extras`
    (`synthesize` keywords: looseness, gear_teeth, gear_wear, noise_g). Deterministic
    for `seed`."""
    key = tuple(float(getattr(orders, k)) for k in ("bpfo", "bpfi", "bsf", "ftf"))
    return np.array(_curve(condition, key, float(shaft_hz), float(fs_hz), int(n_samples),
                           tuple(float(s) for s in severities), float(load), int(windows),
                           int(seed), tuple(sorted((extras or {}).items()))))


def zone_crossings_s(trajectory: Trajectory, orders: Any, shaft_hz: float, fs_hz: float,
                     n_samples: int, boundaries_mm_s: dict[str, float], *,
                     load: float = 1.0, step: float = 0.1,
                     extras: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The true times (simulated s) at which the simulated machine's velocity RMS
    (the stream's band for `shaft_hz`) first reaches each boundary (e.g. {"C": 2.8,
    "D": 4.5} mm/s), at the asset's nominal speed `shaft_hz` and `load` (machine `extras`
    as in `velocity_curve`): the velocity is measured on simulated windows
    (`velocity_curve`) on a severity grid of `step`, the crossing severity interpolated
    and turned into a time on the trajectory. None: not before failure."""
    top = trajectory.max_severity
    grid = np.arange(0.0, math.ceil(top / step) * step + step / 2, step)
    vel = velocity_curve(trajectory.condition, orders, shaft_hz, fs_hz, n_samples, grid,
                         load=load, extras=extras)
    vel = np.maximum.accumulate(vel)  # the first crossing: measurement noise never undoes it
    out: dict[str, float | None] = {}
    for name, b in boundaries_mm_s.items():
        k = int(np.argmax(vel >= b)) if np.any(vel >= b) else -1
        if k < 0:
            out[name] = None
            continue
        if k == 0:
            out[name] = 0.0
            continue
        sev = grid[k - 1] + (b - vel[k - 1]) / (vel[k] - vel[k - 1]) * (grid[k] - grid[k - 1])
        out[name] = trajectory.time_of(float(sev)) if sev <= top else None
    return out


def random_trajectory(seed: int, horizon_s: float, *, condition: str | None = None,
                      conditions: tuple[str, ...] = FAULT_CONDITIONS) -> Trajectory:
    """A trajectory drawn from `seed` that fails around the end of `horizon_s` (s).

    Onset between 10 % and 50 % of the horizon; the rest of the life is split between
    the stages in random proportions around 40/40/20 %, with ±20 % spread on its length,
    so machines fail between 80 % and 120 % of the horizon. `condition` fixes
    the fault; otherwise it is drawn from `conditions`.
    """
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ValueError(f"horizon_s: must be a finite number > 0, got {horizon_s!r}")
    rng = np.random.default_rng([seed, 0x7A1])
    cond = condition if condition is not None else str(rng.choice(conditions))
    onset = float(horizon_s * rng.uniform(0.1, 0.5))
    life = float((horizon_s - onset) * rng.uniform(0.8, 1.2))
    shares = [float(s) for s in rng.dirichlet([8.0, 8.0, 4.0])]
    return Trajectory(cond, onset, life * shares[0], life * shares[1], life * shares[2],
                      max_severity=float(rng.uniform(2.0, 3.0)))


# --- operating profiles ----------------------------------------------------------------


#: Batch cycle of a reactor: (phase, share of the cycle, speed factor, load factor).
BATCH_PHASES = (("charge", 0.2, 0.6, 0.4), ("react", 0.55, 1.0, 1.0),
                ("discharge", 0.25, 0.8, 0.6))


@dataclass(frozen=True)
class OperatingProfile:
    """Speed and load of a machine over simulated time.

    `kind`: "steady" (speed 1, load 1) or "batch" (a reactor's cycle of `cycle_s`
    seconds through `BATCH_PHASES`, shifted by `offset_s`). Factors multiply the asset's
    nominal shaft speed and the fault/temperature response to load.
    """

    kind: str = "steady"
    cycle_s: float = 4 * 3600.0
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("steady", "batch"):
            raise ValueError(f"profile: must be 'steady' or 'batch', got {self.kind!r}")
        if not (math.isfinite(self.cycle_s) and self.cycle_s > 0):
            raise ValueError(f"cycle_s: must be a finite number > 0, got {self.cycle_s!r}")

    @property
    def max_speed(self) -> float:
        """The largest speed factor this profile reaches."""
        return 1.0 if self.kind == "steady" else max(p[2] for p in BATCH_PHASES)

    def at(self, t_s: float) -> tuple[str, float, float]:
        """(phase name, speed factor, load factor) at simulated time `t_s` (s)."""
        if self.kind == "steady":
            return "steady", 1.0, 1.0
        u = math.fmod((t_s + self.offset_s) / self.cycle_s, 1.0)
        if u < 0:
            u += 1.0
        edge = 0.0
        for name, share, speed, load in BATCH_PHASES:
            edge += share
            if u < edge:
                return name, speed, load
        name, _, speed, load = BATCH_PHASES[-1]
        return name, speed, load


def random_profile(seed: int, kind: str = "batch") -> OperatingProfile:
    """A profile whose cycle length (3–6 h) and phase depend on `seed`."""
    rng = np.random.default_rng([seed, 0xB47C])
    cycle = float(rng.uniform(3.0, 6.0)) * 3600.0
    return OperatingProfile(kind, cycle, float(rng.uniform(0.0, cycle)))


def seed_for(*parts: str | int) -> int:
    """A stable seed (crc32) from names and numbers, e.g. seed_for(7, "r01-pump")."""
    return zlib.crc32("/".join(str(p) for p in parts).encode("utf-8"))
