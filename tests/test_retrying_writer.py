"""RetryingWriter on the real influxd: a point line protocol cannot hold is refused alone and
the rest of the batch is written; a batch the database refuses goes to the spool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from plant import query_rows

from ballpass.services import Influxd
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
