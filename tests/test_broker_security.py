"""Broker-side security of the shipped mosquitto.conf, against the real mosquitto 2.0.11.

- client ids are tied to usernames: a gateway login cannot take the stream's client id
  (kick it off, discard its queued windows);
- the shipped listeners: plain on loopback only, every listener with its own security;
  in TLS-only mode no listener admits a client without a certificate;
- every command that writes a password or ACL file creates it 0600;
- the documented Debian install (conf.d beside Debian's own main config) starts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import AUTH_USERS
from test_tls import make_pki

from ballpass.broker_admin import add_gateway
from ballpass.services import (
    TEMPLATE_PATH,
    Mosquitto,
    acl_text,
    free_port,
    mosquitto_password_hash,
    write_private,
)

STREAM_ID = "ballpass-stream"  # config.stream.client_id's default
WINDOWS = "bp/v1/+/+/+/window"


class V311:
    """A paho MQTT 3.1.1 client (what the stream speaks) that records what happens."""

    def __init__(self, broker: Mosquitto, user: str, client_id: str, *,
                 clean_session: bool, port: int | None = None) -> None:
        self.connacks: list[tuple[bool, int]] = []  # (session_present, reason value)
        self.disconnects = 0
        self.messages: list[str] = []
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=clean_session, protocol=mqtt.MQTTv311)
        c.username_pw_set(user, AUTH_USERS[user])
        c.reconnect_delay_set(5, 5)  # a kicked client must not come back within the test
        c.on_connect = lambda _c, _u, f, rc, _p: self.connacks.append(
            (bool(f.session_present), rc.value))
        c.on_disconnect = lambda *_: setattr(self, "disconnects", self.disconnects + 1)
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        c.connect(broker.host, port or broker.port, keepalive=30)
        c.loop_start()
        self.client = c
        _wait(lambda: bool(self.connacks), "the CONNACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate: object, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_gateway_login_cannot_take_the_stream_client_id(mosquitto_auth: Mosquitto) -> None:
    stream = V311(mosquitto_auth, "stream", STREAM_ID, clean_session=False)
    stream.client.subscribe(WINDOWS, qos=1)
    assert stream.subscribed.wait(5)
    # A stolen gateway login, connecting with the stream's client id and a clean session:
    # without use_username_as_clientid the broker hands it the stream's session (the
    # stream is disconnected, its subscription and queue thrown away).
    thief = V311(mosquitto_auth, "gw1", STREAM_ID, clean_session=True)
    assert thief.connacks == [(False, 0)]  # a valid login; it gets its own session
    time.sleep(0.3)
    assert stream.disconnects == 0, "the gateway login kicked the stream off"
    stream.client.disconnect()
    stream.client.loop_stop()
    thief.close()

    # The stream is away: a window queues in its persistent session ...
    gw = V311(mosquitto_auth, "gw1", "bp-gw-p1-gw1", clean_session=True)
    gw.client.publish("bp/v1/p1/gw1/s1/window", b"w1", qos=1).wait_for_publish(5)
    gw.close()
    # ... and the thief's clean-session login with the stream's id does not discard it.
    V311(mosquitto_auth, "gw1", STREAM_ID, clean_session=True).close()
    back = V311(mosquitto_auth, "stream", STREAM_ID, clean_session=False)
    try:
        assert back.connacks[0] == (True, 0), "the stream's persistent session was discarded"
        _wait(lambda: back.messages == ["bp/v1/p1/gw1/s1/window"], "the queued window")
    finally:
        back.close()


def _blocks(text: str) -> list[dict[str, str]]:
    """The active listener blocks of a mosquitto config: directive -> rest of the line."""
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            blocks.append({})
        if blocks:
            blocks[-1][words[0]] = words[1].strip() if len(words) > 1 else ""
    return blocks


def test_shipped_listeners_plain_on_loopback_each_with_its_own_security() -> None:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "per_listener_settings true" in text.splitlines()
    blocks = _blocks(text)
    assert blocks, "no listener"
    for b in blocks:
        port, *bind = b["listener"].split()
        # a listener without a certificate sends passwords in clear text: loopback only
        if "certfile" not in b:
            assert bind and bind[0] in ("127.0.0.1", "::1", "localhost"), b["listener"]
        assert b.get("allow_anonymous") == "false", f"listener {port}"
        assert "password_file" in b and "acl_file" in b, f"listener {port}"
        assert b.get("use_username_as_clientid") == "true", f"listener {port}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _mqtt_connect_rc(port: int, user: str, tls: ssl.SSLContext | None) -> object:
    """CONNACK return code of a raw MQTT 3.1.1 CONNECT with a valid password, or the
    exception (refused handshake, closed connection)."""
    def s16(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    body = (b"\x00\x04MQTT\x04\xc2\x00\x05" + s16(b"t-" + user.encode())
            + s16(user.encode()) + s16(AUTH_USERS[user].encode()))
    try:
        reply = _exchange(port, tls, b"\x10" + bytes([len(body)]) + body)
    except (OSError, ssl.SSLError) as e:
        return e
    return reply[3] if len(reply) == 4 and reply[0] == 0x20 else f"no CONNACK: {reply!r}"


def _exchange(port: int, tls: ssl.SSLContext | None, packet: bytes) -> bytes:
    """Send one packet on a new (TLS) connection, return the first 4 bytes answered."""
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        if tls is not None:
            s = stack.enter_context(tls.wrap_socket(s, server_hostname="127.0.0.1"))
        s.sendall(packet)
        return s.recv(4)


def test_tls_only_refuses_certificateless_clients_on_every_listener(
        pki: dict[str, Path], tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq", users=AUTH_USERS, tls_only=True, tls={
        "cafile": pki["ca.crt"], "certfile": pki["server.crt"], "keyfile": pki["server.key"],
        "require_certificate": True})
    with broker:
        ports = [int(b["listener"].split()[0])
                 for b in _blocks(broker.config_path.read_text(encoding="utf-8"))]
        assert ports == [broker.port]  # the plain listener is gone
        no_cert = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        with_cert = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        with_cert.load_cert_chain(str(pki["client.crt"]), str(pki["client.key"]))
        for port in ports:
            # a valid password is not enough, over TLS or plain
            assert isinstance(_mqtt_connect_rc(port, "stream", no_cert), ssl.SSLError)
            assert not isinstance(_mqtt_connect_rc(port, "stream", None), int)
            assert _mqtt_connect_rc(port, "stream", with_cert) == 0
        # nothing else of ours listens: the template's plain port is not opened anywhere
        assert not _connects(1883) or _owner_is_not(broker, 1883)


def _lan_address() -> str:
    """This host's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        addr = str(s.getsockname()[0])
    assert not addr.startswith("127."), "this test needs a non-loopback IPv4 address"
    return addr


