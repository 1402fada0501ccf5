"""A sensor's state in the KV bucket, so that it moves with its partition.

The state is what the pipeline remembers of the sensor (online model, alert states,
impact evidence, `Pipeline.export_sensor`) and the seqs of its last written windows (the
de-duplication). It is saved after the sensor's windows are written and before they are
acknowledged: a worker that dies in between leaves the windows to be redelivered and the
state of before them, so the next owner processes them once, in the model as in InfluxDB.

Values are pickles: the KV bucket is written only by the stream's own workers (the NATS
permissions of docs/scale-out.md), as the state dir is written only by the stream.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from ballpass.log import kv
from ballpass.stream.dedup import Deduplicator
from ballpass.stream.pipeline import Pipeline

log = logging.getLogger(__name__)

FORMAT = "ballpass.sensor_state.v1"
DEDUP_SEQS = 1024
"""Seqs handed over per sensor: more than a partition's unacknowledged windows
(`source.MAX_ACK_PENDING`) and a gateway's usual re-sends after a lost PUBACK."""

Key = tuple[str, str, str]  # (site, gateway, sensor)


def state_key(site: str, gateway: str, sensor: str) -> str:
    return f"{site}.{gateway}.{sensor}"


class KvState:
    """Loads a sensor's state when this worker first sees it in a partition it took, and
    saves it after each written batch."""

    def __init__(self, bucket: KeyValue, pipeline: Pipeline, dedup: Deduplicator) -> None:
        self.bucket = bucket
        self.pipeline = pipeline
        self.dedup = dedup
        self.loaded: set[Key] = set()
        self.counters = {"state_loaded": 0, "state_fresh": 0, "state_saved": 0,
                         "state_bytes": 0}

    def forget(self, keys: set[Key]) -> None:
        """The partition of `keys` went to another worker: load them again if it returns."""
        self.loaded -= keys

    async def load(self, keys: set[Key]) -> None:
        for key in keys - self.loaded:
            sensor = key[2]
            if not self.pipeline.knows(sensor):
                continue  # admission refuses it; nothing to load
            try:
                entry = await self.bucket.get(state_key(*key))
                data: dict[str, Any] | None = pickle.loads(entry.value) if entry.value else None
            except KeyNotFoundError:
                data = None
            if data is None or data.get("format") != FORMAT:
                # No state yet (a new sensor): start fresh, dropping whatever this worker
                # remembers from an earlier time it owned the sensor.
                self.pipeline.import_sensor(sensor, {})
                self.dedup.restore(key, [])
                self.counters["state_fresh"] += 1
            else:
                self.pipeline.import_sensor(sensor, data["pipeline"])
                self.dedup.restore(key, data["seqs"])
                self.counters["state_loaded"] += 1
            self.loaded.add(key)
            log.info(kv("sensor_state_loaded", sensor=sensor, found=data is not None))

    async def save(self, keys: set[Key]) -> None:
        """Put each sensor's state; raises on failure (the batch then stays unacknowledged).

        The puts go out together and are awaited together: one after another, each waiting
        for its replicated acknowledgement, they cost a JetStream round trip per sensor of
        the batch (the worker's bound at small batches, BENCHMARKS.md). Different keys have
        no order between them; one key's puts stay in order because batches do.
        """
        blobs = {key: pickle.dumps({"format": FORMAT,
                                    "pipeline": self.pipeline.export_sensor(key[2]),
                                    "seqs": self.dedup.recent(key, DEDUP_SEQS)},
                                   protocol=pickle.HIGHEST_PROTOCOL) for key in keys}
        answers = await asyncio.gather(*(self.bucket.put(state_key(*key), blob)
                                         for key, blob in blobs.items()),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        self.counters["state_saved"] += len(blobs)
        if blobs:
            self.counters["state_bytes"] = len(blobs[next(iter(blobs))])
