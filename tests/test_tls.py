"""TLS to the broker with throwaway openssl certificates: server verification by CA file,
client certificates, per-gateway username/password on top, anonymous refused."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import AUTH_USERS
from plant import wait_until
from test_publisher import FAST, make_window

from ballpass import topics
from ballpass.config import BrokerConfig
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.status import Status
from ballpass.services import Mosquitto

SITE = "plant1"


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1/localhost, a client cert for gw1, and a second,
    unrelated CA (a client trusting it must refuse the broker)."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN=ballpass-test-{ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "gw1")):
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt")
    return {n: d / n for n in ("ca.crt", "other-ca.crt", "server.crt", "server.key",
                               "client.crt", "client.key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(pki: dict[str, Path], tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mq", users=AUTH_USERS, tls={
        "cafile": pki["ca.crt"], "certfile": pki["server.crt"], "keyfile": pki["server.key"],
        "require_certificate": True})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _connect_rc(broker: Mosquitto, **tls: object) -> object:
    """Connect with paho over TLS; the CONNACK reason, or the exception raised."""
    result: list[object] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    user = tls.pop("user", None)
    if user:
        c.username_pw_set(str(user), AUTH_USERS[str(user)])
    c.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT, **tls)  # type: ignore[arg-type]
    c.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    try:
        c.connect(broker.host, broker.tls_port or 0, keepalive=5)
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                return result[0] if result else "connection lost"
    except (OSError, ssl.SSLError) as e:
        return e
    finally:
        c.disconnect()
    return result[0] if result else "no CONNACK"


def test_gateway_publishes_over_tls_with_client_cert_and_password(
        tls_broker: Mosquitto, pki: dict[str, Path], tmp_path: Path) -> None:
    gw = "gw1"
    assert tls_broker.tls_port and tls_broker.tls_port != tls_broker.port
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    box.put("s1", 1, topics.window(SITE, gw, "s1"), make_window(1))
    status = Status(SITE, gw, ["s1"], box.counters)
    broker = BrokerConfig(host="127.0.0.1", port=tls_broker.tls_port, tls=True,
                          ca_file=pki["ca.crt"], cert_file=pki["client.crt"],
                          key_file=pki["client.key"])
    pub = Publisher(broker, SITE, gw, box, status, username=gw, password=AUTH_USERS[gw],
                    settings=PublisherSettings(**FAST))
    pub.start()
    try:
        assert pub.wait_connected(10)
        wait_until(lambda: box.counters()["published"] >= 1, 5, "the PUBACK", poll_s=0.02)
    finally:
        pub.stop(drain_timeout_s=1)
    assert box.counters()["published"] == 1
    box.close()


def _handshake(broker: Mosquitto, ca: Path, cert: tuple[Path, Path] | None) -> Exception | None:
    """A bare TLS handshake (stdlib; paho leaks the socket of a failed handshake)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with socket.create_connection((broker.host, broker.tls_port or 0), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"\xe0\x00")  # DISCONNECT: a TLS 1.2 server reports a missing cert
            s.recv(1)                 # at the latest when the first record is read
    except (ssl.SSLError, OSError) as e:
        return e
    return None


def test_tls_refusals(tls_broker: Mosquitto, pki: dict[str, Path]) -> None:
    cert = dict(certfile=str(pki["client.crt"]), keyfile=str(pki["client.key"]))
    ok = _connect_rc(tls_broker, ca_certs=str(pki["ca.crt"]), user="gw1", **cert)
    assert isinstance(ok, mqtt.ReasonCode) and not ok.is_failure
    pair = (pki["client.crt"], pki["client.key"])
    assert _handshake(tls_broker, pki["ca.crt"], pair) is None
    # no client certificate: the handshake fails (require_certificate true)
    assert isinstance(_handshake(tls_broker, pki["ca.crt"], None), ssl.SSLError)
    # a client that trusts another CA refuses the broker's certificate
    wrong_ca = _handshake(tls_broker, pki["other-ca.crt"], pair)
    assert isinstance(wrong_ca, ssl.SSLCertVerificationError), wrong_ca
    # a certificate alone is not a login: anonymous is refused over TLS too
    anon = _connect_rc(tls_broker, ca_certs=str(pki["ca.crt"]), **cert)
    assert isinstance(anon, mqtt.ReasonCode) and anon.is_failure and anon.value == 135
