"""Helpers for tests that run ballpass processes against the real services."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ballpass.services import Influxd


def spawn_ballpass(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m ballpass ARGS` with stdout and stderr appended to `log`."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "ballpass", *args], stdout=out,
                                stderr=subprocess.STDOUT)


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
