"""Deduplicator: a window is seen once marked, per source, for the last `horizon` seqs."""

from __future__ import annotations

from ballpass.stream.dedup import Deduplicator

A = ("s", "g1", "a")


def test_seen_only_after_mark_and_per_source() -> None:
    d = Deduplicator()
    assert not d.seen(A, 1)
    d.mark(A, 1)
    assert d.seen(A, 1) and not d.seen(("s", "g1", "b"), 1) and not d.seen(A, 2)
    # The same sensor id and seq from another gateway is another window.
    assert not d.seen(("s", "g2", "a"), 1)


def test_the_oldest_marked_is_forgotten_past_the_horizon() -> None:
    d = Deduplicator(horizon=3)
    for seq in (5, 1, 9):
        d.mark(A, seq)
    d.mark(A, 1)  # marked again: neither refreshed nor counted twice
    d.mark(A, 7)
    assert [d.seen(A, s) for s in (5, 1, 9, 7)] == [False, True, True, True]
    d.mark(A, 8)
    assert [d.seen(A, s) for s in (1, 9, 7, 8)] == [False, True, True, True]
