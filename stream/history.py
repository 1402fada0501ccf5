"""The history an engineer asks for: raw windows and their spectra kept on disk.

At each alert transition, and every `[stream] history_interval_s` per sensor, the stream
keeps one acceleration window: its raw samples (float32), the amplitude spectrum and the
envelope spectrum the evidence page draws (`web.state.compute_spectra`), and the alert or
diagnosis that went with it. Each entry is one compressed `.npz` file

    STATE_DIR/history/SENSOR/T0_NS-REASON.npz     (REASON: "interval", "firing", "resolved")

written to a temporary name and renamed, so a crash leaves a whole file or none. The store
is bounded by age (`history_max_age_d`) and total size (`history_max_mb`): at start and
after each write the oldest entries go first (counted by reason, "age" or "size"). An
entry's age runs from the earlier of its window time and the wall-clock time it was
written, so one stamped ahead by a wrong gateway clock ages out like the others. A file
that does not read
(torn by a full disk, edited by hand) is skipped, counted as `corrupt` and left for the
bounds to remove. Everything is read back from disk, so the history survives a restart.

Pure store: no asyncio (the service calls it from a worker thread); a lock makes the
writer thread and the evidence page's readers safe together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ballpass.log import kv

log = logging.getLogger(__name__)

WATERFALL_BINS = 256
"""Frequency bins of one waterfall row (each the peak of its bucket)."""

WATERFALL_MAX_ROWS = 400
"""Rows of a waterfall at most (the newest kept)."""

_NAME = re.compile(r"^(\d{1,20})-([a-z_]{1,20})\.npz$")


@dataclass
class HistoryCounters:
    kept: Counter[str] = field(default_factory=Counter)  # by reason
    pruned: Counter[str] = field(default_factory=Counter)  # by reason: age, size
    write_errors: int = 0
    corrupt: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"kept": dict(self.kept), "pruned": dict(self.pruned),
                "write_errors": self.write_errors, "corrupt": self.corrupt}


@dataclass(frozen=True)
class Entry:
    sensor: str
    t0_ns: int
    reason: str
    path: Path
    size: int
    written_s: float = math.inf
    """Wall-clock time the file was written (s since the epoch; its mtime after a restart)."""

    @property
    def age_from_s(self) -> float:
        """The time its age runs from, s since the epoch: the window's time, or the write's
        when the window is stamped later than that (a gateway clock ahead)."""
        return min(self.t0_ns / 1e9, self.written_s)

    @property
    def id(self) -> str:
        return self.path.stem


class HistoryStore:
    """Entries per sensor under `root`, bounded by `max_bytes` in total and `max_age_s`."""

    def __init__(self, root: Path, max_bytes: int, max_age_s: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.counters = HistoryCounters()
        self._lock = threading.Lock()
        self._entries: dict[str, list[Entry]] = {}
        # Wall-clock time (s) of each sensor's last keep: `due` falls back on it when window
        # times went back (see there).
        self._kept_wall_s: dict[str, float] = {}
        self._scan()
        # The bounds hold from the start, not only after the next write (which may never
        # come: history_interval_s = 0 and no alerts, or a lowered history_max_age_d).
        self.prune(time.time())

    # --- index ---------------------------------------------------------------------

    @staticmethod
    def _dir_name(sensor: str) -> str:
        return urllib.parse.quote(sensor, safe="")

    def _scan(self) -> None:
        """The index from disk (at start: what earlier runs kept)."""
        if not self.root.is_dir():
            return
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            sensor = urllib.parse.unquote(d.name)
            entries = []
            for f in d.iterdir():
                m = _NAME.match(f.name)
                if m is None:
                    if f.suffix == ".tmp":
                        f.unlink(missing_ok=True)  # a write a crash interrupted
                    continue
                try:
                    st = f.stat()
                except OSError:
                    continue
                entries.append(Entry(sensor, int(m.group(1)), m.group(2), f, st.st_size,
                                     st.st_mtime))
            entries.sort(key=lambda e: e.t0_ns)
            if entries:
                self._entries[sensor] = entries
                self._kept_wall_s[sensor] = max(e.written_s for e in entries)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for es in self._entries.values() for e in es)

    def status(self) -> dict[str, object]:
        with self._lock:
            n = sum(len(es) for es in self._entries.values())
            size = sum(e.size for es in self._entries.values() for e in es)
        return {**self.counters.as_dict(), "entries": n, "bytes": size}

    def entries(self, sensor: str) -> list[Entry]:
        with self._lock:
            return list(self._entries.get(sensor, ()))

    def due(self, sensor: str, t0_ns: int, interval_s: float,
            now_s: float | None = None) -> bool:
        """True when `sensor`'s last entry is `interval_s` (s) or more before `t0_ns` (ns).

        A window older than the last entry (a window stamped ahead was kept, then the
        gateway's clock was corrected; or old windows replayed) cannot be measured against
        it: then the interval is counted on the wall clock (`now_s`, s since the epoch;
        default now) since the sensor's last keep, so history goes on once per interval
        instead of stopping until real time catches up with the stamp."""
        with self._lock:
            es = self._entries.get(sensor)
            last = es[-1].t0_ns if es else None
            kept_wall = self._kept_wall_s.get(sensor, -math.inf)
        if last is None or t0_ns >= last:
            return last is None or (t0_ns - last) / 1e9 >= interval_s
        now = time.time() if now_s is None else now_s
        return now - kept_wall >= interval_s

    # --- write ---------------------------------------------------------------------

    def keep(self, sensor: str, t0_ns: int, reason: str, arrays: dict[str, np.ndarray],
             meta: dict[str, Any], now_s: float | None = None) -> Entry | None:
        """Write one entry (compressed) and apply the bounds; None when the write failed
        (counted as `write_errors`, logged)."""
        if not re.fullmatch(r"[a-z_]{1,20}", reason):
            raise ValueError(f"history reason {reason!r}: lowercase letters and _ only")
        d = self.root / self._dir_name(sensor)
        path = d / f"{int(t0_ns)}-{reason}.npz"
        tmp = path.with_suffix(".tmp")
        try:
            d.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                payload: dict[str, Any] = {**arrays,
                                           "meta": np.array(json.dumps(meta, default=str))}
                np.savez_compressed(f, **payload)
            os.replace(tmp, path)
            size = path.stat().st_size
        except (OSError, ValueError) as e:
            self.counters.write_errors += 1
            log.warning(kv("history_write_failed", sensor=sensor, path=path, reason=e))
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return None
        now = time.time() if now_s is None else now_s
        entry = Entry(sensor, int(t0_ns), reason, path, size, now)
        with self._lock:
            es = self._entries.setdefault(sensor, [])
            es[:] = [e for e in es if e.path != path] + [entry]
            es.sort(key=lambda e: e.t0_ns)
            self._kept_wall_s[sensor] = now
        self.counters.kept[reason] += 1
        self.prune(now)
        return entry

    def prune(self, now_s: float) -> None:
        """Remove entries older than `max_age_s` (age from `Entry.age_from_s`; `now_s` s
        since the epoch), then the oldest windows until the total fits `max_bytes`."""
        with self._lock:
            everything = sorted((e for es in self._entries.values() for e in es),
                                key=lambda e: e.t0_ns)
            # By age over all entries: one stamped ahead sorts last but ages from its write.
            drop: list[tuple[Entry, str]] = [
                (e, "age") for e in everything if now_s - e.age_from_s > self.max_age_s]
            aged = {id(e) for e, _ in drop}
            rest = [e for e in everything if id(e) not in aged]
            total = sum(e.size for e in rest)
            for e in rest:
                if total <= self.max_bytes:
                    break
                drop.append((e, "size"))
                total -= e.size
            for e, why in drop:
                try:
                    e.path.unlink(missing_ok=True)
                except OSError as err:
                    log.warning(kv("history_prune_failed", path=e.path, reason=err))
                    continue
                self._entries[e.sensor].remove(e)
                self.counters.pruned[why] += 1

    # --- read ----------------------------------------------------------------------

    def load(self, sensor: str, entry_id: str) -> dict[str, Any] | None:
        """One entry's arrays and `meta`; None when absent or corrupt (counted)."""
        for e in self.entries(sensor):
            if e.id == entry_id:
                return self._read(e)
        return None

    def _read(self, e: Entry, keys: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The entry's arrays (only `keys` of them, when given: an npz member is read and
        decompressed only when asked for, and the raw samples are most of the file)."""
        try:
            with open(e.path, "rb") as f, np.load(f, allow_pickle=False) as z:
                out: dict[str, Any] = {k: z[k] for k in z.files
                                       if keys is None or k in keys or k == "meta"}
            out["meta"] = json.loads(str(out["meta"]))
            if not isinstance(out["meta"], dict):
                raise ValueError(f"meta is a {type(out['meta']).__name__}, not an object")
            return out
        # A damaged file can fail anywhere in zip, zlib, the .npy header or JSON: bad
        # deflate data is zlib.error, a header claiming a huge shape MemoryError. Each is
        # this one entry's problem, never the whole sensor's history.
        except (OSError, ValueError, KeyError, EOFError, TypeError, MemoryError,
                zipfile.BadZipFile, zlib.error) as err:
            self.counters.corrupt += 1
            log.warning(kv("history_corrupt", path=e.path, reason=err))
            return None

    def waterfall(self, sensor: str, since_s: float = 0.0, bins: int = WATERFALL_BINS,
                  key: str = "amp_g") -> dict[str, Any]:
        """Spectra (`key`: "amp_g" or "env_amp_g") of `sensor`'s entries since `since_s`
        on one frequency grid: `t` (s), `freq_hz` (bin centres), `amp_g` (rows, g; each
        bin the peak of the entry's spectrum inside it), `ids`, `reasons`."""
        return self.waterfalls(sensor, since_s, bins, (key,))[key]

    def waterfalls(self, sensor: str, since_s: float = 0.0, bins: int = WATERFALL_BINS,
                   keys: tuple[str, ...] = ("amp_g", "env_amp_g")) -> dict[str, Any]:
        """`waterfall` of each of `keys`, reading each entry once (spectra only)."""
        entries = [e for e in self.entries(sensor) if e.t0_ns / 1e9 >= since_s]
        entries = entries[-WATERFALL_MAX_ROWS:]
        freq_keys = {k: "freq_hz" if k == "amp_g" else "env_freq_hz" for k in keys}
        spectra = [(e, self._read(e, (*keys, *freq_keys.values()))) for e in entries]
        return {k: self._waterfall(spectra, bins, k, freq_keys[k]) for k in keys}

    @staticmethod
    def _waterfall(spectra: list[tuple[Entry, dict[str, Any] | None]], bins: int, key: str,
                   freq_key: str) -> dict[str, Any]:
        rows: list[tuple[Entry, np.ndarray, np.ndarray]] = []
        fmax = 0.0
        for e, data in spectra:
            if data is None or key not in data or freq_key not in data:
                continue
            f, a = np.asarray(data[freq_key], float), np.asarray(data[key], float)
            if f.size:
                fmax = max(fmax, float(f[-1]))
                rows.append((e, f, a))
        if not rows or fmax <= 0:
            return {"t": [], "freq_hz": [], "amp_g": [], "ids": [], "reasons": []}
        edges = np.linspace(0.0, fmax, bins + 1)
        out = []
        for _, f, a in rows:
            idx = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, bins - 1)
            row = np.zeros(bins)
            np.maximum.at(row, idx, np.where(np.isfinite(a), a, 0.0))
            out.append([round(float(v), 7) for v in row])
        return {"t": [e.t0_ns / 1e9 for e, _, _ in rows],
                "freq_hz": [round(float(v), 3) for v in (edges[:-1] + edges[1:]) / 2],
                "amp_g": out, "ids": [e.id for e, _, _ in rows],
                "reasons": [e.reason for e, _, _ in rows]}


def decimate_minmax(x: np.ndarray, points: int = 2000) -> tuple[list[float], list[float]]:
    """Per-bucket min and max of `x` (at most `points` buckets), for drawing a waveform."""
    x = np.asarray(x, dtype=np.float64)
    step = max(1, math.ceil(x.size / points))
    n = x.size // step * step
    if n == 0:
        return [], []
    b = x[:n].reshape(-1, step)
    return ([round(float(v), 6) for v in b.min(axis=1)],
            [round(float(v), 6) for v in b.max(axis=1)])


def keep_result(store: HistoryStore, result: Any, asset: Any, reason: str,
                alert: dict[str, Any] | None = None) -> Entry | None:
    """Keep one pipeline `Result` (an acceleration window): raw samples (float32, g), the
    evidence page's amplitude and envelope spectra (g), and what was diagnosed."""
    from ballpass.stream.web.state import compute_spectra

    w, d = result.incoming.window, result.diagnosis
    # The shaft speed the evidence page uses: the window's, else the asset's nominal one.
    shaft = w.shaft_hz if math.isfinite(w.shaft_hz) and w.shaft_hz > 0 else (
        asset.shaft_hz or math.nan)
    arrays: dict[str, np.ndarray] = {"samples": np.asarray(w.samples[0], dtype=np.float32)}
    meta: dict[str, Any] = {
        "sensor": result.incoming.sensor, "asset": result.asset, "seq": w.seq,
        "t": w.t0_ns / 1e9, "fs_hz": w.fs_hz, "shaft_hz": shaft, "reason": reason,
        "state": result.state, "diagnosis": d.diagnosis if d is not None else None,
        "confidence": d.confidence if d is not None else None,
        "velocity_rms_mm_s": result.features.get("velocity_rms_mm_s")}
    if alert is not None:
        meta["alert"] = {k: alert.get(k) for k in ("alert_id", "status", "kind", "summary",
                                                    "diagnosis", "since")}
    if math.isfinite(shaft) and shaft > 0:
        sp = compute_spectra(w, shaft, asset)
        arrays.update(freq_hz=sp.freq_hz.astype(np.float32), amp_g=sp.amp_g.astype(np.float32),
                      env_freq_hz=sp.env_freq_hz.astype(np.float32),
                      env_amp_g=sp.env_amp_g.astype(np.float32))
        meta["env_band_hz"] = list(sp.env_band_hz)
    return store.keep(result.incoming.sensor, w.t0_ns, reason, arrays, meta)
