"""What the scale-out tests share: the site, its gateways' MQTT clients and windows."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from ballpass import topics, wire
from ballpass.demo_cluster import cluster_toml
from ballpass.models.catalog import lookup
from ballpass.services import Mosquitto
from ballpass.simulators.signals import synthesize

FS_HZ, N, SHAFT_HZ = 25600.0, 8192, 25.0
PARTITIONS = 8
PASSWORDS = {"gw1": "gw1-pw", "gw2": "gw2-pw", "stream": "stream-pw", "watch": "watch-pw"}
USERS = {"gw1": (PASSWORDS["gw1"], "gateway"), "gw2": (PASSWORDS["gw2"], "gateway"),
         "stream": (PASSWORDS["stream"], "stream")}
SENSORS = {"gw1": ["a", "b", "c"], "gw2": ["d", "e", "f"]}
FAULTY = "f"  # an outer-race fault: raises an alarm


def site_toml(path: Path, servers: list[str], broker: Mosquitto, influx_url: str, db: str,
              state: Path, hook_url: str, cluster_extra: str = "", site: str = "s1") -> Path:
    """The test site: gateways gw1 and gw2 with three simulated sensors each, one motor,
    a webhook, and a [cluster] of `servers` (plus `cluster_extra` lines)."""
    (path.parent / "stream.pw").write_text(PASSWORDS["stream"] + "\n")
    gateways = "".join(
        f'[[gateway]]\nid = "{g}"\n' + "".join(
            f'[[gateway.sensor]]\nid = "{s}"\ndriver = "simulated"\nasset = "m"\n'
            f"fs_hz = {FS_HZ}\nwindow_samples = {N}\ninterval_s = 1\n" for s in ids)
        for g, ids in SENSORS.items())
    section = cluster_toml(servers, username="stream", password_file=path.parent / "stream.pw",
                           partitions=PARTITIONS, lease_s=3)
    path.write_text(f"""[site]
id = "{site}"
[broker]
host = "127.0.0.1"
port = {broker.port}
[influx]
url = "{influx_url}"
db = "{db}"
[stream]
state_dir = "{state}"
batch_wait_s = 0.1
username = "stream"
password_file = "{path.parent / 'stream.pw'}"
{section}{cluster_extra}
[[asset]]
id = "m"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = {SHAFT_HZ}
[[webhook]]
url = "{hook_url}"
{gateways}""", encoding="utf-8")
    return path


def windows(sensor: str, count: int) -> list[bytes]:
    orders = lookup("SKF 6205").orders()
    rng = np.random.default_rng(abs(hash(sensor)) % 2**32)
    condition = "outer_race" if sensor == FAULTY else "normal"
    base = [synthesize(condition, orders, SHAFT_HZ, FS_HZ, N, rng=rng, severity=3.0)
            for _ in range(4)]
    t0 = time.time_ns() - count * 10**9
    return [wire.encode(wire.Window(seq, t0 + seq * 10**9, FS_HZ,
                                    base[seq % 4][None, :].astype(np.float32)))
            for seq in range(count)]


class Gateway:
    """A gateway's MQTT client on one node: QoS 1, its own login; counts PUBACKs."""

    def __init__(self, gateway: str, port: int, name: str = "pub", site: str = "s1") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"{gateway}-{name}", clean_session=False)
        self.client.username_pw_set(gateway, PASSWORDS[gateway])
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(20), f"{gateway}: no CONNACK from port {port}"
        self.gateway = gateway
        self.site = site

    def publish(self, sensor: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topics.window(self.site, self.gateway, sensor), payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
