"""A sensor's state in the KV bucket, so that it moves with its partition.

The state is what the pipeline remembers of the sensor (online model, alert states,
impact evidence, `Pipeline.export_sensor`) and the seqs of its last written windows (the
de-duplication). It is saved after the sensor's windows are written and before they are
acknowledged: a worker that dies in between leaves the windows to be redelivered and the
state of before them, so the next owner processes them once, in the model as in InfluxDB.

Values are pickles: the KV bucket is written only by the stream's own workers (the NATS
permissions of docs/scale-out.md), as the state dir is written only by the stream.

Saves are fenced by the key's revision: a worker writes a sensor's state only over the
revision it loaded (or last wrote). A put of a worker whose lease lapsed while the put was
on its way (its link stalled) would otherwise land on top of the new owner's state, and
the owner after would load rolled-back de-dup seqs, models and alert states.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
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


UNREADABLE = "unreadable"
"""Suffix of the key an unreadable state is kept under (`{site}.{gateway}.{sensor}.unreadable`):
one token more than any sensor's key, so it is no sensor's."""


def state_key(site: str, gateway: str, sensor: str) -> str:
    return f"{site}.{gateway}.{sensor}"


class StateConflict(RuntimeError):
    """Another writer changed sensors' state since this worker loaded or saved it: their
    state is forgotten (loaded again before their next window) and the batch must not be
    acknowledged."""

    def __init__(self, keys: list[Key]) -> None:
        super().__init__("state written by another worker meanwhile: "
                         + ", ".join(state_key(*k) for k in keys))
        self.keys = keys


class KvState:
    """Loads a sensor's state when this worker first sees it in a partition it took, and
    saves it after each written batch."""

    def __init__(self, bucket: KeyValue, pipeline: Pipeline, dedup: Deduplicator) -> None:
        self.bucket = bucket
        self.pipeline = pipeline
        self.dedup = dedup
        self.loaded: set[Key] = set()
        # The key's revision this worker's state is of (0: no value): its next save must
        # find that one there.
        self.revision: dict[Key, int] = {}
        self.counters = {"state_loaded": 0, "state_fresh": 0, "state_saved": 0,
                         "state_bytes": 0, "state_unreadable": 0, "state_conflict": 0}

    def forget(self, keys: set[Key]) -> None:
        """The partition of `keys` went to another worker: load them again if it returns."""
        self.loaded -= keys
        for key in keys:
            self.revision.pop(key, None)

    async def load(self, keys: set[Key]) -> None:
        for key in keys - self.loaded:
            sensor = key[2]
            if not self.pipeline.knows(sensor):
                continue  # admission refuses it; nothing to load
            name = state_key(*key)
            revision, raw = 0, b""
            try:
                entry = await self.bucket.get(name)
                revision, raw = entry.revision or 0, entry.value or b""
            except KeyNotFoundError as e:
                # Deleted or purged: the marker is the key's last revision, saved over.
                revision = e.entry.revision if e.entry is not None else 0
            data = await self._read(key, raw) if raw else None
            if data is not None:
                try:
                    self.pipeline.import_sensor(sensor, data["pipeline"])
                    self.dedup.restore(key, data["seqs"])
                except Exception as e:  # a model of another release that does not fit
                    await self._unreadable(key, raw, e)
                    data = None
            if data is None:
                # No state yet (a new sensor), or none this release can use: start fresh,
                # dropping whatever this worker remembers from an earlier time it owned
                # the sensor.
                self.pipeline.import_sensor(sensor, {})
                self.dedup.restore(key, [])
                self.counters["state_fresh"] += 1
            else:
                self.counters["state_loaded"] += 1
            self.revision[key] = revision
            self.loaded.add(key)
            log.info(kv("sensor_state_loaded", sensor=sensor, found=data is not None,
                        revision=revision))

    async def _read(self, key: Key, raw: bytes) -> dict[str, Any] | None:
        """The state in `raw`, None when it is not of this FORMAT. A value that does not
        unpickle (its classes renamed or gone in this release, during a rolling upgrade;
        damaged) is set aside: raised, it would stop the whole partition for good, its
        healthy sensors too."""
        try:
            data = pickle.loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"a {type(data).__name__}, not a dict")
        except Exception as e:
            await self._unreadable(key, raw, e)
            return None
        return data if data.get("format") == FORMAT else None

    async def _unreadable(self, key: Key, raw: bytes, error: Exception) -> None:
        """Keep `raw` under `{key}.unreadable` (for a look, or a release that reads it) and
        count it; the sensor then starts fresh. Raises if it cannot be kept: the load is
        tried again with the batch, rather than the value overwritten by the next save."""
        aside = f"{state_key(*key)}.{UNREADABLE}"
        await self.bucket.put(aside, raw)
        self.counters["state_unreadable"] += 1
        log.error(kv("sensor_state_unreadable", sensor=key[2], key=state_key(*key),
                     kept=aside, bytes=len(raw), reason=repr(error)))

    async def save(self, keys: set[Key]) -> None:
        """Put each sensor's state; raises on failure (the batch then stays unacknowledged).

        The puts go out together and are awaited together: one after another, each waiting
        for its replicated acknowledgement, they cost a JetStream round trip per sensor of
        the batch (the worker's bound at small batches, BENCHMARKS.md). Different keys have
        no order between them; one key's puts stay in order because batches do.

        Each put goes over the revision this worker's state is of (`load`, or its last
        save): a key written by someone else meanwhile (a new owner, after this worker's
        lease lapsed) is not overwritten; it is forgotten and StateConflict raised. A
        sensor never loaded (not known to this worker's pipeline) is not saved.
        """
        blobs = {key: pickle.dumps({"format": FORMAT,
                                    "pipeline": self.pipeline.export_sensor(key[2]),
                                    "seqs": self.dedup.recent(key, DEDUP_SEQS)},
                                   protocol=pickle.HIGHEST_PROTOCOL)
                 for key in keys if key in self.revision}
        # update(last=0) is a create that also refuses to go over a delete marker written
        # since the load (bucket.create would).
        answers = await asyncio.gather(*(self.bucket.update(state_key(*key), blob,
                                                            last=self.revision[key])
                                         for key, blob in blobs.items()),
                                       return_exceptions=True)
        conflicts: list[Key] = []
        failed: BaseException | None = None
        for key, answer in zip(blobs, answers, strict=True):
            if isinstance(answer, int):
                self.revision[key] = answer
                continue
            # Refused, or not known whether it landed: this worker's revision is no longer
            # known to be the key's, so the state is loaded again before the next window.
            self.forget({key})
            if isinstance(answer, KeyWrongLastSequenceError):
                conflicts.append(key)
            else:
                failed = failed or answer
        if conflicts:
            self.counters["state_conflict"] += len(conflicts)
            log.warning(kv("state_conflict", keys=",".join(state_key(*k) for k in conflicts),
                           action="not saved, batch not acknowledged, state reloaded"))
            raise StateConflict(conflicts)
        if failed is not None:
            raise failed
        self.counters["state_saved"] += len(blobs)
        if blobs:
            self.counters["state_bytes"] = len(blobs[next(iter(blobs))])
