"""Optional Prometheus endpoint of a gateway: ``ballpass gateway --metrics HOST:PORT``.

Imported only when ``--metrics`` is given, so a gateway without it never loads
prometheus-client (it is in the ``edge`` extra). Every value is read at scrape time from
the outbox, the status and the publisher (no second set of books that could drift):

windows captured/published/dropped/replayed (counters), outbox depth and bytes, broker
connected (gauge) and connects/disconnects/rejected, per-sensor fault and state, and the
gateway-level problems; docs/gateway.md, "Metrics", lists every series.

Labels ``site`` and ``gateway`` are on every series, so one Prometheus can scrape a fleet.
The process collector (`process_resident_memory_bytes`, CPU seconds) is included.

The server (`MetricsServer`) is this module's own, not prometheus-client's
`start_http_server`, which gives every connection a thread with no timeout and no cap: idle
clients held one thread and one file descriptor each until the gateway hit its descriptor
limit, and then MQTT and SQLite could not open files. Here a connection idle for
`CONNECTION_TIMEOUT_S` is closed, and beyond `MAX_CONNECTIONS` open connections in all
or `MAX_PER_PEER` from one address a new one gets a 503 and is closed at once
(``event=metrics_refused``, at most one line per `REFUSED_LOG_EVERY_S`). One request per
connection (HTTP/1.0), no keep-alive. GET and HEAD only (405 with ``Allow`` otherwise), on
``/metrics`` or ``/`` (404 otherwise); the text format 0.0.4 whatever the ``Accept``
header asks (`_Handler`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ballpass.gateway.outbox import Outbox
from ballpass.gateway.status import SENSOR_DISABLED, SENSOR_FAULT, SENSOR_OK, Status
from ballpass.listen import OpenConnections
from ballpass.log import kv

if TYPE_CHECKING:
    from ballpass.gateway.publisher import Publisher

log = logging.getLogger(__name__)

_P = "ballpass_gateway_"

MAX_CONNECTIONS = 16
"""Open connections to the endpoint in all; a scraper needs one (two for an HA pair)."""
MAX_PER_PEER = 4
"""Open connections from one address, so one client cannot take them all (on the default
loopback bind every local client is 127.0.0.1: the total still leaves room for remote
ones, and the timeout frees the local ones)."""
CONNECTION_TIMEOUT_S = 10.0
"""Socket timeout (s) of each connection: a read or write waiting longer closes it."""
REFUSED_LOG_EVERY_S = 60.0
"""At most one ``event=metrics_refused`` line per this many seconds (s)."""
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What every scrape gets, whatever its ``Accept`` header: `generate_latest` writes the
text format 0.0.4 (all names here are legacy-valid). Not prometheus-client's
`CONTENT_TYPE_LATEST`, which its 0.2x releases made ``version=1.0.0`` for the same bytes."""
ALLOWED_METHODS = ("GET", "HEAD")
PATHS = ("/", "/metrics")
ACCEPT_ERROR_PAUSE_S = 0.1
"""Pause (s) after a failed accept (EMFILE: out of file descriptors), which would otherwise
be retried at once by the accept loop, spinning a core."""


