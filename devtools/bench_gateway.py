"""Gateway footprint for `ballpass bench`: RSS and CPU per continuously captured axis.

`figures(quick)` runs a real `ballpass gateway` subprocess against a private mosquitto
twice, in the same run:

- baseline: an idle gateway (its one sensor captures a 16-sample window once an hour);
- loaded: `AXES` replay sensors, each one axis at 25.6 kHz captured continuously
  (``window_samples`` = 25600, ``interval_s`` = 1 s), every window through the SQLite
  outbox (synchronous=FULL) and published at QoS 1.

CPU is read from ``/proc/PID/stat`` (utime + stime) over the measuring time after a
warm-up; RSS from ``/proc/PID/status`` (VmRSS) at the end. Figures:

- ``gateway_rss_mb``: RSS of the loaded gateway, MB (target <= 60);
- ``gateway_rss_idle_mb``: RSS of the idle gateway, MB;
- ``gateway_cpu_per_axis``: (loaded CPU − idle CPU) / AXES, fraction of one core
  (target <= 0.02);
- ``gateway_cpu_idle``: the idle gateway's CPU, fraction of one core;
- ``gateway_windows_published``: windows the loaded gateway published (a check that the
  load was real).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ballpass.devtools.procstat import cpu_s, rss_mb
from ballpass.log import kv
from ballpass.services import Mosquitto

log = logging.getLogger(__name__)

AXES = 3
FS_HZ = 25600


def _site(path: Path, port: int, outbox: Path, recording: Path, idle: bool) -> None:
    if idle:
        sensors = f"""
[[gateway.sensor]]
id = "idle"
driver = "replay"
asset = "pump"
fs_hz = {FS_HZ}
window_samples = 16
interval_s = 3600
options = {{ path = "{recording}" }}
"""
    else:
        sensors = "".join(f"""
[[gateway.sensor]]
id = "axis{i}"
driver = "replay"
asset = "pump"
fs_hz = {FS_HZ}
window_samples = {FS_HZ}
interval_s = 1.0
options = {{ path = "{recording}" }}
""" for i in range(AXES))
    path.write_text(f"""
[site]
id = "bench"
[broker]
host = "127.0.0.1"
port = {port}
[[asset]]
id = "pump"
bearing = "SKF 6205"
shaft_hz = 29.95
[[gateway]]
id = "gw-bench"
outbox = {{ path = "{outbox}" }}
{sensors}""", encoding="utf-8")


def _measure(work: Path, port: int, recording: Path, idle: bool, warmup_s: float,
             measure_s: float) -> tuple[float, float, int]:
    """(CPU fraction of one core, RSS MB, windows published) of one gateway run."""
    name = "idle" if idle else "loaded"
    site, outbox = work / f"{name}.toml", work / f"{name}.sqlite"
    _site(site, port, outbox, recording, idle)
    with (work / f"{name}.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ballpass", "--log-level", "WARNING",
                                 "gateway", "-c", str(site), "-g", "gw-bench"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise RuntimeError(f"bench gateway exited: {(work / f'{name}.log').read_text()}")
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        time.sleep(measure_s)
        c1, t1 = cpu_s(proc.pid), time.monotonic()
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    db = sqlite3.connect(outbox)
    try:
        published = int(db.execute(
            "SELECT value FROM counters WHERE name = 'published'").fetchone()[0])
    finally:
        db.close()
    return (c1 - c0) / (t1 - t0), rss, published


def figures(quick: bool = False) -> dict[str, float]:
    """Gateway footprint figures (see the module docstring)."""
    measure_s = 8.0 if quick else 20.0
    with tempfile.TemporaryDirectory(prefix="ballpass-gw-bench-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        t = np.arange(4 * FS_HZ) / FS_HZ
        signal_g = (0.3 * np.sin(2 * np.pi * 29.95 * t)
                    + 0.05 * rng.standard_normal(t.size)).astype(np.float64)
        recording = work / "axis.npz"
        np.savez(recording, signal=signal_g, fs_hz=float(FS_HZ))
        with Mosquitto(work / "mqtt", anonymous=True) as broker:
            idle_cpu, idle_rss, _ = _measure(work, broker.port, recording, True, 3.0,
                                             measure_s)
            cpu, rss, published = _measure(work, broker.port, recording, False, 4.0,
                                           measure_s)
    per_axis = max(0.0, cpu - idle_cpu) / AXES
    log.info(kv("gateway_bench", cpu=round(cpu, 4), idle_cpu=round(idle_cpu, 4),
                per_axis=round(per_axis, 4), rss_mb=round(rss, 1), published=published))
    return {
        "gateway_rss_mb": round(rss, 1),
        "gateway_rss_idle_mb": round(idle_rss, 1),
        "gateway_cpu_per_axis": round(per_axis, 4),
        "gateway_cpu_idle": round(idle_cpu, 4),
        "gateway_windows_published": float(published),
    }
