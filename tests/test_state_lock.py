"""Operator actions and batches never change per-sensor state at the same time (issue 14).

Before: an acknowledge from the evidence page ran `Pipeline.apply_command` on the event loop
while a batch ran `Pipeline.process` in a worker thread. Here a slow batch is in the
pipeline when the operator acts; the action must wait for it. Real influxd behind the writer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from plant import one_sensor_site, query_rows

from ballpass import topics, wire
from ballpass.services import Influxd
from ballpass.stream.mqtt_source import Delivery
from ballpass.stream.service import StreamService
from ballpass.stream.sinks.influx import V1Writer


def test_an_operator_action_waits_for_the_batch_in_the_pipeline(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    config = one_sensor_site(url, db, tmp_path)
    service = StreamService(config, V1Writer(url, db))
    inside = threading.Event()
    overlaps: list[bool] = []
    process, apply = service.pipeline.process, service.pipeline.apply_command

    def slow_process(batch: Any) -> Any:
        inside.set()
        time.sleep(0.5)
        try:
            return process(batch)
        finally:
            inside.clear()

    def recording_apply(command: Any, t_ns: int | None = None) -> Any:
        overlaps.append(inside.is_set())
        return apply(command, t_ns)

    service.pipeline.process = slow_process  # type: ignore[method-assign]
    service.pipeline.apply_command = recording_apply  # type: ignore[method-assign]
    w = wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=25600.0,
                    samples=0.1 * np.random.default_rng(0).standard_normal((1, 4096)))
    delivery = Delivery(topics.window("s1", "g", "a"), wire.encode(w), 1, 1, 0)

    async def run() -> None:
        batch = asyncio.create_task(service._handle([delivery]))
        while not inside.is_set():
            await asyncio.sleep(0.01)
        await service.operator_action("a", "bob", "seen")
        commit = await batch
        assert commit is not None
        await commit()

    asyncio.run(run())
    assert overlaps == [False], "the action ran while the batch was in the pipeline"
    assert service.counters.written == 1


def test_the_online_save_holds_the_lock_but_is_not_pipeline_time(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """The periodic save of the online models runs after a batch, under the state lock (the
    next batch must not change the models while they are written) but outside the `process`
    stage and the watchdog's busy window: a slow disk is not a stuck pipeline."""
    url, db = influx_db
    config = one_sensor_site(url, db, tmp_path, online_save_s=0.001)
    service = StreamService(config, V1Writer(url, db))
    seen: list[tuple[bool, bool]] = []
    save_all = service.pipeline.online.save_all

    def slow_save() -> int:
        seen.append((service._state_lock.locked(), service._busy_since is None))
        time.sleep(0.5)
        return save_all()

    service.pipeline.online.save_all = slow_save  # type: ignore[method-assign]
    w = wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=25600.0,
                    samples=0.1 * np.random.default_rng(0).standard_normal((1, 4096)))

    async def run() -> None:
        service._online_saved = 0.0
        commit = await service._handle([Delivery(topics.window("s1", "g", "a"),
                                                 wire.encode(w), 1, 1, 0)])
        assert commit is not None
        await commit()

    asyncio.run(run())
    assert seen == [(True, True)], "the save ran outside the lock or inside the busy window"
    process_s = service.metrics.registry.get_sample_value(
        "ballpass_stream_stage_seconds_sum", {"stage": "process"})
    assert process_s is not None and process_s < 0.5, f"process stage took {process_s} s"
    assert service.counters.written == 1


def _alert(status: str, sensor: str = "a") -> dict[str, Any]:
    return {"site": "s1", "sensor": sensor, "status": status, "diagnosis": "outer_race",
            "alert_id": "a-1"}


def _firing_batches(service: StreamService) -> list[str]:
    """Make every batch of `service` fire an alert; returns the statuses of the alerts it
    sends, as they are sent."""
    process = service.pipeline.process

    def firing_process(batch: Any) -> Any:
        out = process(batch)
        return type(out)(out.results, out.points, [*out.alerts, _alert("firing")])

    sent: list[str] = []
    service.pipeline.process = firing_process  # type: ignore[method-assign]
    service.publisher.send_alerts = (  # type: ignore[method-assign]
        lambda alerts: sent.extend(a["status"] for a in alerts))
    return sent


def _one_window() -> list[Delivery]:
    w = wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=25600.0,
                    samples=0.1 * np.random.default_rng(0).standard_normal((1, 4096)))
    return [Delivery(topics.window("s1", "g", "a"), wire.encode(w), 1, 1, 0)]


