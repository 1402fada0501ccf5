"""Leases that lapse under a running worker, and the relay's own failures (docs/scale-out.md).

Real 3-node nats-server cluster and real mosquitto on loopback; the workers are
`NatsSource`s in this process with stub pipelines, so that a test can hold a batch in the
handler (as an InfluxDB outage would) and take a lease away meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError
from natsplant import PARTITIONS, PASSWORDS

from ballpass import topics
from ballpass.config import Config
from ballpass.nats_server import NatsCluster
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.leases import RELAY_KEY, WEBHOOKS_KEY, Leases, lease_key
from ballpass.stream.cluster.relay import Relay, message_id
from ballpass.stream.cluster.source import FETCH_WAIT_S, NatsSource, _Fetched
from ballpass.stream.mqtt_source import Delivery


class _Pipeline:
    def knows(self, sensor: Any) -> bool:
        return True

    def import_sensor(self, sensor: Any, data: Any) -> None:
        pass

    def export_sensor(self, sensor: Any) -> dict[str, float]:
        return {"t": time.time()}


class _Dedup:
    def restore(self, key: Any, state: Any) -> None:
        pass

    def recent(self, key: Any, n: int) -> list[Any]:
        return []


def _worker(config: Config, worker_id: str,
            submit_alert: Callable[[dict[str, Any]], None] = lambda _a: None,
            pipeline: Any = None, **stream: Any) -> NatsSource:
    """A worker with stub pipeline and de-dup (`pipeline`: another stub)."""
    c = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster,
                                                                worker_id=worker_id),
                            stream=dataclasses.replace(config.stream, **stream))
    source = NatsSource(c)
    source.bind(pipeline or _Pipeline(), _Dedup(), submit_alert, lambda _t, _p: None)  # type: ignore[arg-type]
    return source


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


async def _until_async(check: Callable[[], Awaitable[bool]], timeout_s: float,
                       what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


async def _lease_holder(js: Any, key: str) -> str:
    """Who holds the lease `key`, as the KV bucket says ("" for no one)."""
    leases = await js.key_value(topology.bucket_names("s1")[topology.LEASES])
    try:
        entry = await leases.get(key)
    except KeyNotFoundError:
        return ""
    return (entry.value or b"").decode()


async def _webhooks_ack_pending(js: Any) -> int:
    info = await js.consumer_info(topology.ALERTS, topology.webhook_consumer("s1"))
    return int(info.num_ack_pending)


async def _alerts_pending(js: Any, n: int) -> bool:
    return await _webhooks_ack_pending(js) == n


async def _no_alert_pending(js: Any) -> bool:
    return await _alerts_pending(js, 0)


async def _nothing(_batch: list[Delivery]) -> None:
    return None


Handle = Callable[[list[Delivery]], Awaitable[None]]


def _blocking_handler(source: NatsSource, blocker: asyncio.Event,
                      seen: list[str]) -> Handle:
    """Acks each delivery, but holds a batch with a window until `blocker` is set (the
    writer retrying through an InfluxDB outage)."""
    async def handle(batch: list[Delivery]) -> None:
        seen.extend(d.topic for d in batch)
        if any(d.topic.endswith("/window") for d in batch):
            await blocker.wait()
        for d in batch:
            source.ack(d)
    return handle


async def _take_lease(kv: Any, p: int, owner: bytes = b"B") -> None:
    """Another worker's lease on `p`, as after this one's lapsed."""
    with contextlib.suppress(KeyNotFoundError):
        await kv.delete(lease_key(p))
    await kv.create(lease_key(p), owner)


@contextlib.asynccontextmanager
async def _batch_held(cluster: NatsCluster, config: Config, pipeline: Any = None,
                      seen: list[str] | None = None,
                      ) -> AsyncIterator[tuple[NatsSource, Any, asyncio.Event]]:
    """Worker A holding every partition, with a batch of partition 5 held in its handler
    (`seen`: the topics it handled). Yields A, a JetStream context and the event that lets
    the batch end."""
    a = _worker(config, "A", pipeline=pipeline)
    blocker = asyncio.Event()
    seen = [] if seen is None else seen
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop, _blocking_handler(a, blocker, seen)))
    nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
    try:
        await _until(lambda: len(a.partitions) == PARTITIONS, 30, "A holding all")
        js = nc.jetstream(timeout=10)
        await js.publish("bpw.5.s1.gw1.a.window", b"w1")
        await _until(lambda: bool(seen), 10, "A's batch in the handler")
        yield a, js, blocker
    finally:
        blocker.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        await nc.close()


async def _lose_lease(a: NatsSource, js: Any, p: int) -> None:
    """Another worker takes A's lease of `p` (as after A's lapsed)."""
    leases = await js.key_value(topology.bucket_names("s1")[topology.LEASES])
    await _take_lease(leases, p)
    assert a._leases is not None
    await _until(lambda: not a._leases.valid(p), 10, f"A's lease of {p} lost")


def test_giving_back_partitions_during_a_long_batch_keeps_the_other_leases_renewed(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A second worker joins while A's batch is held (InfluxDB down, say) for several
    lease times: A gives back its surplus once the batch is done, and meanwhile goes on
    renewing every lease, the batch's own included (waiting for the batch in the lease
    loop lapsed them all, so the partitions moved, and the batch's work was thrown away)."""
    cluster, config = nats_plant
    lease_s = config.cluster.lease_s

    async def main() -> None:
        async with _batch_held(cluster, config) as (a, js, blocker):
            assert a._leases is not None
            workers = await js.key_value(topology.bucket_names("s1")[topology.WORKERS])
            deadline = time.monotonic() + 3 * lease_s
            while time.monotonic() < deadline:
                await workers.put("B", b"alive")  # B's heartbeat: a fair share is 4
                await asyncio.sleep(0.2)
                assert all(a._leases.valid(p) for p in a._leases.held), \
                    "A stopped renewing its leases"
            assert a.partitions == [4, 5, 6, 7]  # 0-3 read no more, given back after
            assert sorted(a._leases.held) == list(range(PARTITIONS))
            assert a.counters["partitions_released"] == 0
            blocker.set()
            await _until(lambda: sorted(a._leases.held) == [4, 5, 6, 7], 10,
                         "A gave back 0-3")
            assert a.counters["partitions_released"] == 4
            assert a.counters["partitions_lost"] == 0
            assert a.counters["batches"] == 1 and a.status()["state_saved"] == 1

    asyncio.run(asyncio.wait_for(main(), 90))


