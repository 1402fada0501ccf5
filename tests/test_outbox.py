"""The gateway outbox against a plain Python model, plus durability and bounds."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ballpass.gateway.outbox import COUNTERS, PLAUSIBLE_WALL_NS, Outbox

SENSORS = ("s1", "s2", "s3")
MAX_BYTES = 600
MAX_AGE_NS = 50_000


class OutboxModel(RuleBasedStateMachine):
    """Random put/peek/ack/release/reopen; the real outbox must agree with a list."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="outbox-")
        self.path = Path(self.dir) / "o.sqlite"
        self.box = self._open()
        self.rows: list[dict] = []  # oldest first
        self.inflight: set[int] = set()
        self.next_id = 1
        self.seqs: dict[str, int] = {}
        self.issued: dict[str, set[int]] = {s: set() for s in SENSORS}
        # A plausible wall clock in the past: rows dated before it (or ahead of the real
        # clock) would be re-dated at reopen, as an unset clock's are.
        self.now = PLAUSIBLE_WALL_NS + 1_000_000
        self.count = dict.fromkeys(COUNTERS, 0)

    def _open(self) -> Outbox:
        # NORMAL: the model reopens hundreds of times; durability is tested elsewhere.
        return Outbox(self.path, MAX_BYTES, MAX_AGE_NS / 1e9, seq_seed=100,
                      synchronous="NORMAL")

    @rule(sensor=st.sampled_from(SENSORS), size=st.integers(1, 250),
          advance=st.integers(0, 20_000))
    def put(self, sensor: str, size: int, advance: int) -> None:
        self.now += advance
        payload = os.urandom(size)
        seq = self.box.capture(sensor, f"t/{sensor}", lambda _: payload, created_ns=self.now)
        expected_seq = self.seqs.get(sensor, 100)
        assert seq == expected_seq
        assert seq not in self.issued[sensor]
        self.issued[sensor].add(seq)
        self.seqs[sensor] = seq + 1
        # model: age first, then oldest-first until the new payload fits; rows in flight
        # only go for room, and only after every other row
        cutoff = self.now - MAX_AGE_NS
        kept = [r for r in self.rows if r["created_ns"] >= cutoff or r["id"] in self.inflight]
        dropped = len(self.rows) - len(kept)
        for victim in sorted(kept, key=lambda r: r["id"] in self.inflight):
            if sum(r["size"] for r in kept) + size <= MAX_BYTES:
                break
            kept.remove(victim)
            dropped += 1
        self.rows = kept
        self.inflight &= {r["id"] for r in kept}
        self.rows.append(dict(id=self.next_id, sensor=sensor, seq=seq, payload=payload,
                              created_ns=self.now, size=size))
        self.next_id += 1
        self.count["captured"] += 1
        self.count["dropped"] += dropped

    @rule(limit=st.integers(0, 6))
    def peek(self, limit: int) -> None:
        got = self.box.peek(limit)
        want = [r for r in self.rows if r["id"] not in self.inflight][:limit]
        assert [e.id for e in got] == [r["id"] for r in want]
        for e, r in zip(got, want, strict=True):
            assert (e.sensor, e.seq, e.payload, e.created_ns, e.size) == (
                r["sensor"], r["seq"], r["payload"], r["created_ns"], r["size"])
        self.inflight |= {r["id"] for r in want}

    @precondition(lambda self: self.inflight)
    @rule(data=st.data(), extra=st.lists(st.integers(1, 400), max_size=2),
          as_replayed=st.booleans())
    def ack(self, data: st.DataObject, extra: list[int], as_replayed: bool) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.inflight)), unique=True,
                                    min_size=1))
        ids = chosen + extra  # extra: ids that may be gone (dropped or never existed)
        present = {r["id"] for r in self.rows}
        unique = set(ids)
        n = self.box.ack(ids, replayed=ids if as_replayed else ())
        assert n == len(unique & present)
        self.rows = [r for r in self.rows if r["id"] not in unique]
        self.inflight -= unique
        self.count["published"] += n
        if as_replayed:
            self.count["replayed"] += n

    @rule()
    def release(self) -> None:
        self.box.release()
        self.inflight.clear()

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = self._open()
        self.inflight.clear()  # in-flight is in memory only: every row is offered again

    @invariant()
    def counters_agree(self) -> None:
        self.count["queued"] = len(self.rows)
        assert self.box.counters() == self.count
        assert self.box.queued_bytes == sum(r["size"] for r in self.rows)
        # nothing is lost except what is counted
        assert (self.count["captured"] == self.count["queued"] + self.count["published"]
                + self.count["dropped"])

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OutboxModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestOutboxModel = OutboxModel.TestCase


def test_seq_seeded_from_clock_and_kept_across_reopen(tmp_path: Path) -> None:
    before = time.time_ns() // 1000
    with Outbox(tmp_path / "o.sqlite", 10_000, 3600) as box:
        first = box.next_seq("a")
        assert before <= first <= time.time_ns() // 1000
        assert box.next_seq("a") == first + 1
        assert box.next_seq("b") >= first
    with Outbox(tmp_path / "o.sqlite", 10_000, 3600) as box:
        assert box.next_seq("a") == first + 2
    # a lost file starts above every seq issued before
    (tmp_path / "o.sqlite").unlink()
    with Outbox(tmp_path / "o.sqlite", 10_000, 3600) as box:
        assert box.next_seq("a") > first + 2
    assert first < 2**53


