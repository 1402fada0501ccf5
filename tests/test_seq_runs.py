"""SeqRuns (stream/seq_runs.py) against a plain set with the same rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ballpass.stream.alerts import INCLUDED_SEQS, AlertPolicy, AlertTracker
from ballpass.stream.seq_runs import SeqRuns


def _reference(seqs: list[int], limit: int) -> set[int]:
    kept: set[int] = set()
    for seq in seqs:
        if seq in kept:
            continue
        if len(kept) >= limit and seq < min(kept):
            kept = set()  # the gateway's seqs started again
        kept.add(seq)
        while len(kept) > limit:
            kept.remove(min(kept))
    return kept


@given(st.lists(st.integers(0, 60), max_size=120), st.integers(1, 40))
def test_seq_runs_hold_what_a_set_with_the_same_rules_holds(seqs: list[int],
                                                             limit: int) -> None:
    runs = SeqRuns(limit)
    for seq in seqs:
        runs.add(seq)
    want = _reference(seqs, limit)
    assert {s for s in range(-1, 62) if s in runs} == want
    assert len(runs) == len(want)
    again = SeqRuns(limit, runs.as_json())
    assert {s for s in range(-1, 62) if s in again} == want
    firsts = [a for a, _ in runs.as_json()]
    assert firsts == sorted(firsts)


def test_consecutive_seqs_are_one_run_and_the_oldest_go_first() -> None:
    runs = SeqRuns(1024)
    for seq in range(10_000, 12_000):
        runs.add(seq)
    assert runs.as_json() == [[12_000 - 1024, 11_999]]
    assert 10_975 not in runs and 10_976 in runs


@pytest.mark.parametrize("runs", [[[5, 3]], [[1, 4], [5, 6]], [[7, 9], [1, 2]]])
def test_runs_that_are_not_ascending_and_disjoint_are_refused(runs: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="seq runs"):
        SeqRuns(10, runs)


def test_a_low_seq_of_an_older_window_does_not_wipe_the_memory() -> None:
    """Before: one low seq wiped a full memory ([[1000, 2023]] + 5 -> [[5, 5]]), and the
    windows it held counted twice when they came back as replays after a crash."""
    runs = SeqRuns(1024, [[1000, 2023]])
    runs.add(5, newest=False)
    assert runs.as_json() == [[1000, 2023]] and 1000 in runs
    # Seqs that started again, of windows captured after all those remembered: the new
    # outbox's, remembered from then on.
    runs.add(5, newest=True)
    assert runs.as_json() == [[5, 5]]


def test_the_alert_state_keeps_its_seqs_when_an_older_window_brings_a_low_one(tmp_path) -> None:
    """The alert state records each window it took in; a low seq of an older window (a
    forged or replayed one) must not make it forget the windows not yet acknowledged."""
    tracker = AlertTracker(AlertPolicy(3, 1, 5), path=tmp_path / "alerts.json")
    t0 = 10**18
    for i in range(INCLUDED_SEQS):
        tracker.include("s1", 1000 + i, t0 + i)
    tracker.include("s1", 5, t0 - 1)
    assert tracker.includes("s1", 2000, t0 + 1000)
