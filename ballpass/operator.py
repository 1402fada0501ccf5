"""Operator actions on a sensor, sent to the stream over MQTT (docs/topics.md).

`ballpass sensor rebaseline|ack|false-alarm ID` publishes one JSON command, QoS 1, to
`bp/v1/{site}/command`; the stream applies it and logs it to InfluxDB (`actions`).
Core dependencies only (paho-mqtt), so an operator's laptop needs no stream extra.
"""

from __future__ import annotations

import getpass
import json
import ssl
import time
import uuid

import paho.mqtt.client as mqtt

from ballpass import topics
from ballpass.config import Config

ACTIONS = {"rebaseline": "rebaseline", "ack": "ack", "false-alarm": "false_alarm"}
"""CLI verb -> command `action`."""


def command_topic(site: str) -> str:
    return f"{topics.PREFIX}/{site}/command"


def command(action: str, sensor: str, by: str | None = None, note: str = "") -> dict:
    """The command JSON: action, sensor, by (user), t (s since the epoch), id, note."""
    if action not in ACTIONS.values():
        raise ValueError(f"action: must be one of {', '.join(ACTIONS.values())}, got {action!r}")
    return {"action": action, "sensor": sensor, "by": by or getpass.getuser(),
            "t": time.time(), "id": uuid.uuid4().hex, "note": note}


def publish(config: Config, payload: dict, timeout_s: float = 10.0) -> None:
    """Publish `payload` at QoS 1 with the `[broker]` credentials; raises OSError or
    RuntimeError when the broker cannot be reached or refuses it."""
    b = config.broker
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"ballpass-operator-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    if b.username:
        c.username_pw_set(b.username, b.password())
    if b.tls:
        c.tls_set(ca_certs=str(b.ca_file) if b.ca_file else None,
                  certfile=str(b.cert_file) if b.cert_file else None,
                  keyfile=str(b.key_file) if b.key_file else None,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.connect(b.host, b.port, keepalive=30)
    c.loop_start()
    try:
        info = c.publish(command_topic(config.site.id), json.dumps(payload), qos=1)
        info.wait_for_publish(timeout=timeout_s)
        if not info.is_published():
            raise RuntimeError(f"broker {b.host}:{b.port} did not acknowledge the command "
                               f"within {timeout_s:g} s")
    finally:
        c.disconnect()
        c.loop_stop()
