"""A load generator for the end-to-end benchmark: many gateways publishing windows.

It publishes wire-format v1 windows (docs/wire-format.md) the way gateways do: one MQTT
connection per gateway, logged in with that gateway's own credentials (username =
gateway id, so the broker's ACL confines it to its own prefix), QoS 1, one topic per
sensor (`bp/v1/{site}/{gateway}/{sensor}/window`). A real gateway captures each window;
here a few distinct simulated windows (healthy and faulty machines,
`ballpass.simulators.signals`) are encoded once and re-stamped with each publish's seq,
t0 and CRC, so the generator spends its time publishing, not synthesizing.

Publishes are paced across all sensors in turn at a given total rate (windows/s); the
wall time (`time.time()`, s) of each publish is kept per (sensor, seq), for the latency
from publish to the stream's diagnosis message. Stdlib, numpy and paho only.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from ballpass import topics, wire

FS_HZ = 25600.0
N_SAMPLES = 8192
SHAFT_HZ = 25.0
DISTINCT = 8
"""Distinct windows encoded: two each of normal, outer-race, inner-race and ball faults."""

_SEQ_T0 = struct.Struct("<Qq")
_SEQ_OFFSET = 8  # header: magic (2 s), six bytes, then seq (u64) and t0_ns (i64)
_CRC = struct.Struct("<I")
_CRC_OFFSET = 44
_CLIENT_INFLIGHT = 100  # loopback: the client's window is not what is measured


@dataclass(frozen=True)
class Target:
    """Where and as whom windows are published."""

    host: str
    port: int
    site: str
    gateway_passwords: Mapping[str, str]  # gateway id (= username) -> password


def layout(sensors: int, gateways: int) -> dict[str, list[str]]:
    """{gateway id: [sensor ids]}: `sensors` sensors spread evenly over `gateways`."""
    if sensors < 1 or gateways < 1 or gateways > sensors:
        raise ValueError(f"layout: need 1 <= gateways <= sensors, got {gateways}, {sensors}")
    out: dict[str, list[str]] = {f"gw{g:02d}": [] for g in range(gateways)}
    names = list(out)
    for s in range(sensors):
        out[names[s % gateways]].append(f"s{s:04d}")
    return out


def encoded_windows(n: int = N_SAMPLES, distinct: int = DISTINCT, seed: int = 0) -> list[bytes]:
    """`distinct` encoded float32 windows of `n` samples at `FS_HZ` (seq 0, t0 0)."""
    from ballpass.devtools.bench_stream import signals

    x, shaft = signals(n, distinct, seed=seed)
    return [wire.encode(wire.Window(seq=0, t0_ns=0, fs_hz=FS_HZ, samples=x[i : i + 1],
                                    shaft_hz=float(shaft[i])))
            for i in range(distinct)]


def restamp(message: bytes, seq: int, t0_ns: int) -> bytes:
    """`message` (an encoded window) with a new seq and t0 (ns) and its CRC updated."""
    out = bytearray(message)
    _SEQ_T0.pack_into(out, _SEQ_OFFSET, seq, t0_ns)
    _CRC.pack_into(out, _CRC_OFFSET, 0)
    _CRC.pack_into(out, _CRC_OFFSET, zlib.crc32(out))
    return bytes(out)


@dataclass
class StepResult:
    """What one `LoadGenerator.run` call published."""

    target_rate: float  # windows/s asked for
    published: int  # publish calls made
    seconds: float  # from the first publish to the last
    achieved_rate: float  # published / seconds, windows/s


@dataclass
class _Gateway:
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)


class LoadGenerator:
    """One paho client per gateway; `run(rate, seconds)` publishes; `close()` disconnects.

    `sent` maps (sensor, seq) to the publish time (s since the epoch); `acked` counts
    PUBACKs. Seqs continue across `run` calls, starting at 0 for every sensor.
    """

    def __init__(self, target: Target, sensors: Mapping[str, Sequence[str]],
                 windows: Sequence[bytes]) -> None:
        self.target = target
        # (gateway, sensor, topic, index of its window): a sensor keeps one machine
        # condition, so a faulty one raises one alert, not one per window.
        self._order = [(g, s, topics.window(target.site, g, s), i % len(windows))
                       for i, (g, s) in enumerate((g, s) for g, ids in sensors.items()
                                                  for s in ids)]
        self._windows = list(windows)
        self._seq: dict[str, int] = {s: 0 for _, s, _, _ in self._order}
        self._next = 0
        self.sent: dict[tuple[str, int], float] = {}
        self.acked = 0
        self._lock = threading.Lock()
        self._gateways: dict[str, _Gateway] = {}
        for g in sensors:
            self._gateways[g] = self._client(g)

    def _client(self, gateway: str) -> _Gateway:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=gateway,
                        clean_session=True)
        c.username_pw_set(gateway, self.target.gateway_passwords[gateway])
        c.max_inflight_messages_set(_CLIENT_INFLIGHT)
        gw = _Gateway(c)

        def on_connect(client: mqtt.Client, userdata: object, flags: object,
                       reason: mqtt.ReasonCode, props: object) -> None:
            if not reason.is_failure:
                gw.connected.set()

        def on_publish(client: mqtt.Client, userdata: object, mid: int,
                       reason: mqtt.ReasonCode, props: object) -> None:
            with self._lock:
                self.acked += 1

        c.on_connect = on_connect
        c.on_publish = on_publish
        return gw

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect every gateway; RuntimeError naming the first that does not get in."""
        for gw in self._gateways.values():
            gw.client.connect(self.target.host, self.target.port, keepalive=30)
            gw.client.loop_start()
        deadline = time.monotonic() + timeout_s
        for name, gw in self._gateways.items():
            if not gw.connected.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"loadgen: gateway {name} not connected to "
                                   f"{self.target.host}:{self.target.port}")

    def run(self, rate: float, seconds: float) -> StepResult:
        """Publish `rate` windows/s in all for `seconds`, sensors in turn (behind
        schedule, it publishes at once to catch up: `achieved_rate` says what it made)."""
        if rate <= 0 or seconds <= 0:
            raise ValueError(f"loadgen run: rate and seconds must be > 0, got {rate}, {seconds}")
        total = max(1, round(rate * seconds))
        start = time.monotonic()
        for k in range(total):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.publish_next()
        elapsed = max(time.monotonic() - start, 1e-9)
        return StepResult(rate, total, elapsed, total / elapsed if total > 1 else rate)

    def publish_next(self) -> None:
        """Publish the next sensor's next window."""
        gateway, sensor, topic, w = self._order[self._next]
        self._next = (self._next + 1) % len(self._order)
        seq = self._seq[sensor]
        self._seq[sensor] = seq + 1
        now = time.time()
        payload = restamp(self._windows[w], seq, int(now * 1e9))
        self.sent[(sensor, seq)] = now
        self._gateways[gateway].client.publish(topic, payload, qos=1)

    def wait_acked(self, timeout_s: float) -> bool:
        """True once every publish so far has its PUBACK."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.acked >= len(self.sent):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        for gw in self._gateways.values():
            gw.client.disconnect()
            gw.client.loop_stop()

