"""Alerts people can trust (issue 15): a bad sensor is an instrument alert, never a machine
alarm; alert state survives kill -9 with its ids; a webhook retry is signed afresh."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from linkcut import LinkCut
from plant import query_rows, read_status, spawn_ballpass, stream_site, wait_until

from ballpass import topics, wire
from ballpass.config import WebhookConfig, parse
from ballpass.demo import WebhookReceiver
from ballpass.models.catalog import lookup
from ballpass.services import Influxd, Mosquitto
from ballpass.simulators.signals import synthesize
from ballpass.stream.pipeline import Incoming, Pipeline
from ballpass.stream.sinks.formats import facts
from ballpass.stream.sinks.lineprotocol import encode
from ballpass.stream.sinks.webhook import WebhookSender

FS, N, SHAFT = 25600.0, 8192, 24.75
ORDERS = lookup("SKF 6205").orders()


def _samples(condition: str, rng: np.random.Generator) -> np.ndarray:
    return synthesize(condition, ORDERS, SHAFT, FS, N, severity=0.0 if condition == "normal"
                      else 1.0, rng=rng)


def _config(tmp: Path, hooks: list[dict[str, Any]] | None = None) -> Any:
    return parse({
        "site": {"id": "s1"}, "stream": {"state_dir": str(tmp / "state")},
        "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": SHAFT}],
        "gateway": [{"id": "gw1", "sensor": [{"id": "a", "driver": "simulated", "asset": "m",
                                              "fs_hz": FS, "window_samples": N,
                                              "interval_s": 1}]}],
        "webhook": hooks or [],
    })


def _start_stream(site: Path, status: Path, log: Path) -> Any:
    """`ballpass stream` on `site`, once it has subscribed."""
    status.unlink(missing_ok=True)
    proc = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status)], log)
    wait_until(lambda: read_status(status).get("mqtt_connected"), 120, "subscribed")
    return proc


def _stop(client: mqtt.Client, proc: Any, receiver: WebhookReceiver) -> None:
    client.loop_stop()
    client.disconnect()
    proc.terminate()
    proc.wait(30)
    receiver.stop()


def test_a_bad_sensor_is_one_instrument_alert_and_never_a_machine_alarm(
        tmp_path: Path) -> None:
    """Before: a flat-lined sensor fired a machine alarm `sensor_fault` on every route."""
    pipeline = Pipeline(_config(tmp_path), state_dir=tmp_path / "state")
    rng = np.random.default_rng(3)
    seq, alerts = 0, []

    def feed(samples: list[np.ndarray]) -> None:
        nonlocal seq
        for x in samples:
            seq += 1
            w = wire.Window(seq=seq, t0_ns=time.time_ns() + seq, fs_hz=FS,
                            samples=x.reshape(1, -1))
            alerts.extend(pipeline.process([Incoming("s1", "gw1", "a", w)]).alerts)

    feed([_samples("normal", rng) for _ in range(5)])
    assert pipeline.alerts.state("a") == "normal"
    feed([np.zeros(N) for _ in range(8)])  # the cable is cut: a flat line
    assert [(a["kind"], a["event"], a["diagnosis"]) for a in alerts] == [
        ("instrument", "instrument_firing", "sensor_fault")]
    assert pipeline.alerts.state("a") == "normal", "the machine state holds"
    assert alerts[0]["severity"] == "low" and "instrument maintenance" in alerts[0]["summary"]
    feed([_samples("normal", rng) for _ in range(16)])
    assert [a["event"] for a in alerts] == ["instrument_firing", "instrument_resolved"]
    assert alerts[1]["alert_id"] == alerts[0]["alert_id"]

    # Routes: an on-call pager subscribed to machine alarms gets neither; the
    # instrument-maintenance route gets both.
    pager, maintenance = WebhookReceiver(), WebhookReceiver()
    pager.start()
    maintenance.start()
    try:
        sender = WebhookSender((
            WebhookConfig(pager.url, events=("firing", "resolved"), group_wait_s=0.0),
            WebhookConfig(maintenance.url, events=("instrument_firing", "instrument_resolved"),
                          group_wait_s=0.0)), state_dir=tmp_path / "hooks")

        async def deliver() -> None:
            task = asyncio.create_task(sender.run())
            for a in alerts:
                sender.submit(a)
            deadline = time.monotonic() + 10
            while len(maintenance.received) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await sender.close()
            await task
        asyncio.run(deliver())
    finally:
        pager.stop()
        maintenance.stop()
    assert [a["event"] for a in maintenance.received] == ["instrument_firing",
                                                          "instrument_resolved"]
    assert pager.received == []


class _StrictReceiver:
    """Checks the json format's signature and refuses timestamps older than `max_age_s`
    (replay protection, 401); answers 503 while `down`."""

    def __init__(self, secret: str, max_age_s: float) -> None:
        self.accepted: list[bytes] = []
        self.refused = 0
        self.down = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ts = self.headers.get("X-Ballpass-Timestamp", "0")
                mac = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body,
                                           hashlib.sha256).hexdigest()
                if receiver.down.is_set():
                    code = 503
                elif hmac.compare_digest(mac, self.headers.get("X-Ballpass-Signature", "")) \
                        and abs(time.time() - int(ts)) <= max_age_s:
                    code = 200
                    receiver.accepted.append(body)
                else:
                    code = 401
                    receiver.refused += 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_retry_after_an_outage_longer_than_the_receivers_tolerance_is_accepted(
        tmp_path: Path) -> None:
    """Before: the retry carried the first attempt's timestamp and was refused as stale."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    receiver = _StrictReceiver("s3cret", max_age_s=1.0)
    receiver.down.set()
    sender = WebhookSender((WebhookConfig(receiver.url, secret_file=secret, group_wait_s=0.0,
                                          backoff_max_s=0.5, retries=20),),
                           backoff_s=0.2, state_dir=tmp_path / "hooks")
    alert = {"sensor": "a", "site": "s1", "asset": "m", "alert_id": "x1", "status": "firing",
             "event": "firing", "diagnosis": "outer_race", "summary": "m sensor a"}

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert)
        await asyncio.sleep(3.0)  # three times the receiver's tolerance
        receiver.down.clear()
        deadline = time.monotonic() + 10
        while not receiver.accepted and not receiver.refused and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sender.close()
        await task
    try:
        asyncio.run(run())
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert len(receiver.accepted) == 1 and receiver.refused == 0
    assert sender.counters.delivered == 1 and sender.counters.failed == 0


