"""A small HTTP/1.1 server on asyncio streams for the evidence page (no extra dependency).

Routes: `/` fleet overview, `/events` server-sent events (the fleet as JSON, on every
change, a comment every 15 s otherwise), `/api/fleet`, `/sensor/{id}` and its live
`/fragment`, `POST /sensor/{id}/ack` (operator acknowledge), `/static/*`.

It binds to loopback unless configured otherwise. With a token every request must carry
it (`Authorization: Bearer …`, `?token=…`, which also sets a cookie, or that cookie);
otherwise 401. An unknown sensor is a 404 page. A failing request is logged and answered
500; the stream is never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from ballpass.log import kv
from ballpass.stream.web import pages
from ballpass.stream.web.state import EvidenceState

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_HEADER_LINES = 100
SSE_HEARTBEAT_S = 15.0
SSE_POLL_S = 0.5
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
COOKIE = "bp_token"

AckHook = Callable[[str, str, str], Awaitable[dict[str, Any]]]
"""(sensor, by, note) -> the recorded action; see StreamService.operator_action."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error"}


class EvidenceServer:
    """Serves `state`; `start()` binds, `close()` stops (open SSE streams end too)."""

    def __init__(self, state: EvidenceState, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, ack: AckHook | None = None) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.token = token
        self.ack = ack
        self.requests = 0
        self.errors = 0
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()
        self._static = {name: (resources.files("ballpass.stream.web") / "static" / name)
                        .read_bytes() for name in ("style.css", "app.js")}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  limit=MAX_BODY)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(kv("evidence_page_listening", url=self.url, token=bool(self.token)))

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # --- one connection --------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError):
            pass  # the client went away or sent garbage: nothing to answer
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

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        line = await asyncio.wait_for(reader.readline(), 10)
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            self._respond(writer, 400, pages.error_page(400, "bad request line"))
            return
        method, target, _ = parts
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            h = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1")
            if h in ("\r\n", "\n", ""):
                break
            name, _, value = h.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._respond(writer, 413, pages.error_page(413, "body too large"))
            return
        body = await reader.readexactly(length) if length else b""
        self.requests += 1
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query)
        extra: dict[str, str] = {}
        try:
            if self.token is not None:
                given = self._given_token(headers, query)
                if given is None or not hmac.compare_digest(given.encode(),
                                                            self.token.encode()):
                    log.warning(kv("evidence_page_unauthorized", path=url.path,
                                   peer=writer.get_extra_info("peername")))
                    raise HttpError(401, "a valid token is required "
                                         "(?token=… or Authorization: Bearer …)")
                if "token" in query:
                    extra["Set-Cookie"] = (f"{COOKIE}={urllib.parse.quote(self.token)}; "
                                           "Path=/; HttpOnly; SameSite=Strict")
            if url.path == "/events" and method == "GET":
                await self._sse(writer, extra)
                return
            status, ctype, content, more = await self._route(method, url.path, body)
            self._respond(writer, status, content, ctype, {**extra, **more})
        except HttpError as e:
            self._respond(writer, e.status, pages.error_page(e.status, str(e)), headers=extra)
        await writer.drain()

    def _given_token(self, headers: dict[str, str], query: dict[str, list[str]]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        if query.get("token"):
            return query["token"][0]
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return urllib.parse.unquote(value)
        return None

    async def _route(self, method: str, path: str, body: bytes
                     ) -> tuple[int, str, str | bytes, dict[str, str]]:
        html = "text/html; charset=utf-8"
        parts = [p for p in path.split("/") if p]
        if method not in ("GET", "HEAD", "POST"):
            raise HttpError(405, f"method {method} not allowed")
        if method == "POST" and not (len(parts) == 3 and parts[0] == "sensor"
                                     and parts[2] == "ack"):
            raise HttpError(405, "only acknowledge accepts POST")
        if not parts:
            return 200, html, pages.overview(self.state), {}
        if parts == ["api", "fleet"]:
            return 200, "application/json", json.dumps(self.state.fleet()), {}
        if parts[0] == "static" and len(parts) == 2 and parts[1] in self._static:
            suffix = parts[1][parts[1].rfind("."):]
            return 200, STATIC_TYPES[suffix], self._static[parts[1]], {
                "Cache-Control": "max-age=300"}
        if parts[0] == "sensor" and len(parts) >= 2:
            sensor = urllib.parse.unquote(parts[1])
            if sensor not in self.state.sensors:
                raise HttpError(404, f"no sensor {sensor!r} in this site")
            if len(parts) == 2:
                return 200, html, await asyncio.to_thread(pages.sensor_page, self.state,
                                                          sensor), {}
            if parts[2:] == ["fragment"]:
                return 200, html, await asyncio.to_thread(pages.sensor_fragment, self.state,
                                                          sensor), {}
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

    def _respond(self, writer: asyncio.StreamWriter, status: int, content: str | bytes,
                 ctype: str = "text/html; charset=utf-8",
                 headers: dict[str, str] | None = None) -> None:
        data = content.encode() if isinstance(content, str) else content
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                "Connection: close", "X-Content-Type-Options: nosniff",
                "Content-Security-Policy: default-src 'self'; script-src 'self' "
                "'unsafe-inline'; style-src 'self' 'unsafe-inline'"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    async def _sse(self, writer: asyncio.StreamWriter, extra: dict[str, str]) -> None:
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Cache-Control: no-cache",
                "Connection: keep-alive", *(f"{k}: {v}" for k, v in extra.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\nretry: 2000\n\n").encode("latin-1"))
        await writer.drain()
        version = -1
        last = time.monotonic()
        while not self._closing.is_set():
            if self.state.version != version:
                version = self.state.version
                writer.write(b"data: " + json.dumps(self.state.fleet()).encode() + b"\n\n")
                await writer.drain()
                last = time.monotonic()
            elif time.monotonic() - last >= SSE_HEARTBEAT_S:
                writer.write(b": keep-alive\n\n")
                await writer.drain()
                last = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), SSE_POLL_S)
