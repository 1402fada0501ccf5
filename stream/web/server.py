"""A small HTTP/1.1 server on asyncio streams for the evidence page (no extra dependency).

Routes: `/login` (form; POST sets the session cookie), `/logout` (POST), `/` fleet
overview, `/events` server-sent events (the fleet as JSON, on every change, a comment
every 15 s otherwise), `/api/fleet`, `/sensor/{id}` and its live `/fragment`,
`POST /sensor/{id}/ack` (operator acknowledge), `/sensor/{id}/history[/{entry}]` (JSON: the
window history), `/sensor/{id}/window/{entry}` (a kept window), `/static/*`.

Security (docs/evidence-page.md): every request must name an accepted Host (DNS
rebinding); every page but `/login` and `/static/*` needs a session cookie (set by the
login form, HttpOnly, SameSite=Strict, an opaque value, not the token) or
`Authorization: Bearer TOKEN`; the token is never read from the URL. A POST from a
browser must come from the page's own origin (Origin, else Referer) and, with a session,
carry the session's CSRF token. Every response carries a strict Content-Security-Policy
(no inline script or style). Refusals are 403 (401 without credentials), counted in
`refused` by reason and logged. Malformed requests get 400 / 408 / 413 / 431 with a short
reason; an error inside a page is logged and answered 500; the stream is never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from ballpass.listen import OpenConnections, start_server
from ballpass.log import kv
from ballpass.stream.history import decimate_minmax
from ballpass.stream.web import pages
from ballpass.stream.web.security import (
    SESSION_COOKIE,
    HostPolicy,
    Session,
    Sessions,
    same_origin,
    tokens_equal,
)
from ballpass.stream.web.state import EvidenceState

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes of a request body (413 beyond)
MAX_LINE = 8 * 1024  # bytes of the request line or of one header line (431 beyond)
MAX_HEADER_LINES = 100  # header lines of one request (431 beyond)
HEADER_TIMEOUT_S = 5.0  # for the request line and all headers together (408 after)
BODY_TIMEOUT_S = 10.0  # for the whole body (408 after)
MAX_CONNECTIONS = 64  # open connections, SSE streams included (503 beyond)
MAX_CONNECTIONS_PER_PEER = 8  # of them from one IP address (503 beyond)
WORKER_THREADS = 2  # the page's own pool: never the stream's (asyncio's default) one
MAX_HISTORY_REQUESTS = 2  # history requests at once (503 + Retry-After beyond)
HISTORY_RETRY_AFTER_S = 5
LOGIN_FAILURE_DELAY_S = 0.5  # slows guessing a weak hand-made token
SSE_HEARTBEAT_S = 15.0
SSE_POLL_S = 0.5
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")
SECURITY_HEADERS = {
    # No inline script or style anywhere: everything comes from /static.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; object-src 'none'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it Chromium sends `Origin: null` on same-origin form POSTs,
    # which the origin check must refuse. same-origin sends nothing to other sites.
    "Referrer-Policy": "same-origin",
}

AckHook = Callable[[str, str, str], Awaitable[dict[str, Any]]]
"""(sensor, by, note) -> the recorded action; see StreamService.operator_action."""


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the `refused` counter it goes to, if any
        self.headers = headers or {}  # sent with the error page (e.g. Retry-After)


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class EvidenceServer:
    """Serves `state`; `start()` binds, `close()` stops (open SSE streams end too).

    `token` is required (the service generates one when none is configured); `allowed_hosts`
    adds Host names to accept besides the bound address and loopback names; `public_url`
    is the page's address behind a proxy (its host and origin are accepted too); the
    connections of `proxies` (IP addresses) count only toward the total limit.
    """

    def __init__(self, state: EvidenceState, host: str = "127.0.0.1", port: int = 0, *,
                 token: str, ack: AckHook | None = None, public_url: str | None = None,
                 allowed_hosts: tuple[str, ...] = (), proxies: tuple[str, ...] = ()) -> None:
        if not token:
            raise ValueError("the evidence page needs a token")
        self.state = state
        self.host = host
        self.port = port
        self.token = token
        self.ack = ack
        self.public_url = public_url
        self.allowed_hosts = allowed_hosts
        self.hosts = HostPolicy(host, port, public_url, allowed_hosts)
        self.sessions = Sessions()
        self.requests = 0
        self.errors = 0
        self.refused: Counter[str] = Counter()  # by reason: host, origin, csrf, ...
        self.header_timeout_s = HEADER_TIMEOUT_S
        self.body_timeout_s = BODY_TIMEOUT_S
        self.max_connections = MAX_CONNECTIONS
        self.max_connections_per_peer = MAX_CONNECTIONS_PER_PEER
        self.proxies = frozenset(_address(p) for p in proxies)
        self.max_history_requests = MAX_HISTORY_REQUESTS
        self.connections = OpenConnections()
        self._history_busy = 0
        # Pages render in threads of their own: on asyncio's default pool they would
        # queue in front of the stream's batch processing (service.py's to_thread).
        self._pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="evidence-page")
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()
        self._static = {name: (resources.files("ballpass.stream.web") / "static" / name)
                        .read_bytes() for name in ("style.css", "app.js")}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def counters(self) -> dict[str, Any]:
        """For the stream's status: requests, errors, refusals by reason, sessions."""
        return {"requests": self.requests, "errors": self.errors,
                "refused": dict(self.refused), "sessions": len(self.sessions)}

    async def start(self) -> None:
        self._server = await start_server(self._connection, self.host, self.port,
                                          limit=MAX_LINE)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.hosts.port = self.port
        log.info(kv("evidence_page_listening", url=self.url))

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _work(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the page's own threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args))

    def _refuse(self, reason: str, status: int, message: str, path: str,
                writer: asyncio.StreamWriter) -> HttpError:
        self.refused[reason] += 1
        log.warning(kv("evidence_page_refused", reason=reason, status=status, path=path,
                       peer=writer.get_extra_info("peername"), detail=message))
        return HttpError(status, message)

    # --- one connection --------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        with self.connections.hold(peer):
            await self._connection_held(peer, reader, writer)

    async def _connection_held(self, peer: str, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        try:
            # Per address too: one client alone must not hold every connection.
            busy = self.connections.busy(
                peer, self.max_connections,
                None if _address(peer) in self.proxies else self.max_connections_per_peer)
            if busy is not None:
                self._refuse("connections", 503, busy, "-", writer)
                self._respond(writer, 503, pages.error_page(503, busy))
                await writer.drain()
                return
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except Exception as e:  # a bug in a page must not take the stream down
            self.errors += 1
            log.exception(kv("evidence_page_error", reason=e))
            with contextlib.suppress(Exception):
                self._respond(writer, 500, pages.error_page(500, "internal error; see the "
                                                            "stream's log"))
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_head(self, reader: asyncio.StreamReader
                         ) -> tuple[str, urllib.parse.SplitResult, dict[str, str], list[str]]:
        """Request line and headers; HttpError for anything malformed or too big/slow."""
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.header_timeout_s):
                while True:
                    raw = await reader.readuntil(b"\n")
                    if raw in (b"\r\n", b"\n"):
                        if not lines:
                            continue  # tolerated: blank lines before the request line
                        break
                    lines.append(raw.decode("latin-1").rstrip("\r\n"))
                    if len(lines) > MAX_HEADER_LINES + 1:
                        raise HttpError(431, f"more than {MAX_HEADER_LINES} header lines",
                                        "header_count")
        except TimeoutError:
            raise HttpError(408, f"request head not complete within "
                                 f"{self.header_timeout_s:g} s", "slow_head") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"a request or header line is longer than {MAX_LINE} "
                                 "bytes", "line_too_long") from None
        except asyncio.IncompleteReadError as e:
            if not lines and not e.partial:
                raise  # connected and closed without a byte: nothing to answer
            raise HttpError(400, "connection closed inside the request head",
                            "truncated") from None
        parts = lines[0].split() if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "bad request line", "request_line")
        try:
            url = urllib.parse.urlsplit(parts[1])
        except ValueError:  # "http://[x/": an unclosed IPv6 literal, say
            raise HttpError(400, "bad request target", "request_line") from None
        headers: dict[str, str] = {}
        dup: list[str] = []
        for h in lines[1:]:
            name, colon, value = h.partition(":")
            name = name.strip().lower()
            if not colon or not name or name != name.split()[0]:
                raise HttpError(400, f"bad header line {h[:40]!r}", "header_line")
            if name in headers:
                dup.append(name)
                headers[name] = headers[name] + "," + value.strip()
            else:
                headers[name] = value.strip()
        return parts[0], url, headers, dup

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        head = True
        try:
            method, url, headers, dup = await self._read_head(reader)
            head = method == "HEAD"
            body = await self._read_body(reader, headers, dup)
        except HttpError as e:
            self.refused[e.reason or "bad_request"] += 1
            log.warning(kv("evidence_page_bad_request", status=e.status,
                           reason=e.reason, detail=str(e),
                           peer=writer.get_extra_info("peername")))
            self._respond(writer, e.status, pages.error_page(e.status, str(e)),
                          head=head and e.status != 400)
            await writer.drain()
            return
        self.requests += 1
        extra: dict[str, str] = {}
        try:
            path = url.path
            if not self.hosts.accepts(headers.get("host"),
                                      (writer.get_extra_info("sockname") or ("",))[0]):
                raise self._refuse("host", 403, f"Host {headers.get('host', '')[:80]!r} is "
                                   "not this page's address", path, writer)
            bearer = self._bearer(headers)
            if method == "POST" and bearer is None and not same_origin(
                    headers.get("origin"), headers.get("referer"), headers["host"],
                    self.public_url):
                raise self._refuse("origin", 403, "cross-origin or origin-less POST "
                                   "refused", path, writer)
            if path == "/login":
                status, ctype, login, more = await self._login(method, body, url.query,
                                                               writer)
                self._respond(writer, status, login, ctype, more, head=head)
                await writer.drain()
                return
            session: Session | None = None
            sid = self._cookie(headers)
            if bearer is not None:
                if not tokens_equal(bearer, self.token):
                    raise self._refuse("unauthorized", 401, "wrong bearer token", path,
                                       writer)
            elif not path.startswith("/static/"):
                session = self.sessions.get(sid)
                if session is None:
                    raise self._refuse("unauthorized", 401, "log in first", path, writer)
                if method == "POST":
                    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                    given = headers.get("x-csrf-token") or next(iter(form.get("csrf", [])),
                                                                None)
                    if not tokens_equal(given, session.csrf):
                        raise self._refuse("csrf", 403, "missing or wrong CSRF token",
                                           path, writer)
            if path == "/events" and method in ("GET", "HEAD"):
                await self._sse(writer, head)
                return
            if path == "/logout" and method == "POST":
                self.sessions.drop(sid)
                self._respond(writer, 303, "", headers={
                    "Location": "/login", "Set-Cookie": self._cookie_header("", 0)})
                await writer.drain()
                return
            csrf = session.csrf if session is not None else ""
            status, ctype, content, more = await self._route(method, path, body, csrf)
            self._respond(writer, status, content, ctype, {**extra, **more}, head=head)
        except HttpError as e:
            page = pages.login_page("", "log in to see the evidence page") \
                if e.status == 401 else pages.error_page(e.status, str(e))
            self._respond(writer, e.status, page, headers={**extra, **e.headers}, head=head)
        await writer.drain()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str],
                         dup: list[str]) -> bytes:
        if "transfer-encoding" in headers:
            raise HttpError(400, "Transfer-Encoding is not supported; send Content-Length",
                            "transfer_encoding")
        raw = headers.get("content-length")
        if raw is None:
            return b""
        values = {v.strip() for v in raw.split(",")}
        if len(values) != 1 or not CONTENT_LENGTH.fullmatch(next(iter(values))):
            raise HttpError(400, f"bad Content-Length {raw[:40]!r}", "content_length")
        length = int(next(iter(values)))
        if length > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes", "body_too_large")
        if not length:
            return b""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await reader.readexactly(length)
        except TimeoutError:
            raise HttpError(408, f"body not complete within {self.body_timeout_s:g} s",
                            "slow_body") from None

    @staticmethod
    def _bearer(headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    @staticmethod
    def _cookie(headers: dict[str, str]) -> str | None:
        for part in headers.get("cookie", "").replace(",", ";").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                return value
        return None

    def _cookie_header(self, value: str, max_age: int) -> str:
        secure = "; Secure" if (self.public_url or "").startswith("https://") else ""
        return (f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; "
                f"SameSite=Strict{secure}")

    async def _login(self, method: str, body: bytes, query: str,
                     writer: asyncio.StreamWriter
                     ) -> tuple[int, str, str, dict[str, str]]:
        html = "text/html; charset=utf-8"
        nxt = _local_path((urllib.parse.parse_qs(query).get("next") or ["/"])[0])
        if method in ("GET", "HEAD"):
            return 200, html, pages.login_page(nxt), {}
        if method != "POST":
            raise HttpError(405, f"method {method} not allowed",
                            headers={"Allow": "GET, HEAD, POST"})
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        nxt = _local_path((form.get("next") or [nxt])[0])
        if not tokens_equal(next(iter(form.get("token", [])), None), self.token):
            self._refuse("unauthorized", 401, "wrong token at login", "/login", writer)
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)
            return 401, html, pages.login_page(nxt, "wrong token"), {}
        sid, _ = self.sessions.create()
        log.info(kv("evidence_page_login", peer=writer.get_extra_info("peername"),
                    sessions=len(self.sessions)))
        return 303, html, "", {"Location": nxt, "Set-Cookie": self._cookie_header(
            sid, int(self.sessions.ttl_s))}

    async def _route(self, method: str, path: str, body: bytes, csrf: str
                     ) -> tuple[int, str, str | bytes, dict[str, str]]:
        html = "text/html; charset=utf-8"
        parts = [p for p in path.split("/") if p]
        ack = len(parts) == 3 and parts[0] == "sensor" and parts[2] == "ack"
        if method not in ("GET", "HEAD", "POST") or (method == "POST" and not ack):
            raise HttpError(405, f"method {method} not allowed here",
                            headers={"Allow": "POST" if ack else "GET, HEAD"})
        if not parts:
            return 200, html, pages.overview(self.state, csrf), {}
        if parts == ["api", "fleet"]:
            return 200, "application/json", dumps_json(self.state.fleet()), {}
        if parts[0] == "static" and len(parts) == 2 and parts[1] in self._static:
            suffix = parts[1][parts[1].rfind("."):]
            return 200, STATIC_TYPES[suffix], self._static[parts[1]], {
                "Cache-Control": "max-age=300"}
        if parts[0] == "sensor" and len(parts) >= 2:
            sensor = urllib.parse.unquote(parts[1])
            if sensor not in self.state.sensors:
                raise HttpError(404, f"no sensor {sensor!r} in this site")
            # The event loop appends to the alert and action deques: copy them here, as
            # iterating them in the worker thread meanwhile raises.
            if len(parts) == 2 and method != "POST":
                return 200, html, await self._work(pages.sensor_page, self.state, sensor,
                                                   csrf, pages.sensor_events(self.state,
                                                                             sensor)), {}
            if parts[2:] == ["fragment"] and method != "POST":
                return 200, html, await self._work(pages.sensor_fragment, self.state,
                                                   sensor, csrf,
                                                   pages.sensor_events(self.state, sensor)), {}
            if len(parts) in (3, 4) and parts[2] in ("history", "window") and method != "POST":
                return await self._history(sensor, parts[2], parts[3] if len(parts) == 4
                                           else None, csrf)
            if parts[2:] == ["ack"] and method == "POST":
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                note = (form.get("note") or [""])[0][:200]
                if self.ack is None:
                    action = {"t": time.time(), "sensor": sensor, "action": "ack",
                              "by": "web", "note": note}
                    self.state.record_action(action)
                else:
                    await self.ack(sensor, "web", note)
                return 303, html, "", {"Location": f"/sensor/{urllib.parse.quote(sensor)}"}
        raise HttpError(404, f"no page {path!r}")

    async def _history(self, sensor: str, what: str, entry: str | None, csrf: str
                       ) -> tuple[int, str, str | bytes, dict[str, str]]:
        """The window history (stream/history.py): `/sensor/ID/history` (JSON: the entries
        and the waterfalls), `/sensor/ID/history/ENTRY` (JSON: one window),
        `/sensor/ID/window/ENTRY` (the page that draws it)."""
        store = self.state.history
        if store is None:
            raise HttpError(404, "this stream keeps no window history")
        if what == "window":
            if entry is None or not any(e.id == entry for e in store.entries(sensor)):
                raise HttpError(404, f"no window {entry!r} in the history of {sensor!r}")
            return 200, "text/html; charset=utf-8", pages.window_page(sensor, entry, csrf), {}
        if self._history_busy >= self.max_history_requests:
            # Each reads up to WATERFALL_MAX_ROWS files: a few at once are all it takes
            # to keep the disk and the page's threads busy.
            self.refused["history_busy"] += 1
            raise HttpError(503, "the history is busy; try again shortly", "history_busy",
                            {"Retry-After": str(HISTORY_RETRY_AFTER_S)})
        self._history_busy += 1
        try:
            # Serialised in the worker too: the waterfalls make ~2 MB of JSON.
            body = await self._work(_history_body, store, sensor, entry)
        finally:
            self._history_busy -= 1
        if body is None:
            raise HttpError(404, f"no window {entry!r} in the history of {sensor!r}")
        return 200, "application/json", body, {}

    def _respond(self, writer: asyncio.StreamWriter, status: int, content: str | bytes,
                 ctype: str = "text/html; charset=utf-8",
                 headers: dict[str, str] | None = None, *, head: bool = False) -> None:
        """One response; `head` (a HEAD request) sends the headers only."""
        data = content.encode() if isinstance(content, str) else content
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                 "Connection: close", *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items())]
        if ctype.startswith("text/html") or ctype.startswith("application/json"):
            lines.append("Cache-Control: no-store")  # pages carry the CSRF token
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                     + (b"" if head else data))

    async def _sse(self, writer: asyncio.StreamWriter, head: bool) -> None:
        lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream",
                 "Cache-Control: no-cache", "Connection: keep-alive",
                 *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if head:
            await writer.drain()
            return
        writer.write(b"retry: 2000\n\n")
        await writer.drain()
        version = -1
        last = time.monotonic()
        while not self._closing.is_set():
            if self.state.version != version:
                version = self.state.version
                writer.write(b"data: " + dumps_json(self.state.fleet()).encode() + b"\n\n")
                await writer.drain()
                last = time.monotonic()
            elif time.monotonic() - last >= SSE_HEARTBEAT_S:
                writer.write(b": keep-alive\n\n")
                await writer.drain()
                last = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), SSE_POLL_S)


