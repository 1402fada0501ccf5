"""The stream service: MQTT in, features and diagnoses out to InfluxDB, MQTT and webhooks.

Thin async orchestration around `Pipeline` (the maths) and the sinks:

    aiomqtt (manual ack) ─> decode + check ─> de-dup ─> batch ─> Pipeline (thread)
        ─> InfluxDB write (retried) ─> PUBACK ─> diagnosis/alert publish + webhooks

A window is acknowledged to the broker only after its points are written (or, when the
database rejects them outright, appended to the dead-letter spool), so a crash at any
point means redelivery, never loss. Counters and per-sensor state go to a status file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import aiomqtt

from ballpass import backoff, topics, wire
from ballpass.config import Config
from ballpass.log import kv
from ballpass.stream.dedup import Deduplicator
from ballpass.stream.pipeline import BatchOutput, Incoming, Pipeline, Result, diagnosis_message
from ballpass.stream.sinks.influx import InfluxWriteError, InfluxWriter
from ballpass.stream.sinks.lineprotocol import Point, encode
from ballpass.stream.sinks.webhook import WebhookSender
from ballpass.stream.web.server import EvidenceServer
from ballpass.stream.web.state import EvidenceState

log = logging.getLogger(__name__)

STATUS_SUBSCRIPTION = f"{topics.PREFIX}/+/+/status"
COMMAND_SUBSCRIPTION = f"{topics.PREFIX}/+/command"  # operator actions (docs/topics.md)
TACHO_SUBSCRIPTION = f"{topics.PREFIX}/+/+/+/tacho"  # shaft speed {"t_ns", "shaft_hz"}
GATEWAY_COUNTERS = ("captured", "queued", "published", "dropped", "replayed")
# Broker reconnects and InfluxDB retries (s); the windows wait in the broker meanwhile.
RETRY_INITIAL_S, RETRY_MAX_S = 0.5, 30.0


@dataclass
class StreamCounters:
    received: int = 0  # window messages taken from the broker, duplicates included
    ingested: int = 0  # distinct windows accepted for processing
    written: int = 0  # windows whose points InfluxDB accepted
    spooled: int = 0  # windows whose points the database refused (kept in the spool)
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    write_retries: int = 0
    alerts_fired: int = 0
    alerts_resolved: int = 0


class _Skip(Enum):
    """Why `_admit` hands a window message on for no processing."""

    ACK = "ack"  # rejected, or a duplicate of a written window: acknowledge it now
    HOLD = "hold"  # a copy of a window being processed: acknowledged once that is written


class StreamService:
    """Runs until `stop` is set; `counters` and `status()` describe progress."""

    def __init__(self, config: Config, writer: InfluxWriter, *,
                 status_file: Path | None = None, status_interval_s: float = 1.0,
                 http: str | None = None) -> None:
        self.config = config
        self.writer = writer
        self.status_file = status_file
        self.status_interval_s = status_interval_s
        self.pipeline = Pipeline(config, state_dir=config.stream.state_dir)
        self._online_saved = time.monotonic()
        self.dedup = Deduplicator()
        self.webhooks = WebhookSender(config.webhooks, state_dir=config.stream.state_dir,
                                      public_url=config.stream.public_url)
        # The evidence page (stream/web): `http` ("HOST:PORT") overrides [stream] http.
        self.http = http or config.stream.http
        self.evidence: EvidenceState | None = None
        self.web: EvidenceServer | None = None
        if self.http:
            self.evidence = EvidenceState(config)
        self.counters = StreamCounters()
        self.connected = False
        self.sensors: dict[str, dict[str, Any]] = {}
        self.gateways: dict[str, dict[str, Any]] = {}
        # (sensor, seq) of each window being processed -> the broker messages carrying it
        self._pending: dict[tuple[str, int], list[aiomqtt.Message]] = {}
        self._generation = 0
        self._started = time.time()
        self._kernels: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        webhook_task = asyncio.create_task(self.webhooks.run(), name="webhooks")
        status_task = asyncio.create_task(self._status_loop(stop), name="status")
        try:
            await self._start_web()
            # Kernels load (or compile, on a first run) while the database and broker
            # connections come up; the first batch waits for them.
            self._kernels = asyncio.create_task(self._warm_up(), name="warm-up")
            await self._ensure_database(stop)
            await self._write_iso_boundaries()
            await self._mqtt_loop(stop)
        finally:
            if self.web is not None:
                await self.web.close()
            await self.webhooks.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(webhook_task, timeout=30)
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            # Online models persist at shutdown too (the periodic save runs after batches).
            await asyncio.to_thread(self._save_online)
            self._write_status()
            log.info(kv("stream_stopped", **{k: v for k, v in asdict(self.counters).items()
                                             if not isinstance(v, dict)}))

    async def _warm_up(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.pipeline.warm_up)
        log.info(kv("kernels_ready", seconds=round(time.monotonic() - started, 2)))

    async def _ensure_database(self, stop: asyncio.Event) -> None:
        ensure = getattr(self.writer, "ensure_database", None)
        if ensure is None:
            return
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                await asyncio.to_thread(ensure)
                return
            except (InfluxWriteError, OSError) as e:
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.warning(kv("influx_unreachable", url=getattr(self.writer, "url", ""),
                               attempt=attempt, reason=e, retry_in_s=round(delay, 1)))
                await _sleep_or_stop(stop, delay)

    def _client(self) -> aiomqtt.Client:
        b = self.config.broker
        s = self.config.stream
        tls = None
        if b.tls:
            tls = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
            if b.cert_file:
                tls.load_cert_chain(str(b.cert_file), str(b.key_file) if b.key_file else None)
        client = aiomqtt.Client(
            b.host, b.port, identifier=s.client_id, clean_session=False,
            username=s.username or b.username, password=s.password() or b.password(),
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
        return client

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        attempt = 0
        b = self.config.broker
        while not stop.is_set():
            try:
                async with self._client() as client:
                    attempt = 0
                    self._generation += 1
                    await client.subscribe(topics.WINDOW_SUBSCRIPTION, qos=1)
                    await client.subscribe(STATUS_SUBSCRIPTION, qos=1)
                    await client.subscribe(COMMAND_SUBSCRIPTION, qos=1)
                    await client.subscribe(TACHO_SUBSCRIPTION, qos=1)
                    self.connected = True
                    log.info(kv("broker_connected", host=b.host, port=b.port,
                                generation=self._generation))
                    await self._consume(client, stop)
            except aiomqtt.MqttError as e:
                attempt += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                event = "broker_disconnected" if self.connected else "broker_unreachable"
                log.warning(kv(event, host=b.host, port=b.port, attempt=attempt, reason=e,
                               retry_in_s=round(delay, 1)))
                await _sleep_or_stop(stop, delay)
            finally:
                self.connected = False

    async def _consume(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

        async def reader() -> None:
            async for message in client.messages:
                await queue.put(message)

        reader_task = asyncio.create_task(reader(), name="mqtt-reader")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        generation = self._generation
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
                batch = [get.result()]
                deadline = time.monotonic() + self.config.stream.batch_wait_s
                while len(batch) < self.config.stream.batch_max:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), timeout))
                    except TimeoutError:
                        break
                await self._handle(client, generation, batch, stop)
        finally:
            reader_task.cancel()
            stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader_task

    # --- one batch -------------------------------------------------------------------

    def _ack(self, client: aiomqtt.Client, generation: int, message: aiomqtt.Message) -> None:
        # A message id is only meaningful on the connection it arrived on; after a
        # reconnect the broker redelivers and the copy is acknowledged instead.
        if generation == self._generation and message.qos > 0:
            client._client.ack(message.mid, message.qos)

    async def _handle(self, client: aiomqtt.Client, generation: int,
                      batch: list[aiomqtt.Message], stop: asyncio.Event) -> None:
        accepted, extra_points, commands = self._sort(client, generation, batch)
        if not accepted and not extra_points and not commands:
            return
        if self._kernels is not None:
            await self._kernels
        output = await asyncio.to_thread(self._process, accepted)
        if commands:
            done = await asyncio.to_thread(self._commands, commands)
            output = BatchOutput(output.results, output.points + done.points,
                                 output.alerts + done.alerts)
        written = await self._write(output.points + extra_points, stop, len(output.results))
        if not written:
            return  # stopping: nothing acknowledged, the broker keeps the windows
        for item in accepted:
            key = (item.sensor, item.window.seq)
            for message in self._pending.pop(key):
                self._ack(client, generation, message)
            self.dedup.mark(*key)
        for message in commands:
            self._ack(client, generation, message)
        await self._publish(client, output)
        if time.monotonic() - self._online_saved >= self.config.stream.online_save_s:
            await asyncio.to_thread(self._save_online)

    def _sort(self, client: aiomqtt.Client, generation: int, batch: list[aiomqtt.Message]
              ) -> tuple[list[Incoming], list[Point], list[aiomqtt.Message]]:
        """Split a batch into windows to process, gateway-status points and operator
        commands; tacho and status messages, bad windows and duplicates are acknowledged
        here (nothing of theirs waits for the database)."""
        accepted: list[Incoming] = []
        extra_points: list[Point] = []
        commands: list[aiomqtt.Message] = []
        for message in batch:
            topic = str(message.topic)
            parts = topic.split("/")
            if len(parts) == 4 and parts[3] == "command":
                commands.append(message)  # acknowledged once its action is written
                continue
            if len(parts) == 6 and parts[5] == "tacho":
                try:
                    self.pipeline.update_tacho(parts[4], message.payload)
                except ValueError as e:
                    self._reject("tacho", topic, str(e))
                self._ack(client, generation, message)
                continue
            if len(parts) == 5 and parts[4] == "status":
                point = self._gateway_status(parts[2], parts[3], message.payload)
                if point is not None:
                    extra_points.append(point)
                self._ack(client, generation, message)
                continue
            item = self._admit(topic, message)
            if isinstance(item, Incoming):
                accepted.append(item)
            elif item is _Skip.ACK:
                self._ack(client, generation, message)
        return accepted, extra_points, commands

    def _commands(self, messages: list[aiomqtt.Message]) -> BatchOutput:
        """Apply operator commands (JSON) in arrival order; bad ones are counted and logged."""
        out = BatchOutput([], [], [])
        for message in messages:
            try:
                command = json.loads(message.payload)  # type: ignore[arg-type]
            except (ValueError, TypeError) as e:
                self._reject("command", str(message.topic), f"bad command JSON: {e}")
                continue
            done = self.pipeline.apply_command(command)
            out.points.extend(done.points)
            out.alerts.extend(done.alerts)
        return out

    def _save_online(self) -> None:
        """Write the online models' state files (never raises: a failure is logged)."""
        self._online_saved = time.monotonic()
        try:
            n = self.pipeline.online.save_all()
            log.info(kv("online_state_saved", sensors=n))
        except Exception:
            log.exception(kv("online_state_save_failed"))

    def _process(self, batch: list[Incoming]) -> BatchOutput:
        """`Pipeline.process`, isolating a window that makes it fail.

        A bug or an input the kernels cannot take must not stop the stream, nor come
        back forever by redelivery: the batch is retried window by window, and a window
        that still fails is counted as rejected (`processing_error`), logged and
        acknowledged with the rest.
        """
        if not batch:
            return BatchOutput([], [], [])
        try:
            return self.pipeline.process(batch)
        except Exception:
            log.exception(kv("batch_failed", windows=len(batch)))
        merged = BatchOutput([], [], [])
        for item in batch:
            try:
                one = self.pipeline.process([item])
            except Exception as e:
                self._reject("processing_error", topics.window(item.site, item.gateway,
                                                               item.sensor),
                             f"seq {item.window.seq}: {e!r}")
                continue
            merged.results.extend(one.results)
            merged.points.extend(one.points)
            merged.alerts.extend(one.alerts)
        return merged

    def _admit(self, topic: str, message: aiomqtt.Message) -> Incoming | _Skip:
        """Decode and check one window message: the window to process, or why not."""
        self.counters.received += 1
        where = topics.parse_sensor_topic(topic)
        if where is None or where.leaf != "window":
            self._reject("topic", topic, "not bp/v1/{site}/{gateway}/{sensor}/window")
            return _Skip.ACK
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            self._reject("payload", topic, "payload is not bytes")
            return _Skip.ACK
        try:
            window = wire.decode(bytes(payload))
        except wire.WireError as e:
            self._reject(e.reason, topic, e.detail)
            return _Skip.ACK
        if not self.pipeline.knows(where.sensor):
            self._reject("unknown_sensor", topic,
                         f"sensor {where.sensor!r} is not in the site config")
            return _Skip.ACK
        key = (where.sensor, window.seq)
        if self.dedup.seen(*key):
            self.counters.duplicates += 1
            log.info(kv("duplicate_window", sensor=where.sensor, seq=window.seq))
            return _Skip.ACK
        if key in self._pending:
            self.counters.duplicates += 1
            self._pending[key].append(message)
            return _Skip.HOLD
        self._pending[key] = [message]
        self.counters.ingested += 1
        return Incoming(where.site, where.gateway, where.sensor, window)

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.counters.rejected[reason] += 1
        log.warning(kv("window_rejected", reason=reason, topic=topic, detail=detail))

    def _gateway_status(self, site: str, gateway: str, payload: Any) -> Point | None:
        try:
            status = json.loads(payload)
            counters = status.get("counters") or {}
            self.gateways[gateway] = status
            fields = {k: int(counters[k]) for k in GATEWAY_COUNTERS if k in counters}
        except (ValueError, TypeError, AttributeError) as e:
            self._reject("status", f"{site}/{gateway}/status", f"bad status JSON: {e}")
            return None
        if not fields:
            return None  # a last will carries no counters
        return Point("gateway", {"site": site, "gateway": gateway}, fields, time.time_ns())

    async def _write(self, points: list[Point], stop: asyncio.Event, windows: int) -> bool:
        """Write with retries; True once written or spooled, False if stopped first."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.writer.write, points)
                self.counters.written += windows
                return True
            except InfluxWriteError as e:
                if not e.retryable:
                    self._spool(points, str(e))
                    self.counters.spooled += windows
                    return True
                attempt += 1
                self.counters.write_retries += 1
                delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                log.warning(kv("influx_write_failed", attempt=attempt, reason=e,
                               retry_in_s=round(delay, 1), windows=windows))
                if await _sleep_or_stop(stop, delay):
                    return False

    def _spool(self, points: list[Point], reason: str) -> None:
        """Keep points the database refused, so an operator can inspect and replay them."""
        spool = self.config.stream.state_dir / "spool.lp"
        spool.parent.mkdir(parents=True, exist_ok=True)
        with spool.open("a", encoding="utf-8") as f:
            f.write(encode(points) + "\n")
        log.error(kv("influx_write_refused", reason=reason, points=len(points),
                     spool=str(spool)))

    async def _publish(self, client: aiomqtt.Client, output: BatchOutput) -> None:
        # Only each sensor's last diagnosis of the batch is published (retained) and
        # shown in the status, so only that one is built.
        last: dict[str, Result] = {}
        diagnosed: Counter[str] = Counter()
        for r in output.results:
            if r.diagnosis is not None:
                last[r.incoming.sensor] = r
                diagnosed[r.incoming.sensor] += 1
        latest: dict[str, dict[str, Any]] = {}
        for sensor, r in last.items():
            message = latest[sensor] = diagnosis_message(r)
            alert_state = self.pipeline.alerts.sensors[sensor]
            self.sensors[sensor] = {
                "gateway": r.incoming.gateway, "asset": r.asset,
                "diagnosis": message["diagnosis"], "confidence": message["confidence"],
                "state": message["state"], "iso_zone": message["iso_zone"],
                "velocity_rms_mm_s": message["velocity_rms_mm_s"], "seq": message["seq"],
                "alerted": alert_state.alerted,
                "online": self.pipeline.online.status(sensor),
                "acknowledged_by": alert_state.acknowledged_by or None,
                "windows": self.sensors.get(sensor, {}).get("windows", 0) + diagnosed[sensor],
            }
        try:
            for sensor, message in latest.items():
                await client.publish(
                    topics.diagnosis(message["site"], message["gateway"], sensor),
                    json.dumps(message), qos=1, retain=True)
            for alert in output.alerts:
                await client.publish(topics.alerts(alert["site"]), json.dumps(alert), qos=1)
        except aiomqtt.MqttError as e:
            # Diagnoses are re-published with the next window; alerts still go by webhook.
            log.warning(kv("publish_failed", reason=e))
        for alert in output.alerts:
            if alert["status"] == "firing":
                self.counters.alerts_fired += 1
            else:
                self.counters.alerts_resolved += 1
            log.info(kv("alert", status=alert["status"], sensor=alert["sensor"],
                        diagnosis=alert["diagnosis"], alert_id=alert["alert_id"]))
            self.webhooks.submit(alert)
        if self.evidence is not None:
            self.evidence.observe(output)

    async def _write_iso_boundaries(self) -> None:
        """One `iso20816` point per asset: its zone boundaries, for dashboards' thresholds."""
        from ballpass.models.iso20816 import boundaries
        now = time.time_ns()
        points = []
        for a in self.config.assets:
            ab, bc, cd = boundaries(a.iso_group, a.iso_foundation)
            points.append(Point("iso20816", {"site": self.config.site.id, "asset": a.id},
                                {"group": a.iso_group, "foundation": a.iso_foundation,
                                 "ab_mm_s": ab, "bc_mm_s": bc, "cd_mm_s": cd}, now))
        try:
            await asyncio.to_thread(self.writer.write, points)
        except (InfluxWriteError, OSError) as e:
            log.warning(kv("iso_boundaries_not_written", reason=e))

    # --- evidence page and operator actions ------------------------------------------

    async def _start_web(self) -> None:
        if self.evidence is None or not self.http:
            return
        self.evidence.gateways = self.gateways  # shown live, by reference
        host, _, port = self.http.rpartition(":")
        s = self.config.stream
        token = s.http_token_file.read_text(encoding="utf-8").strip() \
            if s.http_token_file else None
        self.web = EvidenceServer(self.evidence, host.strip("[]"), int(port), token=token,
                                  ack=self.operator_action)
        await self.web.start()
        if self.webhooks.public_url is None:
            self.webhooks.public_url = self.web.url

    async def operator_action(self, sensor: str, by: str, note: str = "",
                              action: str = "ack") -> dict[str, Any]:
        """An operator action from the evidence page (its acknowledge button).

        Goes through the same path as the command topic (`Pipeline.apply_command`): the
        alert state machine takes it and an `actions` point records who and when.
        """
        command = {"action": action, "sensor": sensor, "by": by, "note": note,
                   "t": time.time()}
        done = self.pipeline.apply_command(command)
        record = {**command, "result": done.points[0].fields.get("result", "")
                  if done.points else "rejected"}
        if self.evidence is not None:
            self.evidence.record_action(record)
        try:
            if done.points:
                await asyncio.to_thread(self.writer.write, done.points)
        except (InfluxWriteError, OSError) as e:
            log.warning(kv("operator_action_not_written", sensor=sensor, reason=e))
        for alert in done.alerts:
            self.webhooks.submit(alert)
        return record

    # --- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "t": time.time(), "started_at": self._started, "mqtt_connected": self.connected,
            "counters": {
                "received": c.received, "ingested": c.ingested, "written": c.written,
                "spooled": c.spooled, "duplicates": c.duplicates,
                "rejected": dict(c.rejected), "write_retries": c.write_retries,
                "alerts_fired": c.alerts_fired, "alerts_resolved": c.alerts_resolved,
                "webhooks_delivered": self.webhooks.counters.delivered,
                "webhooks_failed": self.webhooks.counters.failed,
                "webhooks_pending": self.webhooks.counters.pending,
            },
            "http_url": self.web.url if self.web is not None else None,
            "sensors": self.sensors,
            "gateways": self.gateways,
            "online": dict(self.pipeline.online.counters),
        }

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.status_file)

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(self.status_interval_s)


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` s; True if `stop` was set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()
