"""The scale-out on a real 3-node NATS JetStream cluster (docs/scale-out.md).

Real nats-server nodes (the cluster extra's binary), real influxd, `ballpass stream
--engine nats` workers as processes, gateways publishing over MQTT to the nodes' MQTT
listeners; kill -9 of a node and of a worker mid-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import nats
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from plant import query_rows, read_status, spawn_ballpass, wait_until

from ballpass import topics, wire
from ballpass.models.catalog import lookup
from ballpass.nats_server import NatsCluster
from ballpass.services import Influxd, Mosquitto
from ballpass.simulators.signals import synthesize

FS_HZ, N, SHAFT_HZ = 25600.0, 8192, 25.0
PARTITIONS = 8
PASSWORDS = {"gw1": "gw1-pw", "gw2": "gw2-pw", "stream": "stream-pw"}
USERS = {"gw1": (PASSWORDS["gw1"], "gateway"), "gw2": (PASSWORDS["gw2"], "gateway"),
         "stream": (PASSWORDS["stream"], "stream")}
SENSORS = {"gw1": ["a", "b", "c"], "gw2": ["d", "e", "f"]}
FAULTY = "f"  # an outer-race fault: raises an alarm


def _site(path: Path, cluster: NatsCluster, broker: Mosquitto, influx_url: str, db: str,
          state: Path, hook_url: str) -> Path:
    (path.parent / "stream.pw").write_text(PASSWORDS["stream"] + "\n")
    gateways = "".join(
        f'[[gateway]]\nid = "{g}"\n' + "".join(
            f'[[gateway.sensor]]\nid = "{s}"\ndriver = "simulated"\nasset = "m"\n'
            f"fs_hz = {FS_HZ}\nwindow_samples = {N}\ninterval_s = 1\n" for s in ids)
        for g, ids in SENSORS.items())
    servers = ", ".join(f'"{u}"' for u in cluster.urls)
    path.write_text(f"""[site]
