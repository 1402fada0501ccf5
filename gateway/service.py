"""The gateway runtime: capture threads → outbox → MQTT publisher, until told to stop.

`run` is what `ballpass gateway` calls (the CLI owns signals and turns them into the
`stop` event). Several gateways may run in one process (`ballpass simulate fleet`), so
nothing here touches signals or global state.

This module and everything it imports must stay light: never numba, scipy, river or
influxdb-client (a test checks `sys.modules` in a fresh interpreter).

While running, `run` also applies remote configs from the retained config topic
(`ballpass.gateway.remote`; the result is on the status topic as ``config``) and watches
the wall clock against the monotonic one (`ClockWatch`): a jump of more than
`CLOCK_JUMP_S` is logged as ``event=clock_jump``, shown as the status problem ``clock``
for `CLOCK_PROBLEM_S`, and the outbox's queued rows are re-based so their age stays right.
Capture and publishing go on: the schedule runs on the monotonic clock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ballpass.config import Config
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.remote import ConfigRejected, parse_remote
from ballpass.gateway.schedule import DriverFactory, SensorCapture, default_driver_factory
from ballpass.gateway.status import Status
from ballpass.log import kv

log = logging.getLogger(__name__)

CLOCK_JUMP_S = 2.0
"""A wall-clock step larger than this (s) against the monotonic clock is a jump."""
CLOCK_PROBLEM_S = 600.0
"""How long (s) a clock jump stays on the status topic as a problem."""


class ClockWatch:
    """Compares wall-clock and monotonic progress between `check` calls.

    `check` returns the jump in ns (wall minus monotonic progress) when it exceeds
    `threshold_s`, else None. The clocks are injectable for tests.
    """

    def __init__(self, threshold_s: float = CLOCK_JUMP_S, *,
                 wall_ns: Callable[[], int] = time.time_ns,
                 mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.threshold_ns = int(threshold_s * 1e9)
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self._wall, self._mono = wall_ns(), mono_ns()

    def check(self) -> int | None:
        wall, mono = self.wall_ns(), self.mono_ns()
        jump = (wall - self._wall) - (mono - self._mono)
        self._wall, self._mono = wall, mono
        return jump if abs(jump) > self.threshold_ns else None


def outbox_path_for(config: Config, gateway_id: str, override: Path | None = None) -> Path:
    """`override`, else `[gateway.outbox] path`, else ``./outbox-{gateway_id}.sqlite``."""
    if override is not None:
        return Path(override)
    configured = config.gateway(gateway_id).outbox.path
    return configured if configured is not None else Path(f"outbox-{gateway_id}.sqlite")


def _clock_jumped(jump_ns: int, gateway_id: str, box: Outbox, status: Status) -> None:
    """Re-base the queued rows' ages by the jump and show it as the `clock` problem."""
    try:
        shifted = box.rebase_created(jump_ns)
    except sqlite3.Error as e:  # disk full: the age bound may drop early
        shifted = -1
        log.error(kv("outbox_rebase_failed", gateway=gateway_id, error=e))
    status.problem("clock", f"wall clock jumped {jump_ns / 1e9:+.1f} s at "
                   f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
                   "window times around it may be off")
    log.warning(kv("clock_jump", gateway=gateway_id, jump_s=round(jump_ns / 1e9, 3),
                   rebased_rows=shifted))


