"""The stream keeps going when one window makes the pipeline fail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from ballpass.config import parse
from ballpass.stream.pipeline import Incoming
from ballpass.stream.service import StreamService
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