def _connects(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _owner_is_not(broker: Mosquitto, port: int) -> bool:
    """True when `port` is open but not by our broker (another service on the machine)."""
    out = subprocess.run(["ss", "-ltnp", f"sport = :{port}"], capture_output=True, text=True)
    return f"pid={broker.pid}," not in out.stdout


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_add_gateway_creates_secret_files_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # an ordinary shell's umask: write_text would give 0644
    try:
        passwd, acl, pw = tmp_path / "passwd", tmp_path / "acl", tmp_path / "gw3.password"
        out = subprocess.run(
            [sys.executable, "-m", "ballpass", "broker", "add-gateway", "gw3", "--passwd",
             str(passwd), "--acl", str(acl), "--password-file", str(pw)],
            capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    assert {p.name: oct(_mode(p)) for p in (passwd, acl, pw)} == {
        "passwd": "0o600", "acl": "0o600", "gw3.password": "0o600"}
    assert passwd.read_text().startswith("gw3:$7$")


def test_replaced_password_file_loses_world_bits_keeps_owner(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text(f"gw1:{mosquitto_password_hash('x')}\n")
    passwd.chmod(0o644)
    add_gateway("gw2", "secret", passwd, acl)
    assert _mode(passwd) == 0o640  # group read kept (root:mosquitto 0640), others gone
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["gw1", "gw2"]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(passwd, nobody.pw_uid, nobody.pw_gid)
        write_private(passwd, "gw1:x\n")
        assert (passwd.stat().st_uid, passwd.stat().st_gid) == (nobody.pw_uid,
                                                                nobody.pw_gid)


def test_launcher_rewrites_a_world_readable_password_file_0600(tmp_path: Path) -> None:
    work = tmp_path / "mq"
    work.mkdir()
    for name in ("passwd", "acl"):
        (work / name).write_text("stale\n")
        (work / name).chmod(0o644)
    with Mosquitto(work, users=AUTH_USERS) as broker:
        assert _mode(broker.workdir / "passwd") == 0o600
        assert _mode(broker.workdir / "acl") == 0o600


# --- issue 14: the documented Debian install ------------------------------------------

DEBIAN_MAIN = Path("/etc/mosquitto/mosquitto.conf")


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    """`text` with its one active line `old` replaced by `new`; fails when the file
    changed shape (comments are left alone)."""
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip() == old]
    assert len(hits) == 1, f"{what}: expected one line {old!r}, found {len(hits)}"
    lines[hits[0]] = new
    return "\n".join(lines) + "\n"


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A temp dir the `mosquitto` user owns: Debian's mosquitto drops to that user before
    it opens the password file, ACL, persistence dir and log (pytest's tmp_path is not
    reachable for it)."""
    d = Path(tempfile.mkdtemp(prefix="ballpass-debian-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_documented_debian_install_starts_beside_debians_main_config(
        broker_dir: Path, pki: dict[str, Path]) -> None:
    """/etc/mosquitto/conf.d/ballpass.conf beside Debian's own mosquitto.conf, with only
    paths and ports moved into a temp dir, starts; logins work, anonymous is refused."""
    d = broker_dir
    (d / "conf.d").mkdir()
    (d / "data").mkdir()
    (d / "certs").mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(pki[name], d / "certs" / name)
    main = DEBIAN_MAIN.read_text(encoding="utf-8")
    main = _replace_once(main, "pid_file /run/mosquitto/mosquitto.pid",
                         f"pid_file {d / 'mosquitto.pid'}", "main config")
    main = _replace_once(main, "persistence_location /var/lib/mosquitto/",
                         f"persistence_location {d / 'data'}/", "main config")
    main = _replace_once(main, "log_dest file /var/log/mosquitto/mosquitto.log",
                         f"log_dest file {d / 'mosquitto.log'}", "main config")
    main = _replace_once(main, "include_dir /etc/mosquitto/conf.d",
                         f"include_dir {d / 'conf.d'}", "main config")
    port, tls_port = free_port(), free_port()
    ours = TEMPLATE_PATH.read_text(encoding="utf-8")
    for old, new in (("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1"),
                     # all interfaces, as shipped: the network reaches TLS only
                     ("listener 8883", f"listener {tls_port}"),
                     ("cafile /etc/mosquitto/certs/ca.crt", f"cafile {d}/certs/ca.crt"),
                     ("certfile /etc/mosquitto/certs/broker.crt",
                      f"certfile {d}/certs/server.crt"),
                     ("keyfile /etc/mosquitto/certs/broker.key",
                      f"keyfile {d}/certs/server.key")):
        ours = _replace_once(ours, old, new, "ballpass.conf")
    # each listener names the same password file and ACL
    ours = ours.replace("file /etc/mosquitto/ballpass.passwd", f"file {d}/ballpass.passwd")
    ours = ours.replace("acl_file /etc/mosquitto/ballpass.acl", f"acl_file {d}/ballpass.acl")
    (d / "conf.d" / "ballpass.conf").write_text(ours, encoding="utf-8")
    (d / "mosquitto.conf").write_text(main, encoding="utf-8")
    # What the install instructions create: logins and the ACL, owned by mosquitto.
    (d / "ballpass.passwd").write_text(
        "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in AUTH_USERS.items()))
    (d / "ballpass.acl").write_text(acl_text(("stream",), ("ops",)))
    mosq = pwd.getpwnam("mosquitto")
    for p in [d, *d.rglob("*")]:
        os.chown(p, mosq.pw_uid, mosq.pw_gid)
    for p in (d / "ballpass.passwd", d / "certs" / "server.key"):
        p.chmod(0o600)
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                log = (d / "mosquitto.log").read_text() if (d / "mosquitto.log").exists() \
                    else ""
                raise AssertionError(f"mosquitto exited {proc.returncode}: {out}{log}")
            return _connects(port) and _connects(tls_port)
        _wait(up, "the broker's listeners")
        assert _mqtt_connect_rc(port, "gw1", None) == 0
        tls = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        assert _mqtt_connect_rc(tls_port, "gw1", tls) == 0
        for p in (port, tls_port):
            assert _anonymous_rc(p, tls if p == tls_port else None) == 5  # not authorized
        # From the network (this host's own non-loopback address) the plain listener is
        # not there at all, so no password crosses the network in clear text.
        lan = _lan_address()
        assert _connects(tls_port, lan)
        assert not _connects(port, lan), f"plain listener reachable on {lan}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _anonymous_rc(port: int, tls: ssl.SSLContext | None) -> object:
    body = b"\x00\x04MQTT\x04\x02\x00\x05\x00\x06t-anon"
    reply = _exchange(port, tls, b"\x10" + bytes([len(body)]) + body)
    return reply[3] if len(reply) == 4 and reply[0] == 0x20 else f"no CONNACK: {reply!r}"