def history_json(store: Any, sensor: str, entry: str | None) -> dict[str, Any] | None:
    """The JSON of the history endpoints (None: no such entry, or it does not read)."""
    if entry is None:
        # One read of each file for both waterfalls (and never of its raw samples).
        waterfalls = store.waterfalls(sensor, keys=("amp_g", "env_amp_g"))
        return {"sensor": sensor,
                "entries": [{"id": e.id, "t": e.t0_ns / 1e9, "reason": e.reason,
                             "bytes": e.size} for e in store.entries(sensor)],
                "waterfall": waterfalls["amp_g"],
                "envelope_waterfall": waterfalls["env_amp_g"]}
    data = store.load(sensor, entry)
    if data is None:
        return None
    lo, hi = decimate_minmax(data["samples"])
    fs = float(data["meta"].get("fs_hz") or 0.0)
    out: dict[str, Any] = {"id": entry, "meta": data["meta"], "n_samples": int(
        data["samples"].size), "duration_s": data["samples"].size / fs if fs > 0 else None,
        "wave_min_g": lo, "wave_max_g": hi}
    for k in ("freq_hz", "amp_g", "env_freq_hz", "env_amp_g"):
        if k in data:
            out[k] = [round(float(v), 7) for v in data[k]]
    return out


def _history_body(store: Any, sensor: str, entry: str | None) -> str | None:
    data = history_json(store, sensor, entry)
    return None if data is None else dumps_json(data)


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None (JSON has no NaN; JSON.parse refuses it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps_json(data: Any) -> str:
    """JSON a browser parses: non-finite numbers become null."""
    return json.dumps(_finite(data), allow_nan=False)


def _local_path(value: str) -> str:
    """`value` if it is a path on this site (for the redirect after login), else "/".

    Printable ASCII only: browsers drop tabs and newlines inside a URL ("/\\t/evil" is
    "//evil", another site), and the Location header is Latin-1.
    """
    if not value.startswith("/") or value.startswith("//") or "\\" in value \
            or not (value.isascii() and value.isprintable()):
        return "/"
    return value


def _address(text: str) -> str:
    """An IP address in one spelling (an IPv4 peer of a dual-stack socket is ::ffff:a.b.c.d)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
