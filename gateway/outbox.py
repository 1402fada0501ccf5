"""The gateway's durable outbox: every captured window waits here until the broker acks it.

One SQLite file in WAL mode. A window is written (and fsync'd) before `put` returns and
is deleted only by `ack`, which the publisher calls on PUBACK. The file is bounded by size
and age: when a bound is hit the OLDEST rows are dropped, counted in `dropped` and logged
(`event=outbox_full ...`), never silently. A single payload larger than the size bound is
refused (room for it would take the whole backlog, and it would still be over the bound):
counted in `dropped`, logged as ``event=window_dropped reason=too_large``. `drop` deletes
rows the broker will never take (the publisher: larger than its maximum packet size).
The age bound is capped at `config.OUTBOX_MAX_AGE_H`, the most the ns arithmetic takes.
The disk bounds it too: before each insert the outbox keeps two copies of the window plus
a WAL reserve (`WAL_RESERVE_FACTOR`) free on its filesystem, counting the free pages in
its file, by dropping the oldest rows (``reason=disk``); when even the whole backlog would
not make that room (the disk is full of something else), the new window is refused
(``event=window_dropped reason=disk``) and the backlog kept. So acks, which need WAL room
too, and the checkpoint at `close` keep working; a `close` whose checkpoint fails anyway
logs it and closes (the WAL keeps the commits). The bound checks read covering indexes
(`_INDEXES`), never the payloads, in batches.

Durability: ``synchronous=FULL``. In WAL mode NORMAL survives a crash of the process
(kill -9) but may lose the last commits on power loss, because the WAL is only fsync'd at
checkpoints. Gateways sit on Raspberry Pi-class boards beside machines, where power cuts
are the common failure, so every commit fsyncs the WAL. At a few windows per second per
gateway that costs one fsync per window, well within an SD card's budget.

Sequence numbers are per sensor, +1 per window, and stored in the same file, so they are
never reused across restarts. A sensor's first seq is seeded from the wall clock in
microseconds (unless `seq_seed` is given): if the file is lost (card swapped, file
deleted), the new seqs still start above every seq issued before, so a consumer's
(sensor, seq) de-duplication does not mistake new windows for old ones. Seeds stay below
2**53, so they are exact in JSON too.

Counters (`captured`, `published`, `dropped`, `replayed`) live in the file and are
updated in the same transaction as the rows they count, so they survive restarts and
agree with the rows; `queued` is the current row count, and captured = queued +
published + dropped (a refused window counts as captured and dropped). A window that could
not be stored at all (SQLite's "database or disk is full") is counted with `note_lost` in
memory and included in `captured` and `dropped` for the life of the process (the file
cannot record it: it is full).

Clock jumps: rows carry the wall-clock time of `put` for the age bound. The outbox follows
the wall clock against the monotonic one (`ClockWatch`) before every age check, and when it
jumped (NTP setting a board without an RTC) shifts the times of the rows this process
stored by the jump, in the same transaction: a forward jump never makes the outbox look
expired, even for a capture that comes before anyone else noticed the jump. Rows of
earlier runs keep their times (what clock they were dated by is not known), unless the
times are impossible: dated before `PLAUSIBLE_WALL_NS` or after now, they were dated by a
clock that was not set (a board without RTC rebooted during an outage), and are re-dated
to now (``event=outbox_redated``), at open and at each jump, once the clock is plausible.
`clock_jumps` tells the gateway what was seen (its status problem `clock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ballpass.config import OUTBOX_MAX_AGE_H
from ballpass.gateway.clock import ClockWatch
from ballpass.log import kv

log = logging.getLogger(__name__)

COUNTERS = ("captured", "queued", "published", "dropped", "replayed")
_STORED = ("captured", "published", "dropped", "replayed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, order kept
    sensor TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seqs (
    sensor TEXT PRIMARY KEY,
    next INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Covering indexes for the bounds, checked at every capture: the age and room walks read
# (created_ns, size, id) and (id, size) from these, never the table, whose rows hold the
# payload with `size` after it (reading it follows the payload's whole overflow chain).
# IF NOT EXISTS: files of earlier releases get them at their next open.
_INDEXES = """
CREATE INDEX IF NOT EXISTS messages_age ON messages(created_ns, size);
CREATE INDEX IF NOT EXISTS messages_fifo ON messages(id, size);
"""

_BATCH = 256
"""Rows read per step of a walk over the outbox (age or room), instead of all at once."""

WAL_AUTOCHECKPOINT_PAGES = 1000
"""SQLite's default, set explicitly because the disk reserve below is computed from it."""

