"""Sensors' state in the KV bucket (stream/cluster/state.py, docs/scale-out.md): fenced
saves, values that do not load, buckets whose settings changed.

Real 3-node nats-server cluster and mosquitto on loopback, workers with stub pipelines
(tests/test_cluster_leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from natsplant import PARTITIONS, PASSWORDS
from test_cluster_leases import _batch_held, _Dedup, _Pipeline, _until, _worker

from ballpass.config import Config
from ballpass.nats_server import NatsCluster
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.state import FORMAT, KvState, StateConflict
from ballpass.stream.mqtt_source import Delivery

KEY = ("s1", "gw1", "a")


class _Recording(_Pipeline):
    """Records what each sensor's state was imported as; a state with "explode" does not
    fit this release's models."""

    def __init__(self) -> None:
        self.imported: list[tuple[str, Any]] = []

    def import_sensor(self, sensor: Any, data: Any) -> None:
        if "explode" in data:
            raise TypeError("model of another release")
        self.imported.append((sensor, data))


def _state(pipeline: dict[str, Any]) -> bytes:
    return pickle.dumps({"format": FORMAT, "pipeline": pipeline, "seqs": []})


def test_a_state_written_by_another_worker_meanwhile_is_not_overwritten(
        nats_plant: tuple[NatsCluster, Config], caplog: pytest.LogCaptureFixture) -> None:
    """While A's batch is in its handler, another worker writes the sensor's state (as
    after A's lease lapsed, and A's save still on its way): A's save is refused (before:
    a plain put replaced the other's state, and the next owner loaded rolled-back de-dup
    seqs and models), the window NAKed and handled again with the other's state loaded,
    then saved over it."""
    cluster, config = nats_plant
    caplog.set_level(logging.WARNING, logger="ballpass.stream.cluster")
    pipeline, seen = _Recording(), []

    async def main() -> None:
        async with _batch_held(cluster, config, pipeline, seen) as (a, js, blocker):
            bucket = await js.key_value(topology.STATE)
            await bucket.put("s1.gw1.a", _state({"writer": "B"}))
            blocker.set()
            await _until(lambda: a.status().get("state_conflict") == 1, 10,
                         "A's save refused")
            await _until(lambda: a.status()["state_saved"] == 1, 20,
                         "the window handled again and saved")
            info = await js.consumer_info(topology.WINDOWS, topology.consumer_name("s1", 5))
            assert info.ack_floor.stream_seq == 1
            entry = await bucket.get("s1.gw1.a")
            assert "writer" not in pickle.loads(entry.value or b"")["pipeline"]

    asyncio.run(asyncio.wait_for(main(), 90))
    assert seen == ["bp/v1/s1/gw1/a/window"] * 2  # NAKed, handled again
    # Fresh at first; after the refusal, the other's state, which the refused save kept.
    assert pipeline.imported == [("a", {}), ("a", {"writer": "B"})]
    assert "event=state_conflict keys=s1.gw1.a" in caplog.text


