"""The gateway with capture threads hung in a driver read, and with a wall clock that NTP
steps: the real `service.run` against a real mosquitto. The hung device is the simulated
driver wrapped so its read blocks until the test lets it go (a kernel read that never
returns)."""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from linkcut import LinkCut
from plant import wait_until
from test_publisher import Subscriber, status_of

from ballpass.config import AssetConfig, Config, SensorConfig, parse
from ballpass.gateway.clock import ClockWatch
from ballpass.gateway.drivers import Capture, Driver
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.service import Supervisor, run
from ballpass.services import Mosquitto, free_port

SITE = "plant1"


class Hangs:
    """The simulated driver, whose reads block while `hung` is set, after `good` reads."""

    def __init__(self, sensor: SensorConfig, asset: AssetConfig, hung: threading.Event,
                 release: threading.Event, good: int) -> None:
        self.inner: Driver = load_driver("simulated")(sensor, asset)
        self.hung, self.release, self.good = hung, release, good

    def open(self) -> None:
        self.inner.open()

    def read(self, n: int) -> Capture:
        if self.good <= 0 and self.hung.is_set():
            self.release.wait()  # until the test lets go (teardown at the latest)
        self.good -= 1
        return self.inner.read(n)

    def close(self) -> None:
        self.inner.close()


def _config(port: int, gw: str, outbox: Path, sensors: list[str]) -> Config:
    sensor = dict(driver="simulated", asset="pump1", fs_hz=25600, window_samples=1024,
                  interval_s=0.2)
    return parse({
        "site": {"id": SITE},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive_s": 5},
        "asset": [{"id": "pump1", "kind": "pump", "shaft_hz": 29.95, "bearing": "SKF 6205"}],
        "gateway": [{"id": gw, "outbox": {"path": str(outbox)},
                     "sensor": [dict(sensor, id=s) for s in sensors]}],
    })


def _start(config: Config, gw: str, **kwargs: Any) -> tuple[threading.Event,
                                                            threading.Thread, list[Any]]:
    stop, ready, out = threading.Event(), threading.Event(), []
    t = threading.Thread(target=lambda: out.append(
        run(config, gw, stop, status_interval_s=0.3, ready=ready, **kwargs)))
    t.start()
    assert ready.wait(5)
    return stop, t, out


