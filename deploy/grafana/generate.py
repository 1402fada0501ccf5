"""Write the Grafana dashboards of ballpass (dashboards/*.json) from one description.

Run `python deploy/grafana/generate.py` after changing a panel; tests/test_grafana.py
checks that the committed JSON is what this script writes, that every panel's query
returns rows from an InfluxDB filled by the stream, and that ids, datasources and
template variables are consistent. Queries are InfluxQL (InfluxDB 1.x, and the
1.x-compatible endpoint of 2.x and 3.x); the schema is docs/influxdb-schema.md.

Retention (docs/influxdb-schema.md, "Retention and downsampling"): the site overview and
sensor detail read the windows' points (the DEFAULT policy, `raw`, kept
`influx.raw_retention_d` days); the history dashboard reads the hourly aggregates in
`long` for ranges of months and years; alerts, actions and the ISO boundaries are in
`long` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "influxdb", "uid": "ballpass-influxdb"}
SITE = '"site" =~ /^$site$/'
ASSET = '"asset" =~ /^$asset$/'
SENSOR = '"sensor" =~ /^$sensor$/'


def _var(name: str, query: str, *, label: str = "", hide: int = 0, multi: bool = False
         ) -> dict[str, Any]:
    return {"name": name, "label": label or name, "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "refresh": 1, "hide": hide,
            "includeAll": multi, "multi": multi, "sort": 1, "current": {}, "options": []}


# The retention policy of the hourly aggregates and of the long-kept records
# (stream/sinks/retention.py LONG_RP).
LONG = '"long"'


def _scope_vars(source: str) -> list[dict[str, Any]]:
    """site, asset, sensor from the tags of `source` (a measurement, maybe RP-qualified)."""
    return [
        _var("site", f'SHOW TAG VALUES FROM {source} WITH KEY = "site"'),
        _var("asset", f'SHOW TAG VALUES FROM {source} WITH KEY = "asset" WHERE {SITE}'),
        _var("sensor", f'SHOW TAG VALUES FROM {source} WITH KEY = "sensor" '
             f'WHERE {SITE} AND {ASSET}'),
    ]


SITE_VAR, ASSET_VAR, SENSOR_VAR = _scope_vars('"vibration"')
# The asset's ISO 20816-3 zone boundaries, written by the stream at start (`iso20816`,
# kept in `long`: one point per start must outlive the raw policy).
ISO_VARS = [_var(f"iso_{b}", f'SELECT last("{b}_mm_s") FROM {LONG}."iso20816" WHERE {ASSET}',
                 label=f"ISO {b.upper()} boundary", hide=2) for b in ("ab", "bc", "cd")]
ALERTS_ANNOTATION = {
    "name": "Alerts", "enable": True, "iconColor": "red", "datasource": DATASOURCE,
    "query": f'SELECT "summary", "alert_id", "diagnosis" FROM {LONG}."alerts" WHERE '
             f'{SENSOR} AND $timeFilter',
    "textColumn": "summary", "tagsColumn": "diagnosis"}


class _Panels:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0

    def add(self, kind: str, title: str, queries: list[tuple[str, str]], *, w: int = 24,
            h: int = 8, x: int = 0, description: str = "", unit: str = "",
            overrides: list[dict[str, Any]] | None = None, table: bool = False,
            options: dict[str, Any] | None = None, interval: str = "") -> None:
        targets = [{"refId": ref, "datasource": DATASOURCE, "rawQuery": True, "query": q,
                    "resultFormat": "table" if table else "time_series"}
                   for ref, q in queries]
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1, "type": kind, "title": title,
            "description": description, "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": self.y, "w": w, "h": h}, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit} if unit else {},
                            "overrides": overrides or []},
            "options": options or {},
        }
        if interval:  # the panel's shortest $__interval (hourly rows: "1h")
            panel["interval"] = interval
        self.panels.append(panel)
        if x + w >= 24:
            self.y += h


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]],
               variables: list[dict[str, Any]], annotations: list[dict[str, Any]] = (),
               time_from: str = "now-6h") -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["ballpass"], "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "30s", "timezone": "",
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
             "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
             "name": "Annotations & Alerts", "type": "dashboard"}, *annotations]},
        "links": [{"type": "dashboards", "tags": ["ballpass"], "asDropdown": False,
                   "title": "ballpass", "includeVars": True, "keepTime": True}],
        "panels": panels,
    }


def site_overview() -> dict[str, Any]:
    p = _Panels()
    p.add("table", "Sensors: state, diagnosis, confidence, ISO zone, days to zone D", [
        ("A", 'SELECT last("state") AS "state", last("baseline") AS "baseline", '
              'last("diagnosis") AS "diagnosis", last("confidence") AS "confidence", '
              'last("iso_zone") AS "ISO zone", last("days_to_zone_d") AS "days to zone D" '
              f'FROM "diagnosis" WHERE {SITE} AND $timeFilter GROUP BY "asset", "sensor"'),
    ], h=9, table=True, description="State is normal, watch or alarm; baseline is "
          "learning until the online model knows the machine's normal. A sensor whose "
          "last window (next panel) is older than a few capture intervals is offline.",
          options={"showHeader": True})
    p.add("table", "Latest window per sensor (offline when old)", [
        ("A", 'SELECT last("velocity_rms_mm_s") AS "velocity RMS mm/s", '
              'last("anomaly_score") AS "anomaly score", last("seq") AS "seq" '
              f'FROM "vibration" WHERE {SITE} AND $timeFilter GROUP BY "asset", "sensor"'),
        ("B", 'SELECT last("celsius") AS "celsius" FROM "temperature" '
              f'WHERE {SITE} AND $timeFilter GROUP BY "asset", "sensor"'),
    ], w=12, h=8, table=True)
    p.add("table", "Gateways: outbox, dropped, replayed", [
        ("A", 'SELECT last("captured") AS "captured", last("queued") AS "outbox", '
              'last("published") AS "published", last("dropped") AS "dropped", '
              'last("replayed") AS "replayed" FROM "gateway" '
              f'WHERE {SITE} AND $timeFilter GROUP BY "gateway"'),
    ], w=12, x=12, h=8, table=True, description="The time column is the gateway's last "
          "status: a gateway silent for more than a minute is offline.")
    p.add("timeseries", "Velocity RMS (ISO 20816, 10-1000 Hz)", [
        ("A", 'SELECT mean("velocity_rms_mm_s") FROM "vibration" WHERE '
              f'{SITE} AND $timeFilter GROUP BY time($__interval), "sensor" fill(none)'),
    ], w=12, unit="velocitymms")
    p.add("timeseries", "Anomaly score", [
        ("A", 'SELECT max("anomaly_score") FROM "vibration" WHERE '
              f'{SITE} AND $timeFilter GROUP BY time($__interval), "sensor" fill(none)'),
    ], w=12, x=12, unit="percentunit")
    return _dashboard("ballpass-site", "ballpass · Site overview", p.panels, [SITE_VAR])


def sensor_detail() -> dict[str, Any]:
    p = _Panels()
    where = f"{SENSOR} AND $timeFilter"
    dashed = [{"matcher": {"id": "byName", "options": name},
               "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash",
                                                                  "dash": [10, 10]}},
                              {"id": "color", "value": {"mode": "fixed",
                                                        "fixedColor": colour}}]}
              for name, colour in (("A/B", "green"), ("B/C", "orange"), ("C/D", "red"))]
    p.add("table", "Diagnosis", [
        ("A", 'SELECT last("diagnosis") AS "diagnosis", last("state") AS "state", '
              'last("confidence") AS "confidence", last("iso_zone") AS "ISO zone", '
              'last("days_to_zone_c") AS "days to zone C", last("days_to_zone_d") AS '
              f'"days to zone D" FROM "diagnosis" WHERE {where}'),
    ], h=4, table=True)
    vel = 'mean("velocity_rms_mm_s")'
    p.add("timeseries", "Velocity RMS with the machine's ISO 20816-3 zones", [
        ("A", f'SELECT {vel} AS "velocity RMS" FROM "vibration" WHERE {where} '
              'GROUP BY time($__interval) fill(none)'),
        *((ref, f'SELECT {vel} * 0 + $iso_{b} AS "{name}" FROM "vibration" WHERE {where} '
                'GROUP BY time($__interval) fill(none)')
          for ref, b, name in (("B", "ab", "A/B"), ("C", "bc", "B/C"), ("D", "cd", "C/D"))),
    ], unit="velocitymms", overrides=dashed, h=9, description="Dashed lines: the zone "
          "boundaries of this machine's ISO 20816-3 group and foundation (A/B, B/C, C/D), "
          "as the stream wrote them for the asset.")
    p.add("timeseries", "Defect-line SNR in the envelope spectrum", [
        ("A", 'SELECT mean("bpfo_snr_db") AS "BPFO", mean("bpfi_snr_db") AS "BPFI", '
              'mean("bsf_snr_db") AS "2xBSF", mean("ftf_snr_db") AS "FTF" FROM "vibration" '
              f'WHERE {where} GROUP BY time($__interval) fill(none)'),
    ], w=12, unit="dB")
    p.add("timeseries", "Kurtosis and crest factor", [
        ("A", 'SELECT mean("kurtosis") AS "kurtosis", mean("crest") AS "crest" FROM '
              f'"vibration" WHERE {where} GROUP BY time($__interval) fill(none)'),
    ], w=12, x=12)
    p.add("timeseries", "Temperature (the asset's probes)", [
        ("A", 'SELECT mean("celsius") FROM "temperature" WHERE '
              f'{ASSET} AND $timeFilter GROUP BY time($__interval), "sensor" fill(none)'),
    ], w=12, unit="celsius")
    p.add("timeseries", "Anomaly score", [
        ("A", f'SELECT max("anomaly_score") AS "anomaly score" FROM "vibration" WHERE '
              f'{where} GROUP BY time($__interval) fill(none)'),
    ], w=12, x=12, unit="percentunit")
    return _dashboard("ballpass-sensor", "ballpass · Sensor detail", p.panels,
                      [SITE_VAR, ASSET_VAR, SENSOR_VAR, *ISO_VARS], [ALERTS_ANNOTATION],
                      time_from="now-24h")


def history_dashboard() -> dict[str, Any]:
    """Months to years of one sensor from the hourly aggregates (`long` policy): the
    hour's mean and its peak (`_max`), or its lowest (`_min`) where low is worse."""
    p = _Panels()
    where = f"{SENSOR} AND $timeFilter"
    by_time = "GROUP BY time($__interval) fill(none)"
    hourly = {"interval": "1h"}
    p.add("timeseries", "Velocity RMS, hourly mean and peak, with the ISO 20816-3 zones", [
        ("A", 'SELECT mean("velocity_rms_mm_s") AS "mean", max("velocity_rms_mm_s_max") AS '
              f'"peak" FROM {LONG}."vibration" WHERE {where} {by_time}'),
        *((ref, f'SELECT mean("velocity_rms_mm_s") * 0 + $iso_{b} AS "{name}" FROM '
                f'{LONG}."vibration" WHERE {where} {by_time}')
          for ref, b, name in (("B", "ab", "A/B"), ("C", "bc", "B/C"), ("D", "cd", "C/D"))),
    ], unit="velocitymms", h=9, **hourly, description="Hourly aggregates kept "
          "`influx.long_retention_d` days; the last hours appear once the hourly "
          "continuous query has run (docs/influxdb-schema.md).")
    p.add("timeseries", "Defect-line SNR, hourly peak", [
        ("A", 'SELECT max("bpfo_snr_db_max") AS "BPFO", max("bpfi_snr_db_max") AS "BPFI", '
              'max("bsf_snr_db_max") AS "2xBSF", max("ftf_snr_db_max") AS "FTF" FROM '
              f'{LONG}."vibration" WHERE {where} {by_time}'),
    ], w=12, unit="dB", **hourly)
    p.add("timeseries", "Kurtosis and crest factor, hourly peak", [
        ("A", 'SELECT max("kurtosis_max") AS "kurtosis", max("crest_max") AS "crest" FROM '
              f'{LONG}."vibration" WHERE {where} {by_time}'),
    ], w=12, x=12, **hourly)
    p.add("timeseries", "Anomaly score, hourly peak", [
        ("A", f'SELECT max("anomaly_score_max") AS "anomaly score" FROM {LONG}."vibration" '
              f'WHERE {where} {by_time}'),
    ], w=12, unit="percentunit", **hourly)
    p.add("timeseries", "Temperature (the asset's probes), hourly mean and max", [
        ("A", 'SELECT mean("celsius") AS "mean", max("celsius_max") AS "max" FROM '
              f'{LONG}."temperature" WHERE {ASSET} AND $timeFilter '
              'GROUP BY time($__interval), "sensor" fill(none)'),
    ], w=12, x=12, unit="celsius", **hourly)
    p.add("timeseries", "Windows analysed (coverage) and diagnosis confidence", [
        ("A", f'SELECT sum("windows") AS "windows per interval" FROM {LONG}."vibration" '
              f'WHERE {where} {by_time}'),
        ("B", f'SELECT max("confidence_max") AS "confidence (peak)" FROM {LONG}."diagnosis" '
              f'WHERE {where} {by_time}'),
    ], w=12, **hourly, description="Fewer windows than the capture interval allows: the "
          "sensor or its gateway was offline, or windows were refused.")
    p.add("timeseries", "Gateway outbox, hourly peak", [
        ("A", 'SELECT max("queued_max") AS "outbox", max("dropped_max") AS "dropped" FROM '
              f'{LONG}."gateway" WHERE {SITE} AND $timeFilter '
              'GROUP BY time($__interval), "gateway" fill(none)'),
    ], w=12, x=12, **hourly)
    return _dashboard("ballpass-history", "ballpass · History (hourly)", p.panels,
                      [*_scope_vars(f'{LONG}."vibration"'), *ISO_VARS],
                      [ALERTS_ANNOTATION], time_from="now-90d")


