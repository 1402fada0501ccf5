"""The stream keeps going when one window makes the pipeline fail."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plant import one_sensor_site

from ballpass import topics, wire
from ballpass.config import parse
from ballpass.services import Influxd
from ballpass.stream.mqtt_source import Delivery
from ballpass.stream.pipeline import Incoming
from ballpass.stream.service import StreamService
from ballpass.stream.sinks.influx import V1Writer
from ballpass.wire import Window


class _NoWriter:
    def write(self, points: object) -> None:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


def _service(state_dir: Path, **asset: str) -> StreamService:
    config = parse({
        "site": {"id": "s"},
        "stream": {"state_dir": str(state_dir)},
        "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": 25.0, **asset}],
        "gateway": [{"id": "g", "sensor": [
            {"id": x, "driver": "simulated", "asset": "m", "fs_hz": 25600,
             "window_samples": 4096, "interval_s": 1} for x in ("a", "b")]}],
    })
    return StreamService(config, _NoWriter())


def _item(sensor: str, seq: int) -> Incoming:
    rng = np.random.default_rng(seq)
    return Incoming("s", "g", sensor, Window(seq=seq, t0_ns=seq, fs_hz=25600.0,
                                            samples=0.1 * rng.standard_normal((1, 4096))))


def test_a_window_that_breaks_the_pipeline_is_isolated_counted_and_the_rest_processed(
        tmp_path: Path) -> None:
    service = _service(tmp_path)
    real = service.pipeline.process

    def process(batch: list[Incoming]) -> object:
        if any(item.sensor == "b" for item in batch):
            raise RuntimeError("kernel bug")
        return real(batch)

    service.pipeline.process = process  # type: ignore[method-assign]
    output = asyncio.run(asyncio.to_thread(service._process, [_item("a", 1), _item("b", 2),
                                                             _item("a", 3)]))
    assert sorted(r.incoming.window.seq for r in output.results) == [1, 3]
    assert service.counters.rejected == {"processing_error": 1}
    [letter] = (tmp_path / "deadletter.jsonl").read_text().splitlines()
    assert json.loads(letter)["reason"] == "processing_error"
    assert {p.measurement for p in output.points} == {"vibration", "diagnosis"}


def test_a_batch_run_again_window_by_window_adds_each_windows_impacts_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the diagnosis failing on a batch's second window left the first window's
    impact counts added; run again alone, it added them a second time (rule 3b's pooled
    evidence counted it twice)."""
    from ballpass.stream import pipeline as pipeline_module

    service = _service(tmp_path)
    real, calls = pipeline_module.diagnose, []

    def diagnose(batch: Any, i: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(i)
        if calls == [0, 1]:
            raise RuntimeError("diagnosis bug, once")
        return real(batch, i, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "diagnose", diagnose)
    output = asyncio.run(asyncio.to_thread(service._process, [_item("a", 1), _item("a", 2)]))
    assert sorted(r.incoming.window.seq for r in output.results) == [1, 2]
    assert len(service.pipeline.impacts.export("a")) == 2


def test_a_sensor_whose_first_windows_are_faulty_is_summarised(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    """A sensor that sends only `sensor_fault` windows from its first one (a cable not yet
    plugged in at commissioning) has no machine alert state: the batch's commit still
    finishes (before: a KeyError after the write, before the acknowledgements, so the
    windows came back forever and, on a cluster, froze their partition)."""
    url, db = influx_db
    config = one_sensor_site(url, db, tmp_path)
    service = StreamService(config, V1Writer(url, db))
    acked: list[int] = []
    service.source.ack = lambda d: acked.append(d.mid)  # type: ignore[method-assign]
    flat = [Delivery(topics.window("s1", "g", "a"),
                     wire.encode(Window(seq=i, t0_ns=time.time_ns(), fs_hz=25600.0,
                                        samples=np.zeros((1, 4096)))), 1, i, 0)
            for i in (1, 2)]

    async def run() -> None:
        commit = await service._handle(flat)
        assert commit is not None
        await commit()

    asyncio.run(run())
    assert acked == [1, 2]
    line = service.sensors["a"]
    assert line["diagnosis"] == "sensor_fault", line
    assert line["alerted"] is False and line["acknowledged_by"] is None, line


def test_messages_that_broke_a_check_are_refused_not_a_crash_loop(tmp_path: Path) -> None:
    """Before: a huge integer in a status's time or a tacho's speed (OverflowError), or a
    command whose sensor is a list (TypeError), escaped the checks; the stream exited, and
    the broker gave the message again after every restart."""
    service = _service(tmp_path, tacho_sensor="b")
    acked: list[int] = []
    service.source.ack = lambda d: acked.append(d.mid)  # type: ignore[method-assign]
    huge = "9" * 400
    status = f'{{"state": "online", "t": {huge}}}'.encode()
    tacho = f'{{"t_ns": 1, "shaft_hz": {huge}}}'.encode()
    batch = [Delivery("bp/v1/s/g/status", status, 1, 1, 0),
             Delivery("bp/v1/s/g/b/tacho", tacho, 1, 2, 0)]
    accepted, points, commands = service._sort(batch)
    assert (accepted, points, commands, acked) == ([], [], [], [1, 2])
    assert service.counters.rejected == {"status": 1, "tacho": 1}

    commands = [Delivery("bp/v1/s/command", json.dumps(c).encode() if isinstance(c, dict)
                         else c, 1, 3 + i, 0) for i, c in enumerate([
        {"action": "ack", "sensor": ["a"]},
        f'{{"action": "ack", "sensor": "a", "t": {huge}}}'.encode(),
        b"[" * 100_000])]  # RecursionError in the JSON parser
    done = service._commands(commands)
    assert [p.fields for p in done.points] == [{"by": "unknown", "result": "no active alarm",
                                                "note": ""}]  # the huge "t" left out
    assert service.pipeline.online.counters["commands_rejected"] == 1
    assert service.counters.rejected == {"status": 1, "tacho": 1, "command": 1}

    # A check that raises anyway (a case nobody thought of) is refused and acknowledged.
    def broken(*args: object) -> object:
        raise RuntimeError("a case nobody thought of")

    service.admission.admit = broken  # type: ignore[method-assign]
    service._sort([Delivery(topics.window("s", "g", "a"), b"x", 1, 9, 0)])
    assert acked[-1] == 9 and service.counters.rejected["unhandled"] == 1
    letters = [json.loads(x) for x in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert letters[-1]["reason"] == "unhandled" and "nobody" in letters[-1]["detail"]


def test_a_window_whose_online_step_fails_does_not_advance_the_others_twice(
        tmp_path: Path) -> None:
    """Before: a failure in the online or alert step (after other windows of the batch had
    advanced their models and alert state) retried the whole batch window by window: the
    others were learned twice, and alerts of the first pass were lost."""
    service = _service(tmp_path)
    real = service.pipeline.online.observe

    def observe(site: str, gateway: str, sensor: str, *args: object) -> object:
        if sensor == "b":
            raise RuntimeError("model bug")
        return real(site, gateway, sensor, *args)

    service.pipeline.online.observe = observe  # type: ignore[method-assign]
    batch = [_item("a", 1), _item("a", 2), _item("b", 3), _item("a", 4)]
    output = asyncio.run(asyncio.to_thread(service._process, batch))
    assert [r.incoming.window.seq for r in output.results] == [1, 2, 4]
    assert service.pipeline.online.models["a"].learned == 3  # once each, not twice
    assert service.counters.rejected == {"processing_error": 1}
    [letter] = (tmp_path / "deadletter.jsonl").read_text().splitlines()
    assert "model bug" in json.loads(letter)["detail"]


def test_a_window_refused_after_its_transition_leaves_no_alarm_made_and_untold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a window whose points failed after its alert state had fired was refused,
    but the state stayed in alarm: the alarm was never held, written or sent, and the
    next windows, already in alarm, made no transition."""
    from ballpass.models.catalog import lookup
    from ballpass.simulators.signals import synthesize
    from ballpass.stream import pipeline as pipeline_module

    service = _service(tmp_path)
    rng = np.random.default_rng(2)
    orders = lookup("SKF 6205").orders()

    def outer_race(seq: int) -> Incoming:
        x = synthesize("outer_race", orders, 25.0, 25600.0, 8192, severity=1.0, rng=rng)
        return Incoming("s", "g", "a", Window(seq=seq, t0_ns=seq, fs_hz=25600.0,
                                              samples=x.reshape(1, -1)))

    real, refused = pipeline_module.window_points, []

    def window_points(r: Any) -> Any:
        if r.state == "alarm" and not refused:
            refused.append(r.incoming.window.seq)
            raise RuntimeError("points bug, once")
        return real(r)

    monkeypatch.setattr(pipeline_module, "window_points", window_points)
    alerts: list[dict[str, Any]] = []
    failed: list[Any] = []
    for seq in range(1, 9):
        output = asyncio.run(asyncio.to_thread(service._process, [outer_race(seq)]))
        alerts += output.alerts
        failed += output.failed
    assert refused and [item.window.seq for item, _ in failed] == refused
    assert [(a["status"], a["diagnosis"]) for a in alerts] == [("firing", "outer_race")]
    held = service.pipeline.alerts.held
    assert [h.alert["alert_id"] for h in held] == [alerts[0]["alert_id"]]
    assert service.pipeline.alerts.state("a") == "alarm"


def test_a_status_file_the_disk_refuses_stops_neither_the_status_loop_nor_the_saves(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: one failed write of the status file ended the status loop silently (no
    more status, no quiet-spell save of the alert state), and at the stop its error was
    raised again, skipping the save of the online models."""
    import shutil

    status_dir = tmp_path / "status"
    status_dir.mkdir()
    class Sink(_NoWriter):
        def write(self, points: object) -> None:
            pass

    service = StreamService(_service(tmp_path / "state").config, Sink(),
                            status_file=status_dir / "status.json", status_interval_s=0.05)
    loop_alive: list[bool] = []

    async def source_run(stop: asyncio.Event, handle: Any) -> None:
        await asyncio.to_thread(service._process, [_item("a", 1), _item("a", 2)])
        shutil.rmtree(status_dir)
        await asyncio.sleep(0.3)
        loop_alive.append(any(t.get_name() == "status" and not t.done()
                              for t in asyncio.all_tasks()))
        stop.set()

    service.source.run = source_run  # type: ignore[method-assign]
    asyncio.run(service.run(asyncio.Event()))
    assert loop_alive == [True]
    assert "event=status_file_unwritable" in caplog.text
    assert list((tmp_path / "state" / "online").glob("a.*"))


def _delivery(topic: str, payload: bytes, mid: int = 1) -> Delivery:
    return Delivery(topic, payload, 1, mid, 0)


def test_a_command_delivered_again_is_applied_once(tmp_path: Path) -> None:
    """Before: a command whose acknowledgement was lost with its connection came back and
    was applied again (a false alarm learned twice, a second rebaseline)."""
    service = _service(tmp_path)
    asyncio.run(asyncio.to_thread(service._process, [_item("a", i) for i in range(1, 4)]))
    command = json.dumps({"action": "false_alarm", "sensor": "a", "by": "op", "t": 1.0,
                          "id": "c0ffee"}).encode()
    again = [_delivery("bp/v1/s/command", command, mid) for mid in (1, 2)]
    output = service._commands(again)
    # The second delivery writes the first one's `actions` point again (it may not have
    # been written: a stop before the write), with its time: one row in InfluxDB.
    assert [p.measurement for p in output.points] == ["actions", "actions"]
    assert output.points[0] == output.points[1]
    assert service.pipeline.online.counters["commands_repeated"] == 1
    assert service.pipeline.online.models["a"].counters["false_alarms_learned"] == 1


def test_messages_of_another_site_or_an_unknown_gateway_are_refused_and_counted(
        tmp_path: Path) -> None:
    """Before: a command on another site's topic was applied to this site's sensor of that
    name; another site's (or an unknown) gateway's status replaced this site's gateway of
    that name in the status and /metrics and was written; a tacho reading of a sensor that
    is no asset's tacho_sensor vanished uncounted."""
    service = _service(tmp_path)
    status = json.dumps({"state": "offline", "gateway": "g", "site": "other"}).encode()
    batch = [
        _delivery("bp/v1/other/command", json.dumps(
            {"action": "rebaseline", "sensor": "a", "by": "x", "t": 1.0}).encode()),
        _delivery("bp/v1/other/g/status", status),
        _delivery("bp/v1/s/ghost/status", status.replace(b'"g"', b'"ghost"')),
        _delivery("bp/v1/s/g/a/tacho", json.dumps({"t_ns": 1, "shaft_hz": 25.0}).encode()),
    ]
    accepted, points, commands = service._sort(batch)
    assert (accepted, points, commands) == ([], [], [])
    assert service.counters.rejected == {"command": 1, "status": 2, "tacho": 1}
    assert service.gateways == {}


def test_a_source_that_fails_while_a_write_is_retried_does_not_hang_the_stop(
        tmp_path: Path) -> None:
    """Before: leaving `run` on an error (stop not set) waited for the operator actions'
    writes, which retried for as long as the database was down: the process hung."""
    from ballpass.stream.sinks.influx import InfluxWriteError
    from ballpass.stream.sinks.lineprotocol import Point

    class Down(_NoWriter):
        def write(self, points: object) -> None:
            raise InfluxWriteError("database down", retryable=True)

    service = StreamService(_service(tmp_path).config, Down())
    service.writer.ensure_database = lambda stop: asyncio.sleep(0)  # type: ignore[method-assign]

    async def source_run(stop: asyncio.Event, handle: Any) -> None:
        point = Point("actions", {"sensor": "a"}, {"by": "op"}, time.time_ns())
        task = asyncio.create_task(service.writer.write([point], stop, 0))
        service._finishing_actions.add(task)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        raise RuntimeError("a bug in the source")

    service.source.run = source_run  # type: ignore[method-assign]

    async def main() -> None:
        await asyncio.wait_for(service.run(asyncio.Event()), 20)

    with pytest.raises(RuntimeError, match="a bug in the source"):
        asyncio.run(main())


def test_a_refused_status_is_logged_with_its_reason(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Before: `event=status_rejected` had no reason=, unlike every other refusal."""
    service = _service(tmp_path)
    service._sort([_delivery("bp/v1/s/g/status", b"not json")])
    assert service.counters.rejected == {"status": 1}
    assert "event=status_rejected reason=status topic=" in caplog.text
    # Only window messages go to the dead-letter file (docs/stream.md).
    assert not (tmp_path / "deadletter.jsonl").exists()
