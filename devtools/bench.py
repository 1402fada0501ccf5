"""`ballpass bench`: named speed figures, each measured against its baseline in the same run.

Each part of ballpass has a `figures(quick: bool) -> dict[str, float]` function in its
own module of this package (`bench_stream`, `bench_online`, `bench_simulators`,
`bench_gateway`, `bench_e2e`); this module only collects them, so a part whose dependencies are not
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

PARTS: tuple[tuple[str, str], ...] = (
    # (the part `--only` names, its module)
    ("stream", "ballpass.devtools.bench_stream"),
    ("simulators", "ballpass.devtools.bench_simulators"),
    ("gateway", "ballpass.devtools.bench_gateway"),
    ("stream", "ballpass.devtools.bench_online"),
    ("e2e", "ballpass.devtools.bench_e2e"),
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"machine_cpus": os.cpu_count(), "machine_arch": platform.machine(),
            "machine_python": platform.python_version()}


def run(quick: bool = False, only: tuple[str, ...] = (),
        e2e_stacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every part's figures, in one flat dict; `e2e_stacks`: the end-to-end part's
    configurations (`bench_e2e.STACKS` names; empty: all)."""
    results: dict[str, Any] = machine()
    for part, name in PARTS:
        if only and part not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            log.warning(kv("bench_part_missing", part=name, reason=e))
            continue
        started = time.perf_counter()
        if part == "e2e" and e2e_stacks:
            results.update(module.figures(quick=quick, stacks=e2e_stacks))
        else:
            results.update(module.figures(quick=quick))
        log.info(kv("bench_part_done", part=name, seconds=round(time.perf_counter() - started, 1)))
    return results


def to_json(results: dict[str, Any]) -> str:
    """The figures as the JSON `ballpass bench` prints or writes (keys sorted)."""
    return json.dumps(results, indent=2, sort_keys=True)
