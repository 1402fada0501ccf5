"""Config errors as an operator meets them through the real command line: bad files and
paths, unknown drivers and driver options (exit 2 naming the key path, no traceback), and
the log options (`--log-level`, `--log-format json`) before or after the subcommand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plant import spawn_ballpass

from ballpass.cli import build_parser
from ballpass.config import ConfigError, load, parse
from ballpass.gateway import drivers
from ballpass.services import free_port

SITE = """
[site]
id = "s"
[broker]
port = {port}
{broker}
[influx]
{influx}
[stream]
state_dir = {state_dir}
{stream}
[[asset]]
id = "m"
bearing = "SKF 6205"
shaft_hz = 25
[asset.online]
{online}
[[gateway]]
id = "gw"
{gateway}
[gateway.outbox]
path = {outbox}
[[gateway.sensor]]
id = "x"
driver = "simulated"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
{sensors}
{webhook}
"""


def site(tmp: Path, *, broker: str = "", influx: str = "", stream: str = "",
         state_dir: str | None = None, online: str = "", gateway: str = "",
         outbox: str | None = None, sensors: str = "", webhook: str = "") -> Path:
    path = tmp / "site.toml"
    path.write_text(SITE.format(
        port=free_port(), broker=broker, influx=influx, stream=stream, online=online,
        state_dir=state_dir or json.dumps(str(tmp / "state")), gateway=gateway,
        outbox=outbox or json.dumps(str(tmp / "outbox.sqlite")), sensors=sensors,
        webhook=webhook), encoding="utf-8")
    return path


def ballpass(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_config_error(r: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, (text, r.stderr)


# --- the site file itself ------------------------------------------------------------------


def test_a_site_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_bytes(b'[site]\nid = "\xff"\n')
    assert_config_error(ballpass("check-config", str(bad)),
                        f"{bad}: cannot read the site file: not valid UTF-8")


def test_a_site_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    assert_config_error(ballpass("check-config", str(tmp_path)),
                        f"{tmp_path}: cannot read the site file: Is a directory")


def test_a_site_file_path_with_a_nul_or_an_unknown_user(tmp_path: Path) -> None:
    # A NUL cannot pass through argv; the library call is what a service embedding it sees.
    with pytest.raises(ConfigError, match="cannot read the site file: embedded null"):
        load(str(tmp_path / "a\0b.toml"))
    assert_config_error(ballpass("check-config", "~nosuchuser/site.toml"),
                        "~nosuchuser/site.toml: cannot read the site file")


# --- every path in it ----------------------------------------------------------------------

# Every path key of the site file (ballpass/config.py: path_value and secret_path).
FILE_KEYS = {
    "broker": ("ca_file", "cert_file", "key_file", "password_file"),
    "influx": ("token_file", "password_file"),
    "stream": ("password_file", "http_token_file"),
    "gateway": ("password_file",),
}
FILE_PATHS = [f"{t}.{k}".replace("gateway.", "gateway[0].") for t, ks in FILE_KEYS.items()
              for k in ks] + ["asset[0].online.trend_calibration", "gateway[0].outbox.path",
                              "webhook[0].secret_file", "webhook[0].routing_key_file"]


def _every_path(tmp: Path, value: str, state_dir: str | None = None,
                sensors: str = "") -> Path:
    """A site file with `value` (a TOML string) in every path key."""
    def lines(table: str) -> str:
        return "\n".join(f"{k} = {value}" for k in FILE_KEYS[table])
    return site(tmp, broker=lines("broker"), influx=lines("influx"), stream=lines("stream"),
                gateway=lines("gateway"), online=f"trend_calibration = {value}",
                outbox=value, state_dir=state_dir or value, sensors=sensors,
                webhook=f'[[webhook]]\nurl = "http://127.0.0.1:1/"\nformat = "pagerduty"\n'
                        f"secret_file = {value}\nrouting_key_file = {value}")


REPLAY_AND_IIO = """
[[gateway.sensor]]
id = "r"
driver = "replay"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
options = {{ path = {value} }}
[[gateway.sensor]]
id = "i"
driver = "iio"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
options = {{ device = "adxl355", root = {value} }}
"""


@pytest.mark.parametrize(("value", "problem"), [
    ('"a\\u0000b"', "must be a path without NUL bytes, got 'a\\x00b'"),
    ('"~nosuchuser/x"', "must be a path whose ~user exists, got '~nosuchuser/x'"),
])
def test_a_nul_or_an_unknown_user_in_any_path_names_its_key(
        tmp_path: Path, value: str, problem: str) -> None:
    path = _every_path(tmp_path, value, sensors=REPLAY_AND_IIO.format(value=value))
    keys = [*FILE_PATHS, "stream.state_dir", "gateway[0].sensor[1].options.path",
            "gateway[0].sensor[2].options.root"]
    assert_config_error(ballpass("check-config", str(path)), *(f"{k}: {problem}" for k in keys))


def test_a_directory_where_a_file_is_meant_names_its_key(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    path = _every_path(tmp_path, '"d"', state_dir='"f"')
    assert_config_error(ballpass("check-config", str(path)),
                        *(f"{k}: must be a file, got a directory 'd'" for k in FILE_PATHS),
                        "stream.state_dir: must be a directory, got a file 'f'")


@pytest.mark.parametrize(("name", "problem"), [
    ("d", "gateway[0].sensor[1].options.path: must be a file, got a directory"),
    ("f", "gateway[0].sensor[2].options.root: must be a directory, got a file")])
def test_a_driver_path_of_the_wrong_kind_names_its_key(tmp_path: Path, name: str,
                                                      problem: str) -> None:
    """Before: a replay `path` naming a directory (or an iio `root` naming a file) passed
    check-config and failed only when the gateway opened it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    value = json.dumps(str(tmp_path / name))
    path = site(tmp_path, sensors=REPLAY_AND_IIO.format(value=value))
    assert_config_error(ballpass("check-config", str(path)), problem)


