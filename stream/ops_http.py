"""A tiny HTTP endpoint for operations: `/healthz` (JSON) and `/metrics` (Prometheus text).

Read-only, GET and HEAD only, no state is changed through it, so it needs no token. It
binds loopback unless told otherwise (the address is parsed by `ballpass.listen.parse_listen`).
Requests are bounded (request line and headers, 8 KiB, 5 s; at most 32 connections at
once, 8 of them from one address, 503 beyond; 5 s to take the answer) so a slow or hostile
client cannot hold it (nor make `/livez` fail for the prober), nor use up the process's
file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from ballpass.listen import OpenConnections, start_server
from ballpass.log import kv

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0  # for the client to take the answer (it may never read)
MAX_CONNECTIONS = 32  # open at once (503 beyond): each is a file descriptor of the stream
# Of them from one address: one client holding idle sockets must leave room for the
# liveness probe and the scraper, or `/livez` fails and a healthy stream is restarted.
MAX_CONNECTIONS_PER_PEER = 8
CLOSE_TIMEOUT_S = 2.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


HealthFn = Callable[[], tuple[bool, dict[str, object]]]
"""() -> (ready, details)."""


class OpsServer:
    """`/healthz` answers 200 when ready and 503 when not (the body says why); `/livez`
    answers 200 while the event loop runs; `/metrics` the exposition text."""

    def __init__(self, host: str, port: int, *, health: HealthFn,
                 metrics: Callable[[], bytes]) -> None:
        self.host, self.port = host, port
        self.health = health
        self.metrics = metrics
        self.max_connections = MAX_CONNECTIONS
        self.max_connections_per_peer = MAX_CONNECTIONS_PER_PEER
        self.write_timeout_s = WRITE_TIMEOUT_S
        self.refused = 0  # connections answered 503 for the caps
        self.connections = OpenConnections()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await start_server(self._connection, self.host, self.port,
                                          limit=MAX_REQUEST_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.host in ("0.0.0.0", "::"):
            log.warning(kv("ops_http_all_interfaces", url=self.url))
        log.info(kv("ops_http_listening", url=self.url))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT_S)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        with self.connections.hold(peer):
            await self._serve(peer, reader, writer)

    async def _serve(self, peer: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            busy = self.connections.busy(peer, self.max_connections,
                                         self.max_connections_per_peer)
            if busy is not None:
                self.refused += 1
                log.warning(kv("ops_http_refused", reason="connections", detail=busy,
                               open=self.connections.total, peer=peer))
                status, ctype, body, method = 503, "text/plain", f"{busy}\n".encode(), "GET"
            else:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                              REQUEST_TIMEOUT_S)
                status, ctype, body, method = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, ctype, body, method = 400, "text/plain", b"bad request\n", "GET"
        except Exception:  # never let a scrape take the service down
            log.exception(kv("ops_http_failed"))
            status, ctype, body, method = 500, "text/plain", b"internal error\n", "GET"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  500: "Internal Server Error", 503: "Service Unavailable"}[status]
        allow = "Allow: GET, HEAD\r\n" if status == 405 else ""  # RFC 9110: a 405 names them
        headers = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                   f"{allow}Connection: close\r\n\r\n").encode()
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(headers + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), self.write_timeout_s)
        # A client that never reads would hold the connection (and its descriptor).
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), self.write_timeout_s)

    def _answer(self, head: bytes) -> tuple[int, str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request line\n", "GET"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET or HEAD only\n", method
        if target == "/metrics":
            return 200, METRICS_TYPE, self.metrics(), method
        if target == "/livez":
            return 200, "application/json", b'{"live": true}\n', method
        if target == "/healthz":
            ready, details = self.health()
            body = (json.dumps(details, sort_keys=True) + "\n").encode()
            return (200 if ready else 503), "application/json", body, method
        return 404, "text/plain", b"not found: /healthz, /livez, /metrics\n", method
