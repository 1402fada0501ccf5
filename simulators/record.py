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
