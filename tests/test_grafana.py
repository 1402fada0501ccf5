"""Grafana provisioning: the dashboards' JSON is consistent, and every panel's query (and
every template variable and annotation query) returns rows from a real influxd filled by
the stream on a simulated fleet. Grafana itself is not needed (nor downloaded)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fleet_run import SITE, FleetRun, shared_fleet  # tests/ is on sys.path

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
    assert set(dashboards) == {"site-overview.json", "sensor-detail.json", "alerts.json"}
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


def _substitute(query: str, values: dict[str, str]) -> str:
    q = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "2s")
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        q = q.replace("${" + name + "}", value).replace("$" + name, value)
    return q


def _rows(run: FleetRun, query: str) -> list[list[Any]]:
    result = run.influxd.query(query, db=run.db)["results"][0]
    assert "error" not in result, (query, result)
    return [v for s in result.get("series", []) for v in s["values"]]


@pytest.mark.slow
def test_every_panel_query_returns_rows_from_the_stream(shared_fleet: FleetRun) -> None:
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
            rows = _rows(shared_fleet, _substitute(query, values))
            assert rows, f"{where}: no rows for {_substitute(query, values)}"
            checked += 1
    assert checked >= 12
    # The ISO boundaries are the asset's own (group 2, flexible foundation).
    detail = _dashboards()["sensor-detail.json"]
    values = dict(VALUES)
    for v in detail["templating"]["list"][3:]:
        values[v["name"]] = str(_rows(shared_fleet, _substitute(v["query"], values))[0][-1])
    assert (values["iso_ab"], values["iso_bc"], values["iso_cd"]) == ("2.3", "4.5", "7.1")
