"""What a message taken from the broker is, by its topic (docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ballpass import topics

STATUS_SUBSCRIPTION = f"{topics.PREFIX}/+/+/status"
COMMAND_SUBSCRIPTION = f"{topics.PREFIX}/+/command"  # operator actions
TACHO_SUBSCRIPTION = f"{topics.PREFIX}/+/+/+/tacho"  # shaft speed {"t_ns", "shaft_hz"}
SUBSCRIPTIONS = (topics.WINDOW_SUBSCRIPTION, STATUS_SUBSCRIPTION, COMMAND_SUBSCRIPTION,
                 TACHO_SUBSCRIPTION)
"""Everything the stream reads, all at QoS 1."""


class Route(Enum):
    WINDOW = "window"
    TACHO = "tacho"
    STATUS = "status"
    COMMAND = "command"
    OTHER = "other"  # a topic of none of these shapes (refused as a window topic)


@dataclass(frozen=True)
class Routed:
    route: Route
    site: str = ""
    gateway: str = ""
    sensor: str = ""


def route(topic: str) -> Routed:
    """Classify `topic`; ids are checked against the id pattern for windows and tacho."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != topics.PREFIX:
        return Routed(Route.OTHER)
    if len(parts) == 4 and parts[3] == "command":
        return Routed(Route.COMMAND, site=parts[2])
    if len(parts) == 5 and parts[4] == "status":
        return Routed(Route.STATUS, site=parts[2], gateway=parts[3])
    where = topics.parse_sensor_topic(topic)
    if where is not None and where.leaf in ("window", "tacho"):
        return Routed(Route(where.leaf), where.site, where.gateway, where.sensor)
    return Routed(Route.OTHER)
