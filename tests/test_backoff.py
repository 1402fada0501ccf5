"""ballpass.backoff: the retry delay of every reconnect and retry loop."""

from __future__ import annotations

from ballpass import backoff


def test_delay_doubles_up_to_the_cap() -> None:
    assert [backoff.delay_s(n, 0.5, 30.0) for n in range(1, 9)] == \
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_days_of_failures_still_give_the_cap() -> None:
    # An unbounded 2**(attempt - 1) overflows float after ~1024 attempts (hours of a
    # broker outage at a 30 s cap) and would kill the retrying thread.
    assert backoff.delay_s(100_000, 0.5, 30.0) == 30.0
    assert 15.0 <= backoff.jittered_s(100_000, 0.5, 30.0) <= 30.0


def test_jitter_stays_within_half_to_full_delay() -> None:
    delays = [backoff.jittered_s(3, 0.5, 30.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert max(delays) - min(delays) > 0.1  # it does spread
