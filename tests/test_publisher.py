"""The gateway publisher against a real mosquitto: order, outages, status, last will."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from linkcut import LinkCut
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from plant import wait_until

from ballpass import topics, wire
from ballpass.config import BrokerConfig
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.status import Status
from ballpass.services import Mosquitto, free_port

SITE = "plant1"
FAST = dict(backoff_initial_s=0.1, backoff_max_s=0.5, status_interval_s=0.5)


class Subscriber:
    """Collects messages of `topic_filter` (paho thread), with a persistent v5 session so
    nothing published while it reconnects after a broker restart is lost."""

    def __init__(self, host: str, port: int, topic_filter: str, name: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{name}",
                        protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.05, 0.2)
        c.on_connect = lambda cl, *_: cl.subscribe(topic_filter, qos=1)
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect(host, port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def snapshot(self) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool],
                 timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.snapshot()
            if predicate(msgs):
                return msgs
            time.sleep(0.02)
        raise AssertionError(f"timed out; got {len(self.snapshot())} messages")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_window(seq: int, t0_ns: int | None = None) -> bytes:
    samples = np.sin(np.arange(256) * 0.1 * (seq % 7 + 1))[np.newaxis, :]
    return wire.encode(wire.Window(seq=seq, t0_ns=t0_ns or time.time_ns(), fs_hz=25600.0,
                                   samples=samples))


def make_publisher(broker_host: str, port: int, gateway: str, box: Outbox,
                   **settings: float) -> tuple[Publisher, Status]:
    status = Status(SITE, gateway, ["s1", "s2"], box.counters)
    pub = Publisher(BrokerConfig(host=broker_host, port=port, keepalive_s=5), SITE, gateway,
                    box, status, username=gateway,
                    settings=PublisherSettings(**{**FAST, **settings}))
    return pub, status


def status_of(msgs: list[mqtt.MQTTMessage]) -> list[dict]:
    return [json.loads(m.payload) for m in msgs if m.topic.endswith("/status")]


def test_windows_arrive_once_in_order_and_status_goes_offline(mosquitto, tmp_path: Path
                                                              ) -> None:
    gw = "gw-order"
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    sent: dict[str, list[int]] = {"s1": [], "s2": []}
    for i in range(60):
        sensor = ("s1", "s2")[i % 2]
        seq = box.next_seq(sensor)
        sent[sensor].append(seq)
        box.put(sensor, seq, topics.window(SITE, gw, sensor), make_window(seq))
    pub, _ = make_publisher(mosquitto.host, mosquitto.port, gw, box, flush_rate_per_s=500)
    pub.start()
    try:
        assert pub.wait_connected(5)
        msgs = sub.wait_for(lambda m: sum(x.topic.endswith("/window") for x in m) >= 60)
        time.sleep(0.3)  # anything extra (a duplicate) would arrive now
    finally:
        pub.stop(drain_timeout_s=2)
    msgs = sub.wait_for(lambda m: status_of(m)[-1]["state"] == "offline")
    for sensor in ("s1", "s2"):
        got = [wire.decode(m.payload) for m in msgs
               if m.topic == topics.window(SITE, gw, sensor)]
        assert [w.seq for w in got] == sent[sensor]  # exactly once, in order
        assert not any(w.historical for w in got)
    states = status_of(msgs)
    assert states[0]["state"] == "online"
    final = states[-1]
    assert final["counters"] == {"captured": 60, "queued": 0, "published": 60, "dropped": 0,
                                 "replayed": 0}
    assert box.counters()["queued"] == 0
    box.close()
    sub.close()
    # The retained status a newcomer sees is the final offline one.
    late = Subscriber(mosquitto.host, mosquitto.port, topics.status(SITE, gw), gw + "-late")
    retained = late.wait_for(lambda m: len(m) >= 1)[0]
    assert retained.retain and json.loads(retained.payload)["state"] == "offline"
    late.close()


def test_outage_windows_all_arrive_flagged_historical(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    gw = "gw-outage"
    broker = Mosquitto(tmp_path / "mq", port=free_port(), anonymous=True)
    broker.start()
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    pub, _ = make_publisher(broker.host, broker.port, gw, box, historical_after_s=30)
    sub = Subscriber(broker.host, broker.port, topics.window(SITE, gw, "+"), gw)
    created: dict[int, str] = {}  # seq -> "live" | "boundary" | "outage" | "after"
    phase = ["live"]
    stop = threading.Event()

    def capture() -> None:
        while not stop.wait(0.05):
            seq = box.next_seq("s1")
            created[seq] = phase[0]
            box.put("s1", seq, topics.window(SITE, gw, "s1"), make_window(seq))

    capturer = threading.Thread(target=capture)
    try:
        pub.start()
        assert pub.wait_connected(5)
        capturer.start()
        time.sleep(0.6)
        # Windows around each switch could fall on either side: not checked.
        phase[0] = "boundary"
        broker.stop()
        phase[0] = "outage"
        time.sleep(1.5)
        assert not pub.connected
        phase[0] = "boundary"
        broker.start()
        assert pub.wait_connected(5)
        time.sleep(0.1)
        phase[0] = "after"
        time.sleep(0.5)
        stop.set()
        capturer.join()
        msgs = sub.wait_for(
            lambda m: {wire.decode(x.payload).seq for x in m} >= set(created), timeout=10)
    finally:
        stop.set()
        pub.stop(drain_timeout_s=2)
        sub.close()
        broker.stop()
    windows = [wire.decode(m.payload) for m in msgs]
    seqs = [w.seq for w in windows]
    assert set(seqs) == set(created)  # nothing lost
    first = {}
    for w in windows:
        first.setdefault(w.seq, w)
    outage = [s for s, p in created.items() if p == "outage"]
    assert len(outage) >= 10
    assert [s for s in outage if not first[s].historical] == [], (outage, created)
    assert not any(first[s].historical for s, p in created.items() if p in ("live", "after"))
    # per sensor, what arrives first is in order even across the outage
    order = list(dict.fromkeys(seqs))
    assert order == sorted(order)
    c = box.counters()
    assert c["queued"] == 0 and c["published"] == c["captured"] == len(created)
    assert c["replayed"] >= len(outage)
    box.close()
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "event=broker_disconnected" in log
    assert "Traceback" not in log


def test_unreachable_broker_at_start_is_retried_with_one_line_per_attempt(
        tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    gw = "gw-late"
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    for _ in range(3):
        seq = box.next_seq("s1")
        box.put("s1", seq, topics.window(SITE, gw, "s1"), make_window(seq))
    # The broker runs and the subscriber is on it before the gateway can reach it: the
    # link in between is down (nothing listens on its port), so no window can arrive
    # before someone subscribed to it.
    broker = Mosquitto(tmp_path / "mq", port=free_port(), anonymous=True)
    broker.start()
    link = LinkCut(broker.port)
    pub, _ = make_publisher("127.0.0.1", link.port, gw, box)
    sub = Subscriber(broker.host, broker.port, topics.window(SITE, gw, "+"), gw)
    pub.start()
    try:
        time.sleep(1.0)
        lines = [r.getMessage() for r in caplog.records
                 if "event=broker_unreachable" in r.getMessage()]
        assert len(lines) >= 2
        assert f"host=127.0.0.1 port={link.port} attempt=1 retry_in_s=" in lines[0]
        assert "attempt=2 " in lines[1]
        assert all(r.exc_info is None for r in caplog.records)
        link.restore()
        assert pub.wait_connected(5)
        msgs = sub.wait_for(lambda m: len(m) >= 3)
        # queued while the broker was unreachable: replayed
        assert all(wire.decode(m.payload).historical for m in msgs)
    finally:
        pub.stop(drain_timeout_s=1)
        sub.close()
        link.cut()
        broker.stop()
    assert box.counters()["replayed"] == 3
    box.close()


def test_acl_denied_publish_stays_in_outbox(mosquitto_auth, tmp_path: Path, caplog) -> None:
    """MQTT 5: the broker's 'Not authorized' PUBACK keeps the window, it is not acked."""
    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    box.put("s1", 1, topics.window(SITE, "gw2", "s1"), make_window(1))  # not gw1's prefix
    box.put("s1", 2, topics.window(SITE, "gw1", "s1"), make_window(2))
    status = Status(SITE, "gw1", ["s1"], box.counters)
    pub = Publisher(BrokerConfig(host=mosquitto_auth.host, port=mosquitto_auth.port), SITE,
                    "gw1", box, status, username="gw1",
                    password=mosquitto_auth.users["gw1"], settings=PublisherSettings(**FAST))
    pub.start()
    try:
        wait_until(lambda: box.counters()["published"] >= 1, 5, "the PUBACK", poll_s=0.02)
    finally:
        pub.stop(drain_timeout_s=0.2)
    assert box.counters()["published"] == 1
    assert [e.seq for e in box.peek(10)] == [1]  # the denied one is still there
    assert any(r.getMessage().startswith("event=publish_rejected gateway=gw1 outbox_id=")
               and r.getMessage().endswith(' reason="Not authorized"') for r in caplog.records)
    box.close()


