"""Credential rotation without a restart: the gateway re-reads its password file and
rebuilds its TLS context from the files at every (re)connect.

Real mosquitto, real `ballpass gateway` process (password) and the real publisher over
TLS with openssl-made certificates (a whole PKI rotated: new CA, server and client
certificates). No window is lost across the rotation.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import AUTH_USERS
from gateway_proc import AuthSubscriber, outbox_counters, wait_for, write_site
from plant import spawn_ballpass
from test_publisher import FAST, make_window
from test_tls import make_pki

from ballpass import topics
from ballpass.config import BrokerConfig
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.status import Status
from ballpass.services import Mosquitto


def _replace(path: Path, text: str) -> None:
    """How an admin should rotate a secret: write beside it, then rename over it."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _assert_no_gaps(got: dict[str, set[int]], captured: int) -> None:
    assert sum(len(v) for v in got.values()) == captured
    for sensor, seqs in got.items():
        assert seqs == set(range(min(seqs), max(seqs) + 1)), f"{sensor}: gap in seqs"


def test_password_rotated_on_broker_and_gateway_no_restart_no_loss(
        mosquitto_auth: Mosquitto, tmp_path: Path) -> None:
    broker = mosquitto_auth
    pw_file, site, outbox = tmp_path / "gw1.password", tmp_path / "site.toml", tmp_path / "o.sq"
    pw_file.write_text(AUTH_USERS["gw1"] + "\n")
    write_site(site, broker.port, outbox, password_file=pw_file)
    sub = AuthSubscriber(broker.host, broker.port, "stream", AUTH_USERS["stream"])
    log = tmp_path / "gateway.log"
    gw = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"], log)
    try:
        wait_for(lambda: outbox_counters(outbox).get("published", 0) >= 10, 20,
                 "windows published with the first password")
        # The admin rotates: the gateway's file first, then the broker's password file
        # (mosquitto_passwd) and a broker reload, which disconnects the gateway (its old
        # password no longer matches).
        _replace(pw_file, "rotated-pw-2\n")
        subprocess.run(["mosquitto_passwd", "-b", str(broker.workdir / "passwd"), "gw1",
                        "rotated-pw-2"], check=True, capture_output=True)
        os.kill(broker.pid or 0, signal.SIGHUP)
        wait_for(lambda: "broker_credentials_changed" in log.read_text(), 15,
                 "the gateway to read the new password")
        at = outbox_counters(outbox)["published"]
        wait_for(lambda: outbox_counters(outbox)["published"] >= at + 20, 20,
                 "windows published with the rotated password")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
    text = log.read_text()
    assert "broker_disconnected" in text and "changed=password" in text, text[-3000:]
    final = outbox_counters(outbox)
    assert final["queued"] == 0 and final["dropped"] == 0
    assert final["captured"] == final["published"]
    wait_for(lambda: sub.count() >= final["captured"], 15, "every window at the subscriber")
    sub.close()
    _assert_no_gaps(sub.snapshot(), final["captured"])


def test_tls_pki_rotated_ca_client_cert_and_key(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Broker and gateway move to a new CA (new server and client certificates, new key);
    the gateway's files are replaced in place, the broker restarts on the new ones."""
    old, new = make_pki(tmp_path / "pki-old"), make_pki(tmp_path / "pki-new")
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()

    def install(pki: dict[str, Path]) -> None:
        for name in ("ca.crt", "client.crt", "client.key"):
            shutil.copy(pki[name], gw_dir / f"{name}.new")
            os.replace(gw_dir / f"{name}.new", gw_dir / name)

    def tls(pki: dict[str, Path]) -> dict[str, object]:
        return {"cafile": pki["ca.crt"], "certfile": pki["server.crt"],
                "keyfile": pki["server.key"], "require_certificate": True}

    install(old)
    broker = Mosquitto(tmp_path / "mq", users=AUTH_USERS, tls=tls(old))
    broker.start()
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    status = Status("plant1", "gw1", ["s1"], box.counters)
    config = BrokerConfig(host="127.0.0.1", port=broker.tls_port or 0, tls=True,
                          ca_file=gw_dir / "ca.crt", cert_file=gw_dir / "client.crt",
                          key_file=gw_dir / "client.key", keepalive_s=5)
    pub = Publisher(config, "plant1", "gw1", box, status, username="gw1",
                    password_source=lambda: AUTH_USERS["gw1"],
                    settings=PublisherSettings(**FAST))
    seq = 0

    def put(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            box.put("s1", seq, topics.window("plant1", "gw1", "s1"), make_window(seq))

    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    pub.start()
    try:
        put(5)
        wait_for(lambda: box.counters()["published"] >= 5, 10, "publish with the old PKI")
        install(new)
        broker.stop()
        broker.tls = tls(new)
        broker.start()  # same TLS port (kept by the object), new CA and server cert
        put(5)  # queued during the switch: nothing may be lost
        wait_for(lambda: box.counters()["published"] >= 10, 20, "publish with the new PKI")
        assert pub.stats["connects"] >= 2
    finally:
        pub.stop(drain_timeout_s=1)
        broker.stop()
    c = box.counters()
    box.close()
    assert c["published"] == 10 and c["queued"] == 0 and c["dropped"] == 0
    changed = [r.getMessage() for r in caplog.records
               if "broker_credentials_changed" in r.getMessage()]
    assert changed and "changed=ca,cert,key" in changed[0], changed


def test_unreadable_password_file_is_retried_not_fatal(mosquitto_auth: Mosquitto,
                                                       tmp_path: Path) -> None:
    """Mid-rotation the file may be missing: logged, retried with backoff, then used."""
    pw_file = tmp_path / "gw1.password"  # does not exist yet
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    box.put("s1", 1, topics.window("plant1", "gw1", "s1"), make_window(1))
    status = Status("plant1", "gw1", ["s1"], box.counters)
    b = mosquitto_auth
    pub = Publisher(BrokerConfig(host=b.host, port=b.port, keepalive_s=5), "plant1", "gw1",
                    box, status, username="gw1",
                    password_source=lambda: pw_file.read_text().strip(),
                    settings=PublisherSettings(**FAST))
    pub.start()
    try:
        time.sleep(0.5)
        assert not pub.connected and pub.alive
        pw_file.write_text(AUTH_USERS["gw1"])
        assert pub.wait_connected(10)
        wait_for(lambda: box.counters()["published"] == 1, 5, "the PUBACK")
    finally:
        pub.stop(drain_timeout_s=1)
        box.close()
