"""An address the stream cannot listen on (another process holds the port).

The stream names the option and exits 2 (a config error), not with a traceback; the demo,
whose preferred evidence port was free when it checked and taken before its stream bound
it (two demos starting at once: the flake of stops 23-24), starts that stream again on
any free port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from plant import read_status, wait_until

from ballpass import demo
from ballpass.services import free_port


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site.toml"
    site.write_text(f"""[site]
id = "s1"
[broker]
host = "127.0.0.1"
port = 1
[influx]
url = "http://127.0.0.1:1"
db = "ballpass"
[stream]
state_dir = "{tmp_path / 'state'}"
[[asset]]
id = "m"
bearing = "SKF 6205"
shaft_hz = 25.0
[[gateway]]
id = "g"
[[gateway.sensor]]
id = "a"
driver = "simulated"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 1
""", encoding="utf-8")
    return site


@pytest.fixture
def held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.parametrize("option", ["--http", "--metrics"])
def test_a_taken_port_is_a_config_error_naming_the_option(
        tmp_path: Path, held_port: int, option: str) -> None:
    p = subprocess.run([sys.executable, "-m", "ballpass", "stream", "-c", str(_site(tmp_path)),
                        option, f"127.0.0.1:{held_port}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"{option}: cannot listen on 127.0.0.1:{held_port}" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]


def test_the_demo_moves_its_stream_to_a_free_port_when_the_preferred_one_is_taken(
        tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "EVIDENCE_PORT", held_port)
    status = tmp_path / "status.json"
    proc = demo.StreamProc(demo.Child("stream", [
        "stream", "-c", str(_site(tmp_path)), "--status-file", str(status),
        "--http", f"127.0.0.1:{held_port}"], tmp_path / "stream.log"), status)
    first = proc.child
    try:
        assert first.proc.wait(120) == 2
        assert proc.lost_evidence_port()
        assert proc.child is not first and "127.0.0.1:0" in proc.child.args
        wait_until(lambda: (read_status(status).get("http_url") or "").startswith(
            "http://127.0.0.1:"), 120, "the restarted stream's evidence page")
        assert str(held_port) not in read_status(status)["http_url"]
        assert proc.child.proc.poll() is None, "the restarted stream did not keep running"
    finally:
        proc.child.terminate()
        proc.child.wait(30)


def test_the_demo_does_not_restart_a_stream_that_failed_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "EVIDENCE_PORT", free_port())  # free: it is not why it failed
    status = tmp_path / "status.json"
    proc = demo.StreamProc(demo.Child("stream", [
        "stream", "-c", str(tmp_path / "missing.toml"), "--http",
        f"127.0.0.1:{demo.EVIDENCE_PORT}"], tmp_path / "stream.log"), status)
    first = proc.child
    first.proc.wait(120)
    assert not proc.lost_evidence_port()
    assert proc.child is first
    first.wait(5)
