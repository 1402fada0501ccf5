"""Helpers for tests that run ballpass processes against the real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ballpass.services import Influxd


def spawn_ballpass(args: list[str], log: Path,
                   env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m ballpass ARGS` with stdout and stderr appended to `log`; `env` replaces
    the environment."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "ballpass", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def stop_gently(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """SIGTERM each process still running, SIGKILL one that has not exited in `timeout_s`."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()


def read_status(path: Path) -> dict[str, Any]:
    """The stream's status file, or {} while it does not exist (or is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               poll_s: float = 0.2) -> None:
    """Poll `predicate` until it is truthy; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def query_rows(influxd: Influxd, db: str, q: str) -> list[dict[str, Any]]:
    """InfluxQL `q`'s rows as dicts of column and tag values (`Influxd.query` raises
    ServiceError on a statement error)."""
    result = influxd.query(q, db=db)["results"][0]
    return [{**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
            for series in result.get("series", []) for values in series["values"]]


def write_passwords(tmp: Path, passwords: dict[str, str]) -> None:
    """`tmp/stream.pw` and `tmp/gw1.pw`: the password files the test site configs name."""
    for user in ("stream", "gw1"):
        (tmp / f"{user}.pw").write_text(passwords[user] + "\n", encoding="utf-8")


def stream_site(path: Path, *, port: int, influx_url: str, db: str, state_dir: Path,
                stream: str = "", sensors: dict[str, list[str]] | None = None,
                fs_hz: float = 25600.0, window: int = 4096, shaft_hz: float = 25.0,
                tail: str = "") -> Path:
    """A site file for a stream test: site `s1`, broker on 127.0.0.1:`port`, asset `m` (SKF
    6205), `sensors` {gateway: [sensor ids]} (default gw1: a), extra `[stream]` lines and a
    `tail` of further tables."""
    gateways = "".join(
        f'[[gateway]]\nid = "{g}"\n' + "".join(
            f'[[gateway.sensor]]\nid = "{s}"\ndriver = "simulated"\nasset = "m"\n'
            f'fs_hz = {fs_hz}\nwindow_samples = {window}\ninterval_s = 1\n' for s in ids)
        for g, ids in (sensors or {"gw1": ["a"]}).items())
    path.write_text(f"""[site]
id = "s1"
[broker]
host = "127.0.0.1"
port = {port}
[influx]
url = "{influx_url}"
db = "{db}"
[stream]
state_dir = "{state_dir}"
batch_wait_s = 0.1
{stream}
[[asset]]
id = "m"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = {shaft_hz}
{gateways}{tail}""", encoding="utf-8")
    return path


def processes_mentioning(text: str) -> list[int]:
    """PIDs of the processes (other than this one) whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def one_sensor_site(url: str, db: str, state_dir: Path, **stream: Any) -> Any:
    """The parsed config of site s1: gateway g, sensor a (simulated, 25.6 kHz, 4096
    samples) on motor m, InfluxDB at `url`/`db`; `stream` adds [stream] keys."""
    from ballpass.config import parse
    return parse({"site": {"id": "s1"},
                  "stream": {"state_dir": str(state_dir), **stream},
                  "influx": {"url": url, "db": db},
                  "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": 25.0}],
                  "gateway": [{"id": "g", "sensor": [
                      {"id": "a", "driver": "simulated", "asset": "m", "fs_hz": 25600,
                       "window_samples": 4096, "interval_s": 1}]}]})
