"""MqttSource on a real mosquitto: a batch's commit (write, acknowledge) runs while the next
batch is handled, commits run in batch order, and at a stop the last commit finishes on
its own connection, so its acknowledgements reach the broker (stream/mqtt_source.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from ballpass import wire
from ballpass.config import BrokerConfig, ConfigError, StreamConfig
from ballpass.services import Mosquitto
from ballpass.stream import mqtt_source
from ballpass.stream.counters import StreamCounters
from ballpass.stream.mqtt_source import (
    BATCH_MAX_SAMPLES,
    QUEUE_MAX,
    Commit,
    Delivery,
    MqttSource,
)

TOPIC = "p1/gw1/s1/window"
MESSAGES = 40
BATCH = 8


def _publish(port: int, n: int) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(TOPIC, str(i).encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def _source(port: int) -> MqttSource:
    return MqttSource(BrokerConfig(host="127.0.0.1", port=port),
                      StreamConfig(client_id="overlap-test", batch_max=BATCH,
                                   batch_wait_s=0.05), [TOPIC])


def test_commits_overlap_the_next_batch_in_order_and_finish_at_the_stop(
        mosquitto: Mosquitto) -> None:
    source = _source(mosquitto.port)
    events: list[tuple[str, int]] = []
    payloads: list[bytes] = []

    async def handle(batch: list[Delivery]) -> Commit:
        k = sum(1 for e, _ in events if e == "handled")
        events.append(("handled", k))
        payloads.extend(d.payload for d in batch)  # type: ignore[misc]

        async def commit() -> None:
            events.append(("commit_start", k))
            await asyncio.sleep(0.5)  # a slow write: longer than the disconnect takes
            for d in batch:
                source.ack(d)
            events.append(("commit_end", k))
        return commit

    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(source.run(stop, handle))
        while not source.connected:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_publish, mosquitto.port, MESSAGES)
        while len(payloads) < MESSAGES:
            await asyncio.sleep(0.01)
        stop.set()  # the last batch's commit is still sleeping
        await runner

    asyncio.run(main())
    assert payloads == [str(i).encode() for i in range(MESSAGES)]
    batches = sum(1 for e, _ in events if e == "handled")
    assert batches >= MESSAGES // BATCH
    at = {e: i for i, e in enumerate(events)}
    for k in range(1, batches):
        # Overlap: batch k was handled while batch k-1's commit was still running ...
        assert at[("handled", k)] < at[("commit_end", k - 1)], events
        # ... and commits never overlap each other.
        assert at[("commit_end", k - 1)] < at[("commit_start", k)], events
    assert ("commit_end", batches - 1) in at  # finished although stop came first

    # The same persistent session again: every message was acknowledged on the
    # connection it came on, so the broker has nothing to send again.
    again = _source(mosquitto.port)
    redelivered: list[Delivery] = []

    async def collect(batch: list[Delivery]) -> None:
        redelivered.extend(batch)

    async def resume() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(again.run(stop, collect))
        while not again.connected:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        stop.set()
        await runner

    asyncio.run(resume())
    assert redelivered == []


def test_a_reconfigure_while_subscribing_connects_again_with_the_new_settings(
        mosquitto: Mosquitto) -> None:
    """Before: a SIGHUP that came while the first connection was subscribing found no
    client to drop, and the stream ran on with the old broker settings (credentials)."""
    source = _source(mosquitto.port)
    new = dataclasses.replace(source.broker, keepalive_s=source.broker.keepalive_s + 1)
    real_subscribe = aiomqtt.Client.subscribe
    subscribed_with: list[int] = []

    async def subscribe(client: aiomqtt.Client, *args: object, **kwargs: object) -> object:
        subscribed_with.append(client._keepalive)  # type: ignore[attr-defined]
        if len(subscribed_with) == 1:
            source.reconfigure(new)  # the reload, in the middle of the first subscribe
        return await real_subscribe(client, *args, **kwargs)  # type: ignore[arg-type]

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop, lambda batch: asyncio.sleep(0)))
        for _ in range(200):
            if source.connected:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    aiomqtt.Client.subscribe = subscribe  # type: ignore[method-assign]
    try:
        asyncio.run(run())
    finally:
        aiomqtt.Client.subscribe = real_subscribe  # type: ignore[method-assign]
    assert subscribed_with == [new.keepalive_s - 1, new.keepalive_s], subscribed_with
    assert source.generation == 2


def test_a_password_file_gone_at_a_reconnect_is_waited_for_and_a_reload_refused(
        mosquitto_auth: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a reconnect (a broker restart, a SIGHUP) while the password file was away
    (rotated, say) raised a ConfigError out of `run`: the stream exited 2, which systemd
    does not restart; and a reload accepted such a file."""
    secret = tmp_path / "stream.pw"
    secret.write_text(mosquitto_auth.users["stream"])
    source = MqttSource(BrokerConfig(host="127.0.0.1", port=mosquitto_auth.port),
                        StreamConfig(username="stream", password_file=secret), [TOPIC])

    async def handle(batch: list[Delivery]) -> None:
        return None

    async def until(what: Any) -> None:
        for _ in range(500):
            if what():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("timed out")

    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(source.run(stop, handle))
        await until(lambda: source.connected)
        secret.unlink()
        with pytest.raises(ConfigError, match=r"stream\.pw"):
            source.reconfigure(dataclasses.replace(source.broker, keepalive_s=17))
        assert source.broker.keepalive_s != 17 and source.connected  # kept, not dropped
        assert source._client is not None
        source._client._client.disconnect()  # as a broker restart would
        await until(lambda: "event=broker_login_unusable" in caplog.text)
        assert not runner.done()
        secret.write_text(mosquitto_auth.users["stream"])
        await until(lambda: source.connected and source.generation == 2)
        stop.set()
        await runner

    asyncio.run(main())


