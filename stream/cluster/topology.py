"""The JetStream streams, consumers and KV buckets of the scale-out, declared idempotently.

    WINDOWS  bpw.{p}.{site}.{gateway}.{sensor}.{window|tacho|command}   file, R3
    CONTROL  bp.v1.{site}.{gateway}.status, bp.v1.{site}.command          file, R3
    ALERTS   bpa.{site}    alert transitions, de-duplicated by Nats-Msg-Id  file, R3
    KV bp_leases   partition -> worker id (TTL = lease_s)
    KV bp_workers  worker id -> heartbeat (TTL = lease_s)
    KV bp_state    site.gateway.sensor -> that sensor's state (stream/cluster/state.py)

Every worker declares them at start; a second declaration with the same settings is a
no-op, one with changed retention updates the stream.

A plant with a leaf node (docs/scale-out.md, "Edge sites") has its own WINDOWS and CONTROL
streams in its own JetStream domain (`declare_edge`, by its `ballpass relay`); the central
ones *source* them (`[cluster] edges`): JetStream copies each plant's messages in order,
and keeps copying from where it stopped after the link was down.
"""

from __future__ import annotations

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

WINDOWS = "WINDOWS"
CONTROL = "CONTROL"
ALERTS = "ALERTS"
ALERT_SUBJECT = "bpa"
LEASES = "bp_leases"
WORKERS = "bp_workers"
STATE = "bp_state"
CONTROL_CONSUMER = "control"
WEBHOOK_CONSUMER = "webhooks"
ALERT_DEDUP_WINDOW_S = 3600.0
"""A re-fired transition (same alert id and status, after a worker died before its
acknowledgement) within this long is dropped by JetStream."""
RELAY_DEDUP_WINDOW_S = 120.0
"""A message the relay stored twice (it died before acknowledging it to mosquitto) is
dropped by JetStream within this long (longer than a relay lease hand-over)."""
ACK_WAIT_S = 60.0
"""A fetched message not acknowledged by then goes to the partition's next reader; longer
than any batch (a batch's write retries stop at the stream's shutdown, not before)."""


def partition_subject(p: int) -> str:
    return f"{PARTITIONED_SUBJECT}.{p}.>"


def consumer_name(p: int) -> str:
    return f"part-{p}"


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
            await js.update_stream(config)


async def declare_edge(js: JetStreamContext, c: ClusterConfig) -> None:
    """A plant's streams on its leaf node: what its relay stores while the link is down."""
    await _add_or_update(js, _relayed_streams(c, ()))
    log.info(kv("edge_topology_declared", replicas=c.replicas))


async def declare(js: JetStreamContext, c: ClusterConfig) -> dict[str, KeyValue]:
    """Create or update the streams and buckets; the KV handles by bucket name."""
    await _add_or_update(js, [*_relayed_streams(c, c.edges), StreamConfig(
        name=ALERTS, subjects=[f"{ALERT_SUBJECT}.>"], max_age=c.window_retention_h * 3600.0,
        storage=StorageType.FILE, num_replicas=c.replicas,
        duplicate_window=ALERT_DEDUP_WINDOW_S)])
    for durable, stream in ((CONTROL_CONSUMER, CONTROL), (WEBHOOK_CONSUMER, ALERTS)):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
            num_replicas=c.replicas))
    buckets = {}
    for name, ttl in ((LEASES, c.lease_s), (WORKERS, c.lease_s), (STATE, None)):
        buckets[name] = await js.create_key_value(KeyValueConfig(
            bucket=name, ttl=ttl, history=1, replicas=c.replicas,
            storage=StorageType.FILE))
    log.info(kv("cluster_topology_declared", partitions=c.partitions, replicas=c.replicas,
                edges=",".join(c.edges) or "none"))
    return buckets


async def take_consumer(js: JetStreamContext, p: int, replicas: int,
                        max_ack_pending: int) -> None:
    """(Re)create partition `p`'s durable consumer from its first unacknowledged window.

    A new owner recreates it rather than binding to it: the previous owner's fetched but
    unacknowledged windows come again at once, in order (not after ACK_WAIT_S), and a
    previous owner that is still running loses its binding.
    """
    name = consumer_name(p)
    start: int | None = None
    try:
        info = await js.consumer_info(WINDOWS, name)
        start = info.ack_floor.stream_seq + 1 if info.ack_floor else None
        await js.delete_consumer(WINDOWS, name)
    except NotFoundError:
        pass
    await js.add_consumer(WINDOWS, ConsumerConfig(
        durable_name=name, filter_subject=partition_subject(p),
        ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=max_ack_pending,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
        opt_start_seq=start, num_replicas=replicas))
