"""One place where a window's result becomes what the stream writes and says: its InfluxDB
points and its diagnosis JSON, and each alert transition's JSON and `alerts` point
(ARCHITECTURE.md sections 5 and 6; docs/topics.md, docs/influxdb-schema.md). Pure."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ballpass.stream.alerts import INSTRUMENT_FAULT, Transition, severity
from ballpass.stream.sinks.lineprotocol import Point

if TYPE_CHECKING:
    from ballpass.stream.pipeline import Incoming, Result


def _tags(item: Incoming, asset: str) -> dict[str, str]:
    return {"site": item.site, "gateway": item.gateway, "sensor": item.sensor, "asset": asset}


def alert_point(alert: dict[str, Any], t_ns: int) -> Point:
    """The `alerts` row of one alert message (`alert_message`); a field the alert does not
    know (null `confidence`: no window diagnosed yet) is left out, as InfluxDB has no null."""
    return Point("alerts", {k: alert[k] for k in ("site", "sensor", "asset", "status", "kind")},
                 {k: alert[k] for k in ("alert_id", "diagnosis", "confidence", "summary")
                  if alert[k] is not None}, t_ns)


def temperature_point(item: Incoming, asset: str, celsius: float) -> Point:
    """The `temperature` point of a temperature window (its mean, °C)."""
    return Point("temperature", _tags(item, asset), {"celsius": celsius}, item.window.t0_ns)


def vibration_points(result: Result) -> list[Point]:
    """The `vibration` point of one result with features (none without)."""
    if not result.features:
        return []
    item = result.incoming
    return [Point("vibration", _tags(item, result.asset),
                  {"seq": item.window.seq, **result.features}, item.window.t0_ns)]


def window_points(result: Result) -> list[Point]:
    """The `vibration` (acceleration windows) and `diagnosis` points of one result."""
    assert result.diagnosis is not None
    item, diag = result.incoming, result.diagnosis
    points = vibration_points(result)
    points.append(Point("diagnosis", _tags(item, result.asset), {
        "diagnosis": diag.diagnosis, "confidence": float(diag.confidence),
        "state": result.state, "iso_zone": diag.iso_zone or "",
        **_online_fields(result.online),
    }, item.window.t0_ns))
    return points


def diagnosis_message(result: Result) -> dict[str, Any]:
    """The diagnosis JSON of ARCHITECTURE.md section 5 for one window."""
    item, diag = result.incoming, result.diagnosis
    assert diag is not None
    return {
        "sensor": item.sensor, "gateway": item.gateway, "site": item.site,
        "asset": result.asset, "t": item.window.t0_ns / 1e9, "seq": item.window.seq,
        "diagnosis": diag.diagnosis, "confidence": round(float(diag.confidence), 4),
        "state": result.state, "iso_zone": diag.iso_zone or None,
        "velocity_rms_mm_s": finite_or_none(result.features.get("velocity_rms_mm_s")),
        "evidence": [
            {"line": e.line, "harmonic": e.harmonic, "freq_hz": round(e.freq_hz, 3),
             "snr_db": round(e.snr_db, 2)} for e in diag.evidence
        ],
        "reason": diag.reason,
        "severity": severity(diag.diagnosis, diag.iso_zone,
                             (result.online.get("days_to_zone_d") or {}).get("days"))
        if diag.diagnosis not in ("normal", "insufficient_data") else None,
        "anomaly_score": result.online.get("anomaly_score"),
        "days_to_zone_c": result.online.get("days_to_zone_c"),
        "days_to_zone_d": result.online.get("days_to_zone_d"),
        "online": {k: v for k, v in result.online.items()
                   if k not in ("anomaly_score", "days_to_zone_c", "days_to_zone_d")} or None,
    }


def undiagnosed_message(site: str, gateway: str, sensor: str, asset: str, t_ns: int,
                        diagnosis: str, state: str, reason: str) -> dict[str, Any]:
    """The diagnosis JSON (keys of `diagnosis_message`) of a sensor that this process has
    diagnosed no window of yet, after a restart or a partition move: who it is and its
    alert state, no measurements (null)."""
    return {
        "sensor": sensor, "gateway": gateway, "site": site, "asset": asset,
        "t": t_ns / 1e9, "seq": None, "diagnosis": diagnosis, "confidence": None,
        "state": state, "iso_zone": None, "velocity_rms_mm_s": None, "evidence": [],
        "reason": reason, "severity": None, "anomaly_score": None,
        "days_to_zone_c": None, "days_to_zone_d": None, "online": None,
    }


def alert_message(transition: Transition, last: dict[str, Any]) -> dict[str, Any]:
    """The alert JSON (diagnosis fields plus alert_id, status, since, summary, kind, event).

    `kind` "machine" is a machine alarm, `event` its status; `kind` "instrument" is a sensor
    that needs maintenance (`event` "instrument_firing" / "instrument_resolved", severity
    "low"), never a machine alarm (docs/alerting.md).
    """
    firing = transition.status == "firing"
    if transition.kind == "instrument":
        summary = (f"{last['asset']} sensor {transition.sensor} "
                   + ("needs instrument maintenance (not a machine fault): "
                      f"{last.get('reason') or 'sensor fault'}" if firing
                      else "reads plausibly again") + ".")
        return {**last, "diagnosis": INSTRUMENT_FAULT, "kind": "instrument",
                "event": f"instrument_{transition.status}", "severity": "low",
                "alert_id": transition.alert_id, "status": transition.status,
                "since": transition.since_ns / 1e9, "summary": summary,
                "sent_at": time.time()}
    verb = "needs attention" if firing else "is back to normal"
    fault = transition.diagnosis.replace("_", " ")
    summary = (f"{last['asset']} sensor {transition.sensor} {verb}: {fault}"
               + (f", ISO zone {last['iso_zone']}" if last.get("iso_zone") else "")
               + (f", confidence {last['confidence']:.0%}" if firing else "") + ".")
    return {
        **last, "diagnosis": transition.diagnosis if firing else last["diagnosis"],
        "kind": "machine", "event": transition.status,
        "alert_id": transition.alert_id, "status": transition.status,
        "since": transition.since_ns / 1e9, "summary": summary,
        "sent_at": time.time(),
    }


def _online_fields(online: dict[str, Any]) -> dict[str, Any]:
    """InfluxDB `diagnosis` fields of the online layer (absent when unknown)."""
    out: dict[str, Any] = {}
    if online.get("state"):
        out["baseline"] = online["state"]
    for zone in ("c", "d"):
        p = online.get(f"days_to_zone_{zone}")
        if p:
            out[f"days_to_zone_{zone}"] = float(p["days"])
            out[f"days_to_zone_{zone}_lo"] = float(p["lo"])
            if p["hi"] is not None:
                out[f"days_to_zone_{zone}_hi"] = float(p["hi"])
    return out


def finite_or_none(x: float | None) -> float | None:
    return round(float(x), 4) if x is not None and math.isfinite(x) else None
