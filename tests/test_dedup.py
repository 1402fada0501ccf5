"""Deduplicator: a window is seen once marked, per sensor, for the last `horizon` seqs."""

from __future__ import annotations

from ballpass.stream.dedup import Deduplicator


def test_seen_only_after_mark_and_per_sensor() -> None:
    d = Deduplicator()
    assert not d.seen("a", 1)
    d.mark("a", 1)
    assert d.seen("a", 1) and not d.seen("b", 1) and not d.seen("a", 2)


def test_the_oldest_marked_is_forgotten_past_the_horizon() -> None:
    d = Deduplicator(horizon=3)
    for seq in (5, 1, 9):
        d.mark("a", seq)
    d.mark("a", 1)  # marked again: neither refreshed nor counted twice
    d.mark("a", 7)
    assert [d.seen("a", s) for s in (5, 1, 9, 7)] == [False, True, True, True]
    d.mark("a", 8)
    assert [d.seen("a", s) for s in (1, 9, 7, 8)] == [False, True, True, True]
