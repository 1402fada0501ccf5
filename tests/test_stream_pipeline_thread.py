"""The stream's batches and operator commands: the pipeline's own thread and the watchdog
(a hung database must not withhold WATCHDOG=1), commands in their arrival order among a
batch's windows, and a command delivered again after a stop before its `actions` row was
written. Real `StreamService`s, a real influxd (stopped with SIGSTOP: it hangs, as a
database does under an outage), the systemd notify protocol on a real datagram socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from notify_socket import NotifySocket
from plant import one_sensor_site, query_rows

from ballpass import topics, wire
from ballpass.services import Influxd, free_port
from ballpass.stream.mqtt_source import Delivery
from ballpass.stream.service import StreamService
from ballpass.stream.sinks.influx import V1Writer

pytestmark = pytest.mark.slow


def _window(seq: int, mid: int | None = None, t0_ns: int | None = None) -> Delivery:
    w = wire.Window(seq=seq, t0_ns=time.time_ns() if t0_ns is None else t0_ns, fs_hz=25600.0,
                    samples=0.1 * np.random.default_rng(seq).standard_normal((1, 4096)))
    return Delivery(topics.window("s1", "g", "a"), wire.encode(w), 1,
                    seq if mid is None else mid, 1)


def _command(mid: int, **command: Any) -> Delivery:
    return Delivery("bp/v1/s1/command", json.dumps(command).encode(), 1, mid, 1)


@pytest.fixture
def own_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    """An influxd of this test alone: it is stopped with SIGSTOP (and always continued)."""
    server = Influxd(tmp_path_factory.mktemp("influxd-hung"))
    server.start()
    try:
        yield server
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


def test_a_hung_database_does_not_withhold_the_watchdog(
        own_influxd: Influxd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the pipeline shared asyncio's default executor with the database writes.
    With the database hung, each write held a thread for its timeout (10 s): the operator
    actions' writes took every thread, the next batch waited for one with the watchdog's
    busy clock running, and WATCHDOG=1 stopped (systemd would have killed a healthy stream
    during an outage, which the docs say does not count)."""
    own_influxd.create_database("d")
    config = one_sensor_site(own_influxd.url, "d", tmp_path / "state")
    ns = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", ns.name)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # pings every second
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    service = StreamService(config, V1Writer(own_influxd.url, "d", timeout_s=10.0))
    # More operator actions than asyncio's default executor has threads.
    actions = min(32, (os.cpu_count() or 1) + 4) + 2
    seen: dict[str, Any] = {}

    async def source_run(stop: asyncio.Event, handle: Any) -> None:
        assert own_influxd.pid is not None
        os.kill(own_influxd.pid, signal.SIGSTOP)  # the database hangs from now on
        try:
            for _ in range(actions):
                await service.operator_action("a", "op", action="ack")
            await asyncio.sleep(1.0)  # their writes now hold their threads
            started = time.monotonic()
            commit = await handle([_window(1)])
            seen["handled_s"] = time.monotonic() - started
            assert commit is not None
            await asyncio.sleep(5.0)  # the commit's write waits for the database meanwhile
            seen["pings"] = ns.times("WATCHDOG=1")
            seen["span"] = (started, time.monotonic())
        finally:
            os.kill(own_influxd.pid, signal.SIGCONT)
            stop.set()

    service.source.run = source_run  # type: ignore[method-assign]

    async def main() -> None:
        await asyncio.wait_for(service.run(asyncio.Event()), 90)

    try:
        asyncio.run(main())
    finally:
        ns.close()
    since, until = seen["span"]
    gaps = np.diff([since, *(t for t in seen["pings"] if t >= since), until])
    assert len(gaps) >= 5 and gaps.max() < 1.9, gaps  # 1 s apart, with slack
    assert seen["handled_s"] < 3.0, seen  # the pipeline itself takes well under a second


def test_a_command_is_applied_where_it_arrived_among_the_windows(tmp_path: Path) -> None:
    """Before: a batch's commands were applied after all of its windows: the windows that
    came after a rebaseline were learned into the old baseline, then wiped by it."""
    config = one_sensor_site("http://127.0.0.1:9", "d", tmp_path / "state")

    class Sink:
        def write(self, points: object) -> None:
            pass

        def close(self) -> None:
            pass

    service = StreamService(config, Sink())
    acked: list[int] = []
    service.source.ack = lambda message: acked.append(message.mid)  # type: ignore[method-assign]
    t0 = time.time_ns() - 10 * 10**9
    rebaseline = _command(99, action="rebaseline", sensor="a", by="op", t=time.time(),
                          id="r1")

    async def main() -> None:
        for batch in ([_window(s, t0_ns=t0 + s * 10**9) for s in (1, 2, 3)],
                      [_window(4, t0_ns=t0 + 4 * 10**9), rebaseline,
                       _window(5, t0_ns=t0 + 5 * 10**9), _window(6, t0_ns=t0 + 6 * 10**9)]):
            commit = await service._handle(batch)
            assert commit is not None
            await commit()

    asyncio.run(main())
    status = service.pipeline.online.status("a")
    assert (status["rebaselines"], status["learned_windows"]) == (1, 2), status
    assert sorted(acked) == [1, 2, 3, 4, 5, 6, 99]


def test_a_command_delivered_again_after_a_stop_before_its_write_writes_its_action(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """Before: the command's id was saved when it was applied, before its `actions` row
    was written. A stop during a database outage left it unacknowledged; the broker gave
    it again to the next start, which knew the id, wrote nothing and acknowledged it: the
    rebaseline had happened, but who did it, and when, was gone for good."""
    url, db = influx_db
    state = tmp_path / "state"
    command = {"action": "rebaseline", "sensor": "a", "by": "alice", "t": time.time(),
               "id": "9f0c-rebaseline", "note": "bearing replaced"}
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the database is down
    first = StreamService(one_sensor_site(down, db, state), V1Writer(down, db, timeout_s=2.0))
    first_acks: list[int] = []
    first.source.ack = lambda m: first_acks.append(m.mid)  # type: ignore[method-assign]

    async def stopped_during_the_outage() -> None:
        commit = await first._handle([_command(7, **command)])
        assert commit is not None
        task = asyncio.create_task(commit())
        await asyncio.sleep(1.5)  # retrying the write
        first._stop.set()  # SIGTERM
        await asyncio.wait_for(task, 10)

    asyncio.run(stopped_during_the_outage())
    assert first_acks == []  # the broker keeps it
    assert first.pipeline.online.status("a")["rebaselines"] == 1

    again = StreamService(one_sensor_site(url, db, state), V1Writer(url, db))
    acks: list[int] = []
    again.source.ack = lambda m: acks.append(m.mid)  # type: ignore[method-assign]

    async def redelivered() -> None:
        commit = await again._handle([_command(3, **command)])
        assert commit is not None
        await commit()

    asyncio.run(redelivered())
    assert acks == [3]
    online = again.pipeline.online
    assert (online.counters["commands_repeated"], online.status("a")["rebaselines"]) == (1, 1)
    rows = query_rows(influxd, db, "SELECT * FROM actions")
    assert [(r["action"], r["by"], r["note"], r["result"]) for r in rows] == [
        ("rebaseline", "alice", "bearing replaced", "baseline reset, learning again")], rows

    # Delivered once more (its acknowledgement lost): the same row, not a second one.
    asyncio.run(redelivered())
    assert query_rows(influxd, db, "SELECT * FROM actions") == rows
