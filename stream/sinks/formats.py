"""Alert messages in each route format: json (signed), slack, teams, pagerduty, alertmanager.

Pure functions from alert JSON (docs/topics.md) to an HTTP request; no I/O. Every human
message says what (fault class), where (site, asset, sensor), how bad (ISO zone, velocity,
severity), how sure (confidence), since when, the recommended action for the fault class,
and links to the sensor's evidence page when the stream knows its public URL.
See docs/alerting.md for each format and the documentation it follows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ballpass import __version__

ACTIONS: dict[str, str] = {
    "outer_race": "Plan a bearing replacement at the next planned stop; check lubrication and "
                  "the housing fit; shorten the inspection interval until then.",
    "inner_race": "Plan a bearing replacement soon (inner-race damage grows faster than "
                  "outer-race); check the shaft fit and the load.",
    "ball": "Plan a bearing replacement; check the lubricant for contamination.",
    "cage": "Replace the bearing soon: a cage can break without much warning; check "
            "lubrication.",
    "lubrication": "Re-grease or check oil level and quality now; re-check within a day.",
    "imbalance": "Inspect the rotor for deposits or loose or missing parts, then balance it.",
    "misalignment": "Check shaft alignment and the coupling; realign to tolerance.",
    "unknown_anomaly": "Inspect the machine: its vibration departs from its own normal "
                       "without a known fault pattern.",
    "sensor_fault": "Check the sensor's mounting, cable and gateway.",
    "insufficient_data": "Check the sensor's configuration (sample rate, window, speed).",
    "normal": "No action needed.",
}
"""Recommended action per fault class (ARCHITECTURE.md section 5 diagnoses)."""

SEVERITIES = ("critical", "error", "warning", "info")
MAX_ALERTS_PER_MESSAGE = 20  # Slack allows 50 blocks; keeps a grouped message readable


@dataclass(frozen=True)
class Request:
    """One HTTP POST: where, what and how (headers without the transport's own)."""

    url: str
    body: bytes
    headers: dict[str, str]


def severity(alert: dict[str, Any]) -> str:
    """PagerDuty-style severity of an alert: critical in ISO zone D or when the alert state
    machine rated it "high" (`alerts.severity`: a bearing defect or misalignment in zone C,
    zone D projected within 7 days), error in zone C, else warning; info for a resolve or
    an instrument alert."""
    if alert.get("kind") == "instrument":
        return "info"  # the sensor needs maintenance; the machine is not known to be at fault
    if alert.get("status") == "resolved":
        return "info"
    if alert.get("severity") == "high":
        return "critical"
    zone = alert.get("iso_zone")
    return {"D": "critical", "C": "error"}.get(zone or "", "warning")


def evidence_url(alert: dict[str, Any], public_url: str | None) -> str | None:
    """The sensor's evidence page, or None when the stream serves none."""
    return f"{public_url.rstrip('/')}/sensor/{alert['sensor']}" if public_url else None


def _when(t: float | None) -> str:
    if t is None:
        return "unknown"
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _what(alert: dict[str, Any]) -> str:
    return str(alert.get("diagnosis", "unknown")).replace("_", " ")


def facts(alert: dict[str, Any], public_url: str | None) -> dict[str, str]:
    """What, where, how bad, how sure, since when, action, evidence: one alert, as text."""
    v, c = alert.get("velocity_rms_mm_s"), alert.get("confidence")
    zone = alert.get("iso_zone") or "?"
    out = {
        "What": _what(alert) + (" (resolved)" if alert.get("status") == "resolved" else ""),
        "Where": f"site {alert.get('site')}, asset {alert.get('asset')}, "
                 f"sensor {alert.get('sensor')}",
        "How bad": f"{severity(alert)}; ISO 20816 zone {zone}"
                   + (f", velocity {v:.2f} mm/s RMS" if isinstance(v, int | float) else ""),
        "How sure": f"confidence {c:.0%}" if isinstance(c, int | float)
                    else "not measured (no window of this sensor diagnosed here yet)",
        "Since": _when(alert.get("since")),
        "Action": ACTIONS.get(str(alert.get("diagnosis")), ACTIONS["unknown_anomaly"])
        if alert.get("status") == "firing" else ACTIONS["normal"],
    }
    link = evidence_url(alert, public_url)
    if link:
        out["Evidence"] = link
    return out


def title(alerts: list[dict[str, Any]]) -> str:
    """One line for a message of one or more alerts of one asset and status."""
    a = alerts[0]
    verb = "back to normal" if a.get("status") == "resolved" else "needs attention"
    if len(alerts) == 1:
        return (f"[{severity(a).upper()}] {a.get('asset')} {a.get('sensor')} {verb}: "
                f"{_what(a)}")
    worst = min((severity(x) for x in alerts), key=SEVERITIES.index)
    verb = "back to normal" if a.get("status") == "resolved" else "need attention"
    return f"[{worst.upper()}] {len(alerts)} sensors on {a.get('asset')} {verb}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """X-Ballpass-Signature: "sha256=" + hex HMAC-SHA256 over b"{timestamp}." + body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def render_json(alert: dict[str, Any], url: str, secret: str | None,
                now: float | None = None) -> Request:
    """The alert JSON itself; signed when the route has a secret."""
    body = _dumps(alert)
    headers = {"Content-Type": "application/json"}
    if secret:
        ts = str(int(time.time() if now is None else now))
        headers["X-Ballpass-Timestamp"] = ts
        headers["X-Ballpass-Signature"] = sign(secret, ts, body)
    return Request(url, body, headers)


def render_slack(alerts: list[dict[str, Any]], url: str, public_url: str | None) -> Request:
    """Slack incoming webhook: `text` (notification fallback) plus Block Kit `blocks`."""
    shown = alerts[:MAX_ALERTS_PER_MESSAGE]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title(alerts)[:150]}}]
    for a in shown:
        f = facts(a, public_url)
        lines = "\n".join(f"*{k}:* {v}" for k, v in f.items() if k != "Evidence")
        section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn",
                                                               "text": lines[:3000]}}
        if "Evidence" in f:
            section["accessory"] = {"type": "button", "url": f["Evidence"], "text": {
                "type": "plain_text", "text": f"Evidence {a.get('sensor')}"[:75]}}
        blocks.append(section)
    if len(alerts) > len(shown):
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"and {len(alerts) - len(shown)} more"}]})
    text = title(alerts) + " — " + "; ".join(a.get("summary", "") for a in shown)
    return Request(url, _dumps({"text": text, "blocks": blocks}),
                   {"Content-Type": "application/json"})


