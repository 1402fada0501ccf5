"""The broker is stopped for 60 s while 5 sensors publish; after it returns, every captured
window arrives exactly once in InfluxDB, in order per sensor.

Real parts only: `ballpass gateway` and `ballpass stream` as subprocesses, a password +
ACL mosquitto (stopped with its launcher, then a new one started on the SAME port and work
dir, so its persistence file keeps the stream's session), and influxd.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import AUTH_USERS
from plant import query_rows, read_status, spawn_ballpass, wait_until, write_passwords

from ballpass.services import Influxd, Mosquitto

# Idle waits: shares one worker with the other 60 s outages (pyproject dev deps).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("outage_60s")]

SENSORS = [f"s{i}" for i in range(1, 6)]
OUTAGE_S = 60.0


def _site(port: int, influx_url: str, db: str, tmp: Path) -> Path:
    write_passwords(tmp, AUTH_USERS)
    sensors = "".join(f"""
[[gateway.sensor]]
id = "{s}"
driver = "simulated"
asset = "pump"
fs_hz = 25600
window_samples = 2048
interval_s = 1.0
options = {{ fault = "normal", seed = {i} }}
""" for i, s in enumerate(SENSORS))
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
id = "outage"
[broker]
host = "127.0.0.1"
port = {port}
keepalive_s = 5
[influx]
url = "{influx_url}"
db = "{db}"
[stream]
state_dir = "{tmp / 'state'}"
username = "stream"
password_file = "{tmp / 'stream.pw'}"
batch_wait_s = 0.1
[[asset]]
id = "pump"
kind = "pump"
bearing = "SKF 6205"
shaft_hz = 29.95
[[gateway]]
id = "gw1"
password_file = "{tmp / 'gw1.pw'}"
outbox = {{ path = "{tmp / 'outbox.sqlite'}", flush_rate_per_s = 100 }}
{sensors}""", encoding="utf-8")
    return path





def _written(status_file: Path) -> int:
    return int(read_status(status_file).get("counters", {}).get("written", 0))


def test_broker_outage_of_60_s_loses_and_duplicates_nothing(
        influxd: Influxd, influx_db: tuple[str, str], tmp_path: Path) -> None:
    url, db = influx_db
    workdir = tmp_path / "mq"
    broker = Mosquitto(workdir, users=AUTH_USERS, operator_users=("ops",))
    broker.start()
    port = broker.port
    site = _site(port, url, db, tmp_path)
    status_file = tmp_path / "stream-status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file)],
                    tmp_path / "stream.log")
    gateway = None
    try:
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120, "the stream")
        gateway = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"],
                                 tmp_path / "gateway.log")
        wait_until(lambda: _written(status_file) >= 2 * len(SENSORS), 60,
                   "windows before the outage")

        broker.stop()
        t_down = time.monotonic()
        time.sleep(OUTAGE_S)
        written_during = _written(status_file)
        broker = Mosquitto(workdir, port, users=AUTH_USERS, operator_users=("ops",))
        broker.start()
        down_s = time.monotonic() - t_down
        # A few seconds of live windows after the backlog, then a clean stop (drain).
        wait_until(lambda: _written(status_file) >= written_during + len(SENSORS) * down_s * 0.8,
              60, "the backlog to arrive")
        time.sleep(3)
        gateway.terminate()
        assert gateway.wait(30) == 0

        def drained() -> bool:
            gw = read_status(status_file).get("gateways", {}).get("gw1", {})
            return gw.get("state") == "offline" and \
                _written(status_file) == gw.get("counters", {}).get("published", -1)
        wait_until(drained, 60, "the stream to write every published window")
    finally:
        for proc in (gateway, stream):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        assert stream.wait(30) == 0
        broker.stop()

    status = read_status(status_file)
    gw = status["gateways"]["gw1"]["counters"]
    assert gw["captured"] == gw["published"] == status["counters"]["written"], (gw, status)
    assert gw["dropped"] == 0 and gw["queued"] == 0
    assert gw["replayed"] >= len(SENSORS) * (OUTAGE_S - 5), gw  # the outage, marked historical
    assert status["counters"]["rejected"] == {}
    total = 0
    for sensor in SENSORS:
        seqs = [r["seq"] for r in query_rows(  # ordered by window time
            influxd, db, f"SELECT seq FROM vibration WHERE sensor = '{sensor}'")]
        # every window once, none missing, in time order = seq order
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), sensor
        assert len(seqs) >= OUTAGE_S + 5
        total += len(seqs)
    assert total == gw["captured"]
    log = (tmp_path / "gateway.log").read_text()
    assert "event=broker_unreachable" in log or "event=broker_connection_lost" in log
