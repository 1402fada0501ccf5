"""InfluxDB retention and hourly downsampling (stream/sinks/retention.py) against the
session's real influxd: policies from the config, idempotent, altered when the config
changes; the continuous queries' aggregates checked on points with known values, through
the backfill statement (the CQ's own SELECT) and through a CQ run by influxd itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from ballpass import cli
from ballpass.config import ConfigError, InfluxConfig, parse
from ballpass.services import Influxd
from ballpass.stream.service import StreamService
from ballpass.stream.sinks.influx import InfluxQueryError, V1Writer, query_v1
from ballpass.stream.sinks.lineprotocol import Point
from ballpass.stream.sinks.retention import (
    DOWNSAMPLED,
    LONG_RP,
    RAW_RP,
    apply_retention,
    backfill_statement,
    cq_name,
    cq_statement,
    downsample_select,
    routes,
)

HOUR_NS = 3600 * 10**9


def _minimal(influx: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": {"id": "p"}, "influx": influx,
        "asset": [{"id": "m1", "kind": "motor", "bearing": "SKF 6205", "shaft_hz": 25.0}],
        "gateway": [{"id": "gw1", "sensor": [{
            "id": "s1", "driver": "simulated", "asset": "m1", "fs_hz": 25600,
            "window_samples": 8192, "interval_s": 1.0}]}],
    }


def _errors(influx: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(_minimal(influx))
    return e.value.errors


def test_retention_config_is_typed_and_checked_with_key_paths() -> None:
    cfg = parse(_minimal({"raw_retention_d": 30, "long_retention_d": 0,
                          "hourly_lookback_h": 6, "manage_retention": False})).influx
    assert (cfg.raw_retention_d, cfg.long_retention_d, cfg.hourly_lookback_h,
            cfg.manage_retention) == (30, 0, 6, False)
    assert _errors({"raw_retention_d": 0}) == [
        "influx.raw_retention_d: must be in [1, 100000], got 0"]
    assert _errors({"raw_retention_d": 90, "long_retention_d": 30}) == [
        "influx.long_retention_d: must be 0 (forever) or >= raw_retention_d = 90, got 30"]
    assert _errors({"manage_retention": "yes"}) == [
        "influx.manage_retention: must be true or false, got 'yes'"]
    assert _errors({"hourly_lookback_h": 1.5}) == [
        "influx.hourly_lookback_h: must be an integer, got 1.5"]


def _policies(url: str, db: str) -> dict[str, tuple[str, bool]]:
    return {r["name"]: (r["duration"], r["default"])
            for r in query_v1(url, db, f'SHOW RETENTION POLICIES ON "{db}"')}


def _cqs(url: str, db: str) -> dict[str, str]:
    return {r["name"]: r["query"] for r in query_v1(url, db, "SHOW CONTINUOUS QUERIES")
            if r["_measurement"] == db}


def test_policies_and_cqs_follow_the_config_idempotently(
        influx_db: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    url, db = influx_db
    cfg = InfluxConfig(url=url, db=db, raw_retention_d=45, long_retention_d=1000)
    with caplog.at_level(logging.INFO, logger="ballpass.stream.sinks.retention"):
        first = apply_retention(cfg)
    assert first[:2] == ["action=created policy=raw days=45 default=True",
                         "action=created policy=long days=1000 default=False"]
    set_lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("event=influx_retention_set")]
    assert len(set_lines) == len(first) == 2 + len(DOWNSAMPLED)
    policies = _policies(url, db)
    assert policies[RAW_RP] == ("1080h0m0s", True)
    assert policies[LONG_RP] == ("24000h0m0s", False)
    cqs = _cqs(url, db)
    assert set(cqs) == {cq_name(db, m, cfg.hourly_lookback_h) for m in DOWNSAMPLED}
    for m in DOWNSAMPLED:
        # influxd prints the statement back without the quotes: the same SELECT … INTO.
        text = cqs[cq_name(db, m, cfg.hourly_lookback_h)]
        assert downsample_select(db, m).replace('"', "") in text
        assert "RESAMPLE FOR 2h" in text

    assert apply_retention(cfg) == []  # idempotent
    assert _policies(url, db) == policies and _cqs(url, db) == cqs

    changed = dataclasses.replace(cfg, raw_retention_d=7, long_retention_d=0,
                                  hourly_lookback_h=4)
    again = apply_retention(changed)
    assert again[:2] == ["action=altered policy=raw days=7 was_days=45.0 default=True",
                         "action=altered policy=long days=0 was_days=1000.0 default=False"]
    assert _policies(url, db)[RAW_RP] == ("168h0m0s", True)
    assert _policies(url, db)[LONG_RP] == ("0s", False)  # forever
    cqs = _cqs(url, db)
    assert set(cqs) == {cq_name(db, m, 4) for m in DOWNSAMPLED}  # old ones dropped
    assert all("RESAMPLE FOR 4h" in q for q in cqs.values())
    assert apply_retention(changed) == []


def test_a_missing_database_is_a_clear_error(influxd: Influxd) -> None:
    cfg = InfluxConfig(url=influxd.url, db="no_such_db_for_retention")
    with pytest.raises(InfluxQueryError, match="database not found"):
        apply_retention(cfg)


def _fleet_points(hour0_ns: int, hours: int) -> tuple[list[Point], dict[tuple[str, int], Any]]:
    """Vibration, temperature and diagnosis points for two sensors, 6 per hour with known
    values; returns them and the expected hourly aggregates by (sensor, hour index)."""
    points: list[Point] = []
    expected: dict[tuple[str, int], Any] = {}
    for s_i, sensor in enumerate(("de", "nde")):
        tags = {"site": "p", "gateway": "gw1", "sensor": sensor, "asset": "m1"}
        for h in range(hours):
            vel = [1.0 + s_i + h + 0.25 * k for k in range(6)]
            kurt = [3.0 + (5.0 if k == 2 else 0.0) + h for k in range(6)]  # one impact
            days = [200.0 - 10 * h - k for k in range(6)]
            temp = [40.0 + h + k for k in range(6)]
            for k in range(6):
                t = hour0_ns + h * HOUR_NS + k * 10 * 60 * 10**9
                points.append(Point("vibration", tags, {
                    "seq": h * 6 + k, "velocity_rms_mm_s": vel[k], "kurtosis": kurt[k],
                    "rms_g": 0.1 * vel[k]}, t))
                points.append(Point("diagnosis", tags, {
                    "diagnosis": "normal", "confidence": 0.5, "state": "normal",
                    "days_to_zone_d": days[k], "days_to_zone_d_lo": days[k] - 50}, t))
                points.append(Point("temperature", tags, {"celsius": temp[k]}, t))
            expected[(sensor, h)] = {
                "velocity_rms_mm_s": statistics.fmean(vel), "velocity_rms_mm_s_max": max(vel),
                "kurtosis": statistics.fmean(kurt), "kurtosis_max": max(kurt), "windows": 6,
                "days_to_zone_d": statistics.fmean(days), "days_to_zone_d_min": min(days),
                "days_to_zone_d_lo_min": min(days) - 50, "celsius": statistics.fmean(temp),
                "celsius_max": max(temp), "celsius_min": min(temp)}
    return points, expected


def _check_hourly(url: str, db: str, hour0_ns: int, hours: int,
                  expected: dict[tuple[str, int], Any]) -> None:
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for m in ("vibration", "diagnosis", "temperature"):
        for r in query_v1(url, db, f'SELECT * FROM "{LONG_RP}"."{m}" GROUP BY *'):
            h = (r["time"] - hour0_ns) // HOUR_NS
            assert r["time"] == hour0_ns + h * HOUR_NS  # stamped at the hour's start
            # Every tag of the raw points is kept on the aggregate.
            assert (r["site"], r["gateway"], r["asset"]) == ("p", "gw1", "m1")
            rows.setdefault((r["sensor"], h), {}).update(
                {k: v for k, v in r.items() if v is not None})
    assert set(rows) == set(expected)
    for key, want in expected.items():
        for field, value in want.items():
            assert rows[key][field] == pytest.approx(value), (key, field)
        assert "diagnosis" not in rows[key]  # strings are not aggregated


def test_backfill_runs_the_cq_select_over_known_points(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    cfg = InfluxConfig(url=url, db=db)
    apply_retention(cfg)
    hour0 = (time.time_ns() // HOUR_NS - 30 * 24) * HOUR_NS  # 30 days ago, within raw
    points, expected = _fleet_points(hour0, 3)
    V1Writer(url, db).write(points)  # to the DEFAULT policy: raw
    assert len(query_v1(url, db, f'SELECT * FROM "{RAW_RP}"."vibration"')) == 36
    for m in DOWNSAMPLED:
        query_v1(url, db, backfill_statement(db, m, hour0, hour0 + 3 * HOUR_NS))
    _check_hourly(url, db, hour0, 3, expected)
    # Twice is harmless: each hour's row is rewritten, not duplicated.
    query_v1(url, db, backfill_statement(db, "vibration", hour0, hour0 + 3 * HOUR_NS))
    _check_hourly(url, db, hour0, 3, expected)


def test_influxd_runs_the_continuous_query_itself(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    apply_retention(InfluxConfig(url=url, db=db))
    # The hour before the current one, whole: the CQ below (the stream's text, run every
    # second instead of every hour) covers it.
    hour0 = (time.time_ns() // HOUR_NS - 1) * HOUR_NS
    points, expected = _fleet_points(hour0, 1)
    V1Writer(url, db).write(points)
    names = [f"test_every_1s_{m}" for m in ("vibration", "diagnosis", "temperature")]
    try:
        for name, m in zip(names, ("vibration", "diagnosis", "temperature"), strict=True):
            query_v1(url, db, cq_statement(db, m, 3, every="1s", name=name))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(query_v1(url, db, f'SELECT count(*) FROM "{LONG_RP}"."{m}"')
                   for m in ("vibration", "diagnosis", "temperature")):
                break
            time.sleep(0.3)
        _check_hourly(url, db, hour0, 1, expected)
    finally:
        for name in names:
            query_v1(url, db, f'DROP CONTINUOUS QUERY "{name}" ON "{db}"')


def test_writer_routes_records_to_the_long_policy(influx_db: tuple[str, str]) -> None:
    url, db = influx_db
    apply_retention(InfluxConfig(url=url, db=db))
    writer = V1Writer(url, db)
    writer.set_routes(routes())
    t = time.time_ns()
    writer.write([
        Point("vibration", {"sensor": "a"}, {"rms_g": 0.5}, t),
        Point("alerts", {"sensor": "a", "status": "firing"}, {"alert_id": "x1"}, t),
        Point("iso20816", {"asset": "m1"}, {"ab_mm_s": 2.3}, t),
    ])
    assert [r["rms_g"] for r in query_v1(url, db, 'SELECT * FROM "raw"."vibration"')] == [0.5]
    assert query_v1(url, db, 'SELECT * FROM "long"."vibration"') == []
    assert [r["alert_id"] for r in query_v1(url, db, 'SELECT * FROM "long"."alerts"')] == ["x1"]
    assert query_v1(url, db, 'SELECT * FROM "raw"."alerts"') == []
    assert [r["ab_mm_s"] for r in query_v1(url, db, 'SELECT * FROM "long"."iso20816"')] \
        == [2.3]


def _site(tmp_path: Path, url: str, db: str, api: str = "v1") -> Path:
    site = tmp_path / "site.toml"
    site.write_text(f"""