@pytest.mark.slow
def test_kill_9_keeps_the_open_alarm_and_its_id_and_resolves_it_later(
        mosquitto: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        tmp_path: Path) -> None:
    """Before: alert state was saved every 300 s; after kill -9 the open alarm fired again
    with a new id and the old id was never resolved."""
    url, db = influx_db
    receiver = WebhookReceiver()
    receiver.start()
    site = stream_site(tmp_path / "site.toml", port=mosquitto.port, influx_url=url, db=db,
                       state_dir=tmp_path / "state", stream="batch_max = 1", fs_hz=FS,
                       window=N, shaft_hz=SHAFT,
                       tail=f'[[webhook]]\nurl = "{receiver.url}"\ngroup_wait_s = 0.0\n')
    status = tmp_path / "status.json"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-gw1")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    rng = np.random.default_rng(5)
    seq = 0

    def publish(condition: str, n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            w = wire.Window(seq=seq, t0_ns=time.time_ns(), fs_hz=FS,
                            samples=_samples(condition, rng).reshape(1, -1))
            client.publish(topics.window("s1", "gw1", "a"), wire.encode(w), qos=1) \
                .wait_for_publish(5)

    def start() -> Any:
        return _start_stream(site, status, tmp_path / "stream.log")

    def written() -> int:
        return int(read_status(status).get("counters", {}).get("written", 0))

    proc = start()
    try:
        publish("outer_race", 5)
        wait_until(lambda: len(receiver.received) == 1, 60, "the alarm's webhook")
        [fired] = receiver.received
        assert fired["status"] == "firing" and fired["diagnosis"] == "outer_race"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        proc = start()
        publish("outer_race", 3)
        wait_until(lambda: written() >= 3, 60, "the windows after the restart")
        publish("normal", 16)
        wait_until(lambda: len(receiver.received) >= 2, 60, "the resolution")
        time.sleep(1.0)  # a re-fired alarm, if any, would be here by now
    finally:
        _stop(client, proc, receiver)
    assert [(a["status"], a["alert_id"]) for a in receiver.received] == [
        ("firing", fired["alert_id"]), ("resolved", fired["alert_id"])]


def test_a_window_taken_in_before_a_restart_is_written_again_but_counted_once(
        tmp_path: Path) -> None:
    """Before: the de-duplication was in memory only, so after a restart the windows taken
    in but not yet acknowledged came back and counted twice in the alarm window."""
    rng = np.random.default_rng(8)
    windows = [wire.Window(seq=s, t0_ns=time.time_ns() + s, fs_hz=FS,
                           samples=_samples("outer_race", rng).reshape(1, -1))
               for s in (1, 2)]
    before = Pipeline(_config(tmp_path), state_dir=tmp_path / "state")
    first = before.process([Incoming("s1", "gw1", "a", w) for w in windows])
    before.alerts.save()  # as the once-a-second save did before the crash
    assert first.replayed == 0 and list(before.alerts.sensors["a"].recent) == ["outer_race"] * 2

    after = Pipeline(_config(tmp_path), state_dir=tmp_path / "state")  # the restart
    fresh = wire.Window(seq=3, t0_ns=time.time_ns() + 3, fs_hz=FS,
                        samples=_samples("normal", rng).reshape(1, -1))
    again = after.process([Incoming("s1", "gw1", "a", w) for w in (*windows, fresh)])
    assert again.replayed == 2
    assert list(after.alerts.sensors["a"].recent) == ["outer_race", "outer_race", "normal"]
    written = {(p.measurement, p.time_ns) for p in again.points}
    assert {("vibration", w.t0_ns) for w in windows} <= written, "the replays are written"
    assert [r.incoming.window.seq for r in again.results] == [3], "no step for the replays"


@pytest.mark.slow
def test_kill_9_before_the_write_loses_no_alert_and_counts_no_window_twice(
        mosquitto: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        tmp_path: Path) -> None:
    """Before: the alert state was saved when a batch was processed, its alert sent once
    the batch was written. Killed in between (the database down, say), the restarted stream
    got the windows again, but its state was already in alarm: the firing never went out,
    and the windows counted twice."""
    _, db = influx_db
    link = LinkCut(influxd.port)  # the database's link, cut while the stream runs
    link.start()
    receiver = WebhookReceiver()
    receiver.start()
    state = tmp_path / "state"
    site = stream_site(tmp_path / "site.toml", port=mosquitto.port,
                       influx_url=f"http://127.0.0.1:{link.port}", db=db, state_dir=state,
                       fs_hz=FS, window=N, shaft_hz=SHAFT,
                       tail=f'[[webhook]]\nurl = "{receiver.url}"\ngroup_wait_s = 0.0\n'
                            '[stream.alert]\nwindow_n = 8\n')  # holds all ten, if counted twice
    status = tmp_path / "status.json"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-gw1")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    rng = np.random.default_rng(6)
    windows = [wire.Window(seq=s, t0_ns=time.time_ns() + s, fs_hz=FS,
                           samples=_samples("outer_race", rng).reshape(1, -1))
               for s in range(1, 6)]

    def start() -> Any:
        return _start_stream(site, status, tmp_path / "stream.log")

    def alert_state() -> dict[str, Any]:
        try:
            return dict(json.loads((state / "alerts.json").read_text()))
        except (OSError, ValueError):
            return {}

    proc = start()
    try:
        link.cut()
        for w in windows:
            client.publish(topics.window("s1", "gw1", "a"), wire.encode(w), qos=1) \
                .wait_for_publish(5)
        # All five taken in (at most two batches: one writing, one waiting) and the alarm
        # held, none written: then the kill.
        wait_until(lambda: alert_state().get("included", {}).get("a", {}).get("runs")
                   == [[1, 5]], 60, "the windows taken in")
        [held] = alert_state()["held"]
        assert held["alert"]["status"] == "firing" and receiver.received == []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        link.restore()
        proc = start()
        wait_until(lambda: read_status(status)["counters"]["written"] >= 5, 60,
                   "the windows written after the restart")
        wait_until(lambda: len(receiver.received) >= 1, 30, "the held alert's webhook")
        time.sleep(1.0)  # a second firing, if any, would be here by now
        counters = read_status(status)["counters"]
    finally:
        _stop(client, proc, receiver)
        link.cut()
    assert [(a["status"], a["alert_id"]) for a in receiver.received] == [
        ("firing", held["alert"]["alert_id"])]
    assert counters["replayed"] == 5 and counters["duplicates"] == 0, counters
    rows = query_rows(influxd, db, 'SELECT "alert_id", "status" FROM "long".alerts')
    assert [(r["alert_id"], r["status"]) for r in rows] == [
        (held["alert"]["alert_id"], "firing")]
    vibration = query_rows(influxd, db, 'SELECT "seq" FROM vibration')
    assert sorted(r["seq"] for r in vibration) == [1, 2, 3, 4, 5]
    assert alert_state()["held"] == []
    # Every window is one entry in the instrument state's recent windows (ten, if counted
    # twice; it holds eight).
    assert len(alert_state()["instrument"]["a"]["recent"]) == 5


def _outer_race_alarm(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Five outer-race windows of sensor a through `pipeline`: the alerts they made."""
    rng = np.random.default_rng(8)
    fired = []
    for seq in range(1, 6):
        w = wire.Window(seq=seq, t0_ns=time.time_ns(), fs_hz=FS,
                        samples=_samples("outer_race", rng).reshape(1, -1))
        fired += pipeline.process([Incoming("s1", "gw1", "a", w)]).alerts
    return fired


def test_a_crash_after_a_rebaseline_keeps_the_new_baseline(tmp_path: Path) -> None:
    """The rebaseline resolves the alarm in the alert state, saved with the command; its
    model was saved only at the next periodic save (300 s), so a crash meanwhile brought
    back the baseline that raised the alarm, without the command's id: the same evidence
    raised a new alarm and the (acknowledged) command never came again."""
    config = _config(tmp_path)
    first = Pipeline(config, state_dir=tmp_path / "state")
    fired = _outer_race_alarm(first)
    assert [a["event"] for a in fired] == ["firing"]
    first.online.save_all()  # a periodic save, then the operator's command
    assert first.online.model("a").counters["rebaselines"] == 0
    first.apply_command({"action": "rebaseline", "sensor": "a", "by": "ann", "id": "c1"})

    after_crash = Pipeline(config, state_dir=tmp_path / "state")  # no save at a stop
    model = after_crash.online.model("a")
    assert (model.counters["rebaselines"], list(model.commands)) == (1, ["c1"])
    assert after_crash.alerts.state("a") == "normal"


def test_a_state_that_kept_bare_command_ids_loads_and_knows_them(tmp_path: Path) -> None:
    """State files of the version that kept only the ids of the commands applied (not their
    `actions` points) load: those commands are still applied once (no point to write again:
    none is), and new ones are kept with their points."""
    import pickle
    from collections import deque

    config = _config(tmp_path)
    first = Pipeline(config, state_dir=tmp_path / "state")
    first.apply_command({"action": "rebaseline", "sensor": "a", "by": "ann", "id": "c1"})
    path = next((tmp_path / "state" / "online").glob("a.v*.pkl"))
    data = pickle.loads(path.read_bytes())
    old = data["model"].__dict__
    del old["commands"]
    old["command_ids"] = deque(["c1"], maxlen=64)  # as the older version saved it
    path.write_bytes(pickle.dumps(data))

    again = Pipeline(config, state_dir=tmp_path / "state")
    model = again.online.model("a")
    assert (model.commands, hasattr(model, "command_ids")) == ({"c1": None}, False)
    assert again.online.repeated({"action": "rebaseline", "sensor": "a", "id": "c1"}) == []
    assert again.online.counters["commands_repeated"] == 1
    assert model.counters["rebaselines"] == 1
    done = again.apply_command({"action": "ack", "sensor": "a", "by": "bob", "id": "c2"})
    t_ns, tags, fields = model.commands["c2"]
    assert [(p.time_ns, dict(p.tags), dict(p.fields)) for p in done.points] == [
        (t_ns, tags, fields)]


@pytest.mark.parametrize("takeover", ["restart", "partition_move"])
def test_a_rebaseline_before_any_window_resolves_the_alarm_taken_over(
        tmp_path: Path, takeover: str) -> None:
    """Before: after a restart (or, in a cluster, a partition move) an operator's rebaseline
    before the sensor's next window cleared the alarm but sent on-call no "resolved": the
    alert was built from the latest window, which this process had not seen."""
    config = _config(tmp_path)
    first = Pipeline(config, state_dir=tmp_path / "state")
    fired = _outer_race_alarm(first)
    assert [(a["event"], a["diagnosis"]) for a in fired] == [("firing", "outer_race")]

    if takeover == "restart":
        second = Pipeline(config, state_dir=tmp_path / "state")
    else:
        second = Pipeline(config)
        second.import_sensor("a", first.export_sensor("a"))
    done = second.apply_command({"action": "rebaseline", "sensor": "a", "by": "ann"}, 7 * 10**18)

    [resolved] = done.alerts
    assert (resolved["event"], resolved["alert_id"]) == ("resolved", fired[0]["alert_id"])
    assert (resolved["site"], resolved["gateway"], resolved["asset"]) == ("s1", "gw1", "m")
    assert resolved["state"] == "normal" and resolved["summary"].startswith(
        "m sensor a is back to normal: outer race")
    assert resolved.keys() == fired[0].keys()  # the same JSON schema as any alert
    assert facts(resolved, None)["How sure"].startswith("not measured")  # not "0 %"
    assert [p.measurement for p in done.points] == ["actions", "alerts"]
    row = encode(done.points[1:])  # InfluxDB has no null: the unknown confidence is left out
    assert "alert_id=" in row and "confidence=" not in row, row
    assert second.alerts.state("a") == "normal"
