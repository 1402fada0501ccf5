"""RetryingWriter on the real influxd: a point line protocol cannot hold is refused alone and
the rest of the batch is written; a batch the database refuses goes to the spool."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from plant import query_rows

from ballpass.services import Influxd, free_port
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.retrying_writer import RetryingWriter
from ballpass.stream.sinks.influx import V1Writer
from ballpass.stream.sinks.lineprotocol import Point


def _writer(url: str, db: str, tmp: Path, max_bytes: int = 10**9
            ) -> tuple[RetryingWriter, StreamCounters]:
    counters = StreamCounters()
    return RetryingWriter(V1Writer(url, db), tmp / "spool.lp",
                          DeadLetters(tmp / "deadletter.jsonl"), counters, max_bytes), counters


def test_an_unencodable_point_is_dead_lettered_alone_and_the_rest_written(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    writer, counters = _writer(url, db, tmp_path)
    now = time.time_ns()
    points = [Point("vibration", {"sensor": "a"}, {"seq": 1}, now),
              Point("vibration", {"sensor": "b"}, {"seq": 2**63}, now),  # not an int64
              Point("vibration", {"sensor": "c"}, {"rms_g": float("nan")}, now),  # no field
              Point("vibration", {"sensor": "d"}, {"seq": 4}, now)]
    assert asyncio.run(writer.write(points, asyncio.Event(), windows=4))
    rows = query_rows(influxd, db, "SELECT seq FROM vibration GROUP BY sensor")
    assert sorted((r["sensor"], r["seq"]) for r in rows) == [("a", 1), ("d", 4)]
    assert counters.rejected == {"unwritable_point": 2} and counters.written == 4
    letters = [json.loads(x) for x in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in letters] == ["unwritable_point"] * 2
    assert "64-bit" in letters[0]["detail"] and "'b'" in letters[0]["detail"]


def test_a_batch_the_database_refuses_is_spooled_and_never_raises(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    writer, counters = _writer(url, db, tmp_path)
    now = time.time_ns()
    stop = asyncio.Event()
    asyncio.run(writer.write([Point("vibration", {"sensor": "a"}, {"seq": 1}, now)], stop, 1))
    # `seq` as a string after an integer: a field type conflict, refused (400) for good.
    conflict = [Point("vibration", {"sensor": "a"}, {"seq": "one"}, now + 1)]
    assert asyncio.run(writer.write(conflict, stop, windows=1))
    assert counters.spooled == 1 and counters.written == 1
    assert (tmp_path / "spool.lp").read_text() == f'vibration,sensor=a seq="one" {now + 1}\n'


def test_a_full_spool_dead_letters_the_refusal_and_keeps_what_it_holds(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """Before: the spool grew without bound (a type conflict refuses every batch of it)."""
    url, db = influx_db
    writer, counters = _writer(url, db, tmp_path, max_bytes=60)
    now = time.time_ns()
    stop = asyncio.Event()
    asyncio.run(writer.write([Point("vibration", {"sensor": "a"}, {"seq": 1}, now)], stop, 1))
    written_at = writer.last_written_t
    assert written_at is not None
    for i in (1, 2):  # each line is 39 bytes: the second does not fit
        conflict = [Point("vibration", {"sensor": "a"}, {"seq": "one"}, now + i)]
        assert asyncio.run(writer.write(conflict, stop, windows=1))
    assert (tmp_path / "spool.lp").read_text() == f'vibration,sensor=a seq="one" {now + 1}\n'
    assert counters.spooled == 1 and counters.rejected == {"spool_full": 1}
    assert counters.dead_lettered == 1
    assert writer.last_written_t == written_at  # refusals are no writes (/metrics)
    [letter] = [json.loads(x) for x in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert letter["reason"] == "spool_full" and "is full" in letter["detail"]


def test_a_database_that_is_missing_is_retried_not_spooled(
        influxd: Influxd, tmp_path: Path) -> None:
    """Before: a 404 (no such database), 401 or 403 counted as a refusal of the points: every
    batch went to the spool and was acknowledged, while the health said the database was
    fine. They refuse every write until someone mends them: the windows wait in the broker."""
    writer, counters = _writer(influxd.url, "never_created", tmp_path)
    stop = asyncio.Event()

    async def run() -> bool:
        writing = asyncio.create_task(writer.write(
            [Point("vibration", {"sensor": "a"}, {"seq": 1}, time.time_ns())], stop, 1))
        while counters.write_retries < 2:
            await asyncio.sleep(0.05)
        assert writer.failing_since is not None, "the health sees the database failing"
        stop.set()
        return await writing

    assert asyncio.run(run()) is False
    assert counters.spooled == 0 and not (tmp_path / "spool.lp").exists()


def test_a_lone_surrogate_in_an_operator_note_is_written(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """Before: json.loads made a lone surrogate of a command's "\\ud83d"; the point was
    refused as unencodable, spooling it raised UnicodeEncodeError and the stream exited,
    to crash again on the redelivered command after each restart."""
    url, db = influx_db
    writer, counters = _writer(url, db, tmp_path)
    note = json.loads('{"note": "checked \\ud83d"}')["note"]
    now = time.time_ns()
    points = [Point("vibration", {"sensor": "a"}, {"seq": 1}, now),
              Point("actions", {"sensor": "a", "action": "ack"}, {"by": "op", "note": note},
                    now)]
    assert asyncio.run(writer.write(points, asyncio.Event(), windows=1))
    assert counters.written == 1 and counters.spooled == 0 and counters.rejected == {}
    (action,) = query_rows(influxd, db, "SELECT * FROM actions")
    assert action["note"] == "checked \ufffd" and action["by"] == "op"
    assert len(query_rows(influxd, db, "SELECT seq FROM vibration")) == 1


def test_spooling_never_raises_on_text_utf8_cannot_hold(tmp_path: Path) -> None:
    """Defence in depth: a line with a lone surrogate (past the encoder) is spooled with
    it replaced; before, the UnicodeEncodeError escaped the write and ended the stream."""
    writer, counters = _writer("http://127.0.0.1:1", "db", tmp_path)
    point = Point("actions", {}, {"note": "x"}, 1)
    point.__dict__["line"] = 'actions note="x \ud83d" 1'  # what the encoder once let by
    assert writer._keep_refused([point], "400", 1)
    assert (tmp_path / "spool.lp").read_bytes() == b'actions note="x ?" 1\n'
    assert counters.spooled == 1


class _AuthInfluxd(Influxd):
    """influxd with auth-enabled (the first user made must be an admin)."""

    def _prepare(self) -> list[str]:
        argv = super()._prepare()
        self.config_path.write_text(self.config_path.read_text().replace(
            "auth-enabled = false", "auth-enabled = true"))
        return argv

    def query_as(self, q: str, user: str | None = None, password: str = "") -> None:
        headers = {}
        if user is not None:
            auth = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {auth}"
        req = urllib.request.Request(self.url + "/query",
                                     data=urllib.parse.urlencode({"q": q}).encode(),
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert "error" not in json.loads(resp.read())["results"][0], q


@pytest.fixture
def auth_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_AuthInfluxd]:
    server = _AuthInfluxd(tmp_path_factory.mktemp("influxd-auth"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_a_user_without_admin_rights_is_told_once_and_the_stream_writes(
        auth_influxd: _AuthInfluxd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The DBA's setup (manage_retention = false): the database exists, the stream's user
    may only write. Before: CREATE DATABASE's 403 "requires admin privilege" was retried
    for ever and the stream never consumed, although its writes would have worked."""
    server = auth_influxd
    server.query_as("CREATE USER admin WITH PASSWORD 'a' WITH ALL PRIVILEGES")
    for q in ('CREATE DATABASE "plant"', "CREATE USER writer WITH PASSWORD 'w'",
              'GRANT WRITE ON "plant" TO writer'):
        server.query_as(q, "admin", "a")
    counters = StreamCounters()
    writer = RetryingWriter(V1Writer(server.url, "plant", "writer", "w"),
                            tmp_path / "spool.lp", DeadLetters(tmp_path / "dl.jsonl"),
                            counters, 10**6)
    caplog.set_level(logging.WARNING, logger="ballpass.stream.retrying_writer")

    async def run() -> bool:
        stop = asyncio.Event()
        await asyncio.wait_for(writer.ensure_database(stop), 5)
        return await writer.write([Point("vibration", {"sensor": "a"}, {"seq": 1},
                                         time.time_ns())], stop, 1)

    assert asyncio.run(run())
    (line,) = caplog.messages
    assert line.startswith("event=influx_create_database_refused ")
    assert "status=403 " in line and "requires admin privilege" in line
    assert counters.written == 1 and counters.write_retries == 0


