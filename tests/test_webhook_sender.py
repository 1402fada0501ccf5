"""The webhook sender against bad secrets and bad receivers: an unreadable secret file stops
the start naming its key, a route that fails never stops the others, a response broken off
is retried, a redirect is refused (not followed), and a resolve never goes out before its
firing, in a group or after a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ballpass.config import ConfigError, WebhookConfig
from ballpass.demo import WebhookReceiver
from ballpass.services import free_port
from ballpass.stream.sinks import webhook
from ballpass.stream.sinks.webhook import WebhookSender


def alert(alert_id: str, status: str = "firing", sensor: str = "s1", asset: str = "r01"
          ) -> dict[str, Any]:
    return {"sensor": sensor, "gateway": "gw1", "site": "plant", "asset": asset,
            "t": time.time(), "seq": 1, "diagnosis": "imbalance", "confidence": 0.9,
            "state": "alarm" if status == "firing" else "normal", "iso_zone": "C",
            "velocity_rms_mm_s": 5.0, "evidence": [], "reason": "1x", "severity": "medium",
            "kind": "machine", "event": status, "alert_id": alert_id, "status": status,
            "since": time.time() - 60, "summary": f"{alert_id} {status}",
            "sent_at": time.time()}


def hook(url: str, fmt: str = "json", **kw: Any) -> WebhookConfig:
    return WebhookConfig(url=url, format=fmt, **{"group_wait_s": 0.0, "timeout_s": 2.0,
                                                  "rate_limit_per_min": 600.0,
                                                  "backoff_max_s": 0.3, **kw})


async def await_until(check: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return bool(check())


class Recorder:
    """A loopback HTTP server recording (method, path, body); `answer(handler)` may reply
    itself (a redirect, a broken response) and return True, else it answers 200."""

    def __init__(self, answer: Any = None, port: int = 0) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                recorder.got.append((self.command, self.path, self.rfile.read(n)))
                if answer is not None and answer(self):
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self) -> list[Any]:
        return [json.loads(body) for method, _, body in self.got if method == "POST"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def files(state: Path, where: str = "*.alert.json") -> list[Path]:
    return sorted(state.rglob(where))


# --- 1. secrets ---------------------------------------------------------------------------


def test_an_unreadable_secret_file_is_a_config_error_when_the_sender_is_made(
        tmp_path: Path) -> None:
    """Before: the secret was read in the webhooks task, whose ConfigError ended it: no
    route spooled or sent anything, and nothing said so."""
    (tmp_path / "dir.key").mkdir()
    hooks = (hook("http://127.0.0.1:9/a", "slack"),
             hook("http://127.0.0.1:9/b", secret_file=tmp_path / "gone.secret"),
             hook("http://127.0.0.1:9/c", "pagerduty", routing_key_file=tmp_path / "dir.key"))
    with pytest.raises(ConfigError) as e:
        WebhookSender(hooks, state_dir=tmp_path / "state")
    assert e.value.errors == [
        f"webhook[1].secret_file: {tmp_path / 'gone.secret'}: must be a readable UTF-8 file "
        "(No such file or directory)",
        f"webhook[2].routing_key_file: {tmp_path / 'dir.key'}: must be a readable UTF-8 "
        "file (Is a directory)"]


def test_the_stream_exits_2_at_start_naming_a_missing_webhook_secret(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(f"""
[site]
id = "p"
[broker]
port = {free_port()}
[stream]
state_dir = "{tmp_path / 'state'}"
[[webhook]]
url = "http://127.0.0.1:9/hook"
format = "slack"
[[webhook]]
url = "http://127.0.0.1:9/hook"
secret_file = "{tmp_path / 'gone.secret'}"
""", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ballpass", "stream", "-c", str(site)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f"webhook[1].secret_file: {tmp_path / 'gone.secret'}: must be a readable UTF-8" \
        in r.stderr, r.stderr


# --- 2. a failing route never stops the others ----------------------------------------------


def test_a_route_whose_loop_fails_is_restarted_and_the_others_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """An `active.json` of the wrong shape makes the Alertmanager refresh raise. Before:
    that ended every route's loop and shut every route's HTTP thread down, so the json
    route's next alert went to rejected/ ("cannot schedule new futures after shutdown")."""
    monkeypatch.setattr(webhook, "ALERTMANAGER_REFRESH_S", 0.3)
    am, js = Recorder(), Recorder()
    state = tmp_path / "state"
    hooks = (hook(am.url, "alertmanager"), hook(js.url))
    sender = WebhookSender(hooks, 0.05, state_dir=state)
    am_dir = state / "webhook-spool" / sender.routes[0].id
    am_dir.mkdir(parents=True)
    (am_dir / "active.json").write_text('{"old": {"labels": {}}}')  # no "alert"

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        await await_until(lambda: "webhook_route_failed" in caplog.text, 5)
        sender.submit(alert("X"))
        await await_until(lambda: sender.counters.delivered == 2, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        with caplog.at_level(logging.ERROR, logger=webhook.__name__):
            asyncio.run(run())
    finally:
        am.stop()
        js.stop()
    assert "event=webhook_route_failed route=0-alertmanager" in caplog.text
    assert [a["alert_id"] for a in js.posted()] == ["X"]
    assert [[a["labels"]["alert_id"] for a in m] for m in am.posted()] == [["X"]]
    assert (sender.counters.delivered, sender.counters.failed) == (2, 0)
    assert not files(state)


def test_a_spool_file_that_is_not_an_alert_is_set_aside_and_every_route_starts(
        tmp_path: Path) -> None:
    """Before: JSON that is not an object raised while loading, which ended the webhooks
    task before any route ran."""
    a, b = WebhookReceiver(), WebhookReceiver()
    a.start()
    b.start()
    state = tmp_path / "state"
    sender = WebhookSender((hook(a.url), hook(b.url)), 0.05, state_dir=state)
    spool = state / "webhook-spool" / sender.routes[0].id
    spool.mkdir(parents=True)
    (spool / "0-bad.alert.json").write_text("[1]")

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("X"))
        await await_until(lambda: len(a.received) == len(b.received) == 1, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(run())
    finally:
        a.stop()
        b.stop()
    assert [x["alert_id"] for x in a.received + b.received] == ["X", "X"]
    assert [p.name for p in (spool / "rejected").iterdir()] == ["0-bad.alert.bad"]


def test_rejected_keeps_only_the_newest_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """Before: every refused alert stayed in rejected/ for ever; a receiver refusing all
    (a revoked Slack hook answers 404) filled the state disk at the alert rate."""
    monkeypatch.setattr(webhook, "REJECTED_KEEP", 3)
    receiver = Recorder(lambda h: h.send_error(404) or True)
    state = tmp_path / "state"
    sender = WebhookSender((hook(receiver.url),), 0.05, state_dir=state)

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        for i in range(5):
            sender.submit(alert(f"A{i}"))
        await await_until(lambda: sender.counters.failed == 5, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    assert sender.counters.failed == 5
    kept = [json.loads(p.read_text())["alert_id"] for p in files(state, "rejected/*")]
    assert kept == ["A2", "A3", "A4"]


def test_a_partial_spool_write_and_a_misshapen_active_file_are_cleared_at_start(
        tmp_path: Path) -> None:
    """A crash mid-write left `*.alert.tmp` for ever (its alert is spooled again from the
    alert state's held alerts); an `active.json` that is no object of alerts made the
    Alertmanager route fail at every refresh."""
    state = tmp_path / "state"
    sender = WebhookSender((hook("http://127.0.0.1:1/", "alertmanager"),), 0.05,
                           state_dir=state)
    route = sender.routes[0]
    assert route.dir is not None
    route.dir.mkdir(parents=True)
    (route.dir / "0-X-firing.alert.tmp").write_text('{"alert_')
    (route.dir / "active.json").write_text('{"X": [1, 2]}')
    assert route.load_spool() == 0
    assert sorted(p.name for p in route.dir.iterdir()) == ["active.json"]
    assert route.active == {}


def test_an_alertmanager_refresh_answered_with_a_broken_response_is_retried_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Before: IncompleteRead escaped the refresh (only OSError was caught), ended every
    route and shut their HTTP threads down."""
    monkeypatch.setattr(webhook, "ALERTMANAGER_REFRESH_S", 0.2)
    broken = threading.Event()

    def answer(h: BaseHTTPRequestHandler) -> bool:
        if not broken.is_set():
            return False
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nab")  # then closed
        h.close_connection = True
        return True

    am, js = Recorder(answer), Recorder()
    sender = WebhookSender((hook(am.url, "alertmanager"), hook(js.url)), 0.05,
                           state_dir=tmp_path / "state")

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("X"))
        await await_until(lambda: sender.counters.delivered == 2, 5)
        broken.set()
        n = len(am.got)
        await await_until(lambda: len(am.got) >= n + 2, 5)  # refreshes, broken off
        broken.clear()
        n = len(am.got)
        await await_until(lambda: len(am.got) >= n + 1, 5)  # and the next one is fine
        sender.submit(alert("Z", sensor="s9"))
        await await_until(lambda: sender.counters.delivered == 4, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        with caplog.at_level(logging.ERROR, logger=webhook.__name__):
            asyncio.run(run())
    finally:
        am.stop()
        js.stop()
    assert "webhook_route_failed" not in caplog.text
    assert [a["alert_id"] for a in js.posted()] == ["X", "Z"]
    assert (sender.counters.delivered, sender.counters.failed) == (4, 0)
    assert not files(tmp_path / "state")


# --- 5. a response broken off is a connection error ------------------------------------------


def raw_receiver(first: bytes) -> tuple[str, list[bytes], socket.socket]:
    """A loopback server that answers the first request with `first` (then closes) and
    every later one 200; the requests it read."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                got.append(conn.recv(65536))
                conn.sendall(first if len(got) == 1 else
                             b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/hook", got, srv


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",  # IncompleteRead
    b"hello\r\n\r\n",  # BadStatusLine
], ids=["incomplete-read", "bad-status-line"])
def test_a_response_broken_off_is_retried_not_rejected(tmp_path: Path, first: bytes) -> None:
    """Before: http.client's IncompleteRead or BadStatusLine reached the group's give-up:
    the alert went to rejected/ and was never sent again."""
    url, got, srv = raw_receiver(first)
    state = tmp_path / "state"
    sender = WebhookSender((hook(url),), 0.05, state_dir=state)

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("X"))
        await await_until(lambda: sender.counters.delivered == 1, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(run())
    finally:
        srv.close()
    assert len(got) == 2
    assert (sender.counters.delivered, sender.counters.failed) == (1, 0)
    assert not files(state)


# --- 4. redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_but_refused_naming_its_location(
        tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture) -> None:
    """Before: urllib followed a 301/302/303 with a GET without the body, whose 200 counted
    as delivered: the alert was gone, and the receiver never had it."""
    def answer(h: BaseHTTPRequestHandler) -> bool:
        if h.path != "/hook":
            return False
        h.send_response(code)
        h.send_header("Location", "http://moved.example/new-hook")
        h.send_header("Content-Length", "0")
        h.end_headers()
        return True

    receiver = Recorder(answer)
    state = tmp_path / "state"
    sender = WebhookSender((hook(receiver.url),), 0.05, state_dir=state)

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("X"))
        await await_until(lambda: sender.counters.failed == 1, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        with caplog.at_level(logging.ERROR, logger=webhook.__name__):
            asyncio.run(run())
    finally:
        receiver.stop()
    assert [(m, p) for m, p, _ in receiver.got] == [("POST", "/hook")]
    assert (sender.counters.delivered, sender.counters.failed) == (0, 1)
    assert len(files(state, "rejected/*.alert.json")) == 1
    assert f"http={code} location=http://moved.example/new-hook" in caplog.text


# --- 3. a resolve never before its firing ----------------------------------------------------


def slack_order(posted: list[Any]) -> list[tuple[str, str]]:
    out = []
    for m in posted:
        for part in m["text"].split(" — ", 1)[1].split("; "):
            alert_id, status = part.split()
            out.append((alert_id, status))
    return out


def posted_order(receiver: Recorder, fmt: str) -> list[tuple[str, str]]:
    if fmt == "slack":
        return slack_order(receiver.posted())
    return [(a["labels"]["alert_id"], "resolved" if a["annotations"]["action"]
             == "No action needed." else "firing") for m in receiver.posted() for a in m]


@pytest.mark.parametrize("fmt", ["slack", "alertmanager"])
def test_a_resolve_joining_an_older_resolved_group_waits_for_its_firing(
        tmp_path: Path, fmt: str) -> None:
    """Y's resolve opened the asset's resolved group; X fired, then resolved within
    group_wait. Before: X's resolve went out with Y's, before X's firing (and Alertmanager
    then kept X active, the later firing renewing it)."""
    receiver = Recorder()
    sender = WebhookSender((hook(receiver.url, fmt, group_wait_s=0.6),), 0.05,
                           state_dir=tmp_path / "state")

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("Y", "resolved", sensor="s2"))
        await asyncio.sleep(0.2)
        sender.submit(alert("X", "firing"))
        await asyncio.sleep(0.2)
        sender.submit(alert("X", "resolved"))
        await await_until(lambda: sender.counters.delivered == 3, 5)
        await sender.close()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    got = posted_order(receiver, fmt)
    assert sorted(got) == [("X", "firing"), ("X", "resolved"), ("Y", "resolved")]
    assert got.index(("X", "firing")) < got.index(("X", "resolved")), got
    assert not sender.routes[0].active


