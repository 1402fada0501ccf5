"""`ballpass bench --quick --only stream` runs and writes every diagnosis-engine figure
(a smoke test: speed is measured by `make bench`, never asserted here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = [f"{name}{sfx}" for sfx in ("", "_65536") for name in (
    "dsp_pipeline_windows_per_s", "dsp_baseline_windows_per_s", "dsp_fft_bound_windows_per_s",
    "dsp_speedup_vs_baseline", "dsp_fraction_of_fft_bound")] + ["jit_warm_start_s"]


@pytest.mark.slow
def test_bench_stream_quick_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "ballpass", "bench", "--quick", "--only", "stream",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    missing = [k for k in KEYS if k not in data]
    assert not missing, missing
    for k in KEYS:
        assert isinstance(data[k], float) and math.isfinite(data[k]) and data[k] > 0, (k, data[k])
    # The baseline computes the same features, so it reaches the same diagnoses on these
    # clean simulated windows.
    assert data["dsp_baseline_same_diagnosis"] >= 0.75
    assert data["jit_warm_start_kernels_compiled"] == 0.0


E2E_KEYS = [f"e2e_embedded_{k}" for k in (
    "sustained_windows_per_s", "ratio_to_dsp", "latency_p50_s", "latency_p99_s",
    "cpu_worker0_half", "rss_mb", "windows_published")] + [
    f"e2e_embedded_stage_fraction_{s}" for s in ("admit", "process", "write", "publish",
                                                 "history")] + [
    "e2e_dsp_pipeline_windows_per_s"]


def _quick_e2e(tmp_path: Path, stack: str, keys: list[str]) -> dict[str, float]:
    """`ballpass bench --quick --only e2e` on one stack: its JSON, with every key in `keys`
    present, finite and positive."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "ballpass", "bench", "--quick", "--only", "e2e",
                        "--e2e-stacks", stack, "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data: dict[str, float] = json.loads(out.read_text())
    missing = [k for k in keys if k not in data]
    assert not missing, missing
    for k in keys:
        assert math.isfinite(data[k]) and data[k] > 0, (k, data[k])
    return data


@pytest.mark.slow
def test_bench_e2e_quick_writes_its_figures_and_loses_nothing(tmp_path: Path) -> None:
    """mosquitto + influxd + one `ballpass stream`, loaded by the load generator: every
    figure comes out, every acknowledged window is in InfluxDB once."""
    data = _quick_e2e(tmp_path, "embedded", E2E_KEYS)
    assert data["e2e_embedded_windows_published"] >= 16 + 40 * 3  # warm-up + first step
    assert data["e2e_embedded_lost"] == 0.0
    assert data["e2e_embedded_duplicated"] == 0.0
    assert data["e2e_embedded_unexpected"] == 0.0
    assert data["e2e_embedded_latency_matched_fraction"] > 0.5
    fractions = sum(data[f"e2e_embedded_stage_fraction_{s}"] for s in (
        "admit", "process", "write", "publish", "history"))
    assert abs(fractions - 1.0) < 1e-6


NATS2_KEYS = [f"e2e_nats2_{k}" for k in (
    "sustained_windows_per_s", "latency_p50_s", "latency_p99_s", "cpu_worker0",
    "cpu_worker1", "cpu_nats_n1", "cpu_nats_n2", "cpu_nats_n3", "cpu_worker0_half",
    "cpu_worker1_half", "rss_mb_worker0", "rss_mb_worker1", "windows_published",
    "relayed", "returned")]


@pytest.mark.slow
def test_bench_e2e_quick_nats2_writes_its_figures_and_loses_nothing(tmp_path: Path) -> None:
    """mosquitto + a 3-node NATS cluster + 2 `ballpass stream --engine nats` workers +
    influxd: the partitions are shared, every window is relayed to JetStream and written
    once, the diagnoses come back to mosquitto through the relay."""
    data = _quick_e2e(tmp_path, "nats2", NATS2_KEYS)
    assert not any(k.startswith("e2e_embedded_") for k in data)  # only the stack asked for
    assert "e2e_nats2_speedup" not in data  # needs nats1 in the same run
    assert data["e2e_nats2_partitions_worker0"] + data["e2e_nats2_partitions_worker1"] == 16
    assert data["e2e_nats2_windows_published"] >= 16 + 40 * 3  # warm-up + first step
    assert data["e2e_nats2_relayed"] + data["e2e_nats2_relay_duplicates"] >= \
        data["e2e_nats2_windows_published"]
    assert data["e2e_nats2_lost"] == 0.0
    assert data["e2e_nats2_duplicated"] == 0.0
    assert data["e2e_nats2_unexpected"] == 0.0
    assert data["e2e_nats2_latency_matched_fraction"] > 0.5


def test_bench_e2e_refuses_an_unknown_stack() -> None:
    from ballpass.devtools import bench_e2e

    with pytest.raises(ValueError, match="'nats9'"):
        bench_e2e.figures(quick=True, stacks=("nats9",))
