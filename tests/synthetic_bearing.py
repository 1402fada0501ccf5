"""Synthetic vibration made in the tests: healthy machines and local bearing defects.

A local defect strikes once per pass of a rolling element; each strike rings a structural
resonance that decays in about a millisecond (McFadden & Smith 1984; Randall & Antoni 2011,
fig. 3). Strike times jitter by a fraction of a percent because the elements slip.
"""

from __future__ import annotations

import numpy as np

FS = 25600.0
N = 16384
SHAFT = 25.0


def healthy(
    rng: np.random.Generator,
    n: int = N,
    fs: float = FS,
    shaft: float = SHAFT,
    x1_g: float = 0.02,
    noise_g: float = 0.05,
) -> np.ndarray:
    """1× shaft sinusoid (random phase) plus white gaussian noise, in g."""
    t = np.arange(n) / fs
    return x1_g * np.sin(2 * np.pi * shaft * t + rng.uniform(0, 2 * np.pi)) + noise_g * (
        rng.standard_normal(n)
    )


def impacts(
    rng: np.random.Generator,
    rate_hz: float,
    amp_g: float,
    n: int = N,
    fs: float = FS,
    resonance_hz: float = 3500.0,
    decay_s: float = 0.0008,
    modulation: tuple[float, float] | None = None,
    jitter: float = 0.005,
) -> np.ndarray:
    """A train of decaying resonances at `rate_hz` (g).

    `modulation` = (frequency Hz, depth): strike amplitudes follow
    1 + depth·cos(2π f t), e.g. an inner-race defect carried through the load zone
    once per shaft turn.
    """
    x = np.zeros(n)
    period = 1.0 / rate_hz
    ring_n = int(8 * decay_s * fs)
    tr = np.arange(ring_n) / fs
    ring = np.exp(-tr / decay_s) * np.sin(2 * np.pi * resonance_hz * tr)
    t = rng.uniform(0, period)
    while t < n / fs:
        a = amp_g
        if modulation is not None:
            a *= 1.0 + modulation[1] * np.cos(2 * np.pi * modulation[0] * t)
        k = round(t * fs)
        m = min(ring_n, n - k)
        x[k : k + m] += a * ring[:m]
        t += period * (1.0 + jitter * rng.standard_normal())
    return x
