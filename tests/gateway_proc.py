"""Helpers for tests that run the real `ballpass gateway` process against a real broker:
a site file with simulated sensors, an authenticated subscriber, outbox counters."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ballpass import topics, wire


def write_site(path: Path, port: int, outbox: Path, *, password_file: Path | None = None,
               sensors: str = "", interval_s: float = 0.2, extra_gateway: str = "") -> None:
    """A site `k1` with gateway gw1 and simulated sensors s1, s2 (or `sensors` TOML)."""
    sensors = sensors or "".join(f"""
[[gateway.sensor]]
id = "{s}"
driver = "simulated"
asset = "pump"
fs_hz = 25600
window_samples = 1024
interval_s = {interval_s}
""" for s in ("s1", "s2"))
    pw = f'password_file = "{password_file}"' if password_file else ""
    path.write_text(f"""
[site]
id = "k1"
[broker]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
[[asset]]
id = "pump"
bearing = "SKF 6205"
shaft_hz = 29.95
[[gateway]]
id = "gw1"
{pw}
outbox = {{ path = "{outbox}", flush_rate_per_s = 500 }}
{extra_gateway}
{sensors}""", encoding="utf-8")


def outbox_counters(path: Path) -> dict[str, int]:
    """Counters of a live outbox file read by a second connection ({} before it exists)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return {}
    try:
        c = dict(db.execute("SELECT name, value FROM counters").fetchall())
        c["queued"] = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return c


class AuthSubscriber:
    """Records window (sensor, seq) pairs with a persistent MQTT 5 session as `user`."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 topic_filter: str = "bp/v1/+/+/+/window") -> None:
        self.seqs: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                        client_id=f"test-sub-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.reconnect_delay_set(0.05, 0.2)
        c.on_connect = lambda cl, *_: cl.subscribe(topic_filter, qos=1)
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect(host, port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_sensor_topic(msg.topic)
        if parsed is None:
            return
        seq = wire.decode(msg.payload).seq
        with self.lock:
            self.seqs.setdefault(parsed.sensor, set()).add(seq)

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.seqs.values())

    def snapshot(self) -> dict[str, set[int]]:
        with self.lock:
            return {k: set(v) for k, v in self.seqs.items()}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
