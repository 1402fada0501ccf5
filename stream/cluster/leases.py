"""Which worker owns which partition: leases in a KV bucket, renewed or lost.

A lease is the key `p{n}` holding the owner's id; the bucket's TTL (`lease_s`) deletes a
lease that is not renewed, so a dead worker's partitions are free `lease_s` seconds after
its last renewal. Creating a key is atomic (it fails when the key exists) and renewing is
a compare-and-set on the revision, so two workers can never both hold a partition's lease.
The `relay` lease makes one worker at a time the relay from mosquitto (relay.py); the
`webhooks` lease makes one worker at a time the sender of the site's webhooks, so that
an alert's firing and resolved go out in order, from one spool.
Every worker also heartbeats in the workers bucket; each aims at its fair share,
ceil(partitions / live workers), takes free partitions up to it and gives back the ones
above it, so partitions spread when a worker joins and move when one dies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from ballpass.log import kv

log = logging.getLogger(__name__)


RELAY_KEY = "relay"
WEBHOOKS_KEY = "webhooks"
SINGLE_KEYS = (RELAY_KEY, WEBHOOKS_KEY)  # leases one worker of the site holds


def lease_key(p: int) -> str:
    return f"p{p}"


def fair_share(partitions: int, workers: int) -> int:
    """Partitions one of `workers` live workers should hold (at least 1 worker counted)."""
    return math.ceil(partitions / max(1, workers))


@dataclass
class Leases:
    """This worker's leases. `tick` renews, takes and gives back; it returns what changed."""

    leases: KeyValue
    workers: KeyValue
    worker_id: str
    partitions: int
    held: dict[int, int] = field(default_factory=dict)  # partition -> lease revision
    singles: dict[str, int] = field(default_factory=dict)  # SINGLE_KEYS held -> revision
    lease_s: float = 5.0
    renewed: dict[int | str, float] = field(default_factory=dict)  # monotonic, per lease
    away_until: dict[str, float] = field(default_factory=dict)  # monotonic: not taken before

    def valid(self, lease: int | str) -> bool:
        """Held and renewed recently enough that it cannot have lapsed yet: a worker cut
        off from the cluster stops working on a partition before another can take it."""
        held = lease in self.singles if isinstance(lease, str) else lease in self.held
        return held and time.monotonic() - self.renewed.get(lease, -math.inf) \
            < 0.6 * self.lease_s

    async def tick(self) -> None:
        """One round: heartbeat, renew held leases (the relay's and the webhooks' too, or
        take them when free), then take free partitions up to the fair share. Raises when
        the cluster does not answer; what was done until then stays in `held`."""
        await self.workers.put(self.worker_id, b"alive")
        for p in list(self.held):
            await self._renew(p)
        for key in SINGLE_KEYS:
            await self._single_lease(key)
        share = fair_share(self.partitions, len(await _keys(self.workers)))
        owners = await self._owners()
        # Start after this worker's own id so that workers starting together spread.
        order = sorted(range(self.partitions),
                       key=lambda p: (p - zlib.crc32(self.worker_id.encode())) % self.partitions)
        for p in order:
            if len(self.held) >= share:
                break
            if p not in self.held and p not in owners:
                await self._take(p)

    def surplus(self, live_workers: int) -> list[int]:
        """Partitions above the fair share, to give back once their batch is done."""
        extra = len(self.held) - fair_share(self.partitions, live_workers)
        return sorted(self.held)[:max(0, extra)]

    async def live_workers(self) -> int:
        return len(await _keys(self.workers))

    async def release(self, p: int) -> None:
        rev = self.held.pop(p, None)
        if rev is None:
            return
        # Already taken over or expired: nothing to give back.
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
            await self.leases.delete(lease_key(p), last=rev)
        log.info(kv("partition_released", partition=p, worker=self.worker_id))

    async def release_all(self) -> None:
        for p in list(self.held):
            await self.release(p)
        for key, rev in list(self.singles.items()):
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self.leases.delete(key, last=rev)
            del self.singles[key]
        with contextlib.suppress(KeyNotFoundError):
            await self.workers.delete(self.worker_id)

    async def give_up_relay(self, away_s: float) -> None:
        """After this worker's relay failed: free the lease at once (not after its TTL) and
        leave it to the others for `away_s`, so that a healthy worker relays meanwhile."""
        self.away_until[RELAY_KEY] = time.monotonic() + away_s
        rev = self.singles.pop(RELAY_KEY, None)
        if rev is not None:
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self.leases.delete(RELAY_KEY, last=rev)
        log.info(kv("relay_lease_given_up", worker=self.worker_id, away_s=round(away_s, 1)))

    async def _single_lease(self, key: str) -> None:
        """Renew the lease `key` (one of SINGLE_KEYS), or take it when it is free."""
        me = self.worker_id.encode()
        rev = self.singles.get(key)
        if rev is None and time.monotonic() < self.away_until.get(key, 0.0):
            return
        started = time.monotonic()
        try:
            if rev is None:
                self.singles[key] = await self.leases.create(key, me)
                log.info(kv(f"{key}_lease_taken", worker=self.worker_id))
            else:
                self.singles[key] = await self.leases.update(key, me, last=rev)
            self.renewed[key] = started
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            if rev is not None:
                log.warning(kv(f"{key}_lease_lost", worker=self.worker_id))
            self.singles.pop(key, None)

    async def _take(self, p: int) -> None:
        started = time.monotonic()
        try:
            self.held[p] = await self.leases.create(lease_key(p), self.worker_id.encode())
        except KeyWrongLastSequenceError:
            return  # another worker was first
        self.renewed[p] = started
        log.info(kv("partition_taken", partition=p, worker=self.worker_id))

    async def _renew(self, p: int) -> None:
        started = time.monotonic()  # the lease runs from the request, not the answer
        try:
            self.held[p] = await self.leases.update(lease_key(p), self.worker_id.encode(),
                                                    last=self.held[p])
            self.renewed[p] = started
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self.held.pop(p, None)
            log.warning(kv("partition_lease_lost", partition=p, worker=self.worker_id))

    async def _owners(self) -> set[int]:
        return {int(k[1:]) for k in await _keys(self.leases) if k[1:].isdigit()}


async def _keys(bucket: KeyValue) -> list[str]:
    try:
        return list(await bucket.keys())
    except NoKeysError:  # nats-py's answer for an empty bucket
        return []