def run(config: Config, gateway_id: str, stop: threading.Event, *,
        outbox_path: Path | None = None, status_interval_s: float = 5.0,
        drain_timeout_s: float = 5.0, driver_factory: DriverFactory | None = None,
        ready: threading.Event | None = None, clock: ClockWatch | None = None) -> int:
    """Run one gateway until `stop` is set; returns the exit code (0).

    On stop: capture stops, the outbox is flushed for up to `drain_timeout_s` seconds,
    a final retained status (state offline, final counters) is published, the MQTT
    session is closed cleanly and the outbox file is closed. Windows not flushed stay in
    the outbox for the next start. `driver_factory` replaces the registry lookup
    (tests); `ready` is set once capture and the publisher have started; `clock` replaces
    the wall-clock watch (tests).
    """
    gateway = config.gateway(gateway_id)
    site = config.site.id
    path = outbox_path_for(config, gateway_id, outbox_path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    box = Outbox(path, max_bytes=int(gateway.outbox.max_mb * 1024 * 1024),
                 max_age_s=gateway.outbox.max_age_h * 3600.0)
    try:
        status = Status(site, gateway.id, [s.id for s in gateway.sensors], box.counters)
        # A window older than two capture periods when it leaves is a replay, not live data.
        slowest = max(s.interval_s for s in gateway.sensors)
        settings = PublisherSettings(flush_rate_per_s=gateway.outbox.flush_rate_per_s,
                                     historical_after_s=max(2.0 * slowest, 1.0),
                                     status_interval_s=status_interval_s)
        capture_stop = threading.Event()
        captures = [
            SensorCapture(s, config.asset(s.asset), site, gateway.id, box, status,
                          capture_stop, driver_factory=driver_factory or default_driver_factory)
            for s in gateway.sensors]
        applied: bytes | None = None

        def on_config(payload: bytes) -> None:
            nonlocal applied
            if payload == applied:
                return  # the retained message again, after a reconnect
            try:
                remote = parse_remote(payload, gateway)
            except ConfigRejected as e:
                status.config_result("rejected", str(e))
                log.warning(kv("config_rejected", gateway=gateway.id, reason=e))
                return
            applied = payload
            for c in captures:
                new, enabled = remote.sensors[c.sensor.id]
                if new != c.sensor or enabled != c.enabled:
                    c.reconfigure(new, enabled)
                    # Shown at once; the capture thread applies it at its next turn.
                    if enabled:
                        status.sensor_ok(c.sensor.id)
                    else:
                        status.sensor_disabled(c.sensor.id)
            if remote.flush_rate_per_s != publisher.settings.flush_rate_per_s:
                publisher.set_flush_rate(remote.flush_rate_per_s)
            status.config_result("applied")
            log.info(kv("config_applied", gateway=gateway.id,
                        flush_rate_per_s=remote.flush_rate_per_s,
                        disabled=",".join(k for k, (_, on) in remote.sensors.items()
                                          if not on) or "-"))

        publisher = Publisher(config.broker, site, gateway.id, box, status,
                              username=gateway.username or gateway.id,
                              password=gateway.password(), settings=settings,
                              on_config=on_config)
        log.info(kv("gateway_starting", site=site, gateway=gateway.id, sensors=len(captures),
                    outbox=path, queued=box.queued,
                    broker=f"{config.broker.host}:{config.broker.port}"))
        publisher.start()
        for c in captures:
            c.start()
        if ready is not None:
            ready.set()
        watch = clock or ClockWatch()
        jumped_at: float | None = None
        while not stop.wait(0.5):
            jump = watch.check()
            if jump is not None:
                jumped_at = time.monotonic()
                _clock_jumped(jump, gateway.id, box, status)
                publisher.request_status()
            elif jumped_at is not None and time.monotonic() - jumped_at > CLOCK_PROBLEM_S:
                jumped_at = None
                status.problem("clock", None)
        t0 = time.monotonic()
        capture_stop.set()
        for c in captures:
            # A driver stuck in read() must not hold the shutdown hostage (threads are
            # daemons); its late put, if any, fails harmlessly once the outbox is closed.
            c.join(timeout=max(5.0, 2 * c.sensor.interval_s))
            if c.alive:
                log.warning(kv("capture_stuck", sensor=c.sensor.id))
        publisher.stop(drain_timeout_s=drain_timeout_s)
        counters = box.counters()
        log.info(kv("gateway_stopped", site=site, gateway=gateway.id,
                    stop_s=round(time.monotonic() - t0, 2), **counters))
    finally:
        box.close()
    return 0
