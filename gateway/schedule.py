"""Capture schedule: one thread per sensor reads a window every `interval_s` into the outbox.

Slot k starts at ``t_start + k × interval_s`` on the monotonic clock, so the schedule does
not drift with read or encode time. A slot missed because a read ran long is skipped
(logged as ``event=capture_overrun``), never caught up in a burst.

A driver fault (`SensorFault` or any other exception from open/read, or samples that are
not finite) marks the sensor ``fault`` with a reason on the status topic, logs
``event=sensor_fault``, closes the driver and re-opens it with capped exponential
backoff; the other sensors' threads are not affected. A source that has ended for good
(`SourceFinished`: a non-looping recording at its end) is reported once (``fault`` with
the reason ``finished: ...``, ``event=sensor_finished``) and not re-opened until the
sensor is reconfigured: a re-open would start it over.

A window that cannot be stored (the outbox's disk is full, or another SQLite error) is
NOT a sensor fault: it is counted as dropped (`Outbox.note_lost`), logged as
``event=outbox_write_failed`` and shown as the gateway problem ``outbox`` on the status
topic, and capture goes on (the problem clears at the next stored window).

`reconfigure` swaps the sensor's settings (interval, window, enabled) while running: the
thread closes its driver, opens a new one with the new settings and restarts its grid.

Progress. `last_progress` is the monotonic time of the thread's last sign of life (a loop
turn, a wake from a wait, a driver call that returned). A thread hung in a driver call
(a kernel read that never returns) stops moving it; the service marks such a sensor
``fault`` once it is `stuck_after_s` overdue (docs/gateway.md, "Stuck capture").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable

import numpy as np

from ballpass import backoff, topics, wire
from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers import Driver, SensorFault, SourceFinished
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.outbox import DiskFull, Outbox
from ballpass.gateway.status import Status
from ballpass.log import kv

log = logging.getLogger(__name__)

DriverFactory = Callable[[SensorConfig, AssetConfig], Driver]

STUCK_MARGIN_S = 30.0
"""Slack (s) on top of two capture periods before a capture thread that shows no progress
counts as stuck: a driver call may legitimately block for about two window spans (the IIO
driver's own read timeout is 2 × window + 1 s), and a busy board delays threads."""



def default_driver_factory(sensor: SensorConfig, asset: AssetConfig) -> Driver:
    """The driver registered under `sensor.driver` (entry point group ballpass.drivers)."""
    return load_driver(sensor.driver)(sensor, asset)


class SensorCapture:
    """The capture loop of one sensor, run on its own thread by `start()`.

    `backoff_initial_s` / `backoff_max_s`: delay before re-opening a faulty driver,
    doubled per consecutive fault up to the cap, reset by a good read. `stuck_margin_s`:
    the slack of `stuck_after_s`, s.
    """

    def __init__(self, sensor: SensorConfig, asset: AssetConfig, site: str, gateway: str,
                 outbox: Outbox, status: Status, stop: threading.Event, *,
                 driver_factory: DriverFactory = default_driver_factory,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 stuck_margin_s: float = STUCK_MARGIN_S) -> None:
        self.sensor = sensor
        self.asset = asset
        self.outbox = outbox
        self.status = status
        self.stop_event = stop
        self.driver_factory = driver_factory
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stuck_margin_s = stuck_margin_s
        # Monotonic s; written by the capture thread only, read by the service's main loop
        # (a float assignment is atomic under the GIL).
        self.last_progress = time.monotonic()
        self.topic = topics.window(site, gateway, sensor.id)
        self.kind = wire.SENSOR_KINDS[sensor.kind]
        self.captured = 0
        self.faults = 0
        self.enabled = True
        self.finished = False  # the source ended for good (SourceFinished)
        self._driver: Driver | None = None
        self._thread: threading.Thread | None = None
        self._pending: tuple[SensorConfig, bool] | None = None
        self._requested: tuple[SensorConfig, bool] = (sensor, True)
        self._pending_lock = threading.Lock()

    def reconfigure(self, sensor: SensorConfig, enabled: bool = True) -> None:
        """Apply new settings for this sensor (same id) from the capture thread, soon."""
        if sensor.id != self.sensor.id:
            raise ValueError(f"reconfigure: sensor id {sensor.id!r} != {self.sensor.id!r}")
        with self._pending_lock:
            self._pending = self._requested = (sensor, enabled)

    @property
    def requested(self) -> tuple[SensorConfig, bool]:
        """The (settings, enabled) last asked for: what the thread runs once it has applied
        them. A change is judged against this, not `sensor`/`enabled`: those lag while
        the thread is busy (a long read), and a change and its revert in that time would
        otherwise look like no change, leaving the first one to be applied."""
        with self._pending_lock:
            return self._requested

    @property
    def stuck_after_s(self) -> float:
        """How long (s) the thread may show no progress before it counts as stuck:
        2 × max(interval, window span) + `stuck_margin_s`, of the settings last asked for
        (a longer window just requested must not make the current read look stuck early,
        so the larger of the running and the requested settings)."""
        spans = [max(s.interval_s, s.window_samples / s.fs_hz)
                 for s in (self.sensor, self.requested[0])]
        return 2.0 * max(spans) + self.stuck_margin_s

    def overdue_s(self, now: float) -> float:
        """Seconds since the thread's last progress, at monotonic time `now`."""
        return now - self.last_progress

    def _apply_pending(self) -> bool:
        """Swap in pending settings; True when something was applied."""
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        sensor, enabled = pending
        changed = {f.name: getattr(sensor, f.name) for f in dataclasses.fields(sensor)
                   if getattr(sensor, f.name) != getattr(self.sensor, f.name)}
        self._close()
        self.sensor, self.enabled = sensor, enabled
        self.finished = False  # new settings: start the source again
        if enabled:
            self.status.sensor_ok(sensor.id)
        else:
            self.status.sensor_disabled(sensor.id)
        log.info(kv("sensor_reconfigured", sensor=sensor.id, enabled=enabled, **changed))
        return True

    def _sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when stopped. Wakes early for new settings."""
        deadline = time.monotonic() + seconds
        while True:
            self.last_progress = now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return self.stop_event.is_set()
            if self.stop_event.wait(min(left, 0.1)):
                return True
            if self._pending is not None:
                return False

    def start(self) -> None:
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.sensor.id}",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- thread --------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.sensor.interval_s
        t_start = time.monotonic()
        slot = 0
        consecutive_faults = 0
        while not self.stop_event.is_set():
            self.last_progress = time.monotonic()
            if self._apply_pending():
                interval = self.sensor.interval_s
                consecutive_faults = 0
            if not self.enabled or self.finished:
                self._sleep(3600.0)  # until stopped or reconfigured
                continue
            if self._driver is None:
                try:
                    self._open()
                except Exception as e:  # any driver error is a sensor fault, not a crash
                    consecutive_faults += 1
                    self._fault(e, consecutive_faults)
                    continue
                # Re-opened: restart the grid now rather than rushing through missed slots.
                t_start, slot = time.monotonic(), 0
            due = t_start + slot * interval
            if self._sleep(max(0.0, due - time.monotonic())):
                break
            if self._pending is not None:
                continue
            try:
                self._capture_one()
                self.last_progress = time.monotonic()
            except SourceFinished as e:
                self._finish(e)
                continue
            except Exception as e:
                consecutive_faults += 1
                self._fault(e, consecutive_faults)
                continue
            consecutive_faults = 0
            slot += 1
            # Slots whose whole interval has already passed are missed. A read that ends
            # just after the next slot's start (a blocking device read of a full window in
            # continuous capture) is on time, not an overrun.
            behind = math.floor((time.monotonic() - t_start) / interval) - slot
            if behind > 0:
                log.warning(kv("capture_overrun", sensor=self.sensor.id, skipped=behind,
                               interval_s=interval))
                slot += behind
        self._close()

    def _open(self) -> None:
        driver = self.driver_factory(self.sensor, self.asset)
        self._driver = driver
        driver.open()

    def _close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is None:
            return
        try:
            driver.close()
        except Exception as e:  # closing a broken device may fail too; keep going
            log.warning(kv("driver_close_failed", sensor=self.sensor.id, error=e))

    def _capture_one(self) -> None:
        assert self._driver is not None
        capture = self._driver.read(self.sensor.window_samples)
        samples = np.asarray(capture.samples, dtype=np.float64)
        if samples.ndim == 1:
            samples = samples[np.newaxis, :]
        if samples.ndim != 2 or not 1 <= samples.shape[0] <= wire.MAX_CHANNELS \
                or samples.shape[1] < 1:
            raise SensorFault(f"driver returned samples of shape {samples.shape}")
        if not np.all(np.isfinite(samples)):
            raise SensorFault("driver returned non-finite samples")
        # `wire.encode` refuses what the stream would (samples beyond float32, a negative
        # shaft_hz): the capture's transaction rolls back and `_fault` reports it.
        try:
            seq = self.outbox.capture(self.sensor.id, self.topic, lambda seq: wire.encode(
                wire.Window(seq=seq, t0_ns=int(capture.t0_ns), fs_hz=float(self.sensor.fs_hz),
                            samples=samples, kind=self.kind, shaft_hz=float(capture.shaft_hz),
                            clipped=bool(capture.clipped))))
        except DiskFull as e:  # counted and logged by the outbox
            self.status.problem("outbox", f"cannot store windows: {e}; free disk space")
            self.status.sensor_ok(self.sensor.id)
            return
        except sqlite3.Error as e:
            # The device is fine; the store is not (disk full, I/O error). Count, report,
            # carry on: the next window may fit once the publisher has freed room.
            lost = self.outbox.note_lost(self.sensor.id, str(e))
            self.status.problem("outbox", f"cannot store windows: {e} ({lost} lost so far; "
                                f"free disk space at {self.outbox.path.parent})")
            log.error(kv("outbox_write_failed", sensor=self.sensor.id, error=e,
                         lost_total=lost))
            self.status.sensor_ok(self.sensor.id)
            return
        if "outbox" in self.status.problems():
            self.status.problem("outbox", None)
            log.info(kv("outbox_write_recovered", sensor=self.sensor.id, seq=seq))
        self.captured += 1
        if self.status.sensors().get(self.sensor.id, {}).get("state") != "ok":
            log.info(kv("sensor_recovered", sensor=self.sensor.id, seq=seq))
        self.status.sensor_ok(self.sensor.id)

    def _finish(self, error: SourceFinished) -> None:
        """The source has no more data: report it once, close, capture no more."""
        self.finished = True
        reason = f"finished: {error}"
        self.status.sensor_fault(self.sensor.id, reason)
        log.info(kv("sensor_finished", sensor=self.sensor.id, reason=str(error),
                    captured=self.captured))
        self._close()

    def _fault(self, error: Exception, consecutive: int) -> None:
        self.faults += 1
        reason = str(error) or type(error).__name__
        if not isinstance(error, SensorFault):
            reason = f"{type(error).__name__}: {reason}"
        self.status.sensor_fault(self.sensor.id, reason)
        delay = backoff.delay_s(consecutive, self.backoff_initial_s, self.backoff_max_s)
        log.warning(kv("sensor_fault", sensor=self.sensor.id, reason=reason,
                       attempt=consecutive, retry_in_s=round(delay, 2)))
        self._close()
        self._sleep(delay)
