"""PUBACKs that arrive while a rejected PUBACK pauses the publisher, against a real
mosquitto with its ACL, through a relay that holds back what the broker sends."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from conftest import AUTH_USERS
from plant import wait_until
from test_publisher import make_window  # tests/ is on sys.path (rootdir mode)

from ballpass import topics
from ballpass.config import BrokerConfig
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.status import Status

SITE = "plant1"


def _packet_end(buf: bytes | bytearray) -> int | None:
    """The length of the first whole MQTT packet in `buf` (None: not all in yet)."""
    size, shift, i = 0, 0, 1
    while i < len(buf):
        byte = buf[i]
        size |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return i + size if i + size <= len(buf) else None
        shift += 7
    return None


class HoldingRelay:
    """A loopback TCP relay for one MQTT connection. What the client sends goes straight
    through; what the broker sends is held once `hold` is called, and let through whole
    packets at a time by `release`: the test decides in which order PUBACKs arrive, so
    in which loop turns of the publisher."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._held = bytearray()
        self._holding = False
        self._to_client: socket.socket | None = None
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        broker = socket.create_connection(("127.0.0.1", self.broker_port))
        self._sockets += [client, broker]
        self._to_client = client
        threading.Thread(target=self._up, args=(client, broker), daemon=True).start()
        threading.Thread(target=self._down, args=(broker,), daemon=True).start()

    def _up(self, client: socket.socket, broker: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                broker.sendall(data)
        with contextlib.suppress(OSError):
            broker.shutdown(socket.SHUT_WR)

    def _down(self, broker: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := broker.recv(65536):
                with self._lock:
                    self._held += data
                    if not self._holding:
                        self._send(len(self._held))
        assert self._to_client is not None
        with contextlib.suppress(OSError):
            self._to_client.shutdown(socket.SHUT_WR)

    def _send(self, n: int) -> None:
        assert self._to_client is not None
        self._to_client.sendall(self._held[:n])
        del self._held[:n]

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def held_packets(self) -> int:
        with self._lock:
            n, buf = 0, bytes(self._held)
        while (end := _packet_end(buf)) is not None:
            n, buf = n + 1, buf[end:]
        return n

    def release(self, packets: int | None = None) -> None:
        """Let `packets` whole packets through (None: all, and stop holding)."""
        with self._lock:
            if packets is None:
                self._holding = False
                self._send(len(self._held))
                return
            for _ in range(packets):
                end = _packet_end(self._held)
                assert end is not None, "fewer packets held than released"
                self._send(end)

    def close(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def _rejected_then_held(broker_port: int, tmp_path: Path
                        ) -> tuple[Publisher, Outbox, HoldingRelay, float]:
    """A publisher (through a relay) that has sent 11 windows, the oldest ACL-denied: the
    broker's rejection has reached it (the reject pause runs), the ten PUBACKs of the
    others are held in the relay. Also returns the pause, s."""
    relay = HoldingRelay(broker_port)
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    status = Status(SITE, "gw1", ["s1"], box.counters)
    settings = PublisherSettings(backoff_initial_s=0.1, status_interval_s=600)
    pub = Publisher(BrokerConfig(host="127.0.0.1", port=relay.port), SITE, "gw1", box,
                    status, username="gw1", password=AUTH_USERS["gw1"], settings=settings)
    pub.start()
    assert pub.wait_connected(5)
    time.sleep(0.3)  # the birth status's PUBACK through
    relay.hold()
    box.put("s1", 1, topics.window(SITE, "gw2", "s1"), make_window(1))  # not gw1's prefix
    for seq in range(2, 12):
        box.put("s1", seq, topics.window(SITE, "gw1", "s1"), make_window(seq))
    wait_until(lambda: relay.held_packets() == 11, 5, "the 11 PUBACKs", poll_s=0.01)
    relay.release(1)  # the rejection first, alone: the pause starts
    wait_until(lambda: pub.stats["rejected"] == 1, 5, "the rejection", poll_s=0.01)
    return pub, box, relay, settings.backoff_max_s / 6


def _only_the_denied_one_is_left(path: Path) -> None:
    box = Outbox(path, 10**8, 3600)  # the next start
    try:
        assert box.counters()["published"] == 10
        assert [e.seq for e in box.peek(20)] == [1]  # only the denied one is sent again
    finally:
        box.close()


def test_pubacks_during_the_reject_pause_are_applied_at_once(mosquitto_auth,
                                                             tmp_path: Path) -> None:
    """Before: a rejected PUBACK (ACL "Not authorized") paused applying PUBACKs as well as
    sending, for 5 s: the windows acknowledged meanwhile stayed in the outbox, and a stop
    inside the pause left them there, so the next start sent them all again."""
    pub, box, relay, pause_s = _rejected_then_held(mosquitto_auth.port, tmp_path)
    t_rejected = time.monotonic()
    assert pause_s >= 5.0
    try:
        relay.release()  # the other ten PUBACKs, inside the pause
        wait_until(lambda: box.counters()["published"] == 10, pause_s / 2,
                   "the PUBACKs applied inside the pause", poll_s=0.02)
        assert box.queued == 1
    finally:
        pub.stop(drain_timeout_s=0.5)
        relay.close()
        box.close()
    assert time.monotonic() - t_rejected < pause_s  # stopped inside the pause
    _only_the_denied_one_is_left(tmp_path / "o.sqlite")


def test_pubacks_that_arrive_during_the_shutdown_in_the_pause_are_applied(
        mosquitto_auth, tmp_path: Path) -> None:
    """No drain time: the ten PUBACKs come in while the shutdown waits for its offline
    status's PUBACK (held behind them), inside the reject pause. Before: not applied."""
    pub, box, relay, _ = _rejected_then_held(mosquitto_auth.port, tmp_path)
    stopper = threading.Thread(target=pub.stop, kwargs={"drain_timeout_s": 0.0})
    try:
        stopper.start()
        # The offline status is published, its PUBACK held behind the ten: in _shutdown.
        wait_until(lambda: relay.held_packets() == 11, 2, "the offline status's PUBACK",
                   poll_s=0.01)
        relay.release()
        stopper.join(10)
        assert not stopper.is_alive()
    finally:
        relay.close()
        stopper.join(10)
        box.close()
    _only_the_denied_one_is_left(tmp_path / "o.sqlite")
