"""The gateway at the edges of its settings and of what its broker and disk accept: a
remote change reverted at once, values too large to compute with, a window larger than
the outbox or the broker takes, an outbox path that cannot hold one, an outbox that
cannot be updated, each against real mosquitto and SQLite."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plant import wait_until
from test_config import errors_of, minimal
from test_gateway_resilience import _publish_retained
from test_gateway_service import SITE, site_config
from test_publisher import Subscriber, make_publisher, make_window, status_of

from ballpass import topics
from ballpass.config import Config, ConfigError, parse
from ballpass.gateway.drivers import Capture
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import publish_size
from ballpass.gateway.remote import ConfigRejected, parse_remote
from ballpass.gateway.service import run
from ballpass.services import TEMPLATE_PATH, Mosquitto


def _start(config: Config, gw: str, **kwargs: Any) -> tuple[threading.Event, threading.Thread,
                                                            list[Any]]:
    """`run` on a thread; returns (stop, thread, [its result or exception])."""
    stop, ready, out = threading.Event(), threading.Event(), []

    def go() -> None:
        try:
            out.append(run(config, gw, stop, status_interval_s=0.5, ready=ready, **kwargs))
        except BaseException as e:  # the test asserts on it (OverflowError, before)
            out.append(e)
    t = threading.Thread(target=go)
    t.start()
    assert ready.wait(5)
    return stop, t, out


def _one_sensor_site(host: str, port: int, gw: str, outbox: Path, **sensor: Any) -> Config:
    s = {"id": "s1", "driver": "simulated", "asset": "pump1", "fs_hz": 1000,
         "window_samples": 100, "interval_s": 0.5, **sensor}
    return parse({
        "site": {"id": SITE},
        "broker": {"host": host, "port": port, "keepalive_s": 5},
        "asset": [{"id": "pump1", "kind": "pump", "shaft_hz": 29.95, "bearing": "SKF 6205"}],
        "gateway": [{"id": gw, "outbox": {"path": str(outbox)}, "sensor": [s]}],
    }, drivers=False)


# --- 1. a remote change and its revert while the capture thread is busy -------------------


class _SlowDriver:
    """A read takes `READ_S` (a blocking full-window device read); counts reads done."""

    READ_S = 3.0

    def __init__(self, reading: threading.Event, reads: list[float]) -> None:
        self.reading, self.reads = reading, reads

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, n: int) -> Capture:
        self.reading.set()
        time.sleep(self.READ_S)
        self.reads.append(time.monotonic())
        return Capture(np.zeros((1, n)), time.time_ns())


@pytest.mark.slow
def test_a_remote_change_reverted_during_a_read_is_reverted(mosquitto, tmp_path: Path) -> None:
    """Before: the revert was compared with the settings the busy thread still ran (the
    same), skipped, and the sensor stayed disabled for good once the read ended."""
    gw = "gw-revert"
    config = _one_sensor_site(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite",
                              interval_s=4.0)
    sub = Subscriber(mosquitto.host, mosquitto.port, topics.status(SITE, gw), gw)
    reading, reads = threading.Event(), []
    stop, t, out = _start(config, gw, driver_factory=lambda s, a: _SlowDriver(reading, reads))
    cfg_topic = topics.config(SITE, gw)

    def applied() -> int:
        return sum(s["config"]["state"] == "applied" for s in status_of(sub.snapshot()))
    try:
        wait_until(lambda: status_of(sub.snapshot()), 5, "the gateway online", poll_s=0.02)
        assert reading.wait(5)
        time.sleep(0.2)  # its config subscription is in place
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic,
                          json.dumps({"sensors": {"s1": {"enabled": False}}}).encode())
        wait_until(lambda: applied() >= 1, 5, "the change applied", poll_s=0.02)
        _publish_retained(mosquitto.host, mosquitto.port, cfg_topic, b"{}")
        wait_until(lambda: applied() >= 2, 5, "the revert applied", poll_s=0.02)
        assert not reads, "both came while the first read was still running"
        # the first read ends; the thread then runs what was asked last: enabled
        wait_until(lambda: len(reads) >= 2, 4 * _SlowDriver.READ_S, "capture going on")
        assert status_of(sub.snapshot())[-1]["sensors"]["s1"]["state"] == "ok"
    finally:
        stop.set()
        t.join(20)
        sub.close()
    assert out == [0]


# --- 2. and 6. values too large to compute with --------------------------------------------


def test_an_outbox_age_beyond_ten_years_is_a_config_error_and_clamped(tmp_path: Path) -> None:
    """Before: accepted, and every capture raised OverflowError (age in ns beyond int64)."""
    data = minimal()
    data["gateway"][0]["outbox"] = {"max_age_h": 1e7}
    assert errors_of(data) == ["gateway[0].outbox.max_age_h: must be > 0 and <= 87600 "
                               "(ten years), got 10000000.0"]
    data["gateway"][0]["outbox"] = {"max_age_h": 87600}
    assert parse(data).gateways[0].outbox.max_age_h == 87600
    with Outbox(tmp_path / "o.sqlite", 1 << 20, 1e7 * 3600.0) as box:  # not via the config
        box.capture("s1", "t", lambda seq: b"x" * 10)
        assert box.expire() == 0
        assert box.counters()["queued"] == 1


def test_interval_s_beyond_a_day_is_refused_by_site_file_and_remote_config(
        mosquitto, tmp_path: Path) -> None:
    """Before: a remote `interval_s` of 1e10 was applied, and the gateway's stop raised
    OverflowError (a thread join timeout of 2e10 s)."""
    data = minimal()
    data["gateway"][0]["sensor"][0]["interval_s"] = 1e10
    assert errors_of(data) == ["gateway[0].sensor[0].interval_s: must be > 0 and <= 86400 "
                               "(one day), got 10000000000.0"]
    gw = "gw-interval"
    config = _one_sensor_site(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    with pytest.raises(ConfigRejected) as e:
        parse_remote(b'{"sensors": {"s1": {"interval_s": 1e10}}}', config.gateway(gw))
    assert e.value.errors == ["sensors.s1.interval_s: must be > 0 and <= 86400 (one day), "
                              "got 10000000000.0"]
    sub = Subscriber(mosquitto.host, mosquitto.port, topics.status(SITE, gw), gw)
    stop, t, out = _start(config, gw)
    try:
        wait_until(lambda: status_of(sub.snapshot()), 5, "the gateway online", poll_s=0.02)
        _publish_retained(mosquitto.host, mosquitto.port, topics.config(SITE, gw),
                          b'{"sensors": {"s1": {"interval_s": 1e10}}}')
        wait_until(lambda: status_of(sub.snapshot())[-1]["config"]["state"] == "rejected",
                   5, "the config rejected", poll_s=0.05)
    finally:
        stop.set()
        t.join(20)
        sub.close()
    assert out == [0]


# --- 3. a window larger than the broker takes -----------------------------------------------


def _mosquitto_with(tmp_path: Path, line: str) -> Mosquitto:
    """The shipped broker config with `line` in place of its max_packet_size."""
    template = tmp_path / "mosquitto.conf"
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "\nmax_packet_size 50335744\n" in text
    template.write_text(text.replace("\nmax_packet_size 50335744\n", f"\n{line}\n"))
    broker = Mosquitto(tmp_path / "mq", anonymous=True, template=template)
    broker.start()
    return broker


def test_a_window_over_the_brokers_packet_size_is_dropped_not_stuck(tmp_path: Path,
                                                                     caplog) -> None:
    """Before: mosquitto closed the connection on it, and it was re-sent first after each
    reconnect: ~3 reconnects a second, and nothing behind it ever left."""
    caplog.set_level(logging.INFO)
    limit = 100_000
    broker = _mosquitto_with(tmp_path, f"max_packet_size {limit}")
    try:
        box = Outbox(tmp_path / "o.sqlite", 64 << 20, 3600)
        topic = topics.window(SITE, "gw1", "s1")
        base = limit - 200
        fits = base + limit - publish_size(topic, bytes(base))
        assert publish_size(topic, bytes(fits)) == limit
        # MQTT 5 counts the whole packet (mosquitto 2.0.11 counts its length field out)
        box.put("s1", 1, topic, b"A" * fits)        # exactly the broker's limit: sent
        box.put("s1", 2, topic, b"B" * 2 * limit)   # over it: dropped
        box.put("s1", 3, topic, make_window(3))
        sub = Subscriber(broker.host, broker.port, f"bp/v1/{SITE}/gw1/+/window", "limit")
        pub, _ = make_publisher(broker.host, broker.port, "gw1", box)
        pub.start()
        try:
            got = sub.wait_for(lambda m: len(m) >= 2)
            stats = dict(pub.stats)
        finally:
            pub.stop(drain_timeout_s=1)
            sub.close()
        assert [len(m.payload) for m in got] == [fits, len(make_window(3))]
        assert (stats["connects"], stats["disconnects"]) == (1, 0)
        counters = box.counters()
        assert (counters["published"], counters["dropped"], counters["queued"]) == (2, 1, 0)
        lines = [r.getMessage() for r in caplog.records if "event=window_dropped" in
                 r.getMessage()]
        assert lines == [f"event=window_dropped reason=too_large gateway=gw1 sensor=s1 seq=2 "
                         f"bytes={publish_size(topic, bytes(2 * limit))} max_packet_size={limit}"]
        box.close()
    finally:
        broker.stop()


def test_a_broker_that_drops_every_publish_gets_backoff_and_a_status_problem(
        tmp_path: Path) -> None:
    """mosquitto's `message_size_limit` is not announced: it closes the connection on a
    bigger PUBLISH. Before: the backoff restarted at every CONNACK (~3 reconnects/s for
    good), and nothing in the status told why nothing was delivered."""
    broker = _mosquitto_with(tmp_path, "message_size_limit 1000")
    try:
        box = Outbox(tmp_path / "o.sqlite", 64 << 20, 3600)
        topic = topics.window(SITE, "gw1", "s1")
        box.put("s1", 1, topic, b"B" * 2000)
        box.put("s1", 2, topic, b"small")
        pub, status = make_publisher(broker.host, broker.port, "gw1", box,
                                     backoff_initial_s=0.2, backoff_max_s=1.6)
        t_start = time.monotonic()
        pub.start()
        try:
            # 7 connects: 6 backoff waits, at least 0.1 + 0.2 + 0.4 + 3 x 0.8 = 3.1 s.
            wait_until(lambda: pub.stats["connects"] >= 7, 30, "7 connects", poll_s=0.05)
            connects = pub.stats["connects"]
            problems = status.problems()
            elapsed_s = time.monotonic() - t_start
        finally:
            pub.stop(drain_timeout_s=0)
        # The wait before connect k + 1 is at least half of min(1.6, 0.2 x 2^(k-1)) s (the
        # jitter's low end; no PUBACK and no connection lasting `stable_after_s` resets it):
        # so many connects cannot fit in `elapsed_s`. A backoff restarted at each CONNACK
        # (0.1-0.2 s each) reaches 7 within about 1.2 s, where this allows 4.
        most, waited = 1, 0.0
        while waited + 0.5 * min(1.6, 0.2 * 2 ** (most - 1)) <= elapsed_s:
            waited += 0.5 * min(1.6, 0.2 * 2 ** (most - 1))
            most += 1
        assert connects <= most, (connects, most, elapsed_s)
        assert problems["delivery"].startswith(
            "the broker closed the connection 3 times in a row with windows in flight and "
            "none acknowledged"), problems
        assert box.counters()["queued"] == 2  # kept: the broker may be fixed
        box.close()
    finally:
        broker.stop()


# --- 4. a window larger than the outbox ------------------------------------------------------


def test_a_payload_over_the_outbox_bound_is_refused_and_the_backlog_kept(tmp_path: Path,
                                                                          caplog) -> None:
    """Before: it deleted the whole backlog (in-flight rows too, whose PUBACK then found
    nothing) and was stored anyway, above the bound."""
    box = Outbox(tmp_path / "o.sqlite", 1_000_000, 3600)
    for _ in range(50):
        box.capture("temp", "t", lambda seq: b"x" * 1000)
    in_flight = box.peek(3)
    seq = box.capture("vib", "t", lambda seq: b"y" * 1_500_000)
    box.put("vib", seq + 1, "t", b"y" * 1_000_001)
    # captured = queued + published + dropped: a refused window was captured, then dropped
    assert box.counters() == {"captured": 52, "queued": 50, "published": 0, "dropped": 2,
                              "replayed": 0}
    assert box.queued_bytes == 50_000
    assert box.ack([e.id for e in in_flight]) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"event=window_dropped reason=too_large sensor=vib seq={seq} bytes=1500000 "
        "max_bytes=1000000",
        f"event=window_dropped reason=too_large sensor=vib seq={seq + 1} bytes=1000001 "
        "max_bytes=1000000"]
    box.close()


def test_one_window_must_fit_the_outbox_in_site_file_and_remote_config(tmp_path: Path) -> None:
    data = minimal()
    data["gateway"][0]["outbox"] = {"max_mb": 0.01}
    n = data["gateway"][0]["sensor"][0]["window_samples"]
    size = 48 + 3 * 4 * n
    assert errors_of(data) == [
        f"gateway[0].outbox.max_mb: must hold one window of sensor "
        f"{data['gateway'][0]['sensor'][0]['id']}: a window of {n} samples is up to {size} "
        "bytes (3 float32 channels + 48-byte header), more than outbox.max_mb = 0.01 "
        "(10485 bytes) holds"]
    gw = site_config("127.0.0.1", 1, "gw1", tmp_path / "o.sqlite").gateway("gw1")
    small = dataclasses.replace(gw, outbox=dataclasses.replace(gw.outbox, max_mb=40))
    with pytest.raises(ConfigRejected) as e:  # the default 512 MB holds 4194304 samples...
        parse_remote(b'{"sensors": {"s1": {"window_samples": 4194304, "interval_s": 200}}}',
                     small)
    assert e.value.errors == [  # ...40 MB does not
        "sensors.s1.window_samples: a window of 4194304 samples is up to 50331696 bytes "
        "(3 float32 channels + 48-byte header), more than outbox.max_mb = 40 (41943040 "
        "bytes) holds, got 4194304"]
    parse_remote(b'{"sensors": {"s1": {"window_samples": 4194304, "interval_s": 200}}}', gw)


# --- 5. an outbox path that cannot hold an outbox --------------------------------------------


def test_an_unusable_outbox_path_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """Before: a traceback and exit 1 (systemd would restart it forever)."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory\n")
    config = _one_sensor_site("127.0.0.1", 1, "gw1", tmp_path / "o.sqlite")
    with pytest.raises(ConfigError) as e:
        run(config, "gw1", threading.Event(), outbox_path=a_file / "o.sqlite")
    assert len(e.value.errors) == 1
    assert e.value.errors[0].startswith(f"--outbox: cannot open the outbox "
                                        f"'{a_file / 'o.sqlite'}' (")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not an SQLite database, but a file of someone's\n" * 100)
    site = tmp_path / "site.toml"
    site.write_text(f"""
[site]
id = "{SITE}"
[broker]
host = "127.0.0.1"
port = 1
[[asset]]
id = "pump1"
kind = "pump"
shaft_hz = 29.95
bearing = "SKF 6205"
[[gateway]]
id = "gw1"
outbox = {{ path = "{junk}" }}
[[gateway.sensor]]
id = "s1"
driver = "simulated"
asset = "pump1"
fs_hz = 1000
window_samples = 100
interval_s = 1
""")
    p = subprocess.run([sys.executable, "-m", "ballpass", "gateway", "-c", str(site), "-g",
                        "gw1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"gateway[0].outbox.path: cannot open the outbox '{junk}' (DatabaseError: " \
        in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# --- 7. the publisher's own outbox problem ---------------------------------------------------


def test_the_publishers_ack_problem_clears_at_its_next_ack(mosquitto, tmp_path: Path) -> None:
    """Before: it was the problem `outbox`, which only a stored capture cleared (and a
    stored capture cleared it while acks still failed)."""
    box = Outbox(tmp_path / "o.sqlite", 64 << 20, 3600)
    for seq in range(3):
        box.put("s1", seq, topics.window(SITE, "gw1", "s1"), make_window(seq))
    with box._lock:  # SQLite itself refuses every write now (as with a full disk)
        box._db.execute("PRAGMA query_only = 1")
    pub, status = make_publisher(mosquitto.host, mosquitto.port, "gw1", box)
    pub.start()
    try:
        wait_until(lambda: "outbox_ack" in status.problems(), 10, "the ack problem",
                   poll_s=0.05)
        assert status.problems()["outbox_ack"].startswith("cannot update the outbox: ")
        assert "outbox" not in status.problems()  # the capture side's, not the publisher's
        with box._lock:
            box._db.execute("PRAGMA query_only = 0")
        wait_until(lambda: box.counters()["published"] == 3, 10, "the acks", poll_s=0.05)
        wait_until(lambda: status.problems() == {}, 5, "the problem cleared", poll_s=0.05)
    finally:
        pub.stop(drain_timeout_s=1)
    box.close()


# --- a status larger than the broker takes ---------------------------------------------------


def _faulty_site(port: int, gw: str, outbox: Path, bad: int) -> Config:
    s = {"driver": "simulated", "asset": "pump1", "fs_hz": 25600, "window_samples": 64,
         "interval_s": 0.2}
    return parse({
        "site": {"id": SITE},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive_s": 5},
        "asset": [{"id": "pump1", "kind": "pump", "shaft_hz": 29.95, "bearing": "SKF 6205"}],
        "gateway": [{"id": gw, "outbox": {"path": str(outbox), "flush_rate_per_s": 100},
                     "sensor": [dict(s, id="good")] +
                               [dict(s, id=f"bad{i}") for i in range(bad)]}],
    })


class _LongFault:
    """A device whose open fails with a long error text (a sysfs dump, say)."""

    def __init__(self, sensor: Any, asset: Any) -> None:
        self.sensor = sensor

    def open(self) -> None:
        from ballpass.gateway.drivers import SensorFault
        raise SensorFault(f"cannot open /sys/bus/iio/devices/iio:device0 ({self.sensor.id}): "
                          + "x" * 3000)

    def read(self, n: int) -> Capture:
        raise AssertionError("never opened")

    def close(self) -> None:
        pass


def _long_faults(sensor: Any, asset: Any) -> Any:
    from ballpass.gateway.drivers import load as load_driver
    if sensor.id.startswith("bad"):
        return _LongFault(sensor, asset)
    return load_driver("simulated")(sensor, asset)


@pytest.mark.parametrize("bad", [2, 16])
def test_a_status_over_the_brokers_packet_size_is_cut_not_a_dropped_connection(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: int) -> None:
    """Before: two 3 kB fault reasons made the status over mosquitto's max_packet_size
    4096: the broker closed the connection at every status (at every CONNACK), no window
    was delivered, and `delivery_stuck` blamed the windows. Now reasons are cut to 256
    characters (2 faulty sensors: the full status fits), and a status still too big (16
    faulty sensors) goes in its reduced form, without reasons."""
    from ballpass.gateway.status import MAX_REASON
    caplog.set_level(logging.INFO)
    limit = 4096
    broker = _mosquitto_with(tmp_path, f"max_packet_size {limit}")
    gw = "gw-big-status"
    sub = Subscriber(broker.host, broker.port, f"bp/v1/{SITE}/{gw}/#", f"big{bad}")
    try:
        config = _faulty_site(broker.port, gw, tmp_path / "o.sqlite", bad)
        stop, t, out = _start(config, gw, driver_factory=_long_faults)
        try:
            def delivered(m: list) -> bool:
                s = status_of(m)
                return sum(x.topic.endswith("/window") for x in m) >= 5 and bool(s) and \
                    s[-1]["sensors"][f"bad{bad - 1}"]["state"] == "fault"
            msgs = sub.wait_for(delivered, timeout=10)
        finally:
            stop.set()
            t.join(15)
        assert out == [0]
        last = status_of(msgs)[-1]
        assert last["sensors"]["good"] == {"state": "ok", "reason": ""}
        assert all(len(m.payload) < limit for m in msgs if m.topic.endswith("/status"))
        reason = last["sensors"]["bad0"]["reason"]
        events = [r.getMessage() for r in caplog.records]
        if bad == 2:
            assert len(reason) == MAX_REASON and reason.endswith("…")
            assert reason.startswith("cannot open /sys/bus/iio/devices/iio:device0 (bad0): xx")
            assert not any(e.startswith("event=status_too_large") for e in events)
        else:
            assert reason == ""  # the reduced form
            assert last["sensors"]["bad0"]["state"] == "fault"
            too_large = [e for e in events if e.startswith("event=status_too_large")]
            assert len(too_large) == 1, too_large  # once, not at every status
            assert f"gateway={gw} sent=reduced bytes=" in too_large[0]
            assert too_large[0].endswith(f"max_packet_size={limit}")
        assert not any(e.startswith(("event=broker_disconnected", "event=delivery_stuck"))
                       for e in events)
    finally:
        sub.close()
        broker.stop()


def test_every_reason_on_the_status_is_cut() -> None:
    from ballpass.gateway.status import MAX_REASON, Status
    status = Status(SITE, "gw1", ["s1"], dict)
    long = "e" * 5000
    status.sensor_fault("s1", long)
    status.problem("outbox", long)
    status.config_result("rejected", long)
    message = json.loads(status.payload())
    for reason in (message["sensors"]["s1"]["reason"], message["problems"]["outbox"],
                   message["config"]["reason"]):
        assert reason == "e" * (MAX_REASON - 1) + "…"
    status.sensor_fault("s1", "short")
    assert status.sensors()["s1"]["reason"] == "short"
