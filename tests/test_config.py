"""The site config: typed result, every error with its key path, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ballpass.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[1]


def minimal(**overrides: object) -> dict:
    data = {
        "site": {"id": "plant1"},
        "asset": [{"id": "m1", "kind": "motor", "bearing": "SKF 6205", "shaft_hz": 25.0}],
        "gateway": [{"id": "gw1", "sensor": [{
            "id": "s1", "driver": "simulated", "asset": "m1", "fs_hz": 25600,
            "window_samples": 8192, "interval_s": 1.0}]}],
    }
    data.update(overrides)
    return data


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(data)
    return e.value.errors


def test_the_shipped_example_loads_into_typed_objects() -> None:
    config = load(ROOT / "examples" / "site.toml")
    assert config.site.id == "plant1"
    assert config.broker.tls and config.broker.port == 8883
    assert config.asset("r01-agitator").bearing.name == "SKF 6205"
    pump = config.asset("r01-pump").bearing
    assert pump.n_elements == 8 and pump.pitch_diameter == 28.5
    sensor = config.gateway("gw-r01").sensors[1]
    assert sensor.fs_hz == 25600.0 and sensor.options["fault"] == "outer_race"
    assert config.stream.alert.enter_k == 3
    assert config.webhooks[0].retries == 3


def test_minimal_config_takes_defaults() -> None:
    config = parse(minimal())
    assert config.influx.api == "v1" and config.broker.port == 1883
    assert config.sensor_index()["s1"][0].id == "gw1"


def test_a_bad_value_names_its_key_path_and_value() -> None:
    data = minimal()
    data["gateway"][0]["sensor"][0]["fs_hz"] = -5
    assert errors_of(data) == ["gateway[0].sensor[0].fs_hz: must be > 0, got -5.0"]


def test_http_proxies_are_ip_addresses() -> None:
    assert parse(minimal(stream={"http_proxies": ["127.0.0.1", "::1"]})).stream.http_proxies \
        == ("127.0.0.1", "::1")
    (error,) = errors_of(minimal(stream={"http_proxies": ["nginx.local"]}))
    assert error.startswith("stream.http_proxies: each entry must be an IP address")
    assert "'nginx.local'" in error


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    ("influx", "url", "http://127.0.0.1:80x86", "not a URL"),
    ("influx", "url", "http://[::1", "not a URL"),
    ("influx", "url", "http://:8086", "has no host"),
    ("influx", "timeout_s", 1e300, "must be > 0 and <= 3600"),
    ("influx", "db", "", "must be letters"),
    ("influx", "db", 'pl"ant', "must be letters"),
    ("broker", "keepalive_s", 100000, "must be in [5, 65535]"),
])
def test_values_that_would_crash_the_service_later_are_config_errors(
        section: str, key: str, value: object, says: str) -> None:
    """Each passed check-config and then ended `ballpass stream` in a traceback (exit 1,
    restarted by systemd every 5 s) or a retry loop that never ends."""
    (error,) = errors_of(minimal(**{section: {key: value}}))
    assert error.startswith(f"{section}.{key}: ") and says in error, error


def test_every_error_is_reported_at_once() -> None:
    data = minimal(broker={"port": 70000}, influx={"api": "v3"})
    data["asset"][0]["bearing"] = "SKF 9999"
    errors = errors_of(data)
    assert any(e.startswith("broker.port: must be a TCP port") for e in errors)
    assert any(e.startswith("influx.api: must be one of v1, v2") for e in errors)
    assert any(e.startswith("asset[0].bearing: unknown bearing 'SKF 9999'") for e in errors)


def test_unknown_keys_get_a_suggestion() -> None:
    data = minimal()
    data["gateway"][0]["sensor"][0]["fs_hzz"] = 1
    assert "gateway[0].sensor[0].fs_hzz: unknown key; did you mean 'fs_hz'?" in errors_of(data)


def test_references_must_resolve() -> None:
    data = minimal()
    data["gateway"][0]["sensor"][0]["asset"] = "m11"
    data["asset"][0]["tacho_sensor"] = "nope"
    errors = errors_of(data)
    assert "gateway[0].sensor[0].asset: no [[asset]] with this id; did you mean 'm1'?, " \
           "got 'm11'" in errors
    assert "asset[0].tacho_sensor: no sensor with this id, got 'nope'" in errors


def test_ids_and_duplicates() -> None:
    data = minimal(site={"id": "Plant 1"})
    data["gateway"].append(data["gateway"][0])
    errors = errors_of(data)
    assert any(e.startswith("site.id: must match") for e in errors)
    assert "gateway: duplicate id 'gw1'" in errors
    assert "gateway.sensor: duplicate id 's1'" in errors


def test_window_must_fit_in_the_interval() -> None:
    data = minimal()
    data["gateway"][0]["sensor"][0]["interval_s"] = 0.1
    assert errors_of(data) == [
        "gateway[0].sensor[0].interval_s: must be >= window_samples / fs_hz = 0.32 s, got 0.1"]


def test_geometry_and_catalog_name_are_exclusive_and_checked() -> None:
    data = minimal()
    data["asset"][0]["geometry"] = {"n_elements": 2, "element_diameter": 1,
                                    "pitch_diameter": 5}
    errors = errors_of(data)
    assert any("give either a catalog name or a geometry table" in e for e in errors)
    del data["asset"][0]["bearing"]
    assert errors_of(data) == ["asset[0].geometry.n_elements: must be >= 3, got 2"]


def test_alert_policy_must_be_consistent() -> None:
    data = minimal(stream={"alert": {"enter_k": 6, "window_n": 5}})
    assert any(e.startswith("stream.alert: need leave_m < enter_k <= window_n")
               for e in errors_of(data))


def test_cli_exits_2_naming_key_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text((ROOT / "examples" / "site.toml").read_text().replace(
        "fs_hz = 25600", "fs_hz = -5", 1), encoding="utf-8")
    for args in (["check-config", str(bad)], ["gateway", "-c", str(bad), "-g", "gw-r01"],
                 ["stream", "-c", str(bad)]):
        r = subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert "gateway[0].sensor[0].fs_hz: must be > 0, got -5.0" in r.stderr
        assert "Traceback" not in r.stderr


def test_cli_accepts_the_example(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ballpass", "check-config",
                        str(ROOT / "examples" / "site.toml")], capture_output=True, text=True)
    assert r.returncode == 0 and "2 assets, 1 gateways, 2 sensors" in r.stdout


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text("[site\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_defaults_come_from_the_dataclass_fields() -> None:
    # One source: a key left out of the file takes the field default of its dataclass.
    import dataclasses

    from ballpass import config as c
    parsed = parse(minimal(webhook=[{"url": "http://127.0.0.1:1/"}]), base=Path("/site"))
    for got, cls in [(parsed.broker, c.BrokerConfig), (parsed.influx, c.InfluxConfig),
                     (parsed.gateways[0].outbox, c.OutboxConfig),
                     (parsed.stream.alert, c.AlertPolicy), (parsed.assets[0].online,
                                                            c.OnlinePolicy)]:
        assert got == cls(), cls
    for f in dataclasses.fields(c.WebhookConfig):
        if f.name != "url":
            assert getattr(parsed.webhooks[0], f.name) == f.default, f.name
    stream = parsed.stream
    assert stream.state_dir == Path("/site") / c.StreamConfig.state_dir
    assert dataclasses.replace(stream, state_dir=c.StreamConfig.state_dir) == \
        c.StreamConfig()
    sensor = parsed.gateways[0].sensors[0]
    assert (sensor.kind, sensor.options) == ("acceleration", {})


def test_listen_addresses_use_the_one_parser_of_every_command() -> None:
    assert parse(minimal(stream={"http": ":8787"})).stream.http == ":8787"
    errors = errors_of(minimal(stream={"http": "8787"}))
    assert len(errors) == 1 and errors[0].startswith("stream.http: must be HOST:PORT or :PORT")


def test_a_malformed_listen_option_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ballpass", "stream", "-c",
                           str(ROOT / "examples" / "site.toml"), "--http", "nowhere"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--http" in proc.stderr and "HOST:PORT" in proc.stderr


def test_a_gateway_needs_at_least_one_sensor(tmp_path: Path) -> None:
    """Before: `sensor = []` passed (check-config: ok, 0 sensors), and `ballpass gateway`
    then died of max() of an empty sequence, exit 1: restarted by systemd every 5 s."""
    no_sensors = minimal(gateway=[{"id": "gw1", "sensor": []}])
    missing = minimal(gateway=[{"id": "gw1"}])
    for data in (no_sensors, missing):
        assert errors_of(data) == ["gateway[0].sensor: at least one [[gateway.sensor]] "
                                   "is required"]
        with pytest.raises(ConfigError):
            parse(data, drivers=False)  # the stream's host reads the same site file
    # not an array: its own error, not a second one
    assert errors_of(minimal(gateway=[{"id": "gw1", "sensor": "s1"}])) == [
        "gateway[0].sensor: must be an array of tables, got 's1'"]
    # the stream side takes a site whose gateways are fine
    assert len(parse(minimal(), drivers=False).gateways[0].sensors) == 1
    site = tmp_path / "site.toml"
    site.write_text('[site]\nid = "plant1"\n[[asset]]\nid = "m1"\nkind = "motor"\n'
                    'bearing = "SKF 6205"\nshaft_hz = 25.0\n[[gateway]]\nid = "gw1"\n'
                    f'sensor = []\noutbox = {{ path = "{tmp_path / "o.sqlite"}" }}\n',
                    encoding="utf-8")
    for args in (["check-config", str(site)], ["gateway", "-c", str(site), "-g", "gw1"]):
        r = subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "gateway[0].sensor: at least one [[gateway.sensor]] is required" in r.stderr
        assert "Traceback" not in r.stderr