[site]
id = "p"
[influx]
api = "{api}"
url = "{url}"
db = "{db}"
raw_retention_d = 30
[[asset]]
id = "m1"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = 25.0
""", encoding="utf-8")
    return site


def test_cli_sets_policies_and_backfills_from_autogen(
        influx_db: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, db = influx_db
    site = _site(tmp_path, url, db)
    # Points written before the policies existed (an upgrade): in autogen, 2 days ago.
    hour0 = (time.time_ns() // HOUR_NS - 48) * HOUR_NS
    points, expected = _fleet_points(hour0, 2)
    V1Writer(url, db, retention_policy="autogen").write(points)

    assert cli.main(["influx-retention", "-c", str(site), "--print"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f'CREATE RETENTION POLICY "raw" ON "{db}" DURATION 30d '
                          'REPLICATION 1 DEFAULT;')
    assert len(printed) == 2 + len(DOWNSAMPLED)
    assert _policies(url, db).keys() == {"autogen"}  # --print changes nothing

    assert cli.main(["influx-retention", "-c", str(site), "--backfill-days", "3",
                     "--source-rp", "autogen"]) == 0
    out = capsys.readouterr().out
    assert "action=created policy=raw days=30 default=True" in out
    assert "vibration=4" in out  # 2 sensors x 2 hours
    _check_hourly(url, db, hour0, 2, expected)
    assert cli.main(["influx-retention", "-c", str(site)]) == 0
    assert "up to date" in capsys.readouterr().out

    assert cli.main(["influx-retention", "-c", str(_site(tmp_path, url, db, api="v2"))]) == 2
    assert "bucket" in capsys.readouterr().err


def test_the_schema_doc_lists_every_aggregate() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "influxdb-schema.md").read_text()
    section = doc.split("## Retention and downsampling", 1)[1].split("\n## ", 1)[0]
    for m, fields in DOWNSAMPLED.items():
        row = section.split(f"| `{m}` |", 1)[1].split("\n", 1)[0]
        for f in fields:
            assert f in row, (m, f)
    for name in (RAW_RP, LONG_RP, "bp_hourly_", "--backfill-days", "--source-rp autogen"):
        assert name in section


def _service(url: str, db: str, tmp_path: Path, **influx: Any) -> StreamService:
    config = parse({"site": {"id": "p"}, "stream": {"state_dir": str(tmp_path)},
                    "influx": {"url": url, "db": db, **influx},
                    "asset": [{"id": "m1", "bearing": "SKF 6205", "shaft_hz": 25.0}],
                    "gateway": [{"id": "g", "sensor": [
                        {"id": "a", "driver": "simulated", "asset": "m1", "fs_hz": 25600,
                         "window_samples": 4096, "interval_s": 1}]}]})
    return StreamService(config, V1Writer(url, db))


def test_the_stream_logs_a_refused_policy_and_runs_on(
        influx_db: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, db = influx_db
    # A DBA made `raw` with week-long shards: a 1-day duration is refused by influxd.
    query_v1(url, db, f'CREATE RETENTION POLICY "raw" ON "{db}" DURATION 30d REPLICATION 1 '
                      'SHARD DURATION 7d')
    service = _service(url, db, tmp_path / "a", raw_retention_d=1, long_retention_d=0)
    with caplog.at_level(logging.INFO):
        asyncio.run(service._ensure_retention())
    failed = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("event=influx_retention_failed")]
    assert len(failed) == 1 and "shard" in failed[0] and "manage_retention" in failed[0]
    # Not routed: the alert goes to the database's default policy, not to a missing one.
    t = time.time_ns()
    service.writer.writer.write([Point("alerts", {"sensor": "a"}, {"alert_id": "x"}, t)])
    assert [r["alert_id"] for r in query_v1(url, db, 'SELECT * FROM "alerts"')] == ["x"]

    # With a duration influxd accepts, the same start sets everything up and routes.
    ok = _service(url, db, tmp_path / "b", raw_retention_d=30)
    asyncio.run(ok._ensure_retention())
    assert _policies(url, db)[RAW_RP] == ("720h0m0s", True)
    ok.writer.writer.write([Point("alerts", {"sensor": "a"}, {"alert_id": "y"}, t)])
    assert [r["alert_id"] for r in query_v1(url, db, 'SELECT * FROM "long"."alerts"')] == ["y"]

    # manage_retention = false: the stream leaves the database alone.
    query_v1(url, db, f'ALTER RETENTION POLICY "raw" ON "{db}" DURATION 60d')
    off = _service(url, db, tmp_path / "c", raw_retention_d=30, manage_retention=False)
    asyncio.run(off._ensure_retention())
    assert _policies(url, db)[RAW_RP] == ("1440h0m0s", True)
    # ... and still writes alerts where the dashboards read them: the DBA's `long`.
    off.writer.writer.write([Point("alerts", {"sensor": "a"}, {"alert_id": "z"}, t + 1)])
    assert [r["alert_id"] for r in query_v1(url, db, 'SELECT * FROM "long"."alerts"')] == [
        "y", "z"]


def test_without_a_long_policy_made_by_the_dba_the_stream_says_so(
        influx_db: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: with manage_retention = false alerts went to the default policy silently,
    and the dashboards (reading "long") showed none."""
    url, db = influx_db
    service = _service(url, db, tmp_path, manage_retention=False)
    with caplog.at_level(logging.WARNING):
        asyncio.run(service._ensure_retention())
    assert "event=influx_long_policy_missing" in caplog.text