def test_a_batch_that_outlasts_its_lease_saves_and_acknowledges_nothing_of_it(
        nats_plant: tuple[NatsCluster, Config], caplog: pytest.LogCaptureFixture) -> None:
    """Worker A's batch of partition 5 is held past its lease; another worker owns 5 by
    the time it ends: A neither saves the sensor's state (it would overwrite the new
    owner's) nor acknowledges the window; it NAKs it, so the new owner gets it at once."""
    cluster, config = nats_plant
    caplog.set_level(logging.WARNING, logger="ballpass.stream.cluster.source")

    async def main() -> None:
        async with _batch_held(cluster, config) as (a, js, blocker):
            await _lose_lease(a, js, 5)
            blocker.set()
            await _until(lambda: a.counters["batches"] == 1, 10, "A's batch done")
            assert a.status()["state_saved"] == 0
            info = await js.consumer_info(topology.WINDOWS, topology.consumer_name("s1", 5))
            assert info.ack_floor.stream_seq == 0, "A acknowledged the new owner's window"
            sub = await js.pull_subscribe_bind(durable=topology.consumer_name("s1", 5),
                                               stream=topology.WINDOWS)
            again = await sub.fetch(1, timeout=3)  # NAKed: not after ack_wait (60 s)
            assert [m.data for m in again] == [b"w1"]

    asyncio.run(asyncio.wait_for(main(), 90))
    assert "event=partition_lost_in_batch partition=5" in caplog.text


