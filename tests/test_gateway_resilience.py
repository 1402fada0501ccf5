"""Bad input for a running gateway: remote configs (good and bad), a full disk, a clock
that jumps. Each gives a clear status message and log line; capture goes on."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from plant import wait_until
from test_gateway_service import SITE, site_config, windows_by_sensor
from test_publisher import Subscriber, status_of

from ballpass import topics, wire
from ballpass.config import SensorConfig, parse
from ballpass.gateway.clock import ClockWatch
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.remote import ConfigRejected, parse_remote
from ballpass.gateway.schedule import SensorCapture
from ballpass.gateway.service import run
from ballpass.gateway.status import Status


def _publish_retained(host: str, port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ops-{time.monotonic_ns()}")
    c.connect(host, port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_remote_config_validation_collects_every_error(tmp_path: Path) -> None:
    gw = site_config("127.0.0.1", 1883, "gw-rc", tmp_path / "o.sqlite").gateway("gw-rc")
    ok = parse_remote(b'{"flush_rate_per_s": 5, "sensors": {"s2": {"enabled": false, '
                      b'"interval_s": 2, "window_samples": 8192}}}', gw)
    assert ok.flush_rate_per_s == 5.0
    s2, enabled = ok.sensors["s2"]
    assert not enabled and s2.interval_s == 2.0 and s2.window_samples == 8192
    assert ok.sensors["s1"] == (gw.sensors[0], True)
    assert parse_remote(b"", gw).sensors["s2"] == (gw.sensors[1], True)
    with pytest.raises(ConfigRejected) as e:
        parse_remote(b'{"flush_rate": 5, "sensors": {"s3": {}, "s1": {"interval_s": 0.01, '
                     b'"enabled": "yes", "window": 1}}}', gw)
    text = str(e.value)
    for part in ("flush_rate: unknown key; did you mean 'flush_rate_per_s'?",
                 "sensors.s3: no such sensor", "sensors.s1.enabled: must be true or false",
                 "sensors.s1.window: unknown key",
                 "sensors.s1.interval_s: must be >= window_samples / fs_hz"):
        assert part in text, text
    # Each problem names its key path, worded as the site file's reader words it.
    for bad, message in (
            (b"{", "payload: not valid JSON"),
            (b"[" * 30_000 + b"]" * 30_000, "payload: JSON nested too deeply"),
            (b"[1]", "payload: must be a JSON object, got list"),
            (b'{"flush_rate_per_s": -1}', "flush_rate_per_s: must be > 0, got -1.0"),
            (b'{"flush_rate_per_s": true}', "flush_rate_per_s: must be a number, got True"),
            (b'{"sensors": 3}', "sensors: must be a table, got 3"),
            (b'{"sensors": {"s1": 3}}', "sensors.s1: must be a table, got 3"),
            (b'{"sensors": {"s1": {"window_samples": 8}}}',
             "sensors.s1.window_samples: must be in 16..4194304, got 8"),
            (b'{"sensors": {"s1": {"interval_s": 0}}}', "sensors.s1.interval_s: must be > 0"),
            # JSON integers have no size limit: one past any float is rejected, not a crash.
            (b'{"flush_rate_per_s": 1' + b"0" * 400 + b"}",
             "flush_rate_per_s: must be a number, got an integer of 401 digits")):
        with pytest.raises(ConfigRejected) as e:
            parse_remote(bad, gw)
        assert len(e.value.errors) == 1 and e.value.errors[0].startswith(message), \
            (bad, e.value.errors)


@pytest.mark.slow
def test_remote_config_applied_and_rejected_without_restart(mosquitto, tmp_path: Path,
                                                            caplog) -> None:
    caplog.set_level(logging.INFO)
    gw = "gw-remote"
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    cfg_topic = topics.config(SITE, gw)
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=run, args=(config, gw, stop),
                         kwargs=dict(status_interval_s=0.5, ready=ready))
    t.start()
    try:
        assert ready.wait(5)
        wait_until(lambda: len(windows_by_sensor(sub.snapshot(), gw).get("s2", [])) >= 2, 10,
                   "two s2 windows", poll_s=0.05)
        # 1. disable s2, s1 twice as often
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic, json.dumps(
            {"sensors": {"s2": {"enabled": False}, "s1": {"interval_s": 0.25}}}).encode())
        wait_until(lambda: any(s["config"]["state"] == "applied"
                               for s in status_of(sub.snapshot())),
                   10, "config applied on the status topic", poll_s=0.05)
        applied = next(s for s in status_of(sub.snapshot()) if s["config"]["state"] == "applied")
        assert applied["sensors"]["s2"] == {"state": "disabled", "reason": "disabled by config"}
        # Built after the config was applied; a capture thread takes new settings before
        # its next read, so a window that starts after it was captured under them (+1 ms:
        # `t` is cut to ms).
        applied_ns = int(datetime.fromisoformat(applied["t"]).timestamp() * 10**9) + 10**6

        def since_applied() -> dict[str, list[wire.Window]]:
            return {sensor: [w for w in ws if w.t0_ns > applied_ns]
                    for sensor, ws in windows_by_sensor(sub.snapshot(), gw).items()}

        wait_until(lambda: len(since_applied().get("s1", [])) >= 8, 20,
                   "8 s1 windows under the new config", poll_s=0.05)
        later = since_applied()
        # Meanwhile (>= 1.75 s at 0.25 s) s2 at its old 0.5 s would have sent 3 or more.
        s2_after = later.get("s2", [])
        assert not s2_after, f"a disabled sensor still captures ({len(s2_after)} windows)"
        gaps_s = np.diff([w.t0_ns for w in later["s1"]]) / 1e9
        # Slot k starts at t_start + k x 0.25 s (gateway/schedule.py); a slot missed under
        # load is skipped, never caught up: no burst (a gap well under 0.25 s, beyond
        # thread wake-up jitter), and most gaps one new slot, not the old 0.5 s.
        assert gaps_s.min() > 0.1 and 0.2 <= float(np.median(gaps_s)) <= 0.35, gaps_s
        # 2. a bad config is rejected with its reasons; the gateway keeps the last good one
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic,
                          b'{"sensors": {"s9": {"enabled": true}}}')
        wait_until(lambda: status_of(sub.snapshot())[-1]["config"]["state"] == "rejected",
                   10, "config rejected on the status topic", poll_s=0.05)
        rejected = status_of(sub.snapshot())[-1]
        assert "sensors.s9: no such sensor on gateway gw-remote" in rejected["config"]["reason"]
        assert rejected["sensors"]["s2"]["state"] == "disabled"
        assert any(r.getMessage().startswith(
            'event=config_rejected gateway=gw-remote reason="sensors.s9: no such sensor on '
            'gateway gw-remote') for r in caplog.records)
        # 3. back to the site file: s2 captures again
        n_before = len(sub.snapshot())
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic, b"{}")
        wait_until(lambda: "s2" in windows_by_sensor(sub.snapshot()[n_before:], gw),
                   10, "s2 enabled again", poll_s=0.05)
    finally:
        stop.set()
        t.join(15)
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic, b"")
        sub.close()
    assert not t.is_alive()


def test_full_disk_is_reported_and_capture_recovers(tmp_path: Path, caplog) -> None:
    """SQLite's own "database or disk is full" (page limit on the outbox file), not a mock:
    windows are counted as dropped, the status shows the outbox problem, sensors stay ok,
    and capture resumes once there is room."""
    caplog.set_level(logging.INFO)
    box = Outbox(tmp_path / "o.sqlite", 10**9, 3600)
    status = Status(SITE, "gw1", ["s1", "s2"], box.counters)
    stop = threading.Event()
    simulated = load_driver("simulated")
    caps = []
    for sid in ("s1", "s2"):
        s = SensorConfig(sid, "simulated", "pump1", 25600.0, 4096, 0.1)
        asset = site_config("h", 1, "g", tmp_path / "x").asset("pump1")
        caps.append(SensorCapture(s, asset, SITE, "gw1", box, status, stop,
                                  driver_factory=lambda sc, a: simulated(sc, a)))
    for c in caps:
        c.start()
    try:
        wait_until(lambda: box.counters()["captured"] >= 4, 10, "captures", poll_s=0.05)
        with box._lock:  # the file may not grow beyond what it has now
            pages = box._db.execute("PRAGMA page_count").fetchone()[0]
            box._db.execute(f"PRAGMA max_page_count = {pages}")
        wait_until(lambda: "outbox" in status.problems(), 10, "the outbox problem",
                   poll_s=0.05)
        assert "database or disk is full" in status.message()["problems"]["outbox"]
        wait_until(lambda: box.counters()["dropped"] >= 3, 10, "drops", poll_s=0.05)
        assert all(c.alive for c in caps)
        assert all(v["state"] == "ok" for v in status.sensors().values())
        lines = [r.getMessage() for r in caplog.records
                 if "event=outbox_write_failed" in r.getMessage()]
        assert lines and lines[0].startswith("event=outbox_write_failed sensor=")
        assert 'error="database or disk is full"' in lines[0]
        captured = box.counters()["captured"]
        with box._lock:
            box._db.execute("PRAGMA max_page_count = 1073741823")
        wait_until(lambda: box.counters()["captured"] >= captured + 2, 10, "capture resumes",
                   poll_s=0.05)
        wait_until(lambda: "outbox" not in status.problems(), 10, "the outbox recovered",
                   poll_s=0.05)
    finally:
        stop.set()
        for c in caps:
            c.join(5)
    # every window is accounted for: stored or counted as dropped, seqs never reused
    entries = box.peek(10_000)
    for sid in ("s1", "s2"):
        seqs = [e.seq for e in entries if e.sensor == sid]
        assert seqs == sorted(set(seqs))
    box.close()


def test_a_window_the_disk_refuses_shows_the_outbox_problem(tmp_path: Path) -> None:
    """Before: a window refused because the disk was full of something else was counted
    and logged, but the capture looked stored: the status showed no problem."""
    free = [10**12]
    box = Outbox(tmp_path / "o.sqlite", 10**9, 3600, disk_free=lambda: free[0])
    status = Status(SITE, "gw1", ["s1"], box.counters)
    stop = threading.Event()
    simulated = load_driver("simulated")
    s = SensorConfig("s1", "simulated", "pump1", 25600.0, 4096, 0.1)
    asset = site_config("h", 1, "g", tmp_path / "x").asset("pump1")
    cap = SensorCapture(s, asset, SITE, "gw1", box, status, stop,
                        driver_factory=lambda sc, a: simulated(sc, a))
    cap.start()
    try:
        wait_until(lambda: box.counters()["captured"] >= 2, 10, "captures", poll_s=0.05)
        free[0] = 0
        wait_until(lambda: "outbox" in status.problems(), 10, "the outbox problem",
                   poll_s=0.05)
        assert "disk full at" in status.message()["problems"]["outbox"]
        assert cap.alive and status.sensors()["s1"]["state"] == "ok"
        free[0] = 10**12
        wait_until(lambda: "outbox" not in status.problems(), 10, "the outbox recovered",
                   poll_s=0.05)
    finally:
        stop.set()
        cap.join(5)
    c = box.counters()
    assert c["dropped"] >= 1 and c["captured"] == c["queued"] + c["published"] + c["dropped"]
    box.close()


class _Clocks:
    """A wall and a monotonic clock the test moves (ns)."""

    def __init__(self) -> None:
        self.wall, self.mono = time.time_ns(), 5 * 10**9

    def watch(self) -> ClockWatch:
        return ClockWatch(2.0, wall_ns=lambda: self.wall, mono_ns=lambda: self.mono)

    def tick(self, s: float) -> None:
        self.wall += int(s * 1e9)
        self.mono += int(s * 1e9)


def test_clock_watch_tells_a_jump_from_time_passing() -> None:
    clocks = _Clocks()
    watch = clocks.watch()
    clocks.tick(1.0)
    assert watch.check() is None  # both moved 1 s
    clocks.wall += 86_400 * 10**9  # NTP sets the clock a day forward
    assert watch.check() == 86_400 * 10**9


def test_a_capture_right_after_a_clock_jump_expires_nothing(tmp_path: Path) -> None:
    """Before: the outbox re-based its rows only when the gateway's main loop saw the jump
    (every half second); a capture in between dated its window by the new clock and dropped
    every queued row as older than max_age (a board without an RTC, set forward by NTP,
    lost its whole backlog)."""
    clocks = _Clocks()
    box = Outbox(tmp_path / "o.sqlite", 10**8, max_age_s=3600, clock=clocks.watch())
    for i in range(3):
        box.put("s1", i, "t", b"x")
        clocks.tick(1.0)
    clocks.wall += 86_400 * 10**9  # a day forward, before anyone looks
    box.put("s1", 3, "t", b"x")
    assert box.counters()["dropped"] == 0 and box.queued == 4
    assert box.clock_jumps() == [(86_400 * 10**9, 3)]
    assert box.clock_jumps() == []
    clocks.tick(3000.0)
    assert box.expire() == 0, "the re-based rows are 50 min old, not a day"
    clocks.tick(599.5)  # the three rows before the jump are past the hour, the last is not
    assert box.expire() == 3 and box.queued == 1
    box.close()


def test_a_clock_jump_whose_shift_was_rolled_back_is_followed_again(tmp_path: Path) -> None:
    """Before (review): a put that failed after it had seen the jump rolled the shift back,
    but the watch had moved on; the next put dropped every row by age."""
    clocks = _Clocks()
    box = Outbox(tmp_path / "o.sqlite", 10**8, max_age_s=3600, clock=clocks.watch())
    for i in range(3):
        box.put("s1", i, "t", b"x")
        clocks.tick(1.0)
    clocks.wall += 10 * 86_400 * 10**9
    with pytest.raises(OverflowError):  # no SQLite integer: fails after seeing the jump
        box.put("s1", 2**70, "t", b"x")
    box.put("s1", 3, "t", b"x")
    assert box.counters()["dropped"] == 0 and box.queued == 4
    assert box.clock_jumps() == [(10 * 86_400 * 10**9, 3)]
    box.close()


def test_a_clock_jump_shifts_only_the_rows_of_this_run(tmp_path: Path) -> None:
    """Before: a jump shifted every queued row, also those an earlier run dated by a clock
    that was right (they would then never expire)."""
    clocks = _Clocks()
    with Outbox(tmp_path / "o.sqlite", 10**8, max_age_s=3600, clock=clocks.watch()) as box:
        box.put("s1", 0, "t", b"x")
        before = box.peek(1)[0].created_ns
    clocks.wall = 10**15  # rebooted without an RTC: 1970
    with Outbox(tmp_path / "o.sqlite", 10**8, max_age_s=3600, clock=clocks.watch()) as box:
        box.put("s1", 1, "t", b"x")
        clocks.wall = before + 10 * 10**9  # NTP
        assert [(jump > 0, rows) for jump, rows in box.clock_jumps()] == [(True, 1)]
        old, new = box.peek(2)
        assert old.created_ns == before and new.created_ns == before + 10 * 10**9


def test_clock_jump_on_status_topic_capture_goes_on(mosquitto, tmp_path: Path,
                                                   caplog) -> None:
    caplog.set_level(logging.INFO)
    gw = "gw-clock"
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    offset = [0]
    watch = ClockWatch(wall_ns=lambda: time.time_ns() + offset[0])
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=run, args=(config, gw, stop),
                         kwargs=dict(status_interval_s=0.5, ready=ready, clock=watch))
    t.start()
    try:
        assert ready.wait(5)
        time.sleep(1.0)
        offset[0] = -3600 * 10**9  # the wall clock steps back an hour
        wait_until(lambda: any("clock" in s.get("problems", {})
                               for s in status_of(sub.snapshot())),
                   10, "the clock problem on the status topic", poll_s=0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(15)
    msgs = sub.snapshot()
    problem = next(s["problems"]["clock"] for s in status_of(msgs)
                   if "clock" in s.get("problems", {}))
    assert problem.startswith("wall clock jumped -3600.0 s")
    assert any(r.getMessage().startswith("event=clock_jump gateway=gw-clock jump_s=-3600")
               for r in caplog.records)
    for windows in windows_by_sensor(msgs, gw).values():
        seqs = [w.seq for w in windows]
        assert len(seqs) >= 4 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    sub.close()


def test_config_naming_a_missing_device(mosquitto, tmp_path: Path, caplog) -> None:
    """Through the real driver registry: an IIO sensor whose device is not there is a
    sensor fault with a clear reason on the status topic and in the log; the simulated
    sensor beside it publishes on."""
    caplog.set_level(logging.INFO)
    gw = "gw-missing"
    sensor = dict(asset="pump1", fs_hz=25600, window_samples=4096, interval_s=0.5)
    config = parse({
        "site": {"id": SITE},
        "broker": {"host": mosquitto.host, "port": mosquitto.port, "keepalive_s": 5},
        "asset": [{"id": "pump1", "kind": "pump", "shaft_hz": 29.95, "bearing": "SKF 6205"}],
        "gateway": [{"id": gw, "outbox": {"path": str(tmp_path / "o.sqlite")}, "sensor": [
            dict(sensor, id="sim", driver="simulated"),
            dict(sensor, id="acc", driver="iio",
                 options={"device": "adxl355", "root": str(tmp_path / "empty")})]}]})
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(target=run, args=(config, gw, stop),
                         kwargs=dict(status_interval_s=0.5, ready=ready))
    t.start()
    try:
        assert ready.wait(5)
        wait_until(lambda: any(s["sensors"]["acc"]["state"] == "fault"
                               for s in status_of(sub.snapshot())),
                   10, "the fault on status", poll_s=0.05)
        wait_until(lambda: len(windows_by_sensor(sub.snapshot(), gw).get("sim", [])) >= 3,
                   10, "three sim windows", poll_s=0.05)
    finally:
        stop.set()
        t.join(15)
    reason = next(s["sensors"]["acc"]["reason"] for s in status_of(sub.snapshot())
                  if s["sensors"]["acc"]["state"] == "fault")
    assert reason.startswith("no IIO device 'adxl355' under ") and "kernel driver" in reason
    assert "acc" not in windows_by_sensor(sub.snapshot(), gw)
    assert any(r.getMessage().startswith(
        "event=sensor_fault sensor=acc reason=\"no IIO device 'adxl355' under ")
        for r in caplog.records)
    sub.close()
