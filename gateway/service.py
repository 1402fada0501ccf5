"""The gateway runtime: capture threads → outbox → MQTT publisher, until told to stop.

`run` is what `ballpass gateway` calls (the CLI owns signals and turns them into the
`stop` event). Several gateways may run in one process (`ballpass simulate fleet`), so
nothing here touches signals or global state.

This module and everything it imports must stay light: never numba, scipy, river or
influxdb-client (a test checks `sys.modules` in a fresh interpreter).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ballpass.config import Config
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.schedule import DriverFactory, SensorCapture, default_driver_factory
from ballpass.gateway.status import Status

log = logging.getLogger(__name__)


def outbox_path_for(config: Config, gateway_id: str, override: Path | None = None) -> Path:
    """`override`, else `[gateway.outbox] path`, else ``./outbox-{gateway_id}.sqlite``."""
    if override is not None:
        return Path(override)
    configured = config.gateway(gateway_id).outbox.path
    return configured if configured is not None else Path(f"outbox-{gateway_id}.sqlite")


def run(config: Config, gateway_id: str, stop: threading.Event, *,
        outbox_path: Path | None = None, status_interval_s: float = 5.0,
        drain_timeout_s: float = 5.0, driver_factory: DriverFactory | None = None,
        ready: threading.Event | None = None) -> int:
    """Run one gateway until `stop` is set; returns the exit code (0).

    On stop: capture stops, the outbox is flushed for up to `drain_timeout_s` seconds,
    a final retained status (state offline, final counters) is published, the MQTT
    session is closed cleanly and the outbox file is closed. Windows not flushed stay in
    the outbox for the next start. `driver_factory` replaces the registry lookup
    (tests); `ready` is set once capture and the publisher have started.
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
        publisher = Publisher(config.broker, site, gateway.id, box, status,
                              username=gateway.username or gateway.id,
                              password=gateway.password(), settings=settings)
        capture_stop = threading.Event()
        captures = [
            SensorCapture(s, config.asset(s.asset), site, gateway.id, box, status,
                          capture_stop, driver_factory=driver_factory or default_driver_factory)
            for s in gateway.sensors]
        log.info("event=gateway_starting site=%s gateway=%s sensors=%d outbox=%s queued=%d "
                 "broker=%s:%d", site, gateway.id, len(captures), path, box.queued,
                 config.broker.host, config.broker.port)
        publisher.start()
        for c in captures:
            c.start()
        if ready is not None:
            ready.set()
        stop.wait()
        t0 = time.monotonic()
        capture_stop.set()
        for c in captures:
            # A driver stuck in read() must not hold the shutdown hostage (threads are
            # daemons); its late put, if any, fails harmlessly once the outbox is closed.
            c.join(timeout=max(5.0, 2 * c.sensor.interval_s))
            if c.alive:
                log.warning("event=capture_stuck sensor=%s", c.sensor.id)
        publisher.stop(drain_timeout_s=drain_timeout_s)
        counters = box.counters()
        log.info("event=gateway_stopped site=%s gateway=%s stop_s=%.2f %s", site, gateway.id,
                 time.monotonic() - t0, " ".join(f"{k}={v}" for k, v in counters.items()))
    finally:
        box.close()
    return 0
