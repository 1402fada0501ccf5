"""The service launchers against the real binaries: start, answer, stop, auth and ACL."""

from __future__ import annotations

import os
import queue
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ballpass.services import (
    TEMPLATE_PATH,
    Influxd,
    Mosquitto,
    ServiceError,
    VictoriaMetrics,
    acl_text,
    derive_mosquitto_config,
    free_port,
)

REPO = Path(__file__).resolve().parents[1]


class V5Client:
    """A small synchronous wrapper over paho (MQTT 5) that records what it sees."""

    def __init__(self, broker: Mosquitto, client_id: str, username: str | None = None,
                 password: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subscribed.put(codes)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: ReasonCode, props: Properties | None) -> None:
        self.connack.put(reason)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason: ReasonCode, props: Properties | None) -> None:
        with self.acked:
            self.acks[mid] = reason
            self.acked.notify_all()

    def wait_connack(self) -> ReasonCode:
        return self.connack.get(timeout=5)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, timeout=5)
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.client.subscribe(topic, qos=1)
        return self.subscribed.get(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a PID; Popen.wait() in stop() reaps it, so this is a real process.
    return True


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 1024 <= port < 65536


def test_mosquitto_start_stop_is_idempotent(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, anonymous=True)
    broker.start()
    pid = broker.pid
    assert pid is not None and _alive(pid)
    assert broker.running and broker.log_path.exists()
    broker.stop()
    assert not _alive(pid)
    assert broker.pid is None and not broker.running
    broker.stop()  # second stop: nothing to do, no error
    assert "mosquitto version" in broker.log_tail()


def test_mosquitto_anonymous_round_trip(mosquitto: Mosquitto) -> None:
    sub = V5Client(mosquitto, "sub")
    pub = V5Client(mosquitto, "pub")
    try:
        assert sub.wait_connack() == 0 and pub.wait_connack() == 0
        sub.subscribe("bp/v1/s/g/x/window")
        assert pub.publish("bp/v1/s/g/x/window", b"hello") == 0
        assert sub.messages.get(timeout=5).payload == b"hello"
    finally:
        sub.close()
        pub.close()


def test_mosquitto_config_derived_from_repo_template(tmp_path: Path) -> None:
    assert (REPO / "mosquitto.conf").read_text() == TEMPLATE_PATH.read_text()
    text = derive_mosquitto_config(TEMPLATE_PATH.read_text(), port=12345, workdir=tmp_path,
                                   anonymous=False, run_as=None)
    active = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "listener 12345 127.0.0.1" in active
    assert "listener 1883" not in active
    assert f"password_file {tmp_path / 'passwd'}" in active
    assert "log_dest syslog" not in active and "log_dest stderr" in active
    assert "persistence true" in active  # template settings survive


def test_influxd_start_create_database_stop(tmp_path: Path) -> None:
    with Influxd(tmp_path) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(server.url + "/ping", timeout=2) as resp:
            assert resp.status == 204
        server.create_database("plant_a")
        result = server.query("SHOW DATABASES")
        names = [v[0] for v in result["results"][0]["series"][0]["values"]]
        assert "plant_a" in names
        pid = server.pid
        assert pid is not None
    assert not _alive(pid)
    conf = server.config_path.read_text()
    assert f'bind-address = "127.0.0.1:{server.rpc_port}"' in conf  # RPC not on :8088


def test_victoria_metrics_start_stop(victoria_metrics: VictoriaMetrics) -> None:
    with urllib.request.urlopen(victoria_metrics.url + "/health", timeout=2) as resp:
        assert resp.read() == b"OK"
    victoria_metrics.force_flush()
    pid = victoria_metrics.pid
    assert pid is not None
    victoria_metrics.stop()
    victoria_metrics.stop()
    assert not _alive(pid)


@pytest.mark.parametrize("cls", [Mosquitto, Influxd, VictoriaMetrics])
def test_missing_binary_is_a_clear_error(cls: type, tmp_path: Path) -> None:
    kwargs = {"anonymous": True} if cls is Mosquitto else {}
    service = cls(tmp_path, executable="ballpass-no-such-binary", **kwargs)
    with pytest.raises(ServiceError, match=r"ballpass-no-such-binary not found: install the "
                       r"Debian package .+ \(make install-deps\)"):
        service.start()
    assert service.pid is None


def test_service_that_exits_reports_its_log(tmp_path: Path) -> None:
    port = free_port()
    with Mosquitto(tmp_path / "a", port=port, anonymous=True):
        second = Mosquitto(tmp_path / "b", port=port, anonymous=True)
        with pytest.raises(ServiceError, match=r"port 127.0.0.1:\d+ is already in use"):
            second.start()
        assert second.pid is None


def test_mosquitto_auth_refuses_anonymous(mosquitto_auth: Mosquitto) -> None:
    anon = V5Client(mosquitto_auth, "anon")
    wrong = V5Client(mosquitto_auth, "wrong", "gw1", "not-the-password")
    try:
        for client in (anon, wrong):
            reason = client.wait_connack()
            assert reason.value == 135 and reason.getName() == "Not authorized"
    finally:
        anon.close()
        wrong.close()


def test_mosquitto_acl_scopes_gateways(mosquitto_auth: Mosquitto) -> None:
    pw = mosquitto_auth.users
    stream = V5Client(mosquitto_auth, "stream-1", "stream", pw["stream"])
    gw1 = V5Client(mosquitto_auth, "gw1", "gw1", pw["gw1"])
    try:
        assert stream.wait_connack() == 0 and gw1.wait_connack() == 0
        assert stream.subscribe("bp/v1/+/+/+/window")[0].value == 1  # granted QoS 1
        denied = gw1.publish("bp/v1/site1/gw2/s1/window", b"spoofed")
        assert denied.getName() == "Not authorized"
        assert gw1.publish("bp/v1/site1/gw1/s1/window", b"mine") == 0
        msg = stream.messages.get(timeout=5)
        assert (msg.topic, msg.payload) == ("bp/v1/site1/gw1/s1/window", b"mine")
        assert stream.messages.empty()
        # Only the stream writes diagnoses; a gateway may not.
        assert gw1.publish("bp/v1/site1/gw1/s1/diagnosis", b"{}").getName() == "Not authorized"
        # 16 "No matching subscribers" is a success code.
        assert not stream.publish("bp/v1/site1/gw1/s1/diagnosis", b"{}").is_failure
    finally:
        stream.close()
        gw1.close()


def test_mosquitto_acl_shared_subscription_for_stream(mosquitto_auth: Mosquitto) -> None:
    """Stream workers share windows through `$share/ballpass/...` under the ACL."""
    pw = mosquitto_auth.users
    worker = V5Client(mosquitto_auth, "stream-w1", "stream", pw["stream"])
    gw2 = V5Client(mosquitto_auth, "gw2", "gw2", pw["gw2"])
    try:
        assert worker.wait_connack() == 0 and gw2.wait_connack() == 0
        assert worker.subscribe("$share/ballpass/bp/v1/+/+/+/window")[0].value == 1
        assert gw2.publish("bp/v1/site1/gw2/s9/window", b"w") == 0
        assert worker.messages.get(timeout=5).topic == "bp/v1/site1/gw2/s9/window"
        # A gateway subscribing to everything gets nothing of the others' data.
        assert gw2.subscribe("bp/v1/#")[0].value == 1
        assert worker.publish("bp/v1/site1/gw1/s1/diagnosis", b"d") == 0
        assert worker.publish("bp/v1/site1/gw2/config", b"c").getName() == "Not authorized"
        time.sleep(0.2)
        assert gw2.messages.empty()
    finally:
        worker.close()
        gw2.close()


def test_mosquitto_acl_config_topic(mosquitto_auth: Mosquitto) -> None:
    """Operators write a gateway's config; that gateway reads it; gateways cannot write it."""
    pw = mosquitto_auth.users
    gw1 = V5Client(mosquitto_auth, "gw1", "gw1", pw["gw1"])
    ops = V5Client(mosquitto_auth, "ops", "ops", pw["ops"])
    try:
        assert gw1.wait_connack() == 0 and ops.wait_connack() == 0
        # mosquitto 2.0 grants the wildcard subscription and filters at delivery.
        assert gw1.subscribe("bp/v1/site1/+/config")[0].value == 1
        assert gw1.publish("bp/v1/site1/gw2/config", b"{}").getName() == "Not authorized"
        assert gw1.publish("bp/v1/site1/gw1/config", b"{}").getName() == "Not authorized"
        assert ops.publish("bp/v1/site1/gw2/config", b'{"v": 2}') == 0
        assert ops.publish("bp/v1/site1/gw1/config", b'{"v": 1}') == 0
        msg = gw1.messages.get(timeout=5)
        assert (msg.topic, msg.payload) == ("bp/v1/site1/gw1/config", b'{"v": 1}')
        assert gw1.messages.empty()
    finally:
        gw1.close()
        ops.close()


def test_acl_text_lists_privileged_users() -> None:
    text = acl_text(stream_users=("stream", "stream2"), operator_users=("ops",))
    assert "pattern write bp/v1/+/%u/+/window" in text
    assert text.count("topic write bp/v1/+/alerts") == 2
    assert "user ops\ntopic read bp/v1/#\ntopic write bp/v1/+/+/config" in text
