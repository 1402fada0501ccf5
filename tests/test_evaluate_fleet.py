"""`ballpass evaluate-fleet` on a small fleet: it runs, and its figures mean something."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from ballpass.devtools.fleet_eval import CLASSES, FleetSpec, run, table
from ballpass.stream.online.trend import load_calibration


def test_small_fleet_figures() -> None:
    bar = io.StringIO()
    f = run(FleetSpec(seeds=1, horizon_days=8.0, warmup_days=5.0), progress=bar)
    assert "100.0%" in bar.getvalue()
    assert set(f["classes"]) == set(CLASSES)
    assert f["trajectories"] == 5 and f["classes"]["healthy"]["trajectories"] == 0
    for key in ("false_alarms_per_100_sensor_days", "alarmed_after_developed",
                "fraction_alarmed_in_incipient", "days_to_zone_d_median_abs_rel_error"):
        assert key in f and all(key in c for c in f["classes"].values())
    # The healthy machine changes speed and load all the time and still never alarms.
    assert f["classes"]["healthy"]["false_alarms"] == 0
    assert f["healthy_sensor_days"] > 6 * 5
    # Degradations are caught, and no later than the developed stage.
    assert f["alarmed_after_developed"] == 0
    assert f["fraction_alarmed_in_incipient"] >= 0.6
    assert "| outer_race |" in table(f)


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    r = subprocess.run([sys.executable, "-m", "ballpass", "evaluate-fleet", "--seeds", "1",
                        "--horizon-days", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "%" in r.stderr  # the progress bar
    f = json.loads(out.read_text())
    assert f["spec"]["seeds"] == 1 and f["windows"] > 100
    assert "| healthy |" in r.stdout


def test_cli_learns_a_model_error_table_on_raw_projections(tmp_path: Path) -> None:
    """`--calibrate-out` on a one-seed fleet: a valid table with its provenance, learned
    on the raw projection (the run's corrected and raw errors are the same figure)."""
    out, fig = tmp_path / "table.json", tmp_path / "fleet.json"
    r = subprocess.run([sys.executable, "-m", "ballpass", "evaluate-fleet", "--seeds", "1",
                        "--first-seed", "100", "--horizon-days", "8", "--quiet",
                        "--calibrate-out", str(out), "--calibration-bins", "3",
                        "--json", str(fig)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cal = load_calibration(out)
    assert set(cal.zones) == {"C", "D"}
    assert cal.provenance["seeds"] == [100, 100]
    assert "--first-seed 100" in cal.provenance["command"]
    doc = json.loads(out.read_text())
    assert all(len(z["bins"]) == 3 and z["estimates"] >= 30 for z in doc["zones"].values())
    f = json.loads(fig.read_text())
    assert f["spec"]["first_seed"] == 100 and f["spec"]["trend_calibration"].startswith("identity")
    assert f["days_to_zone_d_raw_pooled_median_abs_rel_error_after_alarm"] \
        == f["days_to_zone_d_pooled_median_abs_rel_error_after_alarm"]
    # A bad table given to the evaluation exits 2, naming the file and the key.
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "evaluate-fleet", "--seeds", "1",
                        "--trend-calibration", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "bad.json: format:" in r.stderr
