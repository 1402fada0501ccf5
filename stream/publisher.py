"""What the stream tells people and other programs after a batch is written.

Each sensor's latest diagnosis of the batch goes to its retained `diagnosis` topic; every
alert transition goes to the site's `alerts` topic and to the webhook routes. A failed MQTT
publish is logged and not retried: diagnoses are re-published with the next window, and
alerts still reach people through the webhooks (which persist and retry on their own).

A batch without alerts has its diagnoses published in the background while the stream
handles the next batch (waiting for PUBACKs was 43 % of the stream's time per window,
BENCHMARKS.md "End to end"). One batch's at a time: the next batch's publish waits for
them first, so a sensor's retained diagnosis is never overtaken by an older one. A batch
with alerts publishes its diagnoses, then its alerts, before it returns: MQTT readers see
the diagnosis before the alert it explains, and a cluster worker's alert is stored
before the window that raised it is acknowledged (stream/cluster/source.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ballpass import topics
from ballpass.log import kv
from ballpass.stream.counters import StreamCounters
from ballpass.stream.messages import diagnosis_message
from ballpass.stream.mqtt_source import Source
from ballpass.stream.pipeline import BatchOutput, Result
from ballpass.stream.sinks.webhook import WebhookSender

log = logging.getLogger(__name__)


def latest_diagnoses(output: BatchOutput) -> dict[str, tuple[Result, dict[str, Any], int]]:
    """Per sensor: its last diagnosed result of the batch, that result's diagnosis JSON and
    how many of its windows the batch diagnosed. Only the last one is built: it is the one
    published (retained) and shown."""
    last: dict[str, Result] = {}
    count: dict[str, int] = {}
    for r in output.results:
        if r.diagnosis is not None:
            last[r.incoming.sensor] = r
            count[r.incoming.sensor] = count.get(r.incoming.sensor, 0) + 1
    return {s: (r, diagnosis_message(r), count[s]) for s, r in last.items()}


class Publisher:
    def __init__(self, source: Source, webhooks: WebhookSender | None,
                 counters: StreamCounters) -> None:
        """`webhooks` None: alerts reach the webhook routes another way (a cluster worker
        hands them over through the ALERTS stream, stream/cluster/source.py)."""
        self.source = source
        self.webhooks = webhooks
        self.counters = counters
        self._pending: asyncio.Task[None] | None = None

    async def publish(self, latest: dict[str, tuple[Result, dict[str, Any], int]],
                      alerts: list[dict[str, Any]]) -> None:
        """The batch's diagnoses and alerts (see the module docstring for when it returns
        before the diagnoses are out)."""
        await self.flush()
        if not alerts:
            if latest:
                self._pending = asyncio.create_task(self._diagnoses(latest),
                                                    name="publish-diagnoses")
            return
        await self._diagnoses(latest)
        for alert in alerts:
            await self.source.publish(topics.alerts(alert["site"]), json.dumps(alert))
        self.send_alerts(alerts)

    async def flush(self) -> None:
        """Wait until the diagnoses handed to the background are out (or failed, logged)."""
        task, self._pending = self._pending, None
        if task is None:
            return
        try:
            await task
        except Exception as e:  # a source's publish logs and returns False; this is a bug
            log.error(kv("publish_failed", what="diagnoses", reason=repr(e)))

    async def _diagnoses(self, latest: dict[str, tuple[Result, dict[str, Any], int]]) -> None:
        if not latest:
            return
        if not self.source.connected:
            log.warning(kv("publish_failed", what="diagnoses", count=len(latest),
                           reason="not connected"))
            return
        # Together, not one after the other: each publish waits for its PUBACK, and in
        # turn that was a broker round trip per sensor of the batch.
        await asyncio.gather(*(self.source.publish(
            topics.diagnosis(message["site"], message["gateway"], sensor),
            json.dumps(message), retain=True) for sensor, (_, message, _) in latest.items()))

    def send_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Count, log and hand each alert to the webhook routes."""
        for alert in alerts:
            if alert["status"] == "firing":
                self.counters.alerts_fired += 1
            else:
                self.counters.alerts_resolved += 1
            log.info(kv("alert", status=alert["status"], sensor=alert["sensor"],
                        diagnosis=alert["diagnosis"], alert_id=alert["alert_id"]))
            if self.webhooks is not None:
                self.webhooks.submit(alert)