def render_teams(alerts: list[dict[str, Any]], url: str, public_url: str | None) -> Request:
    """Microsoft Teams (Workflows webhook): a message with one Adaptive Card 1.4."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title(alerts), "weight": "Bolder", "size": "Medium",
         "wrap": True}]
    actions = []
    for a in alerts[:MAX_ALERTS_PER_MESSAGE]:
        f = facts(a, public_url)
        body.append({"type": "FactSet", "separator": True, "facts": [
            {"title": k, "value": v} for k, v in f.items() if k != "Evidence"]})
        if "Evidence" in f:
            actions.append({"type": "Action.OpenUrl", "title": f"Evidence {a.get('sensor')}",
                            "url": f["Evidence"]})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": "1.4", "body": body, "actions": actions[:5]}
    message = {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
        "content": card}]}
    return Request(url, _dumps(message), {"Content-Type": "application/json"})


def render_pagerduty(alert: dict[str, Any], url: str, routing_key: str,
                     public_url: str | None) -> Request:
    """PagerDuty Events API v2: trigger or resolve, `dedup_key` = the alert id."""
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if alert.get("status") == "resolved" else "trigger",
        "dedup_key": alert["alert_id"],
    }
    if event["event_action"] == "trigger":
        f = facts(alert, public_url)
        event["payload"] = {
            "summary": (alert.get("summary") or title([alert]))[:1024],
            "source": f"{alert.get('site')}/{alert.get('asset')}/{alert.get('sensor')}",
            "severity": severity(alert),
            "timestamp": _when(alert.get("since")),
            "component": str(alert.get("asset")),
            "group": str(alert.get("site")),
            "class": str(alert.get("diagnosis")),
            "custom_details": {**f, "evidence_lines": alert.get("evidence", []),
                               "alert_id": alert["alert_id"]},
        }
        link = evidence_url(alert, public_url)
        if link:
            event["links"] = [{"href": link, "text": f"Evidence page {alert.get('sensor')}"}]
        event["client"] = "ballpass"
        if public_url:
            event["client_url"] = public_url
    return Request(url, _dumps(event), {"Content-Type": "application/json"})


def alertmanager_url(url: str) -> str:
    """The route URL may be the Alertmanager base URL or its /api/v2/alerts endpoint."""
    return url if url.rstrip("/").endswith("/api/v2/alerts") else url.rstrip("/") + "/api/v2/alerts"


def alertmanager_alert(alert: dict[str, Any], public_url: str | None, now: float,
                       hold_s: float, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """One postableAlert. Firing: endsAt = now + hold_s (re-sent before that); resolved:
    endsAt = now. `labels` of the firing alert are reused on resolve, so Alertmanager
    matches the same alert (labels are its identity)."""
    f = facts(alert, public_url)
    labels = labels or {
        "alertname": "BallpassInstrumentFault" if alert.get("kind") == "instrument"
        else "BallpassMachineAlarm", "site": str(alert.get("site")),
        "asset": str(alert.get("asset")), "sensor": str(alert.get("sensor")),
        "fault": str(alert.get("diagnosis")), "severity": severity(alert),
        "alert_id": str(alert["alert_id"]),
    }
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": str(alert.get("summary", "")), "description": "; ".join(
            f"{k}: {v}" for k, v in f.items()), "action": f["Action"],
            "confidence": f"{c:.2f}" if isinstance(c := alert.get("confidence"), int | float)
            else "",
            "iso_zone": str(alert.get("iso_zone") or "")},
        "startsAt": datetime.fromtimestamp(float(alert.get("since") or now), UTC).isoformat(),
        "endsAt": datetime.fromtimestamp(now if alert.get("status") == "resolved"
                                         else now + hold_s, UTC).isoformat(),
    }
    if "Evidence" in f:
        out["generatorURL"] = f["Evidence"]
        out["annotations"]["evidence"] = f["Evidence"]
    return out


USER_AGENT = f"ballpass/{__version__}"