class GatewayCollector(Collector):
    """Reads one gateway's outbox, status and publisher at each scrape."""

    def __init__(self, box: Outbox, status: Status, publisher: Publisher) -> None:
        self.box, self.status, self.publisher = box, status, publisher
        self.labels = {"site": status.site, "gateway": status.gateway}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(_P + name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(_P + name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def collect(self) -> Iterator[Any]:
        counters = self.box.counters()
        for name, doc in (("captured", "windows captured into the outbox"),
                          ("published", "windows acknowledged by the broker (PUBACK)"),
                          ("dropped", "windows dropped (outbox full or too old, disk full)"),
                          ("replayed", "windows published late, with the historical flag")):
            yield self._counter(f"windows_{name}", doc, counters[name])
        yield self._gauge("outbox_queued", "windows in the outbox now", counters["queued"])
        yield self._gauge("outbox_bytes", "summed payload size in the outbox, bytes",
                          self.box.queued_bytes)
        yield self._gauge("outbox_max_bytes", "outbox size bound, bytes", self.box.max_bytes)
        yield self._gauge("broker_connected", "1 while connected to the broker",
                          1.0 if self.publisher.connected else 0.0)
        for name, doc in (("connects", "successful CONNACKs in this process"),
                          ("disconnects", "lost or closed broker connections"),
                          ("rejected", "PUBACKs with a failure reason (not authorised, quota)"),
                          ("refused", "windows deleted unsent: the broker closed the "
                                      "connection right after each, again and again")):
            yield self._counter(f"broker_{name}", doc, self.publisher.stats[name])
        sensors = self.status.sensors()
        fault = GaugeMetricFamily(_P + "sensor_fault", "1 while the sensor is faulty",
                                  labels=[*self.labels, "sensor"])
        state = GaugeMetricFamily(_P + "sensor_state", "1 for the sensor's current state",
                                  labels=[*self.labels, "sensor", "state"])
        base = list(self.labels.values())
        for sensor, info in sorted(sensors.items()):
            fault.add_metric([*base, sensor], 1.0 if info["state"] == SENSOR_FAULT else 0.0)
            for s in (SENSOR_OK, SENSOR_FAULT, SENSOR_DISABLED):
                state.add_metric([*base, sensor, s], 1.0 if info["state"] == s else 0.0)
        yield fault
        yield state
        problems = GaugeMetricFamily(_P + "problem", "1 per gateway-level problem",
                                     labels=[*self.labels, "problem"])
        for name in sorted(self.status.problems()):
            problems.add_metric([*base, name], 1.0)
        yield problems


class _Handler(BaseHTTPRequestHandler):
    """``GET /metrics`` (or ``/``): the registry in the Prometheus text format 0.0.4.

    HEAD answers as GET without the body (same status and headers, Content-Length of the
    body GET sends). Another path: 404; another method: 405 with ``Allow: GET, HEAD``
    (any method, known or not: the endpoint is read-only). Every answer is text/plain.
    The ``Accept`` header is not read: a scraper asking for OpenMetrics (Prometheus does,
    with text 0.0.4 as a fallback) gets text 0.0.4, as from the stream's endpoint."""

    server: MetricsServer

    def setup(self) -> None:
        super().setup()
        # Every read and write of this connection: an idle client is closed, not kept.
        self.connection.settimeout(self.server.timeout_s)

    def parse_request(self) -> bool:
        """The request line and headers parsed; any method but GET and HEAD is answered
        405 here (http.server would answer 501 to one without a ``do_`` method)."""
        if not super().parse_request():
            return False
        if self.command not in ALLOWED_METHODS:
            self._answer(405, b"GET or HEAD only\n",
                         extra=(("Allow", ", ".join(ALLOWED_METHODS)),))
            return False
        return True

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in PATHS:
            self._answer(404, b"not found: /metrics\n")
            return
        self._answer(200, generate_latest(self.server.registry), content_type=METRICS_TYPE)

    do_HEAD = do_GET  # `_answer` leaves the body out

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (400 bad request line, 414, 431, 505): text/plain
        like every other answer, not its HTML page."""
        self.close_connection = True
        self._answer(code, f"{message or self.responses.get(code, ('error',))[0]}\n"
                     .encode("latin-1", "replace"))

    def _answer(self, code: int, body: bytes, *, content_type: str = "text/plain",
                extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one stderr line per scrape is noise; refusals are logged by the server


class MetricsServer(HTTPServer):
    """An HTTP server with a thread per connection, capped: at most `max_total` open
    connections and `max_per_peer` per peer address (beyond: a 503, closed at once), each
    with a socket timeout of `timeout_s` seconds. Serve with `serve_forever` (a daemon
    thread); stop with `shutdown()` then `server_close()`."""

    # The listen backlog: socketserver's 5 would leave a burst of clients half-open in the
    # kernel (neither served nor refused) until the slots free up.
    request_queue_size = 64

    def __init__(self, listen: tuple[str, int], registry: CollectorRegistry, *,
                 max_total: int = MAX_CONNECTIONS, max_per_peer: int = MAX_PER_PEER,
                 timeout_s: float = CONNECTION_TIMEOUT_S) -> None:
        infos = socket.getaddrinfo(listen[0], listen[1], type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        self.address_family = family
        self.registry = registry
        self.max_total, self.max_per_peer, self.timeout_s = max_total, max_per_peer, timeout_s
        self.refused = 0  # connections refused (over a cap), in this process
        self._open = OpenConnections()
        self._lock = threading.Lock()  # OpenConnections is not thread-safe
        self._refused_logged_at: float | None = None
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open.total

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(ACCEPT_ERROR_PAUSE_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """On the accept thread: count the connection, refuse it over a cap, else hand it
        to a new thread (which un-counts it when done)."""
        peer = str(client_address[0])
        hold = self._open.hold(peer)
        with self._lock:
            hold.__enter__()
            why = self._open.busy(peer, self.max_total, self.max_per_peer)
            if why is not None:
                hold.__exit__(None, None, None)
        if why is not None:
            self._refuse(request, peer, why)
            return
        try:
            threading.Thread(target=self._serve, args=(request, client_address, hold),
                             name="metrics-conn", daemon=True).start()
        except RuntimeError:  # no thread to be had: refuse rather than fail the loop
            with self._lock:
                hold.__exit__(None, None, None)
            self._refuse(request, peer, "no thread")

    def _serve(self, request: Any, client_address: Any,
               hold: contextlib.AbstractContextManager[None]) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away, or idled past the timeout: closed below
        except Exception as e:  # a failed scrape must not end the thread unlogged
            log.warning(kv("metrics_request_failed", peer=client_address[0],
                           error=f"{type(e).__name__}: {e}"))
        finally:
            self.shutdown_request(request)
            with self._lock:
                hold.__exit__(None, None, None)

    def _refuse(self, request: socket.socket, peer: str, why: str) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            request.setblocking(False)  # never wait on a client that does not read
            request.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        self.shutdown_request(request)
        now = time.monotonic()
        if self._refused_logged_at is None or \
                now - self._refused_logged_at >= REFUSED_LOG_EVERY_S:
            self._refused_logged_at = now
            log.warning(kv("metrics_refused", peer=peer, reason=why,
                           refused_total=self.refused, open=self.open_connections))


def start_metrics_server(listen: tuple[str, int], box: Outbox, status: Status,
                         publisher: Publisher, *, max_total: int = MAX_CONNECTIONS,
                         max_per_peer: int = MAX_PER_PEER,
                         timeout_s: float = CONNECTION_TIMEOUT_S) -> MetricsServer:
    """Serve ``/metrics`` on `listen` (host, port) from a daemon thread; returns the
    server (call ``shutdown()`` and ``server_close()`` to stop). Limits: see
    `MetricsServer` (connections; `timeout_s` in s). OSError if the port cannot be
    bound."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(box, status, publisher))
    ProcessCollector(registry=registry)
    server = MetricsServer(listen, registry, max_total=max_total, max_per_peer=max_per_peer,
                           timeout_s=timeout_s)
    threading.Thread(target=server.serve_forever, name="metrics-accept", daemon=True).start()
    return server