def test_a_reader_whose_lease_lapsed_takes_nothing_from_the_new_owner(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A's lease loop is held up (giving back partition 3 waits for A's long batch);
    meanwhile 3 is another worker's, with a consumer of its own: A's reader of 3 stops
    fetching (pull requests go by the durable's name: it would take the new owner's
    windows and keep them until A's batch ends)."""
    cluster, config = nats_plant

    async def main() -> list[bytes]:
        async with _batch_held(cluster, config) as (a, js, _blocker):
            await _lose_lease(a, js, 3)
            await topology.take_consumer(js, "s1", 3, config.cluster.replicas, 256)
            sub = await js.pull_subscribe_bind(durable=topology.consumer_name("s1", 3),
                                               stream=topology.WINDOWS)
            got: list[bytes] = []
            for i in range(4):
                await js.publish("bpw.3.s1.gw1.b.window", b"w%d" % i)
                await asyncio.sleep(0.5)  # A's reader would pull meanwhile
            deadline = time.monotonic() + 3
            while len(got) < 4 and time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(4, timeout=1)
                except TimeoutError:
                    continue
                for m in msgs:
                    await m.ack()
                got.extend(m.data for m in msgs)
            return got

    got = asyncio.run(asyncio.wait_for(main(), 90))
    assert got == [b"w0", b"w1", b"w2", b"w3"]


def test_the_relay_stops_when_its_lease_lapses(nats_plant: tuple[NatsCluster, Config]) -> None:
    """The lease loop may be held up (a long batch); the relay asks for its lease itself
    before each wave and acknowledgement: a stored window whose lease lapsed meanwhile is
    not acknowledged to mosquitto (the next holder relays it, dropped as a copy), the
    next wave is not stored, and the relay stops."""
    cluster, config = nats_plant

    async def main() -> tuple[list[Delivery], int, bool]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            await topology.declare(js, config.cluster, "s1")
            answers = iter([True, False])
            relay = Relay(config, nc, js, holds=lambda: next(answers, False))
            acked: list[Delivery] = []
            relay.mqtt.ack = acked.append  # type: ignore[method-assign]
            relay._stop = asyncio.Event()
            topic = topics.window("s1", "gw1", "a")
            # The same sensor twice: two waves.
            await relay._relay([Delivery(topic, b"w0", 1, 1, 1),
                                Delivery(topic, b"w1", 1, 2, 1)])
            info = await js.stream_info(topology.WINDOWS)
            return acked, info.state.messages, relay._stop.is_set()
        finally:
            await nc.close()

    acked, stored, stopped = asyncio.run(asyncio.wait_for(main(), 60))
    assert acked == []
    assert stored == 1
    assert stopped


def test_statuses_and_commands_are_not_dropped_as_copies(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A gateway's last will "offline" is the same bytes each time, and so is a command
    sent twice: each is stored (before: the same content id, dropped by JetStream's
    de-duplication for 120 s). Windows are still de-duplicated by content, commands by
    their own "id"."""
    cluster, config = nats_plant

    async def main() -> tuple[list[bool], int, int]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            await topology.declare(js, config.cluster, "s1")
            relay = Relay(config, nc, js)
            status = topics.PREFIX + "/s1/gw1/status"
            command = topics.PREFIX + "/s1/command"
            window = topics.window("s1", "gw1", "a")
            sent = [(status, b"offline"), (status, b"offline"),
                    (command, b'{"sensor": "a", "action": "rebaseline"}'),
                    (command, b'{"sensor": "a", "action": "rebaseline"}'),
                    (command, b'{"id": "c1", "sensor": "a", "action": "rebaseline"}'),
                    (command, b'{"id": "c1", "sensor": "a", "action": "rebaseline"}'),
                    (window, b"w0"), (window, b"w0")]
            duplicate = [await relay._store(Delivery(t, p, 1, i, 1), p)
                         for i, (t, p) in enumerate(sent)]
            control = await js.stream_info(topology.CONTROL)
            windows = await js.stream_info(topology.WINDOWS)
            return duplicate, control.state.messages, windows.state.messages
        finally:
            await nc.close()

    duplicate, control, windows = asyncio.run(asyncio.wait_for(main(), 60))
    assert duplicate == [False, False, False, False, False, True, False, True]
    assert (control, windows) == (5, 1)
    assert message_id("a", b"x") == message_id("a", b"x")
    assert message_id("a", b"x") != message_id("a", b"y")  # another payload
    assert message_id("a", b"x") != message_id("b", b"x")  # another sensor's topic


def test_a_relay_that_cannot_start_leaves_its_lease_to_a_healthy_worker(
        nats_plant: tuple[NatsCluster, Config], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Worker A's relay fails at start (its MQTT password file unreadable): logged, and A
    gives the relay lease up for a while, so that B relays (before: the task died
    silently, A kept renewing the lease and no one relayed)."""
    cluster, config = nats_plant
    caplog.set_level(logging.INFO, logger="ballpass.stream.cluster")

    async def main() -> tuple[str, bool]:
        a = _worker(config, "A", password_file=tmp_path / "gone.pw")
        b = _worker(config, "B")

        async def handle(_batch: list[Delivery]) -> None:
            return None

        stop = asyncio.Event()
        ta = asyncio.create_task(a.run(stop, handle))
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            await _until(lambda: "event=relay_failed worker=A" in caplog.text, 15,
                         "A's relay failed")
            tb = asyncio.create_task(b.run(stop, handle))
            try:
                await _until(lambda: bool(b.status()["relay_connected"]), 20, "B relaying")
                leases = await js.key_value(topology.bucket_names("s1")[topology.LEASES])
                holder = (await leases.get(RELAY_KEY)).value
                return (holder or b"").decode(), bool(a.status()["relay"])
            finally:
                stop.set()
                await asyncio.wait_for(tb, 30)
        finally:
            stop.set()
            await asyncio.wait_for(ta, 30)
            await nc.close()

    holder, a_relays = asyncio.run(asyncio.wait_for(main(), 90))
    assert (holder, a_relays) == ("B", False)
    assert "reason=" in caplog.text.split("event=relay_failed", 1)[1].splitlines()[0]


def test_an_empty_fetch_is_no_batch(nats_plant: tuple[NatsCluster, Config]) -> None:
    """A fetch can answer `[]`: not a batch for the handler, nor counted in `batches`."""
    _, config = nats_plant
    source = _worker(config, "A")

    class _State:
        async def load(self, keys: Any) -> None:
            pass

        async def save(self, keys: Any) -> None:
            pass

    source._state = _State()  # type: ignore[assignment]
    handled: list[list[Delivery]] = []

    async def handle(batch: list[Delivery]) -> None:
        handled.append(batch)

    assert asyncio.run(source._process([(0, []), (None, [])], handle)) == set()
    assert handled == []
    assert source.counters["batches"] == 0


def test_a_fetch_the_batcher_refuses_is_redelivered_at_once(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A fetch that reaches the batcher after its partition's lease lapsed is not handled;
    its windows are NAKed, so that the new owner gets them now, not after `ack_wait`."""
    cluster, config = nats_plant
    source = _worker(config, "A")  # holds no lease: every partition's fetch is refused

    async def main() -> tuple[bool, list[bytes]]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            await topology.declare(js, config.cluster, "s1")
            await topology.take_consumer(js, "s1", 2, config.cluster.replicas, 256)
            sub = await js.pull_subscribe_bind(durable=topology.consumer_name("s1", 2),
                                               stream=topology.WINDOWS)
            await js.publish("bpw.2.s1.gw1.a.window", b"w0")
            fetched = _Fetched(2, await sub.fetch(1, timeout=3), None,
                               asyncio.get_running_loop().create_future())

            async def handle(_batch: list[Delivery]) -> None:
                raise AssertionError("a refused fetch reached the handler")

            batcher = asyncio.create_task(source._batcher(handle))
            source._fetched.put_nowait(fetched)
            done = await asyncio.wait_for(fetched.done, 10)
            batcher.cancel()
            again = await sub.fetch(1, timeout=3)  # ack_wait is 60 s
            return done, [m.data for m in again]
        finally:
            await nc.close()

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (False, [b"w0"])


def test_an_idle_relay_leaves_mosquitto_when_its_lease_lapses(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """No message coming, the relay still asks for its lease: off mosquitto at once
    (before: it stayed connected, and it and the next holder, with one MQTT client id,
    took the session from each other in turn)."""
    cluster, config = nats_plant

    async def main() -> None:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            holds = True
            relay = Relay(config, nc, nc.jetstream(), holds=lambda: holds)
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            await _until(lambda: relay.mqtt.connected, 10, "relay connected")
            holds = False
            await asyncio.wait_for(task, 5)  # ended by itself, no message coming
            assert stop.is_set(), "the relay did not stop itself"
            assert not relay.mqtt.connected, "the relay stayed on mosquitto"
            assert relay.mqtt._client is None
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def _webhook_workers(config: Config) -> tuple[dict[str, list[int]], NatsSource, NatsSource]:
    """Workers A and B, and the alert numbers each sends, by worker."""
    sent: dict[str, list[int]] = {"A": [], "B": []}
    return (sent, _worker(config, "A", lambda alert: sent["A"].append(alert["n"])),
            _worker(config, "B", lambda alert: sent["B"].append(alert["n"])))


def test_one_worker_at_a_time_sends_the_sites_webhooks(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """Every alert goes to the webhook sender of the worker holding the webhooks lease
    (before: each worker took what its pulls fetched and sent it from its own spool, so
    an alert's resolved could go out before its firing); when that worker stops, the
    other takes the lease and the alerts after, at once (well within ack_wait), and
    acknowledges them."""
    cluster, config = nats_plant

    async def main() -> tuple[dict[str, list[int]], str, bool, int]:
        sent, a, b = _webhook_workers(config)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.create_task(a.run(stop_a, _nothing))
        tb: asyncio.Task[None] | None = None
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            await _until(lambda: bool(a.status()["webhooks"]), 15, "A sending webhooks")
            tb = asyncio.create_task(b.run(stop_b, _nothing))
            await _until(lambda: b.connected and b.counters["partitions_taken"] > 0, 20,
                         "B working")
            subject = f"{topology.ALERT_SUBJECT}.s1"
            for n in range(20):
                await js.publish(subject, json.dumps({"n": n}).encode())
                await asyncio.sleep(0.05)  # both workers' pulls waiting
            await _until(lambda: len(sent["A"]) + len(sent["B"]) == 20, 15, "20 taken")
            before = {k: list(v) for k, v in sent.items()}
            stop_a.set()
            await asyncio.wait_for(ta, 30)
            await js.publish(subject, json.dumps({"n": 20}).encode())
            await _until(lambda: 20 in sent["B"], 10, "B sending after A stopped")
            await _until_async(lambda: _no_alert_pending(js), 5, "B acknowledging")
            return (before, await _lease_holder(js, WEBHOOKS_KEY),
                    bool(a.status()["webhooks"]), len(sent["B"]))
        finally:
            stop_a.set()
            stop_b.set()
            await asyncio.gather(ta, *([tb] if tb else []), return_exceptions=True)
            await nc.close()

    before, holder, a_holds, b_sent = asyncio.run(asyncio.wait_for(main(), 120))
    assert before == {"A": list(range(20)), "B": []}
    assert holder == "B" and not a_holds
    assert b_sent == 1


@pytest.mark.parametrize("how", ["stops", "dies"])
def test_an_alert_the_old_webhooks_holder_left_unacknowledged_goes_out_at_once_in_order(
        nats_plant: tuple[NatsCluster, Config], how: str) -> None:
    """Worker A's fetch of the webhooks consumer is cancelled with its pull request left
    on the server (as `NatsSource.run` did at a stop; a worker killed mid-fetch leaves one
    too): it takes the next alert, and A never acknowledges it. Then A stops (or its
    connection dies, not drained, its lease left to lapse), and B takes the lease: B
    recreates the consumer from its first unacknowledged alert, so it sends that alert at
    once, then the next one (before: B sent the next one, and the first only after
    ack_wait, 60 s: out of order)."""
    cluster, config = nats_plant

    async def main() -> tuple[dict[str, list[int]], str, int]:
        sent, a, b = _webhook_workers(config)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.create_task(a.run(stop_a, _nothing))
        tb: asyncio.Task[None] | None = None
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            subject = f"{topology.ALERT_SUBJECT}.s1"
            await _until(lambda: bool(a.status()["webhooks"]), 15, "A sending webhooks")
            await js.publish(subject, json.dumps({"n": 0}).encode())
            await _until(lambda: sent["A"] == [0], 10, "A sending 0")
            a_loop = next(t for t in asyncio.all_tasks() if t.get_name() == "webhooks-in")
            tb = asyncio.create_task(b.run(stop_b, _nothing))
            await _until(lambda: b.connected and b.counters["partitions_taken"] > 0, 20,
                         "B working")
            # A's fetch cancelled midway, its pull request (expiring in FETCH_WAIT_S) left.
            a_loop.cancel()
            await asyncio.gather(a_loop, return_exceptions=True)
            assert a._js is not None
            sub = await a._js.pull_subscribe_bind(durable=topology.webhook_consumer("s1"),
                                                  stream=topology.ALERTS)
            fetch = asyncio.create_task(sub.fetch(16, timeout=FETCH_WAIT_S))
            await asyncio.sleep(0.2)
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
            await js.publish(subject, json.dumps({"n": 1}).encode())
            await _until_async(lambda: _alerts_pending(js, 1), 5,
                               "1 delivered to A's cancelled pull request")
            if how == "stops":
                stop_a.set()
                await asyncio.wait_for(ta, 30)
            else:
                assert a._nc is not None
                await a._nc.close()  # not drained, nothing released: as after kill -9
            await js.publish(subject, json.dumps({"n": 2}).encode())
            # ack_wait is 60 s; B takes the lease within lease_s (3 s) of A's last renewal.
            await _until(lambda: len(sent["B"]) >= 2, 10, "B sending 1 and 2")
            await _until_async(lambda: _no_alert_pending(js), 5, "B acknowledging")
            return sent, await _lease_holder(js, WEBHOOKS_KEY), \
                await _webhooks_ack_pending(js)
        finally:
            stop_a.set()
            stop_b.set()
            await asyncio.gather(ta, *([tb] if tb else []), return_exceptions=True)
            await nc.close()

    sent, holder, pending = asyncio.run(asyncio.wait_for(main(), 120))
    assert sent == {"A": [0], "B": [1, 2]}
    assert (holder, pending) == ("B", 0)


def test_alerts_fetched_after_the_webhooks_lease_lapsed_are_not_sent(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A fetch can answer up to FETCH_WAIT_S after the webhooks lease was last seen valid,
    and the next holder may be sending by then. Each alert is taken only while the lease
    is still valid: the lease lapsing while the first one is spooled, the other two are
    not spooled but NAKed (the next holder gets them at once, not after ack_wait)."""
    cluster, config = nats_plant

    async def main() -> tuple[list[int], list[int], int, int]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            buckets = await topology.declare(js, config.cluster, "s1")
            sent: list[int] = []

            def submit(alert: dict[str, Any]) -> None:
                sent.append(alert["n"])
                lapse()

            source = _worker(config, "A", submit)
            leases = Leases(buckets[topology.LEASES], buckets[topology.WORKERS], "A",
                            PARTITIONS, lease_s=config.cluster.lease_s)
            leases.singles[WEBHOOKS_KEY] = 1
            leases.renewed[WEBHOOKS_KEY] = time.monotonic()
            source._leases = leases

            def lapse() -> None:  # no renewal for longer than 0.6 x lease_s
                leases.renewed[WEBHOOKS_KEY] -= config.cluster.lease_s

            for n in range(3):
                await js.publish(f"{topology.ALERT_SUBJECT}.s1", json.dumps({"n": n}).encode())
            sub = await js.pull_subscribe_bind(durable=topology.webhook_consumer("s1"),
                                               stream=topology.ALERTS)
            msgs = await sub.fetch(3, timeout=3)
            assert len(msgs) == 3
            await source._take_alerts(msgs)
            again: list[Any] = []
            with contextlib.suppress(TimeoutError):  # NAKed: not after ack_wait (60 s)
                again = await sub.fetch(3, timeout=3)
            for m in again:
                await m.ack_sync()  # answered: A's ack of 0 (same connection) came first
            info = await js.consumer_info(topology.ALERTS, topology.webhook_consumer("s1"))
            return (sent, [json.loads(m.data)["n"] for m in again],
                    source.counters["alerts_refused"],
                    (info.ack_floor.stream_seq, info.num_ack_pending))
        finally:
            await nc.close()

    sent, again, refused, acked = asyncio.run(asyncio.wait_for(main(), 60))
    assert (sent, again, refused) == ([0], [1, 2], 2)
    assert acked == (3, 0)  # the stream's 3 alerts, each acknowledged once taken