def test_last_will_is_offline_after_kill_9(mosquitto, tmp_path: Path) -> None:
    gw = "gw-killed"
    # The whole gateway (service.run with the simulated driver), as `ballpass gateway` runs it.
    code = textwrap.dedent(f"""
        import threading
        from ballpass.config import parse
        from ballpass.gateway.service import run
        config = parse({{
            "site": {{"id": {SITE!r}}},
            "broker": {{"port": {mosquitto.port}}},
            "asset": [{{"id": "pump1", "kind": "pump", "shaft_hz": 25.0,
                       "bearing": "SKF 6205"}}],
            "gateway": [{{"id": {gw!r}, "sensor": [{{
                "id": "s1", "driver": "simulated", "asset": "pump1", "fs_hz": 25600,
                "window_samples": 4096, "interval_s": 0.5}}]}}],
        }})
        ready = threading.Event()
        threading.Thread(target=lambda: (ready.wait(5), print("ready", flush=True))).start()
        run(config, {gw!r}, threading.Event(), ready=ready, status_interval_s=0.2,
            outbox_path={str(tmp_path / "o.sqlite")!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sub = Subscriber(mosquitto.host, mosquitto.port, topics.status(SITE, gw), gw)
        sub.wait_for(lambda m: any(s["state"] == "online" and s["counters"]["published"] > 0
                                   for s in status_of(m)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        msgs = sub.wait_for(lambda m: status_of(m)[-1]["state"] == "offline", timeout=5)
        will = status_of(msgs)[-1]
        assert will["gateway"] == gw and will["site"] == SITE and "counters" not in will
        sub.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_flush_is_rate_limited(mosquitto, tmp_path: Path) -> None:
    gw = "gw-rate"
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    for _ in range(40):
        seq = box.next_seq("s1")
        box.put("s1", seq, topics.window(SITE, gw, "s1"), make_window(seq))
    sub = Subscriber(mosquitto.host, mosquitto.port, topics.window(SITE, gw, "+"), gw)
    pub, _ = make_publisher(mosquitto.host, mosquitto.port, gw, box, flush_rate_per_s=40,
                            max_inflight=10)
    pub.start()
    try:
        assert pub.wait_connected(5)
        t0 = time.monotonic()
        sub.wait_for(lambda m: len(m) >= 40)
        elapsed = time.monotonic() - t0
    finally:
        pub.stop(drain_timeout_s=1)
        sub.close()
    # a burst of max_inflight, then 40/s for the other 30: about 0.75 s
    assert 0.6 < elapsed < 3.0, elapsed
    box.close()


class TlsMosquitto(Mosquitto):
    """The shared launcher plus certificate lines on its (only) listener."""

    def __init__(self, workdir: Path, certs: dict[str, Path]) -> None:
        super().__init__(workdir, anonymous=True)
        self.certs = certs

    def _prepare(self) -> list[str]:
        argv = super()._prepare()
        with self.config_path.open("a", encoding="utf-8") as f:
            f.write(f"cafile {self.certs['ca']}\ncertfile {self.certs['cert']}\n"
                    f"keyfile {self.certs['key']}\ntls_version tlsv1.2\n")
        return argv

    def _ready(self) -> bool:
        # The base probe speaks plain MQTT to a TLS port; a TCP accept is enough here.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False


def make_certs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=ballpass-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl_cmd("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def test_tls_broker(tmp_path: Path) -> None:
    gw = "gw-tls"
    certs = make_certs(tmp_path / "certs")
    broker = TlsMosquitto(tmp_path / "mq", certs)
    broker.start()
    try:
        box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
        box.put("s1", 7, topics.window(SITE, gw, "s1"), make_window(7))
        status = Status(SITE, gw, ["s1"], box.counters)
        pub = Publisher(BrokerConfig(host="127.0.0.1", port=broker.port, tls=True,
                                     ca_file=certs["ca"]), SITE, gw, box, status,
                        username=gw, settings=PublisherSettings(**FAST))
        pub.start()
        try:
            assert pub.wait_connected(5)
            wait_until(lambda: box.counters()["published"] >= 1, 5, "the PUBACK",
                       poll_s=0.02)
        finally:
            pub.stop(drain_timeout_s=1)
        assert box.counters()["published"] == 1
        box.close()
    finally:
        broker.stop()


def test_in_flight_windows_are_resent_after_the_broker_dies(tmp_path: Path, caplog) -> None:
    """Broker frozen (SIGSTOP) so PUBACKs never come, then killed and restarted: the
    unacknowledged windows are sent again after the reconnect and then acked."""
    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    gw = "gw-inflight"
    broker = Mosquitto(tmp_path / "mq", port=free_port(), anonymous=True)
    broker.start()
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    # the first reconnect waits 0.5-1 s, long enough for the new subscriber to be there
    pub, _ = make_publisher(broker.host, broker.port, gw, box, backoff_initial_s=1.0,
                            backoff_max_s=2.0, max_inflight=20, flush_rate_per_s=1000)
    pub.start()
    sub: Subscriber | None = None
    try:
        assert pub.wait_connected(5)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        for _ in range(30):
            seq = box.next_seq("s1")
            box.put("s1", seq, topics.window(SITE, gw, "s1"), make_window(seq))
        wait_until(lambda: box.in_flight >= 20, 5, "20 windows in flight", poll_s=0.02)
        assert box.in_flight == 20 and box.counters()["published"] == 0
        os.kill(broker.pid, signal.SIGKILL)
        broker.stop()
        broker.start()
        sub = Subscriber(broker.host, broker.port, topics.window(SITE, gw, "+"), gw)
        msgs = sub.wait_for(lambda m: len({wire.decode(x.payload).seq for x in m}) >= 30)
        wait_until(lambda: box.counters()["published"] >= 30, 5, "30 PUBACKs", poll_s=0.02)
    finally:
        pub.stop(drain_timeout_s=1)
        if sub is not None:
            sub.close()
        broker.stop()
    seqs = list(dict.fromkeys(wire.decode(m.payload).seq for m in msgs))
    assert seqs == sorted(seqs) and len(seqs) == 30  # in order, nothing lost
    assert box.counters() == {"captured": 30, "queued": 0, "published": 30, "dropped": 0,
                              "replayed": 0}
    assert any("event=broker_disconnected" in r.getMessage() and "in_flight=20" in
               r.getMessage() for r in caplog.records)
    box.close()
