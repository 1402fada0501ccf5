"""Alert routing: every `[[webhook]]` route gets every alert at least once.

    submit(alert) ─> spool file per route (state_dir/webhook-spool/<route>/) ─> group by
    (asset, status) for `group_wait_s` ─> rate limit ─> POST with retries ─> 2xx: unlink

- At least once: an alert is written to the route's spool directory before anything is
  sent and removed only after the receiver answered 2xx, so a receiver outage or a stream
  restart loses nothing (the spool is re-read at start). A duplicate is possible only
  when the receiver took a message whose answer never arrived (a crash between the 2xx and
  the unlink, a timeout, a broken response); receivers de-duplicate by `alert_id` +
  `status`.
- Retries: connection errors (a response broken off or garbled too), timeouts, 408, 425,
  429 and 5xx are retried without end, with capped exponential backoff and jitter
  (`backoff_max_s`); after `retries` failed attempts the route logs `webhook_failing` once
  per message. Redirects are not followed: a 3xx, like any other 4xx, means the route
  refuses that body: the message moves to `<route>/rejected/` (the newest REJECTED_KEEP
  kept there) and counts as `failed`;
  so does a group whose delivery raised (a bug: logged `webhook_group_failed`, and the
  route goes on with the next).
- Grouping: slack, teams and alertmanager routes put the alerts of one asset and status
  that arrive within `group_wait_s` into one message (ten sensors of one reactor → one
  message); an alert's resolve never goes out before its firing. json and pagerduty stay
  one alert per message (their receivers key on the alert id). A token bucket enforces
  `rate_limit_per_min` per route.
- Each route runs in its own task with its own thread for HTTP, so a hanging receiver
  delays only its own route, never the pipeline or other routes; a route whose loop
  fails (a bug: logged `webhook_route_failed`) is restarted, the others go on.
- Secret files are read when the sender is made: an unreadable one is a ConfigError
  naming its `webhook[i]` key (the stream exits 2 at start).

`WebhookSender` keeps the counters (`delivered`, `failed`) the service status reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ballpass import backoff
from ballpass.config import ConfigError, WebhookConfig
from ballpass.log import kv
from ballpass.stream.sinks import formats
from ballpass.stream.sinks.formats import Request

Render = Callable[[], Request]
"""Makes one message's HTTP request, at the time of each attempt."""

log = logging.getLogger(__name__)

GROUPED_FORMATS = frozenset({"slack", "teams", "alertmanager"})
ALERTMANAGER_REFRESH_S = 60.0  # firing alerts are re-posted this often...
ALERTMANAGER_HOLD_S = 5 * ALERTMANAGER_REFRESH_S  # ...and expire this long after the last post
REJECTED_KEEP = 500  # refused bodies kept per route for a look; beyond it the oldest go


@dataclass
class WebhookCounters:
    delivered: int = 0  # alert deliveries (alert × route) answered 2xx
    failed: int = 0  # alert deliveries refused by the receiver (non-retryable 4xx)
    attempts: int = 0  # HTTP requests made
    messages: int = 0  # messages answered 2xx (a grouped message carries several alerts)
    pending: int = 0  # alert deliveries waiting in the spools


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: urllib re-sends a POST answered 301/302/303 as a GET without
    its body, whose 2xx then counted as delivered. The 3xx is returned as the status."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: http.client.HTTPMessage, newurl: str) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_opener = urllib.request.build_opener(_NoRedirect)


def post(request: Request, timeout_s: float) -> tuple[int, str | None]:
    """POST one request; the HTTP status and, for a redirect, its Location. Raises OSError
    on a network error, a timeout or a response broken off or garbled."""
    req = urllib.request.Request(request.url, data=request.body, method="POST", headers={
        **request.headers, "User-Agent": formats.USER_AGENT})
    try:
        with _opener.open(req, timeout=timeout_s) as response:
            response.read()
            return int(response.status), None
    except urllib.error.HTTPError as e:
        return int(e.code), e.headers.get("Location")
    except http.client.HTTPException as e:
        # IncompleteRead, BadStatusLine...: the connection broke, whatever the receiver
        # did with the body; retried like any connection error (a duplicate at worst).
        raise ConnectionError(f"broken response: {e!r}") from e


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def route_id(index: int, hook: WebhookConfig) -> str:
    """Stable spool directory name of a route: its position, format and URL hash."""
    digest = hashlib.sha1(f"{hook.format}|{hook.url}".encode()).hexdigest()[:8]
    return f"{index}-{hook.format}-{digest}"


