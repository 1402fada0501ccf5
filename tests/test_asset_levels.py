"""Per-asset alert and danger levels (issue 13): `[[asset]]` velocity_warning/alert/
danger_mm_s replace the ISO 20816-3 zone boundaries of the asset's group and foundation,
line_snr_db and strong_line_snr_db the diagnosis' envelope line thresholds. Checked at
load; used by the diagnosis (zone, alerts, line presence), the evidence page, the
`iso20816` points the stream writes at start, and shown by `check-config`.

Signals come from `ballpass.simulators.signals.synthesize`."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plant import query_rows, read_status, spawn_ballpass, stream_site, wait_until

from ballpass import wire
from ballpass.config import ConfigError, parse
from ballpass.models import iso20816
from ballpass.models.catalog import lookup
from ballpass.services import Influxd, Mosquitto
from ballpass.simulators.signals import synthesize
from ballpass.stream import thresholds as th
from ballpass.stream.diagnosis import diagnose
from ballpass.stream.features import LINES, extract
from ballpass.stream.pipeline import Incoming, Pipeline
from ballpass.stream.web.pages import sensor_fragment
from ballpass.stream.web.state import EvidenceState

ROOT = Path(__file__).resolve().parents[1]
FS, N, SHAFT = 25600.0, 16384, 24.75
ORDERS = lookup("SKF 6205").orders()
ISO = iso20816.boundaries(2, "rigid")  # the assets below: group 2, rigid (1.4, 2.8, 4.5)
BPFO = LINES.index("BPFO")


def _site(**levels: Any) -> dict[str, Any]:
    """Two assets on one gateway: `iso` with the defaults, `own` with `levels`."""
    sensors = [{"id": f"{a}-de", "driver": "simulated", "asset": a, "fs_hz": FS,
                "window_samples": N, "interval_s": 1} for a in ("iso", "own")]
    return {"site": {"id": "s1"},
            "asset": [{"id": "iso", "bearing": "SKF 6205", "shaft_hz": SHAFT},
                      {"id": "own", "bearing": "SKF 6205", "shaft_hz": SHAFT, **levels}],
            "gateway": [{"id": "g", "sensor": sensors}]}


# --- config ---------------------------------------------------------------------------

def test_unset_levels_are_the_iso_boundaries_and_the_default_thresholds() -> None:
    config = parse(_site(iso_group=1, iso_foundation="flexible", velocity_alert_mm_s=6.0))
    iso, own = config.asset("iso").levels, config.asset("own").levels
    assert iso.zone_boundaries_mm_s == ISO
    assert (iso.line_snr_db, iso.strong_line_snr_db) == (th.LINE_SNR_DB,
                                                          th.STRONG_LINE_SNR_DB)
    assert {lv.source for lv in iso.by_key().values()} == {"ISO 20816-3 group 2 rigid",
                                                           "default"}
    # Only the level it sets is its own; the others follow its group and foundation.
    g1 = iso20816.boundaries(1, "flexible")
    assert own.zone_boundaries_mm_s == (g1[0], 6.0, g1[2])
    assert [own.warning.source, own.alert.source, own.danger.source] == [
        "ISO 20816-3 group 1 flexible", "config", "ISO 20816-3 group 1 flexible"]


@pytest.mark.parametrize(("levels", "error"), [
    ({"velocity_alert_mm_s": 5.0},
     "asset[1].velocity_alert_mm_s: must be < velocity_danger_mm_s = 4.5 "
     "(ISO 20816-3 group 2 rigid), got 5.0"),
    ({"velocity_alert_mm_s": 3.0, "velocity_danger_mm_s": 3.0},
     "asset[1].velocity_danger_mm_s: must be > velocity_alert_mm_s = 3 (config), got 3.0"),
    ({"velocity_warning_mm_s": 2.8},
     "asset[1].velocity_warning_mm_s: must be < velocity_alert_mm_s = 2.8 "
     "(ISO 20816-3 group 2 rigid), got 2.8"),
    ({"velocity_danger_mm_s": 2.0},
     "asset[1].velocity_danger_mm_s: must be > velocity_alert_mm_s = 2.8 "
     "(ISO 20816-3 group 2 rigid), got 2.0"),
    ({"velocity_alert_mm_s": 0},
     "asset[1].velocity_alert_mm_s: must be finite and > 0, got 0.0"),
    ({"velocity_danger_mm_s": float("inf")},
     "asset[1].velocity_danger_mm_s: must be finite and > 0, got inf"),
    ({"velocity_warning_mm_s": float("nan")},
     "asset[1].velocity_warning_mm_s: must be finite and > 0, got nan"),
    ({"line_snr_db": -3.0}, "asset[1].line_snr_db: must be finite and > 0, got -3.0"),
    ({"line_snr_db": "12"}, "asset[1].line_snr_db: must be a number, got '12'"),
    ({"line_snr_db": 20.0},
     "asset[1].line_snr_db: must be <= strong_line_snr_db = 16 (default), got 20.0"),
    ({"line_snr_db": 12.0, "strong_line_snr_db": 11.0},
     "asset[1].strong_line_snr_db: must be >= line_snr_db = 12 (config), got 11.0"),
    ({"velocity_alrt_mm_s": 2.0},
     "asset[1].velocity_alrt_mm_s: unknown key; did you mean 'velocity_alert_mm_s'?"),
])
def test_bad_levels_are_config_errors_naming_the_key(levels: dict[str, Any],
                                                     error: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(_site(**levels))
    assert e.value.errors == [error]


def test_check_config_exits_2_naming_the_bad_level(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[site]\nid = "s1"\n[[asset]]\nid = "m"\nbearing = "SKF 6205"\n'
                    'velocity_alert_mm_s = 3.0\nvelocity_danger_mm_s = inf\n',
                    encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "asset[0].velocity_danger_mm_s: must be finite and > 0, got inf" in r.stderr


def _docs_sample() -> tuple[str, str]:
    """The `[[asset]]` sample of docs/config.md "Levels" and the check-config line the
    docs show for it."""
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    section = text[text.index("### Levels"):]
    section = section[:section.index("\n## ")]
    toml, out = re.findall(r"```(?:toml)?\n(.*?)```", section, re.S)
    return toml, out.strip()


def test_check_config_shows_each_assets_levels_and_their_source(tmp_path: Path) -> None:
    """The docs' sample, in a site with an asset on the defaults: check-config prints
    what the docs say, and the defaults with their ISO group and foundation."""
    toml, documented = _docs_sample()
    path = tmp_path / "site.toml"
    path.write_text('[site]\nid = "s1"\n[[asset]]\nid = "big"\nbearing = "SKF 6205"\n'
                    'iso_group = 1\niso_foundation = "flexible"\n' + toml, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert ("asset big levels: warning (A/B) 3.5 mm/s, alert (B/C) 7.1 mm/s, danger (C/D) "
            "11 mm/s (ISO 20816-3 group 1 flexible); line_snr 10 dB, strong_line_snr 16 dB "
            "(default)") in lines
    assert documented in lines


# --- diagnosis ------------------------------------------------------------------------

def _imbalance(seed: int) -> np.ndarray:
    """A machine whose 1× holds most of its velocity, at about 2.6 mm/s: zone B for
    ISO 20816-3 group 2 rigid (B/C at 2.8)."""
    return synthesize("imbalance", ORDERS, SHAFT, FS, N, severity=0.4,
                      rng=np.random.default_rng(seed))


def test_a_lower_alert_level_makes_zone_c_and_an_alert_where_iso_says_b() -> None:
    """The same windows on two assets: on the ISO defaults zone B, normal, no alert; on
    the asset whose alert level is 2.2 mm/s zone C, imbalance (a shaft fault counts in
    zone C), an alarm after `enter_k` windows, on the evidence page its own B/C line."""
    config = parse(_site(velocity_alert_mm_s=2.2, line_snr_db=15.0))
    pipeline = Pipeline(config)
    state = EvidenceState(config)
    t0 = time.time_ns()
    alerts: list[dict[str, Any]] = []
    results = []
    for seq in range(1, 6):
        x = _imbalance(seq)[None]
        batch = [Incoming("s1", "g", s, wire.Window(seq=seq, t0_ns=t0 + seq * 10**9,
                                                    fs_hz=FS, samples=x))
                 for s in ("iso-de", "own-de")]
        out = pipeline.process(batch)
        state.observe(out, {})
        alerts += out.alerts
        results += out.results
    by_sensor: dict[str, list[tuple[str, str, float]]] = {"iso-de": [], "own-de": []}
    for r in results:
        assert r.diagnosis is not None and r.features is not None
        by_sensor[r.incoming.sensor].append((r.diagnosis.iso_zone, r.diagnosis.diagnosis,
                                             r.features["velocity_rms_mm_s"]))
    for _, _, v in by_sensor["iso-de"] + by_sensor["own-de"]:
        assert 2.2 < v < ISO[1], v  # between the asset's alert level and ISO's B/C
    assert {(z, d) for z, d, _ in by_sensor["iso-de"]} == {("B", "normal")}
    assert {(z, d) for z, d, _ in by_sensor["own-de"]} == {("C", "imbalance")}
    fired = [a for a in alerts if a["status"] == "firing"]
    assert [a["sensor"] for a in fired] == ["own-de"]
    assert fired[0]["iso_zone"] == "C" and fired[0]["severity"] == "medium"
    page = sensor_fragment(state, "own-de")
    assert "B/C 2.2</text>" in page and "line 15</text>" in page
    assert f"B/C {ISO[1]:g}</text>" in sensor_fragment(state, "iso-de")


def test_a_higher_line_threshold_leaves_a_weak_outer_race_line_unreported() -> None:
    """A weak outer-race defect whose BPFO line stands 10-15 dB over its floor, backed by
    its harmonics: reported at the default 10 dB, not with line_snr_db = 15; a strong one
    (above both thresholds) is reported either way."""
    own = parse(_site(line_snr_db=15.0)).asset("own").levels
    x = np.stack([synthesize("outer_race", ORDERS, SHAFT, FS, N, severity=sev,
                             rng=np.random.default_rng(0)) for sev in (0.05, 0.3)])
    batch = extract(x, FS, np.full(2, SHAFT), ORDERS)
    weak, strong = batch.line_snr_db[0, BPFO, 0], batch.line_snr_db[1, BPFO, 0]
    assert th.LINE_SNR_DB <= weak < own.line_snr_db <= own.strong_line_snr_db < strong
    assert diagnose(batch, 0).diagnosis == "outer_race"
    quiet = diagnose(batch, 0, levels=own)
    assert quiet.diagnosis != "outer_race", quiet.reason
    assert all(e.line != "BPFO" for e in quiet.evidence)
    assert diagnose(batch, 1).diagnosis == diagnose(batch, 1, levels=own).diagnosis \
        == "outer_race"


def test_levels_of_the_defaults_diagnose_as_no_levels() -> None:
    """An asset without levels of its own is diagnosed as before (same fields)."""
    levels = parse(_site()).asset("own").levels
    x = np.stack([synthesize(c, ORDERS, SHAFT, FS, N, rng=np.random.default_rng(k))
                  for k, c in enumerate(("normal", "outer_race", "inner_race", "imbalance"))])
    batch = extract(x, FS, np.full(len(x), SHAFT), ORDERS)
    for i in range(len(x)):
        assert diagnose(batch, i, levels=levels) == diagnose(batch, i)


# --- the stream's iso20816 points -------------------------------------------------------

@pytest.mark.slow
def test_the_stream_writes_each_assets_own_zone_boundaries(
        mosquitto: Mosquitto, influxd: Influxd, influx_db: tuple[str, str],
        tmp_path: Path) -> None:
    url, db = influx_db
    tail = ('[[asset]]\nid = "m2"\nbearing = "SKF 6205"\niso_group = 1\n'
            'velocity_alert_mm_s = 3.9\nvelocity_danger_mm_s = 6.0\n')
    site = stream_site(tmp_path / "site.toml", port=mosquitto.port, influx_url=url, db=db,
                       state_dir=tmp_path / "state", tail=tail)
    status_file = tmp_path / "status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file)],
                            tmp_path / "stream.log")
    try:
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120,
                   "the stream to subscribe")
        wait_until(lambda: len(query_rows(influxd, db, 'SELECT * FROM "long"."iso20816"')) == 2,
                   30, "the iso20816 points")
        rows = {r["asset"]: r for r in query_rows(influxd, db, 'SELECT * FROM "long"."iso20816"')}
    finally:
        stream.terminate()
        assert stream.wait(30) == 0
    g1 = iso20816.boundaries(1, "rigid")
    got = {a: (r["ab_mm_s"], r["bc_mm_s"], r["cd_mm_s"], r["ab_source"], r["bc_source"],
               r["cd_source"]) for a, r in rows.items()}
    assert got == {
        "m": (*ISO, *["ISO 20816-3 group 2 rigid"] * 3),
        "m2": (g1[0], 3.9, 6.0, "ISO 20816-3 group 1 rigid", "config", "config"),
    }
    assert rows["m2"]["group"] == 1 and rows["m2"]["foundation"] == "rigid"

