"""MQTT topics of contract v1 (docs/topics.md): `bp/v1/{site}/{gateway}/...`."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "bp/v1"
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
WINDOW_SUBSCRIPTION = f"{PREFIX}/+/+/+/window"
SHARED_WINDOW_SUBSCRIPTION = f"$share/ballpass/{WINDOW_SUBSCRIPTION}"


def valid_id(value: str) -> bool:
    """True when `value` is a valid site, gateway or sensor id."""
    return ID_PATTERN.fullmatch(value) is not None


def window(site: str, gateway: str, sensor: str) -> str:
    return f"{PREFIX}/{site}/{gateway}/{sensor}/window"


def tacho(site: str, gateway: str, sensor: str) -> str:
    return f"{PREFIX}/{site}/{gateway}/{sensor}/tacho"


def diagnosis(site: str, gateway: str, sensor: str) -> str:
    return f"{PREFIX}/{site}/{gateway}/{sensor}/diagnosis"


def status(site: str, gateway: str) -> str:
    return f"{PREFIX}/{site}/{gateway}/status"


def config(site: str, gateway: str) -> str:
    return f"{PREFIX}/{site}/{gateway}/config"


def alerts(site: str) -> str:
    return f"{PREFIX}/{site}/alerts"


@dataclass(frozen=True)
class SensorTopic:
    site: str
    gateway: str
    sensor: str
    leaf: str


def parse_sensor_topic(topic: str) -> SensorTopic | None:
    """Split `bp/v1/site/gateway/sensor/leaf`; None when the topic is not of that shape."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    site, gateway, sensor, leaf = parts[2:]
    if not (valid_id(site) and valid_id(gateway) and valid_id(sensor)):
        return None
    return SensorTopic(site, gateway, sensor, leaf)