WAL_RESERVE_FACTOR = 2
"""The disk reserve is this many WAL autocheckpoints (1000 pages of 4 KiB: 8 MB).

Every write, a DELETE (ack, drop) included, first appends pages to the WAL. The WAL grows
to about one autocheckpoint (plus the transaction that crossed it) before a checkpoint
lets it start over, and a checkpoint copies its pages into the file, which grows when the
file has no free pages. Once a write has filled the disk, the checkpoint cannot finish and
the WAL cannot start over: every later write, acks and restarts included, fails with
"database or disk is full". So a capture leaves twice that (WAL high water and checkpoint
slack) free on the disk, besides two copies of its own payload (WAL, then file), and
drops the oldest rows to keep it (`reason=disk`)."""

PLAUSIBLE_WALL_NS = 1_767_225_600 * 10**9
"""2026-01-01T00:00:00Z (ns), before this release: a wall clock earlier than this is not
set (a board without RTC boots at 1970 until NTP steps it). Rows of earlier runs dated
before it, or in the future, were dated by such a clock: they are re-dated to now."""


class DiskFull(Exception):
    """A window refused because its disk is full of something else (the backlog is kept);
    raised by `capture` and `put` after the refusal is counted and logged, so the caller
    can show it (the gateway's status problem ``outbox``)."""


@dataclass(frozen=True)
class Entry:
    """One queued message. `created_ns`: wall-clock time of `put`, ns since the epoch."""

    id: int
    sensor: str
    seq: int
    topic: str
    payload: bytes
    created_ns: int
    size: int


