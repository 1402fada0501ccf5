"""The stream's input and output on a NATS JetStream cluster, in place of `MqttSource`.

The service's batch handler is the same: it gets `Delivery` objects with MQTT-style topics
and calls `ack` after the window is written. Here an `ack` is only recorded; once the
handler and the commit it returns are done (never overlapped with the next batch), the
state of the batch's sensors is saved in the KV bucket and only then are the messages
acknowledged to JetStream (stream/cluster/state.py says why).

Tasks of one worker:
- leases: every `lease_s / 3`, heartbeat, renew, take free partitions up to the fair share
  and give back the surplus (stream/cluster/leases.py);
- one reader per held partition, on that partition's durable consumer;
- control: gateway status and operator commands (any worker takes them); a command is
  re-published on its sensor's subject, so that the server routes it to the partition of
  the sensor, whose owner applies it in order with the sensor's windows;
- webhooks: alert transitions from the ALERTS stream (one worker each) to the webhook
  routes. Workers publish a transition there, with its alert id and status as the
  message id, before they acknowledge the window that caused it: a transition re-fired
  after a worker died is dropped by JetStream's de-duplication, not sent twice. Each new
  holder of the lease recreates the consumer from its first unacknowledged alert, so that
  what the previous holder fetched and did not acknowledge comes at once and in order.
Batches go through the handler one at a time (it owns the pipeline); what the partitions'
readers fetched meanwhile is handled together as the next batch (`MERGE_MAX`): one
InfluxDB write, one hand-off to the DSP thread and larger kernel batches for several
partitions' windows, instead of one each (BENCHMARKS.md, "End to end").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ballpass import backoff, topics
from ballpass.config import BrokerConfig, Config
from ballpass.log import kv
from ballpass.nats_server import PARTITIONED_SUBJECT
from ballpass.stream.cluster import site_view, topology
from ballpass.stream.cluster.connection import connect
from ballpass.stream.cluster.leases import RELAY_KEY, WEBHOOKS_KEY, Leases
from ballpass.stream.cluster.relay import Relay
from ballpass.stream.cluster.state import Key, KvState
from ballpass.stream.dedup import Deduplicator
from ballpass.stream.mqtt_source import Delivery, Handler, login
from ballpass.stream.pipeline import Pipeline
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop

log = logging.getLogger(__name__)

RELAY_AWAY_LEASES = 3
"""After its relay failed, a worker leaves the relay lease to the others for about this
many `lease_s` (growing with each failure in a row, up to `RELAY_AWAY_MAX_S`)."""
RELAY_AWAY_MAX_S = 120.0
MAX_ACK_PENDING = 256
"""Windows of one partition fetched and not yet acknowledged, at most."""
FETCH_WAIT_S = 1.0
PULL_STOP_S = FETCH_WAIT_S + 4.0
"""At a stop, the control and webhooks loops end by themselves once their fetch is done
(at most FETCH_WAIT_S); one still busy after this long (a status batch in the handler) is
cancelled."""
LEASE_WAIT_S = 0.25  # between looks at a lease this worker does not hold
MERGE_MAX = 64
"""Windows of several partitions' fetches handled as one batch: the next fetch is added
while fewer are taken (so a batch holds up to MERGE_MAX + batch_max - 1)."""


@dataclass
class _Fetched:
    """One reader's fetch, waiting for the batcher; `done` is True once handled and
    acknowledged, False when the partition was lost meanwhile (nothing acknowledged)."""

    p: int
    msgs: list[Msg]
    reader: asyncio.Task[None] | None
    done: asyncio.Future[bool]


async def _nak(msgs: list[Msg]) -> None:
    """Redelivered at once (to the partition's new owner); a NAK lost changes nothing but
    the wait, `ack_wait`."""
    for m in msgs:
        with contextlib.suppress(Exception):
            await m.nak()


async def _unbind(sub: JetStreamContext.PullSubscription | None) -> None:
    """Unsubscribe `sub`'s inbox: a pull request of it still waiting on the server then
    has no one to deliver to."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def default_worker_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())
    return f"{host.lower()[:40]}-{os.getpid()}"


def topic_of(subject: str) -> tuple[str, Key | None]:
    """The MQTT-style topic the handler routes on, and the sensor of a partitioned subject.

    `bpw.{p}.{site}.{gw}.{sensor}.{leaf}` -> `bp/v1/{site}/{gw}/{sensor}/{leaf}`, except a
    re-published command, which goes back to the site's command topic.
    """
    parts = subject.split(".")
    if parts[0] == PARTITIONED_SUBJECT and len(parts) == 6:
        _, _, site, gateway, sensor, leaf = parts
        if leaf == "command":
            return f"{topics.PREFIX}/{site}/command", (site, gateway, sensor)
        return f"{topics.PREFIX}/{site}/{gateway}/{sensor}/{leaf}", (site, gateway, sensor)
    return subject.replace(".", "/"), None


class NatsSource:
    """Feeds the handler from JetStream and publishes the service's messages to NATS."""

    def __init__(self, config: Config) -> None:
        assert config.cluster is not None
        self.config = config
        self.cluster = config.cluster
        self.site = config.site.id  # its partitions' consumers and leases are this site's
        self.worker_id = self.cluster.worker_id or default_worker_id()
        self.connected = False
        self.generation = 0
        self.counters = {"batches": 0, "partitions_taken": 0, "partitions_lost": 0,
                         "partitions_released": 0, "commands_routed": 0,
                         "alerts_published": 0, "alerts_duplicate": 0,
                         "webhooks_taken": 0, "pull_errors": 0, "alerts_unreadable": 0,
                         "alerts_refused": 0,
                         "view_seen": 0, "view_errors": 0}
        self._nc: nats.NATS | None = None
        self._js: JetStreamContext | None = None
        self._state: KvState | None = None
        self._leases: Leases | None = None
        self._readers: dict[int, asyncio.Task[None]] = {}
        # Readers being stopped once the batch in the handler is done (and their lease
        # given back, if surplus): the lease loop goes on renewing the others meanwhile.
        self._retiring: dict[int, asyncio.Task[None]] = {}
        self._keys: dict[int, set[Key]] = {}  # sensors seen per partition
        self._acked: list[Delivery] = []
        self._batch_lock = asyncio.Lock()
        self._fetched: asyncio.Queue[_Fetched] = asyncio.Queue()
        self._pipeline: Pipeline | None = None
        self._dedup: Deduplicator | None = None
        self._submit: Callable[[dict[str, Any]], None] | None = None
        self._see: Callable[[str, bytes], None] | None = None
        self._relay: Relay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._relay_stop = asyncio.Event()
        self._relay_failures = 0  # in a row

    def bind(self, pipeline: Pipeline, dedup: Deduplicator,
             submit_alert: Callable[[dict[str, Any]], None],
             see: Callable[[str, bytes], None]) -> None:
        """What the service owns and the source must reach: the per-sensor state (moved
        with partitions), the webhook routes (fed from the ALERTS stream) and what every
        worker must see of messages others handle (`see(topic, payload)`, site_view.py)."""
        self._pipeline, self._dedup, self._submit = pipeline, dedup, submit_alert
        self._see = see

    @property
    def partitions(self) -> list[int]:
        return sorted(self._readers)

    def status(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "partitions": self.partitions,
                "relay": self._relay_task is not None and not self._relay_task.done(),
                "webhooks": self._owns_lease(WEBHOOKS_KEY),
                # Subscribed to mosquitto: gateways' windows are queued for the relay.
                "relay_connected": (self._relay is not None and self._relay.mqtt.connected
                                    and self._relay_task is not None
                                    and not self._relay_task.done()),
                **self.counters, **(self._state.counters if self._state else {}),
                **(self._relay.counters if self._relay else {})}

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, handle: Handler) -> None:
        """Connect (retrying), declare the topology, then work until `stop` is set."""
        assert self._pipeline is not None and self._dedup is not None, "bind() first"
        c = self.cluster
        connected = await connect(c, self.worker_id, stop,
                                  lambda js: topology.declare(js, c, self.site),
                                  disconnected_cb=self._disconnected,
                                  reconnected_cb=self._reconnected)
        if connected is None:
            return
        self._nc, self._js, buckets = connected
        self.connected = True
        log.info(kv("cluster_connected", worker=self.worker_id, servers=",".join(c.servers)))
        self._state = KvState(buckets[topology.STATE], self._pipeline, self._dedup)
        self._leases = Leases(buckets[topology.LEASES], buckets[topology.WORKERS],
                              self.worker_id, c.partitions, lease_s=c.lease_s)
        batcher = asyncio.create_task(self._batcher(handle), name="batches")
        pulls = [asyncio.create_task(self._control_loop(stop, handle), name="control"),
                 asyncio.create_task(self._webhook_loop(stop), name="webhooks-in")]
        tasks = [asyncio.create_task(self._lease_loop(stop, handle), name="leases"),
                 *(asyncio.create_task(site_view.follow(self._js, view, self._seen, stop,
                                                        self.counters), name="view")
                   for view in site_view.site_views(self.config))]
        try:
            await stop.wait()
        finally:
            # Not cancelled mid-fetch: the pull request would stay on the server, and what
            # it took would wait ACK_WAIT_S (the next webhooks holder recreates the
            # consumer, `topology.take_webhook_consumer`; CONTROL's is shared, never).
            if stop.is_set():
                await asyncio.wait(pulls, timeout=PULL_STOP_S)
            for t in (*pulls, *tasks):
                t.cancel()
            await asyncio.gather(*pulls, *tasks, return_exceptions=True)
            await self._stop_relay()
            # A batch in the handler finishes (and is acknowledged) before readers stop.
            async with self._batch_lock:
                batcher.cancel()
                for task in self._readers.values():
                    task.cancel()
            await asyncio.gather(batcher, *self._readers.values(), *self._retiring.values(),
                                 return_exceptions=True)
            self._readers.clear()
            with contextlib.suppress(Exception):
                await self._leases.release_all()
            await self._close()

    def _seen(self, subject: str, payload: bytes) -> None:
        """A message of the site view (site_view.py), unless its sensor's partition is
        this worker's: then its batches take it, in order with the windows."""
        assert self._see is not None
        topic, key = topic_of(subject)
        if key is None or not any(key in self._keys.get(p, ()) for p in self._readers):
            self._see(topic, payload)

    async def _close(self) -> None:
        self.connected = False
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None

    async def _disconnected(self) -> None:
        self.connected = False
        log.warning(kv("cluster_disconnected", worker=self.worker_id))

    async def _reconnected(self) -> None:
        self.connected = True
        log.info(kv("cluster_reconnected", worker=self.worker_id))

    # --- partitions ------------------------------------------------------------------

    async def _lease_loop(self, stop: asyncio.Event, handle: Handler) -> None:
        """Every `lease_s / 3`: a lease round, then readers and relay made to match the
        leases that are valid (whatever part of the round failed)."""
        assert self._leases is not None
        leases = self._leases
        while not stop.is_set():
            try:
                await leases.tick()
                for p in leases.surplus(await leases.live_workers()):
                    if p not in self._retiring:
                        self._stop_reader(p, give_back=True)
            except Exception as e:  # the cluster does not answer: leases lapse if it lasts
                log.warning(kv("lease_round_failed", worker=self.worker_id, reason=repr(e)))
            for p in list(self._readers):
                if not leases.valid(p) or self._readers[p].done():
                    self.counters["partitions_lost"] += p not in leases.held
                    self._stop_reader(p)
            for p in leases.held:
                if p not in self._readers and p not in self._retiring and leases.valid(p):
                    self.counters["partitions_taken"] += 1
                    self._readers[p] = asyncio.create_task(self._reader(p, handle),
                                                           name=f"partition-{p}")
            await self._relay_ended()
            # With edges, each plant's own `ballpass relay` does it (edge.py).
            await self._run_relay(leases.valid(RELAY_KEY) and not self.cluster.edges)
            await sleep_or_stop(stop, self.cluster.lease_s / 3)

    async def _run_relay(self, should: bool) -> None:
        """Start the relay when this worker took its lease, stop it when the lease is lost
        (the next holder resumes the same MQTT session)."""
        running = self._relay_task is not None and not self._relay_task.done()
        if running and self._relay is not None and self._relay.mqtt.connected:
            self._relay_failures = 0
        if should and not running:
            assert self._nc is not None and self._js is not None
            leases = self._leases
            self._relay = Relay(self.config, self._nc, self._js,
                                holds=lambda: leases is not None and leases.valid(RELAY_KEY))
            self._relay_stop = asyncio.Event()
            self._relay_task = asyncio.create_task(self._relay.run(self._relay_stop),
                                                   name="relay")
        elif not should and running:
            await self._stop_relay()

    async def _relay_ended(self) -> None:
        """A relay that ended by itself with an error (its MQTT login unusable, say) is
        logged, and its lease given up for a while: held, no one else would relay."""
        task = self._relay_task
        if task is None or not task.done() or task.cancelled():
            return
        self._relay_task = None
        error = task.exception()  # retrieved: else only "never retrieved" at exit
        if error is None:  # stopped itself: its lease lapsed (Relay.holds)
            return
        self._relay_failures += 1
        assert self._leases is not None
        away_s = backoff.jittered_s(self._relay_failures,
                                    RELAY_AWAY_LEASES * 2 * self.cluster.lease_s,
                                    RELAY_AWAY_MAX_S)
        log.error(kv("relay_failed", worker=self.worker_id, reason=repr(error),
                     failures=self._relay_failures, away_s=round(away_s, 1)))
        try:
            await self._leases.give_up_relay(away_s)
        except Exception as e:  # not answered: its TTL frees the lease
            log.warning(kv("relay_lease_release_failed", worker=self.worker_id,
                           reason=repr(e)))

    async def _stop_relay(self) -> None:
        if self._relay_task is not None:
            self._relay_stop.set()
            with contextlib.suppress(Exception):
                await self._relay_task
        self._relay_task = None

    def _stop_reader(self, p: int, *, give_back: bool = False) -> None:
        """Stop partition `p`'s reader once the batch in the handler is done (a batch can
        last longer than a lease: the lease loop must not wait for it); then, with
        `give_back`, release its lease. Its fetches are refused from now on (`_batcher`)."""
        reader = self._readers.pop(p, None)
        if reader is None and not give_back:
            return

        async def retire() -> None:
            try:
                async with self._batch_lock:  # never in the middle of a batch
                    if reader is not None:
                        reader.cancel()
                if reader is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
                if give_back:
                    assert self._leases is not None
                    await self._leases.release(p)
                    self.counters["partitions_released"] += 1
            except Exception as e:  # not answered: the lease's TTL frees it
                log.warning(kv("partition_release_failed", partition=p,
                               worker=self.worker_id, reason=repr(e)))
            finally:
                self._retiring.pop(p, None)

        self._retiring[p] = asyncio.create_task(retire(), name=f"retire-{p}")

    async def _reader(self, p: int, handle: Handler) -> None:
        """Read partition `p` while this worker holds its lease; after a failure (a node
        lost, a leader being elected) take the consumer again from its first
        unacknowledged window, with the sensors' state reloaded from the KV bucket."""
        assert self._js is not None and self._state is not None
        attempt = 0
        while self._leases is not None and self._leases.valid(p):
            # Sensors seen in `p` before: their state is the bucket's, not this memory's.
            self._state.forget(self._keys.pop(p, set()))
            try:
                await topology.take_consumer(self._js, self.site, p, self.cluster.replicas,
                                             MAX_ACK_PENDING)
                sub = await self._js.pull_subscribe_bind(
                    durable=topology.consumer_name(self.site, p), stream=topology.WINDOWS)
                log.info(kv("partition_reading", partition=p, worker=self.worker_id))
                while True:
                    # A pull request goes by the durable's name: after the lease lapsed it
                    # would take windows from the new owner's consumer.
                    if not self._owns(p):
                        log.warning(kv("partition_fetch_stopped", partition=p,
                                       worker=self.worker_id, reason="lease lapsed"))
                        return
                    try:
                        msgs = await sub.fetch(self.config.stream.batch_max,
                                               timeout=FETCH_WAIT_S)
                    except TimeoutError:  # nothing new (nats-py's is a TimeoutError)
                        continue
                    if not msgs:
                        continue
                    fetched = _Fetched(p, msgs, asyncio.current_task(),
                                       asyncio.get_running_loop().create_future())
                    self._fetched.put_nowait(fetched)
                    # Raises what the batch raised; then the consumer is taken again.
                    if not await fetched.done:
                        return  # lease lost while fetching: the new owner reads them
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.warning(kv("partition_reader_failed", partition=p, worker=self.worker_id,
                               reason=repr(e), retry_in_s=round(delay, 1)))
                await asyncio.sleep(delay)

    async def _batcher(self, handle: Handler) -> None:
        """The readers' fetches through the handler, those waiting together as one batch."""
        while True:
            waiting = [await self._fetched.get()]
            taken = len(waiting[0].msgs)
            while taken < MERGE_MAX and not self._fetched.empty():
                waiting.append(self._fetched.get_nowait())
                taken += len(waiting[-1].msgs)
            async with self._batch_lock:
                live = []
                for f in waiting:
                    if f.done.done():
                        continue  # its reader was stopped: nothing of it acknowledged
                    if not self._owns(f.p) or self._readers.get(f.p) is not f.reader:
                        log.warning(kv("partition_fetch_refused", partition=f.p,
                                       worker=self.worker_id, messages=len(f.msgs)))
                        await _nak(f.msgs)  # at once to the new owner, not after ack_wait
                        f.done.set_result(False)
                    else:
                        live.append(f)
                if not live:
                    continue
                try:
                    lost = await self._process([(f.p, f.msgs) for f in live], handle)
                except Exception as e:  # each reader takes its consumer again
                    for f in live:
                        if not f.done.done():
                            f.done.set_exception(e)
                    continue
                for f in live:
                    if not f.done.done():
                        f.done.set_result(f.p not in lost)

    def _owns_lease(self, key: str) -> bool:
        return self._leases is not None and self._leases.valid(key)

    def _owns(self, p: int | None) -> bool:
        """Partition `p`'s lease still this worker's (None: not partitioned, anyone's)."""
        return p is None or (self._leases is not None and self._leases.valid(p))

    async def _process(self, parts: list[tuple[int | None, list[Msg]]],
                       handle: Handler) -> set[int]:
        """One batch (the messages of one or more partitions, `None`: not partitioned)
        through the handler; the state saved, then the acknowledgements. Returns the
        partitions lost meanwhile: nothing of theirs saved or acknowledged."""
        if not any(part for _, part in parts):
            return set()  # an empty fetch: no batch
        assert self._state is not None
        self.generation += 1
        deliveries: list[Delivery] = []
        keys: dict[int, Key] = {}
        msgs: list[Msg] = []
        partition: list[int | None] = []
        for p, part in parts:
            for m in part:
                topic, key = topic_of(m.subject)
                deliveries.append(Delivery(topic, m.data, 1, len(msgs), self.generation))
                if key is not None:
                    keys[len(msgs)] = key
                    if p is not None:
                        self._keys.setdefault(p, set()).add(key)
                msgs.append(m)
                partition.append(p)
        await self._state.load(set(keys.values()))
        self._acked = []
        commit = await handle(deliveries)
        if commit is not None:
            await commit()
        acked = [d.mid for d in self._acked if d.generation == self.generation]
        self._acked = []
        # A batch can outlast a lease (InfluxDB down, the writer retrying): by now another
        # worker may own the partition, and its state and acks are that worker's.
        lost = self._lost(partition, "state_save")
        acked = [i for i in acked if partition[i] not in lost]
        # A routed command changed its sensor's state too (a rebaseline, say): saved with
        # its ack, or a new owner would load the state from before it.
        await self._state.save({keys[i] for i in acked if i in keys
                                and deliveries[i].topic.endswith(("/window", "/command"))})
        lost |= self._lost(partition, "ack", lost)  # the save took a while too
        for i in acked:
            if partition[i] not in lost:
                await msgs[i].ack()
        await _nak([m for m, p in zip(msgs, partition, strict=True) if p in lost])
        self.counters["batches"] += 1
        return lost

    def _lost(self, partition: list[int | None], before: str,
              known: Set[int] = frozenset()) -> set[int]:
        """The batch's partitions no longer this worker's, besides `known`, logged
        (`before`: what of theirs is not done)."""
        lost = {p for p in set(partition)
                if p is not None and p not in known and not self._owns(p)}
        for p in sorted(lost):
            log.warning(kv("partition_lost_in_batch", partition=p, worker=self.worker_id,
                           skipped=before))
        return lost

    # --- control and alerts -----------------------------------------------------------

    async def _pull(self, stop: asyncio.Event, durable: str, stream: str,
                    each: Callable[[list[Msg]], Awaitable[None]],
                    lease: str | None = None,
                    take: Callable[[], Awaitable[None]] | None = None) -> None:
        """Fetch from the consumer `durable` into `each` until `stop` (a fetch is never
        left in the middle: `run` waits for it). With `lease`, only while this worker holds
        it, calling `take` (recreating the consumer) before the first fetch after it was
        not held, and after a failure; what the old holder left unacknowledged comes at
        once, in order."""
        assert self._js is not None
        sub: JetStreamContext.PullSubscription | None = None
        try:
            while not stop.is_set():
                if lease is not None and not self._owns_lease(lease):
                    await _unbind(sub)
                    sub = None
                    await sleep_or_stop(stop, LEASE_WAIT_S)
                    continue
                try:
                    if sub is None:
                        if take is not None:
                            await take()
                        sub = await self._js.pull_subscribe_bind(durable=durable,
                                                                 stream=stream)
                    try:
                        msgs = await sub.fetch(self.config.stream.batch_max,
                                               timeout=FETCH_WAIT_S)
                    except TimeoutError:
                        continue
                    if msgs:
                        await each(msgs)
                except Exception as e:
                    # Reconnecting, a leader election, a publish refused: this loop must
                    # not end (nothing else would take statuses, commands or alerts); what
                    # was not acknowledged comes again: at once from the consumer `take`
                    # recreates; else after ack_wait, or with the next fetch when a pull
                    # request left by this one took it (so `sub` is kept).
                    self.counters["pull_errors"] += 1
                    log.warning(kv("cluster_pull_failed", consumer=durable, reason=repr(e)))
                    if take is not None:
                        await _unbind(sub)
                        sub = None
                    await sleep_or_stop(stop, 1.0)
        finally:
            await _unbind(sub)

    async def _control_loop(self, stop: asyncio.Event, handle: Handler) -> None:
        async def each(msgs: list[Msg]) -> None:
            assert self._js is not None
            status: list[Msg] = []
            for m in msgs:
                target = self._command_subject(m.data) if m.subject.endswith(".command") \
                    else None
                if target is not None:
                    await self._js.publish(target, m.data)
                    self.counters["commands_routed"] += 1
                    await m.ack()
                else:
                    status.append(m)  # status, or a command the service must refuse
            if status:
                async with self._batch_lock:
                    await self._process([(None, status)], handle)
        await self._pull(stop, topology.control_consumer(self.site),
                         topology.CONTROL, each)

    def _command_subject(self, payload: bytes) -> str | None:
        """The sensor subject of an operator command (None: not one the config knows)."""
        try:
            sensor = json.loads(payload).get("sensor")
            gateway, _ = self.config.sensor_index()[sensor]
        except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
            return None
        return f"{topics.PREFIX.replace('/', '.')}.{self.site}.{gateway.id}" \
               f".{sensor}.command"

    async def _webhook_loop(self, stop: asyncio.Event) -> None:
        assert self._js is not None
        js = self._js

        async def take() -> None:
            await topology.take_webhook_consumer(js, self.site, self.cluster.replicas)
            log.info(kv("webhooks_reading", worker=self.worker_id))

        # One worker at a time (the webhooks lease): workers sharing the consumer would
        # each send what they fetched, from their own spool, a resolved before its firing.
        # Each new holder recreates the consumer from its first unacknowledged alert.
        await self._pull(stop, topology.webhook_consumer(self.site),
                         topology.ALERTS, self._take_alerts, lease=WEBHOOKS_KEY, take=take)

    async def _take_alerts(self, msgs: list[Msg]) -> None:
        """Fetched alerts into the webhook spool, in order, each only while this worker
        still holds the webhooks lease (a fetch can answer up to FETCH_WAIT_S after the
        lease was last seen valid, and the next holder may take over meanwhile): from the
        first one after the lease lapsed, NAKed, for the next holder."""
        for i, m in enumerate(msgs):
            if not self._owns_lease(WEBHOOKS_KEY):
                self.counters["alerts_refused"] += len(msgs) - i
                log.warning(kv("webhooks_fetch_refused", worker=self.worker_id,
                               messages=len(msgs) - i, reason="lease lapsed"))
                await _nak(msgs[i:])
                return
            try:
                alert = json.loads(m.data)
            except ValueError as e:
                self.counters["alerts_unreadable"] += 1
                log.error(kv("alert_message_unreadable", reason=e))
            else:
                if self._submit is not None:
                    self._submit(alert)  # spooled to disk by the webhook sender
                self.counters["webhooks_taken"] += 1
            await m.ack()

    # --- what the service calls ---------------------------------------------------------

    async def route_command(self, command: dict[str, Any]) -> bool:
        """Publish an operator command (from the evidence page) on its sensor's subject, as
        the control loop routes one from the command topic: the partition's owner applies
        it in order with the sensor's windows, saves the state and sends its alerts
        through ALERTS. False (logged) when it could not be published."""
        payload = json.dumps(command).encode()
        subject = self._command_subject(payload)
        if self._js is None or subject is None:
            log.warning(kv("command_not_routed", sensor=command.get("sensor"),
                           reason="not connected" if subject else "unknown sensor"))
            return False
        try:
            await self._js.publish(subject, payload)
        except Exception as e:
            log.warning(kv("command_not_routed", sensor=command.get("sensor"), reason=repr(e)))
            return False
        self.counters["commands_routed"] += 1
        return True

    def ack(self, d: Delivery) -> None:
        """Recorded; acknowledged to JetStream after the batch's state is saved."""
        self._acked.append(d)

    async def publish(self, topic: str, payload: str, *, retain: bool = False) -> bool:
        """Diagnoses on their NATS subject, which the relay carries back to mosquitto (and
        MQTT subscribers of any node see). An alert goes to the ALERTS stream first,
        de-duplicated by its id and status; its failure raises, so that the window that
        caused it is not acknowledged. A duplicate (re-fired after a worker died) goes no
        further: it was published the first time."""
        if self._nc is None or self._js is None:
            log.warning(kv("publish_failed", topic=topic, reason="not connected"))
            return False
        parts = topic.split("/")
        if len(parts) == 4 and parts[3] == "alerts":
            alert = json.loads(payload)
            # Sites share the ALERTS stream, and alert ids are unique within a site only.
            msg_id = (f"{parts[2]}:{alert.get('kind', 'machine')}:{alert['alert_id']}"
                      f":{alert['status']}")
            ack = await self._js.publish(f"{topology.ALERT_SUBJECT}.{parts[2]}",
                                         payload.encode(), headers={"Nats-Msg-Id": msg_id})
            if ack.duplicate:
                self.counters["alerts_duplicate"] += 1
                return True
            self.counters["alerts_published"] += 1
        try:
            await self._nc.publish(topic.replace("/", "."), payload.encode())
            return True
        except Exception as e:
            log.warning(kv("publish_failed", topic=topic, reason=repr(e)))
            return False

    def reconfigure(self, broker: BrokerConfig) -> None:
        """[broker] is the relay's mosquitto (the worker itself reads [cluster]): a running
        relay reconnects with it at once, a later one starts with it."""
        login(broker, self.config.stream)  # raises, changing nothing, if unusable
        if self._relay is not None:
            self._relay.mqtt.reconfigure(broker)
        self.config = dataclasses.replace(self.config, broker=broker)
