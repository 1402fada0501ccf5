"""V1Writer and V2Writer against real influxd 1.6.7 and victoria-metrics: data is read
back, and every failure is an InfluxWriteError with the right cause and retryability."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from linkcut import LinkCut

from ballpass.config import InfluxConfig
from ballpass.services import Influxd, VictoriaMetrics, free_port
from ballpass.stream.sinks.influx import (
    InfluxQueryError,
    InfluxWriteError,
    V1Writer,
    V2Writer,
    create_writer,
    query_v1,
)
from ballpass.stream.sinks.lineprotocol import Point
from ballpass.stream.sinks.retention import routes


def _vibration(n: int, t0_ns: int, sensor: str = "de") -> list[Point]:
    return [Point("vibration", {"site": "plant-a", "gateway": "gw1", "sensor": sensor,
                                "asset": "pump3"},
                  {"seq": i, "rms_g": 0.1 * (i + 1), "crest": 3.5},
                  t0_ns + i * 1_000_000_000) for i in range(n)]


def _vm_export(vm: VictoriaMetrics, match: str) -> list[dict[str, Any]]:
    """Series from /api/v1/export: one JSON object per line."""
    vm.force_flush()
    q = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{q}", timeout=5) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]


# --- V1 on influxd ---------------------------------------------------------------------


def test_v1_writes_points_read_back(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    t0 = time.time_ns() - 60 * 10**9
    points = [*_vibration(3, t0),
              Point("diagnosis", {"site": "plant-a", "sensor": "de"},
                    {"diagnosis": "outer_race", "confidence": 0.9, "state": "alarm"}, t0)]
    writer = V1Writer(url, db)
    writer.write(points)
    writer.close()
    rows = query_v1(url, db, "SELECT * FROM vibration GROUP BY * ORDER BY time")
    assert [(r["time"], r["seq"], r["rms_g"]) for r in rows] == [
        (t0, 0, 0.1), (t0 + 10**9, 1, 0.2), (t0 + 2 * 10**9, 2, 0.1 * 3)]
    assert all(r["sensor"] == "de" and r["asset"] == "pump3" and r["_measurement"] ==
               "vibration" for r in rows)
    (d,) = query_v1(url, db, "SELECT diagnosis, confidence, state FROM diagnosis")
    assert (d["diagnosis"], d["confidence"], d["state"], d["time"]) == (
        "outer_race", 0.9, "alarm", t0)


def test_query_v1_empty_and_errors(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    assert query_v1(url, db, "SELECT * FROM nothing_here") == []
    with pytest.raises(InfluxQueryError, match="error parsing query"):
        query_v1(url, db, "SELEKT 1")


def test_v1_missing_database_is_retryable(influxd: Influxd) -> None:
    """Retried, not spooled: every write fails until someone creates it."""
    writer = V1Writer(influxd.url, "no_such_db")
    with pytest.raises(InfluxWriteError, match="database not found") as info:
        writer.write(_vibration(1, time.time_ns()))
    assert info.value.status == 404 and info.value.retryable
    assert "no_such_db" in str(info.value)


def test_v1_ensure_database_then_write(influxd: Influxd) -> None:
    writer = V1Writer(influxd.url, f"ensured_{time.time_ns()}")
    writer.ensure_database()
    writer.ensure_database()  # idempotent
    writer.write(_vibration(2, time.time_ns()))
    assert len(query_v1(influxd.url, writer.db, "SELECT seq FROM vibration")) == 2


def test_v1_ensure_database_quotes_the_name(influxd: Influxd) -> None:
    """Before: the name went into `CREATE DATABASE "…"` as it was; a `"` in it made a
    statement influxd could not parse."""
    writer = V1Writer(influxd.url, f'we"ird {time.time_ns()}')
    writer.ensure_database()
    writer.write(_vibration(1, time.time_ns()))
    assert len(query_v1(influxd.url, writer.db, "SELECT seq FROM vibration")) == 1


def test_v1_a_refusal_in_one_policy_does_not_keep_the_others_out(
        influx_db: tuple[str, str]) -> None:
    """Before: one request per policy, stopping at the first failure: a type conflict in
    `raw` kept the alert (in `long`) from being sent at all."""
    url, db = influx_db
    for q in (f'CREATE RETENTION POLICY "raw" ON "{db}" DURATION 1d REPLICATION 1 DEFAULT',
              f'CREATE RETENTION POLICY "long" ON "{db}" DURATION INF REPLICATION 1'):
        query_v1(url, db, q)
    writer = V1Writer(url, db)
    writer.set_routes(routes())
    now = time.time_ns()
    writer.write([Point("vibration", {"sensor": "a"}, {"rms_g": 1.0}, now - 10**9)])
    with pytest.raises(InfluxWriteError, match="field type conflict") as info:
        writer.write([Point("vibration", {"sensor": "a"}, {"rms_g": "oops"}, now),
                      Point("alerts", {"sensor": "a", "status": "firing"},
                            {"alert_id": "A1"}, now)])
    assert info.value.status == 400 and not info.value.retryable
    (alert,) = query_v1(url, db, 'SELECT * FROM "long"."alerts"')
    assert alert["alert_id"] == "A1"


def test_v1_a_policy_dropped_under_the_stream_is_written_around(
        influx_db: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """Before: `long` dropped by a DBA while the stream ran answered 500 "retention policy
    not found", retried for ever: no batch with an alert was acknowledged again."""
    url, db = influx_db
    for q in (f'CREATE RETENTION POLICY "raw" ON "{db}" DURATION 1d REPLICATION 1 DEFAULT',
              f'CREATE RETENTION POLICY "long" ON "{db}" DURATION INF REPLICATION 1'):
        query_v1(url, db, q)
    writer = V1Writer(url, db)
    writer.set_routes(routes())
    now = time.time_ns()
    query_v1(url, db, f'DROP RETENTION POLICY "long" ON "{db}"')
    writer.write([Point("alerts", {"sensor": "a", "status": "firing"}, {"alert_id": "A2"},
                        now)])
    (alert,) = query_v1(url, db, 'SELECT * FROM "raw"."alerts"')
    assert alert["alert_id"] == "A2"
    assert "event=influx_policy_missing" in caplog.text and "rp=long" in caplog.text
    writer.write([Point("alerts", {"sensor": "a", "status": "resolved"}, {"alert_id": "A2"},
                        now + 1)])  # straight to the default now
    assert len(query_v1(url, db, 'SELECT * FROM "raw"."alerts"')) == 2


