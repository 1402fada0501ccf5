"""Faults of the sensor chain, applied to a clean burst (numpy only).

What a broken accelerometer, cable or acquisition board does to a burst:

- `saturation`: the amplifier rails (a bias shift or a too-small range): the signal is
  clipped at a level well inside its peaks, asymmetrically; the burst is flagged clipped;
- `flatline`: the sensor output is stuck at a constant (a dead ICP supply or a broken
  element): zero variance;
- `spikes`: electrical interference: a few single-sample spikes of 20–60 g;
- `dropouts`: lost samples zero-filled by the acquisition: a few runs of zeros, each
  0.5–3 % of the burst;
- `disconnect`: the device does not answer: the driver raises `SensorFault`, the
  gateway reports the sensor as faulty on its status topic and retries.
"""

from __future__ import annotations

import numpy as np

SENSOR_FAULTS = ("saturation", "flatline", "spikes", "dropouts", "disconnect")


def apply(kind: str, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Return (samples, clipped) after sensor fault `kind` (not `disconnect`) on `x` (g).

    `x` is not modified; the result is a new float64 array of the same shape.
    """
    y = np.array(x, dtype=np.float64, copy=True)
    n = y.size
    if kind == "saturation":
        # A shifted bias rails the amplifier on one side first.
        peak = float(np.max(np.abs(y))) or 1.0
        hi, lo = 0.35 * peak, -0.6 * peak
        np.clip(y, lo, hi, out=y)
        return y, True
    if kind == "flatline":
        y[:] = float(rng.uniform(-0.05, 0.05))
        return y, False
    if kind == "spikes":
        count = int(rng.integers(2, 8))
        where = rng.integers(0, n, count)
        y[where] += rng.choice([-1.0, 1.0], count) * rng.uniform(20.0, 60.0, count)
        return y, False
    if kind == "dropouts":
        for _ in range(int(rng.integers(1, 4))):
            length = max(1, int(n * rng.uniform(0.005, 0.03)))
            start = int(rng.integers(0, max(1, n - length)))
            y[start:start + length] = 0.0
        return y, False
    raise ValueError(f"sensor fault: must be one of {', '.join(SENSOR_FAULTS[:-1])} here, "
                     f"got {kind!r}")
