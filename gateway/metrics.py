"""Optional Prometheus endpoint of a gateway: ``ballpass gateway --metrics HOST:PORT``.

Imported only when ``--metrics`` is given, so a gateway without it never loads
prometheus-client (it is in the ``edge`` extra). Every value is read at scrape time from
the outbox, the status and the publisher (no second set of books that could drift):

windows captured/published/dropped/replayed (counters), outbox depth and bytes, broker
connected (gauge) and connects/disconnects/rejected, per-sensor fault and state, and the
gateway-level problems; docs/gateway.md, "Metrics", lists every series.

Labels ``site`` and ``gateway`` are on every series, so one Prometheus can scrape a fleet.
The process collector (`process_resident_memory_bytes`, CPU seconds) is included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ballpass.gateway.outbox import Outbox
from ballpass.gateway.status import SENSOR_DISABLED, SENSOR_FAULT, SENSOR_OK, Status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ballpass.gateway.publisher import Publisher

_P = "ballpass_gateway_"


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
                          ("rejected", "PUBACKs with a failure reason (not authorised, quota)")):
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


def start_metrics_server(listen: tuple[str, int], box: Outbox, status: Status,
                         publisher: Publisher) -> WSGIServer:
    """Serve ``/metrics`` on `listen` (host, port) from a daemon thread; returns the
    server (call ``shutdown()`` and ``server_close()`` to stop). OSError if the port
    cannot be bound."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(box, status, publisher))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(listen[1], addr=listen[0], registry=registry)
    return server
