"""The MQTT side of the stream: connect, subscribe, hand over batches, acknowledge, publish.

This is the only module that touches aiomqtt (and, for manual acknowledgement, the paho
client inside it). A message is acknowledged only when the service says so (`ack`), after
its window is written; a message id is only meaningful on the connection it arrived on,
so after a reconnect the broker's redelivered copy is acknowledged instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt

from ballpass import backoff, wire
from ballpass.config import BrokerConfig, ConfigError, StreamConfig
from ballpass.log import kv
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop

log = logging.getLogger(__name__)

# A window of 2^22 samples takes ~300 MB at its peak to process, a batch held up to
# `batch_max` of them (16: 2.7 GB, past the unit's MemoryMax of 1 GB), and two batches are
# in memory at once (one processed, one written): past this many samples a batch ends
# early, and the message in hand starts the next one. A longer window (three channels)
# is a batch of its own.
BATCH_MAX_SAMPLES = wire.MAX_SAMPLES
# QoS 0 messages read from the connection and not yet in a batch: beyond either bound a
# QoS 0 message is dropped (`overload`). QoS 1 messages are always kept, and not counted
# here (a backlog of big QoS 1 windows dropped every tacho reading): the broker's
# max_inflight_messages bounds them, and nothing re-sends one dropped until a reconnect.
# Nothing else bounds a QoS 0 flood (291,200 windows in 25 s grew the stream by 3.6 GB).
QUEUE_MAX = 1024
QUEUE_MAX_BYTES = 64 * 2**20
# After a batch this long (or a longer window), freed memory goes back to the system:
# glibc keeps the batch's freed buffers (and paho's, of reading 16 MB payloads) in its
# heaps, where 16 windows of 2^22 samples left 430 MB resident with nothing alive.
TRIM_AFTER_SAMPLES = BATCH_MAX_SAMPLES // 4
OVERLOAD_LOG_S = 10.0  # at most one `reason=overload` line this often: a flood is fast


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
                 subscriptions: Sequence[str], on_drop: Callable[[], None] | None = None
                 ) -> None:
        """`on_drop`: called for each QoS 0 message dropped under overload, to count it
        where its owner shows counters (`dropped` counts them in any case)."""
        self.broker = broker
        self.stream = stream
        self.subscriptions = tuple(subscriptions)
        self.on_drop = on_drop
        self.connected = False
        self.generation = 0
        self.dropped = 0  # QoS 0 messages dropped because too many were waiting
        self._queued = self._queued_bytes = 0  # QoS 0 read, not yet in a batch (`_keep`)
        self._dropped_logged = 0
        self._overload_logged_at = -math.inf
        self._client: aiomqtt.Client | None = None

    def _new_client(self) -> aiomqtt.Client:
        """A client with the current settings; raises ConfigError, OSError or ssl.SSLError
        when a password, CA or certificate file cannot be used now."""
        b, s = self.broker, self.stream
        tls, password = login(b, s)
        source = self
        # QoS 0 messages read and not yet in a batch (aiomqtt's queue and `_consume`'s),
        # of this connection: a lost one's are gone with it.
        self._queued = self._queued_bytes = 0

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's queue of messages read: the bound applies as paho reads them, so
            a flood costs a drop each, not memory (aiomqtt reads faster than it yields)."""

            def put_nowait(self, item: aiomqtt.Message) -> None:
                if source._keep(item):
                    super().put_nowait(item)

        client = aiomqtt.Client(
            b.host, b.port, identifier=s.client_id, clean_session=False,
            username=s.username or b.username, password=password,
            keepalive=b.keepalive_s, tls_context=tls,
            # Unbounded for QoS 1 (`Inbox` drops only QoS 0, beyond QUEUE_MAX): aiomqtt
            # DISCARDS any message when its queue is full, and with manual
            # acks nothing re-sends it until the next reconnect. The broker's
            # max_inflight_messages is the bound, except that mosquitto 2.0.11 exceeds it
            # when a resumed session's backlog is flushed (158 unacked seen after a broker
            # restart: tests/test_broker_outage.py lost windows with a bound of 160).
            max_queued_incoming_messages=0, queue_type=Inbox,
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
            if m.qos == 0:
                self._queued -= 1
                self._queued_bytes -= _size(m.payload)
            return Delivery(str(m.topic), m.payload, m.qos, m.mid, generation)

        reader_task = asyncio.create_task(reader(), name="mqtt-reader")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        batch_max, batch_wait_s = self.stream.batch_max, self.stream.batch_wait_s
        committing: asyncio.Task[None] | None = None
        carried: Delivery | None = None  # taken, but beyond the last batch's sample budget
        try:
            while True:
                if carried is None:
                    get = asyncio.create_task(queue.get())
                    done, _ = await asyncio.wait({get, reader_task, stop_task},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        if reader_task in done:
                            reader_task.result()  # re-raises the MqttError of a lost connection
                        return
                    carried = delivery(get.result())
                batch, carried = [carried], None
                samples = wire.declared_samples(batch[0].payload)
                deadline = time.monotonic() + batch_wait_s
                while len(batch) < batch_max:
                    if not queue.empty():  # no wait_for (a task per message) when queued
                        d = delivery(queue.get_nowait())
                    else:
                        timeout = deadline - time.monotonic()
                        if timeout <= 0:
                            break
                        try:
                            d = delivery(await asyncio.wait_for(queue.get(), timeout))
                        except TimeoutError:
                            break
                    samples += wire.declared_samples(d.payload)
                    if samples > BATCH_MAX_SAMPLES:
                        carried = d  # the next batch's first: nothing is dropped
                        break
                    batch.append(d)
                commit = await handle(batch)
                if samples >= TRIM_AFTER_SAMPLES:
                    _trim_heap()
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

    def _keep(self, message: aiomqtt.Message) -> bool:
        """Whether a message paho just read is queued (for a batch) or dropped: QoS 0
        beyond QUEUE_MAX QoS 0 messages or QUEUE_MAX_BYTES of them waiting is dropped,
        QoS 1 never."""
        if message.qos != 0:
            return True
        size = _size(message.payload)
        if self._queued >= QUEUE_MAX or self._queued_bytes + size > QUEUE_MAX_BYTES:
            self._drop(message)
            return False
        self._queued += 1
        self._queued_bytes += size
        return True

    def _drop(self, message: aiomqtt.Message) -> None:
        """Count (and now and then log) a QoS 0 message dropped under overload."""
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()
        now = time.monotonic()
        if now - self._overload_logged_at >= OVERLOAD_LOG_S:
            log.warning(kv("window_rejected", reason="overload", topic=str(message.topic),
                           detail=f"{self.dropped - self._dropped_logged} QoS 0 messages "
                                  f"dropped since the last such line: {QUEUE_MAX} messages "
                                  f"or {QUEUE_MAX_BYTES} bytes wait for the pipeline"))
            self._overload_logged_at, self._dropped_logged = now, self.dropped

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


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Return the C heap's free pages to the system (a few ms; no-op without glibc)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _size(payload: object) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


def login(b: BrokerConfig, s: StreamConfig) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context and password of a connection with `b` as `s`'s user, read now;
    raises ConfigError, OSError or ssl.SSLError when a file of them cannot be used."""
    tls = None
    if b.tls:
        tls = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
        if b.cert_file:
            tls.load_cert_chain(str(b.cert_file), str(b.key_file) if b.key_file else None)
    return tls, s.password() or b.password()
