"""`ballpass bench`: named speed figures, each measured against its baseline in the same run.

Each part of ballpass contributes a `figures(quick: bool) -> dict[str, float]` function
in its own `bench.py` module (`ballpass.stream.bench`, `ballpass.simulators.bench`,
`ballpass.gateway.bench`); this module only collects them, so a part that is not
installed (the stream extra on a gateway board) is reported, not fatal. BENCHMARKS.md
records the figures with the machine and the command.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time
from typing import Any

from ballpass.log import kv

log = logging.getLogger(__name__)

PARTS = ("ballpass.stream.bench", "ballpass.simulators.bench", "ballpass.gateway.bench",
         "ballpass.stream.online.bench")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"machine_cpus": os.cpu_count(), "machine_arch": platform.machine(),
            "machine_python": platform.python_version()}


def run(quick: bool = False, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every part's figures, in one flat dict."""
    results: dict[str, Any] = machine()
    for name in PARTS:
        if only and name.split(".")[1] not in only:  # "ballpass.stream.bench" -> "stream"
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            log.warning(kv("bench_part_missing", part=name, reason=e))
            continue
        started = time.perf_counter()
        results.update(module.figures(quick=quick))
        log.info(kv("bench_part_done", part=name, seconds=round(time.perf_counter() - started, 1)))
    return results


def to_json(results: dict[str, Any]) -> str:
    """The figures as the JSON `ballpass bench` prints or writes (keys sorted)."""
    return json.dumps(results, indent=2, sort_keys=True)
