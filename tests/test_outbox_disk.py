"""The outbox against a full disk, its query plans, unset clocks and its counters."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ballpass.gateway.clock import ClockWatch
from ballpass.gateway.outbox import PLAUSIBLE_WALL_NS, DiskFull, Outbox


def _identity(box: Outbox) -> bool:
    c = box.counters()
    return c["captured"] == c["queued"] + c["published"] + c["dropped"]


def test_a_disk_below_the_reserve_drops_the_oldest_counted_and_logged(tmp_path: Path,
                                                                      caplog) -> None:
    """Before: the outbox filled the disk (its bound was larger), then no write, acks
    included, could ever succeed again. A real SQLite file; only the free space is told."""
    caplog.set_level(logging.WARNING, logger="ballpass.gateway.outbox")
    free = [10**12]
    with Outbox(tmp_path / "o.sqlite", 10**9, 3600, disk_free=lambda: free[0]) as box:
        for i in range(10):
            box.put("s1", i, "t", bytes(1000))
        # room for the reserve and two copies of one more window, less 2500 bytes: three
        # of the oldest go (freed 3000 >= 2500), with the pages they free in the file
        free[0] = box.disk_reserve_bytes + 2 * 1000 - 2500
        box.put("s1", 10, "t", bytes(1000))
        assert [e.seq for e in box.peek(20)] == list(range(3, 11))
        assert box.counters()["dropped"] == 3 and _identity(box)
        # the disk is full of something else: the whole backlog would not make room, so
        # the backlog is kept and the new window refused (counted, logged)
        free[0] = 0
        box.release()
        with pytest.raises(DiskFull, match="s1/11 refused"):
            box.put("s1", 11, "t", bytes(1000))
        assert box.queued == 8
        assert box.counters()["dropped"] == 4 and _identity(box)
    lines = [r.getMessage() for r in caplog.records]
    assert any("event=outbox_full reason=disk sensor=s1 dropped=3" in m for m in lines)
    assert any("event=window_dropped reason=disk sensor=s1 seq=11" in m for m in lines)


def test_a_real_full_disk_keeps_acks_close_and_restart_working(tmp_path: Path) -> None:
    """The reviewer's case on a real 16 MB tmpfs (a private mount namespace: CI is root):
    an outbox bound of 50 MB, 400 windows of 64 KiB. Before: writes failed with "database
    or disk is full", acks too, close raised, and acks failed after a restart."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = textwrap.dedent(f"""
        import os, sqlite3, sys
        from pathlib import Path
        from ballpass.gateway.outbox import Outbox
        p = Path({str(mnt)!r}) / "o.sqlite"
        box = Outbox(p, 50 * 2**20, 3600)
        for i in range(400):
            box.capture("s1", "t", lambda s: os.urandom(65536))  # raises if the disk fills
        ids = [e.id for e in box.peek(20)]
        assert box.ack(ids) == 20
        box.capture("s1", "t", lambda s: os.urandom(65536))
        c = box.counters()
        assert c["dropped"] > 0 and c["captured"] == c["queued"] + c["published"] + c["dropped"]
        box.close()
        box = Outbox(p, 50 * 2**20, 3600)
        assert box.ack([e.id for e in box.peek(20)]) == 20
        box.close()
        db = sqlite3.connect(p)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        print("ok")
    """)
    script = (f"mount -t tmpfs -o size=16m tmpfs {mnt} && "
              f"{sys.executable} -c \"$CODE\"")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env={"CODE": code, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_a_large_ack_on_a_disk_at_the_reserve_is_written(tmp_path: Path) -> None:
    """Before: SQLite built with SECURE_DELETE (Debian's) zeroed every freed page through
    the WAL, so acking 50 windows of 200 kB needed more WAL than the reserve keeps free:
    "database or disk is full" for every ack, on a real 24 MB tmpfs."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from ballpass.gateway.outbox import Outbox
        box = Outbox(Path({str(mnt)!r}) / "o.sqlite", 512 * 2**20, 3600)
        payload = os.urandom(200_000)
        for i in range(200):
            box.put("s1", i, "t", payload)
        assert box.counters()["dropped"] > 0  # the disk bound was reached
        assert box.ack([e.id for e in box.peek(50)]) == 50
        box.close()
        print("ok")
    """)
    script = (f"mount -t tmpfs -o size=24m tmpfs {mnt} && "
              f"{sys.executable} -c \"$CODE\"")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120, env={"CODE": code, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _plans(db: sqlite3.Connection, statements: list[str]) -> list[str]:
    out = []
    for sql in statements:
        detail = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql))
        out.append(f"{sql} => {detail}")
    return out


