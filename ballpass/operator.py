"""Operator actions on a sensor, sent to the stream over MQTT (docs/topics.md).

`ballpass sensor rebaseline|ack|false-alarm ID` publishes one JSON command, QoS 1, to
`bp/v1/{site}/command`; the stream applies it and logs it to InfluxDB (`actions`).
Core dependencies only (paho-mqtt), so an operator's laptop needs no stream extra.
"""

from __future__ import annotations

import getpass
import json
import os
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from ballpass import topics
from ballpass.config import BrokerConfig, Config, ConfigError

ACTIONS = {"rebaseline": "rebaseline", "ack": "ack", "false-alarm": "false_alarm"}
"""CLI verb -> command `action`."""


def command_topic(site: str) -> str:
    return f"{topics.PREFIX}/{site}/command"


def command(action: str, sensor: str, by: str | None = None, note: str = "") -> dict:
    """The command JSON: action, sensor, by (user), t (s since the epoch), id, note."""
    if action not in ACTIONS.values():
        raise ValueError(f"action: must be one of {', '.join(ACTIONS.values())}, got {action!r}")
    return {"action": action, "sensor": sensor, "by": by or _login_name(),
            "t": time.time(), "id": uuid.uuid4().hex, "note": note}


def _login_name() -> str:
    """The login name; `uid{N}` for a UID without a passwd entry (a container's
    arbitrary --user), where getpass.getuser() raises."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # KeyError up to 3.12, OSError from 3.13
        return f"uid{os.getuid()}"


def _check_tls_files(b: BrokerConfig) -> None:
    """ConfigError naming the `[broker]` key and path of a TLS file that cannot be
    opened: paho's own error (`[Errno 2] No such file or directory`) names neither."""
    errors = []
    for key, path in (("ca_file", b.ca_file), ("cert_file", b.cert_file),
                      ("key_file", b.key_file)):
        if path is None:
            continue
        try:
            with Path(path).open("rb"):
                pass
        except OSError as e:
            errors.append(f"broker.{key}: {path}: {e.strerror or type(e).__name__}")
    if errors:
        raise ConfigError(errors)


def publish(config: Config, payload: dict, timeout_s: float = 10.0) -> None:
    """Publish `payload` at QoS 1 with the `[broker]` credentials; raises OSError or
    RuntimeError when the broker cannot be reached or refuses the login or the command
    (its CONNACK or PUBACK reason, e.g. "Not authorized"), ConfigError when a TLS file
    of `[broker]` cannot be read."""
    b = config.broker
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"ballpass-operator-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    if b.username:
        c.username_pw_set(b.username, b.password())
    if b.tls:
        _check_tls_files(b)
        c.tls_set(ca_certs=str(b.ca_file) if b.ca_file else None,
                  certfile=str(b.cert_file) if b.cert_file else None,
                  keyfile=str(b.key_file) if b.key_file else None,
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
    connack: list[mqtt.ReasonCode] = []
    connected = threading.Event()
    puback: dict[int, mqtt.ReasonCode] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: mqtt.ReasonCode, _p: Any) -> None:
        connack.append(rc)
        connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: mqtt.ReasonCode, _p: Any) -> None:
        puback[mid] = rc

    c.on_connect = on_connect
    c.on_publish = on_publish
    where = f"broker {b.host}:{b.port}"
    c.connect(b.host, b.port, keepalive=30)
    c.loop_start()
    try:
        # Publish only after a successful CONNACK: a refused login otherwise surfaces as
        # paho's "The client is not currently connected", without the broker's reason.
        if not connected.wait(timeout_s):
            raise RuntimeError(f"{where} did not answer the connect within {timeout_s:g} s")
        if connack[0].is_failure:
            raise RuntimeError(f"{where} refused the login of {b.username or '(anonymous)'}: "
                               f"{str(connack[0]).lower()}")
        info = c.publish(command_topic(config.site.id), json.dumps(payload), qos=1)
        info.wait_for_publish(timeout=timeout_s)
        if not info.is_published():
            raise RuntimeError(f"{where} did not acknowledge the command "
                               f"within {timeout_s:g} s")
        # is_published() is also true for a PUBACK that refuses the message (MQTT 5: the
        # ACL denies the topic); only the reason code tells.
        rc = puback.get(info.mid)
        if rc is not None and rc.is_failure:
            raise RuntimeError(f"{where} refused the command on "
                               f"{command_topic(config.site.id)} for "
                               f"{b.username or '(anonymous)'}: {str(rc).lower()}")
    finally:
        c.disconnect()
        c.loop_stop()
