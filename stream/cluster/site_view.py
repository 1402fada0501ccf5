"""What every worker of a site sees, whoever owns the partition (docs/scale-out.md, "What
every worker sees").

Partitions are per sensor, but some messages matter beyond their own sensor:
- an asset's tachometer readings and temperature windows feed the diagnosis and online
  models of the asset's *other* sensors, which another worker may own;
- gateway statuses feed every worker's status page and `/metrics`, while the shared
  control consumer hands each one to a single worker.

So each worker also follows them on an ephemeral consumer of its own, view only: the
partition's owner (or the control consumer's worker) still handles, writes and
acknowledges each of them. It starts at the latest message of each subject, so a worker
that just started knows every asset's latest speed and temperature and every gateway's
state at once; so it starts again after a failure (a node lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ballpass.config import Config
from ballpass.log import kv
from ballpass.nats_server import PARTITIONED_SUBJECT
from ballpass.stream.cluster import topology
from ballpass.stream.retrying_writer import sleep_or_stop

log = logging.getLogger(__name__)

FETCH_MAX = 256
FETCH_WAIT_S = 1.0
INACTIVE_S = 60.0
"""A view consumer left by a worker that died is deleted by the server then (a running
worker deletes its own when it stops or after a failure)."""

See = Callable[[str, bytes], None]
"""Called with each message's subject and payload."""


@dataclass(frozen=True)
class View:
    stream: str
    subjects: tuple[str, ...]


def site_views(config: Config) -> list[View]:
    """The subjects of `config`'s site that every worker follows (none: no view)."""
    site = config.site.id
    gateway_of = {sid: g.id for sid, (g, _) in config.sensor_index().items()}
    readings = [f"{PARTITIONED_SUBJECT}.*.{site}.{gateway_of[a.tacho_sensor]}"
                f".{a.tacho_sensor}.tacho"
                for a in config.assets if a.tacho_sensor in gateway_of]
    readings += [f"{PARTITIONED_SUBJECT}.*.{site}.{g.id}.{s.id}.window"
                 for g in config.gateways for s in g.sensors if s.kind == "temperature"]
    views = [View(topology.CONTROL, (f"bp.v1.{site}.*.status",))]
    if readings:
        views.append(View(topology.WINDOWS, tuple(readings)))
    return views


async def follow(js: JetStreamContext, view: View, see: See, stop: asyncio.Event,
                 counters: dict[str, int]) -> None:
    """Pass every message of `view` to `see`, from the latest of each subject on, until
    `stop`. Failures are counted (`view_errors`), logged and retried: the view never
    stops the worker."""
    while not stop.is_set():
        # After a failure it starts again from the latest of each subject: the view keeps
        # only the latest anyway, and does not step through a backlog of old readings.
        name, sub = f"view-{uuid.uuid4().hex}", None
        try:
            await js.add_consumer(view.stream, ConsumerConfig(
                name=name, filter_subjects=list(view.subjects), ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=INACTIVE_S,
                num_replicas=1, mem_storage=True))
            sub = await js.pull_subscribe_bind(name, stream=view.stream)
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(FETCH_MAX, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    continue
                for m in msgs:
                    _see_one(see, m.subject, m.data, counters)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            counters["view_errors"] += 1
            log.warning(kv("cluster_view_failed", stream=view.stream, reason=repr(e)))
            await sleep_or_stop(stop, 1.0)
        finally:
            with contextlib.suppress(Exception):
                if sub is not None:
                    await sub.unsubscribe()
                await js.delete_consumer(view.stream, name)


def _see_one(see: See, subject: str, payload: bytes, counters: dict[str, int]) -> None:
    try:
        see(subject, payload)
    except Exception as e:  # one message the view cannot take: the next ones still count
        counters["view_errors"] += 1
        log.warning(kv("cluster_view_message_failed", subject=subject, reason=repr(e)))
        return
    counters["view_seen"] += 1
