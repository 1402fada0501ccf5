"""`ballpass evaluate-life`: the report's arithmetic on hand-made steps, a simulated run to
failure through the stream's pipeline, spec errors, and one real FEMTO bearing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ballpass.config import ConfigError
from ballpass.models.catalog import lookup as lookup_bearing
from ballpass.simulators.degradation import Trajectory, wear_floor, wear_velocity
from ballpass.simulators.signals import synthesize
from ballpass.stream import evaluate_life as el

REPO = Path(__file__).resolve().parents[1]
FEMTO_SPEC = REPO / "evaluation" / "femto.toml"
FEMTO = REPO.parent / "shared" / "data" / "femto"

SHAFT_HZ = 29.95
FS_HZ = 12000.0
N = 8192  # 0.68 s: 20 revolutions, 1.5 Hz bins (the CWRU rig's default window)
STEP_S = 60.0


def step(t: float, state: str, days: dict[str, float | None] | None = None) -> el.Step:
    return el.Step(t, "normal" if state == "normal" else "outer_race", state, "B", 0.1, 1.0,
                   3.0, 0.5, "ready", days)


def test_score_lead_times_false_alarms_and_projections() -> None:
    eol = 1000.0
    day = el.DAY_S
    steps = [
        step(0, "normal"), step(100, "watch"), step(200, "alarm"),  # a false alarm
        step(300, "normal"), step(600, "normal"), step(700, "watch"),
        # last 30 % of life (t >= 700): truth = (1000 - t) / day
        step(750, "alarm", {"days": 250 / day, "lo": 200 / day, "hi": 300 / day}),  # holds
        step(800, "alarm", {"days": 100 / day, "lo": 50 / day, "hi": 150 / day}),  # short
        step(900, "alarm", {"days": 100 / day, "lo": 10 / day, "hi": None}),  # unbounded
        step(950, "alarm", None),
    ]
    f = el.score(steps, eol)
    assert f["first_watch"] == {"t_s": 100.0, "lead_s": 900.0, "lead_pct_of_life": 90.0}
    assert f["first_alarm"] == {"t_s": 200.0, "lead_s": 800.0, "lead_pct_of_life": 80.0}
    assert f["alarm_before_end"] is True
    assert f["alarms"] == 2 and f["alarms_first_half"] == 1
    assert f["watch_windows_first_half"] == 1
    p = f["projections"]
    assert (p["late_windows"], p["estimates"], p["held"]) == (5, 3, 2)
    assert p["held_fraction"] == pytest.approx(2 / 3, abs=1e-4)
    assert p["median_error_s"] == pytest.approx(0.0)  # errors 0, -100, 0
    # Never alarmed: no lead, not counted.
    quiet = el.score([step(0, "normal"), step(500, "normal")], eol)
    assert quiet["first_alarm"]["lead_s"] is None and quiet["alarm_before_end"] is False
    assert quiet["projections"]["held_fraction"] is None
    total = el.summary([el.LifeResult(_run(Path("x.npz")), steps, eol, f),
                        el.LifeResult(_run(Path("y.npz")), [], eol, quiet)])
    assert total["alarmed_before_end"] == 1 and total["median_lead_pct_of_life"] == 80.0
    assert total["targets"]["no_alarm_first_half"] is False
    assert total["targets"]["alarm_before_end_5_of_6"] is False


def _run(path: Path) -> el.Run:
    return el.Run("run[0]", path.stem, path, FS_HZ, SHAFT_HZ, lookup_bearing("SKF 6205"))


def simulated_run(path: Path, windows: int = 140) -> tuple[Path, Trajectory]:
    """A healthy machine that grows an outer-race fault from 60 % of its life and fails
    at the last window: `windows` windows every STEP_S s, as a FEMTO-like .npz."""
    life = (windows - 1) * STEP_S
    traj = Trajectory("outer_race", 0.6 * life, 0.15 * life, 0.15 * life, 0.1 * life)
    orders = lookup_bearing("SKF 6205").orders()
    rng = np.random.default_rng(3)
    t = np.arange(windows) * STEP_S
    sig = np.empty((windows, 1, N), dtype=np.float32)
    for i, ti in enumerate(t):
        sev = traj.at(float(ti)).severity
        cond = "normal" if sev <= 0 else "outer_race"
        sig[i, 0] = synthesize(cond, orders, SHAFT_HZ, FS_HZ, N, severity=max(sev, 0.0),
                               rng=rng, hf_extra=wear_floor("outer_race", sev),
                               wear_mm_s=wear_velocity("outer_race", sev))
    np.savez(path, signal=sig, t_s=t)
    return path, traj


def spec(path: Path, run: Path, extra: str = "") -> Path:
    path.write_text(
        "[online]\nlearn_hours = 0.0\nlearn_windows = 50\nband_min_windows = 10\n"
        "trend_bucket_s = 300.0\ntrend_min_points = 3\n\n"
        f'[[run]]\npath = "{run}"\nfs_hz = {FS_HZ}\nshaft_hz = {SHAFT_HZ}\n'
        f'bearing = "SKF 6205"\n{extra}\n', encoding="utf-8")
    return path


def test_simulated_run_to_failure(tmp_path: Path) -> None:
    npz, traj = simulated_run(tmp_path / "sim.npz")
    out = io.StringIO()
    plots = tmp_path / "plots"
    assert el.main(spec(tmp_path / "life.toml", npz), tmp_path / "r.json", plots, out,
                   io.StringIO()) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    (r,) = data["runs"]
    eol = (140 - 1) * STEP_S
    assert r["end_of_life_s"] == eol and r["windows"] and len(r["windows"]) == 140
    # Lead times follow from the windows' own states.
    first_alarm = next(w["t_s"] for w in r["windows"] if w["state"] == "alarm")
    first_watch = next(w["t_s"] for w in r["windows"] if w["state"] != "normal")
    assert r["first_alarm"]["t_s"] == first_alarm
    assert r["first_alarm"]["lead_s"] == pytest.approx(eol - first_alarm)
    assert r["first_alarm"]["lead_pct_of_life"] == pytest.approx(
        100 * (eol - first_alarm) / eol, abs=1e-3)
    assert r["first_watch"]["t_s"] == first_watch <= first_alarm
    # The fault is seen after its onset and well before failure; nothing before.
    assert traj.onset_s < first_alarm < eol
    assert r["first_alarm"]["lead_pct_of_life"] >= 10.0, r["first_alarm"]
    assert r["alarms_first_half"] == 0 and r["watch_windows_first_half"] == 0
    assert "outer_race" in r["diagnoses"]
    assert data["summary"]["alarmed_before_end"] == 1
    assert "sim" in out.getvalue() and "alarm before end of life: 1/1" in out.getvalue()
    root = ET.fromstring((plots / "sim.svg").read_text())  # well-formed SVG
    assert root.tag.endswith("svg") and len(root) > 140


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    npz = tmp_path / "r.npz"
    np.savez(npz, signal=np.zeros((3, 64), dtype=np.float32), t_s=np.arange(3.0))
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[online]\nlearn_windows = 5\n[[run]]\npath = "{npz}"\nfs_hz = -1\n'
                   'shaft_hz = 25\nbearing = "SKF 6205"\nsignal_key = "acc"\ncolour = 1\n',
                   encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        el.load_spec(bad)
    text = str(e.value)
    for key in ("online.learn_windows", "run[0].fs_hz", "run[0].signal_key", "run[0].colour"):
        assert key in text, text
    twice = tmp_path / "twice.toml"
    one = f'[[run]]\npath = "{npz}"\nfs_hz = 1000\nshaft_hz = 25\nbearing = "SKF 6205"\n'
    twice.write_text(one + one, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run\[1\].name: 'r' is also run\[0\]"):
        el.load_spec(twice)
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no \[\[run\]\]"):
        el.load_spec(empty)
    # Arrays that do not fit: named at read time.
    np.savez(npz, signal=np.zeros((3, 64), dtype=np.float32), t_s=np.array([0.0, 1.0, 1.0]))
    (run,) = el.load_spec(spec(tmp_path / "s.toml", npz))
    with pytest.raises(ConfigError, match=r"run\[0\].time_key"):
        el.read_run(run)


def test_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[run]]\npath = "missing.npz"\n', encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "ballpass", "evaluate-life", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run[0].path" in p.stderr, p.stderr


def test_one_real_femto_bearing(tmp_path: Path) -> None:
    """Bearing3_1 (the shortest run) of the shipped spec through the whole path: the
    report is consistent with the recording (measures; no figure is asserted as a target)."""
    runs = [r for r in el.load_spec(FEMTO_SPEC) if r.name == "Bearing3_1"]
    assert len(runs) == 1
    (result,) = el.run_all(runs)[0]
    f = result.figures
    with np.load(FEMTO / "Bearing3_1.npz") as z:
        t = z["t_s"]
        n = z["signal"].shape[0]
    assert f["windows"] == n and result.end_of_life_s == pytest.approx(float(t.max()))
    # 0.1 s windows are 2.5 revolutions at 25 Hz: physics cannot read lines.
    assert f["diagnoses"].get("insufficient_data", 0) >= n // 2, f["diagnoses"]
    assert f["online_ready"]["t_s"] is not None  # the online layer learns and scores
    for key in ("first_watch", "first_alarm", "first_zone_d"):
        lead = f[key]
        if lead["t_s"] is not None:
            assert lead["lead_s"] == pytest.approx(result.end_of_life_s - lead["t_s"])
    assert f["alarms_first_half"] == 0
    assert el.svg(result).startswith("<svg")


def test_short_windows_alarm_through_the_online_layer(tmp_path: Path) -> None:
    """Windows too short for the lines (1024 samples at 12 kHz: 2.6 revolutions) are
    insufficient_data for physics; the online layer still reads their levels, and its
    anomaly becomes `unknown_anomaly`, which alarms (stream/pipeline.py)."""
    orders = lookup_bearing("SKF 6205").orders()
    rng = np.random.default_rng(5)
    n, windows = 1024, 80
    t = np.arange(windows) * STEP_S
    sig = np.empty((windows, 1, n), dtype=np.float32)
    for i in range(windows):
        sev = 0.0 if i < 65 else 2.5  # a severe fault for the last 15 windows
        sig[i, 0] = synthesize("normal" if sev == 0 else "outer_race", orders, SHAFT_HZ,
                               FS_HZ, n, severity=sev, rng=rng,
                               hf_extra=wear_floor("outer_race", sev),
                               wear_mm_s=wear_velocity("outer_race", sev))
    np.savez(tmp_path / "short.npz", signal=sig, t_s=t)
    (run,) = el.load_spec(spec(tmp_path / "s.toml", tmp_path / "short.npz"))
    (result,) = el.run_all([run])[0]
    diags = [s.diagnosis for s in result.steps]
    assert set(diags[:65]) == {"insufficient_data"}, set(diags[:65])
    assert "unknown_anomaly" in diags[65:], diags[65:]
    assert result.figures["first_alarm"]["t_s"] is not None
    assert result.figures["first_alarm"]["t_s"] >= t[65]
    assert result.figures["alarms_first_half"] == 0


def test_life_runs_from_the_first_window_to_the_end_of_life(tmp_path: Path) -> None:
    """Before: life was measured from t = 0 (a file whose clock starts at 1e6 s read 0 %
    leads and no first half), and windows after an `end_of_life_s` earlier than the last
    file were scored, giving negative leads."""
    npz, _ = simulated_run(tmp_path / "sim.npz")
    with np.load(npz) as z:
        sig, t = z["signal"], z["t_s"]
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, signal=sig, t_s=t + 1e6)
    base = el.evaluate_run(el.load_spec(spec(tmp_path / "a.toml", npz))[0]).figures
    moved = el.evaluate_run(el.load_spec(spec(tmp_path / "b.toml", shifted))[0]).figures
    assert moved["first_alarm"] == base["first_alarm"]
    assert moved["first_alarm"]["lead_pct_of_life"] > 10
    eol = float(t[100]) + 1e6  # the failure defined before the last file
    early = el.evaluate_run(el.load_spec(spec(tmp_path / "c.toml", shifted,
                                              f"end_of_life_s = {eol}"))[0])
    assert len(early.steps) == 101 and early.end_of_life_s == float(t[100])
    # The fault grows from 60 % of the 140 windows: watch and alarm come before window
    # 100, the same as in the whole run, and lead to the earlier end of life.
    for key in ("first_watch", "first_alarm"):
        first = early.figures[key]
        assert first["t_s"] is not None and first["t_s"] == moved[key]["t_s"], (
            first, moved[key])
        assert first["lead_s"] == pytest.approx(early.end_of_life_s - first["t_s"]), first
        assert first["lead_s"] >= 0, first


def test_an_object_array_is_a_spec_error_naming_the_key(tmp_path: Path) -> None:
    npz = tmp_path / "obj.npz"
    np.savez(npz, signal=np.array([[object()]] * 3, dtype=object), t_s=np.arange(3.0))
    (run,) = el.load_spec(spec(tmp_path / "s.toml", npz))
    with pytest.raises(ConfigError, match=r"run\[0\].signal_key: 'signal' is not a numeric"):
        el.read_run(run)
    np.savez(npz, signal=np.zeros((1, 64)), t_s=np.arange(1.0))
    with pytest.raises(ConfigError, match=r"run\[0\]: need at least 2 windows, got 1"):
        el.read_run(run)


def small_run(path: Path, windows: int = 6, scale: float = 1.0) -> Path:
    """A few windows of noise (g × `scale`), quick to simulate."""
    rng = np.random.default_rng(8)
    np.savez(path, signal=(rng.normal(0, 0.05, (windows, N)) * scale).astype(np.float32),
             t_s=np.arange(windows) * STEP_S)
    return path


def test_a_damaged_run_file_is_a_spec_error_naming_the_run(tmp_path: Path) -> None:
    npz = small_run(tmp_path / "r.npz")  # np.savez stores: the member data is in clear
    b = bytearray(npz.read_bytes())
    for i in range(3000, 3040):
        b[i] ^= 0xFF
    npz.write_bytes(bytes(b))
    s = spec(tmp_path / "s.toml", npz)
    (run,) = el.load_spec(s)  # the listing reads; the data fails its CRC
    with pytest.raises(ConfigError, match=r"run\[0\]\.path: cannot read r\.npz \(run 'r'\): "
                       r"BadZipFile"):
        el.read_run(run)
    p = subprocess.run([sys.executable, "-m", "ballpass", "evaluate-life", str(s)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run[0].path: cannot read" in p.stderr, p.stderr


@pytest.mark.parametrize("key", ["signal_key", "time_key"])
def test_empty_keys_are_refused(tmp_path: Path, key: str) -> None:
    npz = small_run(tmp_path / "r.npz")
    with pytest.raises(ConfigError, match=rf"run\[0\]\.{key}: must not be empty"):
        el.load_spec(spec(tmp_path / "s.toml", npz, f'{key} = ""'))


@pytest.mark.parametrize("name", ["rig/B1", "x/../../escape", "a\\\\b", ".."])
def test_a_name_is_one_plain_file_name(tmp_path: Path, name: str) -> None:
    npz = small_run(tmp_path / "r.npz")
    with pytest.raises(ConfigError, match=r"run\[0\]\.name: is the plot's file name"):
        el.load_spec(spec(tmp_path / "s.toml", npz, f'name = "{name}"'))


def test_scale_converts_the_signal_to_g(tmp_path: Path) -> None:
    g = el.read_run(el.load_spec(spec(tmp_path / "g.toml", small_run(tmp_path / "g.npz")))[0])
    ms2 = small_run(tmp_path / "ms2.npz", scale=9.80665)
    (run,) = el.load_spec(spec(tmp_path / "m.toml", ms2, f"scale = {1 / 9.80665!r}"))
    np.testing.assert_allclose(el.read_run(run)[0], g[0], rtol=1e-6)
    np.savez(ms2, signal=np.zeros((3, N), np.int16), t_s=np.arange(3.0))
    (run,) = el.load_spec(spec(tmp_path / "m.toml", ms2))
    with pytest.raises(ConfigError, match=r"run\[0\]\.scale: is required for integer"):
        el.read_run(run)
    with pytest.raises(ConfigError, match=r"run\[0\]\.scale: must be a finite number"):
        el.load_spec(spec(tmp_path / "m.toml", ms2, "scale = -1.0"))


def test_output_paths_checked_first_and_json_written_before_plots(tmp_path: Path) -> None:
    s = spec(tmp_path / "s.toml", small_run(tmp_path / "r.npz"))
    out, err = io.StringIO(), io.StringIO()
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"--json: .*adir' is a directory"):
        el.main(s, tmp_path / "adir", None, out=out, err=err)
    with pytest.raises(ConfigError, match=r"--plots: .*afile' is a file"):
        el.main(s, None, tmp_path / "afile", out=out, err=err)
    assert err.getvalue() == ""  # both before the first run was read
    # A plot that cannot be written (a directory in its place) is named, and the report
    # written before it is kept.
    (tmp_path / "plots" / "r.svg").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"--plots: cannot write .*r\.svg"):
        el.main(s, tmp_path / "out.json", tmp_path / "plots", out=out, err=err)
    assert json.loads((tmp_path / "out.json").read_text())["runs"][0]["name"] == "r"
    # Existing outputs are overwritten, an existing plot folder written into.
    (tmp_path / "plots" / "r.svg").rmdir()
    for _ in range(2):
        assert el.main(s, tmp_path / "out.json", tmp_path / "plots", out=out, err=err) == 0
    assert (tmp_path / "plots" / "r.svg").read_text().startswith("<svg")
