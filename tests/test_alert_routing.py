"""Alert routing: every format's fields, the json signature, grouping, at-least-once delivery
across a receiver outage and a stream restart, bad receivers and bad config entries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ballpass.config import WebhookConfig, parse
from ballpass.services import free_port
from ballpass.stream.sinks.formats import ACTIONS, severity
from ballpass.stream.sinks.webhook import WebhookSender

PUBLIC = "http://evidence.example:8787"


class Receiver:
    """A local HTTP receiver: records (path, headers, body) and answers `status`
    (or hangs when `hang` is set)."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.status = status
        self.hang = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.hang.is_set():
                    time.sleep(5)
                    return
                receiver.got.append((self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[Any]:
        return [json.loads(b) for _, _, b in self.got]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert(sensor: str, status: str = "firing", asset: str = "reactor7", **kw: Any
          ) -> dict[str, Any]:
    return {"sensor": sensor, "gateway": "gw1", "site": "plant", "asset": asset,
            "t": time.time(), "seq": 5, "diagnosis": "outer_race", "confidence": 0.93,
            "state": "alarm" if status == "firing" else "normal", "iso_zone": "C",
            "velocity_rms_mm_s": 5.2, "evidence": [{"line": "BPFO", "harmonic": 1,
                                                    "freq_hz": 88.7, "snr_db": 19.4}],
            "reason": "BPFO and harmonics", "alert_id": f"id-{sensor}", "status": status,
            "since": time.time() - 60, "summary": f"reactor7 sensor {sensor} needs attention.",
            "sent_at": time.time(), **kw}


def hook(url: str, fmt: str = "json", **kw: Any) -> WebhookConfig:
    return WebhookConfig(url=url, format=fmt, **{"group_wait_s": 0.0, "timeout_s": 2.0,
                                                  "rate_limit_per_min": 600.0,
                                                  "backoff_max_s": 1.0, **kw})


async def run_sender(sender: WebhookSender, alerts: list[dict[str, Any]],
                     until: Any, timeout_s: float = 20.0, gap_s: float = 0.0) -> None:
    """Run `sender`, submit `alerts`, wait for `until()`, close it."""
    task = asyncio.create_task(sender.run())
    for a in alerts:
        sender.submit(a)
        if gap_s:
            await asyncio.sleep(gap_s)
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sender.close()
    await asyncio.wait_for(task, 15)
    assert until(), "timed out"


def verify(secret: str, headers: dict[str, str], body: bytes, max_age_s: float = 300) -> bool:
    """What a receiver does: recompute the HMAC and reject old timestamps (replays)."""
    ts = headers["X-Ballpass-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Ballpass-Signature"]) and \
        abs(time.time() - int(ts)) <= max_age_s


def test_every_format_carries_what_where_how_bad_how_sure_since_action_and_link(
        tmp_path: Path) -> None:
    receivers = {f: Receiver() for f in ("json", "slack", "teams", "pagerduty")}
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    key_file = tmp_path / "pd.key"
    key_file.write_text("R0UTINGKEY\n")
    hooks = (hook(receivers["json"].url, "json", secret_file=secret_file),
             hook(receivers["slack"].url, "slack", group_wait_s=1.0),
             hook(receivers["teams"].url, "teams", group_wait_s=1.0),
             hook(receivers["pagerduty"].url, "pagerduty", routing_key_file=key_file))
    sender = WebhookSender(hooks, 0.05, state_dir=tmp_path / "state", public_url=PUBLIC)
    # Ten sensors of one reactor go into alarm within a second, one of them resolves later.
    firing = [alert(f"s{i}") for i in range(10)]
    resolved = alert("s3", "resolved")
    try:
        asyncio.run(run_sender(sender, [*firing, resolved], lambda: len(
            receivers["json"].got) == 11 and len(receivers["pagerduty"].got) == 11
            and len(receivers["slack"].got) == 2 and len(receivers["teams"].got) == 2,
            gap_s=0.02))
    finally:
        for r in receivers.values():
            r.stop()

    # json: the alert JSON itself, signed; a tampered body or old timestamp fails.
    for _, headers, body in receivers["json"].got:
        assert verify("s3cret", headers, body)
        assert not verify("s3cret", headers, body.replace(b"reactor7", b"reactor8"))
        assert not verify("wrong", headers, body)
    assert {(b["alert_id"], b["status"]) for b in receivers["json"].bodies()} == \
        {(a["alert_id"], a["status"]) for a in [*firing, resolved]}

    # slack: ten alarms of one reactor make one message (plus one for the resolve).
    first, second = receivers["slack"].bodies()
    assert "10 sensors on reactor7" in first["text"]
    sections = [b for b in first["blocks"] if b["type"] == "section"]
    assert len(sections) == 10
    text = sections[0]["text"]["text"]
    for what in ("outer race", "reactor7", "s0", "ISO 20816 zone C", "5.20 mm/s",
                 "confidence 93%", "Since:", ACTIONS["outer_race"][:30]):
        assert what in text, what
    assert sections[0]["accessory"]["url"] == f"{PUBLIC}/sensor/s0"
    assert first["blocks"][0]["type"] == "header"
    assert "back to normal" in second["text"]

    # teams: an Adaptive Card with facts and an OpenUrl action per sensor.
    card = receivers["teams"].bodies()[0]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = card["content"]
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    facts = {f["title"]: f["value"] for f in content["body"][1]["facts"]}
    assert {"What", "Where", "How bad", "How sure", "Since", "Action"} <= set(facts)
    assert content["actions"][0] == {"type": "Action.OpenUrl", "title": "Evidence s0",
                                     "url": f"{PUBLIC}/sensor/s0"}

    # pagerduty: Events API v2, one event per alert, dedup_key = alert id.
    events = receivers["pagerduty"].bodies()
    triggers = [e for e in events if e["event_action"] == "trigger"]
    assert len(triggers) == 10
    t = triggers[0]
    assert t["routing_key"] == "R0UTINGKEY" and t["dedup_key"] == "id-s0"
    assert t["payload"]["severity"] == "error"  # ISO zone C
    assert t["payload"]["source"] == "plant/reactor7/s0"
    assert t["payload"]["summary"] and t["payload"]["timestamp"].endswith("Z")
    assert t["links"][0]["href"] == f"{PUBLIC}/sensor/s0"
    (resolve,) = [e for e in events if e["event_action"] == "resolve"]
    assert resolve["dedup_key"] == "id-s3" and resolve["routing_key"] == "R0UTINGKEY"
    assert sender.counters.delivered == 11 + 11 + 11 + 11
    assert sender.counters.failed == 0 and sender.counters.pending == 0
    assert not list((tmp_path / "state" / "webhook-spool").rglob("*.alert.json"))


def outage(tmp_path: Path, outage_s: float, backoff_max_s: float) -> None:
    """Receiver down for `outage_s`, the stream restarted meanwhile: every alert arrives
    afterwards, exactly once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    hooks = (hook(url, "json", backoff_max_s=backoff_max_s),)
    state = tmp_path / "state"
    started = time.monotonic()
    first = [alert(f"a{i}") for i in range(5)]
    second = [alert(f"b{i}") for i in range(5)] + [alert("a0", "resolved")]

    # The first stream run submits five alerts and stops while the receiver is down.
    sender = WebhookSender(hooks, 0.2, state_dir=state)
    asyncio.run(run_sender(sender, first, lambda: sender.counters.attempts >= 5, 10))
    assert sender.counters.delivered == 0
    assert len(list(state.rglob("*.alert.json"))) == 5  # spooled on disk

    receiver: Receiver | None = None

    async def second_run() -> None:
        nonlocal receiver
        sender2 = WebhookSender(hooks, 0.2, state_dir=state)
        task = asyncio.create_task(sender2.run())
        for a in second:
            sender2.submit(a)
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - started)))
        receiver = Receiver(port)  # the receiver comes back
        deadline = time.monotonic() + backoff_max_s + 15
        while len(receiver.got) < 11 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything sent twice would arrive now
        await sender2.close()
        await asyncio.wait_for(task, 10)
        assert sender2.counters.delivered == 11

    try:
        asyncio.run(second_run())
        assert receiver is not None
        got = [(b["alert_id"], b["status"]) for b in receiver.bodies()]
        assert sorted(got) == sorted((a["alert_id"], a["status"]) for a in first + second)
        assert len(set(got)) == len(got) == 11  # once each
        assert not list(state.rglob("*.alert.json"))
    finally:
        if receiver is not None:
            receiver.stop()


def test_receiver_outage_and_stream_restart_lose_nothing_and_send_once(
        tmp_path: Path) -> None:
    outage(tmp_path, outage_s=4.0, backoff_max_s=1.0)


@pytest.mark.slow
@pytest.mark.xdist_group("outage_60s")  # idle waits: share one worker (pyproject)
def test_receiver_down_for_60_s_gets_every_notification_once(tmp_path: Path) -> None:
    outage(tmp_path, outage_s=60.0, backoff_max_s=8.0)


def test_bad_receivers_delay_only_their_own_route(tmp_path: Path) -> None:
    good, failing, refusing, hanging = Receiver(), Receiver(status=500), Receiver(status=400), \
        Receiver()
    hanging.hang.set()
    hooks = (hook("http://no-such-host.invalid/hook", timeout_s=1.0),
             hook(failing.url), hook(refusing.url), hook(hanging.url, timeout_s=1.0),
             hook(good.url))
    sender = WebhookSender(hooks, 0.1, state_dir=tmp_path / "state")
    try:
        t0 = time.monotonic()
        asyncio.run(run_sender(sender, [alert("x1")], lambda: len(good.got) == 1
                               and len(failing.got) >= 3, 20))
        assert time.monotonic() - t0 < 10
        assert len(refusing.got) == 1  # a 400 is not retried...
        assert sender.counters.failed == 1  # ...it counts as failed, kept aside
        assert list((tmp_path / "state").rglob("rejected/*.alert.json"))
        # The unresolvable, failing and hanging routes keep theirs for the next start.
        kept = [p for p in (tmp_path / "state").rglob("*.alert.json")
                if p.parent.name != "rejected"]
        assert len(kept) == 3
    finally:
        for r in (good, failing, refusing, hanging):
            r.stop()


@pytest.mark.parametrize("entry, message", [
    ('url = "http://x/"\nformat = "carrier-pigeon"', "webhook[0].format: must be one of"),
    ('url = "http://x/"\nformat = "pagerduty"', "webhook[0].routing_key_file: is required"),
    ('url = "ftp://x/"', "webhook[0].url: must start with http"),
    ('url = "http://x/"\ngroup_wait = 3', "webhook[0].group_wait: unknown key; did you mean"),
    ('url = "http://x/"\nrate_limit_per_min = 0', "webhook[0].rate_limit_per_min: must be > 0"),
])
def test_malformed_webhook_entry_is_named_and_exits_2(tmp_path: Path, entry: str,
                                                      message: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nid = "p"\n[[webhook]]\n{entry}\n')
    done = subprocess.run([sys.executable, "-m", "ballpass", "check-config", str(site)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


def test_webhook_entry_parses() -> None:
    config = parse({"site": {"id": "p"}, "webhook": [
        {"url": "http://am:9093", "format": "alertmanager", "group_wait_s": 10,
         "rate_limit_per_min": 5, "name": "oncall"}]})
    (h,) = config.webhooks
    assert (h.format, h.group_wait_s, h.rate_limit_per_min, h.name) == \
        ("alertmanager", 10.0, 5.0, "oncall")


def test_a_group_whose_delivery_raises_is_given_up_and_the_route_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: any exception while delivering one group (a rendering bug, a full disk while
    saving Alertmanager's active alerts) ended the route's loop and shut down every
    route's pool: no more webhooks at all, nothing logged."""
    from ballpass.stream.sinks import webhook

    real = webhook.Route._requests

    def requests(self: Any, entries: list[Any]) -> Any:
        if any(e.alert["sensor"] == "bad" for e in entries):
            raise RuntimeError("rendering bug")
        return real(self, entries)

    monkeypatch.setattr(webhook.Route, "_requests", requests)
    good = Receiver()
    sender = WebhookSender((hook(good.url),), 0.1, state_dir=tmp_path / "state")
    try:
        asyncio.run(run_sender(sender, [alert("bad"), alert("x1")],
                               lambda: len(good.got) == 1, 20))
    finally:
        good.stop()
    assert [json.loads(body)["sensor"] for _, _, body in good.got] == ["x1"]
    c = sender.counters
    assert (c.delivered, c.failed, c.pending) == (1, 1, 0)
    [kept] = list((tmp_path / "state").rglob("rejected/*.alert.json"))
    assert json.loads(kept.read_text())["sensor"] == "bad"


def test_an_alarm_the_state_machine_rates_high_is_critical_on_call() -> None:
    """Before: the state machine's `high` (a bearing defect in zone C, zone D projected
    within 7 days) was not one of the on-call severities and was dropped: `warning`."""
    assert severity(alert("a", iso_zone="B", severity="high")) == "critical"
    assert severity(alert("a", iso_zone="C", severity="high")) == "critical"
    assert severity(alert("a", iso_zone="C", severity="medium")) == "error"
    assert severity(alert("a", iso_zone="B", severity="medium")) == "warning"
    assert severity(alert("a", iso_zone="D", severity="low")) == "critical"
    assert severity(alert("a", "resolved", severity="high")) == "info"
    assert severity(alert("a", kind="instrument", severity="high")) == "info"
