"""`ballpass simulate record`: one simulated recording as an .npz file.

The file holds `signal` (acceleration in g, float64) and its metadata as scalar arrays
(`fs_hz`, `shaft_hz`, `fault`, `bearing`, `severity`, `seed`), so any tool can read it
with `numpy.load`. The same metadata, with the bearing's geometry and defect frequencies,
is written beside it as JSON (`FILE.json` for `FILE.npz`) for tools that do not read npz.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ballpass.models.catalog import lookup
from ballpass.models.window import default_window_samples
from ballpass.simulators.signals import synthesize, validate

# Windows synthesised per call: long enough for fine envelope-spectrum lines, short
# enough that impact timing restarts often (each call is an independent burst). A slow
# shaft gets longer bursts: at least the default window of its speed
# (`models.window.default_window_samples`), so a window cut at that length holds one burst.
_CHUNK_S = 2.0


def write_record(out: Path, fault: str, bearing: str, shaft_hz: float, fs_hz: float,
                 seconds: float, seed: int, severity: float = 1.0) -> Path:
    """Write a recording of `seconds` s at `fs_hz` Hz of a machine with `fault`.

    Every argument is checked before anything is written (ValueError/KeyError naming it).
    """
    geometry = lookup(bearing)
    orders = geometry.orders()
    validate(fault, orders, shaft_hz, fs_hz, severity)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds: must be > 0, got {seconds}")
    n_total = round(seconds * fs_hz)
    if n_total < 16:
        raise ValueError(f"seconds: {seconds} s at {fs_hz} Hz gives {n_total} samples, need 16")
    rng = np.random.default_rng(seed)
    chunk = max(16, int(_CHUNK_S * fs_hz), default_window_samples(fs_hz, shaft_hz)[0])
    parts = []
    for start in range(0, n_total, chunk):
        n = min(chunk, n_total - start)
        parts.append(synthesize(fault, orders, shaft_hz, fs_hz, n, severity=severity,
                                rng=rng, t0_s=start / fs_hz))
    signal = np.concatenate(parts)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, signal=signal, fs_hz=fs_hz, shaft_hz=shaft_hz,
                        fault=fault, bearing=geometry.name, severity=severity, seed=seed)
    freqs = geometry.defect_frequencies(shaft_hz)
    meta = {"signal": {"file": out.name, "array": "signal", "unit": "g",
                       "n_samples": int(signal.size)},
            "fs_hz": fs_hz, "shaft_hz": shaft_hz, "seconds": seconds, "fault": fault,
            "severity": severity, "seed": seed, "bearing": geometry.name,
            "geometry": {"n_elements": geometry.n_elements,
                         "element_diameter": geometry.element_diameter,
                         "pitch_diameter": geometry.pitch_diameter,
                         "contact_angle_deg": geometry.contact_angle_deg},
            "defect_hz": {"bpfo": freqs.bpfo, "bpfi": freqs.bpfi, "bsf": freqs.bsf,
                          "ftf": freqs.ftf}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


AGITATOR_SHAFTS_HZ: tuple[float, ...] = (1.0, 1.5, 2.0)
"""Shaft rates of the simulated agitator scenario: 60, 90 and 120 r/min (reactor
agitators, gearbox output shafts)."""

REFERENCE_SHAFTS_HZ: tuple[float, ...] = (25.0,)
"""The same machines at 1500 r/min, the speed the scenario is compared against."""

SCENARIO_FAULTS: tuple[str, ...] = (
    "normal", "outer_race", "inner_race", "ball", "imbalance", "misalignment",
)
"""The fault set of the speed scenarios. Cage and lubrication are left out: the diagnosis
misses them at 1500 r/min as well (EVALUATION.md), so they would measure nothing about
speed."""


def write_speed_spec(out_dir: Path, shafts_hz: tuple[float, ...] = AGITATOR_SHAFTS_HZ,
                     faults: tuple[str, ...] = SCENARIO_FAULTS, *, fs_hz: float = 25600.0,
                     bearing: str = "SKF 6205", windows: int = 3, seed: int = 0,
                     group: str = "agitator") -> Path:
    """Write one recording per (shaft rate, fault) and an evaluation spec listing them
    (`out_dir/spec.toml`, for `ballpass evaluate`); return the spec's path.

    Each recording holds `windows` default windows (`models.window`) and no `window` key,
    so the evaluation chooses the window from the rate and the speed, as for a user's
    recording. Seeds differ per recording (`seed` + its index).
    """
    if windows < 1:
        raise ValueError(f"windows: must be >= 1, got {windows!r}")
    out_dir = Path(out_dir)
    lines = [f"# Simulated {group} scenario: {', '.join(f'{s * 60:g}' for s in shafts_hz)} "
             f"r/min, {bearing}, fs {fs_hz:g} Hz. Written by ballpass.simulators.record.", ""]
    k = 0
    for shaft in shafts_hz:
        n, _ = default_window_samples(fs_hz, shaft)
        for fault in faults:
            name = f"{group}-{shaft * 60:g}rpm-{fault}.npz"
            write_record(out_dir / name, fault, bearing, shaft, fs_hz,
                         (windows * n + 1) / fs_hz, seed + k)
            k += 1
            lines += ["[[recording]]", f'path = "{name}"', 'key = "signal"',
                      f"fs_hz = {fs_hz:g}", f"shaft_hz = {shaft:g}", f'label = "{fault}"',
                      f'bearing = "{bearing}"', f'group = "{shaft * 60:g} r/min"', ""]
    spec = out_dir / "spec.toml"
    spec.write_text("\n".join(lines), encoding="utf-8")
    return spec