def _read_secret(index: int, key: str, read: Callable[[], str | None]) -> str | None:
    """`read()` (a route's secret file); its ConfigError names the route's key."""
    try:
        return read()
    except ConfigError as e:
        raise ConfigError([f"webhook[{index}].{key}: {line}" for line in e.errors]) from None


@dataclass
class _Entry:
    """One alert waiting for one route; `path` is its spool file (None without a spool)."""

    alert: dict[str, Any]
    path: Path | None
    settled: bool = False  # delivered or given up (its spool file moved)


@dataclass
class _Group:
    deadline: float
    entries: list[_Entry] = field(default_factory=list)


class Route:
    """One `[[webhook]]` entry: its spool, groups, rate limit and delivery loop."""

    def __init__(self, index: int, hook: WebhookConfig, spool_root: Path | None,
                 sender: WebhookSender) -> None:
        self.hook = hook
        self.id = route_id(index, hook)
        self.name = hook.name or self.id
        self.sender = sender
        self.dir = spool_root / self.id if spool_root is not None else None
        self.groups: dict[tuple[str, str], _Group] = {}
        self.wake = asyncio.Event()
        self.closing = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"webhook-{index}")
        self.tokens = self.burst = max(1.0, hook.rate_limit_per_min / 4)
        self.refilled = time.monotonic()
        self._seq = 0
        # Alertmanager: labels of firing alerts (their identity), re-posted until resolved.
        self.active: dict[str, dict[str, Any]] = {}
        # Read here, when the service is made, so that an unreadable file stops the start
        # naming it (exit 2) instead of the webhooks task, silently.
        self.secret = _read_secret(index, "secret_file", hook.secret)
        self.routing_key = _read_secret(index, "routing_key_file", hook.routing_key)

    # --- spool -----------------------------------------------------------------------

    def load_spool(self) -> int:
        """Queue what a previous run left undelivered; the number of alerts found."""
        if self.dir is None:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        active = self.dir / "active.json"
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(active.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and all(isinstance(v, dict) for v in loaded.values()):
                self.active = loaded
            else:  # it would fail the route at every refresh
                log.error(kv("webhook_spool_unreadable", route=self.name, file=active,
                             reason="not an object of alerts"))
        # A spool write a crash cut short: its alert is still held in the alert state,
        # which spools it again at start (service.py `_finish_held`).
        for tmp in self.dir.glob("*.alert.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                log.info(kv("webhook_spool_partial_removed", route=self.name, file=tmp))
        found = 0
        for path in sorted(self.dir.glob("*.alert.json")):
            try:
                alert = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(alert, dict):
                    raise ValueError(f"not an alert object: {type(alert).__name__}")
            except (OSError, ValueError) as e:
                log.error(kv("webhook_spool_unreadable", route=self.name, file=path, reason=e))
                with contextlib.suppress(OSError):
                    self._set_aside(path, path.with_suffix(".bad").name)
                continue
            self._queue(_Entry(alert, path), time.monotonic())
            found += 1
        if found:
            log.info(kv("webhook_spool_loaded", route=self.name, alerts=found))
        return found

    def _spool(self, alert: dict[str, Any]) -> Path | None:
        if self.dir is None:
            return None
        self._seq += 1
        name = f"{time.time_ns():020d}-{self._seq:06d}-{alert['alert_id']}-{alert['status']}"
        path = self.dir / f"{name}.alert.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(alert, f, separators=(",", ":"), default=str)
            f.flush()
            os.fsync(f.fileno())  # an alert acknowledged by the spool survives a crash
        os.replace(tmp, path)
        return path

    def _save_active(self) -> None:
        if self.dir is None:
            return
        tmp = self.dir / "active.tmp"
        try:
            tmp.write_text(json.dumps(self.active), encoding="utf-8")
            os.replace(tmp, self.dir / "active.json")
        except OSError as e:  # kept in memory: only a restart would forget them
            log.error(kv("webhook_spool_failed", route=self.name, file=tmp, reason=e))

    # --- queueing ----------------------------------------------------------------------

    def submit(self, alert: dict[str, Any]) -> None:
        try:
            path = self._spool(alert)
        except OSError as e:
            # Still delivered from memory; only a restart before delivery would lose it.
            log.error(kv("webhook_spool_failed", route=self.name, reason=e))
            path = None
        self._queue(_Entry(alert, path), time.monotonic() + (
            self.hook.group_wait_s if self.hook.format in GROUPED_FORMATS else 0.0))

    def _queue(self, entry: _Entry, deadline: float) -> None:
        a = entry.alert
        if self.hook.format in GROUPED_FORMATS:
            key = (str(a.get("asset")), str(a.get("status")))
        else:
            key = (f"{a.get('alert_id')}/{a.get('status')}/{id(entry)}", "")
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(deadline)
        firing = self.groups.get((key[0], "firing")) if key[1] == "resolved" else None
        if firing is not None and firing.deadline >= group.deadline and any(
                e.alert.get("alert_id") == a.get("alert_id") for e in firing.entries):
            # This alert's firing still waits, in a group due no earlier than the resolved
            # one (which another alert's resolve opened): the resolve must not go first.
            group.deadline = firing.deadline
            self.groups[key] = self.groups.pop(key)  # `run` takes the first of equal deadlines
        group.entries.append(entry)
        self.sender.counters.pending += 1
        self.wake.set()

    # --- delivery ----------------------------------------------------------------------

    async def keep_running(self) -> None:
        """`run()` until it returns (closing). A failure of it (a bug) is logged and the
        loop restarted after a backoff, s: never the end of this route or of the others
        (before, it ended them all and shut every route's HTTP thread down)."""
        failures = 0
        while True:
            try:
                await self.run()
                return
            except Exception as e:
                failures += 1
                delay = backoff.jittered_s(failures, self.sender.backoff_s,
                                           self.hook.backoff_max_s)
                log.error(kv("webhook_route_failed", route=self.name, reason=repr(e)[:300],
                             restart_in_s=round(delay, 2)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed(), delay)

    async def run(self) -> None:
        last_refresh = time.monotonic()
        while True:
            now = time.monotonic()
            due = [k for k, g in self.groups.items() if self.closing or g.deadline <= now]
            if due:
                key = min(due, key=lambda k: self.groups[k].deadline)
                group = self.groups.pop(key)
                try:
                    delivered = await self._deliver_group(group.entries)
                except Exception as e:  # a bug with one group: never the end of the route
                    self._give_up(group.entries, e)
                    continue
                if not delivered:
                    return  # closing: the rest stays in the spool for the next start
                continue
            if self.closing:
                return
            if self.active and now - last_refresh >= ALERTMANAGER_REFRESH_S:
                last_refresh = now
                await self._refresh_alertmanager()
            nxt = min((g.deadline for g in self.groups.values()), default=now + 1.0)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.01, min(nxt - now, 1.0)))

    def _requests(self, entries: list[_Entry]) -> list[tuple[Render, list[_Entry]]]:
        """How to make the HTTP request of each message of one group (one message, except
        for per-alert formats). A request is made anew for every attempt, so its signed
        timestamp (json) and times (alertmanager) are those of the attempt, not of the
        first try: a retry after a long outage is not refused as a replay."""
        alerts = [e.alert for e in entries]
        public = self.sender.public_url
        h = self.hook
        if h.format == "json":
            return [(functools.partial(formats.render_json, e.alert, h.url, self.secret), [e])
                    for e in entries]
        if h.format == "pagerduty":
            return [(functools.partial(formats.render_pagerduty, e.alert, h.url,
                                       self.routing_key or "", public), [e]) for e in entries]
        if h.format == "slack":
            return [(functools.partial(formats.render_slack, alerts, h.url, public), entries)]
        if h.format == "teams":
            return [(functools.partial(formats.render_teams, alerts, h.url, public), entries)]
        return [(lambda: self._am_request([self._am_alert(a) for a in alerts]), entries)]

    def _am_request(self, body: list[dict[str, Any]]) -> Request:
        """POST of `body` (Alertmanager alerts) to the route's /api/v2/alerts."""
        return Request(formats.alertmanager_url(self.hook.url), json.dumps(body).encode(),
                       {"Content-Type": "application/json"})

    def _am_alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        alert_id = str(alert["alert_id"])
        labels = self.active.get(alert_id, {}).get("labels")
        if labels is None and alert.get("status") == "resolved":
            # The firing labels were lost: rebuild them as the firing alert had them.
            labels = formats.alertmanager_alert({**alert, "status": "firing"},
                                                None, time.time(), 0)["labels"]
        return formats.alertmanager_alert(alert, self.sender.public_url, time.time(),
                                          ALERTMANAGER_HOLD_S, labels)

    async def _deliver_group(self, entries: list[_Entry]) -> bool:
        """Deliver every request of a group; False if closing interrupted it."""
        for render, members in self._requests(entries):
            await self._take_token()
            ok, request = await self._deliver(render, members)
            if ok is None:
                return False  # closing: the files stay spooled for the next start
            self.sender.counters.pending -= len(members)
            if ok:
                self.sender.counters.delivered += len(members)
                self.sender.counters.messages += 1
                if self.hook.format == "alertmanager":
                    self._track_active([e.alert for e in members], request)
            else:
                self.sender.counters.failed += len(members)
            for e in members:
                self._settle(e, ok)
        return True

    def _give_up(self, entries: list[_Entry], e: Exception) -> None:
        """Entries of a group whose delivery raised: counted failed, logged, and their
        spool files moved to `rejected/` (kept for a look, not sent again)."""
        left = [x for x in entries if not x.settled]
        log.error(kv("webhook_group_failed", route=self.name, alerts=len(left),
                     reason=repr(e)[:300]))
        self.sender.counters.pending -= len(left)
        self.sender.counters.failed += len(left)
        for x in left:
            self._settle(x, False)

    def _settle(self, entry: _Entry, delivered: bool) -> None:
        entry.settled = True
        if entry.path is None:
            return
        try:
            if delivered:
                entry.path.unlink(missing_ok=True)
            else:
                self._set_aside(entry.path, entry.path.name)
        except OSError as e:
            log.error(kv("webhook_spool_failed", route=self.name, file=entry.path, reason=e))

    def _set_aside(self, path: Path, name: str) -> None:
        """Move a spool file the route will not send into `rejected/` as `name`, keeping
        the newest REJECTED_KEEP there: a receiver refusing every alert for months must
        not fill the state disk (names start with the spool time, so they sort by age)."""
        rejected = path.parent / "rejected"
        rejected.mkdir(exist_ok=True)
        path.rename(rejected / name)
        old = sorted(rejected.iterdir())[:-REJECTED_KEEP]
        for p in old:
            p.unlink(missing_ok=True)
        if old:
            log.warning(kv("webhook_rejected_pruned", route=self.name, files=len(old),
                           kept=REJECTED_KEEP))

    def _track_active(self, alerts: list[dict[str, Any]], request: Request) -> None:
        posted = json.loads(request.body)
        for alert, am in zip(alerts, posted, strict=True):
            if alert.get("status") == "firing":
                self.active[str(alert["alert_id"])] = {"labels": am["labels"], "alert": alert}
            else:
                self.active.pop(str(alert["alert_id"]), None)
        self._save_active()

    async def _refresh_alertmanager(self) -> None:
        """Re-post firing alerts so Alertmanager keeps them active (best effort)."""
        request = self._am_request([
            formats.alertmanager_alert(v["alert"], self.sender.public_url, time.time(),
                                       ALERTMANAGER_HOLD_S, v["labels"])
            for v in self.active.values()])
        with contextlib.suppress(OSError):
            await self._post(request)

    async def _take_token(self) -> None:
        rate_per_s = self.hook.rate_limit_per_min / 60.0
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) * rate_per_s)
            self.refilled = now
            if self.tokens >= 1.0 or self.closing:
                self.tokens = max(0.0, self.tokens - 1.0)
                return
            await asyncio.sleep((1.0 - self.tokens) / rate_per_s)

    async def _post(self, request: Request) -> tuple[int, str | None]:
        self.sender.counters.attempts += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, post, request, self.hook.timeout_s)

    async def _deliver(self, render: Render, members: list[_Entry]
                       ) -> tuple[bool | None, Request]:
        """(True delivered, False refused (4xx), None interrupted by closing; the request
        of the last attempt)."""
        ids = ",".join(f"{e.alert.get('alert_id')}/{e.alert.get('status')}" for e in members)
        attempt = 0
        while True:
            attempt += 1
            request = render()
            try:
                status, location = await self._post(request)
                reason = f"http {status}"
                if 200 <= status < 300:
                    log.info(kv("webhook_delivered", route=self.name, format=self.hook.format,
                                alerts=ids, http=status, attempt=attempt))
                    return True, request
                if 300 <= status < 400:
                    # Not followed (`_NoRedirect`), refused like a 4xx: the route's URL
                    # is wrong until the admin sets it to where the receiver now is.
                    log.error(kv("webhook_refused", route=self.name, alerts=ids, http=status,
                                 location=location))
                    return False, request
                if not _retryable(status):
                    log.error(kv("webhook_refused", route=self.name, alerts=ids, http=status))
                    return False, request
            except OSError as e:  # refused, unresolvable, timeout, broken response (`post`)
                reason = str(getattr(e, "reason", e))
            if self.closing:
                log.warning(kv("webhook_deferred", route=self.name, alerts=ids, reason=reason))
                return None, request
            delay = backoff.jittered_s(attempt, self.sender.backoff_s,
                                       self.hook.backoff_max_s)
            event = "webhook_failing" if attempt == self.hook.retries + 1 else "webhook_retry"
            (log.error if event == "webhook_failing" else log.warning)(kv(
                event, route=self.name, alerts=ids, attempt=attempt, reason=reason,
                retry_in_s=round(delay, 2)))
            # Sleep, but wake up early to defer when the service closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed(), delay)

    async def _closed(self) -> None:
        while not self.closing:
            await asyncio.sleep(0.1)