def _header(seq: int, n_samples: int) -> bytes:
    """A window header claiming `n_samples`: what the source reads to cut a batch."""
    return wire.HEADER.pack(wire.MAGIC, 1, 0, 1, 2, 1, 0, seq, 0, 1.0, 1.0, n_samples,
                            float("nan"), 0)


def _publish_all(port: int, messages: list[tuple[bytes, int]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(TOPIC, payload, qos=qos) for payload, qos in messages]
    for info in infos:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()


def _run(source: MqttSource, handle: Any, port: int, messages: list[tuple[bytes, int]],
         done: Any) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(source.run(stop, handle))
        while not source.connected:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_publish_all, port, messages)
        for _ in range(1500):
            if done():
                break
            await asyncio.sleep(0.02)
        stop.set()
        await runner

    asyncio.run(main())


def test_a_batch_ends_at_its_sample_budget_and_the_rest_goes_in_the_next(
        mosquitto: Mosquitto) -> None:
    """Before: a batch took `batch_max` windows whatever their length: 16 windows of 2^22
    samples took the stream to 2.7 GB, past its unit's MemoryMax (1 GB)."""
    source = _source(mosquitto.port)
    half = BATCH_MAX_SAMPLES // 2
    sent = [_header(i, half) for i in range(7)] + [b"not a window"]
    batches: list[list[bytes]] = []

    async def handle(batch: list[Delivery]) -> None:
        batches.append([d.payload for d in batch])  # type: ignore[misc]
        for d in batch:
            source.ack(d)
        await asyncio.sleep(0.2)  # slow: the rest waits, to be batched

    _run(source, handle, mosquitto.port, [(p, 1) for p in sent],
         lambda: sum(map(len, batches)) == len(sent))
    assert [p for b in batches for p in b] == sent  # none dropped, in order
    assert all(sum(wire.declared_samples(p) for p in b) <= BATCH_MAX_SAMPLES for b in batches)
    assert len(batches) >= 4, batches  # at most two halves a batch


def test_a_qos0_flood_is_dropped_and_counted_and_qos1_never(mosquitto: Mosquitto) -> None:
    """Before: every message read was queued without bound; 291,200 QoS 0 windows in 25 s
    grew the stream from 226 MB to 3880 MB (the broker's inflight limit is for QoS 1)."""
    counters = StreamCounters()
    source = MqttSource(BrokerConfig(host="127.0.0.1", port=mosquitto.port),
                        StreamConfig(client_id="flood-test", batch_max=BATCH,
                                     batch_wait_s=0.01), [TOPIC],
                        on_drop=lambda: counters.refuse("overload"))
    flood = 6 * QUEUE_MAX
    sent = [(f"q0-{i}".encode(), 0) for i in range(flood)]
    for k in range(40):  # QoS 1 messages spread through the flood
        sent.insert(k * flood // 40, (f"q1-{k}".encode(), 1))
    got: list[Delivery] = []

    async def handle(batch: list[Delivery]) -> None:
        got.extend(batch)
        for d in batch:
            source.ack(d)
        await asyncio.sleep(0.02)  # a pipeline slower than the flood

    def settled() -> bool:
        return len(got) + source.dropped >= len(sent) or (
            sum(d.qos == 1 for d in got) == 40 and len(got) + source.dropped > flood * 0.9)

    _run(source, handle, mosquitto.port, sent, settled)
    assert [d.payload for d in got if d.qos == 1] == [f"q1-{k}".encode() for k in range(40)]
    assert source.dropped > 0 and counters.rejected == {"overload": source.dropped}
    assert sum(d.qos == 0 for d in got) + source.dropped <= flood


def test_a_backlog_of_qos1_windows_does_not_crowd_out_qos0_readings(
        mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: waiting QoS 1 windows counted against the QoS 0 bound, so during any
    backlog of big windows every tacho reading (QoS 0 by contract) was dropped."""
    monkeypatch.setattr(mqtt_source, "QUEUE_MAX_BYTES", 8 * 1024)
    source = MqttSource(BrokerConfig(host="127.0.0.1", port=mosquitto.port),
                        StreamConfig(client_id="backlog-test", batch_max=BATCH,
                                     batch_wait_s=0.01), [TOPIC])
    sent = [(bytes(1024) + str(i).encode(), 1) for i in range(30)]  # 30 kB of QoS 1
    sent += [(f"tacho-{i}".encode(), 0) for i in range(5)]
    got: list[Delivery] = []

    async def handle(batch: list[Delivery]) -> None:
        got.extend(batch)
        for d in batch:
            source.ack(d)
        await asyncio.sleep(0.05)  # a pipeline slower than the backlog arrives

    _run(source, handle, mosquitto.port, sent, lambda: len(got) >= len(sent))
    assert source.dropped == 0
    assert [d.payload for d in got if d.qos == 0] == [f"tacho-{i}".encode() for i in range(5)]
