"""Capture schedule: one thread per sensor reads a window every `interval_s` into the outbox.

Slot k starts at ``t_start + k × interval_s`` on the monotonic clock, so the schedule does
not drift with read or encode time. A slot missed because a read ran long is skipped
(logged as ``event=capture_overrun``), never caught up in a burst.

A driver fault (`SensorFault` or any other exception from open/read, or samples that are
not finite) marks the sensor ``fault`` with a reason on the status topic, logs
``event=sensor_fault``, closes the driver and re-opens it with capped exponential
backoff; the other sensors' threads are not affected.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np

from ballpass import topics, wire
from ballpass.config import AssetConfig, SensorConfig
from ballpass.gateway.drivers import Driver, SensorFault
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.status import Status

log = logging.getLogger(__name__)

DriverFactory = Callable[[SensorConfig, AssetConfig], Driver]

_KINDS = {"acceleration": wire.Kind.ACCELERATION, "temperature": wire.Kind.TEMPERATURE}


def default_driver_factory(sensor: SensorConfig, asset: AssetConfig) -> Driver:
    """The driver registered under `sensor.driver` (entry point group ballpass.drivers)."""
    return load_driver(sensor.driver)(sensor, asset)


class SensorCapture:
    """The capture loop of one sensor, run on its own thread by `start()`.

    `backoff_initial_s` / `backoff_max_s`: delay before re-opening a faulty driver,
    doubled per consecutive fault up to the cap, reset by a good read.
    """

    def __init__(self, sensor: SensorConfig, asset: AssetConfig, site: str, gateway: str,
                 outbox: Outbox, status: Status, stop: threading.Event, *,
                 driver_factory: DriverFactory = default_driver_factory,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.sensor = sensor
        self.asset = asset
        self.outbox = outbox
        self.status = status
        self.stop_event = stop
        self.driver_factory = driver_factory
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.topic = topics.window(site, gateway, sensor.id)
        self.kind = _KINDS[sensor.kind]
        self.captured = 0
        self.faults = 0
        self._driver: Driver | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
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
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                break
            try:
                self._capture_one()
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
                log.warning("event=capture_overrun sensor=%s skipped=%d interval_s=%g",
                            self.sensor.id, behind, interval)
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
            log.warning("event=driver_close_failed sensor=%s error=%r", self.sensor.id, str(e))

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
        seq = self.outbox.next_seq(self.sensor.id)
        window = wire.Window(
            seq=seq, t0_ns=int(capture.t0_ns), fs_hz=float(self.sensor.fs_hz),
            samples=samples, kind=self.kind, shaft_hz=float(capture.shaft_hz),
            clipped=bool(capture.clipped))
        self.outbox.put(self.sensor.id, seq, self.topic, wire.encode(window))
        self.captured += 1
        if self.status.sensors().get(self.sensor.id, {}).get("state") != "ok":
            log.info("event=sensor_recovered sensor=%s seq=%d", self.sensor.id, seq)
        self.status.sensor_ok(self.sensor.id)

    def _fault(self, error: Exception, consecutive: int) -> None:
        self.faults += 1
        reason = str(error) or type(error).__name__
        if not isinstance(error, SensorFault):
            reason = f"{type(error).__name__}: {reason}"
        self.status.sensor_fault(self.sensor.id, reason)
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (consecutive - 1))
        log.warning("event=sensor_fault sensor=%s reason=%r attempt=%d retry_in_s=%.2f",
                    self.sensor.id, reason, consecutive, delay)
        self._close()
        self.stop_event.wait(delay)
