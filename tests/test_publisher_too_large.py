"""A window larger than a broker takes, when the broker does not announce its limit.

mosquitto 2.0's `message_size_limit` is not announced in the CONNACK (`max_packet_size`
is, and gateway/publisher.py never sends a window over that): an MQTT 5 client that
sends a bigger PUBLISH has its connection closed ("Protocol error"). paho keeps the
unacknowledged PUBLISH and re-sends it first after every CONNACK. (mosquitto 2.0.11 in
fact answers it with a PUBACK of reason 0x95, not one a PUBACK may carry: paho takes it for
a malformed packet and closes the connection; the windows sent after it reach the broker,
and subscribers, but their PUBACKs are never read.) Before: so every connection was
closed, the window re-sent forever (the reconnect backoff growing to 30 s), and the
windows behind it were delivered again at each reconnect but never acknowledged: the
outbox never drained (it filled, then dropped its oldest); only the status problem
`delivery` told. Now,
after `REFUSE_DROPS` such drops on the same window, it is refused and the rest flows.

Real mosquitto, real outbox and publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gateway_proc import wait_for
from test_publisher import SITE, Subscriber, make_publisher, make_window

from ballpass import topics, wire
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import REFUSE_DROPS, STUCK_DROPS, publish_size
from ballpass.services import TEMPLATE_PATH, Mosquitto

LIMIT = 4000  # bytes of payload mosquitto takes; one test window is 1072


@pytest.fixture
def limited_broker(tmp_path: Path):
    """The shipped broker config, with `message_size_limit` instead of max_packet_size."""
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "\nmax_packet_size 50335744\n" in text
    template = tmp_path / "mosquitto.conf"
    template.write_text(text.replace("\nmax_packet_size 50335744\n",
                                     f"\nmessage_size_limit {LIMIT}\n"))
    broker = Mosquitto(tmp_path / "mq", anonymous=True, template=template)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_window_the_broker_keeps_closing_on_is_refused_and_the_rest_flows(
        limited_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ballpass.gateway.publisher")
    broker = limited_broker
    box = Outbox(tmp_path / "o.sqlite", 64 << 20, 3600)
    topic = topics.window(SITE, "gw1", "s1")
    small = {seq: make_window(seq) for seq in (1, 2, 3, 5, 6, 7, 8, 9, 10)}
    big = b"B" * (2 * LIMIT)
    for seq in (1, 2, 3):
        box.put("s1", seq, topic, small[seq])
    box.put("s1", 4, topic, big)  # over the broker's limit, which it does not announce
    for seq in (5, 6, 7, 8):
        box.put("s1", seq, topic, small[seq])
    windows = Subscriber(broker.host, broker.port, f"bp/v1/{SITE}/gw1/+/window", "big-w")
    statuses = Subscriber(broker.host, broker.port, f"bp/v1/{SITE}/gw1/status", "big-s")
    pub, status = make_publisher(broker.host, broker.port, "gw1", box,
                                 backoff_initial_s=0.05, backoff_max_s=0.2)
    pub.start()
    try:
        # backoff 0.025-0.05 s doubling to 0.1-0.2 s: 8 drops in about a second
        wait_for(lambda: pub.stats["refused"] == 1, 30, "the big window refused")
        wait_for(lambda: box.counters()["queued"] == 0, 10, "the windows behind it acked")
        # capture goes on: later windows leave too
        for seq in (9, 10):
            box.put("s1", seq, topic, small[seq])
        wait_for(lambda: box.counters()["queued"] == 0, 10, "the later windows acked")
        got = windows.wait_for(lambda m: len({x.payload for x in m}) >= 9, 10)
        last = statuses.wait_for(lambda m: any(
            "refused" in json.loads(x.payload).get("problems", {}) for x in m), 10)
        stats, problems, counters = dict(pub.stats), status.problems(), box.counters()
    finally:
        pub.stop(drain_timeout_s=1)
        windows.close()
        statuses.close()
        box.close()
    first_seen: list[bytes] = []
    for m in got:
        if m.payload not in first_seen:
            first_seen.append(m.payload)
    assert first_seen == [small[seq] for seq in sorted(small)], "in order, all but seq 4"
    assert big not in first_seen
    # one connection per drop, then one that stays
    assert stats["refused"] == 1 and stats["connects"] == REFUSE_DROPS + 1, stats
    assert (counters["published"], counters["dropped"], counters["queued"]) == (9, 1, 0)
    assert problems["refused"].startswith(
        f"1 window(s) deleted unsent since the start; last: sensor s1 seq 4, "
        f"{publish_size(topic, big)} bytes: the broker closed the connection {REFUSE_DROPS} "
        "times in a row right after it was sent"), problems
    assert "delivery" not in problems, problems  # cleared by the next PUBACK
    assert any("refused" in json.loads(x.payload).get("problems", {}) for x in last)
    events = [r.getMessage() for r in caplog.records]
    assert sum(e.startswith("event=delivery_stuck") for e in events) == 1
    refused = [e for e in events if e.startswith("event=window_dropped")]
    assert len(refused) == 1, refused
    assert refused[0].startswith(
        f"event=window_dropped reason=refused_by_broker gateway=gw1 sensor=s1 seq=4 "
        f"bytes={publish_size(topic, big)} drops={REFUSE_DROPS} requeued="), refused
    assert STUCK_DROPS < REFUSE_DROPS


def test_a_link_that_dies_after_each_connect_never_refuses_a_good_window(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A TCP relay to a real broker that uploads at 100 kB/s and cuts every connection
    0.6 s after it opened: a 196 kB window (the sample config's) never finishes, and each
    drop comes within the refusal's time bound after it was sent first. Before: paho's
    reason for a lost socket (128, Unspecified error) blamed the window, and good windows
    were deleted, one after the other, every 8 drops."""
    port: list[int] = []
    ready = threading.Event()

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, rate: float) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection(mosquitto.host, mosquitto.port)
        pipes = [asyncio.create_task(pipe(cr, bw, 100_000)),
                 asyncio.create_task(pipe(br, cw, 0))]
        await asyncio.sleep(0.6)
        for t in pipes:
            t.cancel()
        cw.transport.abort()
        bw.transport.abort()

    async def relay(stop: asyncio.Event) -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await stop.wait()
        server.close()
        await asyncio.sleep(1.0)  # the last connections' handlers end (0.6 s each)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(relay(stop),), daemon=True)
    thread.start()
    assert ready.wait(5)
    box = Outbox(tmp_path / "o.sqlite", 64 << 20, 3600)
    topic = topics.window(SITE, "gw1", "s1")
    for seq in (1, 2, 3):
        x = np.random.default_rng(seq).standard_normal((3, 16384))
        box.put("s1", seq, topic, wire.encode(wire.Window(seq=seq, t0_ns=time.time_ns(),
                                                          fs_hz=4000.0, samples=x)))
    pub, _ = make_publisher("127.0.0.1", port[0], "gw1", box, backoff_initial_s=0.05,
                            backoff_max_s=0.2)
    pub.start()
    try:
        wait_for(lambda: pub.stats["disconnects"] >= 2 * REFUSE_DROPS, 40,
                 f"{2 * REFUSE_DROPS} connections cut")
    finally:
        pub.stop(drain_timeout_s=0.5)
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()
    counters = box.counters()
    assert pub.stats["refused"] == 0, pub.stats
    assert (counters["dropped"], counters["queued"]) == (0, 3), counters
