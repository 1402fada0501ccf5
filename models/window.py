"""The default window length: shaft revolutions, not a fixed number of samples.

A window is diagnosable when it spans at least `MIN_REVOLUTIONS` shaft revolutions (the
diagnosis's own rule, `stream.thresholds.MIN_REVOLUTIONS`: two cage cycles) and its bin
spacing fs/N is fine enough for ±1× shaft sidebands (at most 1/4 of the shaft rate, which
5 revolutions already give). A fixed default in samples fails one of the two on some
machine: 8192 samples are 20 revolutions at 12 kHz and 1800 r/min but 4.2 at 48.8 kHz and
1500 r/min, and 0.17 at 60 r/min.

`default_window_samples(fs_hz, shaft_hz)` is the one rule every place that chooses a window
uses (evaluation specs, the site config, the simulator): the smallest power of two
spanning `TARGET_REVOLUTIONS` revolutions (a margin of 4x over the minimum: ±1× sidebands
20 bins or more from their carrier, the cage line 8 bins or more above DC, and several
ball-pass trains per window), at least `MIN_SAMPLES`. Powers of two keep the FFTs of the
stream's kernels fast at any size. The result is capped at `MAX_WINDOW_SAMPLES`, the
largest window the site config, the wire and the broker take (`ballpass.config`, 2**22
samples: 8 MiB per channel as int16, 16 MiB as float32, 3 channels of float32 within
mosquitto's 48 MiB `max_packet_size`); when the target does not fit, the smallest power
of two with `MIN_REVOLUTIONS` revolutions is used, and when even that does not fit, the
cap (the diagnosis then says `insufficient_data`, with the revolutions it got).
"""

from __future__ import annotations

import math

TARGET_REVOLUTIONS: float = 20.0
"""Revolutions a default window aims at (4x the diagnosis's minimum)."""

MIN_REVOLUTIONS: float = 5.0
"""Revolutions the diagnosis needs (the same value as `stream.thresholds.MIN_REVOLUTIONS`;
a test checks they agree: models may not import the stream)."""

MIN_SAMPLES: int = 4096
"""Shortest default window: the fast kurtogram needs a few levels of bands, and the
spectra enough bins for their local floors, on fast shafts."""

MAX_WINDOW_SAMPLES: int = 1 << 22
"""Longest window anywhere (site config, remote config, wire): 4 194 304 samples."""


def _pow2_at_least(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1.0))))


def default_window_samples(fs_hz: float, shaft_hz: float,
                           cap: int = MAX_WINDOW_SAMPLES) -> tuple[int, str]:
    """The default window (samples) at sample rate `fs_hz` (Hz) for a shaft turning at
    `shaft_hz` (Hz), and a one-line reason naming the revolutions and resolution it gives.

    Raises ValueError when either rate is not finite and > 0, or `cap` < 16.
    """
    fs, shaft = float(fs_hz), float(shaft_hz)
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"fs_hz: must be finite and > 0, got {fs_hz!r}")
    if not (math.isfinite(shaft) and shaft > 0):
        raise ValueError(f"shaft_hz: must be finite and > 0, got {shaft_hz!r}")
    if cap < 16:
        raise ValueError(f"cap: must be >= 16, got {cap!r}")
    per_rev = fs / shaft  # samples per revolution
    n = max(_pow2_at_least(TARGET_REVOLUTIONS * per_rev), MIN_SAMPLES)
    why = f">= {TARGET_REVOLUTIONS:g} revolutions"
    if n > cap:
        n = _pow2_at_least(MIN_REVOLUTIONS * per_rev)
        why = (f">= {MIN_REVOLUTIONS:g} revolutions (the {TARGET_REVOLUTIONS:g} aimed at "
               f"exceed the {cap}-sample cap)")
        if n > cap:
            n = cap
            why = (f"capped at {cap} samples: fewer than the {MIN_REVOLUTIONS:g} revolutions "
                   "the diagnosis needs")
    elif n == MIN_SAMPLES and TARGET_REVOLUTIONS * per_rev < MIN_SAMPLES / 2:
        why = f"the {MIN_SAMPLES}-sample minimum"
    revs = n / per_rev
    reason = (f"window {n} samples = {n / fs:.3g} s = {revs:.1f} revolutions at "
              f"{shaft:g} Hz shaft, resolution {fs / n:.3g} Hz ({revs:.0f} bins per shaft "
              f"order) at fs {fs:g} Hz: {why}")
    return n, reason
