"""The alert state machine: hysteresis, per-asset policy, severity, operator actions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ballpass.config import AlertPolicy
from ballpass.stream import alerts
from ballpass.stream.alerts import AlertTracker, Held, severity


def test_k_of_n_to_enter_m_of_n_to_leave() -> None:
    a = AlertTracker(AlertPolicy(3, 1, 5))
    seq = ["outer_race", "normal", "outer_race", "outer_race"]
    out = [a.update("s", d, i) for i, d in enumerate(seq)]
    assert [t.status if t else None for t in out] == [None, None, None, "firing"]
    assert a.state("s") == "alarm"
    # Leaving needs at most 1 fault in 5 for 10 windows in a row.
    out = [a.update("s", "normal", 10 + i) for i in range(13)]
    assert [t.status if t else None for t in out].index("resolved") == 12
    assert a.state("s") == "normal"


def test_no_flapping_on_a_noisy_signal() -> None:
    rng = np.random.default_rng(0)
    a = AlertTracker(AlertPolicy(3, 1, 5))
    # A fault seen in 55 % of windows: once in alarm it stays there.
    transitions = [a.update("s", "ball" if rng.random() < 0.55 else "normal", i)
                   for i in range(2000)]
    fired = [t for t in transitions if t is not None]
    assert fired and fired[0].status == "firing"
    assert len(fired) <= 15, len(fired)


def test_policy_per_asset() -> None:
    a = AlertTracker(AlertPolicy(3, 1, 5), {"strict": AlertPolicy(5, 2, 8)})
    for i in range(4):
        a.update("strict", "imbalance", i)
        a.update("loose", "imbalance", i)
    assert a.state("loose") == "alarm" and a.state("strict") == "watch"
    t = a.update("strict", "imbalance", 5)  # the 5th fault of 5: strict's enter_k
    assert t is not None and (t.sensor, t.status, t.kind, t.diagnosis) == (
        "strict", "firing", "machine", "imbalance"), t
    assert a.state("strict") == "alarm"


def test_severity_from_zone_class_and_trend() -> None:
    assert severity("unknown_anomaly", "A") == "low"
    assert severity("imbalance", "B") == "medium"
    assert severity("outer_race", "C") == "high"
    assert severity("lubrication", "C") == "medium"
    assert severity("unknown_anomaly", "B", days_to_zone_d=3.0) == "high"
    assert severity("anything", "D") == "high"


def test_ack_and_clear() -> None:
    a = AlertTracker(AlertPolicy(3, 1, 5))
    assert not a.acknowledge("s", "bob")
    for i in range(3):
        t = a.update("s", "inner_race", i, severity="medium")
    assert t is not None and t.severity == "medium"
    a.update("s", "inner_race", 4, severity="high")
    assert a.acknowledge("s", "bob") and a.sensors["s"].acknowledged_by == "bob"
    r = a.clear("s")
    assert r is not None and r.status == "resolved" and r.severity == "high"
    assert a.state("s") == "normal"
    # The same evidence must be seen again (k of n) before it fires again.
    assert a.update("s", "inner_race", 5) is None


def test_batch_saves_the_state_once_at_its_end(tmp_path: Path) -> None:
    """Inside `batch()` many sensors alarm and the file is written once, when the block
    ends, even when it ends by an error; a restarted tracker has every open alarm."""
    path = tmp_path / "alerts.json"
    a = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    saves = []
    real_save = a.save
    a.save = lambda: saves.append(1) or real_save()  # type: ignore[method-assign]
    with pytest.raises(RuntimeError), a.batch():
        for i in range(50):
            for t in range(3):
                a.update(f"s{i}", "outer_race", t)
        assert not path.exists() and not saves  # nobody was told yet: nothing to keep
        raise RuntimeError("the batch failed after the transitions")
    assert len(saves) == 1
    again = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    assert all(again.state(f"s{i}") == "alarm" for i in range(50))
    a.update("s0", "normal", 4)  # outside a batch: at once, as before
    assert len(saves) == 1  # no transition (3 of the last 5 still abnormal)
    assert a.clear("s1") is not None and len(saves) == 2


def test_the_state_keeps_the_seqs_it_took_in_and_the_alerts_not_yet_handed_on(
        tmp_path: Path) -> None:
    """Before: a window redelivered after a crash counted twice in the alarm window, and an
    alert made just before the crash was lost (its window comes back, but fires nothing)."""
    path = tmp_path / "alerts.json"
    a = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    firing = {"alert_id": "x1", "status": "firing", "kind": "machine", "sensor": "s"}
    with a.batch():
        for seq in (7, 8, 9):
            a.update("s", "outer_race", seq)
            a.include("s", seq, 1000 + seq)
        a.hold(firing, 9)
    again = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    assert [again.includes("s", q, 1000 + q) for q in (6, 7, 9, 10)] == [
        False, True, True, False]
    assert again.includes("s", 8, 2000) is False, "newer than all taken in: a new outbox"
    assert again.includes("other", 7, 1007) is False
    assert again.held == [Held(firing, 9)]
    assert list(again.sensors["s"].recent) == ["outer_race"] * 3

    again.hooked([{**firing, "summary": "rendered again"}])  # told apart by id, status, kind
    assert again.held == [Held(firing, 9, hooked=True)]
    again.sent([firing])
    assert again.held == []
    assert AlertTracker(AlertPolicy(3, 1, 5), path=path).held == [Held(firing, 9)], \
        "sent() saves nothing itself (it runs beside a batch in another thread)"
    with again.batch():
        again.include("s", 10, 1010)
    assert AlertTracker(AlertPolicy(3, 1, 5), path=path).held == [Held(firing, 9)], \
        "a batch without a transition is saved at most once a second"
    assert not again.save_due()
    again._saved_at -= alerts.SAVE_EVERY_S
    assert again.save_due(), "the stream's status loop saves it after a second"
    with again.batch():
        again.include("s", 11, 1011)
    reloaded = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    assert reloaded.held == [] and reloaded.includes("s", 11, 1011)


def test_a_state_file_of_before_the_seqs_loads_with_none_included(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    a = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    for t in range(3):
        a.update("s", "outer_race", t)  # fires: saved
    data = json.loads(path.read_text())
    del data["included"], data["held"]
    path.write_text(json.dumps(data))
    again = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    assert again.state("s") == "alarm" and again.held == []
    assert not again.includes("s", 0, 0)


def test_without_a_path_no_seq_or_alert_is_kept() -> None:
    """A cluster worker's state is saved elsewhere with the seqs it wrote (cluster/state.py):
    a window it gets again after a failed batch must count, not be a replay."""
    a = AlertTracker(AlertPolicy(3, 1, 5))
    a.include("s", 1, 1)
    a.hold({"alert_id": "x", "status": "firing", "kind": "machine", "sensor": "s"}, 1)
    assert not a.includes("s", 1, 1) and a.held == []


def test_two_saves_at_once_leave_one_whole_state(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a save left running in its thread (its task cancelled at a stop) and the
    final save wrote the same temporary file at once: a torn alerts.json, moved aside at
    the next start with every open alarm in it."""
    path = tmp_path / "alerts.json"
    a = AlertTracker(AlertPolicy(3, 1, 5), path=path)
    for i in range(200):
        a.include(f"s{i}", i, i)
    first = threading.Event()

    def slow_dump(data: object, f: Any, **kw: Any) -> None:
        text = json.dumps(data)
        f.write(text[: len(text) // 2])
        f.flush()
        if not first.is_set():
            first.set()
            time.sleep(0.3)  # the other save runs meanwhile
        f.write(text[len(text) // 2 :])

    monkeypatch.setattr(alerts.json, "dump", slow_dump)
    early = threading.Thread(target=a.save)
    early.start()
    assert first.wait(5)
    a.include("late", 1, 1)
    late = threading.Thread(target=a.save)
    late.start()
    early.join(5)
    late.join(5)
    assert "late" in json.loads(path.read_text())["included"]


def test_an_alert_state_the_disk_refuses_is_counted_and_shown(tmp_path: Path) -> None:
    """Before: only a log line; the firing went out, and a crash then forgot the alarm."""
    from ballpass.stream.health import assess

    blocked = tmp_path / "state"
    blocked.write_text("a file where the state dir should be")
    a = AlertTracker(AlertPolicy(1, 1, 1), path=blocked / "alerts.json")
    assert a.update("s", "outer_race", 1) is not None  # saved at once: refused
    assert a.save_failures == 1 and a.unsaved_since is not None
    health = assess(broker_connected=True, db_failing_since=None,
                    now=a.unsaved_since + 42, spool_bytes=0, deadletter_bytes=0,
                    webhooks_pending=0, alert_state_unsaved_since=a.unsaved_since)
    assert health.checks["alert_state"] == "not saved for 42 s" and health.ready
    blocked.unlink()
    assert a.save() and a.unsaved_since is None and a.save_failures == 1
    assert json.loads((blocked / "alerts.json").read_text())["machine"]["s"]
