"""Prometheus metrics of the stream (`/metrics`, docs/operations.md).

The counters are not kept twice: a collector reads the service's status (`StreamService.
status()`, the same numbers as the status file) at every scrape. Only what the status has
no place for is measured here: per-stage latency of each batch and the lag from a window's
capture to its write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STAGES = ("admit", "process", "write", "publish", "history")
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
# Status counters exported as `ballpass_stream_<name>_total`.
_COUNTERS = {
    "received": "window messages taken from the broker, duplicates included",
    "ingested": "distinct windows accepted for processing",
    "written": "windows whose points the database accepted",
    "spooled": "windows whose points the database refused (kept in the spool)",
    "dead_lettered": "window messages refused alone (kept in the dead-letter file)",
    "duplicates": "copies of windows already written or being written",
    "replayed": "windows redelivered after a crash: written again, counted once",
    "write_retries": "database write attempts retried",
    "alert_state_save_failures": "saves of the alert state the disk refused",
}
_GATEWAY_COUNTERS = ("captured", "published", "dropped", "replayed")


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        c = s["counters"]
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"ballpass_stream_{name}", doc, value=c[name])
        rejected = CounterMetricFamily("ballpass_stream_rejected",
                                       "messages refused, by reason", labels=["reason"])
        for reason, n in sorted(c["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        alerts = CounterMetricFamily("ballpass_stream_alerts", "alert transitions",
                                     labels=["status"])
        alerts.add_metric(["firing"], c["alerts_fired"])
        alerts.add_metric(["resolved"], c["alerts_resolved"])
        yield alerts
        hooks = CounterMetricFamily("ballpass_stream_webhook_deliveries",
                                    "alert deliveries by outcome", labels=["result"])
        hooks.add_metric(["delivered"], c["webhooks_delivered"])
        hooks.add_metric(["failed"], c["webhooks_failed"])
        yield hooks
        online = s.get("online") or {}
        commands = CounterMetricFamily("ballpass_stream_commands",
                                       "operator commands (well-formed JSON), by outcome",
                                       labels=["result"])
        repeated = online.get("commands_repeated", 0)
        rejected_commands = online.get("commands_rejected", 0)
        commands.add_metric(["applied"], online.get("commands", 0) - rejected_commands
                            - repeated)
        commands.add_metric(["rejected"], rejected_commands)
        commands.add_metric(["repeated"], repeated)
        yield commands
        yield GaugeMetricFamily("ballpass_stream_webhook_queue",
                                "alert deliveries waiting", value=c["webhooks_pending"])
        yield GaugeMetricFamily("ballpass_stream_mqtt_connected", "1 while subscribed",
                                value=int(bool(s["mqtt_connected"])))
        health = s["health"]
        yield GaugeMetricFamily("ballpass_stream_ready", "1 while /healthz says ready",
                                value=int(health["ready"]))
        yield GaugeMetricFamily("ballpass_stream_spool_bytes",
                                "size of the refused-points spool", value=health["checks"][
                                    "spool_bytes"])
        yield GaugeMetricFamily("ballpass_stream_deadletter_bytes",
                                "size of the dead-letter file",
                                value=health["checks"]["deadletter_bytes"])
        h = s.get("history")
        if h is not None:
            kept = CounterMetricFamily("ballpass_stream_history_kept",
                                       "windows kept in the history, by reason",
                                       labels=["reason"])
            for reason, n in sorted(h["kept"].items()):
                kept.add_metric([reason], n)
            yield kept
            pruned = CounterMetricFamily("ballpass_stream_history_pruned",
                                         "history entries removed, by bound",
                                         labels=["reason"])
            for reason in ("age", "size"):
                pruned.add_metric([reason], h["pruned"].get(reason, 0))
            yield pruned
            yield CounterMetricFamily("ballpass_stream_history_write_errors",
                                      "history entries that could not be written",
                                      value=h["write_errors"])
            yield CounterMetricFamily("ballpass_stream_history_corrupt",
                                      "history files that did not read", value=h["corrupt"])
            yield GaugeMetricFamily("ballpass_stream_history_bytes",
                                    "size of the window history on disk", value=h["bytes"])
            yield GaugeMetricFamily("ballpass_stream_history_entries",
                                    "windows in the history", value=h["entries"])
        if s.get("last_write_t") is not None:
            yield GaugeMetricFamily("ballpass_stream_last_write_timestamp_seconds",
                                    "Unix time of the last successful database write",
                                    value=s["last_write_t"])
        depth = GaugeMetricFamily("ballpass_gateway_outbox_queued",
                                  "windows in the gateway's outbox (its last status)",
                                  labels=["gateway"])
        online = GaugeMetricFamily("ballpass_gateway_online", "1 while the gateway is online",
                                   labels=["gateway"])
        totals = {k: CounterMetricFamily(f"ballpass_gateway_{k}", f"windows {k} (gateway "
                                         "status)", labels=["gateway"])
                  for k in _GATEWAY_COUNTERS}
        for gateway, status in sorted(s["gateways"].items()):
            online.add_metric([gateway], int(status.get("state") == "online"))
            counters = status.get("counters") or {}
            if "queued" in counters:
                depth.add_metric([gateway], counters["queued"])
            for k, family in totals.items():
                if k in counters:
                    family.add_metric([gateway], counters[k])
        yield depth
        yield online
        yield from totals.values()


class StreamMetrics:
    """One registry per service (several services can run in one test process)."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(status))
        self.stage_seconds = Histogram(
            "ballpass_stream_stage_seconds", "time a batch spends in each stage",
            ["stage"], buckets=_STAGE_BUCKETS, registry=self.registry)
        self.lag_seconds = Histogram(
            "ballpass_stream_window_lag_seconds",
            "from a window's first sample (gateway clock) to its write", buckets=_LAG_BUCKETS,
            registry=self.registry)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
