"""Gateways' messages from mosquitto into JetStream, acknowledged to mosquitto only once
JetStream has stored them.

Why not NATS's own MQTT listener: its PUBACK to a QoS 1 publish does not wait for the
stream. Measured on a 3-node cluster (docs/scale-out.md): 60 windows published and
PUBACKed while the WINDOWS stream's leader was killed, 46 stored. A gateway deletes a
window from its outbox on PUBACK, so those 14 were lost. Here a window leaves mosquitto's
session only after JetStream's publish acknowledgement (stored on a majority of replicas).

One worker of the site at a time relays (the `relay` lease in its leases bucket), with one
MQTT client id and a persistent session: the next holder resumes the session, and mosquitto
redelivers what the previous one had not acknowledged, in order. A message relayed twice
(stored, then the relay died before its MQTT acknowledgement) carries the same
`Nats-Msg-Id` and is dropped by JetStream's de-duplication (`store_id`).

What the relay does not store (`refusal`), it acknowledges and counts (`relay_refused`, and
per reason `relay_refused_topic`, `relay_refused_qos`), with one ``event=window_rejected``
line each: a topic of another site or with invalid ids, and a window that came at QoS 0,
which the embedded stream refuses too and the workers could not tell from a QoS 1 one.

The relay also carries the workers' diagnoses and alerts back to mosquitto (diagnoses
retained), so that whoever reads the site's topics there (operators, `ballpass watch`,
the evidence page) sees the same messages as with one embedded stream process. That way
back is best effort, like the embedded stream's own publishes: a diagnosis is published
again with the sensor's next window, and alerts reach people through the webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ballpass import backoff, topics
from ballpass.config import Config
from ballpass.log import kv
from ballpass.stream.mqtt_source import Delivery, MqttSource
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop
from ballpass.stream.routing import SUBSCRIPTIONS, Route, route

log = logging.getLogger(__name__)

RETURN_QUEUE = 10_000
"""Messages waiting for mosquitto at most; beyond, the oldest way back is full: dropped,
counted (`returned_dropped`)."""
RETURN_BATCH = 64
LEASE_CHECK_S = 0.25
"""How often an idle relay asks for its lease: it must be off mosquitto before the lease
expires (0.4 x `lease_s` after it stops being valid), or it and the next holder, with one
MQTT client id, take the session from each other in turn."""

T = TypeVar("T")


def return_subjects(site: str) -> tuple[str, str]:
    """The workers' messages the relay publishes back to its site's mosquitto (only its
    own site's: other plants' share the cluster)."""
    return f"bp.v1.{site}.*.*.diagnosis", f"bp.v1.{site}.alerts"


def message_id(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def store_id(topic: str, payload: bytes) -> str | None:
    """The `Nats-Msg-Id` a relayed message is stored with (None: none, never dropped).

    A window or tacho reading is unique by content (it carries its seq and time), so a
    hash of it drops only a copy. A gateway's status is not: its last will "offline" is the
    same bytes each time, and a second one within JetStream's 120 s window would be lost;
    likewise an operator's command sent twice on purpose. A command is de-duplicated by its
    own "id" only, when it has one (its sender's retry of the same command).
    """
    r = route(topic)
    if r.route in (Route.WINDOW, Route.TACHO):
        return message_id(topic, payload)
    if r.route is Route.COMMAND:
        try:
            command_id = json.loads(payload).get("id")
        except (ValueError, AttributeError, RecursionError):
            return None
        if isinstance(command_id, str | int) and not isinstance(command_id, bool):
            return f"{r.site}:command:{command_id}"  # sites share the CONTROL stream
    return None


def relayable(topic: str, site: str) -> bool:
    """A topic of `site` whose subject a stream captures. A message on any other (say a
    site id with a dot) would be refused by JetStream forever and must not block the
    relay; one of another site would reach that site's workers, which share the cluster."""
    r = route(topic)
    if r.site != site:
        return False
    if r.route in (Route.WINDOW, Route.TACHO):
        return True  # ids checked by `route`
    if r.route is Route.STATUS:
        return topics.valid_id(r.gateway)
    return r.route is Route.COMMAND


def refusal(d: Delivery, site: str) -> tuple[str, str] | None:
    """Why the relay does not store `d` in JetStream, as (reason, detail); None: stored.

    - ``topic``: not `relayable` on `site`.
    - ``qos``: a window delivered at QoS 0. The embedded stream refuses it (`admission`,
      reason ``qos``): it is lost whenever the stream is down, and no inflight limit bounds
      a flood of them. The workers cannot tell (a JetStream message has no MQTT QoS, they
      take every one as QoS 1), so the relay refuses it for them. The relay subscribes at
      QoS 1, so `d.qos` is min(publisher's QoS, 1): a window published at QoS 1 (every
      gateway's) arrives at QoS 1, one at QoS 0 at QoS 0; behind a mosquitto bridge
      without a QoS on its `topic` line, every window arrives at QoS 0 (docs/stream.md).
      Tacho readings are QoS 0 by contract, statuses and commands are not checked for
      QoS by the embedded stream either: relayed at any QoS.
    """
    if not relayable(d.topic, site):
        return "topic", (f"not a window, tacho, status or command topic of site {site} "
                         "with valid ids: not relayed")
    if d.qos < 1 and route(d.topic).route is Route.WINDOW:
        return "qos", "a window at QoS 0; windows are QoS 1 (docs/topics.md): not relayed"
    return None


class Relay:
    """Copies every message of the site's subscriptions from mosquitto to JetStream."""

    def __init__(self, config: Config, nc: NatsClient, js: JetStreamContext,
                 holds: Callable[[], bool] = lambda: True) -> None:
        """`holds`: whether this worker still holds the relay lease. Asked before each
        wave and acknowledgement: a worker whose lease loop is held up (waiting for a long
        batch) must not relay on after its lease lapsed, beside the next holder."""
        stream = dataclasses.replace(config.stream,
                                     client_id=f"{config.stream.client_id}-relay")
        self.mqtt = MqttSource(config.broker, stream, SUBSCRIPTIONS,
                               on_drop=self._overloaded)
        self.site = config.site.id
        self.nc = nc
        self.js = js
        self.holds = holds
        self.counters = {"relayed": 0, "relay_duplicates": 0, "relay_retries": 0,
                         "relay_refused": 0, "relay_refused_topic": 0,
                         "relay_refused_qos": 0, "returned": 0, "returned_failed": 0,
                         "returned_dropped": 0, "relay_overload": 0}
        self._back: asyncio.Queue[Msg] = asyncio.Queue(RETURN_QUEUE)

    def _overloaded(self) -> None:
        """A QoS 0 message dropped by the MQTT side, too many waiting (mqtt_source)."""
        self.counters["relay_overload"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (the caller sets it when the relay lease is lost)."""
        self._stop = stop
        subs = [await self.nc.subscribe(s, cb=self._queue_back)
                for s in return_subjects(self.site)]
        back = asyncio.create_task(self._publish_back(stop), name="relay-back")
        watch = asyncio.create_task(self._watch_lease(stop), name="relay-lease")
        try:
            await self.mqtt.run(stop, self._relay)
        finally:
            back.cancel()
            watch.cancel()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _queue_back(self, m: Msg) -> None:
        try:
            self._back.put_nowait(m)
        except asyncio.QueueFull:
            self.counters["returned_dropped"] += 1
            log.warning(kv("publish_failed", topic=m.subject, reason="way back to mosquitto "
                           f"full ({RETURN_QUEUE} messages)"))

    async def _publish_back(self, stop: asyncio.Event) -> None:
        """Diagnoses and alerts to mosquitto, a batch at a time (each publish waits for
        its PUBACK; one after another would cost a round trip per sensor)."""
        while not stop.is_set():
            batch = [await self._back.get()]
            while len(batch) < RETURN_BATCH and not self._back.empty():
                batch.append(self._back.get_nowait())
            done = await asyncio.gather(*(self.mqtt.publish(
                m.subject.replace(".", "/"), m.data.decode("utf-8", "replace"),
                retain=m.subject.endswith(".diagnosis")) for m in batch))
            self.counters["returned"] += sum(done)
            self.counters["returned_failed"] += len(done) - sum(done)

    async def _relay(self, batch: list[Delivery]) -> None:
        """Store `batch` in JetStream, acknowledging each message to mosquitto once stored.

        One JetStream round trip per message, one after another, would bound the relay at
        1 / round trip (about 250 windows/s on a loopback R3 cluster, BENCHMARKS.md): the
        batch goes out in waves instead, each wave's publishes concurrent and each wave at
        most one message per sensor (`waves`), so a sensor's next message leaves only once
        its previous one is stored: a failed and retried message can never be stored after
        a later one of its sensor. A retried message that had been stored after all (its
        answer lost) is dropped by JetStream's de-duplication (`Nats-Msg-Id`).
        """
        todo: list[tuple[Delivery, bytes]] = []
        for d in batch:
            payload = d.payload if isinstance(d.payload, bytes) else str(d.payload).encode()
            why = refusal(d, self.site)
            if why is None:
                todo.append((d, payload))
                continue
            refused, detail = why
            self.counters["relay_refused"] += 1
            self.counters[f"relay_refused_{refused}"] += 1
            log.warning(kv("window_rejected", reason=refused, topic=d.topic, qos=d.qos,
                           detail=detail))
            self.mqtt.ack(d)
        for wave in waves(todo):
            attempt = 0
            while wave:
                if self._stop.is_set() or not self._still_holds():
                    return  # stopping: the rest stays in mosquitto's session, unacknowledged
                answers = await asyncio.gather(*(self._store(d, payload) for d, payload in wave),
                                               return_exceptions=True)
                failed: list[tuple[Delivery, bytes]] = []
                reason: BaseException | None = None
                for (d, payload), answer in zip(wave, answers, strict=True):
                    if isinstance(answer, BaseException):
                        if not isinstance(answer, Exception):
                            raise answer  # cancelled: stopping
                        failed.append((d, payload))
                        reason = answer
                        continue
                    self.counters["relay_duplicates" if answer else "relayed"] += 1
                    if not self._still_holds():
                        return  # stored; the next holder relays it again, dropped as a copy
                    self.mqtt.ack(d)
                wave = failed
                if failed:  # no JetStream answer (leader election, lost link): again
                    attempt += 1
                    self.counters["relay_retries"] += len(failed)
                    delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                    log.warning(kv("relay_publish_failed", topic=failed[0][0].topic,
                                   messages=len(failed), attempt=attempt, reason=repr(reason),
                                   retry_in_s=round(delay, 1)))
                    await sleep_or_stop(self._stop, delay)

    async def _watch_lease(self, stop: asyncio.Event) -> None:
        """Stops the relay when its lease lapses, also while no message comes. Ends once
        `stop` is set: with `stop` set each `sleep_or_stop` returns at once, and Python
        3.11's `wait_for` swallows a cancel whose inner wait is done, so a loop on
        `_still_holds` alone (always true for the edge relay) spun and outlived `run`."""
        while not stop.is_set() and self._still_holds():
            await sleep_or_stop(stop, LEASE_CHECK_S)

    def _still_holds(self) -> bool:
        """False once the relay lease is no longer this worker's: the relay stops (the
        lease loop would stop it only at its next round)."""
        if self.holds():
            return True
        if not self._stop.is_set():
            log.warning(kv("relay_lease_lapsed", site=self.site, reason="stopping the relay"))
            self._stop.set()
        return False

    async def _store(self, d: Delivery, payload: bytes) -> bool:
        """Publish to JetStream and wait for its acknowledgement; True: a duplicate."""
        msg_id = store_id(d.topic, payload)
        ack = await self.js.publish(d.topic.replace("/", "."), payload,
                                    headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        return bool(ack.duplicate)


def order_key(topic: str) -> str:
    """What relayed messages keep their order within: the topic without its last level
    (a sensor's windows and tacho readings together, a gateway's status, the commands)."""
    return topic.rsplit("/", 1)[0]


def waves(items: Sequence[tuple[Delivery, T]]) -> list[list[tuple[Delivery, T]]]:
    """`items` cut into waves of at most one item per `order_key`, in order: an item is in
    the wave after the one of its key's previous item, and each wave keeps the items'
    order. Waves go out one after the other, so a key's items are stored in order."""
    out: list[list[tuple[Delivery, T]]] = []
    wave_of: dict[str, int] = {}  # order key -> the wave of its last item
    for item in items:
        key = order_key(item[0].topic)
        w = wave_of.get(key, -1) + 1
        if w == len(out):
            out.append([])
        out[w].append(item)
        wave_of[key] = w
    return out
