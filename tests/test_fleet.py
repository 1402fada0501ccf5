"""The simulated fleet: the generated 50-reactor site, the shipped scenarios, bad input
before anything starts, and a scenario run through the real gateway code and mosquitto."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ballpass import cli, wire
from ballpass.config import ConfigError, load
from ballpass.simulators import fleet
from ballpass.simulators.degradation import STAGES

SCENARIOS = sorted(fleet.SCENARIO_DIR.glob("*.toml"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() points the root logger at this test's captured stderr; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def site50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.toml"
    assert cli.main(["simulate", "site", "--reactors", "50", "--out", str(path)]) == 0
    return path


def test_generated_site_has_50_reactors_and_check_config_accepts_it(site50, capsys) -> None:
    assert cli.main(["check-config", str(site50)]) == 0
    assert "150 assets, 10 gateways, 200 sensors" in capsys.readouterr().out
    config = load(site50)
    kinds = {a.kind for a in config.assets}
    assert kinds == {"motor", "gearbox", "pump"}
    assert {a.bearing.name for a in config.assets} <= set(fleet.bearing_names())
    gear = [s for g in config.gateways for s in g.sensors if s.asset.endswith("gearbox")]
    assert len(gear) == 50 and all(17 <= s.options["gear_teeth"] <= 29 for s in gear)
    temps = [s for g in config.gateways for s in g.sensors if s.kind == "temperature"]
    assert len(temps) == 50
    fleet.check_sensors(config)  # every simulated sensor can be built


def test_site_is_deterministic_for_a_seed() -> None:
    assert fleet.site_toml(5, seed=1) == fleet.site_toml(5, seed=1)
    assert fleet.site_toml(5, seed=1) != fleet.site_toml(5, seed=2)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_apply_to_the_generated_site(site50, path: Path) -> None:
    config = load(site50)
    scenario = fleet.load_scenario(path)
    applied, faults = fleet.apply(config, scenario, t_start_ns=0)
    again, faults2 = fleet.apply(config, scenario, t_start_ns=0)
    assert faults == faults2 and applied == again  # deterministic for a seed
    truth = fleet.truth(applied, scenario, faults, 0, scenario.time_scale)
    json.dumps(truth)
    faulty = {f["asset"] for f in truth["faults"]}
    assert len(faulty) == len(faults)
    assert set(truth["healthy_assets"]).isdisjoint(faulty)
    for f in faults:
        for s in fleet.sensors_of(applied, f.asset):
            assert "trajectory" in s.options or s.options["fault"] == f.condition


def test_week_scenario_random_faults_depend_on_the_seed(site50) -> None:
    config = load(site50)
    week = fleet.load_scenario("week")
    assert week.source == fleet.SCENARIO_DIR / "week.toml"
    _, a = fleet.apply(config, week, 0)
    _, b = fleet.apply(config, week.__class__(**{**week.__dict__, "seed": 8}), 0)
    assert len(a) == len(week.faults) + 5
    assert [f.asset for f in a[:len(week.faults)]] == [f.asset for f in week.faults]
    assert [f.asset for f in a] != [f.asset for f in b]
    rows = fleet.truth_rows(a, week.horizon_h)
    assert {r[3] for r in rows} >= set(STAGES)
    # Severity never decreases along a trajectory.
    for f in a:
        sev = [r[4] for r in rows if r[1] == f.asset]
        assert sev == sorted(sev)


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _small_site(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(fleet.site_toml(3, interval_s=2.0, **kw), encoding="utf-8")
    return path


@pytest.mark.parametrize("scenario, named", [
    ('[[fault]]\nasset = "r09-pump"\ncondition = "outer_race"\n',
     "fault[0].asset: no asset 'r09-pump'"),
    ('[[fault]]\nasset = "r01-pump"\ncondition = "outer_race"\nseverity = -0.5\n',
     "fault[0].severity: must be >= 0, got -0.5"),
    ('[[fault]]\nasset = "r01-pump"\ncondition = "outer_race"\nmax_severity = -2\n',
     "fault[0].max_severity"),
    ('[[fault]]\nasset = "r01-pump"\ncondition = "outer_rase"\n',
     "did you mean 'outer_race'"),
    ('[[sensor_fault]]\nsensor = "r01-pump-xx"\nkind = "spikes"\n',
     "sensor_fault[0].sensor: no sensor 'r01-pump-xx'"),
    ('[scenario]\ntime_scal = 5\n', "scenario.time_scal: unknown key; did you mean"),
])
def test_bad_scenario_is_refused_before_anything_starts(tmp_path, capsys, scenario: str,
                                                         named: str) -> None:
    site = _small_site(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(scenario, encoding="utf-8")
    code, err = _run_cli(capsys, "simulate", "fleet", "-c", str(site), "--scenario", str(path))
    assert code == 2
    assert named in err
    assert not (tmp_path / "outbox").exists()  # nothing started


def test_fault_line_above_nyquist_names_the_fault_and_sensor(tmp_path, capsys) -> None:
    text = fleet.site_toml(2, interval_s=2.0, window_samples=512) \
        .replace("fs_hz = 25600", "fs_hz = 400")
    site = tmp_path / "site.toml"
    site.write_text(text, encoding="utf-8")
    path = tmp_path / "s.toml"
    path.write_text('[[fault]]\nasset = "r01-pump"\ncondition = "inner_race"\nseverity = 1\n',
                    encoding="utf-8")
    code, err = _run_cli(capsys, "simulate", "fleet", "-c", str(site), "--scenario", str(path))
    assert code == 2
    assert "fault[0] (asset r01-pump, sensor r01-pump-de)" in err and "BPFI" in err
    assert "Nyquist" in err
    assert "gear_teeth: gear mesh" in err  # the gearboxes' mesh cannot be sampled either


def test_unknown_bearing_name_is_refused(tmp_path, capsys) -> None:
    site = tmp_path / "site.toml"
    site.write_text(fleet.site_toml(1).replace('"SKF 6206"', '"SKF 6666"')
                    .replace('"SKF 6207"', '"SKF 6666"'), encoding="utf-8")
    code, err = _run_cli(capsys, "simulate", "fleet", "-c", str(site), "--scenario", "quick")
    assert code == 2
    assert "asset[2].bearing: unknown bearing 'SKF 6666'" in err


def test_scenario_parse_collects_every_error() -> None:
    with pytest.raises(ConfigError) as e:
        fleet.parse_scenario(tomllib.loads(
            '[scenario]\nseed = -1\n[[fault]]\ncondition = "ball"\n'
            '[[sensor_fault]]\nsensor = "x"\nkind = "smoke"\n'))
    text = "\n".join(e.value.errors)
    assert "scenario.seed" in text and "fault[0].asset" in text and "sensor_fault[0].kind" in text


class _Collector:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-test")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_scenario_runs_through_the_real_gateway(tmp_path, mosquitto) -> None:
    site = tmp_path / "site.toml"
    site.write_text(fleet.site_toml(2, reactors_per_gateway=1, interval_s=0.5,
                                    window_samples=4096, broker_port=mosquitto.port),
                    encoding="utf-8")
    scenario = tmp_path / "run.toml"
    # 2 simulated hours per wall second: the pump's fault passes every stage in 3 s,
    # and the motor's vibration sensor is unplugged after 1 h.
    scenario.write_text(
        '[scenario]\nname = "test"\nseed = 5\ntime_scale = 7200\nhorizon_h = 8\n'
        '[[fault]]\nasset = "r01-pump"\ncondition = "outer_race"\nonset_h = 0.5\n'
        'incipient_h = 1\ndeveloped_h = 1\nsevere_h = 1\n'
        '[[sensor_fault]]\nsensor = "r02-motor-de"\nkind = "disconnect"\nstart_h = 1\n'
        'end_h = 100\n', encoding="utf-8")
    collector = _Collector(mosquitto.port, "bp/v1/plant/#")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ballpass", "simulate", "fleet", "-c", str(site),
             "--scenario", str(scenario), "--truth", str(tmp_path / "truth.json"),
             "--duration", "6"], capture_output=True, text=True, timeout=60)
        time.sleep(0.5)
    finally:
        collector.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    truth = json.loads((tmp_path / "truth.json").read_text())
    (fault,) = truth["faults"]
    assert fault["asset"] == "r01-pump" and fault["sensors"] == ["r01-pump-de"]
    assert fault["trajectory"]["stage_starts_s"]["incipient"] == 1800.0
    starts = fault["stage_starts_ns"]
    assert starts["developed"] - starts["incipient"] == pytest.approx(0.5e9, abs=1000)
    assert (tmp_path / "truth.csv").read_text().startswith("t_h,asset,condition,stage,severity")

    windows: dict[str, list[wire.Window]] = {}
    statuses = []
    for topic, payload in collector.messages:
        if topic.endswith("/window"):
            windows.setdefault(topic.split("/")[4], []).append(wire.decode(payload))
        elif topic.endswith("/status"):
            statuses.append(json.loads(payload))
    assert {"r01-pump-de", "r02-pump-de", "r01-gearbox-in"} <= set(windows)
    assert len(windows["r01-pump-de"]) >= 6
    # The pump's fault grows: the last windows are far stronger than the first.
    pump = sorted(windows["r01-pump-de"], key=lambda w: w.seq)
    rms = [float((w.samples ** 2).mean() ** 0.5) for w in pump]
    assert max(rms[-3:]) > 2.0 * rms[0], rms
    # The unplugged sensor is reported as faulty on its gateway's status topic.
    reasons = [s["sensors"]["r02-motor-de"].get("reason", "") for s in statuses
               if "r02-motor-de" in s.get("sensors", {})
               and s["sensors"]["r02-motor-de"]["state"] == "fault"]
    assert any("disconnection" in r for r in reasons), statuses[-3:]
    assert "event=sim_stage sensor=r01-pump-de condition=outer_race stage=severe" in proc.stderr
