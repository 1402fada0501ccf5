"""A plant's NATS leaf node keeps the plant's windows while its link to the central
cluster is down, and the central workers get them afterwards (docs/scale-out.md, Edge
sites). Real nodes: a 3-node central cluster, one leaf node behind a TCP link the test
cuts for 60 s, mosquitto, `ballpass relay` at the plant, a central worker, influxd.
The relay runs under the systemd notify protocol, as deploy/ballpass-relay.service runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest
from linkcut import LinkCut
from natsplant import (
    FAULTY,
    PARTITIONS,
    PASSWORDS,
    SENSORS,
    USERS,
    Gateway,
    site_toml,
    windows,
)
from notify_socket import NotifySocket
from plant import query_rows, read_status, spawn_ballpass, stop_gently, wait_until

from ballpass import topics
from ballpass.config import ConfigError, load
from ballpass.demo import WebhookReceiver
from ballpass.nats_server import EDGE_LOCAL_SUBJECTS, NatsCluster, NatsEdge, edge_config
from ballpass.services import Influxd, Mosquitto

LINK_DOWN_S = 60.0


def test_edge_config_keeps_the_plants_streams_local(tmp_path: Path) -> None:
    """Windows, status and commands never cross the leaf link live (the central streams
    source the plant's, a live copy would be stored twice); the login is URL-quoted."""
    conf = edge_config("plant1", "127.0.0.1", 4222, 8222, tmp_path, users={},
                       partitions=8, domain="plant1", hub_urls=["hub1:7422", "hub2:7422"],
                       hub_user="stream", hub_password="p@ss:w/rd")
    assert conf["jetstream"]["domain"] == "plant1"
    [remote] = conf["leafnodes"]["remotes"]
    assert remote["deny_exports"] == remote["deny_imports"] == list(EDGE_LOCAL_SUBJECTS)
    assert remote["urls"] == ["nats-leaf://stream:p%40ss%3Aw%2Frd@hub1:7422",
                              "nats-leaf://stream:p%40ss%3Aw%2Frd@hub2:7422"]
    assert "bpw.>" in EDGE_LOCAL_SUBJECTS


@pytest.mark.parametrize("edges, message", [
    ('["Plant 1"]', "cluster.edges: each edge is a JetStream domain"),
    ('["p1", "p1"]', "cluster.edges: lists an edge twice"),
])
def test_cluster_edges_are_validated(tmp_path: Path, edges: str, message: str) -> None:
    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nid = "s1"\n[cluster]\nedges = {edges}\n')
    with pytest.raises(ConfigError) as e:
        load(path)
    assert message in str(e.value)


def _edge_messages(url: str) -> int:
    async def main() -> int:
        nc = await nats.connect(url, user="stream", password=PASSWORDS["stream"])
        try:
            return (await nc.jetstream().stream_info("WINDOWS")).state.messages
        finally:
            await nc.close()
    return asyncio.run(main())


@pytest.mark.slow
@pytest.mark.xdist_group("outage_60s")  # idle waits: share one worker (pyproject)
def test_leaf_link_cut_60s_loses_nothing(tmp_path: Path, influxd: Influxd,
                                         influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    hub = NatsCluster(tmp_path / "hub", users=USERS, partitions=PARTITIONS, domain="hub",
                      leaf_ports=True)
    hub.start()
    link = LinkCut(hub.leaf_ports[0])
    link.start()
    edge = NatsEdge(tmp_path / "edge", "plant1", [f"127.0.0.1:{link.port}"],
                    users={"stream": (PASSWORDS["stream"], "stream")},
                    hub_login=("stream", PASSWORDS["stream"]), partitions=PARTITIONS)
    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS, operator_users=("watch",))
    watched: list[mqtt.MQTTMessage] = []
    watch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
    hooks = WebhookReceiver()
    hooks.start()
    procs: list[subprocess.Popen[bytes]] = []
    notify = NotifySocket()
    try:
        edge.start()
        broker.start()
        watch.username_pw_set("watch", PASSWORDS["watch"])
        watch.on_message = lambda _c, _u, m: watched.append(m)
        watch.connect("127.0.0.1", broker.port)
        watch.subscribe([(topics.diagnosis("s1", "+", "+"), 1), (topics.alerts("s1"), 1)])
        watch.loop_start()
        hook = hooks.url
        central = site_toml(tmp_path / "central.toml", hub.urls, broker, url, db,
                            tmp_path / "state-central", hook, 'edges = ["plant1"]')
        plant = site_toml(tmp_path / "plant.toml", [edge.nats_url], broker, url, db,
                          tmp_path / "state-plant", hook, "replicas = 1")
        relay_status, worker_status = tmp_path / "relay.json", tmp_path / "worker.json"
        procs.append(spawn_ballpass(["relay", "-c", str(plant), "--status-file",
                                     str(relay_status)], tmp_path / "relay.log",
                                    dict(os.environ, NOTIFY_SOCKET=notify.name,
                                         WATCHDOG_USEC="2000000")))
        procs.append(spawn_ballpass(["stream", "-c", str(central), "--engine", "nats",
                                     "--status-file", str(worker_status)],
                                    tmp_path / "worker.log"))
        wait_until(lambda: (read_status(worker_status).get("cluster") or {}).get("partitions")
                   and read_status(relay_status).get("mqtt_connected"), 60,
                   "the worker holding partitions and the relay connected")
        assert read_status(worker_status)["cluster"]["relay"] is False  # the plant relays
        assert notify.index("READY=1") is not None

        count, before = 30, 10
        payloads = {s: windows(s, count) for ids in SENSORS.values() for s in ids}
        sensors = len(payloads)
        gws = {g: Gateway(g, broker.port) for g in SENSORS}

        def publish(seqs: range, pause_s: float) -> None:
            infos = []
            for seq in seqs:
                for g, ids in SENSORS.items():
                    infos += [gws[g].publish(s, payloads[s][seq]) for s in ids]
                time.sleep(pause_s)
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published()

        def written() -> int:
            rows = query_rows(influxd, db, "SELECT count(seq) FROM vibration GROUP BY sensor")
            return sum(r["count"] for r in rows)

        publish(range(before), 0.1)
        wait_until(lambda: written() == before * sensors, 90, "the first windows written")

        link.cut()
        cut_at = time.monotonic()
        publish(range(before, count), 1.0)  # the plant goes on capturing while cut off
        wait_until(lambda: _edge_messages(edge.nats_url) == count * sensors, 20,
                   "every window stored on the leaf node")
        time.sleep(max(0.0, LINK_DOWN_S - (time.monotonic() - cut_at)))
        assert written() == before * sensors  # nothing reached the centre meanwhile
        relayed = read_status(relay_status)["relay"]
        assert relayed["relayed"] == count * sensors, relayed
        # The relay's loop kept feeding its watchdog (every 1 s) while the link was down.
        assert len([t for t in notify.times("WATCHDOG=1") if t > cut_at]) >= LINK_DOWN_S / 2
        link.restore()

        wait_until(lambda: written() == count * sensors, 150,
                   f"{count * sensors} windows in InfluxDB after the link came back")
        rows = query_rows(influxd, db, "SELECT count(seq) FROM vibration GROUP BY sensor")
        assert {r["sensor"]: r["count"] for r in rows} == dict.fromkeys(payloads, count)

        def models() -> dict[str, Any]:
            return read_status(worker_status).get("sensors", {})

        wait_until(lambda: len(models()) == sensors
                   and all(m["seq"] == count - 1 for m in models().values()), 30,
                   "every sensor's last window in the worker's status")
        for sensor, line in models().items():
            assert line["online"]["windows"] == count, (sensor, line["online"])  # once each
            assert line["online"]["seq_restart"] == 0, (sensor, line["online"])  # in order
        # The workers' diagnoses came back over the leaf link to the plant's mosquitto.
        wait_until(lambda: {json.loads(m.payload)["sensor"] for m in watched
                            if m.topic.endswith("/diagnosis")} == set(payloads), 30,
                   "every sensor's diagnosis on the plant's mosquitto")
        time.sleep(3)  # the webhook sender's group wait
        firing = Counter((a["alert_id"], a["status"]) for a in hooks.received
                         if a.get("sensor") == FAULTY)
        assert firing and all(n == 1 for n in firing.values()), firing
        stop_gently(procs[:1])
        assert procs[0].returncode == 0 and notify.index("STOPPING=1") is not None
    finally:
        notify.close()
        watch.loop_stop()
        stop_gently(procs)
        hooks.stop()
        link.cut()
        for service in (broker, edge):
            service.stop()
        hub.stop()
