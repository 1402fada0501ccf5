"""Connecting to NATS and setting up JetStream, retried until it works or the stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ballpass import backoff
from ballpass.config import ClusterConfig
from ballpass.log import kv
from ballpass.stream.retrying_writer import RETRY_INITIAL_S, RETRY_MAX_S, sleep_or_stop

log = logging.getLogger(__name__)

T = TypeVar("T")


async def connect(c: ClusterConfig, name: str, stop: asyncio.Event,
                  setup: Callable[[JetStreamContext], Awaitable[T]],
                  **callbacks: Any) -> tuple[NatsClient, JetStreamContext, T] | None:
    """A client of `c.servers` that reconnects by itself once connected, its JetStream
    context, and what `setup` (declaring streams) returned; None if `stop` came first.
    A failure to connect or to set up closes the client and tries again after a backoff."""
    attempt = 0
    while not stop.is_set():
        nc: NatsClient | None = None
        try:
            nc = await nats.connect(
                list(c.servers), user=c.username, password=c.password(), name=name,
                max_reconnect_attempts=-1, reconnect_time_wait=0.5, allow_reconnect=True,
                connect_timeout=2, **callbacks)
            js = nc.jetstream(timeout=10)
            return nc, js, await setup(js)
        except Exception as e:  # any failure to reach or set up the cluster: retry
            attempt += 1
            delay = backoff.jittered_s(attempt, RETRY_INITIAL_S, RETRY_MAX_S)
            log.warning(kv("cluster_unreachable", servers=",".join(c.servers),
                           attempt=attempt, reason=repr(e), retry_in_s=round(delay, 1)))
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            await sleep_or_stop(stop, delay)
    return None
