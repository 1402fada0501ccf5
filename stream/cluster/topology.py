"""The JetStream streams, consumers and KV buckets of the scale-out, declared idempotently.

    WINDOWS  bpw.{p}.{site}.{gateway}.{sensor}.{window|tacho|command}   file, R3
    CONTROL  bp.v1.{site}.{gateway}.status, bp.v1.{site}.command          file, R3
    ALERTS   bpa.{site}    alert transitions, de-duplicated by Nats-Msg-Id  file, R3
    KV bp_leases_{site}   partition -> worker id (TTL = lease_s)
    KV bp_workers_{site}  worker id -> heartbeat (TTL = lease_s)
    KV bp_state           site.gateway.sensor -> that sensor's state (stream/cluster/state.py)

Several sites (plants) share one cluster: the streams and the state bucket are common,
and each site's workers have consumers filtered on their site (`{site}-part-{p}`,
`{site}-control`, `{site}-webhooks`) and leases of their own, so they share partitions
only with each other (LAYOUT_VERSION 2; version 1 had one site per cluster and consumers
`part-{p}`, `control`, `webhooks`, which a version 2 worker takes over from where they
stopped, `_resume_seq`).

Every worker declares them at start; a second declaration with the same settings is a
no-op, one with changed retention updates the stream, one with a changed `lease_s` or
`replicas` updates the buckets' streams (`_bucket`).

A plant with a leaf node (docs/scale-out.md, "Edge sites") has its own WINDOWS and CONTROL
streams in its own JetStream domain (`declare_edge`, by its `ballpass relay`); the central
ones *source* them (`[cluster] edges`): JetStream copies each plant's messages in order,
and keeps copying from where it stopped after the link was down. Each site adds its own
edges to the sources the streams already have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ExternalStream,
    KeyValueConfig,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from ballpass.config import ClusterConfig
from ballpass.log import kv
from ballpass.nats_server import CONTROL_SUBJECTS, PARTITIONED_SUBJECT

log = logging.getLogger(__name__)

LAYOUT_VERSION = 2
"""Names and filters of the consumers and buckets (docs/scale-out.md, "Several sites on
one cluster")."""
WINDOWS = "WINDOWS"
CONTROL = "CONTROL"
ALERTS = "ALERTS"
ALERT_SUBJECT = "bpa"
LEASES = "bp_leases"
WORKERS = "bp_workers"
STATE = "bp_state"
ALERT_DEDUP_WINDOW_S = 3600.0
"""A re-fired transition (same alert id and status, after a worker died before its
acknowledgement) within this long is dropped by JetStream."""
RELAY_DEDUP_WINDOW_S = 120.0
"""A message the relay stored twice (it died before acknowledging it to mosquitto) is
dropped by JetStream within this long (longer than a relay lease hand-over)."""
ACK_WAIT_S = 60.0
"""A fetched message not acknowledged by then goes to the partition's next reader; longer
than any batch (a batch's write retries stop at the stream's shutdown, not before)."""


def partition_subject(site: str, p: int) -> str:
    return f"{PARTITIONED_SUBJECT}.{p}.{site}.>"


def consumer_name(site: str, p: int) -> str:
    return f"{site}-part-{p}"


def control_consumer(site: str) -> str:
    return f"{site}-control"


def webhook_consumer(site: str) -> str:
    return f"{site}-webhooks"


def bucket_names(site: str) -> dict[str, str]:
    """The KV buckets of `site`'s workers, by role (LEASES, WORKERS, STATE)."""
    return {LEASES: f"{LEASES}_{site}", WORKERS: f"{WORKERS}_{site}", STATE: STATE}


def _relayed_streams(c: ClusterConfig, edges: tuple[str, ...]) -> list[StreamConfig]:
    """WINDOWS and CONTROL, the streams the relay publishes to, each sourcing the same
    stream of every edge in `edges`."""
    def sources(name: str) -> list[StreamSource] | None:
        return [StreamSource(name=name, external=ExternalStream(api=f"$JS.{e}.API"))
                for e in edges] or None
    age_s = c.window_retention_h * 3600.0
    return [StreamConfig(name=name, subjects=subjects, max_age=age_s, sources=sources(name),
                         storage=StorageType.FILE, num_replicas=c.replicas,
                         duplicate_window=RELAY_DEDUP_WINDOW_S)
            for name, subjects in ((WINDOWS, [f"{PARTITIONED_SUBJECT}.>"]),
                                   (CONTROL, list(CONTROL_SUBJECTS)))]


async def _add_or_update(js: JetStreamContext, streams: list[StreamConfig]) -> None:
    for config in streams:
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with other settings: take this config's
            await _update_keeping_other_sources(js, config)


def _api(source: StreamSource) -> str | None:
    return source.external.api if source.external else None


async def _update_keeping_other_sources(js: JetStreamContext, config: StreamConfig) -> None:
    """Update to `config`, keeping the sources other sites gave the stream: a site adds its
    edges and never drops another site's (an edge no site lists any more is removed by
    hand). Read, merge, write: two sites updating at once can each overwrite the other's
    merge, so the result is read back and the update repeated until this site's are in."""
    assert config.name is not None
    mine = config.sources or []
    ours = {_api(s) for s in mine}
    for _ in range(5):
        have = (await js.stream_info(config.name)).config.sources or []
        merged = [*mine, *(s for s in have if _api(s) not in ours)]
        await js.update_stream(dataclasses.replace(config, sources=merged or None))
        now = {_api(s) for s in (await js.stream_info(config.name)).config.sources or []}
        if ours <= now:
            return
    raise RuntimeError(f"stream {config.name}: sources {sorted(map(str, ours))} did not "
                       "stay after 5 updates (other sites updating it all the time)")


async def declare_edge(js: JetStreamContext, c: ClusterConfig) -> None:
    """A plant's streams on its leaf node: what its relay stores while the link is down."""
    await _add_or_update(js, _relayed_streams(c, ()))
    log.info(kv("edge_topology_declared", replicas=c.replicas))


async def declare(js: JetStreamContext, c: ClusterConfig, site: str) -> dict[str, KeyValue]:
    """Create or update the streams, `site`'s consumers and buckets; the KV handles by
    role (LEASES, WORKERS, STATE)."""
    await _add_or_update(js, [*_relayed_streams(c, c.edges), StreamConfig(
        name=ALERTS, subjects=[f"{ALERT_SUBJECT}.>"], max_age=c.window_retention_h * 3600.0,
        storage=StorageType.FILE, num_replicas=c.replicas,
        duplicate_window=ALERT_DEDUP_WINDOW_S)])
    # Version 1's consumers had no site: "control" and "webhooks".
    control = ConsumerConfig(durable_name=control_consumer(site),
                             filter_subject=f"bp.v1.{site}.>", ack_policy=AckPolicy.EXPLICIT,
                             ack_wait=ACK_WAIT_S, num_replicas=c.replicas)
    for stream, config, v1 in ((CONTROL, control, "control"),
                               (ALERTS, _webhook_config(site, c.replicas), "webhooks")):
        await _ensure_consumer(js, site, stream, config, v1)
    buckets = {}
    ttls = {LEASES: c.lease_s, WORKERS: c.lease_s, STATE: None}
    for role, name in bucket_names(site).items():
        buckets[role] = await _bucket(js, KeyValueConfig(
            bucket=name, ttl=ttls[role], history=1, replicas=c.replicas,
            storage=StorageType.FILE))
    log.info(kv("cluster_topology_declared", site=site, partitions=c.partitions,
                replicas=c.replicas, edges=",".join(c.edges) or "none",
                layout=LAYOUT_VERSION))
    return buckets


KV_DUPLICATE_WINDOW_S = 120.0
"""nats-py's duplicate window of a bucket's stream, or its TTL when shorter."""


async def _bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Create the bucket of `config`, or take it to `config`'s TTL and replicas.

    A bucket created before `lease_s` or `replicas` changed exists with other settings,
    and creating it again is refused ("stream name already in use with a different
    configuration"): retried as if the cluster were down, no worker would ever start.
    Its stream (KV_{bucket}) is updated as the streams are (`_add_or_update`), then
    created again, now a no-op returning the handle."""
    try:
        return await js.create_key_value(config)
    except BadRequestError as e:
        stream = f"KV_{config.bucket}"
        have = (await js.stream_info(stream)).config
        ttl = config.ttl or 0.0
        want = dataclasses.replace(
            have, max_age=ttl, num_replicas=config.replicas,
            max_msgs_per_subject=config.history, allow_msg_ttl=True,
            # Never longer than max_age, or the server refuses the update.
            duplicate_window=min(ttl, KV_DUPLICATE_WINDOW_S) if ttl
            else KV_DUPLICATE_WINDOW_S)
        try:
            await _add_or_update(js, [want])
            kv_handle = await js.create_key_value(config)
        except BadRequestError as again:
            raise RuntimeError(
                f"KV bucket {config.bucket} exists with settings it cannot be updated to "
                f"([cluster] lease_s = {config.ttl}, replicas = {config.replicas}): "
                f"{again.description or again!r} (first refusal: {e.description or e!r})"
            ) from again
        log.warning(kv("cluster_bucket_updated", bucket=config.bucket,
                       ttl_s=config.ttl or "none", replicas=config.replicas,
                       was_ttl_s=have.max_age or "none", was_replicas=have.num_replicas))
        return kv_handle


async def _resume_seq(js: JetStreamContext, stream: str,
                      names: list[str]) -> tuple[str | None, int | None]:
    """The first consumer of `names` that exists and its first unacknowledged stream
    sequence; (None, None) when none exists."""
    for name in names:
        try:
            info = await js.consumer_info(stream, name)
        except NotFoundError:
            continue
        return name, info.ack_floor.stream_seq + 1 if info.ack_floor else None
    return None, None


async def _drop_v1(js: JetStreamContext, stream: str, name: str, site: str) -> None:
    """Delete version 1's consumer once its successor took over from its position."""
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, name)
        log.info(kv("cluster_consumer_migrated", stream=stream, consumer=name, site=site,
                    layout=LAYOUT_VERSION))


def _starting_at(config: ConsumerConfig, start: int | None) -> ConsumerConfig:
    """`config` delivering from sequence `start` (`_resume_seq`), or from the first
    message without one."""
    return dataclasses.replace(
        config, deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
        opt_start_seq=start)


async def _ensure_consumer(js: JetStreamContext, site: str, stream: str,
                           config: ConsumerConfig, v1: str) -> None:
    """The durable consumer of `config` on `stream`; a new one starts where version 1's
    `v1` stopped (commands and alerts already handled are not handled again)."""
    durable = config.durable_name
    assert durable is not None
    with contextlib.suppress(NotFoundError):
        await js.consumer_info(stream, durable)
        return
    found, start = await _resume_seq(js, stream, [v1])
    try:
        await js.add_consumer(stream, _starting_at(config, start))
    except BadRequestError:  # another worker of the site created it first
        await js.consumer_info(stream, durable)
    if found == v1:
        await _drop_v1(js, stream, v1, site)


async def take_consumer(js: JetStreamContext, site: str, p: int, replicas: int,
                        max_ack_pending: int) -> None:
    """(Re)create `site`'s durable consumer of partition `p` from its first
    unacknowledged window (version 1's `part-{p}`'s when it is the first), `_recreate`."""
    await _recreate(js, site, WINDOWS, ConsumerConfig(
        durable_name=consumer_name(site, p), filter_subject=partition_subject(site, p),
        ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=max_ack_pending,
        num_replicas=replicas), f"part-{p}")


async def take_webhook_consumer(js: JetStreamContext, site: str, replicas: int) -> None:
    """(Re)create `site`'s `{site}-webhooks` consumer of ALERTS from its first
    unacknowledged alert, `_recreate`: done by each worker that takes the webhooks lease.

    Only the lease holder reads it, so that alerts go out in order; a previous holder's
    fetched and unacknowledged alerts (it stopped or died mid-fetch: its pull request
    stayed on the server and took them) would otherwise come to the new one only after
    ACK_WAIT_S, after newer ones it has sent. (CONTROL's consumer is shared by every
    worker at once, with no lease: it is never recreated.)"""
    await _recreate(js, site, ALERTS, _webhook_config(site, replicas), "webhooks")


def _webhook_config(site: str, replicas: int) -> ConsumerConfig:
    return ConsumerConfig(durable_name=webhook_consumer(site),
                          filter_subject=f"{ALERT_SUBJECT}.{site}",
                          ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                          num_replicas=replicas)


RECREATE_TRIES = 3


async def _recreate(js: JetStreamContext, site: str, stream: str, config: ConsumerConfig,
                    v1: str) -> None:
    """Delete the durable consumer of `config` and create it again from its first
    unacknowledged message (from version 1's `v1`'s when it is the first).

    A new owner recreates it rather than binding to it: the previous owner's fetched but
    unacknowledged messages come again at once, in order (not after ACK_WAIT_S), and the
    previous owner's pull requests still waiting on the server go away with the old
    consumer (a pull request goes by the durable's name, and one cancelled mid-fetch or
    left by a dead worker would take new messages and keep them for ACK_WAIT_S); a
    previous owner that is still running loses its binding. A worker starting meanwhile
    can create the consumer in the gap (`declare`, from the stream's first message):
    deleted again, this start position wins.
    """
    name = config.durable_name
    assert name is not None
    found, start = await _resume_seq(js, stream, [name, v1])
    if found == name:
        with contextlib.suppress(NotFoundError):  # another owner may have deleted it
            await js.delete_consumer(stream, name)
    config = _starting_at(config, start)
    for attempt in range(1, RECREATE_TRIES + 1):
        try:
            await js.add_consumer(stream, config)
            break
        except BadRequestError:  # created in the gap, with another start
            if attempt == RECREATE_TRIES:
                raise
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(stream, name)
    if found == v1:
        await _drop_v1(js, stream, v1, site)
