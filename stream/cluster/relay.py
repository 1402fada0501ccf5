"""Gateways' messages from mosquitto into JetStream, acknowledged to mosquitto only once
JetStream has stored them.

Why not NATS's own MQTT listener: its PUBACK to a QoS 1 publish does not wait for the
stream. Measured on a 3-node cluster (docs/scale-out.md): 60 windows published and
PUBACKed while the WINDOWS stream's leader was killed, 46 stored. A gateway deletes a
window from its outbox on PUBACK, so those 14 were lost. Here a window leaves mosquitto's
session only after JetStream's publish acknowledgement (stored on a majority of replicas).

One worker at a time relays (the `relay` lease in the leases bucket), with one MQTT client
id and a persistent session: the next holder resumes the session, and mosquitto redelivers
what the previous one had not acknowledged, in order. A message relayed twice (stored, then
the relay died before its MQTT acknowledgement) carries the same `Nats-Msg-Id` (a hash of
topic and payload) and is dropped by JetStream's de-duplication.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging

from nats.js import JetStreamContext

from ballpass import backoff, topics
from ballpass.config import Config
from ballpass.log import kv
from ballpass.stream.mqtt_source import Delivery, MqttSource
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop
from ballpass.stream.routing import SUBSCRIPTIONS, Route, route

log = logging.getLogger(__name__)

def message_id(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def relayable(topic: str) -> bool:
    """A topic whose subject a stream captures: a message on any other (say a site id
    with a dot) would be refused by JetStream forever and must not block the relay."""
    r = route(topic)
    if r.route in (Route.WINDOW, Route.TACHO):
        return True  # ids checked by `route`
    if r.route is Route.STATUS:
        return topics.valid_id(r.site) and topics.valid_id(r.gateway)
    return r.route is Route.COMMAND and topics.valid_id(r.site)


class Relay:
    """Copies every message of the site's subscriptions from mosquitto to JetStream."""

    def __init__(self, config: Config, js: JetStreamContext) -> None:
        stream = dataclasses.replace(config.stream,
                                     client_id=f"{config.stream.client_id}-relay")
        self.mqtt = MqttSource(config.broker, stream, SUBSCRIPTIONS)
        self.js = js
        self.counters = {"relayed": 0, "relay_duplicates": 0, "relay_retries": 0,
                         "relay_refused": 0}

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (the caller sets it when the relay lease is lost)."""
        self._stop = stop
        await self.mqtt.run(stop, self._relay)

    async def _relay(self, batch: list[Delivery]) -> None:
        for d in batch:
            payload = d.payload if isinstance(d.payload, bytes) else str(d.payload).encode()
            if not relayable(d.topic):
                self.counters["relay_refused"] += 1
                log.warning(kv("window_rejected", reason="topic", topic=d.topic,
                               detail="not a window, tacho, status or command topic of "
                               "valid ids: not relayed"))
                self.mqtt.ack(d)
                continue
            attempt = 0
            while not self._stop.is_set():
                try:
                    ack = await self.js.publish(
                        d.topic.replace("/", "."), payload,
                        headers={"Nats-Msg-Id": message_id(d.topic, payload)})
                    break
                except Exception as e:  # no JetStream answer (leader election, lost link)
                    attempt += 1
                    self.counters["relay_retries"] += 1
                    delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
                    log.warning(kv("relay_publish_failed", topic=d.topic, attempt=attempt,
                                   reason=repr(e), retry_in_s=round(delay, 1)))
                    await sleep_or_stop(self._stop, delay)
            else:
                return  # stopping: the rest stays in mosquitto's session, unacknowledged
            self.counters["relay_duplicates" if ack.duplicate else "relayed"] += 1
            self.mqtt.ack(d)
