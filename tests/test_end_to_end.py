"""End to end on the real parts: simulated sensors → gateway (outbox, paho) → mosquitto
(password + ACL) → stream (Numba features, diagnosis) → influxd → webhook.

A faulty bearing raises an alert row in InfluxDB and a webhook POST; a healthy one
raises none; every captured window is written exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from plant import query_rows, read_status, spawn_ballpass, wait_until, write_passwords

from ballpass.demo import WebhookReceiver
from ballpass.services import Influxd, Mosquitto

pytestmark = pytest.mark.slow


def _site(broker: Mosquitto, influx_url: str, db: str, tmp: Path, webhook: str) -> Path:
    write_passwords(tmp, broker.users)
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
id = "e2e"
[broker]
host = "{broker.host}"
port = {broker.port}
[influx]
url = "{influx_url}"
db = "{db}"
[stream]
state_dir = "{tmp / 'state'}"
username = "stream"
password_file = "{tmp / 'stream.pw'}"
batch_wait_s = 0.1
[[asset]]
id = "agitator"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = 24.75
[[gateway]]
id = "gw1"
password_file = "{tmp / 'gw1.pw'}"
outbox = {{ path = "{tmp / 'outbox.sqlite'}" }}
[[gateway.sensor]]
id = "faulty"
driver = "simulated"
asset = "agitator"
fs_hz = 25600
window_samples = 8192
interval_s = 0.5
options = {{ fault = "outer_race", seed = 11 }}
[[gateway.sensor]]
id = "healthy"
driver = "simulated"
asset = "agitator"
fs_hz = 25600
window_samples = 8192
interval_s = 0.5
options = {{ fault = "normal", seed = 12 }}
[[webhook]]
url = "{webhook}"
""", encoding="utf-8")
    return path


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


def test_faulty_bearing_alerts_healthy_does_not(
        mosquitto_auth: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        webhook: WebhookReceiver, tmp_path: Path) -> None:
    url, db = influx_db
    site = _site(mosquitto_auth, url, db, tmp_path, webhook.url)
    status_file = tmp_path / "stream-status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file)],
                            tmp_path / "stream.log")
    gateway = None
    try:
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120,
                   "the stream to subscribe")
        gateway = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"],
                                 tmp_path / "gateway.log")

        def alarmed() -> bool:
            sensors = read_status(status_file).get("sensors", {})
            return bool(sensors.get("faulty", {}).get("alerted")) and \
                sensors.get("healthy", {}).get("windows", 0) >= 12
        wait_until(alarmed, 90, "an alarm on the faulty sensor")
        gateway.terminate()
        assert gateway.wait(30) == 0

        def drained() -> bool:
            s = read_status(status_file)
            published = s.get("gateways", {}).get("gw1", {}).get("counters", {}).get(
                "published", -1)
            return s.get("gateways", {}).get("gw1", {}).get("state") == "offline" and \
                s["counters"]["written"] == published
        wait_until(drained, 30, "the stream to write every published window")
        wait_until(lambda: webhook.received, 15, "the webhook")
    finally:
        for proc in (gateway, stream):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        assert stream.wait(30) == 0
    status = read_status(status_file)
    gw = status["gateways"]["gw1"]["counters"]

    # Every captured window is in InfluxDB exactly once, in consecutive seqs per sensor.
    for sensor in ("faulty", "healthy"):
        seqs = [r["seq"] for r in query_rows(influxd, db, "SELECT seq FROM vibration "
                                        f"WHERE sensor = '{sensor}'")]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    written = query_rows(influxd, db, "SELECT count(seq) FROM vibration")[0]["count"]
    assert written == gw["captured"] == gw["published"] == status["counters"]["written"]
    assert status["counters"]["rejected"] == {}

    # The alert row and the webhook: the faulty bearing only.
    alerts = query_rows(influxd, db, "SELECT * FROM \"long\".alerts GROUP BY *")
    assert {a["sensor"] for a in alerts} == {"faulty"}
    assert alerts[0]["status"] == "firing" and alerts[0]["diagnosis"] == "outer_race"
    assert [w["sensor"] for w in webhook.received] == ["faulty"]
    hook = webhook.received[0]
    assert hook["status"] == "firing" and hook["alert_id"] == alerts[0]["alert_id"]
    assert hook["diagnosis"] == "outer_race" and hook["asset"] == "agitator"
    assert any(e["line"] == "BPFO" for e in hook["evidence"])
    assert "outer race" in hook["summary"]
    healthy = query_rows(influxd, db, "SELECT diagnosis FROM diagnosis WHERE sensor = 'healthy'")
    assert sum(r["diagnosis"] == "normal" for r in healthy) >= 0.8 * len(healthy)

    # Retained diagnoses on MQTT, readable by an operator account (a second login as
    # "stream" would take over the running stream's session: client id = username).
    retained: dict[str, dict[str, Any]] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-reader")
    client.username_pw_set("ops", mosquitto_auth.users["ops"])
    client.on_message = lambda _c, _u, m: retained.__setitem__(m.topic, json.loads(m.payload))
    client.connect(mosquitto_auth.host, mosquitto_auth.port)
    client.subscribe("bp/v1/e2e/gw1/+/diagnosis", qos=1)
    client.loop_start()
    try:
        wait_until(lambda: len(retained) == 2, 10, "retained diagnoses")
    finally:
        client.loop_stop()
        client.disconnect()
    assert retained["bp/v1/e2e/gw1/faulty/diagnosis"]["state"] == "alarm"
    assert retained["bp/v1/e2e/gw1/healthy/diagnosis"]["state"] != "alarm"
