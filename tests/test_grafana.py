"""Grafana provisioning: the dashboards' JSON is consistent, and every panel's query (and
every template variable and annotation query) returns rows from a real influxd filled by
the stream on a simulated fleet. Grafana itself is not needed (nor downloaded)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fleet_run import SITE, FleetRun, shared_fleet  # tests/ is on sys.path

from ballpass.stream.sinks.retention import (
    DOWNSAMPLED,
    LONG_RP,
    RAW_RP,
    backfill_statement,
    cq_name,
)

__all__ = ["shared_fleet"]  # the fixture, imported so pytest finds it here

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
BUILTINS = {"timeFilter", "__timeFilter", "__interval", "__interval_ms", "__from", "__to"}
VALUES = {"site": SITE, "asset": "reactor1", "sensor": "faulty"}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(
        (GRAFANA / "dashboards").glob("*.json"))}


def _queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, InfluxQL) of every panel target and annotation of a dashboard."""
    out = [(f"{d['title']} / {p['title']} / {t['refId']}", t["query"])
           for p in d["panels"] for t in p["targets"]]
    out += [(f"{d['title']} / annotation {a['name']}", a["query"])
            for a in d["annotations"]["list"] if "query" in a]
    return out


def _used_vars(query: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", query))


def test_dashboards_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rendered = generate.render()
    assert set(rendered) == {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, \
            f"{name}: run python deploy/grafana/generate.py"


def test_dashboard_json_is_consistent() -> None:
    ds_text = (GRAFANA / "provisioning" / "datasources" / "ballpass.yaml").read_text()
    datasource_uids = set(re.findall(r"^\s+uid:\s*(\S+)", ds_text, re.M))
    assert datasource_uids == {"ballpass-influxdb"}
    assert "version: InfluxQL" in ds_text and "type: influxdb" in ds_text
    provider = (GRAFANA / "provisioning" / "dashboards" / "ballpass.yaml").read_text()
    assert "type: file" in provider and "path:" in provider
    dashboards = _dashboards()
    assert set(dashboards) == {"site-overview.json", "sensor-detail.json", "alerts.json",
                               "history.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, d in dashboards.items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        defined = {v["name"] for v in d["templating"]["list"]}
        for p in d["panels"]:
            assert p["datasource"]["uid"] in datasource_uids, (name, p["title"])
            assert p["targets"], (name, p["title"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] in datasource_uids
                missing = _used_vars(t["query"]) - defined - BUILTINS
                assert not missing, f"{name} / {p['title']}: undefined {missing}"
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] in datasource_uids
            assert not _used_vars(v["query"]) - defined - BUILTINS
        for a in d["annotations"]["list"]:
            if "query" in a:
                assert a["datasource"]["uid"] in datasource_uids
                assert not _used_vars(a["query"]) - defined - BUILTINS
    detail = dashboards["sensor-detail.json"]
    assert [v["name"] for v in detail["templating"]["list"]][:3] == ["site", "asset", "sensor"]
    titles = " ".join(p["title"] for p in detail["panels"])
    for what in ("ISO 20816", "SNR", "Kurtosis", "crest", "Temperature"):
        assert what in titles
    # Short ranges read the windows' points (the DEFAULT policy, raw); the history
    # dashboard reads only the hourly aggregates, never below an hour per point.
    history = dashboards["history.json"]
    assert history["time"]["from"] == "now-90d"
    for where, q in _queries(history):
        assert f'FROM "{LONG_RP}".' in q, where
    for p in history["panels"]:
        assert p["interval"] == "1h", p["title"]
    for name in ("site-overview.json", "sensor-detail.json"):
        for where, q in _queries(dashboards[name]):
            if "annotation" not in where:
                assert f'"{LONG_RP}".' not in q, where


def _substitute(query: str, values: dict[str, str]) -> str:
    # Hourly rows are stamped at the start of their hour: up to 2 h back for the fleet's.
    since = "2h" if f'"{LONG_RP}".' in query else "1h"
    q = query.replace("$timeFilter", f"time > now() - {since}").replace("$__interval", "2s")
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        q = q.replace("${" + name + "}", value).replace("$" + name, value)
    return q


def _rows(run: FleetRun, query: str) -> list[list[Any]]:
    result = run.influxd.query(query, db=run.db)["results"][0]
    assert "error" not in result, (query, result)
    return [v for s in result.get("series", []) for v in s["values"]]


@pytest.mark.slow
@pytest.mark.xdist_group("shared_fleet")  # the fleet is started once per worker
def test_every_panel_query_returns_rows_from_the_stream(shared_fleet: FleetRun) -> None:
    run = shared_fleet
    # The stream set the retention policies and the hourly CQs up at start.
    policies = {r[0]: r for r in _rows(run, f'SHOW RETENTION POLICIES ON "{run.db}"')}
    assert policies[RAW_RP][1] == "2160h0m0s" and policies[RAW_RP][4] is True  # DEFAULT
    assert policies[LONG_RP][1] == "87600h0m0s"
    cqs = {r["name"] for r in run.rows("SHOW CONTINUOUS QUERIES")
           if r.get("name", "").startswith("bp_hourly_")}
    assert {cq_name(run.db, m, 2) for m in DOWNSAMPLED} <= cqs
    # The fleet ran for a minute: its hour's aggregates are made now, as a backfill
    # (the CQ's own SELECT) would after an outage, rather than waiting for the hour.
    now = time.time_ns()
    for m in DOWNSAMPLED:
        _rows(run, backfill_statement(run.db, m, now - 3 * 3600 * 10**9, now + 3600 * 10**9))
    checked = 0
    for d in _dashboards().values():
        values = dict(VALUES)
        # Template variables first, in order (later ones may use earlier ones).
        for v in d["templating"]["list"]:
            rows = _rows(shared_fleet, _substitute(v["query"], values))
            assert rows, f"{d['title']}: variable {v['name']} has no values"
            found = [r[-1] for r in rows]
            if v["name"] in values:
                assert values[v["name"]] in found, (v["name"], found)
            else:
                values[v["name"]] = str(found[0])
        for where, query in _queries(d):
            # A bearing faulty from the start learns no baseline (the online model learns
            # only windows physics finds no fault in): the anomaly score panels are checked
            # on the healthy sensor of the same machine.
            vals = {**values, "sensor": "healthy"} if "anomaly_score" in query else values
            rows = _rows(shared_fleet, _substitute(query, vals))
            assert rows, f"{where}: no rows for {_substitute(query, vals)}"
            checked += 1
    assert checked >= 12
    # The ISO boundaries are the asset's own (group 2, flexible foundation).
    detail = _dashboards()["sensor-detail.json"]
    values = dict(VALUES)
    for v in detail["templating"]["list"][3:]:
        values[v["name"]] = str(_rows(shared_fleet, _substitute(v["query"], values))[0][-1])
    assert (values["iso_ab"], values["iso_bc"], values["iso_cd"]) == ("2.3", "4.5", "7.1")