def test_hung_sensors_share_one_stop_deadline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Before: each hung capture thread was waited for in turn, up to 30 s each: two hung
    sensors took 60 s to stop, past the unit's TimeoutStopSec=45, so systemd SIGKILLed the
    gateway before its drain, final status and clean DISCONNECT."""
    gw = "gw-hung-stop"
    hung, release = threading.Event(), threading.Event()
    hung.set()
    sensors = ["s1", "s2", "s3"]
    config = _config(mosquitto.port, gw, tmp_path / "o.sqlite", sensors)
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/status", gw)
    try:
        stop, t, out = _start(config, gw, capture_join_max_s=1.0,
                              driver_factory=lambda s, a: Hangs(s, a, hung, release, 1))
        sub.wait_for(lambda m: any(s["state"] == "online" for s in status_of(m)))
        time.sleep(0.5)  # every thread is in its hung read now
        t0 = time.monotonic()
        stop.set()
        t.join(15)
        took = time.monotonic() - t0
        assert out == [0]
        # one shared 1 s deadline, not 3 × 1 s
        assert took < 2.2, took
        final = sub.wait_for(lambda m: status_of(m)[-1]["state"] == "offline", timeout=5)
        assert "counters" in status_of(final)[-1]  # the final status, not the will
    finally:
        release.set()
        sub.close()


def _scrape_fault(port: int, sensor: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("ballpass_gateway_sensor_fault{") and f'sensor="{sensor}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_capture_thread_hung_in_a_read_shows_as_a_fault(
        mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a thread hung in a driver read was invisible: the sensor stayed "ok" on the
    status topic and in /metrics, for ever. Now it is a fault ("capture stuck for N s")
    once overdue by 2 × max(interval, window) + margin (here 2 × 0.2 + 0.5 s), logged
    once, and back when the read returns. The watchdog keeps going (one sensor)."""
    caplog.set_level(logging.INFO)
    gw = "gw-hung-read"
    hung, release = threading.Event(), threading.Event()
    simulated = load_driver("simulated")

    def factory(s: SensorConfig, a: AssetConfig) -> Driver:
        return Hangs(s, a, hung, release, 2) if s.id == "s2" else simulated(s, a)

    config = _config(mosquitto.port, gw, tmp_path / "o.sqlite", ["s1", "s2"])
    sent: list[tuple[float, str]] = []
    sup = Supervisor(notify=lambda s: sent.append((time.monotonic(), s)) or True,
                     watchdog_s=0.4)
    port = free_port()
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/status", gw)
    stop, t, out = _start(config, gw, driver_factory=factory, supervisor=sup,
                          capture_stuck_margin_s=0.5, metrics=("127.0.0.1", port))
    try:
        hung.set()

        def stuck(m: list) -> bool:
            s = status_of(m)
            return bool(s) and s[-1]["sensors"]["s2"]["reason"].startswith(
                "capture stuck for ")
        msgs = sub.wait_for(stuck, timeout=10)
        t_stuck = time.monotonic()
        last = status_of(msgs)[-1]
        assert last["sensors"]["s2"]["state"] == "fault"
        assert "a driver call has not returned (bound 1 s)" in last["sensors"]["s2"]["reason"]
        assert last["sensors"]["s1"] == {"state": "ok", "reason": ""}
        wait_until(lambda: _scrape_fault(port, "s2") == 1.0, 5, "s2 fault in /metrics")
        assert _scrape_fault(port, "s1") == 0.0
        # the count goes on in later statuses; one log line all the same
        sub.wait_for(lambda m: int(status_of(m)[-1]["sensors"]["s2"]["reason"].split()[3])
                     >= 3, timeout=10)
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("event=capture_stuck ")]
        assert len(lines) == 1 and f"gateway={gw} sensor=s2 stuck_s=" in lines[0], lines
        # The choice (docs/gateway.md, "Stuck capture"): the watchdog is not withheld.
        pings = [at for at, s in sent if s == "WATCHDOG=1" and at > t_stuck]
        assert len(pings) >= 4, pings

        n = len(sub.snapshot())
        release.set()  # the read returns: the thread captures again, the sensor is ok
        sub.wait_for(lambda m: status_of(m[n:]) and status_of(m[n:])[-1]["sensors"]["s2"]
                     == {"state": "ok", "reason": ""}, timeout=10)
        assert any(r.getMessage().startswith(f"event=capture_unstuck gateway={gw} sensor=s2")
                   for r in caplog.records)
        wait_until(lambda: _scrape_fault(port, "s2") == 0.0, 5, "s2 ok in /metrics")
    finally:
        release.set()
        stop.set()
        t.join(15)
        sub.close()
    assert out == [0]


def test_started_at_and_the_will_follow_a_clock_step(mosquitto: Mosquitto,
                                                     tmp_path: Path) -> None:
    """Before: a board without RTC started with its clock in 1970 reported that start in
    every status and in its last will until a restart, after NTP had set the clock."""
    gw = "gw-rtcless"
    step_s = 50_000.0
    offset = [0]
    clock = ClockWatch(wall_ns=lambda: time.time_ns() + offset[0])
    link = LinkCut(mosquitto.port)
    link.start()
    config = _config(link.port, gw, tmp_path / "o.sqlite", ["s1"])
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/status", gw)
    started = time.time()
    stop, t, out = _start(config, gw, clock=clock)
    try:
        def started_at(s: dict) -> float:
            return calendar.timegm(time.strptime(s["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))

        msgs = sub.wait_for(lambda m: any(s["state"] == "online" for s in status_of(m)))
        assert abs(started_at(status_of(msgs)[0]) - started) < 2
        offset[0] = int(step_s * 1e9)  # NTP steps the clock (by the watch the outbox uses)
        msgs = sub.wait_for(lambda m: "clock" in status_of(m)[-1]["problems"])
        assert abs(started_at(status_of(msgs)[-1]) - (started + step_s)) < 2
        # The will of the connection up now was set at its CONNECT: reconnect, then lose
        # that connection uncleanly, and the broker sends the will set at the new CONNECT.
        link.cut()
        link.start()
        n = len(sub.snapshot())
        sub.wait_for(lambda m: any(s["state"] == "online" for s in status_of(m[n:])))
        n = len(sub.snapshot())
        link.cut()
        msgs = sub.wait_for(lambda m: any(s["state"] == "offline" for s in status_of(m[n:])))
        will = next(s for s in status_of(msgs[n:]) if s["state"] == "offline")
        assert "counters" not in will  # the will, not a final status
        assert abs(started_at(will) - (started + step_s)) < 2, will
        assert json.loads(msgs[-1].payload)["state"] == "offline"
    finally:
        stop.set()
        t.join(15)
        link.cut()
        sub.close()
    assert out == [0]
