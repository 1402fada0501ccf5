"""`ballpass evaluate SPEC.toml`: diagnose labelled recordings and score the result.

Each recording (see `ballpass.stream.recordings`) is cut into consecutive, non-overlapping
windows of `window` samples; every window goes through the same `extract` + `diagnose`
as the stream service (in batches), and the record's diagnosis is the majority vote of its
windows, ties broken by the summed confidence of the tied classes. The record's confidence
is the summed confidence of the windows that voted for the winner over all its windows, so
it is high only when windows agree and each is sure.

The report is a per-record table and a confusion matrix (label × predicted), overall and
per `group`; `--json` writes the same as data.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ballpass.config import ConfigError
from ballpass.stream.recordings import Recording, read_signal

BATCH = 64
"""Most windows per `extract` call."""

BATCH_SAMPLES = 1 << 22
"""Most samples per `extract` call: bounds memory on long windows (4 Mi × 8 B = 32 MiB per
array); a batch holds min(BATCH, BATCH_SAMPLES // window) windows, at least one."""


def batch_windows(window: int) -> int:
    """Windows per `extract` call for windows of `window` samples."""
    return max(1, min(BATCH, BATCH_SAMPLES // max(window, 1)))


@dataclass
class RecordResult:
    """The verdict on one recording. `votes` counts windows per diagnosis."""

    rec: Recording
    predicted: str
    confidence: float
    windows: int
    votes: dict[str, int]
    reason: str = ""
    conf_sum: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.predicted == self.rec.label

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.rec.path), "key": self.rec.key, "column": self.rec.column,
            "label": self.rec.label, "predicted": self.predicted,
            "confidence": round(self.confidence, 4), "windows": self.windows,
            "votes": dict(sorted(self.votes.items(), key=lambda kv: -kv[1])),
            "group": self.rec.group, "fs_hz": self.rec.rate_hz, "shaft_hz": self.rec.shaft_hz,
            "bearing": self.rec.bearing.name, "correct": self.correct, "reason": self.reason,
            "window": self.rec.window, "window_reason": self.rec.window_reason,
        }


def vote(diagnoses: Sequence[tuple[str, float]]) -> tuple[str, float, dict[str, int],
                                                           dict[str, float]]:
    """Majority vote over (diagnosis, confidence) pairs; ties go to the larger summed
    confidence, then to the name (so the result never depends on order).

    Returns (winner, record confidence, votes, summed confidence per class).
    """
    votes: Counter[str] = Counter()
    conf: dict[str, float] = {}
    for name, c in diagnoses:
        votes[name] += 1
        conf[name] = conf.get(name, 0.0) + c
    if not votes:
        return "insufficient_data", 1.0, {}, {}
    winner = min(votes, key=lambda k: (-votes[k], -conf[k], k))
    return winner, conf[winner] / len(diagnoses), dict(votes), conf


def windows_of(x: np.ndarray, window: int, max_windows: int | None) -> np.ndarray:
    """Consecutive non-overlapping windows (W, window) of `x` (a view, no copy)."""
    n = x.size // window
    if max_windows is not None:
        n = min(n, max_windows)
    return x[: n * window].reshape(n, window)


def evaluate_record(rec: Recording,
                    on_chunk: Callable[[int, int], None] | None = None) -> RecordResult:
    """Read, cut, diagnose and vote one recording; `on_chunk(windows_done, windows)` after
    each batch (progress on long recordings)."""
    from ballpass.stream.diagnosis import diagnose
    from ballpass.stream.features import extract
    from ballpass.stream.impact_history import ImpactHistory

    x = read_signal(rec)
    wins = windows_of(x, rec.window, rec.max_windows)
    if wins.shape[0] == 0:
        return RecordResult(rec, "insufficient_data", 1.0, 0, {},
                            f"recording holds {x.size} samples, shorter than one window "
                            f"of {rec.window}")
    orders = rec.bearing.orders()
    # The record is one sensor's history: impact evidence pools over its windows in order.
    impacts = ImpactHistory()
    per_window: list[tuple[str, float]] = []
    reasons: list[tuple[str, float, str]] = []
    per_batch = batch_windows(rec.window)
    for start in range(0, wins.shape[0], per_batch):
        chunk = wins[start : start + per_batch]
        batch = extract(chunk, rec.rate_hz, np.full(chunk.shape[0], rec.shaft_hz), orders)
        assert batch.impact_counts is not None  # `extract` always counts them
        for i in range(chunk.shape[0]):
            pooled = impacts.add(rec.name, batch.impact_counts[i])
            d = diagnose(batch, i, rec.iso_group, rec.iso_foundation, pooled)
            per_window.append((d.diagnosis, d.confidence))
            reasons.append((d.diagnosis, d.confidence, d.reason))
        if on_chunk is not None:
            on_chunk(len(per_window), wins.shape[0])
    winner, confidence, votes, conf = vote(per_window)
    # The reason of the surest window that voted for the winner: the evidence an engineer
    # would look at first.
    reason = max((r for r in reasons if r[0] == winner), key=lambda r: r[1])[2]
    return RecordResult(rec, winner, confidence, wins.shape[0], votes, reason, conf)


def confusion(results: Sequence[RecordResult]) -> dict[str, dict[str, int]]:
    """{label: {predicted: count}} over the records."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        row = out.setdefault(r.rec.label, {})
        row[r.predicted] = row.get(r.predicted, 0) + 1
    return out


def summary(results: Sequence[RecordResult]) -> dict[str, Any]:
    """The JSON report: records, confusion, accuracy, and the same per group."""
    groups: dict[str, list[RecordResult]] = {}
    for r in results:
        groups.setdefault(r.rec.group, []).append(r)

    def score(rs: Sequence[RecordResult]) -> dict[str, Any]:
        correct = sum(r.correct for r in rs)
        return {"records": len(rs), "correct": correct,
                "accuracy": round(correct / len(rs), 4) if rs else None,
                "confusion": confusion(rs)}

    overall = score(results)
    return {"records": [r.as_json() for r in results], "confusion": overall["confusion"],
            "accuracy": overall["accuracy"], "correct": overall["correct"],
            "groups": {g: score(rs) for g, rs in groups.items()}}


# --- text output ------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on a stream: redrawn in place on a terminal, one line per
    step otherwise (logs and CI keep readable lines)."""

    def __init__(self, total: int, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = max(total, 1)
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.started = time.monotonic()

    def update(self, done: float, label: str) -> None:
        """Redraw at `done` (records; fractional inside a long recording)."""
        filled = round(self.width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        text = f"[{bar}] {int(done)}/{self.total} {elapsed:5.1f} s  {label}"
        if self.tty:
            self.out.write("\r" + text[:120].ljust(120))
            if done >= self.total:
                self.out.write("\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()


def _table(rows: list[list[str]], right: frozenset[int] | set[int] = frozenset()) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [v.rjust(w) if c in right else v.ljust(w)
                 for c, (v, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _short(path: Path, base: Path | None) -> str:
    """`path` relative to `base` when inside it, else in full."""
    if base is not None:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(base))
    return str(path)


def record_table(results: Sequence[RecordResult], base: Path | None = None) -> str:
    """The per-record table (one line per recording)."""
    rows = [["record", "group", "label", "predicted", "ok", "conf", "windows", "votes"]]
    for r in results:
        name = _short(r.rec.path, base)
        votes = " ".join(f"{k}:{v}" for k, v in sorted(r.votes.items(), key=lambda kv: -kv[1]))
        rows.append([name, r.rec.group, r.rec.label, r.predicted, "yes" if r.correct else "NO",
                     f"{r.confidence:.2f}", str(r.windows), votes])
    return _table(rows, right={5, 6})


def confusion_table(matrix: dict[str, dict[str, int]]) -> str:
    """Labels (rows) × predicted (columns) counts."""
    labels = list(matrix)
    predicted = sorted({p for row in matrix.values() for p in row},
                       key=lambda p: (p not in labels, labels.index(p) if p in labels else 0, p))
    rows = [["label \\ predicted", *predicted, "total"]]
    for lab in labels:
        counts = [matrix[lab].get(p, 0) for p in predicted]
        rows.append([lab, *(str(c) if c else "." for c in counts), str(sum(counts))])
    return _table(rows, right=set(range(1, len(predicted) + 2)))


def report(summary_: dict[str, Any], results: Sequence[RecordResult],
           base: Path | None = None) -> str:
    """The whole text report: records, then the confusion matrix per group and overall."""
    parts = [record_table(results, base), ""]
    groups = summary_["groups"]
    if len(groups) > 1:
        for g, s in groups.items():
            parts += [f"group {g}: {s['correct']}/{s['records']} correct",
                      confusion_table(s["confusion"]), ""]
    parts += [f"all records: {summary_['correct']}/{len(results)} correct "
              f"(accuracy {summary_['accuracy']:.2f})" if results else "no records",
              confusion_table(summary_["confusion"]) if results else ""]
    return "\n".join(parts).rstrip() + "\n"


def run(recordings: Sequence[Recording],
        on_record: Callable[[int, RecordResult], None] | None = None,
        on_chunk: Callable[[int, Recording, int, int], None] | None = None
        ) -> list[RecordResult]:
    """Evaluate every recording in order; `on_record(done, result)` after each,
    `on_chunk(done, recording, windows_done, windows)` after each batch of windows."""
    results = []
    for k, rec in enumerate(recordings):
        chunk = None if on_chunk is None else (
            lambda w, total, k=k, rec=rec: on_chunk(k, rec, w, total))
        results.append(evaluate_record(rec, chunk))
        if on_record is not None:
            on_record(k + 1, results[-1])
    return results


def check_output(path: Path, option: str, directory: bool = False) -> None:
    """Raise ConfigError naming `option` (e.g. "--json") when `path` cannot be written: a
    directory where a file goes (or a file where a directory goes), or a nearest existing
    parent that is no directory or not writable. Checked before any recording is read,
    so a typo costs nothing and no report is lost after a long run."""
    if path.exists() and path.is_dir() != directory:
        raise ConfigError([f"{option}: {str(path)!r} is {'a file' if directory else 'a directory'}"
                           f", need {'a directory' if directory else 'a file name'}"])
    # An existing file is overwritten and an existing directory written into: what must
    # be writable is the directory the new entry goes in, or the nearest one that exists.
    parent = path if directory and path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError([f"{option}: cannot create {str(path)!r}: {str(parent)!r} is not "
                           "a directory"])
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError([f"{option}: cannot write {str(path)!r}: {str(parent)!r} is not "
                           "writable"])


def write_output(path: Path, text: str, option: str) -> None:
    """Write `text` to `path` (parents made); an OSError is a ConfigError naming `option`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{option}: cannot write {str(path)!r}: {e}"]) from None


def main(spec: Path, json_out: Path | None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """The `ballpass evaluate` command: 0 when it ran (whatever the accuracy); a bad spec
    raises ConfigError (the CLI exits 2)."""
    from ballpass.stream.recordings import load_spec

    recordings = load_spec(spec)
    if json_out is not None:
        check_output(json_out, "--json")
    base = spec.resolve().parent
    for rec in recordings:  # one line each: which window, and why
        out.write(f"{rec.name} {_short(rec.path, base)}: {rec.window_reason}\n")
    out.write("\n")
    progress = Progress(len(recordings), err)
    progress.update(0, "loading kernels")

    def chunk(done: int, rec: Recording, w: int, total: int) -> None:
        if total > batch_windows(rec.window):  # a long recording: show its windows too
            progress.update(done + w / total, f"{rec.path.name} {w}/{total} windows")

    results = run(recordings, lambda done, r: progress.update(
        done, f"{r.rec.path.name} -> {r.predicted}"), chunk)
    data = summary(results)
    out.write(report(data, results, base))
    if json_out is not None:
        write_output(json_out, json.dumps(data, indent=2) + "\n", "--json")
        out.write(f"wrote {json_out}\n")
    return 0