def test_a_secret_that_is_not_utf8_names_its_key(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\xff\xfe secret")
    path = _every_path(tmp_path, '"bad"', state_dir=json.dumps(str(tmp_path / "state")))
    secrets = [k for k in FILE_PATHS if k.endswith(("password_file", "token_file",
                                                    "secret_file", "routing_key_file"))]
    assert_config_error(
        ballpass("check-config", str(path)),
        *(f"{k}: must be a readable UTF-8 file (not valid UTF-8 (byte 0))" for k in secrets),
        "asset[0].online.trend_calibration: ")  # its own loader: "not valid JSON"


def test_a_secret_missing_at_start_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    # Missing is fine at load (a site file names every host's secrets); the gateway that
    # needs its password exits 2 naming the file.
    path = site(tmp_path, gateway=f'password_file = "{tmp_path / "gone"}"')
    assert ballpass("check-config", str(path)).returncode == 0
    assert_config_error(ballpass("gateway", "-c", str(path), "-g", "gw"),
                        f"{tmp_path / 'gone'}: must be a readable UTF-8 file "
                        "(No such file or directory)")


# --- drivers and their options --------------------------------------------------------------

BAD_DRIVERS = """
[[gateway.sensor]]
id = "y"
driver = "iiio"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
[[gateway.sensor]]
id = "z"
driver = "iio"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
options = { devce = "adxl355" }
[[gateway.sensor]]
id = "w"
driver = "simulated"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
options = { fault = "outer_race", severity = -1 }
"""
DRIVER_ERRORS = (
    "gateway[0].sensor[1].driver: unknown driver 'iiio'; did you mean 'iio'?",
    "gateway[0].sensor[2].options.devce: unknown option; did you mean 'device'?",
    "gateway[0].sensor[3].options.severity: must be >= 0, got -1.0",
)


@pytest.mark.parametrize("command", [
    ["check-config", "{site}"],
    ["gateway", "-c", "{site}", "-g", "gw"],
    ["simulate", "fleet", "-c", "{site}", "--duration", "5"],
])
def test_unknown_drivers_and_options_stop_every_command(tmp_path: Path,
                                                        command: list[str]) -> None:
    path = site(tmp_path, sensors=BAD_DRIVERS)
    # Before: check-config said ok and the gateway retried a KeyError until killed.
    r = ballpass(*(a.format(site=path) for a in command), timeout=30)
    assert_config_error(r, *DRIVER_ERRORS)


def test_every_shipped_driver_declares_its_options() -> None:
    for name in ("simulated", "iio", "ds18b20", "replay"):
        cls = drivers.load(name)
        assert cls.OPTIONS and callable(cls.validate_options), name


def test_a_driver_without_a_validator_is_checked_by_building_it(tmp_path: Path) -> None:
    # A third-party driver class with neither OPTIONS nor validate_options.
    config = parse({"site": {"id": "s"}, "asset": [{"id": "m", "bearing": "SKF 6205"}],
                    "gateway": [{"id": "g", "sensor": [{
                        "id": "x", "driver": "ds18b20", "asset": "m", "fs_hz": 1,
                        "window_samples": 16, "interval_s": 60, "kind": "temperature"}]}]})
    sensor, asset = config.gateways[0].sensors[0], config.assets[0]

    class Strict:
        def __init__(self, sensor: object, asset: object) -> None:
            raise ValueError("options.gain: must be > 0, got 0")

    original = drivers.load
    try:
        drivers.load = lambda name: Strict  # type: ignore[assignment]
        assert drivers.validate(sensor, asset) == ["options.gain: must be > 0, got 0"]
    finally:
        drivers.load = original
    assert drivers.validate(sensor, asset) == []


def test_the_stream_does_not_need_the_gateways_drivers() -> None:
    data = {"site": {"id": "s"}, "asset": [{"id": "m", "bearing": "SKF 6205"}],
            "gateway": [{"id": "g", "sensor": [{
                "id": "x", "driver": "vendor-adc", "asset": "m", "fs_hz": 100,
                "window_samples": 16, "interval_s": 1}]}]}
    with pytest.raises(ConfigError, match="unknown driver 'vendor-adc'"):
        parse(data)
    assert parse(data, drivers=False).gateways[0].sensors[0].driver == "vendor-adc"


# --- log options ----------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "level", "fmt"), [
    (["stream", "-c", "x", "--log-level", "debug"], "DEBUG", "kv"),
    (["--log-level", "warning", "stream", "-c", "x"], "WARNING", "kv"),
    (["--log-level", "error", "stream", "-c", "x", "--log-level", "debug"], "DEBUG", "kv"),
    (["--log-format", "json", "gateway", "-c", "x", "-g", "g"], "INFO", "json"),
    (["simulate", "fleet", "-c", "x", "--log-format", "json"], "INFO", "json"),
    (["broker", "add-gateway", "g", "--passwd", "p", "--acl", "a", "--password-file", "f",
      "--log-level", "ERROR"], "ERROR", "kv"),
])
def test_log_options_before_or_after_the_subcommand(argv: list[str], level: str,
                                                    fmt: str) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == (level, fmt)


