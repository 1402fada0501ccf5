"""`ballpass evaluate-fleet` on a small fleet: it runs, and its figures mean something."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from ballpass.stream.online.fleet import CLASSES, FleetSpec, run, table


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
