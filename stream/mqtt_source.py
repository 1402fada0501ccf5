"""The MQTT side of the stream: connect, subscribe, hand over batches, acknowledge, publish.

This is the only module that touches aiomqtt (and, for manual acknowledgement, the paho
client inside it). A message is acknowledged only when the service says so (`ack`), after
its window is written; a message id is only meaningful on the connection it arrived on,
so after a reconnect the broker's redelivered copy is acknowledged instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt

from ballpass import backoff
from ballpass.config import BrokerConfig, ConfigError, StreamConfig
from ballpass.log import kv
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message taken from the broker, with what it takes to acknowledge it."""

    topic: str
    payload: object  # bytes for anything a gateway sends
    qos: int
    mid: int
    generation: int  # the connection it arrived on


Commit = Callable[[], Coroutine[Any, Any, None]]
Handler = Callable[[list[Delivery]], Awaitable[Commit | None]]
"""Takes a batch; returns None when the batch is done, or the `Commit` that finishes it
(writes it and acknowledges it). A source runs each batch's commit after the previous
one's, and `MqttSource` handles the next batch meanwhile."""


class Source(Protocol):
    """Where the service takes its batches from and publishes to: `MqttSource` (mosquitto)
    or `stream.cluster.source.NatsSource` (a NATS JetStream cluster)."""

    connected: bool

    async def run(self, stop: asyncio.Event, handle: Handler) -> None: ...

    def ack(self, d: Delivery) -> None: ...

    async def publish(self, topic: str, payload: str, *, retain: bool = False) -> bool: ...

    def reconfigure(self, broker: BrokerConfig) -> None: ...


