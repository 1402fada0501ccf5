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
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from natsplant import (
    FAULTY,
    PARTITIONS,
    PASSWORDS,
    SENSORS,
    USERS,
    Gateway,
    Hooks,
    site_toml,
    windows,
)
from plant import query_rows, read_status, spawn_ballpass, stop_gently, wait_until

from ballpass import topics
from ballpass.nats_server import NatsCluster, NatsEdge
from ballpass.services import Influxd, Mosquitto
from ballpass.stream.cluster.relay import order_key, waves
from ballpass.stream.mqtt_source import Delivery


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
        gateways = [Gateway("gw1", cluster.addresses[i].mqtt_port, f"n{i}")
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


def _hold(port: int) -> socket.socket:
    """Listen on `port`, as another process that took it after it was picked would."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_first_start_moves_to_fresh_ports_when_a_picked_port_is_taken(
        tmp_path: Path) -> None:
    """Ports are picked before any node starts (routes name them all); one taken in
    between (by a parallel test, say) costs a retry on new ports, not the run."""
    cluster = NatsCluster(tmp_path / "nats", users=USERS, partitions=PARTITIONS)
    taken = cluster.addresses[1].cluster_port  # n1 starts, n2 cannot bind its route
    edge = NatsEdge(tmp_path / "edge", "plant1", ["127.0.0.1:1"],
                    users={"stream": (PASSWORDS["stream"], "stream")},
                    hub_login=("stream", PASSWORDS["stream"]), partitions=PARTITIONS)
    edge_taken = edge.http_port
    with _hold(taken), _hold(edge_taken):
        try:
            cluster.start()
            edge.start()
            assert all(n.running for n in cluster.nodes)
            assert taken not in {a.cluster_port for a in cluster.addresses}
            assert edge.running and edge.http_port != edge_taken
            before = edge.port, edge.http_port
            edge.kill()
            edge.start()  # a restart keeps the ports its clients know
            assert (edge.port, edge.http_port) == before
        finally:
            edge.stop()
            cluster.stop()


@pytest.mark.slow
def test_kill9_node_and_worker_mid_run(cluster: NatsCluster, tmp_path: Path,
                                       influxd: Influxd, influx_db: tuple[str, str]) -> None:
    """Two workers, kill -9 of one NATS node and one worker mid-run, both restarted: every
    window is written, each sensor's online model saw each window exactly once and in order
    (it continues across the move, not relearned), the alarm reached the webhook once.

    Gateways publish to mosquitto, which one worker at a time relays (stream/cluster/relay.py).
    """
    url, db = influx_db
    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS, operator_users=("watch",))
    broker.start()
    watched: list[mqtt.MQTTMessage] = []
    watch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
    watch.username_pw_set("watch", PASSWORDS["watch"])
    watch.on_message = lambda _c, _u, m: watched.append(m)
    watch.connect("127.0.0.1", broker.port)
    watch.subscribe([(topics.diagnosis("s1", "+", "+"), 1), (topics.alerts("s1"), 1)])
    watch.loop_start()
    Hooks.received = []
    hooks = HTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    site = site_toml(tmp_path / "site.toml", cluster.urls, broker, url, db, tmp_path / "state",
                 f"http://127.0.0.1:{hooks.server_port}/hook")
    count = 40
    payloads = {s: windows(s, count) for ids in SENSORS.values() for s in ids}

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
        gws = {g: Gateway(g, broker.port) for g in SENSORS}
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
        firing = Counter((a["alert_id"], a["status"]) for a in Hooks.received
                         if a.get("sensor") == FAULTY)
        assert firing, "the faulty sensor's alarm never reached the webhook"
        assert all(n == 1 for n in firing.values()), firing
        # The relay carried the workers' messages back to mosquitto, alerts once each.
        diagnosed = {json.loads(m.payload)["sensor"] for m in watched
                     if m.topic.endswith("/diagnosis")}
        assert diagnosed == set(payloads), diagnosed
        on_mqtt = Counter((a["alert_id"], a["status"]) for a in
                          (json.loads(m.payload) for m in watched
                           if m.topic == topics.alerts("s1")) if a["sensor"] == FAULTY)
        assert on_mqtt == firing, (on_mqtt, firing)
    finally:
        watch.loop_stop()
        watch.disconnect()
        stop_gently([proc for proc, _ in workers])
        hooks.shutdown()
        hooks.server_close()
        broker.stop()


@given(st.lists(st.tuples(st.sampled_from(["gw1/a", "gw1/b", "gw2/c", "gw2"]),
                          st.sampled_from(["window", "tacho", "status"])), max_size=40))
def test_relay_waves_keep_each_sensors_order(items: list[tuple[str, str]]) -> None:
    """The relay's waves (published one after the other, each concurrently): every message
    once, at most one per sensor in a wave, and a sensor's messages in their order."""
    batch = [(Delivery(f"bp/v1/s1/{where}/{leaf}", b"", 1, mid, 1), mid)
             for mid, (where, leaf) in enumerate(items)]
    out = waves(batch)
    flat = [mid for wave in out for _, mid in wave]
    assert sorted(flat) == list(range(len(batch)))
    for wave in out:
        keys = [order_key(d.topic) for d, _ in wave]
        assert len(keys) == len(set(keys)), keys
        assert [mid for _, mid in wave] == sorted(mid for _, mid in wave)
    sent = [(order_key(d.topic), mid) for wave in out for d, mid in wave]
    for key in {k for k, _ in sent}:
        assert [mid for k, mid in sent if k == key] == \
            [mid for d, mid in batch if order_key(d.topic) == key]
    per_key = Counter(order_key(d.topic) for d, _ in batch)
    assert len(out) == max(per_key.values(), default=0)  # no more waves than needed
