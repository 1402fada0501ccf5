"""The command line as an operator meets it: help, recordings, and services that start
before their broker or database is reachable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from plant import spawn_ballpass

from ballpass.services import Influxd, free_port


def ballpass(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("command", [[], ["demo"], ["gateway"], ["stream"], ["simulate"],
                                     ["simulate", "fleet"], ["simulate", "record"],
                                     ["check-config"], ["evaluate"], ["bench"],
                                     ["evaluate-fleet"], ["sensor"], ["broker"],
                                     ["broker", "add-gateway"], ["simulate", "site"]])
def test_every_command_explains_itself(command: list[str]) -> None:
    r = ballpass(*command, "--help")
    assert r.returncode == 0
    assert "usage: ballpass" in r.stdout and len(r.stdout.splitlines()) > 4


def test_simulate_record_writes_a_recording(tmp_path: Path) -> None:
    out = tmp_path / "or.npz"
    r = ballpass("simulate", "record", "--fault", "outer_race", "--bearing", "SKF 6205",
                 "--shaft-hz", "29.95", "--fs", "12000", "--seconds", "3", "--seed", "4",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    with np.load(out) as f:
        assert f["signal"].shape == (36000,) and f["signal"].dtype == np.float64
        assert float(f["fs_hz"]) == 12000.0 and str(f["fault"]) == "outer_race"
        assert str(f["bearing"]) == "SKF 6205"
        assert 0.2 < float(np.sqrt(np.mean(f["signal"] ** 2))) < 3.0


@pytest.mark.parametrize(("args", "message"), [
    (["--bearing", "SKF 9999"], "unknown bearing 'SKF 9999'"),
    (["--fault", "inner_race", "--fs", "200"], "is not below the Nyquist frequency"),
    (["--severity", "-1"], "severity: must be a finite number >= 0"),
    (["--fault", "melted"], "melted"),
])
def test_simulate_record_refuses_bad_input_before_writing(
        tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "x.npz"
    r = ballpass("simulate", "record", "--out", str(out), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def _site(tmp: Path, broker_port: int, influx_url: str) -> Path:
    path = tmp / "site.toml"
    path.write_text(f"""
[site]
id = "s"
[broker]
port = {broker_port}
[influx]
url = "{influx_url}"
[stream]
state_dir = "{tmp / 'state'}"
[[asset]]
id = "m"
bearing = "SKF 6205"
shaft_hz = 25
[[gateway]]
id = "gw"
outbox = {{ path = "{tmp / 'outbox.sqlite'}" }}
[[gateway.sensor]]
id = "x"
driver = "simulated"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 0.5
""", encoding="utf-8")
    return path


def _run_for(args: list[str], seconds: float, log: Path) -> tuple[int, str]:
    """Run a service for `seconds`, then SIGTERM it; (exit code, its log)."""
    proc = spawn_ballpass(args, log)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    return code, log.read_text()


@pytest.mark.slow
def test_stream_retries_an_unreachable_database_with_one_line_per_attempt(
        tmp_path: Path) -> None:
    site = _site(tmp_path, free_port(), f"http://127.0.0.1:{free_port()}")
    code, log = _run_for(["stream", "-c", str(site)], 6, tmp_path / "stream.log")
    assert code == 0
    attempts = [line for line in log.splitlines() if "event=influx_unreachable" in line]
    assert len(attempts) >= 2 and "attempt=1 " in attempts[0] and "attempt=2 " in attempts[1]
    assert "Traceback" not in log


@pytest.mark.slow
def test_stream_retries_an_unreachable_broker(tmp_path: Path, influxd: Influxd) -> None:
    site = _site(tmp_path, free_port(), influxd.url)
    code, log = _run_for(["stream", "-c", str(site)], 6, tmp_path / "stream.log")
    assert code == 0
    attempts = [line for line in log.splitlines() if "event=broker_unreachable" in line]
    assert len(attempts) >= 2 and "attempt=1 " in attempts[0]
    assert "Traceback" not in log


def test_gateway_retries_an_unreachable_broker(tmp_path: Path) -> None:
    site = _site(tmp_path, free_port(), "http://127.0.0.1:1")
    code, log = _run_for(["gateway", "-c", str(site), "-g", "gw"], 3, tmp_path / "gw.log")
    assert code == 0
    attempts = [line for line in log.splitlines() if "event=broker_unreachable" in line]
    assert len(attempts) >= 2 and "attempt=1 " in attempts[0]
    assert "Traceback" not in log


def test_unknown_gateway_id_is_a_config_error(tmp_path: Path) -> None:
    site = _site(tmp_path, free_port(), "http://127.0.0.1:1")
    r = ballpass("gateway", "-c", str(site), "-g", "nope")
    assert r.returncode == 2 and "no gateway 'nope' in the config (known: gw)" in r.stderr