class MqttSource:
    """A persistent session (clean_session false, manual acks) that survives reconnects."""

    def __init__(self, broker: BrokerConfig, stream: StreamConfig,
                 subscriptions: Sequence[str]) -> None:
        self.broker = broker
        self.stream = stream
        self.subscriptions = tuple(subscriptions)
        self.connected = False
        self.generation = 0
        self._client: aiomqtt.Client | None = None

    def _new_client(self) -> aiomqtt.Client:
        """A client with the current settings; raises ConfigError, OSError or ssl.SSLError
        when a password, CA or certificate file cannot be used now."""
        b, s = self.broker, self.stream
        tls, password = login(b, s)
        client = aiomqtt.Client(
            b.host, b.port, identifier=s.client_id, clean_session=False,
            username=s.username or b.username, password=password,
            keepalive=b.keepalive_s, tls_context=tls,
            # Unbounded: aiomqtt DISCARDS a message when its queue is full, and with manual
            # acks nothing re-sends it until the next reconnect. The broker's
            # max_inflight_messages is the bound, except that mosquitto 2.0.11 exceeds it
            # when a resumed session's backlog is flushed (158 unacked seen after a broker
            # restart: tests/test_broker_outage.py lost windows with a bound of 160).
            max_queued_incoming_messages=0,
        )
        # aiomqtt has no manual-ack switch; paho's must be on before the first message
        # arrives, or a window would be acknowledged before it is written.
        client._client.manual_ack_set(True)
        # A batch's diagnoses go out together (stream/publisher.py), up to `batch_max` at
        # once; aiomqtt warns at every publish beyond 10 pending, which flooded the log
        # with one line per diagnosis at full load. Warn only beyond what the design allows.
        client.pending_calls_threshold = s.batch_max + 10
        return client

    async def run(self, stop: asyncio.Event, handle: Handler) -> None:
        """Connect (again after every loss, with backoff) and hand batches to `handle`
        (one at a time) until `stop` is set. A batch's commit runs while the next batch
        is handled: a stream's batch is written while the next one is processed, so the
        broker's `max_inflight_messages` should hold three batches (BENCHMARKS.md)."""
        attempt = 0
        while not stop.is_set():
            b = self.broker
            try:
                client = self._new_client()
            except (ConfigError, OSError, ssl.SSLError) as e:
                if not self.generation:
                    raise  # at start: a config error (exit 2)
                # Later (a password file being rotated, say): retried, the stream goes on.
                attempt += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.error(kv("broker_login_unusable", reason=e, attempt=attempt,
                             retry_in_s=round(delay, 1)))
                await sleep_or_stop(stop, delay)
                continue
            try:
                async with client:
                    attempt = 0
                    self.generation += 1
                    for topic in self.subscriptions:
                        await client.subscribe(topic, qos=1)
                    if self.broker is not b:
                        # Reconfigured while connecting (`reconfigure` had no client to
                        # drop): this connection has the old settings.
                        log.info(kv("broker_reconnecting", reason="reconfigured"))
                        continue
                    self._client = client
                    self.connected = True
                    log.info(kv("broker_connected", host=b.host, port=b.port,
                                generation=self.generation))
                    await self._consume(client, stop, handle)
            except aiomqtt.MqttError as e:
                attempt += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                event = "broker_disconnected" if self.connected else "broker_unreachable"
                log.warning(kv(event, host=b.host, port=b.port, attempt=attempt, reason=e,
                               retry_in_s=round(delay, 1)))
                self.connected = False
                await sleep_or_stop(stop, delay)
            finally:
                self.connected = False
                self._client = None

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event,
                       handle: Handler) -> None:
        queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        generation = self.generation

        async def reader() -> None:
            async for message in client.messages:
                await queue.put(message)

        def delivery(m: aiomqtt.Message) -> Delivery:
            return Delivery(str(m.topic), m.payload, m.qos, m.mid, generation)

        reader_task = asyncio.create_task(reader(), name="mqtt-reader")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        batch_max, batch_wait_s = self.stream.batch_max, self.stream.batch_wait_s
        committing: asyncio.Task[None] | None = None
        try:
            while True:
                get = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({get, reader_task, stop_task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    if reader_task in done:
                        reader_task.result()  # re-raises the MqttError of a lost connection
                    return
                batch = [delivery(get.result())]
                deadline = time.monotonic() + batch_wait_s
                while len(batch) < batch_max:
                    if not queue.empty():  # no wait_for (a task per message) when queued
                        batch.append(delivery(queue.get_nowait()))
                        continue
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        batch.append(delivery(await asyncio.wait_for(queue.get(), timeout)))
                    except TimeoutError:
                        break
                commit = await handle(batch)
                if committing is not None:
                    await committing  # in batch order: writes, acknowledgements, publishes
                    committing = None
                if commit is not None:
                    committing = asyncio.create_task(commit(), name="commit")
        finally:
            if committing is not None:  # finished on this connection, so its acks reach it
                await committing
            reader_task.cancel()
            stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader_task

    def reconfigure(self, broker: BrokerConfig) -> None:
        """Use `broker` from the next connection on, and reconnect now so that new
        credentials (re-read at every connect) apply at once. Raises (and keeps the old
        settings) when its password, CA or certificate file cannot be used."""
        login(broker, self.stream)
        self.broker = broker
        if self._client is not None:
            log.info(kv("broker_reconnecting", reason="reconfigured"))
            self._client._client.disconnect()

    def ack(self, d: Delivery) -> None:
        """Acknowledge `d` to the broker (QoS 0 needs none; a stale connection's id is
        skipped: the broker redelivers that message and its copy is acknowledged)."""
        if self._client is not None and d.generation == self.generation and d.qos > 0:
            self._client._client.ack(d.mid, d.qos)

    async def publish(self, topic: str, payload: str, *, retain: bool = False) -> bool:
        """Publish at QoS 1; False (logged) when not connected or the publish fails."""
        if self._client is None:
            log.warning(kv("publish_failed", topic=topic, reason="not connected"))
            return False
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain)
            return True
        except aiomqtt.MqttError as e:
            log.warning(kv("publish_failed", topic=topic, reason=e))
            return False


def login(b: BrokerConfig, s: StreamConfig) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context and password of a connection with `b` as `s`'s user, read now;
    raises ConfigError, OSError or ssl.SSLError when a file of them cannot be used."""
    tls = None
    if b.tls:
        tls = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
        if b.cert_file:
            tls.load_cert_chain(str(b.cert_file), str(b.key_file) if b.key_file else None)
    return tls, s.password() or b.password()