def test_v1_failures_in_several_policies_are_all_told() -> None:
    """Retryable if any of them is: the retry sends all again, a refusal shows once the
    rest succeeds."""
    from ballpass.stream.sinks.influx import _combined

    refused = InfluxWriteError("points rejected", retryable=False, status=400)
    busy = InfluxWriteError("server busy", retryable=True, status=503)
    err = _combined([refused, busy])
    assert (err.retryable, err.status, str(err)) == (True, 503,
                                                     "points rejected; server busy")
    assert _combined([refused]) is refused


def test_v1_closed_port_is_retryable() -> None:
    writer = V1Writer(f"http://127.0.0.1:{free_port()}", "ballpass", timeout_s=2)
    with pytest.raises(InfluxWriteError, match="cannot reach") as info:
        writer.write(_vibration(1, time.time_ns()))
    assert info.value.retryable and info.value.status is None


def test_v1_field_type_conflict_is_rejected(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    writer = V1Writer(url, db)
    t = time.time_ns()
    writer.write([Point("m", {}, {"x": 1.5}, t)])
    with pytest.raises(InfluxWriteError, match=r"points rejected.*conflict") as info:
        writer.write([Point("m", {}, {"x": "text"}, t + 1)])
    assert info.value.status == 400 and not info.value.retryable


def test_v1_invalid_point_raises_before_sending(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    with pytest.raises(InfluxWriteError, match=r"invalid point.*no finite field") as info:
        V1Writer(url, db).write([Point("m", {}, {"x": float("nan")}, time.time_ns())])
    assert not info.value.retryable


def test_v1_wrong_endpoint_is_told_apart(influxd: Influxd) -> None:
    """A plain-text 404 (no such endpoint) is not reported as a missing database."""
    writer = V1Writer(influxd.url + "/nope", "x")
    with pytest.raises(InfluxWriteError, match="endpoint not found") as info:
        writer.write(_vibration(1, time.time_ns()))
    assert info.value.status == 404 and "database not found" not in str(info.value)


def test_empty_write_sends_nothing() -> None:
    """An empty batch (a flush with nothing queued) must not even connect: a listening
    socket nobody accepts on sees no connection from either writer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        # Short timeouts: a writer that did send would wait for a reply that never comes.
        for writer in (V1Writer(url, "x", timeout_s=1),
                       V2Writer(url, "b", "o", token="t", timeout_s=1)):
            writer.write([])
            writer.close()
        # A connection the kernel completed waits in the backlog: the socket reads ready.
        ready, _, _ = select.select([server], [], [], 0.5)
        assert not ready, "an empty write connected to the server"


def test_create_writer_from_config(influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    writer = create_writer(InfluxConfig(api="v1", url=url, db=db))
    assert isinstance(writer, V1Writer)
    writer.write(_vibration(1, time.time_ns()))
    writer.close()
    assert len(query_v1(url, db, "SELECT * FROM vibration")) == 1
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    v2 = create_writer(InfluxConfig(api="v2", url=url, bucket="b", org="o", token_file=token))
    assert isinstance(v2, V2Writer)
    v2.close()
    with pytest.raises(ValueError, match=r"influx\.api"):
        create_writer(InfluxConfig(api="v3"))


class _TLSInfluxd(Influxd):
    """influxd serving HTTPS only (a self-signed certificate); `url` stays http://."""

    def _prepare(self) -> list[str]:
        argv = super()._prepare()
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        self.config_path.write_text(self.config_path.read_text().replace(
            "auth-enabled = false", f'auth-enabled = false\n  https-enabled = true\n'
            f'  https-certificate = "{cert}"\n  https-private-key = "{key}"'))
        return argv

    def _ready(self) -> bool:
        return self._http_status("/ping") == 400  # its answer to plain http


@pytest.fixture
def tls_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TLSInfluxd]:
    server = _TLSInfluxd(tmp_path_factory.mktemp("influxd-tls"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_plain_http_to_a_tls_influxd_is_retried_not_refused(tls_influxd: _TLSInfluxd) -> None:
    """Its 400 "Client sent an HTTP request to an HTTPS server." answers every write.
    Before: counted as a refusal of the points, so every batch went to the spool until it
    was full, and then was dead-lettered."""
    v2 = V2Writer(tls_influxd.url, bucket="plant", org="o", token="t")
    try:
        for writer in (V1Writer(tls_influxd.url, "plant"), v2):
            for _ in range(20):
                with pytest.raises(InfluxWriteError) as info:
                    writer.write(_vibration(1, time.time_ns()))
                # It closes the connection with the rest of the request unread: the reset
                # may come before its answer (no HTTP status, retryable too).
                if info.value.status is not None:
                    break
                assert info.value.retryable
            assert info.value.status == 400 and info.value.retryable, writer
            assert "not the points" in str(info.value) and "HTTPS server" in str(info.value)
    finally:
        v2.close()


# --- victoria-metrics ------------------------------------------------------------------


def test_v1_writer_to_victoria_metrics(victoria_metrics: VictoriaMetrics) -> None:
    t0 = (time.time_ns() // 10**6 - 5_000) * 10**6  # VM keeps ms
    V1Writer(victoria_metrics.url, "ballpass").write(_vibration(3, t0, sensor="v1"))
    (series,) = _vm_export(victoria_metrics, 'vibration_rms_g{sensor="v1"}')
    assert series["metric"]["gateway"] == "gw1" and series["metric"]["db"] == "ballpass"
    assert series["values"] == pytest.approx([0.1, 0.2, 0.3])
    assert series["timestamps"] == [t0 // 10**6 + i * 1000 for i in range(3)]


def test_v2_writer_to_victoria_metrics(victoria_metrics: VictoriaMetrics) -> None:
    t0 = (time.time_ns() // 10**6 - 5_000) * 10**6
    writer = V2Writer(victoria_metrics.url, bucket="ballpass", org="plant")
    try:
        writer.write(_vibration(2, t0, sensor="v2"))
    finally:
        writer.close()
    (series,) = _vm_export(victoria_metrics, 'vibration_seq{sensor="v2"}')
    assert series["values"] == [0, 1]
    assert series["timestamps"] == [t0 // 10**6, t0 // 10**6 + 1000]


def test_v2_writer_against_influxd_1x_raises(influxd: Influxd) -> None:
    """influxd 1.6.7 has no /api/v2/write: the writer raises instead of dropping."""
    writer = V2Writer(influxd.url, bucket="ballpass", org="plant")
    try:
        with pytest.raises(InfluxWriteError, match="endpoint not found") as info:
            writer.write(_vibration(1, time.time_ns()))
    finally:
        writer.close()
    assert info.value.status == 404 and info.value.retryable
    assert 'influx.api = "v1"' in str(info.value)


def test_v2_closed_port_is_retryable() -> None:
    writer = V2Writer(f"http://127.0.0.1:{free_port()}", bucket="b", org="o", timeout_s=2)
    try:
        with pytest.raises(InfluxWriteError, match="cannot reach") as info:
            writer.write(_vibration(1, time.time_ns()))
    finally:
        writer.close()
    assert info.value.retryable and info.value.status is None


def test_v1_keeps_one_connection_and_reopens_a_dropped_one(influx_db: tuple[str, str]) -> None:
    """Writes share one kept-alive connection; one the other end dropped while idle (a
    restart, a proxy's idle timeout) is replaced at the next write, which succeeds."""
    url, db = influx_db
    link = LinkCut(int(urllib.parse.urlsplit(url).port or 0))
    link.start()
    writer = V1Writer(f"http://127.0.0.1:{link.port}", db)
    t0 = time.time_ns() - 600 * 10**9
    try:
        for i in range(5):
            writer.write(_vibration(2, t0 + i * 10**10, sensor=f"k{i}"))
        assert link.accepted == 1
        link.cut()
        link.restore()
        writer.write(_vibration(2, t0 + 10**11, sensor="after"))
        assert link.accepted == 2
    finally:
        writer.close()
        link.stop()
    rows = query_v1(url, db, "SELECT count(seq) FROM vibration GROUP BY sensor")
    assert {r["sensor"]: r["count"] for r in rows} == {
        **{f"k{i}": 2 for i in range(5)}, "after": 2}


def test_v1_timeout_is_retryable() -> None:
    """A server that accepts the connection but never answers: timed out, retryable."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # never accept(): the kernel completes the handshake anyway
        port = listener.getsockname()[1]
        writer = V1Writer(f"http://127.0.0.1:{port}", "x", timeout_s=0.3)
        with pytest.raises(InfluxWriteError, match=r"timed out after 0\.3 s") as info:
            writer.write(_vibration(1, time.time_ns()))
    assert info.value.retryable and info.value.status is None


@pytest.mark.parametrize("status, body, retryable, cause", [
    (429, b'{"error":"too many requests"}', True, "server busy"),
    (500, b'{"error":"engine: cache-max-memory-size exceeded"}', True, "server busy"),
    (503, b"", True, "server busy"),
    (401, b'{"error":"authorization failed"}', True, "not authorized"),
    (403, b'{"error":"forbidden"}', True, "not authorized"),
    (400, b'{"error":"field type conflict"}', False, "points rejected"),
    # influxd 1.x, 2.x (its partial writes are 422) and 3.x refusing the points.
    (400, b'{"error":"partial write: points beyond retention policy dropped=1"}', False,
     "points rejected"),
    (400, b'{"error":"unable to parse \'m x\': missing fields"}', False, "points rejected"),
    (400, b'{"code":"invalid","message":"unable to parse \'m x\': missing fields"}', False,
     "points rejected"),
    (400, b'{"error":"partial write of line protocol occurred","data":[]}', False,
     "points rejected"),
    (422, b'{"code":"unprocessable entity","message":"failure writing points to database: '
          b'partial write: field type conflict"}', False, "write refused"),
    # Any other 400, a redirect, 405, 408: the endpoint, for every write.
    (400, b"Client sent an HTTP request to an HTTPS server.\n", True, "not the points"),
    (400, b"<html><body>400 Bad Request</body></html>", True, "not the points"),
    (400, b'{"error":"database is required"}', True, "not the points"),
    (307, b"", True, "redirected"),
    (308, b"", True, "redirected"),
    (405, b"Method Not Allowed", True, "not the points"),
    (408, b"Request Timeout", True, "server busy"),
    (413, b"", False, "request too large"),
    (404, b'{"error":"database not found: \\"x\\""}', True, "database not found"),
    (404, b"404 page not found\n", True, "endpoint not found"),
    (404, b'{"code":"not found","message":"bucket \\"b\\" not found"}', True,
     "database not found"),
])
def test_http_errors_classified(status: int, body: bytes, retryable: bool, cause: str) -> None:
    from ballpass.stream.sinks.influx import classify_http_error

    err = classify_http_error(status, body, url="http://h:1", target="db 'x'", api="v1")
    assert (err.status, err.retryable) == (status, retryable)
    assert cause in str(err)
