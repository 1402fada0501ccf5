"""The stream's publisher on a real mosquitto: diagnoses go out in the background while
the next batch is handled, yet each sensor's arrive in order, and a batch with alerts has
its diagnoses out before its alerts (stream/publisher.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ballpass import topics
from ballpass.config import BrokerConfig, StreamConfig
from ballpass.services import Mosquitto
from ballpass.stream.counters import StreamCounters
from ballpass.stream.mqtt_source import MqttSource
from ballpass.stream.publisher import Publisher

SENSORS = [f"s{i}" for i in range(16)]  # the default batch_max: 16 publishes at once
BATCHES = 30
ALERT_BATCH = 12


def _subscriber(port: int, name: str) -> tuple[mqtt.Client, list[mqtt.MQTTMessage],
                                                threading.Event]:
    got: list[mqtt.MQTTMessage] = []
    ready = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.on_message = lambda _c, _u, m: got.append(m)
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.subscribe([(topics.diagnosis("p1", "gw1", "+"), 1), (topics.alerts("p1"), 1)])
    c.loop_start()
    return c, got, ready


def _latest(k: int) -> dict[str, tuple[Any, dict[str, Any], int]]:
    return {s: (None, {"site": "p1", "gateway": "gw1", "sensor": s, "batch": k}, 1)
            for s in SENSORS}


def test_diagnoses_in_order_and_before_their_alert(mosquitto: Mosquitto,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sub, got, ready = _subscriber(mosquitto.port, "watch")
    assert ready.wait(10)
    source = MqttSource(BrokerConfig(host="127.0.0.1", port=mosquitto.port),
                        StreamConfig(client_id="pub-test"), [])
    counters = StreamCounters()
    publisher = Publisher(source, None, counters)
    alert = {"site": "p1", "sensor": "s3", "status": "firing", "diagnosis": "outer_race",
             "alert_id": "a1"}

    async def main() -> list[bool]:
        stop = asyncio.Event()

        async def nothing(batch: Any) -> None:
            pass

        runner = asyncio.create_task(source.run(stop, nothing))
        while not source.connected:
            await asyncio.sleep(0.01)
        returned_early = []
        for k in range(BATCHES):
            await publisher.publish(_latest(k), [alert] if k == ALERT_BATCH else [])
            returned_early.append(publisher._pending is not None)
        await publisher.flush()
        stop.set()
        await runner
        return returned_early

    early = asyncio.run(main())
    # A full batch of diagnoses at once is the design, not a backlog worth a log line each.
    assert not [r for r in caplog.records if "pending publish calls" in r.getMessage()]
    assert early == [k != ALERT_BATCH for k in range(BATCHES)]
    assert counters.alerts_fired == 1
    for _ in range(100):
        if len(got) >= BATCHES * len(SENSORS) + 1:
            break
        time.sleep(0.05)
    sub.loop_stop()
    sub.disconnect()
    order = [(m.topic, json.loads(m.payload)) for m in got]
    assert len(order) == BATCHES * len(SENSORS) + 1
    for s in SENSORS:
        batches = [p["batch"] for t, p in order if t.endswith(f"/{s}/diagnosis")]
        assert batches == list(range(BATCHES)), (s, batches)
    at = next(i for i, (t, _) in enumerate(order) if t == topics.alerts("p1"))
    before = {p["sensor"] for t, p in order[:at] if p.get("batch") == ALERT_BATCH}
    assert before == set(SENSORS)  # the alert's batch's diagnoses, all before it
    assert all(p.get("batch", ALERT_BATCH + 1) <= ALERT_BATCH for _, p in order[:at])
    # What a newcomer reads (retained): each sensor's last diagnosis.
    late, retained, late_ready = _subscriber(mosquitto.port, "late")
    assert late_ready.wait(10)
    for _ in range(100):
        if len(retained) >= len(SENSORS):
            break
        time.sleep(0.05)
    late.loop_stop()
    late.disconnect()
    assert sorted((json.loads(m.payload)["sensor"], json.loads(m.payload)["batch"])
                  for m in retained) == sorted((s, BATCHES - 1) for s in SENSORS)
