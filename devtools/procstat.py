"""CPU time and resident memory of a process, read from /proc (Linux), for the benches."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> float:
    """utime + stime of `pid`, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS of `pid`, MB (NaN when /proc has none, e.g. a zombie)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")
