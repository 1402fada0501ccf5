"""The HTTP side of a gateway's metrics endpoint, as a plant's monitoring meets it: HEAD
answers like GET without the body, an unknown path is 404, another method 405 with an
``Allow`` header, and a scraper asking for OpenMetrics gets the text format 0.0.4.

The endpoint (gateway/metrics.py `start_metrics_server`) reads a real outbox, status and
publisher; the publisher is connected to a real mosquitto, so the scrape has live values."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_proc import wait_for

from ballpass.config import BrokerConfig
from ballpass.gateway.metrics import MetricsServer, start_metrics_server
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher
from ballpass.gateway.status import Status
from ballpass.services import Mosquitto, free_port

# What Prometheus 2.x/3.x sends by default (scrape_protocols: OpenMetrics first).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-"
                     "text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.fixture
def endpoint(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[int]:
    box = Outbox(tmp_path / "o.sqlite", 1 << 20, 3600)
    status = Status("k1", "gw1", ["s1"], box.counters)
    publisher = Publisher(BrokerConfig(host=mosquitto.host, port=mosquitto.port), "k1", "gw1",
                          box, status)
    publisher.start()
    port = free_port()
    server: MetricsServer = start_metrics_server(("127.0.0.1", port), box, status, publisher)
    try:
        assert publisher.wait_connected(10)
        yield port
    finally:
        server.shutdown()
        server.server_close()
        publisher.stop(drain_timeout_s=0)
        box.close()


def _request(port: int, method: str, path: str = "/metrics",
             headers: tuple[str, ...] = ()) -> tuple[str, dict[str, str], bytes]:
    """One raw HTTP/1.0 exchange: (status line, headers with lower-case names, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.0\r\n".encode()
                  + "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields, body


def test_head_answers_like_get_without_a_body(endpoint: int) -> None:
    """Before: 501 (http.server has no do_HEAD), so an uptime check by HEAD failed."""
    wait_for(lambda: b"ballpass_gateway_broker_connected{gateway=\"gw1\",site=\"k1\"} 1.0"
             in _request(endpoint, "GET")[2], 10, "connected in /metrics")
    for path in ("/metrics", "/", "/metrics?x=1"):
        got_status, got, body = _request(endpoint, "GET", path)
        head_status, head, head_body = _request(endpoint, "HEAD", path)
        assert got_status == head_status == "HTTP/1.0 200 OK", (got_status, head_status)
        assert head_body == b""
        assert int(got["content-length"]) == len(body) > 0
        # The same body size: nothing in this registry changes between the two, except the
        # process collector's CPU seconds and memory, whose digits may differ.
        assert abs(int(head["content-length"]) - len(body)) < 64
        for name in ("content-type", "cache-control"):
            assert head[name] == got[name], name
    # 404 by HEAD: the same headers as by GET, no body
    got_status, got, body = _request(endpoint, "GET", "/nope")
    head_status, head, head_body = _request(endpoint, "HEAD", "/nope")
    assert got_status == head_status == "HTTP/1.0 404 Not Found"
    assert head_body == b"" and head["content-length"] == got["content-length"] == \
        str(len(body))


def test_unknown_path_is_404_and_other_methods_405_with_allow(endpoint: int) -> None:
    status, fields, body = _request(endpoint, "GET", "/admin")
    assert status == "HTTP/1.0 404 Not Found"
    assert fields["content-type"] == "text/plain" and body == b"not found: /metrics\n"
    # Before: 501 Unsupported method (an HTML page), no Allow header. A known method and
    # one http.server knows nothing of get the same answer, also on an unknown path.
    for method, path in (("POST", "/metrics"), ("PUT", "/metrics"), ("DELETE", "/"),
                         ("OPTIONS", "/metrics"), ("PATCH", "/metrics"), ("BREW", "/nope")):
        status, fields, body = _request(endpoint, method, path)
        assert status == "HTTP/1.0 405 Method Not Allowed", (method, status)
        assert fields["allow"] == "GET, HEAD", method
        assert fields["content-type"] == "text/plain" and body == b"GET or HEAD only\n"
        assert fields["content-length"] == str(len(body))
    # a request line http.server cannot parse: 400, in text too
    status, fields, body = _request(endpoint, "GET", "/metrics HTTP/1.0 extra")
    assert status.startswith("HTTP/1.0 400"), status
    assert fields["content-type"] == "text/plain"


def test_an_openmetrics_accept_header_gets_text_0_0_4(endpoint: int) -> None:
    """The body is the text format 0.0.4 and says so, whatever the Accept header (before:
    `CONTENT_TYPE_LATEST`, `version=1.0.0` with prometheus-client 0.2x, unlike the
    stream's endpoint)."""
    plain = _request(endpoint, "GET")
    for accept in (PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0"):
        status, fields, body = _request(endpoint, "GET", headers=(f"Accept: {accept}",))
        assert status == "HTTP/1.0 200 OK"
        assert fields["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert not body.rstrip().endswith(b"# EOF")  # not OpenMetrics
        assert b"# TYPE ballpass_gateway_windows_published_total counter\n" in body
    assert plain[1]["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