def test_an_operator_actions_alerts_follow_the_batch_being_written(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """A batch fired an alert and is still being written (a slow database) when an operator
    rebaselines the sensor, which resolves that alert: on-call must get the firing first,
    not a resolution of an alert they never saw, followed by the alert itself."""
    url, db = influx_db
    config = one_sensor_site(url, db, tmp_path)
    writer = V1Writer(url, db)
    service = StreamService(config, writer)
    apply = service.pipeline.apply_command

    def resolving_apply(command: Any, t_ns: int | None = None) -> Any:
        out = apply(command, t_ns)
        return type(out)(out.results, out.points, [*out.alerts, _alert("resolved")])

    write = writer.write
    writing = threading.Event()

    def slow_write(points: Any) -> Any:
        if not writing.is_set():  # the batch's write; the action's own write is not slow
            writing.set()
            time.sleep(0.8)
        return write(points)

    sent = _firing_batches(service)
    service.pipeline.apply_command = resolving_apply  # type: ignore[method-assign]
    writer.write = slow_write  # type: ignore[method-assign]

    async def run() -> None:
        commit = await service._handle(_one_window())
        assert commit is not None
        committing = asyncio.create_task(commit())  # as MqttSource runs it
        while not writing.is_set():
            await asyncio.sleep(0.01)
        record = await service.operator_action("a", "bob", "bearing replaced",
                                               action="rebaseline")
        assert sent == [], "the action's alert went out before the batch's"
        assert not committing.done(), "the page waited for the database"
        assert record["result"]
        await committing
        await asyncio.gather(*service._finishing_actions)  # the action's alert, after it

    asyncio.run(run())
    assert sent == ["firing", "resolved"], sent
    assert service.counters.written == 1


def test_an_operator_action_is_written_with_retries_then_its_alert_sent(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """Before: an action's `actions` (and `alerts`) points had one write attempt; with the
    database down for a moment they were dropped with a warning, uncounted, and its alert
    went to on-call anyway."""
    from ballpass.stream.sinks.influx import InfluxWriteError

    url, db = influx_db
    config = one_sensor_site(url, db, tmp_path)
    writer = V1Writer(url, db)
    service = StreamService(config, writer)
    write, calls = writer.write, []

    def flaky(points: Any) -> Any:
        calls.append(len(points))
        if len(calls) == 1:
            raise InfluxWriteError("down for a moment", retryable=True)
        return write(points)

    writer.write = flaky  # type: ignore[method-assign]

    async def run() -> dict[str, Any]:
        record = await service.operator_action("a", "bob", "checked", action="ack")
        await asyncio.gather(*service._finishing_actions)
        return record

    record = asyncio.run(run())
    assert record["result"] == "no active alarm" and calls == [1, 1]
    assert service.counters.write_retries == 1
    rows = query_rows(influxd, db, 'SELECT "by", "result" FROM actions')
    assert [(r["by"], r["result"]) for r in rows] == [("bob", "no active alarm")]


def test_a_stop_before_the_batch_is_written_sends_its_alerts_and_writes_them_at_start(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """Before: a stop (SIGTERM) while the database was down dropped the batch's alerts: its
    windows stay in the broker, but the alert state had moved on (saved at processing), so
    after the restart they fired nothing. Now the alert goes to the webhooks at the stop,
    and its row, held with the alert state, is written at the next start."""
    url, db = influx_db
    # One flat-lined window fires an instrument alert.
    alert = {"enter_k": 1, "leave_m": 0, "window_n": 1}
    down = StreamService(one_sensor_site("http://127.0.0.1:1", "db", tmp_path, alert=alert),
                         V1Writer("http://127.0.0.1:1", "db"))  # nothing listens
    sent: list[str] = []
    acked: list[int] = []
    down.publisher.send_alerts = (  # type: ignore[method-assign]
        lambda alerts: sent.extend(a["status"] for a in alerts))
    down.source.ack = lambda d: acked.append(d.mid)  # type: ignore[method-assign]
    w = wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=25600.0, samples=np.zeros((1, 4096)))

    async def stop_while_writing() -> None:
        commit = await down._handle([Delivery(topics.window("s1", "g", "a"),
                                              wire.encode(w), 1, 1, 0)])
        assert commit is not None
        committing = asyncio.create_task(commit())
        while down.counters.write_retries == 0:
            await asyncio.sleep(0.05)
        down._stop.set()
        await asyncio.wait_for(committing, 10)

    asyncio.run(stop_while_writing())
    assert sent == ["firing"], "on-call hears of it at the stop"
    assert acked == [] and down.counters.written == 0, acked
    down.pipeline.alerts.save()  # as `run` does on its way out

    up = StreamService(one_sensor_site(url, db, tmp_path, alert=alert), V1Writer(url, db))
    [held] = up.pipeline.alerts.held
    assert held.alert["status"] == "firing" and held.t_ns == w.t0_ns and held.hooked
    up.publisher.send_alerts = (  # type: ignore[method-assign]
        lambda alerts: sent.extend(a["status"] for a in alerts))
    asyncio.run(up._finish_held())
    assert sent == ["firing"], "not sent twice"
    rows = query_rows(influxd, db, 'SELECT "alert_id", "status" FROM alerts')
    assert [(r["alert_id"], r["status"]) for r in rows] == [(held.alert["alert_id"], "firing")]
    again = StreamService(one_sensor_site(url, db, tmp_path, alert=alert), V1Writer(url, db))
    assert again.pipeline.alerts.held == [], "finished, and the state saved so"
