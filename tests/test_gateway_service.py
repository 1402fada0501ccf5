"""The gateway runtime end to end: simulated sensors → outbox → real mosquitto."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_publisher import Subscriber, status_of  # tests/ is on sys.path (rootdir mode)

from ballpass import topics, wire
from ballpass.config import AssetConfig, Config, SensorConfig, parse
from ballpass.gateway.drivers import Capture, SensorFault
from ballpass.gateway.drivers import load as load_driver
from ballpass.gateway.service import outbox_path_for, run

SITE = "plant1"


def site_config(host: str, port: int, gateway: str, outbox: Path) -> Config:
    sensor = dict(driver="simulated", asset="pump1", fs_hz=25600, window_samples=4096,
                  interval_s=0.5)
    data: dict[str, Any] = {
        "site": {"id": SITE},
        "broker": {"host": host, "port": port, "keepalive_s": 5},
        "asset": [{"id": "pump1", "kind": "pump", "shaft_hz": 29.95, "bearing": "SKF 6205"}],
        "gateway": [{"id": gateway, "outbox": {"path": str(outbox)},
                     "sensor": [dict(sensor, id="s1"),
                                dict(sensor, id="s2", options={"fault": "outer_race"})]}],
    }
    return parse(data)


def run_for(config: Config, gateway: str, seconds: float, **kwargs: Any) -> int:
    stop = threading.Event()
    ready = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        run(config, gateway, stop, status_interval_s=0.5, ready=ready, **kwargs)))
    t.start()
    assert ready.wait(5)
    time.sleep(seconds)
    stop.set()
    t.join(15)
    assert not t.is_alive()
    return result[0]


def windows_by_sensor(msgs: list, gateway: str) -> dict[str, list[wire.Window]]:
    out: dict[str, list[wire.Window]] = {}
    for m in msgs:
        parsed = topics.parse_sensor_topic(m.topic)
        if parsed and parsed.leaf == "window" and parsed.gateway == gateway:
            out.setdefault(parsed.sensor, []).append(wire.decode(m.payload))
    return out


def test_gateway_publishes_simulated_windows_and_continues_seqs(mosquitto, tmp_path: Path
                                                                ) -> None:
    gw = "gw-sim"
    outbox = tmp_path / "box" / "o.sqlite"
    config = site_config(mosquitto.host, mosquitto.port, gw, outbox)
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    assert run_for(config, gw, 3.0) == 0
    msgs = sub.wait_for(lambda m: status_of(m) and status_of(m)[-1]["state"] == "offline")
    first_run = windows_by_sensor(msgs, gw)
    assert set(first_run) == {"s1", "s2"}
    total = 0
    for windows in first_run.values():
        seqs = [w.seq for w in windows]
        assert 4 <= len(seqs) <= 8, seqs  # 3 s at 0.5 s: 6 or 7 (fewer on a loaded box)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive, in order
        for w in windows:
            assert w.samples.shape == (1, 4096) and w.fs_hz == 25600.0
            assert w.kind == wire.Kind.ACCELERATION and not w.historical
            assert abs(w.shaft_hz - 29.95) < 1.0
        total += len(seqs)
    # capture slots are 0.5 s apart on the monotonic clock, so t0 is too (± scheduling)
    t0 = [w.t0_ns for w in first_run["s1"]]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(t0)]
    assert all(0.3 < g < 0.7 for g in gaps), gaps
    statuses = status_of(msgs)
    assert statuses[0]["state"] == "online"
    final = statuses[-1]
    assert final["counters"] == {"captured": total, "queued": 0, "published": total,
                                 "dropped": 0, "replayed": 0}
    assert final["sensors"] == {"s1": {"state": "ok", "reason": ""},
                                "s2": {"state": "ok", "reason": ""}}
    assert final["gateway"] == gw and final["site"] == SITE and final["version"]

    # Restart on the same outbox: seqs continue, counters carry on.
    n_before = len(msgs)
    assert run_for(config, gw, 1.2) == 0
    msgs = sub.wait_for(lambda m: status_of(m[n_before:])
                        and status_of(m[n_before:])[-1]["state"] == "offline")
    second = windows_by_sensor(msgs[n_before:], gw)
    for sensor in ("s1", "s2"):
        assert second[sensor][0].seq == first_run[sensor][-1].seq + 1
    assert status_of(msgs)[-1]["counters"]["published"] == total + sum(
        len(w) for w in second.values())
    sub.close()


def _run_with_s2_on(driver: Any, mosquitto: Any, tmp_path: Path, gw: str,
                    seconds: float) -> list:
    """Run gateway `gw` for `seconds` with sensor s2 on `driver` (s1 simulated); every
    message it published, up to its final (offline) status."""
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    simulated = load_driver("simulated")

    def factory(sensor: SensorConfig, asset: AssetConfig):
        return driver(sensor, asset) if sensor.id == "s2" else simulated(sensor, asset)

    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    assert run_for(config, gw, seconds, driver_factory=factory) == 0
    msgs = sub.wait_for(lambda m: status_of(m) and status_of(m)[-1]["state"] == "offline")
    sub.close()
    return msgs


class _Unplugged:
    """A driver whose device is missing: open() works, read() faults."""

    def __init__(self, sensor: SensorConfig, asset: AssetConfig) -> None:
        self.closed = 0

    def open(self) -> None:
        pass

    def read(self, n_samples: int) -> Capture:
        raise SensorFault("no data from accelerometer (cable unplugged?)")

    def close(self) -> None:
        self.closed += 1


def test_faulty_sensor_reported_while_the_other_publishes(mosquitto, tmp_path: Path,
                                                          caplog) -> None:
    caplog.set_level(logging.INFO)
    gw = "gw-fault"
    msgs = _run_with_s2_on(_Unplugged, mosquitto, tmp_path, gw, 2.5)
    windows = windows_by_sensor(msgs, gw)
    assert set(windows) == {"s1"} and len(windows["s1"]) >= 4
    online = [s for s in status_of(msgs) if s["state"] == "online"]
    assert any(s["sensors"]["s2"]["state"] == "fault" for s in online)
    final = status_of(msgs)[-1]
    assert final["sensors"]["s1"] == {"state": "ok", "reason": ""}
    assert final["sensors"]["s2"] == {
        "state": "fault", "reason": "no data from accelerometer (cable unplugged?)"}
    faults = [r.getMessage() for r in caplog.records if "event=sensor_fault" in r.getMessage()]
    assert faults and faults[0].startswith(
        'event=sensor_fault sensor=s2 reason="no data from accelerometer (cable unplugged?)" '
        'attempt=1 retry_in_s=')
    assert len(faults) <= 4  # backoff 0.5, 1, 2 s: no hot retry loop


def test_gateway_imports_stay_light() -> None:
    code = (
        "import sys, json\n"
        "import ballpass.gateway.service\n"
        "from ballpass.gateway.drivers import load\n"
        "for name in ('simulated', 'iio', 'ds18b20', 'replay'): load(name)\n"
        "heavy = ['numba', 'scipy', 'river', 'influxdb_client', 'llvmlite', 'aiomqtt']\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_outbox_path_choice(tmp_path: Path) -> None:
    config = site_config("127.0.0.1", 1883, "gw-a", tmp_path / "x.sqlite")
    assert outbox_path_for(config, "gw-a") == tmp_path / "x.sqlite"
    assert outbox_path_for(config, "gw-a", tmp_path / "y.sqlite") == tmp_path / "y.sqlite"
    bare = parse({"site": {"id": SITE}, "asset": [{"id": "pump1", "bearing": "SKF 6205",
                                                   "shaft_hz": 25.0}],
                  "gateway": [{"id": "gw-b", "sensor": [{
                      "id": "s1", "driver": "simulated", "asset": "pump1", "fs_hz": 1000,
                      "window_samples": 100, "interval_s": 1}]}]})
    assert outbox_path_for(bare, "gw-b") == Path("outbox-gw-b.sqlite")


def test_a_reload_that_removes_a_sensor_or_changes_its_kind_keeps_it_running(
        mosquitto, tmp_path: Path) -> None:
    """Before: SIGHUP after a sensor was removed from the site file raised KeyError in
    `run` (the gateway stopped, capture threads wrote to a closed outbox); a sensor whose
    kind or driver changed was half-applied (the new driver's data under the old kind),
    although the reload said both need a restart."""
    from dataclasses import replace

    from ballpass.gateway.service import Supervisor

    gw = "gw-reload"
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    [g] = config.gateways
    s1, _removed = g.sensors
    new = replace(config, gateways=(replace(g, sensors=(replace(
        s1, kind="temperature", driver="ds18b20", window_samples=16),)),))
    sup = Supervisor(load_config=lambda: new)
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    stop, ready = threading.Event(), threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        run(config, gw, stop, status_interval_s=0.5, ready=ready, supervisor=sup)))
    t.start()
    assert ready.wait(5)
    time.sleep(1.0)
    t_reload = time.time_ns()
    sup.reload.set()
    time.sleep(2.5)
    stop.set()
    t.join(15)
    assert result == [0], "run ended by itself"
    msgs = sub.wait_for(lambda m: status_of(m) and status_of(m)[-1]["state"] == "offline")
    sub.close()
    final = status_of(msgs)[-1]
    assert "needs a restart" in str(final), final
    # The first status that shows the reload was built after the reload was applied: a
    # window of the removed sensor that starts after it was captured under the new config.
    reloaded = next(s for s in status_of(msgs) if "needs a restart" in str(s))
    reloaded_ns = int(datetime.fromisoformat(reloaded["t"]).timestamp() * 10**9) + 10**6
    assert reloaded_ns > t_reload, (reloaded["t"], t_reload)
    after = [w for w in windows_by_sensor(msgs, gw).get("s2", []) if w.t0_ns > reloaded_ns]
    assert after, "the removed sensor is still captured until a restart"
    windows = windows_by_sensor(msgs, gw)
    assert {w.kind for w in windows["s1"]} == {wire.Kind.ACCELERATION}
    assert {w.n_samples for w in windows["s1"]} == {4096}


class _Garbled(_Unplugged):
    """A driver whose readings the wire cannot carry: a negative speed."""

    def read(self, n_samples: int) -> Capture:
        return Capture(np.zeros(n_samples), time.time_ns(), shaft_hz=-1.0)


def test_a_reading_the_wire_refuses_is_a_sensor_fault_not_a_window(
        mosquitto, tmp_path: Path) -> None:
    """The capture relies on `wire.encode`'s checks: the window is not stored or published,
    the sensor shows the fault, and the other sensor goes on."""
    gw = "gw-garbled"
    msgs = _run_with_s2_on(_Garbled, mosquitto, tmp_path, gw, 2.0)
    assert set(windows_by_sensor(msgs, gw)) == {"s1"}
    s2 = status_of(msgs)[-1]["sensors"]["s2"]
    assert s2["state"] == "fault" and "shaft_hz" in s2["reason"], s2


def test_an_outbox_larger_than_the_disk_is_a_status_problem(mosquitto, tmp_path: Path,
                                                             caplog) -> None:
    """Before: nothing said that `outbox.max_mb` was more than the disk could hold; in a
    long outage the disk filled first, and windows were lost instead of the oldest dropped."""
    caplog.set_level(logging.INFO)
    gw = "gw-disk"
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    outbox = dataclasses.replace(config.gateway(gw).outbox, max_mb=free_mb * 4)
    config = dataclasses.replace(config, gateways=tuple(
        dataclasses.replace(g, outbox=outbox) for g in config.gateways))
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/#", gw)
    try:
        run_for(config, gw, 1.5)
        msgs = sub.wait_for(lambda m: status_of(m) and status_of(m)[-1]["state"] == "offline")
    finally:
        sub.close()
    problem = status_of(msgs)[-1]["problems"]["disk"]
    assert problem.startswith(f"outbox.max_mb is {free_mb * 4:.0f} MB but the disk has room")
    assert any("event=outbox_larger_than_disk" in r.getMessage() for r in caplog.records)
    assert windows_by_sensor(msgs, gw), "and the gateway runs on"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_publisher_thread_that_dies_stops_the_gateway_with_exit_1(
        mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Before: without a systemd watchdog nothing noticed: capture went on filling the
    outbox and nothing was sent. Now the gateway stops (exit 1) for the service manager
    to restart it; the windows wait in the outbox."""
    from ballpass.gateway.publisher import Publisher

    caplog.set_level(logging.INFO)

    def broken(self: Publisher) -> None:
        raise RuntimeError("a bug in the publisher")

    monkeypatch.setattr(Publisher, "_flush", broken)
    config = site_config(mosquitto.host, mosquitto.port, "gw-dies", tmp_path / "o.sqlite")
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(run(config, "gw-dies", stop)))
    t.start()
    t.join(30)
    stop.set()
    assert not t.is_alive() and result == [1]
    assert "event=publisher_crashed" in caplog.text
    assert 'event=gateway_stopping reason="publisher thread died"' in caplog.text