class Outbox:
    """A bounded, durable FIFO of MQTT messages, safe to share between threads.

    `max_bytes`: bound on the summed payload size in bytes; `max_age_s`: rows older than
    this many seconds are dropped. `peek` hands out the oldest rows not already handed
    out ("in flight"); `ack` deletes rows; `release` hands rows back without deleting.
    The in-flight set is in memory only: after a restart every row is offered again.
    """

    def __init__(self, path: Path, max_bytes: int, max_age_s: float, *,
                 seq_seed: int | None = None, synchronous: str = "FULL",
                 clock: ClockWatch | None = None,
                 disk_free: Callable[[], int] | None = None) -> None:
        """`clock`: the wall clock the rows are dated by, and its jumps (tests inject one).
        `disk_free`: bytes free on the outbox's filesystem (default: statvfs of its
        directory; tests inject one)."""
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: must be > 0, got {max_bytes}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s: must be > 0, got {max_age_s}")
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous: must be FULL, NORMAL or EXTRA, got {synchronous}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        # The config caps it; so does this, for every other caller: `now - max_age` in ns
        # must stay an int64 for SQLite.
        self.max_age_s = min(float(max_age_s), OUTBOX_MAX_AGE_H * 3600.0)
        self._seq_seed = seq_seed
        self._disk_free = disk_free or self._statvfs_free
        self._clock = clock or ClockWatch()
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._owner = _take_ownership(self.path)
        # One connection for every thread, serialised by self._lock.
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error:
            os.close(self._owner)
            raise
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            # Debian's SQLite is built with SECURE_DELETE: every page a DELETE frees (an
            # ack, a drop) would be zeroed through the WAL, so an ack of 50 windows of
            # 200 kB needed 10 MB of WAL on a disk the reserve keeps 8 MB free on: "database
            # or disk is full" for every ack. Nothing secret is in the outbox.
            self._db.execute("PRAGMA secure_delete=OFF")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self.disk_reserve_bytes = WAL_RESERVE_FACTOR * WAL_AUTOCHECKPOINT_PAGES * self._page
            self._db.executescript(_SCHEMA)
            self._create_indexes()
            with self._tx():
                for name in _STORED:
                    self._db.execute(
                        "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), "
                                   "COALESCE(MAX(id), 0) FROM messages").fetchone()
        except sqlite3.Error:  # not an outbox (another file), or unwritable: no fd left open
            self._db.close()
            os.close(self._owner)
            raise
        self._rows, self._bytes = int(row[0]), int(row[1])
        self._last_id_before = int(row[2])  # ids only grow: this run's rows are above it
        self._jumps: list[tuple[int, int]] = []  # (jump ns, rows shifted) not yet taken
        self._lost = 0
        self._closed = False
        try:
            with self._tx():
                self._redate_implausible("open")
        except sqlite3.Error as e:  # disk full: the age bound may drop them early
            log.error(kv("outbox_redate_failed", path=self.path, error=e))

    def _create_indexes(self) -> None:
        """Create the indexes; a full disk (an older file, one that filled it) must not keep
        the gateway from starting: it runs without them (slower) and logs why."""
        try:
            self._db.executescript(_INDEXES)
        except sqlite3.OperationalError as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            log.error(kv("outbox_index_failed", path=self.path, error=e))

    def _statvfs_free(self) -> int:
        """Bytes free to unprivileged writers on the outbox's filesystem."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    # --- transactions ------------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    @contextlib.contextmanager
    def _undo_on_error(self) -> Iterator[None]:
        """Restore the in-memory row/byte counts when the transaction fails (rolled back),
        and the clock watch: a jump whose shift was rolled back is seen again next time."""
        saved = (self._rows, self._bytes, set(self._inflight), list(self._jumps))
        clock = self._clock.mark()
        try:
            yield
        except BaseException:
            self._rows, self._bytes, self._inflight, self._jumps = saved
            self._clock.back_to(clock)
            raise

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    # --- API ---------------------------------------------------------------------------

    def next_seq(self, sensor: str) -> int:
        """Reserve and return the next seq of `sensor` (committed before it returns)."""
        with self._lock, self._tx():
            return self._reserve_seq(sensor)

    def _reserve_seq(self, sensor: str) -> int:
        row = self._db.execute("SELECT next FROM seqs WHERE sensor = ?", (sensor,)).fetchone()
        seq = int(row[0]) if row else self._initial_seq()
        self._db.execute(
            "INSERT INTO seqs(sensor, next) VALUES (?, ?) "
            "ON CONFLICT(sensor) DO UPDATE SET next = excluded.next", (sensor, seq + 1))
        return seq

    def _initial_seq(self) -> int:
        if self._seq_seed is not None:
            return self._seq_seed
        return time.time_ns() // 1000  # µs since the epoch: above any earlier file's seqs

    def capture(self, sensor: str, topic: str, encode: Callable[[int], bytes],
                created_ns: int | None = None) -> int:
        """Give the next window of `sensor` its seq and store it; returns the seq.

        `encode(seq)` builds the payload. Reserving the seq and storing the row are one
        transaction, so a crash between them cannot leave a seq that was issued but never
        stored (a consumer would see a gap it cannot tell from a loss).
        """
        with self._lock, self._undo_on_error(), self._tx():
            seq = self._reserve_seq(sensor)
            payload = bytes(encode(seq))
            dropped = self._insert(sensor, seq, topic, payload, created_ns)
        self._log_dropped(sensor, seq, len(payload), dropped)
        return seq

    def put(self, sensor: str, seq: int, topic: str, payload: bytes,
            created_ns: int | None = None) -> None:
        """Store one message durably; drop the oldest rows first if a bound is hit.

        `created_ns` defaults to now (wall clock, ns since the epoch).
        """
        with self._lock, self._undo_on_error(), self._tx():
            dropped = self._insert(sensor, seq, topic, bytes(payload), created_ns)
        self._log_dropped(sensor, seq, len(payload), dropped)

    def _insert(self, sensor: str, seq: int, topic: str, payload: bytes,
                created_ns: int | None) -> tuple[str | None, dict[str, int]]:
        """Insert one row inside the caller's transaction; returns (why it was refused, or
        None when stored; the oldest rows dropped per reason: age, size, disk). A refused
        window counts as captured and dropped, so captured = queued + published + dropped."""
        size = len(payload)
        self._bump("captured", 1)
        if size > self.max_bytes:
            self._bump("dropped", 1)
            return "too_large", {}
        self._follow_clock()
        now = self._clock.last_wall_ns if created_ns is None else int(created_ns)
        dropped = {"age": self._drop_older_than(now - int(self.max_age_s * 1e9)),
                   "size": self._drop_oldest(self._bytes + size - self.max_bytes)}
        refused = None
        # Disk: see WAL_RESERVE_FACTOR. Pages freed by dropped rows stay in the file for
        # reuse (freelist), so they are room too, though statvfs does not show them.
        deficit = 2 * size + self.disk_reserve_bytes - self._disk_room()
        if deficit > self._bytes:
            # The disk is full of something else: dropping the whole backlog would not
            # make room. Keep the backlog, refuse this window.
            refused = "disk"
        else:
            dropped["disk"] = self._drop_oldest(deficit)
        if refused is None:
            self._db.execute(
                "INSERT INTO messages(sensor, seq, topic, payload, created_ns, size) "
                "VALUES (?, ?, ?, ?, ?, ?)", (sensor, int(seq), topic, payload, now, size))
            self._rows += 1
            self._bytes += size
        self._bump("dropped", sum(dropped.values()) + (refused is not None))
        return refused, dropped

    def _disk_room(self) -> int:
        """Bytes the outbox can still write: free on the disk plus free pages in its file."""
        free_pages = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return int(self._disk_free()) + free_pages * self._page  # fixed at creation

    def _log_dropped(self, sensor: str, seq: int, size: int,
                     result: tuple[str | None, dict[str, int]]) -> None:
        """Log what a store dropped; raise DiskFull (after the commit) for a window the
        disk refused."""
        refused, dropped = result
        for reason, n in dropped.items():
            if n:
                log.warning(kv("outbox_full", reason=reason, sensor=sensor, dropped=n,
                               queued=self._rows, queued_bytes=self._bytes,
                               max_bytes=self.max_bytes, max_age_s=self.max_age_s))
        if refused == "too_large":
            log.error(kv("window_dropped", reason="too_large", sensor=sensor, seq=seq,
                         bytes=size, max_bytes=self.max_bytes))
        elif refused == "disk":
            log.error(kv("window_dropped", reason="disk", sensor=sensor, seq=seq, bytes=size,
                         queued_bytes=self._bytes, reserve_bytes=self.disk_reserve_bytes,
                         path=self.path.parent))
            raise DiskFull(f"disk full at {self.path.parent}: window {sensor}/{seq} refused, "
                           f"the backlog kept")

    def expire(self) -> int:
        """Drop rows older than `max_age_s` now (also done on every `put`); returns count."""
        with self._lock, self._undo_on_error(), self._tx():
            self._follow_clock()
            n = self._drop_older_than(self._clock.last_wall_ns - int(self.max_age_s * 1e9))
            self._bump("dropped", n)
        if n:
            log.warning(kv("outbox_full", reason="age", dropped=n, queued=self._rows,
                           max_age_s=self.max_age_s))
        return n

    def drop(self, ids: Iterable[int]) -> int:
        """Delete rows that can never be delivered, counted in `dropped` (the caller logs
        why); returns how many existed."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock, self._undo_on_error(), self._tx():
            rows = self._db.execute(
                f"SELECT id, size FROM messages WHERE id IN ({','.join('?' * len(ids))})",
                ids).fetchall()
            n = self._delete_rows(rows)
            self._bump("dropped", n)
        return n

    # Rows in flight are spared while others can go: the broker may be taking them now,
    # and a delivered window would count as dropped (its PUBACK would find no row). One
    # whose connection is lost is released, and dropped by the next check if still due.

    def _drop_older_than(self, cutoff_ns: int) -> int:
        """Drop rows dated before `cutoff_ns` (not in flight); returns how many. Walks the
        age index in batches: rows kept (in flight) stay ahead of the rest in its order,
        so OFFSET skips just them."""
        dropped = kept = 0
        while True:
            rows = self._db.execute(
                "SELECT id, size FROM messages WHERE created_ns < ? "
                "ORDER BY created_ns, size LIMIT ? OFFSET ?", (cutoff_ns, _BATCH, kept)
            ).fetchall()
            victims = [r for r in rows if r[0] not in self._inflight]
            kept += len(rows) - len(victims)
            dropped += self._delete_rows(victims)
            if len(rows) < _BATCH:
                return dropped

    def _drop_oldest(self, need: int) -> int:
        """Drop the oldest rows until `need` payload bytes are freed; returns how many.
        The oldest not in flight first; in flight only when those are not enough."""
        if need <= 0:
            return 0
        victims: list[tuple[int, int]] = []
        freed = 0
        last = 0
        while freed < need:
            rows = self._db.execute("SELECT id, size FROM messages WHERE id > ? ORDER BY id "
                                    "LIMIT ?", (last, _BATCH)).fetchall()
            for r in rows:
                if freed >= need:
                    break
                if r[0] not in self._inflight:
                    victims.append(r)
                    freed += r[1]
            if len(rows) < _BATCH:
                break
            last = rows[-1][0]
        if freed < need and self._inflight:
            flying = sorted(self._inflight)
            rows = self._db.execute(
                f"SELECT id, size FROM messages WHERE id IN ({','.join('?' * len(flying))}) "
                "ORDER BY id", flying).fetchall()
            for r in rows:
                if freed >= need:
                    break
                victims.append(r)
                freed += r[1]
        return self._delete_rows(victims)

    def _delete_rows(self, rows: list[tuple[int, int]]) -> int:
        if not rows:
            return 0
        self._db.executemany("DELETE FROM messages WHERE id = ?", [(r[0],) for r in rows])
        self._rows -= len(rows)
        self._bytes -= sum(r[1] for r in rows)
        self._inflight.difference_update(r[0] for r in rows)
        return len(rows)

    def peek(self, limit: int) -> list[Entry]:
        """Up to `limit` oldest rows not in flight, oldest first; they become in flight."""
        if limit <= 0:
            return []
        with self._lock:
            # Ids first: the payloads of rows already in flight (up to the broker's window
            # of large windows) are not read again on every call.
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM messages ORDER BY id LIMIT ?",
                (limit + len(self._inflight),)) if r[0] not in self._inflight][:limit]
            if not ids:
                return []
            rows = self._db.execute(
                "SELECT id, sensor, seq, topic, payload, created_ns, size FROM messages "
                f"WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id", ids).fetchall()
            out = [Entry(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]
            self._inflight.update(e.id for e in out)
            return out

    def release(self, ids: Iterable[int] | None = None) -> None:
        """Hand in-flight rows back (all when `ids` is None) so `peek` offers them again."""
        with self._lock:
            if ids is None:
                self._inflight.clear()
            else:
                self._inflight.difference_update(ids)

    def ack(self, ids: Iterable[int], *, replayed: Iterable[int] = ()) -> int:
        """Delete acknowledged rows; returns how many existed (a row may have been dropped
        meanwhile). Rows whose ids are also in `replayed` count as replayed as well."""
        ids = list(ids)
        replayed_set = set(replayed)
        if not ids:
            return 0
        with self._lock, self._undo_on_error(), self._tx():
            done = 0
            done_replayed = 0
            for rid in ids:
                row = self._db.execute(
                    "DELETE FROM messages WHERE id = ? RETURNING size", (rid,)).fetchone()
                if row is not None:
                    done += 1
                    self._rows -= 1
                    self._bytes -= int(row[0])
                    done_replayed += rid in replayed_set
            self._inflight.difference_update(ids)
            self._bump("published", done)
            self._bump("replayed", done_replayed)
            return done

    def note_lost(self, sensor: str, reason: str) -> int:
        """Count one window that could not be stored (in `captured` and `dropped`); returns
        the total lost in this process."""
        with self._lock:
            self._lost += 1
            return self._lost

    def clock_jumps(self) -> list[tuple[int, int]]:
        """The wall-clock jumps followed since the last call: (jump in ns, rows shifted).
        Raises sqlite3.Error when the rows cannot be shifted (disk full)."""
        with self._lock:
            with self._undo_on_error(), self._tx():
                self._follow_clock()
            jumps, self._jumps = self._jumps, []
        return jumps

    def _follow_clock(self) -> None:
        """Inside the caller's transaction: shift this run's rows by a wall-clock jump."""
        jump = self._clock.check()
        if jump is None:
            return
        cur = self._db.execute("UPDATE messages SET created_ns = created_ns + ? WHERE id > ?",
                               (int(jump), self._last_id_before))
        self._jumps.append((jump, int(cur.rowcount)))
        self._redate_implausible("clock_jump")

    def _redate_implausible(self, when: str) -> None:
        """Inside the caller's transaction: re-date rows of earlier runs dated before
        PLAUSIBLE_WALL_NS or after now to now, so their age counts from now. Their clock was
        not set (a board without RTC that rebooted during an outage): by their dates the
        age bound would drop them as decades old once NTP sets the clock, or never.
        Only a plausible clock re-dates: one not set yet (at boot) tells nothing, and the
        rows wait for the jump that sets it (`_follow_clock`)."""
        now = self._clock.last_wall_ns
        if now < PLAUSIBLE_WALL_NS:
            return
        cur = self._db.execute(
            "UPDATE messages SET created_ns = ? WHERE id <= ? AND "
            "(created_ns < ? OR created_ns > ?)",
            (now, self._last_id_before, PLAUSIBLE_WALL_NS, now))
        if cur.rowcount > 0:
            log.warning(kv("outbox_redated", when=when, rows=int(cur.rowcount), now_ns=now,
                           plausible_from_ns=PLAUSIBLE_WALL_NS))

    def counters(self) -> dict[str, int]:
        """captured, queued, published, dropped, replayed (persisted across restarts;
        `captured` and `dropped` also count windows lost to a full disk in this process)."""
        with self._lock:
            stored = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            out = {name: int(stored.get(name, 0)) for name in _STORED}
            out["captured"] += self._lost  # captured, then lost: the counters add up
            out["dropped"] += self._lost
            out["queued"] = self._rows
            return {name: out[name] for name in COUNTERS}

    @property
    def queued(self) -> int:
        """Rows in the outbox now."""
        return self._rows

    @property
    def queued_bytes(self) -> int:
        """Summed payload size in bytes of the rows now."""
        return self._bytes

    @property
    def in_flight(self) -> int:
        """Rows handed out by `peek` and not yet acked or released."""
        with self._lock:
            return len(self._inflight)

    def close(self) -> None:
        """Checkpoint the WAL and close the file. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                # The WAL keeps every commit; the next open checkpoints it. Raising here
                # would only keep the file and its lock from being closed.
                log.error(kv("outbox_checkpoint_failed", path=self.path, error=e))
            finally:
                self._db.close()
                os.close(self._owner)  # and with it the lock

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            # SQLite rolls back by itself on some errors (SQLITE_FULL): then a ROLLBACK
            # would fail and hide the real error.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            # A failed COMMIT (disk full) may leave the transaction open: end it, so the
            # next BEGIN works, and report the failure to the caller.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise


def _take_ownership(path: Path) -> int:
    """An exclusive lock on `path`'s ``.lock`` file, held (by the returned fd) while the
    outbox is open: two processes on one outbox (a gateway started by hand beside its
    service) would send each other's windows and fight over one MQTT session. The kernel
    drops the lock when the process dies, kill -9 included. OSError naming the holder."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise BlockingIOError(f"in use by another gateway process (pid {holder}); "
                              f"{lock_path} is its lock") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
