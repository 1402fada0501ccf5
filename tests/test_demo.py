"""`ballpass demo` as a user runs it: by duration with a summary, and stopped by Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plant import processes_mentioning

pytestmark = pytest.mark.slow


def test_demo_by_duration_writes_an_honest_summary(tmp_path: Path) -> None:
    summary_path = tmp_path / "s.json"
    workdir = tmp_path / "work"
    # A relative --workdir (before: its config's paths resolved to work/work/...).
    r = subprocess.run([sys.executable, "-m", "ballpass", "demo", "--duration", "40",
                        "--summary-json", str(summary_path), "--workdir", "work"],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    assert s["windows_captured"] > 0
    assert s["windows_lost"] == 0
    assert s["windows_written"] == s["windows_captured"] == s["windows_published"]
    assert s["webhooks_delivered"] >= 1
    faulty = [x for x in s["sensors"] if x["truth"] != "normal"]
    healthy = [x for x in s["sensors"] if x["truth"] == "normal"]
    assert faulty and healthy
    assert all(x["alerted"] for x in faulty), faulty
    assert not any(x["alerted"] for x in healthy), healthy
    assert processes_mentioning(str(workdir)) == []


def test_ctrl_c_stops_every_process_cleanly(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    demo = subprocess.Popen([sys.executable, "-m", "ballpass", "demo", "--no-live",
                             "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        # Wait until the gateways run (their logs exist), then press Ctrl-C.
        while time.monotonic() < deadline and not list(workdir.glob("gw-*.log")):
            time.sleep(0.3)
        time.sleep(3)
        running = processes_mentioning(str(workdir))
        if len(running) < 6:  # broker, db, stream, gateways
            if demo.poll() is None:
                demo.kill()
            out, _ = demo.communicate(timeout=30)
            pytest.fail(f"{len(running)} demo processes running, demo rc {demo.returncode}:\n"
                        f"{out[-3000:]}")
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()  # reaped, its pipe closed
    assert demo.returncode == 0, out[-3000:]
    assert "event=demo_stopped" in out
    assert processes_mentioning(str(workdir)) == []


def test_ctrl_c_while_starting_starts_no_gateway(tmp_path: Path) -> None:
    """Before: the gateways were started anyway, killed at once, and the demo exited 1."""
    workdir = tmp_path / "work"
    demo = subprocess.Popen([sys.executable, "-m", "ballpass", "demo", "--no-live",
                             "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (workdir / "site.toml").exists():
            time.sleep(0.05)
        demo.send_signal(signal.SIGINT)  # the stream is still starting
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, out[-3000:]
    assert "before=" in out and list(workdir.glob("gw-*.log")) == []
    assert processes_mentioning(str(workdir)) == []