def test_a_database_down_at_the_start_is_failing_for_the_health_check(
        influx_db: tuple[str, str], tmp_path: Path) -> None:
    """The stream waits in `ensure_database` until the database answers. Before: that wait
    left `failing_since` unset, so `/healthz` said the database was "ok" (and blamed only
    the broker, which is not even started then)."""
    url, db = influx_db
    writer, _ = _writer(f"http://127.0.0.1:{free_port()}", db, tmp_path)  # nothing listens

    async def run() -> None:
        stop = asyncio.Event()
        ensure = asyncio.create_task(writer.ensure_database(stop))
        deadline = time.monotonic() + 5
        while writer.failing_since is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert writer.failing_since is not None and not ensure.done()
        writer.writer.url = url  # type: ignore[attr-defined]  # the database comes up
        await asyncio.wait_for(ensure, 10)
        assert writer.failing_since is None

    asyncio.run(run())


_FILL_DISK = """
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_retrying_writer import _writer
from ballpass.stream.sinks.lineprotocol import Point
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
writer, _ = _writer("http://127.0.0.1:1", "db", Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # the disk is full at 100 bytes
points = [Point("vibration", {"sensor": "a"}, {"seq": f"n{i}"}, i) for i in range(5)]
print(writer._keep_refused(points[:1], "400", 1), writer._keep_refused(points, "400", 5))
"""


def test_a_spool_write_that_fills_the_disk_leaves_no_half_line(tmp_path: Path) -> None:
    """Before: a write cut short by a full disk left half a line, which the next append ran
    into (a line no replay could read, and the one after it lost too)."""
    tests = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", _FILL_DISK, str(tmp_path), str(tests)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["True", "False"], out
    assert (tmp_path / "spool.lp").read_text() == 'vibration,sensor=a seq="n0" 0\n'