def test_saves_go_over_the_workers_own_revisions(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """A worker's own successive saves go through (each over the revision its last one
    wrote), a save over another's write raises and forgets the state, whose next load
    takes the other's; a state deleted before the load is saved over its delete marker."""
    cluster, config = nats_plant

    async def main() -> None:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            buckets = await topology.declare(js, config.cluster, "s1")
            bucket = buckets[topology.STATE]
            pipeline = _Recording()
            state = KvState(bucket, pipeline, _Dedup())  # type: ignore[arg-type]
            await state.load({KEY})
            for _ in range(3):
                await state.save({KEY})
            assert state.counters["state_saved"] == 3
            await bucket.put("s1.gw1.a", _state({"writer": "B"}))
            with pytest.raises(StateConflict):
                await state.save({KEY})
            assert KEY not in state.loaded
            assert pickle.loads((await bucket.get("s1.gw1.a")).value or b"")[
                "pipeline"] == {"writer": "B"}
            await state.load({KEY})
            await state.save({KEY})
            assert pipeline.imported[-1] == ("a", {"writer": "B"})
            other = ("s1", "gw1", "b")
            await bucket.put("s1.gw1.b", _state({"writer": "B"}))
            await bucket.delete("s1.gw1.b")
            await state.load({other})
            await state.save({other})
            assert state.counters["state_saved"] == 5
            assert state.counters["state_conflict"] == 1
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_state_that_does_not_load_is_set_aside_and_its_sensor_starts_fresh(
        nats_plant: tuple[NatsCluster, Config], caplog: pytest.LogCaptureFixture) -> None:
    """Sensors a, c and d of partition 5 have states this release cannot use (not a
    pickle; classes that are gone; models that do not fit): each is kept under
    `{key}.unreadable`, counted and logged, and its sensor starts fresh; b's state loads,
    and every window is handled and acknowledged (before: the load raised, and the whole
    partition, b too, was stuck for ever, nothing counted)."""
    cluster, config = nats_plant
    caplog.set_level(logging.INFO, logger="ballpass.stream.cluster")
    bad = {"s1.gw1.a": b"\x80\x05not a pickle",
           "s1.gw1.c": b"cballpass_gone_since_last_release\nModel\n.",
           "s1.gw1.d": _state({"explode": True})}
    pipeline = _Recording()

    async def main() -> tuple[list[str], int, dict[str, int]]:
        a = _worker(config, "A", pipeline=pipeline)
        handled: list[str] = []

        async def handle(batch: list[Delivery]) -> None:
            handled.extend(d.topic for d in batch)
            for d in batch:
                a.ack(d)

        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        stop = asyncio.Event()
        task = asyncio.create_task(a.run(stop, handle))
        try:
            js = nc.jetstream(timeout=10)
            await _until(lambda: len(a.partitions) == PARTITIONS, 30, "A holding all")
            bucket = await js.key_value(topology.STATE)
            for key, value in bad.items():
                await bucket.put(key, value)
            await bucket.put("s1.gw1.b", _state({"good": True}))
            for sensor in "abcd":
                await js.publish(f"bpw.5.s1.gw1.{sensor}.window", sensor.encode())
            name = topology.consumer_name("s1", 5)
            floor = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 40
            while floor != 4 and loop.time() < deadline:
                # Not found: the reader is taking its consumer again; a timeout: a node of
                # the cluster busy on a loaded CI machine (seen once). Ask again.
                with contextlib.suppress(NotFoundError, nats.errors.TimeoutError):
                    info = await js.consumer_info(topology.WINDOWS, name, timeout=2)
                    floor = info.ack_floor.stream_seq
                if floor != 4:
                    await asyncio.sleep(0.1)
            assert floor == 4, "partition 5 stuck"
            for key, value in bad.items():
                assert (await bucket.get(f"{key}.unreadable")).value == value
                saved = pickle.loads((await bucket.get(key)).value or b"")
                assert saved["format"] == FORMAT  # the fresh state, saved over it
            return sorted(handled), floor, a.status()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await nc.close()

    handled, floor, status = asyncio.run(asyncio.wait_for(main(), 90))
    assert handled == [f"bp/v1/s1/gw1/{s}/window" for s in "abcd"]
    assert floor == 4
    assert (status["state_unreadable"], status["state_fresh"], status["state_loaded"]) \
        == (3, 3, 1)
    assert sorted(pipeline.imported) == [("a", {}), ("b", {"good": True}), ("c", {}),
                                         ("d", {})]
    unreadable = [line for line in caplog.text.splitlines()
                  if "event=sensor_state_unreadable" in line]
    assert len(unreadable) == 3
    assert "kept=s1.gw1.c.unreadable" in "".join(unreadable)
    assert "ModuleNotFoundError" in "".join(unreadable)


def test_buckets_follow_a_changed_lease_time_and_replica_count(
        nats_plant: tuple[NatsCluster, Config]) -> None:
    """Declared again after `lease_s` and `replicas` changed, the buckets' streams take
    the new TTL and replica count (before: creating the bucket was refused, "stream name
    already in use with a different configuration", and every worker retried for ever),
    and a later return to a shorter `lease_s` too (its duplicate window shrinks with it)."""
    cluster, config = nats_plant
    c = config.cluster

    async def main() -> list[tuple[float, int, float, int]]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream(timeout=10)
            seen = []
            for changed in (c, dataclasses.replace(c, lease_s=10.0, replicas=1), c):
                buckets = await topology.declare(js, changed, "s1")
                await buckets[topology.LEASES].put("probe", b"x")  # a usable handle
                leases = (await js.stream_info("KV_bp_leases_s1")).config
                state = (await js.stream_info("KV_bp_state")).config
                assert leases.num_replicas is not None and state.num_replicas is not None
                seen.append((leases.max_age or 0.0, leases.num_replicas,
                             state.max_age or 0.0, state.num_replicas))
            return seen
        finally:
            await nc.close()

    lease_s = c.lease_s
    assert asyncio.run(asyncio.wait_for(main(), 90)) == [
        (lease_s, 3, 0.0, 3), (10.0, 1, 0.0, 1), (lease_s, 3, 0.0, 3)]
