"""`kill -9` of the gateway in the middle of a flush loses nothing committed to the outbox.

A gateway subprocess captures 5 sensors at 25 windows/s in total while flushing at only
10/s, so a backlog is always being flushed; it is killed with SIGKILL while windows are
queued and in flight. A subscriber with a persistent session records what the broker
delivered. After a restart (faster flush) and a clean stop, every (sensor, seq) the
outbox ever issued has arrived: at least once, no gaps. Re-sent windows (in flight at the
kill) are the only duplicates, and the stream de-duplicates them by (sensor, seq).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from plant import spawn_ballpass
from test_publisher import Subscriber

from ballpass import topics, wire

SENSORS = [f"s{i}" for i in range(1, 6)]


def _site(path: Path, port: int, outbox: Path, flush_rate: float) -> None:
    sensors = "".join(f"""
[[gateway.sensor]]
id = "{s}"
driver = "simulated"
asset = "pump"
fs_hz = 25600
window_samples = 1024
interval_s = 0.2
""" for s in SENSORS)
    path.write_text(f"""
[site]
id = "k9"
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
outbox = {{ path = "{outbox}", flush_rate_per_s = {flush_rate} }}
{sensors}""", encoding="utf-8")


def _outbox_state(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(counters, next seq per sensor) read from the live file by a second connection."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        counters["queued"] = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        seqs = dict(db.execute("SELECT sensor, next FROM seqs").fetchall())
    finally:
        db.close()
    return counters, seqs


def test_kill_9_mid_flush_loses_nothing(mosquitto, tmp_path: Path) -> None:
    site, outbox = tmp_path / "site.toml", tmp_path / "outbox.sqlite"
    _site(site, mosquitto.port, outbox, flush_rate=10)
    sub = Subscriber(mosquitto.host, mosquitto.port, "bp/v1/k9/gw1/+/window", "k9")
    gw = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"], tmp_path / "gateway.log")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c, _ = _outbox_state(outbox)
            except sqlite3.OperationalError:
                c = {}  # the gateway has not created the file or its tables yet
            if c.get("published", 0) >= 20 and c["queued"] >= 20:
                break
            time.sleep(0.1)
        os.kill(gw.pid, signal.SIGKILL)
    finally:
        if gw.poll() is None:
            gw.kill()
        gw.wait(10)
    at_kill, _ = _outbox_state(outbox)
    assert at_kill["published"] >= 20 and at_kill["queued"] >= 20, at_kill  # mid-flush
    assert at_kill["captured"] == at_kill["published"] + at_kill["queued"]

    _site(site, mosquitto.port, outbox, flush_rate=1000)
    gw = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"], tmp_path / "gateway.log")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            c, _ = _outbox_state(outbox)
            if c["published"] >= at_kill["captured"] + 10:
                break
            time.sleep(0.1)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
    final, next_seq = _outbox_state(outbox)
    assert final["queued"] == 0 and final["dropped"] == 0
    assert final["captured"] == final["published"]

    def all_arrived() -> bool:
        got = {(topics.parse_sensor_topic(m.topic).sensor, wire.decode(m.payload).seq)
               for m in sub.snapshot()}
        return len(got) >= final["captured"]
    msgs = sub.wait_for(lambda _: all_arrived(), timeout=15)
    sub.close()
    received: dict[str, list[int]] = {s: [] for s in SENSORS}
    for m in msgs:
        received[topics.parse_sensor_topic(m.topic).sensor].append(wire.decode(m.payload).seq)
    for sensor, seqs in received.items():
        first = min(seqs)
        # every seq the outbox issued for this sensor arrived (at least once)
        assert set(seqs) == set(range(first, next_seq[sensor])), sensor
    duplicates = sum(len(s) - len(set(s)) for s in received.values())
    assert duplicates <= 25  # only what was in flight at the kill (max_inflight 20)
    log = (tmp_path / "gateway.log").read_text()
    assert log.count("event=gateway_starting") == 2
