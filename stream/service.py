"""The stream service: MQTT in, features and diagnoses out to InfluxDB, MQTT and webhooks.

It wires the parts, each in its own module, and owns the order of one batch:

    MqttSource (manual ack) ─> routing ─> Admission (decode, bind, de-dup) ─> Pipeline
        (thread) ─> RetryingWriter (InfluxDB, spool) ─> ack ─> Publisher (MQTT, webhooks)

A window is acknowledged to the broker only after its points are written (or, when the
database refuses them outright, appended to the spool), so a crash at any point means
redelivery, never loss. Every mutation of per-sensor state (a batch, an operator command,
an action from the evidence page) runs under one lock, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import operator
import os
import ssl
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ballpass import sdnotify
from ballpass.config import Config, ConfigError, load
from ballpass.listen import parse_listen
from ballpass.log import kv
from ballpass.stream.admission import Admission, Refusal, Skip
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.gateway_status import parse_status
from ballpass.stream.health import Health, assess
from ballpass.stream.history import HistoryStore, keep_result
from ballpass.stream.messages import alert_point
from ballpass.stream.metrics import StreamMetrics
from ballpass.stream.mqtt_source import Commit, Delivery, MqttSource, Source
from ballpass.stream.ops_http import OpsServer
from ballpass.stream.pipeline import BatchOutput, Incoming, Pipeline
from ballpass.stream.publisher import Publisher, latest_diagnoses
from ballpass.stream.retrying_writer import RetryingWriter
from ballpass.stream.routing import SUBSCRIPTIONS, Route, route
from ballpass.stream.sinks.influx import InfluxQueryError, InfluxWriter
from ballpass.stream.sinks.lineprotocol import Point
from ballpass.stream.sinks.retention import LONG_RP, apply_retention, has_long_policy
from ballpass.stream.sinks.retention import routes as retention_routes
from ballpass.stream.sinks.webhook import WebhookSender
from ballpass.stream.web.security import is_all_interfaces, load_or_create_token
from ballpass.stream.web.server import EvidenceServer
from ballpass.stream.web.state import EvidenceState
from ballpass.wire import Kind, Window

if TYPE_CHECKING:  # the cluster extra is optional
    from ballpass.stream.cluster.source import NatsSource

log = logging.getLogger(__name__)

GATEWAY_COUNTERS = ("captured", "queued", "published", "dropped", "replayed")

_T = TypeVar("_T")


async def _listening(start: Coroutine[Any, Any, None], key: str, host: str, port: int) -> None:
    """Await a server's `start`; an address it cannot listen on is an error of `key`
    (exit 2, naming it), not a traceback."""
    try:
        await start
    except OSError as e:
        raise ConfigError([f"{key}: cannot listen on {host}:{port}: {e.strerror or e}"]) from e


@runtime_checkable
class _HasStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


class StreamService:
    """Runs until `stop` is set; `counters` and `status()` describe progress."""

    def __init__(self, config: Config, writer: InfluxWriter, *,
                 status_file: Path | None = None, status_interval_s: float = 1.0,
                 http: str | None = None, metrics: str | None = None,
                 cluster: bool = False) -> None:
        """`http`: the evidence page's "HOST:PORT" (overrides [stream] http); `metrics`:
        "HOST:PORT" of `/healthz` and `/metrics` (":PORT" is loopback; None: off).
        `cluster`: a worker of the NATS cluster of [cluster] (docs/scale-out.md) instead of
        the one process on mosquitto: per-sensor state lives in the cluster's KV bucket
        (not in state files) and alerts reach the webhooks through the ALERTS stream."""
        self.config = config
        self.status_file = status_file
        self._status_unwritable = False  # the last write of the status file failed
        self.status_interval_s = status_interval_s
        state_dir = config.stream.state_dir
        self.counters = StreamCounters()
        self.dead_letters = DeadLetters(state_dir / "deadletter.jsonl")
        self.pipeline = Pipeline(config, state_dir=None if cluster else state_dir)
        self.admission: Admission[Delivery] = Admission(config, self.counters,
                                                        self.dead_letters)
        self.writer = RetryingWriter(writer, state_dir / "spool.lp", self.dead_letters,
                                     self.counters, int(config.stream.spool_max_mb * 1e6))
        self.webhooks = WebhookSender(config.webhooks, state_dir=state_dir,
                                      public_url=config.stream.public_url)
        self.source: Source
        self._nats: NatsSource | None = None
        if cluster:
            from ballpass.stream.cluster.source import NatsSource
            self._nats = NatsSource(config)
            self._nats.bind(self.pipeline, self.admission.dedup, self.webhooks.submit,
                            self.see)
            self.source = self._nats
        else:
            self.source = MqttSource(config.broker, config.stream, SUBSCRIPTIONS,
                                     on_drop=lambda: self.counters.refuse("overload"))
        self.publisher = Publisher(self.source, None if cluster else self.webhooks,
                                   self.counters)
        s = config.stream
        self.history = HistoryStore(state_dir / "history", int(s.history_max_mb * 1e6),
                                    s.history_max_age_d * 86400.0)
        self._online_saved = time.monotonic()
        # One mutation of per-sensor state at a time: batches run in a worker thread while
        # operator actions arrive on the event loop.
        self._state_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        # The evidence page (stream/web): `http` ("HOST:PORT") overrides [stream] http.
        self.http = http or config.stream.http
        self._http_key = "--http" if http else "stream.http"
        self.evidence: EvidenceState | None = EvidenceState(config) if self.http else None
        if self.evidence is not None:
            self.evidence.history = self.history
        self.web: EvidenceServer | None = None
        self.sensors: dict[str, dict[str, Any]] = {}
        self.gateways: dict[str, dict[str, Any]] = {}
        self._started = time.time()
        # The pipeline's own thread (batches, commands, operator actions). Not asyncio's
        # default executor: there a batch could wait for a thread behind blocked work, and
        # the watchdog would count that wait as a stuck pipeline (`_watchdog_loop`).
        self._pipeline_thread = ThreadPoolExecutor(1, thread_name_prefix="pipeline")
        # Monotonic time the work now running in the pipeline thread started (None: idle);
        # set in that thread, so waiting for it is never counted.
        self._busy_since: float | None = None
        # Done when the last processed batch's commit has finished (its alerts are out):
        # an operator action's alerts wait for it, so that they follow the batch's.
        self._committed: asyncio.Future[None] | None = None
        # Operator actions being written, whose alerts then go out (`_finish_action`).
        self._finishing_actions: set[asyncio.Task[None]] = set()
        self._kernels: asyncio.Task[None] | None = None
        # The broker session is started only once the database is there: until then the
        # health check says "not started", not "disconnected" (which sent on-call to the
        # broker while the database was down).
        self._source_started = False
        self.metrics = StreamMetrics(self.status)
        self.ops: OpsServer | None = None
        if metrics is not None:
            self.ops = OpsServer(*parse_listen(metrics), health=self._readiness,
                                 metrics=self.metrics.exposition)

    # --- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        webhook_task = asyncio.create_task(self.webhooks.run(), name="webhooks")
        status_task = asyncio.create_task(self._status_loop(), name="status")
        watchdog_task = asyncio.create_task(self._watchdog_loop(), name="watchdog")
        try:
            if self.ops is not None:
                await _listening(self.ops.start(), "--metrics", self.ops.host, self.ops.port)
            await self._start_web()
            # Kernels load (or compile, on a first run) while the database and broker
            # connections come up; the first batch waits for them.
            self._kernels = asyncio.create_task(self._warm_up(), name="warm-up")
            # Started: the rest is waiting for services, which systemd must not time out.
            sdnotify.notify("READY=1\nSTATUS=started, connecting to the database and broker")
            await self.writer.ensure_database(stop)
            await self._ensure_retention()
            await self._write_iso_boundaries()
            await self._finish_held()
            self._source_started = True
            await self.source.run(stop, self._handle)
        finally:
            stop.set()  # left on an error too: writes still retrying give up, not hang
            # Operator actions still finishing go out before the webhooks close (a commit
            # the source dropped, stopping on an error, must not hold them forever).
            if self._committed is not None and not self._committed.done():
                self._committed.set_result(None)
            await asyncio.gather(*self._finishing_actions)
            await self.publisher.flush()
            sdnotify.notify("STOPPING=1\nSTATUS=stopping")
            watchdog_task.cancel()
            if self.web is not None:
                await self.web.close()
            if self.ops is not None:
                await self.ops.close()
            await self.webhooks.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(webhook_task, timeout=30)
            status_task.cancel()
            try:
                await status_task
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug in it: still save and stop as usual
                log.exception(kv("status_loop_failed"))
            # Online models persist at shutdown too (the periodic save runs after batches).
            await asyncio.to_thread(self._save_online)
            self._write_status()
            self._pipeline_thread.shutdown(wait=False)  # idle now: its thread ends
            self.writer.close_threads()
            log.info(kv("stream_stopped", **{k: v for k, v in self.counters.as_dict().items()
                                             if not isinstance(v, dict)}))

    async def _finish_held(self) -> None:
        """Write the `alerts` rows of the alerts the last run made but did not finish (it
        stopped or died before their batch was written), and send those not yet sent:
        their windows come back as replays, which fire nothing. Receivers de-duplicate one
        sent just before a crash."""
        held = self.pipeline.alerts.held
        if not held:
            return
        if not await self.writer.write([alert_point(h.alert, h.t_ns) for h in held],
                                       self._stop, 0):
            return  # stopping: still held, for the next start
        unsent = [{**h.alert, "sent_at": time.time()} for h in held if not h.hooked]
        log.info(kv("held_alerts_finished", written=len(held), sent=len(unsent)))
        self.publisher.send_alerts(unsent)
        await self._sent([h.alert for h in held])

    async def _warm_up(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.pipeline.warm_up)
        log.info(kv("kernels_ready", seconds=round(time.monotonic() - started, 2)))

    @property
    def connected(self) -> bool:
        return self.source.connected

    # --- one batch -------------------------------------------------------------------

    async def _handle(self, batch: list[Delivery]) -> Commit | None:
        """Admit and process `batch`; return what finishes it (`_commit`: write, then
        acknowledge, publish, keep history), which the source runs after the previous
        batch's and may overlap with processing the next (stream/mqtt_source.py)."""
        stage = self.metrics.stage_seconds
        with stage.labels("admit").time():
            accepted, extra_points, commands = self._sort(batch)
        if not accepted and not extra_points and not commands:
            return None
        if self._kernels is not None:
            await self._kernels
        async with self._state_lock:
            with stage.labels("process").time():
                output = await self._in_pipeline(self._process_in_order, accepted, commands)
            # Under the lock, not in the commit: the models must not be saved while the
            # next batch changes them in the worker thread. Outside the stage timer and the
            # watchdog's busy window: a save is not pipeline time.
            if time.monotonic() - self._online_saved >= self.config.stream.online_save_s:
                await asyncio.to_thread(self._save_online)
            committed = self._committed = asyncio.get_running_loop().create_future()
        return functools.partial(self._commit, accepted, commands, output, extra_points,
                                 committed)

    async def _in_pipeline(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(*args)` in the pipeline's thread; the watchdog's busy clock runs only
        while it does."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pipeline_thread,
                                          functools.partial(self._busy, fn, *args))

    def _busy(self, fn: Callable[..., _T], *args: Any) -> _T:
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._busy_since = None

    def _process_in_order(self, accepted: list[Incoming],
                          commands: list[tuple[int, Delivery]]) -> BatchOutput:
        """The batch's windows and commands in the order they arrived: a window that came
        after a rebaseline is learned into the new baseline, not the old one wiped by it;
        one after a false alarm is scored by the model that learned it. `commands` holds
        each command with the number of windows accepted before it."""
        if not commands:  # the common batch: one pipeline call, as before
            return self._process(accepted)
        output = BatchOutput([], [], [])
        start = 0
        for at, run in itertools.groupby(commands, key=operator.itemgetter(0)):
            if at > start:
                output.add(self._process(accepted[start:at]))
                start = at
            output.add(self._commands([message for _, message in run]))
        if start < len(accepted):
            output.add(self._process(accepted[start:]))
        return output

    async def _commit(self, accepted: list[Incoming], commands: list[tuple[int, Delivery]],
                      output: BatchOutput, extra_points: list[Point],
                      committed: asyncio.Future[None]) -> None:
        """Write a processed batch; once written, acknowledge it, publish and keep history."""
        try:
            await self._write_and_publish(accepted, commands, output, extra_points)
        finally:
            if not committed.done():
                committed.set_result(None)

    async def _write_and_publish(self, accepted: list[Incoming],
                                 commands: list[tuple[int, Delivery]],
                                 output: BatchOutput, extra_points: list[Point]) -> None:
        stage = self.metrics.stage_seconds
        with stage.labels("write").time():
            if not await self.writer.write(output.points + extra_points, self._stop,
                                           len(output.results) + output.replayed):
                # Stopping: nothing acknowledged, the broker keeps the windows (they come
                # back as replays, which fire nothing). On-call hears of the alerts now;
                # their rows wait with the alert state for the next start.
                self.publisher.send_alerts(output.alerts)
                self.pipeline.alerts.hooked(output.alerts)
                return
        now = time.time()
        for item in accepted:
            self.metrics.lag_seconds.observe(max(0.0, now - item.window.t0_ns / 1e9))
            for message in self.admission.written(item):
                self.source.ack(message)
        for _, message in commands:
            self.source.ack(message)
        with stage.labels("publish").time():
            latest = latest_diagnoses(output)
            self._summarise(latest)
            await self.publisher.publish(latest, output.alerts)
            await self._sent(output.alerts)
            if self._stop.is_set():  # the source closes after this batch: out before that
                await self.publisher.flush()
            if self.evidence is not None:
                self.evidence.observe(output, {s: m for s, (_, m, _) in latest.items()})
        with stage.labels("history").time():
            await asyncio.to_thread(self._keep_history, output)

    def _sort(self, batch: list[Delivery]
              ) -> tuple[list[Incoming], list[Point], list[tuple[int, Delivery]]]:
        """Split a batch into windows to process, gateway-status points and operator
        commands, each command with the number of windows accepted before it (they are
        applied in arrival order, `_process_in_order`); tacho and status messages, bad
        windows and duplicates are acknowledged here (nothing of theirs waits for the
        database)."""
        accepted: list[Incoming] = []
        extra_points: list[Point] = []
        commands: list[tuple[int, Delivery]] = []
        for message in batch:
            try:
                r = route(message.topic)
                if r.route is Route.COMMAND:
                    if r.site == self.config.site.id:
                        # Acknowledged once its action is written.
                        commands.append((len(accepted), message))
                        continue
                    self.counters.refuse("command")
                    log.warning(kv("window_rejected", reason="command", topic=message.topic,
                                   detail=f"a command of site {r.site!r}, this is "
                                          f"{self.config.site.id!r}"))
                elif r.route is Route.TACHO:
                    self._tacho(r.site, r.gateway, r.sensor, message)
                elif r.route is Route.STATUS:
                    point = self._gateway_status(r.site, r.gateway, message.payload)
                    if point is not None:
                        extra_points.append(point)
                elif r.route is Route.WINDOW:
                    item = self.admission.admit(r.site, r.gateway, r.sensor, message.topic,
                                                message.payload, message, message.qos)
                    if isinstance(item, Incoming):
                        accepted.append(item)
                        continue
                    if item is Skip.HOLD:
                        continue
                else:
                    self.counters.received += 1
                    self.admission.refuse_topic(message.topic, message.payload)
            except Exception as e:  # a check that missed a case: never a crash loop
                self._unhandled(message, e)
            self.source.ack(message)
        return accepted, extra_points, commands

    def _unhandled(self, message: Delivery, e: Exception) -> None:
        """A message whose checks raised instead of refusing it: refused like a bad window
        (counted, logged, dead-lettered). Before, the stream exited, and the broker gave
        the message again after every restart."""
        log.exception(kv("message_failed", topic=message.topic))
        self.admission.refuse(Refusal("unhandled", repr(e)[:300]), message.topic,
                              message.payload if isinstance(message.payload, bytes) else None)

    def _tacho(self, site: str, gateway: str, sensor: str, message: Delivery) -> None:
        refusal = self.admission.binding(site, gateway, sensor)
        try:
            if refusal is not None:
                raise ValueError(f"{refusal.reason}: {refusal.detail}")
            if self.pipeline.update_tacho(sensor, message.payload) is None:  # type: ignore[arg-type]
                raise ValueError(f"sensor {sensor!r} is no asset's tacho_sensor")
        except ValueError as e:
            self.counters.refuse("tacho")
            log.warning(kv("window_rejected", reason="tacho", topic=message.topic,
                           detail=str(e)))

    def see(self, topic: str, payload: bytes) -> None:
        """A message that another worker handles and this one must see too (cluster mode,
        stream/cluster/site_view.py): a tacho reading or temperature window becomes its
        asset's latest reading, a status its gateway's state. Nothing is written or
        counted here; a bad one is the handling worker's to count and log."""
        r = route(topic)
        if r.route is Route.STATUS and self.admission.gateway_binding(r.site, r.gateway) is None:
            status = parse_status(payload, r.site, r.gateway)
            if not isinstance(status, str):
                self.gateways[r.gateway] = status.as_dict()
        elif r.route is Route.TACHO and self.admission.binding(r.site, r.gateway,
                                                               r.sensor) is None:
            with contextlib.suppress(ValueError):
                self.pipeline.update_tacho(r.sensor, payload)
        elif r.route is Route.WINDOW:
            w = self.admission.check(r.site, r.gateway, r.sensor, payload)
            if isinstance(w, Window) and w.kind == Kind.TEMPERATURE:
                self.pipeline.take_temperature(Incoming(r.site, r.gateway, r.sensor, w))

    def _commands(self, messages: list[Delivery]) -> BatchOutput:
        """Apply operator commands (JSON) in arrival order; bad ones are counted and logged."""
        out = BatchOutput([], [], [])
        for message in messages:
            try:
                command = json.loads(message.payload)  # type: ignore[arg-type]
            except (ValueError, TypeError, RecursionError) as e:  # "[[[[…": nested too deep
                self.counters.refuse("command")
                log.warning(kv("window_rejected", reason="command", topic=message.topic,
                               detail=f"bad command JSON: {e}"))
                continue
            try:
                done = self.pipeline.apply_command(command)
            except Exception as e:
                self._unhandled(message, e)
                continue
            out.add(done)
        return out

    def _keep_history(self, output: BatchOutput) -> None:
        """The window history (stream/history.py): the window of each alert transition, and
        one per sensor every `history_interval_s`. Never raises (a failure is logged)."""
        interval = self.config.stream.history_interval_s
        alerts = {(a.get("sensor"), a.get("seq")): a for a in output.alerts}
        for r in output.results:
            w, sensor = r.incoming.window, r.incoming.sensor
            if w.kind != Kind.ACCELERATION or r.diagnosis is None or not r.features:
                continue
            alert = alerts.get((sensor, w.seq))
            if alert is not None:
                reason = str(alert.get("status", "transition"))
            elif interval > 0 and self.history.due(sensor, w.t0_ns, interval):
                reason = "interval"
            else:
                continue
            try:
                keep_result(self.history, r, self.pipeline.sensors[sensor][1], reason, alert)
            except Exception:
                self.history.counters.write_errors += 1
                log.exception(kv("history_keep_failed", sensor=sensor, seq=w.seq))

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
        that still fails is counted as rejected (`processing_error`), logged, dead-lettered
        and acknowledged with the rest.
        """
        output = self._process_isolating(batch)
        if output.replayed:
            self.counters.replayed += output.replayed
            log.info(kv("windows_replayed", windows=output.replayed,
                        reason="taken in before a restart, not acknowledged"))
        return output

    def _process_isolating(self, batch: list[Incoming]) -> BatchOutput:
        if not batch:
            return BatchOutput([], [], [])
        try:
            output = self.pipeline.process(batch)
        except Exception:  # before any state advanced (Pipeline._advance keeps its own)
            log.exception(kv("batch_failed", windows=len(batch)))
        else:
            for item, why in output.failed:
                self.admission.refuse_processed(item, why)
            return output
        merged = BatchOutput([], [], [])
        for item in batch:
            try:
                one = self.pipeline.process([item])
            except Exception as e:
                self.admission.refuse_processed(item, f"seq {item.window.seq}: {e!r}")
                continue
            for failed, why in one.failed:
                self.admission.refuse_processed(failed, why)
            merged.add(one)
        return merged

    def _gateway_status(self, site: str, gateway: str, payload: Any) -> Point | None:
        """Validate a gateway's status at the edge (`gateway_status`): only a valid one is
        kept, shown and written; a bad one is counted, logged and dropped."""
        refusal = self.admission.gateway_binding(site, gateway)
        status = (f"{refusal.reason}: {refusal.detail}" if refusal is not None else
                  parse_status(payload if isinstance(payload, bytes | bytearray | str)
                               else b"", site, gateway))
        if isinstance(status, str):
            self.counters.refuse("status")
            log.warning(kv("status_rejected", reason="status",
                           topic=f"{site}/{gateway}/status", detail=status))
            return None
        self.gateways[gateway] = status.as_dict()
        if not status.counters:
            return None  # a last will carries no counters
        return Point("gateway", {"site": site, "gateway": gateway},
                     {k: status.counters[k] for k in GATEWAY_COUNTERS if k in status.counters},
                     time.time_ns())

    async def _ensure_retention(self) -> None:
        """Retention policies and hourly continuous queries from `[influx]` (v1 only);
        a failure is logged and the stream runs on, writing to the database's default
        policy (stream/sinks/retention.py)."""
        cfg = self.config.influx
        if cfg.api != "v1":
            log.info(kv("influx_retention_skipped", api=cfg.api,
                        reason="InfluxDB 2.x/3.x: set the bucket's retention there"))
            return
        set_routes = getattr(self.writer.writer, "set_routes", None)
        if not cfg.manage_retention:
            # The DBA made the policies: write alerts, actions, events and zones to `long`
            # (where the dashboards read them) if it is there.
            try:
                long = await asyncio.to_thread(has_long_policy, cfg)
            except (InfluxQueryError, OSError) as e:
                long, reason = False, str(e)
            else:
                reason = f"no retention policy {LONG_RP!r} on {cfg.db!r}"
            if long and set_routes is not None:
                set_routes(retention_routes())
            elif not long:
                log.warning(kv("influx_long_policy_missing", db=cfg.db, reason=reason,
                               effect="alerts, actions, events, iso20816 go to the default "
                                      "policy; the dashboards read them from long",
                               hint="docs/influxdb-schema.md"))
            return
        try:
            await asyncio.to_thread(apply_retention, cfg)
        except (InfluxQueryError, OSError) as e:
            log.error(kv("influx_retention_failed", db=cfg.db, reason=e,
                         hint="a user with admin rights, or influx.manage_retention = "
                              "false and the policies made by the DBA "
                              "(docs/influxdb-schema.md)"))
            return
        if set_routes is not None:
            set_routes(retention_routes())

    async def _write_iso_boundaries(self) -> None:
        """One `iso20816` point per asset: its zone boundaries (its own levels where its
        config sets them, else the ISO table's), for dashboards' thresholds."""
        now = time.time_ns()
        points = []
        for a in self.config.assets:
            lv = a.levels
            ab, bc, cd = lv.zone_boundaries_mm_s
            points.append(Point("iso20816", {"site": self.config.site.id, "asset": a.id},
                                {"group": a.iso_group, "foundation": a.iso_foundation,
                                 "ab_mm_s": ab, "bc_mm_s": bc, "cd_mm_s": cd,
                                 "ab_source": lv.warning.source,
                                 "bc_source": lv.alert.source,
                                 "cd_source": lv.danger.source}, now))
        await self.writer.write_once(points, "iso_boundaries")

    # --- evidence page and operator actions ------------------------------------------

    async def _start_web(self) -> None:
        """The evidence page: always behind a token (`[stream] http_token_file`, or one
        generated into the state dir on first start), on loopback unless an address for
        every interface is given explicitly (docs/evidence-page.md)."""
        if self.evidence is None or not self.http:
            return
        self.evidence.gateways = self.gateways  # shown live, by reference
        s = self.config.stream
        host, port = parse_listen(self.http)
        if s.http_token_file is not None:
            token = s.http_token_file.read_text(encoding="utf-8").strip()
            if not token:  # the page would run without a token: refuse, as config
                raise ConfigError([f"stream.http_token_file: {s.http_token_file} is empty; "
                                   "put a token in it, or remove the key to have one "
                                   "generated"])
        else:
            # Logged once, on the start that creates it (`evidence_token_created`, with
            # the file's path; the token itself never goes to a log).
            token, _, _ = load_or_create_token(s.state_dir)
        if is_all_interfaces(host):
            log.warning(kv("evidence_page_all_interfaces", host=host, port=port,
                           hint="anyone who can reach this port sees the login page"))
        web = EvidenceServer(self.evidence, host, port, token=token,
                             ack=self.operator_action, public_url=s.public_url,
                             proxies=s.http_proxies)
        await _listening(web.start(), self._http_key, host, port)
        self.web = web  # the status shows its URL from now on
        if self.webhooks.public_url is None:
            self.webhooks.public_url = self.web.url

    async def operator_action(self, sensor: str, by: str, note: str = "",
                              action: str = "ack") -> dict[str, Any]:
        """An operator action from the evidence page (its acknowledge button).

        Goes through the same path as the command topic (`Pipeline.apply_command`), under
        the state lock: the alert state machine takes it and an `actions` point records
        who and when. A cluster worker routes it to the sensor's partition instead, whose
        owner (maybe another worker) applies it as a command from the command topic.
        """
        command = {"action": action, "sensor": sensor, "by": by, "note": note,
                   "t": time.time()}
        if self._nats is not None:
            routed = await self._nats.route_command(command)
            record = {**command, "result": "sent to the sensor's worker" if routed
                      else "not sent: the cluster is unreachable"}
            if self.evidence is not None:
                self.evidence.record_action(record)
            return record
        async with self._state_lock:
            done = await self._in_pipeline(self.pipeline.apply_command, command)
            committed = self._committed
        record = {**command, "result": done.points[0].fields.get("result", "")
                  if done.points else "rejected"}
        if self.evidence is not None:
            self.evidence.record_action(record)
        # In the background (the page does not wait for a slow or down database).
        task = asyncio.create_task(self._finish_action(committed, done))
        self._finishing_actions.add(task)
        task.add_done_callback(self._finishing_actions.discard)
        return record

    async def _sent(self, alerts: list[dict[str, Any]]) -> None:
        """`alerts` are written and with the webhooks: no longer held, and saved so at once,
        or a kill -9 before the next save would send them again at the start."""
        if not alerts:
            return
        self.pipeline.alerts.sent(alerts)
        await self._save_alert_state()

    async def _save_alert_state(self) -> None:
        async with self._state_lock:  # not while a batch changes the state in its thread
            await asyncio.to_thread(self.pipeline.alerts.save)

    async def _finish_action(self, committed: asyncio.Future[None] | None,
                             done: BatchOutput) -> None:
        """Write an operator action's points (retried and spooled like a batch's), then
        send its alerts: after the batch processed before it is written (`committed`,
        which always resolves: at the commit's end, or in `run`'s finally), or on-call
        could see, say, an alert resolved by a rebaseline before it fired."""
        if committed is not None:
            await committed
        written = not done.points or await self.writer.write(done.points, self._stop, 0)
        self.publisher.send_alerts(done.alerts)
        if written:
            await self._sent(done.alerts)
        else:
            # Stopping before the database took them: the alarm is cleared all the same,
            # so on-call hears of it now; the alert rows wait for the next start (the
            # `actions` row is lost: logged).
            self.pipeline.alerts.hooked(done.alerts)
            log.warning(kv("operator_action_not_written", points=len(done.points)))

    # --- systemd: watchdog and reload (docs/operations.md) ------------------------------

    async def _watchdog_loop(self) -> None:
        """`WATCHDOG=1` at half the watchdog interval, from the event loop itself (a blocked
        loop stops it) and only while nothing has been running in the pipeline thread
        longer than the interval (`_busy`). Waiting does not count: for the state lock,
        the thread, or the database (whose writes have their own threads), which may be
        down for hours without the stream being stuck."""
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            busy = self._busy_since
            if busy is None or time.monotonic() - busy < interval:
                c = self.counters
                sdnotify.notify(f"WATCHDOG=1\nSTATUS=broker "
                                f"{'connected' if self.connected else 'disconnected'}, "
                                f"{c.written} windows written, {c.dead_lettered} refused")
            else:
                log.error(kv("watchdog_withheld", batch_s=round(time.monotonic() - busy, 1)))
            await asyncio.sleep(interval / 2)

    def reload(self) -> None:
        """SIGHUP: re-read the site file. Broker settings and credentials apply at once (the
        session reconnects; unacknowledged windows are redelivered and de-duplicated);
        other changed sections are logged as needing a restart. A file that does not load
        is logged and the running config kept: a reload never stops the stream."""
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={sdnotify.monotonic_usec()}")
        path = self.config.source
        try:
            if path is None:
                raise ConfigError(["the config was not loaded from a file"])
            new = load(path, drivers=False)  # as at start: drivers are the gateways'
        except (ConfigError, OSError) as e:
            log.error(kv("config_reload_failed", path=path, reason=e))
            sdnotify.notify(f"READY=1\nSTATUS=reload failed, old config kept: {e}"[:900])
            return
        try:
            self.source.reconfigure(new.broker)
        except (ConfigError, OSError, ssl.SSLError) as e:  # a password or TLS file
            log.error(kv("config_reload_failed", path=path, reason=e))
            sdnotify.notify(f"READY=1\nSTATUS=reload failed, old config kept: {e}"[:900])
            return
        restart = [f.name for f in dataclasses.fields(new)
                   if f.name not in ("broker", "source")
                   and getattr(new, f.name) != getattr(self.config, f.name)]
        self.config = dataclasses.replace(self.config, broker=new.broker)
        if restart:
            log.warning(kv("config_reload_needs_restart", sections=",".join(restart)))
        log.info(kv("config_reloaded", path=path, applied="broker,credentials"))
        sdnotify.notify("READY=1\nSTATUS=config reloaded"
                        + (f"; restart to apply {', '.join(restart)}" if restart else ""))

    # --- status ----------------------------------------------------------------------

    def _summarise(self, latest: dict[str, tuple[Any, dict[str, Any], int]]) -> None:
        """Each sensor's line in the status: its latest diagnosis and alert state."""
        for sensor, (r, message, diagnosed) in latest.items():
            # None until the sensor's first window that is not a sensor fault.
            alert_state = self.pipeline.alerts.sensors.get(sensor)
            self.sensors[sensor] = {
                "gateway": r.incoming.gateway, "asset": r.asset,
                "diagnosis": message["diagnosis"], "confidence": message["confidence"],
                "state": message["state"], "iso_zone": message["iso_zone"],
                "velocity_rms_mm_s": message["velocity_rms_mm_s"], "seq": message["seq"],
                "alerted": alert_state.alerted if alert_state else False,
                "online": self.pipeline.online.status(sensor),
                "acknowledged_by": (alert_state.acknowledged_by or None) if alert_state
                else None,
                "windows": self.sensors.get(sensor, {}).get("windows", 0) + diagnosed,
            }

    def health(self) -> Health:
        return assess(broker_connected=self.connected,
                      db_failing_since=self.writer.failing_since, now=time.monotonic(),
                      spool_bytes=_size(self.writer.spool),
                      deadletter_bytes=_size(self.dead_letters.path),
                      webhooks_pending=self.webhooks.counters.pending,
                      alert_state_unsaved_since=self.pipeline.alerts.unsaved_since,
                      broker_started=self._source_started)

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        h = self.health()
        return h.ready, h.as_dict()

    def status(self) -> dict[str, Any]:
        w = self.webhooks.counters
        return {
            "t": time.time(), "started_at": self._started, "mqtt_connected": self.connected,
            "counters": {
                **self.counters.as_dict(),
                "webhooks_delivered": w.delivered, "webhooks_failed": w.failed,
                "webhooks_pending": w.pending,
                "alert_state_save_failures": self.pipeline.alerts.save_failures,
            },
            "http_url": self.web.url if self.web is not None else None,
            "http": self.web.counters() if self.web is not None else None,
            "metrics_url": self.ops.url if self.ops is not None else None,
            "health": self.health().as_dict(), "last_write_t": self.writer.last_written_t,
            "sensors": self.sensors,
            "gateways": self.gateways,
            "online": dict(self.pipeline.online.counters),
            "history": self.history.status(),
            "cluster": self.source.status() if isinstance(self.source, _HasStatus) else None,
        }

    def _write_status(self) -> None:
        """Write the status file; a disk that refuses it is logged once per spell (the
        status loop, and what it also saves, must go on)."""
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1, default=str), encoding="utf-8")
            os.replace(tmp, self.status_file)
        except OSError as e:
            if not self._status_unwritable:
                log.error(kv("status_file_unwritable", path=self.status_file, reason=e))
            self._status_unwritable = True
            return
        if self._status_unwritable:
            log.info(kv("status_file_written_again", path=self.status_file))
        self._status_unwritable = False

    async def _status_loop(self) -> None:
        while True:
            self._write_status()
            if self.pipeline.alerts.save_due():  # the last batch before a quiet spell
                await self._save_alert_state()
            await asyncio.sleep(self.status_interval_s)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
