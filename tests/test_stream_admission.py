"""Admission of windows (issue 15): a window the database cannot hold is refused alone, and a
gateway's credentials are worth that gateway's sensors only.

The unit tests drive `Admission` directly; the service test runs the real stream process
against the real mosquitto (password + ACL) and influxd, with gateways publishing with their
own real credentials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from plant import (
    query_rows,
    read_status,
    spawn_ballpass,
    stream_site,
    wait_until,
    write_passwords,
)

from ballpass import topics, wire
from ballpass.config import parse
from ballpass.services import Influxd, Mosquitto
from ballpass.stream.admission import Admission, Refusal, Skip
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.pipeline import Incoming

CONFIG = {
    "site": {"id": "s1"},
    "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": 25.0}],
    "gateway": [
        {"id": "gw1", "sensor": [{"id": "a", "driver": "simulated", "asset": "m",
                                  "fs_hz": 25600, "window_samples": 4096, "interval_s": 1},
                                 {"id": "t", "driver": "simulated", "asset": "m",
                                  "kind": "temperature", "fs_hz": 1, "window_samples": 16,
                                  "interval_s": 60}]},
        {"id": "gw2", "sensor": [{"id": "b", "driver": "simulated", "asset": "m",
                                  "fs_hz": 25600, "window_samples": 4096, "interval_s": 1}]},
    ],
}


def _payload(seq: int, t0_ns: int | None = None, amplitude: float = 0.1) -> bytes:
    rng = np.random.default_rng(seq % 2**32)
    return wire.encode(wire.Window(
        seq=seq, t0_ns=time.time_ns() if t0_ns is None else t0_ns, fs_hz=25600.0,
        samples=amplitude * rng.standard_normal((1, 4096))))


def _admission(tmp_path: Path) -> tuple[Admission[str], StreamCounters]:
    counters = StreamCounters()
    return Admission(parse(CONFIG), counters, DeadLetters(tmp_path / "dl.jsonl")), counters


@pytest.mark.parametrize(("seq", "t0_ns", "reason"), [
    (2**63, None, "seq_out_of_range"),
    (2**64 - 1, None, "seq_out_of_range"),
    (1, -(2**63), "t0_out_of_range"),
    (1, 2**63 - 1, "t0_out_of_range"),
    (1, 5 * 10**9, "t0_out_of_range"),  # a board that never set its clock: 1970
])
def test_a_header_the_database_cannot_hold_is_refused_counted_and_dead_lettered(
        tmp_path: Path, seq: int, t0_ns: int | None, reason: str) -> None:
    admission, counters = _admission(tmp_path)
    topic = topics.window("s1", "gw1", "a")
    payload = _payload(seq, t0_ns)
    assert admission.admit("s1", "gw1", "a", topic, payload, "m1") is Skip.ACK
    assert counters.rejected == {reason: 1} and counters.dead_lettered == 1
    [record] = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert record["reason"] == reason and record["topic"] == topic
    assert record["bytes"] == len(payload)
    # The largest storable seq and a time now are admitted.
    assert isinstance(admission.admit("s1", "gw1", "a", topic, _payload(2**63 - 1), "m2"),
                      Incoming)


@pytest.mark.parametrize(("site", "gateway", "sensor", "reason"), [
    ("s1", "gw2", "a", "wrong_gateway"),  # gw2 speaking for gw1's sensor under its own prefix
    ("s9", "gw1", "a", "wrong_site"),
    ("s1", "gw1", "zz", "unknown_sensor"),
])
def test_a_sensor_is_bound_to_its_configured_site_and_gateway(
        tmp_path: Path, site: str, gateway: str, sensor: str, reason: str) -> None:
    admission, counters = _admission(tmp_path)
    got = admission.admit(site, gateway, sensor, topics.window(site, gateway, sensor),
                          _payload(1), "m")
    assert got is Skip.ACK and counters.rejected == {reason: 1}


def _window(kind: wire.Kind = wire.Kind.ACCELERATION, n: int = 4096, fs_hz: float = 25600.0,
            value: float | None = None) -> bytes:
    samples = (np.full((1, n), value) if value is not None
               else 0.1 * np.random.default_rng(0).standard_normal((1, n)))
    return wire.encode(wire.Window(seq=1, t0_ns=time.time_ns(), fs_hz=fs_hz, samples=samples,
                                   kind=kind))


@pytest.mark.parametrize(("sensor", "payload", "reason"), [
    # Before: a shaft-speed window vanished, counted as written; a temperature window of
    # 999 °C on an acceleration sensor was written and became its asset's temperature.
    ("a", _window(wire.Kind.SHAFT_SPEED), "kind"),
    ("a", _window(wire.Kind.TEMPERATURE, 16, 1.0, 999.0), "kind"),
    ("t", _window(wire.Kind.ACCELERATION), "kind"),
    ("t", _window(wire.Kind.SHAFT_SPEED, 16, 1.0, 25.0), "kind"),
    # Before: admitted, then the kernels raised and the whole batch ran again window by
    # window (3.6 times slower: one gateway slowed all).
    ("a", _window(n=15), "n_samples"),
    ("a", _window(fs_hz=1e-200), "fs_hz"),
    ("a", _window(fs_hz=0.5), "fs_hz"),
    ("a", _window(fs_hz=2e7), "fs_hz"),
], ids=["speed-on-accel", "temp-on-accel", "accel-on-temp", "speed-on-temp", "15-samples",
        "1e-200-hz", "0.5-hz", "20-mhz"])
def test_a_window_its_sensor_cannot_have_is_refused(
        tmp_path: Path, sensor: str, payload: bytes, reason: str) -> None:
    admission, counters = _admission(tmp_path)
    topic = topics.window("s1", "gw1", sensor)
    assert admission.admit("s1", "gw1", sensor, topic, payload, "m") is Skip.ACK
    assert counters.rejected == {reason: 1} and counters.dead_lettered == 1
    assert admission.check("s1", "gw1", sensor, payload) == Refusal(
        reason, _dead_letter_detail(tmp_path))


def _dead_letter_detail(tmp_path: Path) -> str:
    [record] = [json.loads(x) for x in (tmp_path / "dl.jsonl").read_text().splitlines()]
    return str(record["detail"])


@pytest.mark.parametrize(("sensor", "payload"), [
    ("a", _window(n=16)),
    ("a", _window(fs_hz=1.0)),
    ("a", _window(fs_hz=1e7)),
    ("a", _window(fs_hz=12_800.0)),  # not the configured rate: a gateway reloaded first
    ("t", _window(wire.Kind.TEMPERATURE, 1, 0.01, 21.5)),  # the kernels never see these
], ids=["16-samples", "1-hz", "10-mhz", "another-rate", "temperature"])
def test_a_window_the_stream_can_process_is_admitted(
        tmp_path: Path, sensor: str, payload: bytes) -> None:
    admission, counters = _admission(tmp_path)
    got = admission.admit("s1", "gw1", sensor, topics.window("s1", "gw1", sensor), payload, "m")
    assert isinstance(got, Incoming) and not counters.rejected


def test_a_window_at_qos_0_is_refused(tmp_path: Path) -> None:
    """Windows are QoS 1 (docs/topics.md); at QoS 0 nothing bounds them (a flood of
    291,200 in 25 s grew the stream by 3.6 GB)."""
    admission, counters = _admission(tmp_path)
    topic = topics.window("s1", "gw1", "a")
    assert admission.admit("s1", "gw1", "a", topic, _payload(1), "m", qos=0) is Skip.ACK
    assert counters.rejected == {"qos": 1} and counters.dead_lettered == 1
    assert isinstance(admission.admit("s1", "gw1", "a", topic, _payload(1), "m", qos=1),
                      Incoming)


def test_de_dup_is_per_gateway_so_a_copy_holds_and_a_written_window_acks(
        tmp_path: Path) -> None:
    admission, counters = _admission(tmp_path)
    topic = topics.window("s1", "gw1", "a")
    item = admission.admit("s1", "gw1", "a", topic, _payload(7), "first")
    assert isinstance(item, Incoming)
    assert admission.admit("s1", "gw1", "a", topic, _payload(7), "copy") is Skip.HOLD
    assert admission.written(item) == ["first", "copy"]
    assert admission.admit("s1", "gw1", "a", topic, _payload(7), "late") is Skip.ACK
    assert counters.duplicates == 2 and counters.ingested == 1


def _site_file(broker: Mosquitto, influx_url: str, db: str, tmp: Path) -> Path:
    write_passwords(tmp, broker.users)
    return stream_site(tmp / "site.toml", port=broker.port, influx_url=influx_url, db=db,
                       state_dir=tmp / "state", sensors={"gw1": ["a"], "gw2": ["b"]},
                       stream=f'username = "stream"\npassword_file = "{tmp / "stream.pw"}"\n'
                              'batch_max = 16')


def _publisher(broker: Mosquitto, user: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.users[user])
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


@pytest.mark.slow
def test_a_poisoned_window_and_a_forged_sensor_do_not_stop_or_shadow_anything(
        mosquitto_auth: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        tmp_path: Path) -> None:
    """Before: seq 2**63 made the stream exit (and every restart after it), and gw2 could
    write gw1's sensor `a` and have gw1's real window of the same seq discarded."""
    url, db = influx_db
    site = _site_file(mosquitto_auth, url, db, tmp_path)
    status_file = tmp_path / "status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file)],
                            tmp_path / "stream.log")
    gw1 = gw2 = None
    try:
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120,
                   "the stream to subscribe")
        gw1, gw2 = _publisher(mosquitto_auth, "gw1"), _publisher(mosquitto_auth, "gw2")
        # In one batch: the poison, gw1's good windows, gw2's own window.
        sent = [
            gw1.publish(topics.window("s1", "gw1", "a"), _payload(2**63), qos=1),
            gw1.publish(topics.window("s1", "gw1", "a"), _payload(1), qos=1),
            gw2.publish(topics.window("s1", "gw2", "b"), _payload(1), qos=1),
            # gw2 forges gw1's sensor, with a loud signal, below its own prefix and
            # another site's: both allowed by the ACL, both refused by the stream.
            gw2.publish(topics.window("s1", "gw2", "a"), _payload(2, amplitude=50.0), qos=1),
            gw2.publish(topics.window("s9", "gw2", "a"), _payload(3, amplitude=50.0), qos=1),
            gw1.publish(topics.window("s1", "gw1", "a"), _payload(2), qos=1),
            gw1.publish(topics.window("s1", "gw1", "a"), _payload(3), qos=1),
        ]
        for info in sent:
            info.wait_for_publish(10)

        def settled() -> bool:
            return read_status(status_file).get("counters", {}).get("written", 0) >= 4
        wait_until(settled, 60, "the good windows written")
        assert stream.poll() is None, "the stream exited"
    finally:
        for client in (gw1, gw2):
            if client is not None:
                client.loop_stop()
                client.disconnect()
        stream.terminate()
        assert stream.wait(30) == 0
    counters = read_status(status_file)["counters"]
    assert counters["rejected"] == {"seq_out_of_range": 1, "wrong_gateway": 1,
                                    "wrong_site": 1}
    assert counters["dead_lettered"] == 3 and counters["duplicates"] == 0
    rows = query_rows(influxd, db, "SELECT seq, gateway FROM vibration GROUP BY sensor")
    assert sorted((r["sensor"], r["gateway"], r["seq"]) for r in rows) == [
        ("a", "gw1", 1), ("a", "gw1", 2), ("a", "gw1", 3), ("b", "gw2", 1)]
    reasons = [json.loads(line)["reason"] for line in
               (tmp_path / "state" / "deadletter.jsonl").read_text().splitlines()]
    assert sorted(reasons) == ["seq_out_of_range", "wrong_gateway", "wrong_site"]