def alerts_dashboard() -> dict[str, Any]:
    p = _Panels()
    p.add("table", "Alerts", [
        ("A", 'SELECT "asset", "sensor", "status", "diagnosis", "confidence", "summary", '
              f'"alert_id" FROM {LONG}."alerts" WHERE {SITE} AND $timeFilter '
              'ORDER BY time DESC LIMIT 500'),
    ], h=12, table=True)
    p.add("table", "Operator actions", [
        ("A", 'SELECT "asset", "sensor", "action", "by", "result", "note" '
              f'FROM {LONG}."actions" WHERE {SITE} AND $timeFilter ORDER BY time DESC '
              'LIMIT 500'),
    ], h=10, table=True, description="Acknowledge, rebaseline and false alarm, from the "
          "evidence page, `ballpass sensor …` or the command topic: who and when.")
    return _dashboard("ballpass-alerts", "ballpass · Alerts", p.panels, [SITE_VAR],
                      time_from="now-7d")


DASHBOARDS = {"site-overview.json": site_overview, "sensor-detail.json": sensor_detail,
              "alerts.json": alerts_dashboard, "history.json": history_dashboard}


def render() -> dict[str, str]:
    """Every dashboard file's text, by file name."""
    return {name: json.dumps(make(), indent=2) + "\n" for name, make in DASHBOARDS.items()}


if __name__ == "__main__":
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