def _gateway_log(tmp: Path, *extra: str, seconds: float = 2.5) -> str:
    """A short gateway run (broker unreachable: it logs its start and retries)."""
    log = tmp / f"gw{len(list(tmp.glob('gw*.log')))}.log"
    proc = spawn_ballpass(["gateway", "-c", str(site(tmp)), "-g", "gw", *extra], log)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    return log.read_text()


def test_log_level_after_the_subcommand_filters_a_real_run(tmp_path: Path) -> None:
    assert " INFO ballpass.gateway" in _gateway_log(tmp_path)
    quiet = _gateway_log(tmp_path, "--log-level", "warning")
    assert " INFO " not in quiet and "event=broker_unreachable" in quiet


def test_json_logs_carry_the_same_events_and_keys(tmp_path: Path) -> None:
    text = _gateway_log(tmp_path, "--log-format", "json")
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert lines and all({"ts", "level", "logger"} <= set(o) for o in lines)
    start = next(o for o in lines if o.get("event") == "gateway_starting")
    assert start["gateway"] == "gw" and start["sensors"] == 1 and start["level"] == "INFO"
    kv_text = _gateway_log(tmp_path)
    kv_line = next(line for line in kv_text.splitlines() if "event=gateway_starting" in line)
    kv_keys = [part.split("=", 1)[0] for part in kv_line.split("event=", 1)[1].split(" ")
               if "=" in part]
    assert kv_keys == [k for k in start if k not in ("ts", "level", "logger", "event")]
    retry = next(o for o in lines if o.get("event") == "broker_unreachable")
    assert retry["attempt"] == 1 and retry["level"] == "WARNING"


def test_json_config_errors_are_json_lines_too(tmp_path: Path) -> None:
    r = ballpass("check-config", str(site(tmp_path, sensors=BAD_DRIVERS)),
                 "--log-format", "json")
    assert r.returncode == 2
    errors = [json.loads(line) for line in r.stderr.splitlines()]
    assert [e["error"] for e in errors] == list(DRIVER_ERRORS)
    assert {e["event"] for e in errors} == {"config_error"}


def test_checking_a_hardware_site_imports_no_simulator_or_stream_code() -> None:
    # The gateway's process loads the site file too: the driver check imports only the
    # named drivers' modules.
    code = (
        "import json, sys\n"
        "from ballpass.config import parse\n"
        "parse({'site': {'id': 's'}, 'asset': [{'id': 'm', 'bearing': 'SKF 6205'}],\n"
        "       'gateway': [{'id': 'g', 'sensor': [{'id': 'x', 'driver': 'iio',\n"
        "       'asset': 'm', 'fs_hz': 100, 'window_samples': 16, 'interval_s': 1,\n"
        "       'options': {'devce': 'a'}}]}]})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "options.devce: unknown option; did you mean 'device'?" in r.stderr
    ok = code.replace("'devce'", "'device'") + (
        "heavy = ('ballpass.simulators', 'ballpass.stream', 'numba', 'scipy', 'river')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))\n")
    r = subprocess.run([sys.executable, "-c", ok], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_a_bad_trajectory_hour_names_its_path_once(tmp_path: Path) -> None:
    path = site(tmp_path, sensors='[[gateway.sensor]]\nid = "t"\ndriver = "simulated"\n'
                'asset = "m"\nfs_hz = 25600\nwindow_samples = 4096\ninterval_s = 0.5\n'
                'options = { trajectory = { onset_h = "x" } }')
    assert_config_error(ballpass("check-config", str(path)),
                        "gateway[0].sensor[1].options.trajectory.onset_h: must be a finite "
                        "number (hours), got 'x'")
