"""Machine conditions the simulator can produce, described as data.

One frozen `Condition` per class name of the diagnosis contract (ARCHITECTURE.md §5).
Every amplitude the signal model uses lives here, so that a reader (or the stream's
author) sees in one table what "severity 1.0" means for each fault:

- bearing faults: the RMS (g) of the impact response alone at severity 1.0, chosen from
  the CWRU drive-end records at ~30 Hz shaft speed (0.007" outer race ≈ 0.6 g total,
  inner race ≈ 0.3 g; a ball 0.075 g on average: its defect is on the contact track only
  part of the time, where it strikes as hard as a steady 0.18 g train would, see
  `signals.BALL_TRACK_HALF_WIDTH`);
- shaft faults: the RMS velocity (mm/s) of the 1×, 2× and 3× shaft-rate lines, so that
  a severity-1.0 imbalance or misalignment lands in ISO 20816 zone C/D regardless of speed;
- lubrication: the RMS (g) of the broadband high-frequency floor it adds;
- temperature: the steady rise (°C) of the bearing housing above the healthy level.

Amplitudes scale linearly with severity (severity 0.0 is a healthy machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from ballpass.models.bearing import DefectOrders

#: Conditions in the order of the diagnosis contract (without the stream-only classes).
CONDITION_NAMES = (
    "normal", "outer_race", "inner_race", "ball", "cage",
    "imbalance", "misalignment", "lubrication",
)


@dataclass(frozen=True)
class Condition:
    """What one condition adds to a healthy machine at severity 1.0.

    `line`: the defect line of a bearing fault ("bpfo", "bpfi", "2bsf", "ftf") or None;
    `modulation`: load-zone amplitude modulation of the impacts: "none" (stationary
    defect), "shaft" (defect turns with the shaft) or "cage" (defect travels with the cage);
    `impact_rms_g`: RMS of the impact response (g); `shaft_mm_s`: added RMS velocity of
    the 1×, 2×, 3× shaft lines (mm/s); `hf_rms_g`: RMS of the added high-frequency
    floor (g); `temp_rise_c`: added bearing temperature (°C).
    """

    name: str
    line: str | None = None
    modulation: str = "none"
    impact_rms_g: float = 0.0
    shaft_mm_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hf_rms_g: float = 0.0
    temp_rise_c: float = 0.0


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("normal"),
        Condition("outer_race", line="bpfo", modulation="none", impact_rms_g=0.55,
                  temp_rise_c=6.0),
        Condition("inner_race", line="bpfi", modulation="shaft", impact_rms_g=0.30,
                  temp_rise_c=8.0),
        Condition("ball", line="2bsf", modulation="cage", impact_rms_g=0.075, temp_rise_c=6.0),
        Condition("cage", line="ftf", modulation="none", impact_rms_g=0.08, temp_rise_c=4.0),
        Condition("imbalance", shaft_mm_s=(4.5, 0.0, 0.0), temp_rise_c=2.0),
        Condition("misalignment", shaft_mm_s=(2.0, 4.0, 1.2), temp_rise_c=4.0),
        Condition("lubrication", hf_rms_g=0.15, temp_rise_c=12.0),
    )
}
assert tuple(CONDITIONS) == CONDITION_NAMES

#: Every machine: residual imbalance and a little misalignment (mm/s RMS at 1×, 2×, 3×),
#: well inside ISO 20816 zone A.
HEALTHY_SHAFT_MM_S = (0.8, 0.3, 0.1)
#: Every machine: broadband Gaussian vibration of the structure (g RMS), mostly 150 Hz–2.5 kHz
#: with a share exciting the structural resonances (so they show as humps in the spectrum).
HEALTHY_MACHINE_RMS_G = 0.06
HEALTHY_RESONANCE_SHARE = 0.25
#: Default white measurement noise of the sensor chain (g RMS over 0..fs/2).
DEFAULT_NOISE_G = 0.02
#: Healthy bearing housing temperature (°C) and its burst-to-burst wander (°C, 1 σ).
HEALTHY_TEMP_C = 40.0
TEMP_WANDER_C = 0.3
TEMP_NOISE_C = 0.02


def line_order(condition: Condition, orders: DefectOrders) -> tuple[str, float]:
    """The line that must lie below Nyquist for `condition`, as (name, order of shaft rate).

    Bearing faults: their defect line (a ball defect strikes both races, so 2×BSF);
    misalignment: 2×; everything else: the 1× shaft line.
    """
    if condition.line == "bpfo":
        return "BPFO", orders.bpfo
    if condition.line == "bpfi":
        return "BPFI", orders.bpfi
    if condition.line == "2bsf":
        return "2×BSF", 2.0 * orders.bsf
    if condition.line == "ftf":
        return "FTF", orders.ftf
    if condition.name == "misalignment":
        return "2× shaft", 2.0
    return "1× shaft", 1.0

#: Mechanical looseness at severity 1.0: velocity (mm/s RMS) of each shaft harmonic
#: 2×..10× is LOOSENESS_MM_S / sqrt(h), 1× gains LOOSENESS_1X_MM_S, and the half orders
#: 0.5×, 1.5×, … (a loose part that rattles every other turn) carry LOOSENESS_HALF of it.
LOOSENESS_MM_S = 2.0
LOOSENESS_1X_MM_S = 1.5
LOOSENESS_HARMONICS = 10
LOOSENESS_HALF = 0.3
#: Gear mesh (when a gearbox's tooth count is set): acceleration (g RMS) of the mesh
#: frequency (teeth × shaft) and its 2nd and 3rd harmonics; each carries sidebands at
#: ±1, ±2, ±3 × shaft, relative to its own amplitude: healthy GEAR_SIDEBAND, plus
#: GEAR_SIDEBAND_WEAR per unit of wear (eccentric or worn gear), decaying by GEAR_SIDEBAND_DECAY
#: per order of sideband.
GEAR_MESH_G = (0.08, 0.04, 0.02)
GEAR_SIDEBAND = 0.05
GEAR_SIDEBAND_WEAR = 0.35
GEAR_SIDEBAND_DECAY = 0.6
#: Thermal time constant (s) of a bearing housing: it takes about 3 τ to settle.
THERMAL_TAU_S = 1800.0
#: Housing temperature rise (°C) at full load (the rest of 40 °C is ambient + friction).
LOAD_TEMP_RISE_C = 8.0
#: Late bearing damage (developed and severe stages, `degradation.wear_velocity`): the
#: low-frequency vibration a spalled, worn bearing adds, as velocity (mm/s RMS in the ISO
#: 10-1000 Hz band). WEAR_1X_SHARE of its power is a 1× line (clearance lets the shaft
#: orbit grow), in quadrature with the residual 1× so powers add; the rest is a random
#: "haystack" between WEAR_BAND_ORDERS × shaft (spall entry steps, rolling over debris,
#: rattling in the grown clearance), flat in velocity with 4th-order skirts.
WEAR_1X_SHARE = 0.2
WEAR_BAND_ORDERS = (2.0, 12.0)