class WebhookSender:
    """Every route of the site config; `submit` from the event loop, `run()` until `close()`.

    `state_dir` holds the spools (None: memory only, for tests of formats). `public_url`
    is the evidence page's base URL for links (may be set after construction).
    """

    def __init__(self, hooks: tuple[WebhookConfig, ...], backoff_s: float = 1.0, *,
                 state_dir: Path | None = None, public_url: str | None = None) -> None:
        self.hooks = hooks
        self.backoff_s = backoff_s
        self.public_url = public_url
        self.counters = WebhookCounters()
        self.spool_root = state_dir / "webhook-spool" if state_dir is not None else None
        self.routes: list[Route] = []
        errors: list[str] = []
        for i, h in enumerate(hooks):  # every unreadable secret file named at once
            try:
                self.routes.append(Route(i, h, self.spool_root, self))
            except ConfigError as e:
                errors += e.errors
        if errors:
            raise ConfigError(errors)
        self._early: list[dict[str, Any]] = []
        self._closing = False
        self._started = False

    def submit(self, alert: dict[str, Any]) -> None:
        """Hand an alert to every route whose `events` include its event (the status of a
        machine alarm; `instrument_firing` / `instrument_resolved` for a sensor that needs
        maintenance)."""
        if not self._started:
            self._early.append(alert)  # before run(): queued once the routes exist
            return
        event = alert.get("event", alert.get("status"))
        for route in self.routes:
            if event in route.hook.events:
                route.submit(alert)

    async def close(self) -> None:
        """Stop `run()`: each route tries its due messages once more; the rest stays spooled."""
        self._closing = True
        for route in self.routes:
            route.closing = True
            route.wake.set()

    async def run(self) -> None:
        self._started = True
        for route in self.routes:
            try:
                route.load_spool()
            except Exception as e:  # one route's spool never keeps the others from starting
                log.error(kv("webhook_spool_failed", route=route.name, reason=repr(e)[:300]))
        early, self._early = self._early, []
        for alert in early:
            self.submit(alert)
        if self._closing:
            for route in self.routes:
                route.closing = True
        try:
            await asyncio.gather(*(r.keep_running() for r in self.routes))
        finally:
            for route in self.routes:
                route.pool.shutdown(wait=False, cancel_futures=True)
