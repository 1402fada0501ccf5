"""The stream's database writer: retries what may succeed later, spools what never will.

- A retryable failure (database down, timeout, 5xx) is retried with jittered backoff
  until it succeeds or the service stops; the windows wait unacknowledged in the broker.
- A refusal of the points (400: bad schema, type conflict) would be refused again: the
  points go to the spool (`state_dir/spool.lp`, line protocol an operator can inspect and
  replay; appended whole and fsynced before the windows are acknowledged) and the windows
  count as `spooled`. Past `max_bytes` the spool takes no more: the refusal is
  dead-lettered (`spool_full`, counted, logged) and the points are not kept.
- A point that cannot even be encoded (a value line protocol cannot hold) is refused
  alone: dead-lettered with its reason and counted (`rejected["unwritable_point"]`);
  the rest of the batch is written. Nothing here raises on a bad value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ballpass import backoff
from ballpass.log import kv
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.sinks.influx import InfluxWriteError, InfluxWriter
from ballpass.stream.sinks.lineprotocol import Point, encode_point

log = logging.getLogger(__name__)

# Broker reconnects and InfluxDB retries (s); the windows wait in the broker meanwhile.
RETRY_INITIAL_S, RETRY_MAX_S = 0.5, 30.0
# Threads of the writes (a batch's commit, operator actions, held alerts): more would only
# wait on the writer's connection lock.
WRITE_THREADS = 4

_T = TypeVar("_T")


class RetryingWriter:
    """Wraps an `InfluxWriter` for the service; `write` returns once the points are safe."""

    def __init__(self, writer: InfluxWriter, spool: Path, dead_letters: DeadLetters,
                 counters: StreamCounters, max_bytes: int) -> None:
        self.writer = writer
        self.spool = spool
        self.max_bytes = max_bytes
        # A batch's commit and an operator action's write may spool at the same time, each
        # in its own thread (the fsync must not hold the event loop).
        self._spool_lock = threading.Lock()
        self.dead_letters = dead_letters
        self.counters = counters
        # Monotonic time of the first failure of the write (or of `ensure_database`) now
        # being retried (None: the last one succeeded); read by the health check.
        self.failing_since: float | None = None
        self.last_written_t: float | None = None  # Unix time the database last took a write
        # Its own threads, not asyncio's default executor: a database that hangs holds each
        # write for its timeout, and queued writes must not take every thread the pipeline
        # and the saves need.
        self._threads = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="influx-write")

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def close_threads(self) -> None:
        """Let the write threads end (a write still running finishes first)."""
        self._threads.shutdown(wait=False)

    def encodable(self, points: Sequence[Point]) -> list[Point]:
        """`points` less those line protocol cannot hold (each dead-lettered and counted)."""
        good = []
        for p in points:
            try:
                encode_point(p)
            except ValueError as e:
                self.counters.refuse("unwritable_point")
                detail = f"{p.measurement} {dict(p.tags)} at {p.time_ns}: {e}"
                log.error(kv("point_rejected", reason="unwritable_point", detail=detail))
                self.dead_letters.add("unwritable_point", p.measurement, detail)
                continue
            good.append(p)
        return good

    async def ensure_database(self, stop: asyncio.Event) -> None:
        """Create the database if the writer can (v1); retries until it answers or stop.
        A refusal (`retryable` false: no admin rights, say) is logged and the stream goes
        on. Fails like a write for the health check: at a start with the database down,
        this is what the stream waits for (the broker session starts after it)."""
        ensure = getattr(self.writer, "ensure_database", None)
        if ensure is None:
            return
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                await self._in_thread(ensure)
                self.failing_since = None
                return
            except (InfluxWriteError, OSError) as e:
                if isinstance(e, InfluxWriteError) and not e.retryable:
                    # Refused (a write-only user: 403 "requires admin privilege"), which
                    # asking again will not change. The database may well exist: the
                    # writes will tell, and wait in the broker if it does not.
                    log.warning(kv("influx_create_database_refused",
                                   url=getattr(self.writer, "url", ""), status=e.status,
                                   reason=e))
                    self.failing_since = None  # the database answers: it refused this
                    return
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.warning(kv("influx_unreachable", url=getattr(self.writer, "url", ""),
                               attempt=attempt, reason=e, retry_in_s=round(delay, 1)))
                await sleep_or_stop(stop, delay)

    async def write(self, points: Sequence[Point], stop: asyncio.Event, windows: int) -> bool:
        """Write with retries; True once written or spooled, False if stopped first."""
        good = self.encodable(points)
        attempt = 0
        while True:
            try:
                await self._in_thread(self.writer.write, good)
                self.counters.written += windows
                self.failing_since = None
                self.last_written_t = time.time()
                return True
            except InfluxWriteError as e:
                if not e.retryable and await self._in_thread(
                        self._keep_refused, good, str(e), windows):
                    self.failing_since = None  # the database answers: it refused these
                    return True
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                attempt += 1
                self.counters.write_retries += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.warning(kv("influx_write_failed", attempt=attempt, reason=e,
                               retry_in_s=round(delay, 1), windows=windows))
                if await sleep_or_stop(stop, delay):
                    return False

    async def write_once(self, points: Sequence[Point], what: str) -> bool:
        """One attempt, for points that are re-made later anyway; failures are logged."""
        try:
            await self._in_thread(self.writer.write, self.encodable(points))
            return True
        except (InfluxWriteError, OSError) as e:
            log.warning(kv(f"{what}_not_written", reason=e))
            return False

    def _keep_refused(self, points: Sequence[Point], reason: str, windows: int) -> bool:
        """Spool points the database refused (or, the spool full, dead-letter the refusal);
        False when the disk takes neither (the caller then retries: the windows stay in
        the broker)."""
        # The encoder writes valid UTF-8; "replace" keeps a bad code point that got
        # through anyway from raising here, where nothing catches it.
        data = "".join(encode_point(p) + "\n" for p in points).encode("utf-8", "replace")
        with self._spool_lock:
            return self._append_refused(data, points, reason, windows)

    def _append_refused(self, data: bytes, points: Sequence[Point], reason: str,
                        windows: int) -> bool:
        try:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a write the disk cuts short must be undone here, not flushed again
            # (half of it) when the file closes.
            fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                end = os.fstat(fd).st_size
                if end + len(data) > self.max_bytes:
                    return self._spool_full(points, reason, windows, end)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    # No half line for the next append to run into (if this fails too, the
                    # disk is beyond help: the error below is logged, the batch retried).
                    os.ftruncate(fd, end)
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            log.error(kv("spool_write_failed", spool=str(self.spool), reason=e))
            return False
        self.counters.spooled += windows
        log.error(kv("influx_write_refused", reason=reason, points=len(points),
                     spool=str(self.spool)))
        return True

    def _spool_full(self, points: Sequence[Point], reason: str, windows: int,
                    size: int) -> bool:
        detail = (f"{len(points)} points of {windows} windows refused by the database "
                  f"({reason}), not kept: {self.spool} is full ({size} of {self.max_bytes} "
                  "bytes; replay or remove it)")
        # Counted per window; an operator action's write (no window) counts one.
        self.counters.refuse("spool_full", max(windows, 1), dead_lettered=True)
        log.error(kv("point_rejected", reason="spool_full", detail=detail))
        self.dead_letters.add("spool_full", "influx", detail)
        return True


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` s; True if `stop` was set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()
