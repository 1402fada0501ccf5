"""MQTT publisher: moves windows from the outbox to the broker, at least once, in order.

paho-mqtt 2.x (`CallbackAPIVersion.VERSION2`), MQTT 5 so an ACL-denied publish comes back
as a PUBACK reason code instead of being dropped silently (SERVICES.md). The client id is
stable (``bp-gw-{site}-{gateway}``) and the session persistent (clean_start=False with a
Session Expiry Interval).

One private thread owns the paho client and drives it with ``client.loop()``; every paho
callback therefore runs on that thread, and so do publish, flush and reconnect. That
thread also does its own connect loop, with capped exponential backoff and jitter, for
the first connection and after every drop: one ``event=broker_unreachable`` line per
failed attempt, never a traceback. (paho's own `reconnect_delay_set` applies only to
`loop_forever`, which this thread does not use.)

Delivery. Entries are taken oldest first from the outbox (`Outbox.peek`), at most
`max_inflight` at a time and at most `flush_rate_per_s` per second, published at QoS 1,
and acked in the outbox ONLY when their PUBACK arrives (`on_publish`). When the connection
drops, the unacknowledged ones stay in flight in paho's session, and paho re-sends them
(DUP) right after the next CONNACK, before anything newer; they are still in the outbox,
so a crash meanwhile re-sends them from there after the restart. A window queued while
the broker was unreachable (including whatever waited in the outbox before the first
connection of this process), or older than `historical_after_s` when it is published,
goes out with the historical flag (`wire.mark_historical`) and counts as `replayed`.
A PUBACK with a failure reason (MQTT 5: "Not authorized", quota) is logged as
``event=publish_rejected``; the window stays in the outbox and is retried after a pause.
The pause holds back sending only: PUBACKs of windows already sent are applied as they
come, and `stop` applies every PUBACK in before it returns.

Too large. A broker that announces a Maximum Packet Size (CONNACK) closes the connection
on a bigger PUBLISH, and the window would be re-sent first after every reconnect: the
outbox head stuck for good. So a window whose PUBLISH is over that size is never sent:
it is deleted from the outbox, counted in `dropped` and logged as ``event=window_dropped
reason=too_large``. A broker that drops the connection without announcing why (an older
one, or a limit it does not announce) gets the reconnect backoff, which only a PUBACK of
a window, or a connection that stayed up `stable_after_s`, resets; after `STUCK_DROPS`
such drops in a row with windows in flight and none acknowledged, the status shows the
problem ``delivery`` (``event=delivery_stuck``) until a window is acknowledged. After
`REFUSE_DROPS` drops in a row, each soon after the same window was (re)sent first (the
broker reads it first after a CONNACK), with a reason that blames a packet (malformed,
protocol error, too large) and no window acknowledged meanwhile, that window is refused:
deleted from the outbox, counted in `dropped` and in ``stats["refused"]``, logged
as ``event=window_dropped reason=refused_by_broker``, the status problem ``refused`` for
`REFUSED_SHOWN_S`; the other windows in flight go back to the outbox (paho's session is
emptied, or it would re-send the refused one first at the next CONNACK) and leave again,
so they are not held behind it. "Soon": `REFUSE_WITHIN_S` plus the time to send the window
at `REFUSE_LINK_BYTES_PER_S`; a link that fails at random times, or a broker that closes
for another reason (session taken over, shutting down), does not make a window refused.

Status. A retained birth status (state online) is published on every CONNACK, then every
`status_interval_s`; the last will is a retained ``{"state": "offline", ...}``. `stop`
drains the outbox for up to `drain_timeout_s`, publishes a final retained status with
state offline and the final counters, waits for its PUBACK, then disconnects cleanly (a
clean DISCONNECT suppresses the will). `request_status` publishes one at the next turn.
A status over the broker's Maximum Packet Size is sent in its reduced form (every reason
"", ``event=status_too_large sent=reduced``), or not at all when even that is over it
(``sent=none``): the broker would close the connection on it. The will is set again
before every connect, so it carries `started_at` as shifted by a wall-clock jump.

Remote config. On every CONNACK the publisher subscribes (QoS 1) to its retained config
topic ``bp/v1/{site}/{gateway}/config``; each message is handed to `on_config` (bytes),
on the network thread. `set_flush_rate` changes the flush rate while running.

Outbox errors (a full disk makes even a DELETE fail) are logged as
``event=outbox_ack_failed``, shown as the status problem ``outbox_ack`` and retried after
a pause; they never stop the thread. The publisher clears that problem itself at its next
successful ack (``outbox``, the capture side's write problem, is the schedule's).

Credentials are read at every connect attempt, not once: the password comes from
`password_source` (normally `GatewayConfig.password`, which reads `password_file`), and
with TLS a new `ssl.SSLContext` is built from `ca_file`, `cert_file` and `key_file`. An
admin rotates a password or a certificate by replacing the files; the gateway uses them
at its next (re)connect (``event=broker_credentials_changed`` names what changed, never
the secret). `reconfigure` swaps the broker settings and credential source (SIGHUP
reload) and, when anything changed, reconnects at once. A file that cannot be read or a
certificate that does not load is logged as ``event=broker_credentials_unreadable`` and
retried with the connect backoff; the thread never dies of it.

Health. `last_turn` is the monotonic time of the network thread's last loop turn (it also
ticks during backoff waits); the service's watchdog stops when it stops moving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sqlite3
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ballpass import backoff, topics, wire
from ballpass.config import BrokerConfig
from ballpass.gateway.outbox import Entry, Outbox
from ballpass.gateway.status import OFFLINE, ONLINE, Status
from ballpass.log import kv

log = logging.getLogger(__name__)

_WINDOW_SUFFIX = "/window"
STUCK_DROPS = 3
"""Connections dropped in a row with windows in flight and none acknowledged, before the
status shows the problem ``delivery``."""
REFUSE_DROPS = 8
"""Connections dropped in a row soon after the same window was sent first, none
acknowledged, before that window is refused (deleted, counted in ``dropped``). With the
default backoff (0.5 s doubling to 30 s, with jitter) the seven waits before the eighth
drop add up to 31-62 s of the broker closing on that window, after the problem
``delivery`` showed at the third."""
REFUSE_WITHIN_S = 5.0
"""A drop counts against the window sent first when it came within this many seconds (s)
of its (re)sending, plus its transfer time at `REFUSE_LINK_BYTES_PER_S`."""
REFUSE_LINK_BYTES_PER_S = 125_000.0
"""The slowest uplink assumed (1 Mbit/s), for the transfer time of a large window."""
REFUSED_SHOWN_S = 3600.0
"""The status shows the problem ``refused`` this long (s) after the last refused window."""
BLAMING_REASONS = frozenset({
    129,  # Malformed Packet
    130,  # Protocol Error (mosquitto 2.0's answer to a PUBLISH over message_size_limit)
    131,  # Implementation specific error
    144,  # Topic Name invalid
    149,  # Packet too large
    153,  # Payload format invalid
})
"""Reasons of a lost connection that can be the last PUBLISH's fault. Not 128 (Unspecified
error): paho gives it for any socket lost (a reset, a link that dies after each connect),
and a good window must never be deleted for a bad link. Nor Session taken over, Server
shutting down, Keep Alive timeout, Administrative action, Server busy..."""


def client_id(site: str, gateway: str) -> str:
    """The stable MQTT client id of a gateway."""
    return f"bp-gw-{site}-{gateway}"


@dataclass(frozen=True)
class PublisherSettings:
    """Tuning. Times in seconds, rates in messages per second."""

    max_inflight: int = 20
    flush_rate_per_s: float = 50.0
    historical_after_s: float = 10.0
    status_interval_s: float = 5.0
    session_expiry_s: int = 3600
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 5.0
    stable_after_s: float = 10.0  # a connection up this long was good: backoff starts afresh


class Publisher:
    """Publishes an outbox to a broker from one background thread.

    `username`/`password`: MQTT credentials (a gateway's username is its gateway id).
    `password_source`: called at every connect attempt for the current password (wins
    over `password`); it may raise OSError (logged, retried with backoff).
    `status`: builds the status JSON (its counters come from the outbox).
    """

    def __init__(self, broker: BrokerConfig, site: str, gateway: str, outbox: Outbox,
                 status: Status, *, username: str | None = None,
                 password: str | None = None,
                 password_source: Callable[[], str | None] | None = None,
                 settings: PublisherSettings | None = None,
                 on_config: Callable[[bytes], None] | None = None) -> None:
        self.broker = broker
        self.site = site
        self.gateway = gateway
        self.outbox = outbox
        self.status = status
        self.settings = settings or PublisherSettings()
        self.status_topic = topics.status(site, gateway)
        self.config_topic = topics.config(site, gateway)
        self.on_config = on_config
        self._status_requested = False

        self._stop = threading.Event()
        self._drain_until: float | None = None
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()  # CONNACK success, not yet disconnected
        self._socket_open = False
        self._mids: dict[int, tuple[int, bool]] = {}  # mid -> (outbox id, historical)
        self._acked: list[tuple[int, bool]] = []
        self._rejected: list[int] = []
        self._status_mids: set[int] = set()
        self._last_status = 0.0
        self._pause_until = 0.0  # no sending before (a rejected PUBACK, an outbox error)
        self._ack_retry_at = 0.0  # no ack write before (the last one failed)
        self._tokens = float(self.settings.max_inflight)
        self._tokens_t = time.monotonic()
        self._attempt = 0
        self._connected_at: float | None = None  # monotonic, of the CONNACK
        self._dropped = False  # the broker closed the connection; not yet backed off for
        self._drops_unacked = 0  # drops in a row with windows in flight and no PUBACK
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK)
        self._connack_at = 0.0  # monotonic, of the last CONNACK (paho re-sends then)
        # outbox id -> (monotonic time sent, sensor, seq, PUBLISH bytes), of windows in flight
        self._sent: dict[int, tuple[float, str, int, int]] = {}
        self._suspect: int | None = None  # outbox id sent first before the last drops
        self._suspect_drops = 0  # drops in a row soon after `_suspect` was sent first
        self._refuse: int | None = None  # outbox id to refuse, once the socket is closed
        self._refused_until = 0.0  # monotonic: the problem `refused` is shown until then
        self._status_form = "full"  # the form of the last status: full, reduced, none
        self._outage_start_ns: int | None = None
        self._outages: deque[tuple[int, int]] = deque(maxlen=64)
        self.stats = {"connects": 0, "disconnects": 0, "rejected": 0, "refused": 0}

        self.username = username
        self._password_source: Callable[[], str | None] = (
            password_source if password_source is not None else (lambda: password))
        self._fingerprints: dict[str, str] | None = None  # of the credentials last used
        self._reconnect_reason: str | None = None
        self.last_turn = time.monotonic()

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(site, gateway),
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(username, password)
        # paho accepts one TLS context per client for its lifetime; this one hands each
        # new socket to the context built from the files at the latest connect attempt
        # (paho's session, with its unacknowledged PUBLISHes, stays on the same client).
        self._tls = _ReloadableContext()
        if broker.tls:
            c.tls_set_context(self._tls)  # type: ignore[arg-type]
        # paho queues beyond its own in-flight limit; ours is the bound, keep paho's above it.
        c.max_inflight_messages_set(self.settings.max_inflight + 4)
        c.connect_timeout = self.settings.connect_timeout_s
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._client = c

    # --- public ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        """True while the network thread runs (started, not finished or crashed)."""
        return self._thread is not None and self._thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def set_flush_rate(self, per_s: float) -> None:
        """Change the flush rate (messages per second) while running."""
        if not per_s > 0:
            raise ValueError(f"flush_rate_per_s: must be > 0, got {per_s!r}")
        self.settings = dataclasses.replace(self.settings, flush_rate_per_s=float(per_s))

    def request_status(self) -> None:
        """Publish a status message at the next turn of the network thread."""
        self._status_requested = True

    def reconfigure(self, broker: BrokerConfig, username: str | None,
                    password_source: Callable[[], str | None]) -> bool:
        """New broker settings and credential source (a config reload), any thread.

        Reconnects at once (clean DISCONNECT, no will, the session and its in-flight
        windows kept) when the broker address, TLS setting, username or the content of
        a credential file differs from what the current connection used; returns whether
        it will. A TLS setting cannot be switched on for a client made without it.
        """
        if broker.tls and not self.broker.tls:
            raise ValueError("broker.tls: switching TLS on needs a restart")
        if not broker.tls and self.broker.tls:
            raise ValueError("broker.tls: switching TLS off needs a restart")
        changed = (broker.host, broker.port, username) != (
            self.broker.host, self.broker.port, self.username)
        self.broker, self.username, self._password_source = broker, username, password_source
        if not changed:
            try:
                changed = self._fingerprints is not None and \
                    _fingerprints(self._password_source(), broker) != self._fingerprints
            except (OSError, ValueError):
                changed = True  # unreadable now: the connect attempt logs the reason
        if changed:
            self._reconnect_reason = "reload"
        return changed

    def start(self) -> None:
        """Start the network thread (returns at once; connecting happens in the thread)."""
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        self._thread = threading.Thread(target=self._run, name=f"publisher-{self.gateway}",
                                        daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Flush for up to `drain_timeout_s`, publish the final offline status, disconnect.

        Blocks until the network thread has finished.
        """
        if self._thread is None:
            return
        self._drain_until = time.monotonic() + max(0.0, drain_timeout_s)
        self._stop.set()
        self._thread.join()
        self._thread = None

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error(kv("broker_refused", host=self.broker.host, port=self.broker.port,
                         reason=reason))
            return
        self._connected.set()
        self.stats["connects"] += 1
        # Not a reset of the backoff: a broker may accept us and drop us at the first
        # PUBLISH (a window larger than it takes). A window PUBACK or a connection that
        # lasts resets it.
        self._connected_at = self._connack_at = time.monotonic()
        self._max_packet = getattr(properties, "MaximumPacketSize", None)
        if self._outage_start_ns is not None:
            self._outages.append((self._outage_start_ns, time.time_ns()))
            self._outage_start_ns = None
        log.info(kv("broker_connected", host=self.broker.host, port=self.broker.port,
                    client_id=client_id(self.site, self.gateway),
                    session_present=flags.session_present))
        self._publish_status(ONLINE)
        if self.on_config is not None:
            client.subscribe(self.config_topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.config_topic or self.on_config is None:
            return
        try:
            self.on_config(bytes(msg.payload))
        except Exception:  # a bug in config handling must not kill the network thread
            log.exception(kv("config_handler_failed", gateway=self.gateway))
        self._status_requested = True

    def _on_disconnect(self, client: mqtt.Client, userdata: object,
                       flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._socket_open = False
        if not was_connected:
            return
        self.stats["disconnects"] += 1
        if self._reconnect_reason is not None and not reason.is_failure:
            log.info(kv("broker_reconnecting", host=self.broker.host, port=self.broker.port,
                        reason=self._reconnect_reason, in_flight=len(self._mids)))
            self._reconnect_reason = None
            return
        if self._stop.is_set() and not reason.is_failure:
            log.info(kv("broker_session_closed", host=self.broker.host, port=self.broker.port,
                        in_flight=len(self._mids)))
            return
        if self._outage_start_ns is None:
            self._outage_start_ns = time.time_ns()
        self._dropped = True
        log.warning(kv("broker_disconnected", host=self.broker.host, port=self.broker.port,
                       reason=reason, in_flight=len(self._mids)))
        if self._mids:
            self._drops_unacked += 1
            if self._drops_unacked == STUCK_DROPS:
                oldest = min(i for i, _ in self._mids.values())
                self.status.problem("delivery", (
                    f"the broker closed the connection {STUCK_DROPS} times in a row with "
                    f"windows in flight and none acknowledged (oldest: outbox id {oldest}); "
                    "it may refuse a window, e.g. one larger than it accepts"))
                log.error(kv("delivery_stuck", gateway=self.gateway, drops=STUCK_DROPS,
                             oldest_outbox_id=oldest, in_flight=len(self._mids)))
                self._status_requested = True
        self._blame(reason)

    def _blame(self, reason: ReasonCode) -> None:
        """After a lost connection: count it against the window in flight that was sent
        first (paho re-sends in flight in order, right after the CONNACK, and the broker
        reads that one first) when it came soon after that window left, for a reason
        that can be its fault; at `REFUSE_DROPS` in a row for the same window, it is to be
        refused (`_refuse_window`, once the socket is closed)."""
        in_flight = {oid for oid, _ in self._mids.values()}
        self._sent = {i: v for i, v in self._sent.items() if i in in_flight}
        first = self._mids[next(iter(self._mids))][0] if self._mids else None
        sent = self._sent.get(first) if first is not None else None
        if sent is None or int(reason.value) not in BLAMING_REASONS or \
                time.monotonic() - max(sent[0], self._connack_at) > \
                REFUSE_WITHIN_S + sent[3] / REFUSE_LINK_BYTES_PER_S:
            self._suspect, self._suspect_drops = None, 0
            return
        self._suspect_drops = self._suspect_drops + 1 if first == self._suspect else 1
        self._suspect = first
        if self._suspect_drops >= REFUSE_DROPS:
            self._refuse = first

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason: ReasonCode, properties: Properties | None) -> None:
        self._status_mids.discard(mid)
        item = self._mids.pop(mid, None)
        if item is None:
            return
        self._sent.pop(item[0], None)
        self._suspect, self._suspect_drops = None, 0  # the broker read a window of ours
        if reason.is_failure:
            # Not authorised, quota, ...: keep the entry in the outbox and retry later.
            self.stats["rejected"] += 1
            self._rejected.append(item[0])
            log.error(kv("publish_rejected", gateway=self.gateway, outbox_id=item[0],
                         reason=reason))
            return
        self._acked.append(item)
        self._attempt = 0  # the broker takes our windows: a drop after this is a new outage
        if self._drops_unacked >= STUCK_DROPS:
            self.status.problem("delivery", None)
            log.info(kv("delivery_recovered", gateway=self.gateway, outbox_id=item[0]))
        self._drops_unacked = 0

    # --- network thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self.last_turn = time.monotonic()
                if self._stop.is_set() and self._drain_done():
                    break
                if self._reconnect_reason is not None and self._socket_open \
                        and not self._stop.is_set():
                    self._reconnect()
                    continue
                if not self._socket_open:
                    if self._stop.is_set():
                        break  # stopping and no connection: nothing more can leave
                    if self._dropped:
                        # The broker closed it (DISCONNECT) and loop() did not fail: back
                        # off all the same, not straight back in.
                        self._lost(mqtt.MQTT_ERR_CONN_LOST)
                        continue
                    self._connect_once()
                    continue
                rc = self._client.loop(timeout=0.02)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._lost(rc)
                    continue
                self._settle()
                if self._refused_until and time.monotonic() >= self._refused_until:
                    self._refused_until = 0.0
                    self.status.problem("refused", None)
                    self._status_requested = True
                if self._connected.is_set():
                    self._flush()
                    now = time.monotonic()
                    if self._status_requested or \
                            now - self._last_status >= self.settings.status_interval_s:
                        self._status_requested = False
                        self._publish_status(ONLINE)
            self._shutdown()
        except Exception:
            log.exception(kv("publisher_crashed", gateway=self.gateway))
            raise

    def _connect_once(self) -> None:
        self._reconnect_reason = None  # a fresh connect uses the newest settings anyway
        b = self.broker
        if not self._load_credentials(b):
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        # The will goes in the CONNECT: built now, so it carries `started_at` as it is
        # after a wall-clock jump the status followed (a 1970 start on a board without RTC).
        self._client.will_set(self.status_topic, self.status.will_payload(), qos=1,
                              retain=True)
        try:
            self._client.connect(b.host, b.port, keepalive=b.keepalive_s, clean_start=False,
                                 properties=props)
            self._socket_open = True
            return
        except (OSError, ssl.SSLError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        delay = self._failed_attempt()
        log.warning(kv("broker_unreachable", host=b.host, port=b.port, attempt=self._attempt,
                       retry_in_s=round(delay, 2), error=error))
        self._wait(delay)

    def _load_credentials(self, b: BrokerConfig) -> bool:
        """Read the password and (TLS) build a fresh context from the files, for this
        attempt. False after logging and backing off when a file is unreadable."""
        try:
            password = self._password_source()
            context = build_tls_context(b) if b.tls else None
            prints = _fingerprints(password, b)
        except (OSError, ssl.SSLError, ValueError) as e:
            delay = self._failed_attempt()
            log.error(kv("broker_credentials_unreadable", gateway=self.gateway,
                         attempt=self._attempt, retry_in_s=round(delay, 2),
                         error=f"{type(e).__name__}: {e}"))
            self._wait(delay)
            return False
        if self._fingerprints is not None and prints != self._fingerprints:
            changed = sorted(k for k in prints if prints[k] != self._fingerprints.get(k))
            log.info(kv("broker_credentials_changed", gateway=self.gateway,
                        changed=",".join(changed)))
        self._fingerprints = prints
        self._client.username_pw_set(self.username, password)
        if context is not None:
            self._tls.current = context
        return True

    def _reconnect(self) -> None:
        """A requested reconnect (reload): clean DISCONNECT, then connect again at once."""
        self._settle()
        self._client.disconnect()
        for _ in range(5):  # let the DISCONNECT leave before the socket closes
            if self._client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                break
        self._reconnect_reason = None
        self._connected.clear()
        self._socket_open = False

    def _wait(self, seconds: float) -> None:
        """Wait `seconds` or until stop, keeping `last_turn` fresh (the watchdog); a
        reload (`reconfigure` with changes) ends the wait: new settings, new attempt."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and self._reconnect_reason is None:
            self.last_turn = now = time.monotonic()
            if now >= deadline:
                return
            self._stop.wait(min(0.1, deadline - now))

    def _failed_attempt(self) -> float:
        """Count a failed connect or a lost connection; the delay before the next try, s."""
        s = self.settings
        if self._connected_at is not None and \
                time.monotonic() - self._connected_at >= s.stable_after_s:
            self._attempt = 0  # the connection that ended was a good one
        self._connected_at = None
        self._attempt += 1
        if self._outage_start_ns is None:
            # Unreachable from the start (or again): what is queued now is historical. Never
            # connected yet: that includes whatever a previous run left in the outbox.
            self._outage_start_ns = 0 if self.stats["connects"] == 0 else time.time_ns()
        return backoff.jittered_s(self._attempt, s.backoff_initial_s, s.backoff_max_s)

    def _lost(self, rc: mqtt.MQTTErrorCode) -> None:
        """loop() failed: the socket is gone (paho called on_disconnect if it was up)."""
        if self._connected.is_set():
            self._on_disconnect(self._client, None, mqtt.DisconnectFlags(False),
                                ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)
        self._socket_open = False
        self._connected.clear()
        self._dropped = False
        if self._refuse is not None:
            self._refuse_window()
        if not self._stop.is_set():
            delay = self._failed_attempt()
            log.warning(kv("broker_connection_lost", host=self.broker.host,
                           port=self.broker.port, rc=mqtt.error_string(rc),
                           attempt=self._attempt, retry_in_s=round(delay, 2)))
            self._wait(delay)

    def _settle(self, final: bool = False) -> None:
        """Apply PUBACKs to the outbox (one transaction per loop turn). `final`: also
        inside the retry pause of a failed ack write (the last chance before stopping)."""
        # Not gated by `_pause_until`: a reject pauses sending only, and a window the
        # broker took but not deleted here would be sent again after a restart.
        if self._acked and (final or time.monotonic() >= self._ack_retry_at):
            acked, self._acked = self._acked, []
            try:
                self.outbox.ack([i for i, _ in acked], replayed=[i for i, h in acked if h])
            except sqlite3.Error as e:
                # Disk full: even a DELETE needs room in the WAL. Keep the acks and retry;
                # the windows stay in flight, so they are not sent twice meanwhile.
                self._acked = acked + self._acked
                self._outbox_failed(e)
            else:
                if "outbox_ack" in self.status.problems():
                    self.status.problem("outbox_ack", None)
                    log.info(kv("outbox_ack_recovered", gateway=self.gateway,
                                acked=len(acked)))
        if self._rejected:
            rejected, self._rejected = self._rejected, []
            self.outbox.release(rejected)
            # Re-sending a rejected window at once would be rejected again: back off.
            self._pause_until = time.monotonic() + self.settings.backoff_max_s / 6

    def _outbox_failed(self, error: sqlite3.Error) -> None:
        """An outbox update failed: pause, show the problem `outbox_ack` and log."""
        retry = time.monotonic() + 1.0
        self._ack_retry_at = retry
        self._pause_until = max(self._pause_until, retry)  # not shortening a reject's pause
        self.status.problem("outbox_ack", f"cannot update the outbox: {error}")
        log.error(kv("outbox_ack_failed", gateway=self.gateway, pending=len(self._acked),
                     error=error))

    def _refuse_window(self) -> None:
        """Delete the window the broker closed the connection on `REFUSE_DROPS` times
        (`_blame`), with no connection up. paho would re-send it first after the next
        CONNACK (it keeps every unacknowledged PUBLISH): its session is emptied, and the
        other windows in flight go back to the outbox, to leave again from there."""
        oid, self._refuse = self._refuse, None
        assert oid is not None
        _, sensor, seq, size = self._sent.get(oid, (0.0, "?", -1, 0))
        try:
            deleted = self.outbox.drop([oid])
        except sqlite3.Error as error:
            self._outbox_failed(error)  # kept; blamed again after the next drops
            return
        self._client.drop_out_messages()
        self.outbox.release([i for i, _ in self._mids.values() if i != oid])
        in_flight = len(self._mids)
        self._mids.clear()
        self._status_mids.clear()
        self._sent.clear()
        self._suspect, self._suspect_drops = None, 0
        if not deleted:  # the outbox dropped it already (disk pressure), counted there
            return
        self.stats["refused"] += 1
        self._refused_until = time.monotonic() + REFUSED_SHOWN_S
        self.status.problem("refused", (
            f"{self.stats['refused']} window(s) deleted unsent since the start; last: "
            f"sensor {sensor} seq {seq}, {size} bytes: the broker closed the connection "
            f"{REFUSE_DROPS} times in a row right after it was sent, none acknowledged "
            "(larger than the broker takes? mosquitto's message_size_limit)"))
        self._status_requested = True
        log.error(kv("window_dropped", reason="refused_by_broker", gateway=self.gateway,
                     sensor=sensor, seq=seq, bytes=size, drops=REFUSE_DROPS,
                     requeued=in_flight - 1))

    def _drop_too_large(self, e: Entry, size: int) -> None:
        """Delete `e`, whose PUBLISH (`size` bytes) is over the broker's Maximum Packet
        Size: the broker would close the connection on it, every time it is re-sent."""
        self.outbox.drop([e.id])
        log.error(kv("window_dropped", reason="too_large", gateway=self.gateway,
                     sensor=e.sensor, seq=e.seq, bytes=size,
                     max_packet_size=self._max_packet))

    def _flush(self) -> None:
        now = time.monotonic()
        if now < self._pause_until:
            return
        s = self.settings
        self._tokens = min(float(s.max_inflight),
                           self._tokens + (now - self._tokens_t) * s.flush_rate_per_s)
        self._tokens_t = now
        room = min(s.max_inflight - len(self._mids), int(self._tokens))
        if room <= 0:
            return
        entries = self.outbox.peek(room)
        for n, e in enumerate(entries):
            historical = self._historical(e)
            payload = e.payload
            if historical and e.topic.endswith(_WINDOW_SUFFIX):
                payload = wire.mark_historical(payload)
            size = publish_size(e.topic, payload)
            if self._max_packet is not None and size > self._max_packet:
                try:
                    self._drop_too_large(e, size)
                except sqlite3.Error as error:
                    self.outbox.release([x.id for x in entries[n:]])
                    self._outbox_failed(error)
                    break
                continue
            info = self._client.publish(e.topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # paho refused to queue it: hand this one and the rest back to the outbox.
                self.outbox.release([x.id for x in entries[n:]])
                break
            # NO_CONN: paho keeps the message in its session and sends it after CONNACK.
            self._mids[info.mid] = (e.id, historical)
            self._sent[e.id] = (now, e.sensor, e.seq, size)
            self._tokens -= 1

    def _historical(self, e: Entry) -> bool:
        if time.time_ns() - e.created_ns > self.settings.historical_after_s * 1e9:
            return True
        return any(start <= e.created_ns < end for start, end in self._outages)

    def _publish_status(self, state: str) -> int | None:
        """Publish the status (retained, QoS 1); its mid, or None when not sent.

        A status over the broker's Maximum Packet Size would make it close the connection
        at every status (every CONNACK): nothing would be delivered, and the drops be
        blamed on the windows in flight (`delivery`). So the reduced form (reasons
        dropped) goes instead, and when even that is too big none."""
        self._last_status = time.monotonic()
        payload = self.status.payload(state)
        limit = self._max_packet
        full = publish_size(self.status_topic, payload)
        form = "full"
        if limit is not None and full > limit:
            payload = self.status.payload(state, reasons=False)
            form = "reduced" if publish_size(self.status_topic, payload) <= limit else "none"
        if form != self._status_form:  # logged at each change, not at every status
            self._status_form = form
            if form == "full":
                log.info(kv("status_size_ok", gateway=self.gateway, bytes=full,
                            max_packet_size=limit))
            else:
                log.warning(kv("status_too_large", gateway=self.gateway, sent=form,
                               bytes=full, reduced_bytes=publish_size(
                                   self.status_topic, payload),
                               max_packet_size=limit))
        if form == "none":
            return None
        info = self._client.publish(self.status_topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._status_mids.add(info.mid)
        return info.mid

    def _drain_done(self) -> bool:
        """While stopping: done when nothing is queued or in flight, or time is up."""
        assert self._drain_until is not None
        if time.monotonic() >= self._drain_until:
            return True
        return not self._mids and self.outbox.queued == 0

    def _shutdown(self) -> None:
        """Final offline status (waits for its PUBACK), clean DISCONNECT, socket closed."""
        self._settle()
        if self._connected.is_set():
            mid = self._publish_status(OFFLINE)
            deadline = time.monotonic() + 2.0
            while (mid is not None and mid in self._status_mids
                   and time.monotonic() < deadline and self._socket_open):
                if self._client.loop(timeout=0.02) != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._settle()
            self._client.disconnect()
            for _ in range(5):  # let the DISCONNECT leave before the socket closes
                if self._client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                    break
        # Every PUBACK in, connected or not: an acked window left in the outbox would be
        # sent again at the next start.
        self._settle(final=True)
        left = self.outbox.queued
        log.info(kv("publisher_stopped", gateway=self.gateway, queued=left,
                    in_flight=len(self._mids)))
        self._connected.clear()
        self._socket_open = False
        self._mids.clear()
        self._sent.clear()
        self.outbox.release()


def publish_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 5 PUBLISH at QoS 1 without properties (what a Maximum Packet Size
    bounds): fixed header, topic, packet id, an empty property length, payload."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    return 1 + max(1, (remaining.bit_length() + 6) // 7) + remaining


def build_tls_context(broker: BrokerConfig) -> ssl.SSLContext:
    """A TLS client context from the broker's files, read now: verify the broker against
    `ca_file` (system CAs when None) with host-name checking, present `cert_file` and
    `key_file` when given. Raises OSError/ssl.SSLError when a file is missing or bad."""
    ctx = ssl.create_default_context(
        cafile=str(broker.ca_file) if broker.ca_file else None)
    if broker.cert_file is not None:
        ctx.load_cert_chain(str(broker.cert_file),
                            str(broker.key_file) if broker.key_file else None)
    return ctx


def _fingerprints(password: str | None, broker: BrokerConfig) -> dict[str, str]:
    """Short digests of each credential's content, to log which one changed (never the
    secret itself, nor enough of its hash to test guesses against a log: 8 hex chars)."""
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:8]

    out = {"password": digest((password or "").encode())}
    if broker.tls:
        for name, path in (("ca", broker.ca_file), ("cert", broker.cert_file),
                           ("key", broker.key_file)):
            if path is not None:
                out[name] = digest(Path(path).read_bytes())
    return out


class _ReloadableContext:
    """What paho needs of an SSLContext (`wrap_socket`, `check_hostname`), delegating to
    the context built at the latest connect attempt."""

    def __init__(self) -> None:
        self.current: ssl.SSLContext | None = None

    @property
    def check_hostname(self) -> bool:
        return self.current.check_hostname if self.current is not None else True

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.current is None:
            raise ssl.SSLError("no TLS context loaded yet")
        return self.current.wrap_socket(sock, **kwargs)
