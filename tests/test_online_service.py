"""The online layer inside the real stream: learning state in the status, operator
actions through the CLI and the command topic (ACL included) logged to InfluxDB, state
files saved at shutdown, and a corrupt state file moved aside at the next start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from ballpass import topics, wire
from ballpass.models.catalog import lookup
from ballpass.services import Influxd, Mosquitto
from ballpass.simulators.signals import synthesize

pytestmark = pytest.mark.slow


def _site(broker: Mosquitto, url: str, db: str, tmp: Path) -> Path:
    for user in ("stream", "ops"):
        (tmp / f"{user}.pw").write_text(broker.users[user] + "\n", encoding="utf-8")
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
id = "ot"
[broker]
host = "{broker.host}"
port = {broker.port}
username = "ops"
password_file = "{tmp / 'ops.pw'}"
[influx]
url = "{url}"
db = "{db}"
[stream]
state_dir = "{tmp / 'state'}"
username = "stream"
password_file = "{tmp / 'stream.pw'}"
batch_wait_s = 0.05
[[asset]]
id = "pump"
bearing = "SKF 6205"
shaft_hz = 25.0
online = {{ learn_windows = 50, learn_hours = 0.0 }}
[[gateway]]
id = "gw1"
[[gateway.sensor]]
id = "s1"
driver = "simulated"
asset = "pump"
fs_hz = 12000
window_samples = 4096
interval_s = 1
""", encoding="utf-8")
    return path


def _status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _publish_windows(broker: Mosquitto, n: int, first_seq: int) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw1", protocol=mqtt.MQTTv5)
    c.username_pw_set("gw1", broker.users["gw1"])
    c.connect(broker.host, broker.port)
    c.loop_start()
    rng = np.random.default_rng(first_seq)
    orders = lookup("SKF 6205").orders()
    t0 = time.time_ns()
    for i in range(n):
        x = synthesize("normal", orders, 25.0, 12000.0, 4096, severity=0.0, rng=rng)
        w = wire.Window(first_seq + i, t0 + i * 10**9, 12000.0, x[None, :], shaft_hz=25.0)
        c.publish(topics.window("ot", "gw1", "s1"), wire.encode(w), qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def _stream(site: Path, status: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ballpass", "stream", "-c", str(site),
                                 "--status-file", str(status)], stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0


def test_learning_actions_and_state_files(mosquitto_auth: Mosquitto, influxd: Influxd,
                                          influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    site = _site(mosquitto_auth, url, db, tmp_path)
    status = tmp_path / "status.json"
    log = tmp_path / "stream.log"
    stream = _stream(site, status, log)
    try:
        _wait(lambda: _status(status).get("mqtt_connected"), 60, "stream connected")
        _publish_windows(mosquitto_auth, 10, 1)
        _wait(lambda: _status(status).get("sensors", {}).get("s1", {}).get("windows", 0) >= 10,
              60, "10 windows processed")
        s1 = _status(status)["sensors"]["s1"]
        assert s1["online"]["state"] == "learning" and s1["state"] == "normal"
        for action in ("ack", "rebaseline", "false-alarm"):
            r = subprocess.run([sys.executable, "-m", "ballpass", "sensor", action, "s1", "-c",
                                str(site), "--by", "alice"], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
        def actions() -> list[Any]:
            res = influxd.query("SELECT * FROM \"long\".actions", db=db)["results"][0]
            return res.get("series", [{}])[0].get("values", [])
        _wait(lambda: len(actions()) == 3, 30, "3 actions in InfluxDB")
        res = influxd.query("SELECT \"by\", action FROM \"long\".actions GROUP BY action", db=db)
        series = res["results"][0]["series"]
        assert {s["tags"]["action"] for s in series} == {"ack", "rebaseline", "false_alarm"}
        assert all(v[1] == "alice" for s in series for v in s["values"])
        assert _status(status)["sensors"]["s1"]["online"]["state"] == "learning"
        # An unknown sensor on the command topic is counted, not applied.
        r = subprocess.run([sys.executable, "-m", "ballpass", "sensor", "ack", "nope", "-c",
                            str(site)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
    finally:
        _stop(stream)
    state = tmp_path / "state" / "online" / "s1.v1.pkl"
    assert state.exists()

    # A corrupt state file is moved aside at start; the sensor learns again, no crash.
    state.write_bytes(b"not a pickle")
    (tmp_path / "state" / "online" / "s1.v0.pkl").write_bytes(b"old")
    stream = _stream(site, status, log)
    try:
        _wait(lambda: _status(status).get("mqtt_connected") and
              _status(status).get("online", {}).get("state_moved_aside") == 2, 60,
              "stream restarted with state files moved aside")
        _publish_windows(mosquitto_auth, 3, 100)
        _wait(lambda: _status(status).get("sensors", {}).get("s1", {}).get("seq") == 102, 60,
              "windows after restart")
        assert _status(status)["sensors"]["s1"]["online"]["state_moved_aside"] == 2
    finally:
        _stop(stream)
    assert len(list((tmp_path / "state" / "online").glob("*.bad-*"))) == 2
    text = log.read_text()
    assert "event=online_state_moved_aside" in text and "event=operator_action" in text
