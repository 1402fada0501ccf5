"""The stream keeps going when one window makes the pipeline fail."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
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


def _service(state_dir: Path) -> StreamService:
    config = parse({
        "site": {"id": "s"},
        "stream": {"state_dir": str(state_dir)},
        "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": 25.0}],
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
