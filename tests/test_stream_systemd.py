"""The real `ballpass stream` process under the systemd notify protocol (a real unix datagram
socket as $NOTIFY_SOCKET), with the real mosquitto and influxd: READY=1, WATCHDOG=1 at half
of $WATCHDOG_USEC, SIGHUP reload (a bad file keeps the old config; a good one, with a driver only
the gateway has, moves the stream to another broker at once), STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from notify_socket import NotifySocket
from plant import read_status, stream_site, wait_until

from ballpass import topics, wire
from ballpass.services import Influxd, Mosquitto

pytestmark = pytest.mark.slow


def _site(path: Path, port: int, influx_url: str, db: str, state: Path) -> None:
    stream_site(path, port=port, influx_url=influx_url, db=db, state_dir=state)


def _publish(broker: Mosquitto, seq: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{seq}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    w = wire.Window(seq=seq, t0_ns=time.time_ns(), fs_hz=25600.0,
                    samples=0.1 * np.random.default_rng(seq).standard_normal((1, 4096)))
    client.publish(topics.window("s1", "gw1", "a"), wire.encode(w), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_stream_notify_watchdog_and_reload(influxd: Influxd, influx_db: tuple[str, str],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("stream-systemd")
    url, db = influx_db
    first = Mosquitto(tmp_path_factory.mktemp("broker-a"), anonymous=True)
    second = Mosquitto(tmp_path_factory.mktemp("broker-b"), anonymous=True)
    first.start()
    second.start()
    site, status = tmp / "site.toml", tmp / "status.json"
    _site(site, first.port, url, db, tmp / "state")
    ns = NotifySocket()
    env = dict(os.environ, NOTIFY_SOCKET=ns.name, WATCHDOG_USEC="2000000")
    with (tmp / "stream.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ballpass", "stream", "-c", str(site),
                                 "--status-file", str(status)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: ns.index("READY=1") is not None, 60, "READY=1")
        wait_until(lambda: read_status(status).get("mqtt_connected"), 120, "subscribed")
        _publish(first, 1)
        wait_until(lambda: read_status(status)["counters"]["written"] == 1, 30, "window 1")
        wait_until(lambda: len(ns.times("WATCHDOG=1")) >= 3, 10, "watchdog pings")
        pings = ns.times("WATCHDOG=1")
        gaps = np.diff(pings)
        assert gaps.min() > 0.5 and gaps.max() < 1.9, gaps  # half of 2 s, with slack

        # A bad file: RELOADING=1, then READY=1 saying the old config is kept.
        good = site.read_text()
        site.write_text(good.replace("[broker]", "[broker]\nhots = 1"))
        mark = len(ns.messages())
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: ns.index("READY=1", after=mark + 1) is not None, 10, "READY again")
        msgs = ns.messages()[mark:]
        assert any("RELOADING=1" in m.split("\n") for m in msgs)
        assert any("old config kept" in m for m in msgs)
        _publish(first, 2)
        wait_until(lambda: read_status(status)["counters"]["written"] == 2, 30, "window 2")

        # A good file naming the other broker: the stream moves there without a restart.
        # Its sensor's driver is one only the gateway has: the stream does not check
        # drivers, at start or at a reload (before: every reload of such a site failed).
        _site(site, second.port, url, db, tmp / "state")
        site.write_text(site.read_text().replace('driver = "simulated"', 'driver = "acme-vib"'))
        mark = len(ns.messages())
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("config reloaded" in m for m in ns.messages()[mark:]), 10,
                   "reloaded")
        time.sleep(1.0)
        wait_until(lambda: read_status(status).get("mqtt_connected"), 30, "resubscribed")
        _publish(second, 3)
        wait_until(lambda: read_status(status)["counters"]["written"] == 3, 30,
                   "window 3 through the new broker")
        assert proc.poll() is None
    finally:
        mark = len(ns.messages())
        proc.terminate()
        code = proc.wait(30)
        for broker in (first, second):
            broker.stop()
    assert code == 0
    assert any("STOPPING=1" in m.split("\n") for m in ns.messages()[mark:])
    ns.close()