@pytest.mark.parametrize("fmt", ["slack", "alertmanager"])
def test_a_resolve_left_in_the_spool_goes_out_after_its_firing_at_restart(
        tmp_path: Path, fmt: str) -> None:
    """The same three alerts left in the spool by a receiver outage: before, the restart
    queued them all at once and X's resolve went out first, with Y's."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    state = tmp_path / "state"
    first = WebhookSender((hook(url, fmt, group_wait_s=5.0),), 0.05, state_dir=state)

    async def outage() -> None:
        task = asyncio.create_task(first.run())
        first.submit(alert("Y", "resolved", sensor="s2"))
        first.submit(alert("X", "firing"))
        first.submit(alert("X", "resolved"))
        await sender_close(first, task)

    asyncio.run(outage())
    assert len(files(state)) == 3
    receiver = Recorder(port=port)
    second = WebhookSender((hook(url, fmt, group_wait_s=5.0),), 0.05, state_dir=state)

    async def restart() -> None:
        task = asyncio.create_task(second.run())
        await await_until(lambda: second.counters.delivered == 3, 5)
        await sender_close(second, task)

    try:
        asyncio.run(restart())
    finally:
        receiver.stop()
    got = posted_order(receiver, fmt)
    assert sorted(got) == [("X", "firing"), ("X", "resolved"), ("Y", "resolved")]
    assert got.index(("X", "firing")) < got.index(("X", "resolved")), got
    assert not files(state)


async def sender_close(sender: WebhookSender, task: asyncio.Task[None]) -> None:
    await sender.close()
    await asyncio.wait_for(task, 10)