def test_the_bounds_read_indexes_not_the_payloads(tmp_path: Path) -> None:
    """Before: the age and room checks scanned the table at every capture, and each row's
    `size` after its payload took reading the payload's overflow chain: the whole outbox
    was read per capture. Traces the real statements of captures that drop by age and by
    size, on a file an earlier release made (no indexes), and explains them."""
    path = tmp_path / "o.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, sensor TEXT NOT NULL,
            seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
            created_ns INTEGER NOT NULL, size INTEGER NOT NULL);
    """)
    old.close()
    now = time.time_ns()
    with Outbox(path, 5000, 60) as box:
        for i in range(5):
            box.put("s1", i, "t", bytes(1000), created_ns=now - 120 * 10**9)  # too old
        box.put("s1", 5, "t", bytes(1000), created_ns=now)
        seen: list[str] = []
        box._db.set_trace_callback(seen.append)
        box.put("s1", 6, "t", bytes(1000), created_ns=now)
        box.put("s1", 7, "t", bytes(4500), created_ns=now)  # room: 5 and 6 go
        box._db.set_trace_callback(None)
        selects = [s for s in seen if s.startswith("SELECT") and "FROM messages" in s]
        assert any("created_ns <" in s for s in selects)
        assert any("ORDER BY id" in s for s in selects)
        for plan in _plans(box._db, selects):
            assert "USING COVERING INDEX" in plan, plan
        assert box.counters()["dropped"] == 7 and [e.seq for e in box.peek(5)] == [7]


def test_walks_past_a_batch_spare_the_rows_in_flight(tmp_path: Path) -> None:
    """The age and room walks go in batches: rows in flight are skipped, none missed."""
    now = time.time_ns()
    with Outbox(tmp_path / "o.sqlite", 10**6, 60) as box:
        for i in range(700):
            box.put("s1", i, "t", b"x", created_ns=now - 120 * 10**9)
        flying = {e.id for e in box.peek(300)}
        box.put("s1", 700, "t", b"x", created_ns=now)
        assert box.queued == 301 and box.counters()["dropped"] == 400
        box.release()
        box.put("s1", 701, "t", b"x", created_ns=now)
        assert box.queued == 2
        assert flying.isdisjoint(e.id for e in box.peek(5))
    with Outbox(tmp_path / "p.sqlite", 700, 3600) as box:
        for i in range(700):
            box.put("s1", i, "t", b"x")
        box.peek(300)  # seqs 0..299
        # room for 500 bytes: the 400 not in flight, then the 100 oldest in flight
        box.put("s1", 700, "t", b"x" * 500)
        assert box.counters()["dropped"] == 500
        box.release()
        assert [e.seq for e in box.peek(1000)] == [*range(100, 300), 700]


class _Clocks:
    """A wall and a monotonic clock the test moves (ns)."""

    def __init__(self, wall: int) -> None:
        self.wall, self.mono = wall, 5 * 10**9

    def watch(self) -> ClockWatch:
        return ClockWatch(2.0, wall_ns=lambda: self.wall, mono_ns=lambda: self.mono)

    def tick(self, s: float) -> None:
        self.wall += int(s * 1e9)
        self.mono += int(s * 1e9)


def test_a_backlog_of_a_run_without_clock_survives_a_reboot_and_ntp(tmp_path: Path,
                                                                     caplog) -> None:
    """Before: run A (no RTC, clock at 1970) queued windows; after a power cut run B
    booted at 1970 again and NTP set the clock: A's windows, 20 minutes old, were dropped
    as 56 years old (only run B's rows followed the jump)."""
    caplog.set_level(logging.WARNING, logger="ballpass.gateway.outbox")
    path = tmp_path / "o.sqlite"
    clocks = _Clocks(30 * 10**9)
    with Outbox(path, 10**8, max_age_s=7 * 86_400, clock=clocks.watch()) as box:
        for _ in range(20):
            box.capture("s1", "t", lambda seq: b"x" * 100)
            clocks.tick(60)
    clocks = _Clocks(30 * 10**9)
    with Outbox(path, 10**8, max_age_s=7 * 86_400, clock=clocks.watch()) as box:
        box.capture("s1", "t", lambda seq: b"y" * 100)
        clocks.tick(5)
        clocks.wall = time.time_ns()  # NTP
        box.capture("s1", "t", lambda seq: b"y" * 100)
        assert box.counters()["dropped"] == 0 and box.queued == 22
        assert all(e.created_ns >= PLAUSIBLE_WALL_NS for e in box.peek(30))
    assert any("event=outbox_redated when=clock_jump rows=20" in r.getMessage()
               for r in caplog.records)


def test_rows_dated_in_the_future_or_before_the_floor_are_redated_at_open(
        tmp_path: Path, caplog) -> None:
    """Rows an unset (or wrong) clock dated are re-dated when a set clock opens the file;
    a clock not set yet leaves rows dated by a right one alone."""
    caplog.set_level(logging.WARNING, logger="ballpass.gateway.outbox")
    path = tmp_path / "o.sqlite"
    now = time.time_ns()
    Outbox(path, 10**8, 3600).close()
    with sqlite3.connect(path) as db:  # as earlier runs left them
        db.executemany(
            "INSERT INTO messages(sensor, seq, topic, payload, created_ns, size) "
            "VALUES ('s1', ?, 't', x'00', ?, 1)",
            [(0, 10**9),  # 1970
             (1, now + 86_400 * 10**9),  # a day ahead
             (2, now - 60 * 10**9)])  # right
    with Outbox(path, 10**8, 3600, clock=_Clocks(10**15).watch()) as box:  # not set yet
        assert [e.created_ns for e in box.peek(5)] == [
            10**9, now + 86_400 * 10**9, now - 60 * 10**9]
    clocks = _Clocks(now + 10**9)
    with Outbox(path, 10**8, 3600, clock=clocks.watch()) as box:
        assert [e.created_ns for e in box.peek(5)] == [now + 10**9, now + 10**9,
                                                       now - 60 * 10**9]
        box.release()
        clocks.tick(3590)
        assert box.expire() == 1  # the right one; the re-dated ones are an hour younger
    assert sum("event=outbox_redated when=open rows=2" in r.getMessage()
               for r in caplog.records) == 1


def test_refused_and_lost_windows_count_as_captured(tmp_path: Path) -> None:
    """Before: a window refused as too large, or lost to a full disk, counted as dropped
    but not captured: captured != queued + published + dropped."""
    with Outbox(tmp_path / "o.sqlite", 1000, 3600) as box:
        box.capture("s1", "t", lambda s: b"x" * 10)
        box.capture("s1", "t", lambda s: b"x" * 2000)  # too large
        box.note_lost("s1", "database or disk is full")
        assert box.counters() == {"captured": 3, "queued": 1, "published": 0,
                                  "dropped": 2, "replayed": 0}
