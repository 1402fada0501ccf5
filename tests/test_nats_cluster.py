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
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import ConsumerConfig
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
from plant import query_rows, read_status, spawn_ballpass, stop_gently, wait_until

from ballpass import topics
from ballpass.config import ClusterConfig
from ballpass.demo import WebhookReceiver
from ballpass.nats_server import NatsCluster, NatsEdge
from ballpass.services import Influxd, Mosquitto
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.relay import order_key, relayable, waves
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
    hooks = WebhookReceiver()
    hooks.start()
    site = site_toml(tmp_path / "site.toml", cluster.urls, broker, url, db, tmp_path / "state",
                 hooks.url)
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
        firing = Counter((a["alert_id"], a["status"]) for a in hooks.received
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
        hooks.stop()
        broker.stop()


def test_sites_share_streams_with_consumers_and_leases_of_their_own(
        cluster: NatsCluster) -> None:
    """Layout 2: each site's consumers read its own subjects; a one-site cluster's layout 1
    consumers are taken over from where they stopped (commands not handled twice); each
    site's edges add to the streams' sources."""

    async def fetch(js: Any, durable: str, stream: str, n: int) -> list[bytes]:
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        try:
            msgs = await sub.fetch(n, timeout=2)
        except TimeoutError:
            return []
        for m in msgs:
            await m.ack()
        return [m.data for m in msgs]

    async def main() -> None:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        js = nc.jetstream(timeout=10)
        plain = ClusterConfig(partitions=PARTITIONS)
        await topology.declare(js, plain, "s0")  # the streams, as layout 1 had them
        await js.add_consumer(topology.WINDOWS, ConsumerConfig(
            durable_name="part-0", filter_subject="bpw.0.>"))
        await js.add_consumer(topology.CONTROL, ConsumerConfig(durable_name="control"))
        for i in range(5):
            await js.publish("bpw.0.s1.gw1.a.window", b"w%d" % i)
            await js.publish("bp.v1.s1.gw1.status", b"st%d" % i)
        assert await fetch(js, "part-0", topology.WINDOWS, 3) == [b"w0", b"w1", b"w2"]
        assert await fetch(js, "control", topology.CONTROL, 2) == [b"st0", b"st1"]

        buckets = await topology.declare(js, ClusterConfig(partitions=PARTITIONS,
                                                           edges=("plant1",)), "s1")
        await topology.take_consumer(js, "s1", 0, 3, 256)
        names = {c.name for c in await js.consumers_info(topology.WINDOWS)}
        assert "part-0" not in names and "s1-part-0" in names, names
        control = {c.name for c in await js.consumers_info(topology.CONTROL)}
        assert "control" not in control, control
        assert await fetch(js, "s1-part-0", topology.WINDOWS, 10) == [b"w3", b"w4"]
        assert await fetch(js, "s1-control", topology.CONTROL, 10) == [b"st2", b"st3", b"st4"]

        # A second site: its own consumers and leases; its edge joins plant1's.
        buckets2 = await topology.declare(js, ClusterConfig(partitions=PARTITIONS,
                                                            edges=("plant2",)), "s2")
        await topology.take_consumer(js, "s2", 0, 3, 256)
        await js.publish("bpw.0.s2.gw1.a.window", b"s2w")
        await js.publish("bp.v1.s2.gw1.status", b"s2st")
        assert await fetch(js, "s1-part-0", topology.WINDOWS, 10) == []
        assert await fetch(js, "s2-part-0", topology.WINDOWS, 10) == [b"s2w"]
        assert await fetch(js, "s1-control", topology.CONTROL, 10) == []
        assert await fetch(js, "s2-control", topology.CONTROL, 10) == [b"s2st"]
        await buckets[topology.LEASES].create("p0", b"worker-of-s1")
        await buckets2[topology.LEASES].create("p0", b"worker-of-s2")  # not taken: s2's own
        await buckets[topology.STATE].put("s1.gw1.a", b"state")  # one bucket for all sites
        assert (await buckets2[topology.STATE].get("s1.gw1.a")).value == b"state"
        info = await js.stream_info(topology.WINDOWS)
        apis = sorted(s.external.api for s in info.config.sources or [] if s.external)
        assert apis == ["$JS.plant1.API", "$JS.plant2.API"], apis
        await nc.close()

    asyncio.run(main())


def test_relay_keeps_to_its_own_site() -> None:
    """A plant's mosquitto relays its own site's topics only: another site's windows
    would reach that site's workers on the shared cluster."""
    assert relayable("bp/v1/s1/gw1/a/window", "s1")
    assert relayable("bp/v1/s1/gw1/status", "s1")
    assert relayable("bp/v1/s1/command", "s1")
    assert not relayable("bp/v1/s2/gw1/a/window", "s1")
    assert not relayable("bp/v1/s2/command", "s1")
    assert not relayable("bp/v1/s1/gw.1/status", "s1")


@pytest.mark.slow
def test_two_sites_on_one_cluster_keep_to_their_own(
        cluster: NatsCluster, tmp_path: Path, influxd: Influxd,
        influx_db: tuple[str, str]) -> None:
    """Two plants (own mosquitto, own database, own webhook) on one cluster, a worker
    each: each worker holds all of its site's partitions, every window lands once in its
    own site's database, each site's alarm reaches its own webhook only, and each
    mosquitto gets back its own site's diagnoses only."""
    url, db = influx_db
    sites = ("s1", "s2")
    dbs = {"s1": db, "s2": f"{db}_2"}
    influxd.create_database(dbs["s2"])
    brokers = {s: Mosquitto(tmp_path / f"mqtt-{s}", users=PASSWORDS,
                            operator_users=("watch",)) for s in sites}
    hooks = {s: WebhookReceiver() for s in sites}
    watched: dict[str, list[mqtt.MQTTMessage]] = {s: [] for s in sites}
    watchers: list[mqtt.Client] = []
    workers: list[subprocess.Popen[bytes]] = []
    count = 20
    try:
        for s in sites:
            (tmp_path / s).mkdir()
            brokers[s].start()
            hooks[s].start()
            w = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{s}")
            w.username_pw_set("watch", PASSWORDS["watch"])
            w.on_message = lambda _c, box, m: box.append(m)
            w.user_data_set(watched[s])
            w.connect("127.0.0.1", brokers[s].port)
            w.subscribe([(topics.diagnosis(o, "+", "+"), 1) for o in sites])
            w.loop_start()
            watchers.append(w)
            site = site_toml(tmp_path / s / "site.toml", cluster.urls, brokers[s], url,
                             dbs[s], tmp_path / s / "state",
                             hooks[s].url, site=s)
            workers.append(spawn_ballpass(
                ["stream", "-c", str(site), "--engine", "nats", "--status-file",
                 str(tmp_path / s / "status.json")], tmp_path / s / "worker.log"))
        statuses = [tmp_path / s / "status.json" for s in sites]
        wait_until(lambda: all(len((read_status(p).get("cluster") or {})
                                   .get("partitions", [])) == PARTITIONS
                               and (read_status(p).get("cluster") or {}).get("relay_connected")
                               for p in statuses),
                   60, "each site's worker holding all its site's partitions")
        payloads = {sensor: windows(sensor, count) for ids in SENSORS.values()
                    for sensor in ids}
        gws = [(Gateway(g, brokers[s].port, f"pub-{s}", site=s), ids)
               for s in sites for g, ids in SENSORS.items()]
        infos = [gw.publish(sensor, payloads[sensor][seq])
                 for seq in range(count) for gw, ids in gws for sensor in ids]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
        for gw, _ in gws:
            gw.close()
        per_site = count * sum(len(ids) for ids in SENSORS.values())

        def written(s: str) -> list[dict[str, Any]]:
            return query_rows(influxd, dbs[s], "SELECT count(seq) FROM vibration "
                                               "GROUP BY site, sensor")

        wait_until(lambda: all(sum(r["count"] for r in written(s)) == per_site
                               for s in sites), 120, f"{per_site} windows per site")
        for s in sites:
            assert {(r["site"], r["sensor"]): r["count"] for r in written(s)} == {
                (s, sensor): count for sensor in payloads}
        wait_until(lambda: all(any(a.get("sensor") == FAULTY for a in hooks[s].received)
                               for s in sites), 30, "each site's alarm at its webhook")
        time.sleep(2)
        for s in sites:
            assert {a["site"] for a in hooks[s].received} == {s}, hooks[s].received
            firing = Counter((a["alert_id"], a["status"]) for a in hooks[s].received)
            assert all(n == 1 for n in firing.values()), firing
            back = {m.topic.split("/")[2] for m in watched[s]}
            assert back == {s}, (s, back)
    finally:
        for w in watchers:
            w.loop_stop()
            w.disconnect()
        stop_gently(workers)
        for receiver in hooks.values():
            receiver.stop()
        for b in brokers.values():
            b.stop()


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


def test_an_evidence_page_action_goes_to_the_sensors_owner(
        cluster: NatsCluster, tmp_path: Path, influxd: Influxd,
        influx_db: tuple[str, str]) -> None:
    """A worker's evidence page action (here a rebaseline of an alarmed sensor) is routed
    to the sensor's partition like a command from the command topic: its owner applies
    it, the resolution reaches the webhook through ALERTS, and the changed state is saved
    in the KV bucket with the command's ack (a new owner would load it)."""
    import pickle

    from ballpass.config import load
    from ballpass.stream.service import StreamService
    from ballpass.stream.sinks.influx import V1Writer

    url, db = influx_db
    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS)
    broker.start()
    hooks = WebhookReceiver()
    hooks.start()
    site = site_toml(tmp_path / "site.toml", cluster.urls, broker, url, db, tmp_path / "state",
                     hooks.url)
    service = StreamService(load(site), V1Writer(url, db), cluster=True)

    def hooked(status: str) -> list[dict[str, Any]]:
        return [a for a in hooks.received if a.get("sensor") == FAULTY
                and a.get("kind") == "machine" and a["status"] == status]

    async def until(predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.2)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        running = asyncio.create_task(service.run(stop))
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            source = service._nats
            assert source is not None
            await until(lambda: len(source.partitions) == PARTITIONS, 60, "the partitions")
            js = nc.jetstream()
            await js.publish("bp.v1.s1.gw1.status", b'{"state": "online"}')
            for payload in windows(FAULTY, 8):
                await js.publish(f"bp.v1.s1.gw2.{FAULTY}.window", payload)
            await until(lambda: hooked("firing"), 60, "the alarm at the webhook")
            record = await service.operator_action(FAULTY, "bob", "bearing replaced",
                                                   action="rebaseline")
            assert record["result"] == "sent to the sensor's worker", record
            await until(lambda: hooked("resolved"), 60, "the resolution at the webhook")
            await until(lambda: source.counters["view_seen"] >= 1, 30, "the status, seen")
            kv_state = await js.key_value(topology.STATE)
            entry = await kv_state.get(f"s1.gw2.{FAULTY}")
            assert entry.value is not None
            return pickle.loads(entry.value)
        finally:
            await nc.close()
            stop.set()
            await running

    try:
        saved = asyncio.run(main())
    finally:
        hooks.stop()
        broker.stop()
    assert [a["alert_id"] for a in hooked("resolved")] == \
        [a["alert_id"] for a in hooked("firing")], hooks.received
    online = saved["pipeline"]["online"]
    assert online.counters["rebaselines"] == 1, online.counters  # saved with the command
    assert online.learned == 0, "the saved model is the one from before the rebaseline"
    assert service.counters.written == 8


