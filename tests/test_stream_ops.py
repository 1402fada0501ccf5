"""`/healthz` and `/metrics` of the real stream process (issue 14), against the real
mosquitto and influxd: readiness follows the broker, the exported counters are the status's."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from plant import read_status, spawn_ballpass, stream_site, wait_until
from prometheus_client.parser import text_string_to_metric_families

from ballpass import topics, wire
from ballpass.services import Influxd, Mosquitto, free_port
from ballpass.stream.health import DB_FAILING_S, assess

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = _get(url + "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def test_healthz_follows_the_broker_and_metrics_count_what_the_status_counts(
        mosquitto: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        tmp_path: Path) -> None:
    url, db = influx_db
    site = stream_site(tmp_path / "site.toml", port=mosquitto.port, influx_url=url, db=db,
                       state_dir=tmp_path / "state")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    status_file = tmp_path / "status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file),
                             "--metrics", f":{port}"], tmp_path / "stream.log")
    try:
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120,
                   "the stream to subscribe")
        code, body = _get(base + "/healthz")
        assert code == 200 and json.loads(body)["checks"]["broker"] == "connected"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-gw1")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        rng = np.random.default_rng(1)
        for seq in (1, 2):
            w = wire.Window(seq=seq, t0_ns=time.time_ns(), fs_hz=25600.0,
                            samples=0.1 * rng.standard_normal((1, 4096)))
            client.publish(topics.window("s1", "gw1", "a"), wire.encode(w), qos=1) \
                .wait_for_publish(5)
        client.publish(topics.window("s1", "gw1", "a"), b"garbage", qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        wait_until(lambda: read_status(status_file).get("counters", {}).get("written") == 2,
                   30, "two windows written")
        m = _samples(base)
        status = read_status(status_file)["counters"]
        assert m[("ballpass_stream_written_total", ())] == status["written"] == 2
        assert m[("ballpass_stream_received_total", ())] == 3
        [(reason, n)] = status["rejected"].items()
        assert m[("ballpass_stream_rejected_total", (("reason", reason),))] == n == 1
        assert m[("ballpass_stream_stage_seconds_count", (("stage", "write"),))] >= 1
        assert m[("ballpass_stream_window_lag_seconds_count", ())] == 2
        assert m[("ballpass_stream_ready", ())] == 1
        assert time.time() - m[("ballpass_stream_last_write_timestamp_seconds", ())] < 60
        code, _ = _get(base + "/nope")
        assert code == 404

        mosquitto.stop()
        wait_until(lambda: _get(base + "/healthz")[0] == 503, 30, "not ready without broker")
        code, body = _get(base + "/healthz")
        assert json.loads(body)["checks"]["broker"] == "disconnected"
        assert _get(base + "/livez")[0] == 200
        assert _samples(base)[("ballpass_stream_ready", ())] == 0
    finally:
        stream.terminate()
        assert stream.wait(30) == 0


def test_a_database_failing_longer_than_the_limit_makes_the_stream_not_ready() -> None:
    args = {"broker_connected": True, "spool_bytes": 0, "deadletter_bytes": 0,
            "webhooks_pending": 0}
    assert assess(db_failing_since=None, now=100.0, **args).ready
    assert assess(db_failing_since=100.0 - DB_FAILING_S / 2, now=100.0, **args).ready
    late = assess(db_failing_since=100.0 - DB_FAILING_S - 1, now=100.0, **args)
    assert not late.ready and late.checks["database"].startswith("failing for")
    assert not assess(db_failing_since=None, now=1.0, **{**args, "broker_connected": False}
                      ).ready


def test_the_broker_is_not_started_while_the_stream_waits_for_the_database() -> None:
    """The broker session starts after `ensure_database`: until then the broker is "not
    started", not "disconnected" (which blamed the broker for a database that is down)."""
    h = assess(broker_connected=False, broker_started=False, db_failing_since=90.0,
               now=100.0, spool_bytes=0, deadletter_bytes=0, webhooks_pending=0)
    assert not h.ready
    assert h.checks["broker"] == "not started" and h.checks["database"] == "failing for 10 s"


def test_healthz_names_the_database_when_it_is_down_at_the_start(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Before: the database down at the start read "ok" (the stream was waiting in
    `ensure_database`, which never set `failing_since`)."""
    site = stream_site(tmp_path / "site.toml", port=mosquitto.port,
                       influx_url=f"http://127.0.0.1:{free_port()}", db="x",
                       state_dir=tmp_path / "state")
    port = free_port()
    stream = spawn_ballpass(["stream", "-c", str(site), "--metrics", f":{port}"],
                            tmp_path / "stream.log")

    def database() -> object:
        try:
            return json.loads(_get(f"http://127.0.0.1:{port}/healthz")[1])["checks"]["database"]
        except OSError:
            return None  # not listening yet

    try:
        wait_until(lambda: str(database()).startswith("failing for"), 60,
                   "/healthz to name the database")
        code, body = _get(f"http://127.0.0.1:{port}/healthz")
        # and not the broker, which the stream has not tried yet
        assert code == 503 and json.loads(body)["checks"]["broker"] == "not started"
    finally:
        stream.terminate()
        assert stream.wait(30) == 0
