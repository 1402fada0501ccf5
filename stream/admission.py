"""Admission of window messages: decode, check, bind to the config, de-duplicate.

A window is admitted only when

- it decodes (`ballpass.wire.decode` checks every header field and the CRC);
- its sensor is in the site config *and* the topic names that sensor's own site and
  gateway: a gateway's credentials let it publish below its own prefix only (the broker's
  ACL), and this check stops it from speaking for another gateway's sensor there;
- it came at QoS 1, as the topic contract has windows (docs/topics.md);
- its kind is its sensor's configured kind (acceleration or temperature: the stream
  handles no other), and an acceleration window is one the kernels take: at least
  `MIN_ACCELERATION_SAMPLES` samples at a rate within `ACCELERATION_FS_HZ`;
- every header value can be stored: `seq` fits InfluxDB's signed 64-bit integer, `t0_ns`
  lies between `T0_MIN_NS` and `MAX_CLOCK_AHEAD_S` past the stream's clock;
- it was not written before: de-dup is on (site, gateway, sensor, seq), so a window can only
  ever shadow one of its own gateway's windows.

A refused window is counted by reason, logged, kept in the dead-letter file and
acknowledged: it would be refused again on every redelivery.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from ballpass import topics, wire
from ballpass.config import WINDOW_SAMPLES_MIN, Config
from ballpass.log import kv
from ballpass.stream.counters import StreamCounters
from ballpass.stream.deadletter import DeadLetters
from ballpass.stream.dedup import Deduplicator
from ballpass.stream.pipeline import Incoming

log = logging.getLogger(__name__)

M = TypeVar("M")  # a broker message, acknowledged by whoever took it

INT64_MAX = 2**63 - 1
T0_MIN_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: older is a gateway clock never set
MAX_CLOCK_AHEAD_S = 86_400.0  # a day ahead of the stream's clock: a gateway clock gone wrong
# The least the feature kernels take (stream/features.py `extract`), also the least the
# config allows: a shorter window failed its whole batch, then ran again window by window.
MIN_ACCELERATION_SAMPLES = WINDOW_SAMPLES_MIN
# Rates no accelerometer has (fs_hz 1e-200 overflowed the kernels). Not the configured
# fs_hz: a gateway applies a new fs_hz at a reload, the stream only at a restart
# (docs/operations.md), so a window may rightly differ from the stream's config.
ACCELERATION_FS_HZ = (1.0, 10e6)

WindowKey = tuple[str, str, str, int]  # (site, gateway, sensor, seq)


class Skip(Enum):
    """Why `admit` hands a window message on for no processing."""

    ACK = "ack"  # refused, or a duplicate of a written window: acknowledge it now
    HOLD = "hold"  # a copy of a window being processed: acknowledged once that is written


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


class Admission(Generic[M]):
    """Decides which window messages are processed; holds their broker messages until written."""

    def __init__(self, config: Config, counters: StreamCounters, dead_letters: DeadLetters,
                 dedup: Deduplicator | None = None) -> None:
        self.site = config.site.id
        self.gateway_of = {sid: g.id for sid, (g, _) in config.sensor_index().items()}
        self.kind_of = {sid: wire.SENSOR_KINDS[s.kind]
                        for sid, (_, s) in config.sensor_index().items()}
        self.counters = counters
        self.dead_letters = dead_letters
        self.dedup = dedup or Deduplicator()
        # Each window being processed -> the broker messages carrying it (copies included).
        self._pending: dict[WindowKey, list[M]] = {}

    def binding(self, site: str, gateway: str, sensor: str) -> Refusal | None:
        """Why `sensor` may not be reported under `site`/`gateway`, or None if it may."""
        owner = self.gateway_of.get(sensor)
        if owner is None:
            return Refusal("unknown_sensor", f"sensor {sensor!r} is not in the site config")
        if site != self.site:
            return Refusal("wrong_site", f"sensor {sensor!r} belongs to site {self.site!r}, "
                                         f"not {site!r}")
        if gateway != owner:
            return Refusal("wrong_gateway", f"sensor {sensor!r} belongs to gateway "
                                            f"{owner!r}, not {gateway!r}")
        return None

    def gateway_binding(self, site: str, gateway: str) -> Refusal | None:
        """Why `gateway` may not report under `site` (a status), or None if it may."""
        if site != self.site:
            return Refusal("wrong_site", f"gateway {gateway!r} is not of site {self.site!r}, "
                                         f"but {site!r}")
        if gateway not in self.gateway_of.values():
            return Refusal("unknown_gateway", f"gateway {gateway!r} is not in the site config")
        return None

    def check(self, site: str, gateway: str, sensor: str,
              payload: bytes) -> wire.Window | Refusal:
        """The decoded window of one window message, or why it may not be admitted
        (nothing counted: `admit` counts; a cluster worker's site view only looks)."""
        try:
            window = wire.decode(payload)
        except wire.WireError as e:
            return Refusal(e.reason, e.detail)
        return (self.binding(site, gateway, sensor) or self._unfit(sensor, window)
                or _unstorable(window) or window)

    def _unfit(self, sensor: str, window: wire.Window) -> Refusal | None:
        """Why a decoded window of a known `sensor` cannot be processed as it, or None."""
        want = self.kind_of[sensor]
        if window.kind != want:
            handled = window.kind in wire.SENSOR_KINDS.values()
            return Refusal("kind", f"a {window.kind.name.lower()} window, sensor {sensor!r} "
                                   f"is {want.name.lower()}" + (
                                       "" if handled else " (the stream handles "
                                       "acceleration and temperature windows only)"))
        if window.kind != wire.Kind.ACCELERATION:
            return None
        if window.n_samples < MIN_ACCELERATION_SAMPLES:
            return Refusal("n_samples", f"{window.n_samples} samples, an acceleration window "
                                        f"needs at least {MIN_ACCELERATION_SAMPLES}")
        low, high = ACCELERATION_FS_HZ
        if not low <= window.fs_hz <= high:
            return Refusal("fs_hz", f"fs_hz {window.fs_hz:g} is outside {low:g}..{high:g} Hz "
                                    "for an acceleration window")
        return None

    def admit(self, site: str, gateway: str, sensor: str, topic: str, payload: object,
              message: M, qos: int = 1) -> Incoming | Skip:
        """Decode and check one window message (delivered at `qos`): the window to
        process, or why not."""
        self.counters.received += 1
        if not isinstance(payload, bytes | bytearray):
            return self.refuse(Refusal("payload", "payload is not bytes"), topic, None)
        payload = bytes(payload)
        if qos < 1:
            # Never sent so by a gateway (its outbox publishes at QoS 1): such a window is
            # lost whenever the stream is down, and no inflight limit bounds them.
            return self.refuse(Refusal("qos", "a window at QoS 0; windows are QoS 1 "
                                              "(docs/topics.md)"), topic, payload)
        window = self.check(site, gateway, sensor, payload)
        if isinstance(window, Refusal):
            return self.refuse(window, topic, payload)
        source = (site, gateway, sensor)
        key = (*source, window.seq)
        if self.dedup.seen(source, window.seq):
            self.counters.duplicates += 1
            log.info(kv("duplicate_window", gateway=gateway, sensor=sensor, seq=window.seq))
            return Skip.ACK
        if key in self._pending:
            self.counters.duplicates += 1
            self._pending[key].append(message)
            return Skip.HOLD
        self._pending[key] = [message]
        self.counters.ingested += 1
        return Incoming(site, gateway, sensor, window)

    def refuse(self, refusal: Refusal, topic: str, payload: bytes | None) -> Skip:
        """Count, log and dead-letter a refused window message."""
        log.warning(kv("window_rejected", reason=refusal.reason, topic=topic,
                       detail=refusal.detail))
        self.dead_letters.add(refusal.reason, topic, refusal.detail, payload)
        self.counters.refuse(refusal.reason, dead_lettered=True)
        return Skip.ACK

    def refuse_topic(self, topic: str, payload: object) -> Skip:
        """A message on a topic of no known shape (counted as a received window message)."""
        return self.refuse(Refusal("topic", "not bp/v1/{site}/{gateway}/{sensor}/window"),
                           topic, payload if isinstance(payload, bytes) else None)

    def refuse_processed(self, item: Incoming, detail: str) -> Skip:
        """A window admitted but that the pipeline could not process: refused alone."""
        return self.refuse(Refusal("processing_error", detail),
                           topics.window(item.site, item.gateway, item.sensor), None)

    def written(self, item: Incoming) -> list[M]:
        """Mark `item` written; the broker messages that carried it, to acknowledge."""
        source = (item.site, item.gateway, item.sensor)
        self.dedup.mark(source, item.window.seq)
        return self._pending.pop((*source, item.window.seq), [])


def _unstorable(window: wire.Window) -> Refusal | None:
    """Why a decoded window's header cannot be stored, or None."""
    if window.seq > INT64_MAX:
        return Refusal("seq_out_of_range", f"seq {window.seq} does not fit a signed 64-bit "
                                           "integer (InfluxDB)")
    latest = time.time_ns() + int(MAX_CLOCK_AHEAD_S * 1e9)
    if not T0_MIN_NS <= window.t0_ns <= latest:
        return Refusal("t0_out_of_range",
                       f"t0_ns {window.t0_ns} is before 2000-01-01 or more than "
                       f"{MAX_CLOCK_AHEAD_S:.0f} s ahead of the stream's clock")
    return None
