"""RetryingWriter on the real influxd: a point line protocol cannot hold is refused alone and
the rest of the batch is written; a batch the database refuses goes to the spool."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from plant import query_rows

from ballpass.services import Influxd
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.retrying_writer import RetryingWriter
from ballpass.stream.sinks.influx import V1Writer
from ballpass.stream.sinks.lineprotocol import Point


def _writer(url: str, db: str, tmp: Path) -> tuple[RetryingWriter, StreamCounters]:
    counters = StreamCounters()
    return RetryingWriter(V1Writer(url, db), tmp / "spool.lp",
                          DeadLetters(tmp / "deadletter.jsonl"), counters), counters


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