def test_capture_reserves_the_seq_and_stores_the_row_in_one_transaction(tmp_path: Path) -> None:
    """A capture that fails part-way issues no seq: consumers see no gap that is not a loss."""
    with Outbox(tmp_path / "o.sqlite", 10_000, 3600, seq_seed=7) as box:
        assert box.capture("a", "t", lambda seq: seq.to_bytes(8, "big")) == 7

        def broken(seq: int) -> bytes:
            raise ValueError("encoder failed")
        with pytest.raises(ValueError):
            box.capture("a", "t", broken)
        assert box.capture("a", "t", lambda seq: seq.to_bytes(8, "big")) == 8
        assert [(e.seq, int.from_bytes(e.payload, "big")) for e in box.peek(5)] == [(7, 7), (8, 8)]
        assert box.counters()["captured"] == 2


def test_full_by_size_drops_oldest_counts_and_logs(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ballpass.gateway.outbox")
    with Outbox(tmp_path / "o.sqlite", max_bytes=1000, max_age_s=3600) as box:
        for i in range(5):
            box.put("s1", i, "t", bytes(300))
        c = box.counters()
        assert c == {"captured": 5, "queued": 3, "published": 0, "dropped": 2, "replayed": 0}
        assert [e.seq for e in box.peek(10)] == [2, 3, 4]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("event=outbox_full reason=size sensor=s1 dropped=1" in m for m in lines) == 2


def test_full_by_age(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ballpass.gateway.outbox")
    with Outbox(tmp_path / "o.sqlite", max_bytes=10**6, max_age_s=0.2) as box:
        box.put("s1", 1, "t", b"x", created_ns=time.time_ns() - 10**9)
        box.put("s1", 2, "t", b"y")
        assert [e.seq for e in box.peek(5)] == [2]
        assert box.counters()["dropped"] == 1
        time.sleep(0.25)
        assert box.expire() == 0  # in flight: the broker may be taking it now
        box.release()
        assert box.expire() == 1
        assert box.counters()["queued"] == 0
    assert any("event=outbox_full reason=age" in r.getMessage() for r in caplog.records)


def test_threads_share_one_outbox(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", 10**7, 3600, seq_seed=0) as box:
        def capture(sensor: str) -> None:
            for _ in range(50):
                box.put(sensor, box.next_seq(sensor), "t", b"p" * 10)

        threads = [threading.Thread(target=capture, args=(s,)) for s in SENSORS]
        for t in threads:
            t.start()
        acked = 0
        while acked < 150:
            entries = box.peek(7)
            acked += box.ack([e.id for e in entries])
        for t in threads:
            t.join()
        assert box.counters() == {"captured": 150, "queued": 0, "published": 150,
                                  "dropped": 0, "replayed": 0}
        assert box.next_seq("s1") == 50


def test_put_survives_kill_9(tmp_path: Path) -> None:
    """A put that returned is in the file even when the process dies right after."""
    path = tmp_path / "o.sqlite"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from ballpass.gateway.outbox import Outbox
        box = Outbox({str(path)!r}, 10**6, 3600)
        for i in range(20):
            box.put("s1", box.next_seq("s1"), "t", bytes([i]) * 100)
        sys.stdout.write("ok\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == -9 and proc.stdout == "ok\n", proc.stderr
    with Outbox(path, 10**6, 3600) as box:
        entries = box.peek(100)
        assert [e.payload[0] for e in entries] == list(range(20))
        seqs = [e.seq for e in entries]
        assert seqs == list(range(seqs[0], seqs[0] + 20))
        assert box.next_seq("s1") == seqs[-1] + 1
        assert box.counters()["captured"] == 20


def test_rows_in_flight_are_dropped_for_room_last(tmp_path: Path) -> None:
    """Before: the oldest rows went for room even when in flight; the broker then took
    them, and their PUBACK found no row: delivered windows counted as dropped."""
    with Outbox(tmp_path / "o.sqlite", max_bytes=300, max_age_s=3600) as box:
        for seq in (1, 2, 3):
            box.put("s1", seq, "t", b"x" * 100)
        flying = box.peek(1)  # seq 1, the oldest
        box.put("s1", 4, "t", b"x" * 100)  # needs room for one: seq 2 goes, not seq 1
        assert [e.seq for e in box.peek(5)] == [3, 4]
        assert box.ack([flying[0].id]) == 1
        counters = box.counters()
        assert counters["published"] == 1 and counters["dropped"] == 1


def test_an_outbox_open_elsewhere_is_refused_naming_its_holder(tmp_path: Path) -> None:
    """Before: a gateway started by hand beside its service opened the same outbox: both
    sent the same windows and took turns at one MQTT session."""
    path = tmp_path / "o.sqlite"
    holder = rf"another gateway process \(pid {os.getpid()}\)"
    with Outbox(path, 10**6, 3600), pytest.raises(BlockingIOError, match=holder):
        Outbox(path, 10**6, 3600)
    with Outbox(path, 10**6, 3600) as box:  # closed: free again
        assert box.queued == 0
