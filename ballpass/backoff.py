"""Retry delays: capped exponential backoff, one definition for every retry loop."""

from __future__ import annotations

import random

# 2**62 s is past any cap; bounding the exponent keeps `initial_s * 2**n` a float (an
# unbounded one raises OverflowError after ~1024 consecutive failures: hours of outage).
_MAX_DOUBLINGS = 62


def delay_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Delay before retry `attempt` (1 = first retry), s: `initial_s` doubled per failed
    attempt, at most `max_s`."""
    return min(max_s, initial_s * 2 ** min(attempt - 1, _MAX_DOUBLINGS))


def jittered_s(attempt: int, initial_s: float, max_s: float) -> float:
    """`delay_s` scaled by a random factor in [0.5, 1), s, so that clients which failed
    together (gateways of a site after a broker restart) do not retry together."""
    return random.uniform(0.5, 1.0) * delay_s(attempt, initial_s, max_s)