id = "s1"
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
[cluster]
servers = [{servers}]
username = "stream"
password_file = "{path.parent / 'stream.pw'}"
partitions = {PARTITIONS}
lease_s = 3
[[asset]]
id = "m"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = {SHAFT_HZ}
[[webhook]]
url = "{hook_url}"
{gateways}""", encoding="utf-8")
    return path


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _windows(sensor: str, count: int) -> list[bytes]:
    orders = lookup("SKF 6205").orders()
    rng = np.random.default_rng(abs(hash(sensor)) % 2**32)
    condition = "outer_race" if sensor == FAULTY else "normal"
    base = [synthesize(condition, orders, SHAFT_HZ, FS_HZ, N, rng=rng, severity=3.0)
            for _ in range(4)]
    t0 = time.time_ns() - count * 10**9
    return [wire.encode(wire.Window(seq, t0 + seq * 10**9, FS_HZ,
                                    base[seq % 4][None, :].astype(np.float32)))
            for seq in range(count)]


class _Gateway:
    """A gateway's MQTT client on one node: QoS 1, its own login; counts PUBACKs."""

    def __init__(self, gateway: str, port: int, name: str = "pub") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"{gateway}-{name}", clean_session=False)
        self.client.username_pw_set(gateway, PASSWORDS[gateway])
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(20), f"{gateway}: no CONNACK from port {port}"
        self.gateway = gateway

    def publish(self, sensor: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topics.window("s1", self.gateway, sensor), payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path):
    c = NatsCluster(tmp_path / "nats", users=USERS, partitions=PARTITIONS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_mapping_partitions_by_sensor_and_binds_gateways(cluster: NatsCluster) -> None:
    """A window published over MQTT to any node lands on its sensor's partition subject,
    always the same one; a gateway's login cannot publish another gateway's windows."""

    async def main() -> list[str]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        got: list[str] = []

        async def seen(m: Any) -> None:
            got.append(m.subject)

        await nc.subscribe("bpw.>", cb=seen)
        await nc.flush()
        gateways = [_Gateway("gw1", cluster.addresses[i].mqtt_port, f"n{i}")
                    for i in range(3)]
        for i, gw in enumerate(gateways):
            for sensor in ("a", "b", "c"):
                info = gw.publish(sensor, b"w%d" % i)
                info.wait_for_publish(5)
                assert info.is_published()
        # gw1's login, gw2's topic: refused by the server (its PUBACK does not mean stored).
        forged = gateways[0].client.publish(topics.window("s1", "gw2", "d"), b"x", qos=1)
        forged.wait_for_publish(5)
        await asyncio.sleep(1.0)
        for gw in gateways:
            gw.close()
        await nc.close()
        return got

    got = asyncio.run(main())
    by_sensor: dict[str, set[str]] = {}
    for subject in got:
        _, p, site, gateway, sensor, leaf = subject.split(".")
        assert (site, gateway, leaf) == ("s1", "gw1", "window"), subject
        assert 0 <= int(p) < PARTITIONS
        by_sensor.setdefault(sensor, set()).add(p)
    assert len(got) == 9  # 3 sensors x 3 nodes, nothing of the forged gw2 window
    assert all(len(ps) == 1 for ps in by_sensor.values()), by_sensor


@pytest.mark.slow
def test_kill9_node_and_worker_mid_run(cluster: NatsCluster, tmp_path: Path,
                                       influxd: Influxd, influx_db: tuple[str, str]) -> None:
    """Two workers, kill -9 of one NATS node and one worker mid-run, both restarted: every
    window is written, each sensor's online model saw each window exactly once and in order
    (it continues across the move, not relearned), the alarm reached the webhook once.

    Gateways publish to mosquitto, which one worker at a time relays (stream/cluster/relay.py).
    """
    url, db = influx_db
    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS)
    broker.start()
    _Hooks.received = []
    hooks = HTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    site = _site(tmp_path / "site.toml", cluster, broker, url, db, tmp_path / "state",
                 f"http://127.0.0.1:{hooks.server_port}/hook")
    count = 40
    payloads = {s: _windows(s, count) for ids in SENSORS.values() for s in ids}

    def worker(i: int) -> tuple[subprocess.Popen[bytes], Path]:
        status = tmp_path / f"status-{i}.json"
        # Each worker its own state dir, as on its own machine.
        text = site.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                        f'state_dir = "{tmp_path / f"state-{i}"}"')
        own = tmp_path / f"site-{i}.toml"
        own.write_text(text)
        return spawn_ballpass(["stream", "-c", str(own), "--engine", "nats",
                               "--status-file", str(status)],
                              tmp_path / f"worker-{i}.log"), status

    workers = [worker(0), worker(1)]
    try:
        wait_until(lambda: all((read_status(s).get("cluster") or {}).get("partitions")
                               for _, s in workers), 60, "both workers holding partitions")
        gws = {g: _Gateway(g, broker.port) for g in SENSORS}
        infos = []
        for seq in range(count):
            for g, ids in SENSORS.items():
                for s in ids:
                    infos.append(gws[g].publish(s, payloads[s][seq]))
            time.sleep(0.1)
            if seq == count // 3:
                _kill9(workers[0][0])
                cluster.nodes[2].kill()
            if seq == 2 * count // 3:
                cluster.nodes[2].start()
                workers[0] = worker(0)
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
        for gw in gws.values():
            gw.close()

        def written() -> int:
            rows = query_rows(influxd, db, "SELECT count(seq) FROM vibration "
                                           "GROUP BY sensor")
            return sum(r["count"] for r in rows)

        total = count * sum(len(ids) for ids in SENSORS.values())
        try:
            wait_until(lambda: written() == total, 120, f"{total} windows in InfluxDB")
        except AssertionError:
            rows = query_rows(influxd, db, "SELECT seq, sensor FROM vibration")
            have: dict[str, set[int]] = {}
            for r in rows:
                have.setdefault(r["sensor"], set()).add(int(r["seq"]))
            missing = {s: sorted(set(range(count)) - have.get(s, set())) for s in payloads}
            raise AssertionError(f"windows missing in InfluxDB: {missing}") from None

        def models() -> dict[str, dict[str, Any]]:
            latest: dict[str, dict[str, Any]] = {}
            for _, path in workers:
                for sensor, line in read_status(path).get("sensors", {}).items():
                    if line["seq"] >= latest.get(sensor, {"seq": -1})["seq"]:
                        latest[sensor] = line
            return latest

        wait_until(lambda: all(m["seq"] == count - 1 for m in models().values())
                   and len(models()) == 6, 60, "every sensor's last window in a status")
        time.sleep(3)  # the webhook sender's group wait and a status write
        for sensor, line in models().items():
            online = line["online"]
            assert online["windows"] == count, (sensor, online)  # once each, none lost
            assert online["seq_restart"] == 0, (sensor, online)  # in order
        rows = query_rows(influxd, db, "SELECT count(seq) FROM vibration "
                                       "GROUP BY sensor")
        assert {r["sensor"]: r["count"] for r in rows} == {
            s: count for ids in SENSORS.values() for s in ids}
        firing = Counter((a["alert_id"], a["status"]) for a in _Hooks.received
                         if a.get("sensor") == FAULTY)
        assert firing, "the faulty sensor's alarm never reached the webhook"
        assert all(n == 1 for n in firing.values()), firing
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        hooks.shutdown()
        hooks.server_close()
        broker.stop()