def test_a_pull_loop_survives_a_failing_batch(cluster: NatsCluster, tmp_path: Path) -> None:
    """The control and webhook loops take their consumer's messages through `each`; one
    that raises (a publish refused during a leader election, say) is logged and counted,
    the loop goes on and the unacknowledged message comes again (before: the loop ended,
    silently, and that worker took no more statuses, commands or alerts)."""
    source = _source(cluster.urls, tmp_path)
    seen: list[bytes] = []

    async def main() -> None:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        try:
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t.>"], num_replicas=1)
            await js.add_consumer("T", ConsumerConfig(durable_name="c", ack_wait=1.0))
            await js.publish("t.x", b"one")
            source._js = js
            stop = asyncio.Event()

            async def each(msgs: list[Any]) -> None:
                seen.extend(m.data for m in msgs)
                if len(seen) == 1:
                    raise RuntimeError("refused")
                for m in msgs:
                    await m.ack()
                stop.set()

            await asyncio.wait_for(source._pull(stop, "c", "T", each), 60)
        finally:
            await nc.close()

    asyncio.run(main())
    assert seen == [b"one", b"one"]
    assert source.counters["pull_errors"] == 1


def _source(servers: list[str], tmp_path: Path) -> Any:
    """A worker's NatsSource of the test site (not connected)."""
    from ballpass.config import load
    from ballpass.stream.cluster.source import NatsSource

    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS)  # the site file names one
    broker.start()
    try:
        site = site_toml(tmp_path / "site.toml", servers, broker, "http://127.0.0.1:1",
                         "db", tmp_path / "state", "http://127.0.0.1:1/hook")
        return NatsSource(load(site))
    finally:
        broker.stop()


