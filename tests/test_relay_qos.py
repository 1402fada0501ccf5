"""The cluster relay refuses windows that came at QoS 0, as the embedded stream does.

Before: the relay stored every window it got from mosquitto in JetStream, and the workers
take every JetStream message as QoS 1 (stream/cluster/source.py), so a gateway (or anyone
with its credentials) publishing windows at QoS 0 got past the `qos` refusal of
stream/admission.py in cluster mode. Real mosquitto, real 3-node NATS cluster (the
`nats_plant` fixture), the relay's own MQTT subscription."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import nats
import paho.mqtt.client as mqtt
import pytest
from natsplant import PASSWORDS, Gateway, windows

from ballpass import topics
from ballpass.config import Config
from ballpass.nats_server import NatsCluster
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.relay import Relay


async def _until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_window_at_qos0_is_refused_by_the_relay(
        nats_plant: tuple[NatsCluster, Config], caplog: pytest.LogCaptureFixture) -> None:
    cluster, config = nats_plant
    caplog.set_level(logging.WARNING, logger="ballpass.stream.cluster.relay")
    w = windows("a", 4)
    tacho = json.dumps({"t_ns": time.time_ns(), "shaft_hz": 25.0}).encode()

    async def main() -> tuple[dict[str, int], list[str], int, int]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        gw = None
        try:
            js = nc.jetstream(timeout=10)
            await topology.declare(js, config.cluster, "s1")
            held = [True]  # the relay lease, never lost here (as for the edge relay)
            relay = Relay(config, nc, js, holds=lambda: held[0])
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            try:
                await _until(lambda: relay.mqtt.connected, 20, "the relay subscribed")
                gw = Gateway("gw1", config.broker.port)
                window_topic = topics.window("s1", "gw1", "a")
                sent = [
                    gw.client.publish(window_topic, w[0], qos=1),
                    gw.client.publish(window_topic, w[1], qos=0),  # refused
                    gw.client.publish(window_topic, w[2], qos=1),
                    gw.client.publish(window_topic, w[3], qos=0),  # refused
                    # tacho readings are QoS 0 by contract: relayed
                    gw.client.publish(topics.tacho("s1", "gw1", "a"), tacho, qos=0),
                ]
                for info in sent:
                    info.wait_for_publish(10)
                    assert info.rc == mqtt.MQTT_ERR_SUCCESS
                await _until(lambda: relay.counters["relayed"] + relay.counters[
                    "relay_refused"] >= 5, 20, "all five handled")
                await asyncio.sleep(0.3)  # nothing more comes
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await asyncio.sleep(0.5)
                # Before: its lease watch went on (spinning) after `run` returned, and
                # asyncio.run could not cancel it (Python 3.11's wait_for swallowed it).
                lingering = [t.get_name() for t in asyncio.all_tasks()
                             if t.get_name().startswith("relay-") and not t.done()]
                held[0] = False  # lets a lingering watch end, so the test cannot hang
                assert lingering == [], lingering
            stored: list[str] = []
            info = await js.stream_info(topology.WINDOWS)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(topology.WINDOWS, seq)
                assert m.subject is not None and m.data is not None
                stored.append(m.subject.rsplit(".", 1)[1] + ":" + str(
                    w.index(m.data) if m.data in w else "tacho"))
            return dict(relay.counters), stored, info.state.messages, relay.mqtt.dropped
        finally:
            if gw is not None:
                gw.close()
            await nc.close()

    counters, stored, n, dropped = asyncio.run(asyncio.wait_for(main(), 90))
    assert sorted(stored) == ["tacho:tacho", "window:0", "window:2"], stored
    assert n == 3 and dropped == 0
    assert counters["relayed"] == 3
    assert (counters["relay_refused"], counters["relay_refused_qos"],
            counters["relay_refused_topic"]) == (2, 2, 0), counters
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("event=window_rejected")]
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("event=window_rejected reason=qos "
                               "topic=bp/v1/s1/gw1/a/window qos=0 "), line