def test_a_reload_moves_the_relay_to_the_new_broker(tmp_path: Path) -> None:
    """SIGHUP with a changed [broker] (mosquitto moved): the running relay takes it (its
    MQTT session reconnects) and so does a relay started later (before: ignored)."""
    import dataclasses

    from ballpass.stream.cluster.relay import Relay

    source = _source(["nats://127.0.0.1:1"], tmp_path)
    source._relay = Relay(source.config, None, None)
    moved = dataclasses.replace(source.config.broker, host="10.0.0.7", port=8883)
    source.reconfigure(moved)
    assert source._relay.mqtt.broker == moved
    assert source.config.broker == moved


def test_a_reload_with_an_unusable_ca_file_is_refused_relay_or_not(tmp_path: Path) -> None:
    """Before: a worker that was not the relay took such a [broker]; once it became the
    relay, the relay's first connect raised and it relayed nothing while holding the
    lease."""
    import dataclasses

    source = _source(["nats://127.0.0.1:1"], tmp_path)
    kept = source.config.broker
    broken = dataclasses.replace(kept, tls=True, ca_file=tmp_path / "gone.crt")
    with pytest.raises(FileNotFoundError):
        source.reconfigure(broken)
    assert source.config.broker == kept


def test_every_worker_sees_the_sites_readings_and_statuses(
        cluster: NatsCluster, tmp_path: Path) -> None:
    """Partitions are per sensor, so before a tacho reading or a temperature window reached
    only its own partition's owner (the asset's accelerometers on another worker used the
    configured speed and no temperature), and a gateway status only the one worker of the
    shared control consumer (another worker's page showed the gateway offline). Every
    worker now follows them, view only, from the latest of each subject on."""
    import numpy as np

    from ballpass import wire
    from ballpass.config import load
    from ballpass.stream.cluster import site_view
    from ballpass.stream.service import StreamService
    from ballpass.stream.sinks.influx import V1Writer

    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS)  # the site file names one
    broker.start()
    try:
        site = site_toml(tmp_path / "site.toml", cluster.urls, broker, "http://127.0.0.1:1",
                         "db", tmp_path / "state", "http://127.0.0.1:1/hook")
    finally:
        broker.stop()
    text = site.read_text().replace("shaft_hz = 25.0\n", 'shaft_hz = 25.0\ntacho_sensor = "a"\n')
    site.write_text(text + '[[gateway.sensor]]\nid = "t"\ndriver = "simulated"\nasset = "m"\n'
                    'kind = "temperature"\nfs_hz = 1.0\nwindow_samples = 16\ninterval_s = 16\n')
    config = load(site)
    assert config.asset("m").tacho_sensor == "a"
    service = StreamService(config, V1Writer("http://127.0.0.1:1", "db"), cluster=True)
    views = site_view.site_views(config)
    assert [(v.stream, v.subjects) for v in views] == [
        (topology.CONTROL, ("bp.v1.s1.*.status",)),
        (topology.WINDOWS, ("bpw.*.s1.gw1.a.tacho", "bpw.*.s1.gw2.t.window"))]
    now = time.time_ns()

    async def main() -> dict[str, int]:
        nc = await nats.connect(cluster.urls, user="stream", password=PASSWORDS["stream"])
        counters = {"view_seen": 0, "view_errors": 0}
        try:
            js = nc.jetstream()
            assert config.cluster is not None
            await topology.declare(js, config.cluster, "s1")
            # Published before the worker follows: it starts from the latest of each.
            for hz in (20.0, 21.5):
                await js.publish("bp.v1.s1.gw1.a.tacho",
                                 json.dumps({"t_ns": now, "shaft_hz": hz}).encode())
            await js.publish("bp.v1.s1.gw2.t.window", wire.encode(wire.Window(
                1, now, 1.0, np.full((1, 16), 61.5, np.float32), kind=wire.Kind.TEMPERATURE)))
            await js.publish("bp.v1.s1.gw1.status", b'{"state": "online"}')
            stop = asyncio.Event()
            tasks = [asyncio.create_task(site_view.follow(js, v, service._nats._seen, stop,
                                                          counters)) for v in views]
            deadline = time.monotonic() + 30
            while counters["view_seen"] < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            # Later messages follow, in order; a bad one (the owner refuses it) is skipped.
            await js.publish("bp.v1.s1.gw1.a.tacho", b"not json")
            await js.publish("bp.v1.s1.gw1.a.tacho",
                             json.dumps({"t_ns": now + 10**9, "shaft_hz": 22.0}).encode())
            await js.publish("bp.v1.s1.gw1.status", b'{"state": "offline"}')
            while counters["view_seen"] < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
            for stream in (topology.CONTROL, topology.WINDOWS):  # each deleted its consumer
                names = [c.name for c in await js.consumers_info(stream)]
                assert not [n for n in names if n.startswith("view-")], names
            return counters
        finally:
            await nc.close()

    counters = asyncio.run(main())
    assert counters == {"view_seen": 6, "view_errors": 0}
    assert service.pipeline.tacho["m"] == (22.0, now / 1e9 + 1)
    assert service.pipeline.online.temps["m"] == pytest.approx(61.5)
    assert service.gateways["gw1"]["state"] == "offline"
    assert service.counters.written == 0  # view only: nothing written, nothing counted

    # The worker that holds a sensor's partition takes its messages in its batches, in
    # order with the windows: the view leaves them to it.
    source, seen = service._nats, []
    source._see = lambda topic, payload: seen.append(topic)
    source._readers, source._keys = {3: None}, {3: {("s1", "gw1", "a")}}
    source._seen("bpw.3.s1.gw1.a.tacho", b"{}")
    source._seen("bpw.5.s1.gw2.t.window", b"")
    source._seen("bp.v1.s1.gw1.status", b"{}")
    assert seen == ["bp/v1/s1/gw2/t/window", "bp/v1/s1/gw1/status"]


def test_a_command_nested_too_deeply_is_routed_nowhere(tmp_path: Path) -> None:
    """Before: `[[[[…` raised RecursionError out of the command routing; the control
    consumer gave the message again and again."""
    from ballpass.config import load
    from ballpass.stream.cluster.source import NatsSource

    broker = Mosquitto.__new__(Mosquitto)  # only its port goes into the file; none runs
    broker.port = 1883
    config = load(site_toml(tmp_path / "site.toml", ["nats://127.0.0.1:4222"], broker,
                            "http://127.0.0.1:1", "db", tmp_path / "state",
                            "http://127.0.0.1:1/hook"))
    source = NatsSource(config)
    assert source._command_subject(b"[" * 100_000) is None
    sensor = SENSORS["gw1"][0]
    assert source._command_subject(json.dumps({"sensor": sensor}).encode()) == \
        f"bp.v1.s1.gw1.{sensor}.command"
