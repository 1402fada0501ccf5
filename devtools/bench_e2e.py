"""End-to-end figures for `ballpass bench --only e2e` (issue 12, BENCHMARKS.md).

For each configuration (`e2e_stack.Stack`, by name in `STACKS`: "embedded" = mosquitto +
influxd + one `ballpass stream`; "nats1", "nats2" = the same mosquitto and influxd with a
3-node NATS JetStream cluster and 1 or 2 `ballpass stream --engine nats` workers), on
loopback, with the real services:

1. the DSP engine alone, first, while nothing else runs (`bench_stream`'s pipeline figure
   at N = 8192, batch 64, and at the stream's batch of 16);
2. the stack starts; a load generator (`loadgen`) publishes pre-encoded windows of
   8192 samples as G gateways with S sensors would (QoS 1, each gateway its own login);
   a warm-up of 5 windows per sensor (one-off work: kernels, first history entries,
   the faulty sensors' alerts firing) is drained;
3. rising rates (steps of `STEP_S`, x1.25, then one step between the last rate kept up
   with and the first that was not): a step keeps up when, over its second half, the
   windows counted in InfluxDB grow by at least `KEEP_UP` x what was published and the
   backlog (published - written) by at most `BACKLOG_SLACK` of it (give or take one
   batch, `BATCH_SLACK`); when not even the first rate is kept up with, rates go down
   by x1.25^2 a step until one is. After each step the backlog is drained. `sustained`
   is the highest rate kept up with, `saturated` the write rate of the (last) step that
   was not;
4. at 50 % of `sustained`: latency from each publish to the diagnosis message carrying
   the same sensor and seq (the stream publishes only each sensor's latest diagnosis of
   a batch, so a window another window of its sensor follows in the same batch has no
   message: `latency_matched_fraction` says how many had one);
5. CPU (s per s, /proc) of the workers and the services at the sustained step and the
   50 % step, the workers' RSS at the end; lost (published and acknowledged, not in
   InfluxDB) and duplicated windows (InfluxDB keeps one point per sensor and t0, so a
   window written twice shows as the workers' `written` counter above the distinct
   (sensor, seq) in InfluxDB, or as a seq twice); per-stage time from the workers'
   `ballpass_stream_stage_seconds` histograms, from the end of the warm-up to the end.

Figure keys are `e2e_{stack}_...`; `e2e_{stack}_ratio_to_dsp` is sustained / DSP windows/s
(issue 12's target: >= 0.6); `e2e_nats2_speedup` is nats2's sustained rate / nats1's
(issue 12's target: >= 1.7), when both ran. CPU is per process (`cpu_worker{i}`,
`cpu_nats_n{k}`, ...), RSS per worker (`rss_mb_worker{i}`; `rss_mb` the largest).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from ballpass import topics
from ballpass.devtools.bench_stream import pipeline_windows_per_s
from ballpass.devtools.e2e_stack import SITE, ClusterStack, EmbeddedStack, Stack
from ballpass.devtools.loadgen import LoadGenerator, encoded_windows, layout
from ballpass.devtools.procstat import cpu_s, rss_mb
from ballpass.log import kv
from ballpass.services import Influxd
from ballpass.stream.metrics import STAGES

log = logging.getLogger(__name__)

KEEP_UP = 0.95
BACKLOG_SLACK = 0.05
STEP_FACTOR = 1.25
BATCH_SLACK = 16  # windows: the stream's default batch
WARM_WINDOWS_PER_SENSOR = 5
"""The default alert policy fires at 3 faulty windows of the last 5."""


@dataclass(frozen=True)
class Plan:
    """How hard and how long the benchmark pushes."""

    sensors: int
    gateways: int
    first_rate: float  # windows/s of the first step
    step_s: float  # seconds per rate step
    max_steps: int
    latency_s: float  # seconds of the 50 % step
    drain_timeout_s: float


FULL = Plan(sensors=512, gateways=8, first_rate=200.0, step_s=12.0, max_steps=14,
            latency_s=20.0, drain_timeout_s=180.0)
QUICK = Plan(sensors=16, gateways=2, first_rate=40.0, step_s=3.0, max_steps=2,
             latency_s=3.0, drain_timeout_s=30.0)

STACKS: dict[str, Callable[[], Stack]] = {
    "embedded": EmbeddedStack,
    "nats1": functools.partial(ClusterStack, workers=1),
    "nats2": functools.partial(ClusterStack, workers=2),
}
"""Configurations measured, by name (the key prefix `e2e_{name}_`), in order."""


# --- what the services say ------------------------------------------------------------


def written_count(influxd: Influxd, db: str) -> int:
    """Windows in InfluxDB (`vibration` points: one per acceleration window)."""
    series = influxd.query("SELECT count(seq) FROM vibration", db=db)["results"][0].get(
        "series", [])
    return int(series[0]["values"][0][1]) if series else 0


def written_keys(influxd: Influxd, db: str) -> Counter[tuple[str, int]]:
    """How many `vibration` points each (sensor, seq) has."""
    out: Counter[tuple[str, int]] = Counter()
    result = influxd.query("SELECT seq FROM vibration GROUP BY sensor", db=db)["results"][0]
    for series in result.get("series", []):
        sensor = series["tags"]["sensor"]
        col = series["columns"].index("seq")
        out.update((sensor, int(v[col])) for v in series["values"])
    return out


@dataclass
class Scrape:
    """The workers' metrics summed: stage seconds by stage, and status counters."""

    stage_s: dict[str, float]
    stage_batches: dict[str, float]
    counters: dict[str, float]

    def minus(self, other: Scrape) -> Scrape:
        return Scrape({k: v - other.stage_s.get(k, 0.0) for k, v in self.stage_s.items()},
                      {k: v - other.stage_batches.get(k, 0.0)
                       for k, v in self.stage_batches.items()},
                      {k: v - other.counters.get(k, 0.0) for k, v in self.counters.items()})


def scrape(urls: Sequence[str]) -> Scrape:
    """GET every `/metrics` and sum the stage histograms and the stream counters."""
    s = Scrape({k: 0.0 for k in STAGES}, {k: 0.0 for k in STAGES}, {})
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                stage = sample.labels.get("stage")
                if sample.name == "ballpass_stream_stage_seconds_sum" and stage:
                    s.stage_s[stage] = s.stage_s.get(stage, 0.0) + sample.value
                elif sample.name == "ballpass_stream_stage_seconds_count" and stage:
                    s.stage_batches[stage] = s.stage_batches.get(stage, 0.0) + sample.value
                elif sample.name.startswith("ballpass_stream_") and sample.name.endswith(
                        "_total") and not sample.labels:
                    key = sample.name[len("ballpass_stream_"):-len("_total")]
                    s.counters[key] = s.counters.get(key, 0.0) + sample.value
    return s


class DiagnosisListener:
    """Subscribes to every diagnosis of the site; keeps (sensor, seq, receive time)."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.received: list[tuple[str, int, float]] = []
        self._subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
        c.username_pw_set(username, password)
        c.on_connect = lambda client, *_: client.subscribe(
            topics.diagnosis(SITE, "+", "+"), qos=1)
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        self._client = c
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"diagnosis listener: no SUBACK from {host}:{port}")

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        t = time.time()
        try:
            d = json.loads(message.payload)
            self.received.append((str(d["sensor"]), int(d["seq"]), t))
        except (ValueError, KeyError, TypeError):
            log.warning(kv("bench_e2e_bad_diagnosis", topic=message.topic))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- one configuration ----------------------------------------------------------------


@dataclass
class Step:
    rate: float
    achieved: float  # publish rate the generator made, windows/s
    written_rate: float  # windows/s counted in InfluxDB over the second half
    backlog_growth: int  # published - written, end minus middle
    kept_up: bool
    cpu: dict[str, float]  # s per s, by process name
    busy_fraction: float  # stage seconds per wall second over the step (all workers)


class _Run:
    """The measurements on one started stack."""

    def __init__(self, stack: Stack, gen: LoadGenerator, plan: Plan) -> None:
        self.stack, self.gen, self.plan = stack, gen, plan
        self.influxd, self.db = stack.influx()
        self.pids = {f"worker{i}": p for i, p in enumerate(stack.worker_pids())}
        self.pids.update(stack.service_pids())
        self.pids["loadgen"] = os.getpid()  # and the diagnosis listener

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_s(pid)
        return out

    def backlog(self) -> tuple[int, int]:
        """(written, published - written)."""
        w = written_count(self.influxd, self.db)
        return w, len(self.gen.sent) - w

    def drain(self) -> float:
        """Wait until everything published is acknowledged and written; seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + self.plan.drain_timeout_s
        if not self.gen.wait_acked(self.plan.drain_timeout_s):
            raise RuntimeError("bench e2e: the broker did not acknowledge every publish")
        last, still = -1, time.monotonic()
        while time.monotonic() < deadline:
            w, behind = self.backlog()
            if behind <= 0:
                return time.monotonic() - t0
            if w != last:
                last, still = w, time.monotonic()
            elif time.monotonic() - still > 30:
                break  # nothing written for 30 s: the rest is lost, counted at the end
            time.sleep(0.2)
        log.warning(kv("bench_e2e_drain_timeout", behind=self.backlog()[1]))
        return time.monotonic() - t0

    def step(self, rate: float, seconds: float) -> Step:
        c0, t0, m0 = self.cpu(), time.monotonic(), scrape(self.stack.metrics_urls())
        half = seconds / 2
        a = self.gen.run(rate, half)
        w_mid, b_mid = self.backlog()
        t_mid, n_mid = time.monotonic(), len(self.gen.sent)
        b = self.gen.run(rate, half)
        w_end, b_end = self.backlog()
        t_end, n_end = time.monotonic(), len(self.gen.sent)
        c1, m1 = self.cpu(), scrape(self.stack.metrics_urls())
        wall = t_end - t0
        written_rate = (w_end - w_mid) / (t_end - t_mid)
        growth = b_end - b_mid
        # One batch either way is counting granularity, not falling behind (it matters
        # only in the short steps of --quick).
        kept_up = (w_end - w_mid >= KEEP_UP * (n_end - n_mid) - BATCH_SLACK
                   and growth <= max(BACKLOG_SLACK * (n_end - n_mid), BATCH_SLACK))
        busy = sum(m1.minus(m0).stage_s.values()) / wall
        out = Step(rate, (a.published + b.published) / (a.seconds + b.seconds), written_rate,
                   growth, kept_up, {k: (c1[k] - c0[k]) / wall for k in c1 if k in c0}, busy)
        log.info(kv("bench_e2e_step", stack=self.stack.name, rate=round(rate, 1),
                    achieved=round(out.achieved, 1), written_rate=round(written_rate, 1),
                    backlog_growth=growth, kept_up=kept_up, busy=round(busy, 3),
                    **{f"cpu_{k}": round(v, 3) for k, v in out.cpu.items()}))
        return out


def _search(run: _Run, plan: Plan) -> tuple[Step | None, Step | None, bool]:
    """(highest step kept up with, first step not kept up with, loadgen-limited)."""
    best: Step | None = None
    failed: Step | None = None
    rate = plan.first_rate
    for _ in range(plan.max_steps):
        s = run.step(rate, plan.step_s)
        run.drain()
        if s.achieved < KEEP_UP * rate:
            return best, failed, True  # the generator, not the stack, is the limit
        if not s.kept_up:
            failed = s
            break
        best = s
        rate *= STEP_FACTOR
    if best is None and failed is not None:
        # Not even the first rate: down (/ STEP_FACTOR**2 a step) until one is kept up
        # with, so that a slow configuration has a figure rather than 0.
        rate = failed.rate
        for _ in range(plan.max_steps):
            rate /= STEP_FACTOR ** 2
            s = run.step(rate, plan.step_s)
            run.drain()
            if s.kept_up:
                best = s
                break
            failed = s
    if best is not None and failed is not None:
        mid = run.step(math.sqrt(best.rate * failed.rate), plan.step_s)
        run.drain()
        if mid.kept_up:
            best = mid
        else:
            failed = mid if mid.written_rate > failed.written_rate else failed
    return best, failed, False


def _latency(run: _Run, listener: DiagnosisListener, rate: float,
             seconds: float) -> dict[str, float]:
    n0, r0 = len(run.gen.sent), len(listener.received)
    s = run.step(rate, seconds)
    run.drain()
    time.sleep(1.0)  # the last batch's diagnoses follow its write
    published = dict(list(run.gen.sent.items())[n0:])
    lat = [t - published[(sensor, seq)] for sensor, seq, t in listener.received[r0:]
           if (sensor, seq) in published]
    p50, p99 = (np.percentile(lat, [50, 99]) if lat else (math.nan, math.nan))
    return {"latency_rate": rate, "latency_p50_s": float(p50), "latency_p99_s": float(p99),
            "latency_max_s": float(max(lat)) if lat else math.nan,
            "latency_matched_fraction": len(lat) / max(1, len(published)),
            **{f"cpu_{k}_half": v for k, v in s.cpu.items()}}


def measure(stack: Stack, plan: Plan, workdir: Path, dsp_rate: float) -> dict[str, float]:
    """Every figure of one configuration (see the module docstring), keys without prefix."""
    sensors = layout(plan.sensors, plan.gateways)
    gen: LoadGenerator | None = None
    listener: DiagnosisListener | None = None
    try:
        stack.start(sensors, workdir)  # inside: a stack that fails half-started is stopped
        gen = LoadGenerator(stack.target(), sensors, encoded_windows())
        gen.connect()
        listener = DiagnosisListener(*stack.reader())
        run = _Run(stack, gen, plan)
        # Warm-up, not timed: each sensor's first windows do one-off work (its first
        # history entry, its alert firing after `enter_k` faulty windows) that a running
        # site has behind it.
        warm = WARM_WINDOWS_PER_SENSOR * plan.sensors
        gen.run(plan.first_rate, warm / plan.first_rate)
        out_warm = run.drain()
        m_start = scrape(stack.metrics_urls())
        best, failed, limited = _search(run, plan)
        sustained = best.rate if best is not None else 0.0
        out: dict[str, float] = {
            "sustained_windows_per_s": sustained,
            "saturated_windows_per_s": failed.written_rate if failed else math.nan,
            "loadgen_limited": float(limited),
            "ratio_to_dsp": sustained / dsp_rate,
            "warmup_drain_s": out_warm,
        }
        if best is not None:
            out.update({f"cpu_{k}": v for k, v in best.cpu.items()})
            out["busy_fraction_sustained"] = best.busy_fraction
        if failed is not None:
            out["busy_fraction_saturated"] = failed.busy_fraction
        out.update(_latency(run, listener, (sustained or plan.first_rate) / 2,
                            plan.latency_s))
        m = scrape(stack.metrics_urls()).minus(m_start)
        total = sum(m.stage_s.values())
        written = max(1.0, m.counters.get("written", 0.0))
        for stage in STAGES:
            out[f"stage_fraction_{stage}"] = m.stage_s.get(stage, 0.0) / total if total else 0.0
            out[f"stage_ms_per_window_{stage}"] = 1e3 * m.stage_s.get(stage, 0.0) / written
        out["windows_per_batch"] = written / max(1.0, m.stage_batches.get("write", 0.0))
        rss = [rss_mb(p) for p in stack.worker_pids()]
        out["rss_mb"] = max(rss)
        out.update({f"rss_mb_worker{i}": v for i, v in enumerate(rss)})
        # Lost and duplicated: every publish acknowledged by the broker, against InfluxDB.
        keys = written_keys(*stack.influx())
        final = scrape(stack.metrics_urls())
        out["windows_published"] = float(len(gen.sent))
        out["lost"] = float(sum(1 for k in gen.sent if k not in keys))
        out["duplicated"] = float(sum(n - 1 for n in keys.values())
                                  + max(0.0, final.counters.get("written", 0.0) - len(keys)))
        out["unexpected"] = float(sum(1 for k in keys if k not in gen.sent))
        out["redelivered_copies"] = final.counters.get("duplicates", 0.0)
        out.update(stack.figures())
        return out
    finally:
        if listener is not None:
            listener.close()
        if gen is not None:
            gen.close()
        stack.stop()


def figures(quick: bool = False, stacks: Sequence[str] = ()) -> dict[str, float]:
    """The end-to-end figures of the configurations named in `stacks` (all of `STACKS`
    when empty) and the DSP engine's."""
    unknown = [name for name in stacks if name not in STACKS]
    if unknown:
        raise ValueError(f"bench e2e: unknown stack {unknown[0]!r} "
                         f"(known: {', '.join(STACKS)})")
    plan = QUICK if quick else FULL
    dsp = pipeline_windows_per_s(8192, quick)
    out: dict[str, float] = {"e2e_dsp_pipeline_windows_per_s": dsp,
                             "e2e_dsp_pipeline_windows_per_s_batch16":
                             pipeline_windows_per_s(8192, quick, batch=16),
                             "e2e_sensors": float(plan.sensors),
                             "e2e_gateways": float(plan.gateways)}
    for name in stacks or tuple(STACKS):
        stack = STACKS[name]()
        with tempfile.TemporaryDirectory(prefix=f"ballpass-e2e-{stack.name}-") as tmp:
            figs = measure(stack, plan, Path(tmp), dsp)
        log.info(kv("bench_e2e", stack=stack.name,
                    **{k: round(v, 4) for k, v in figs.items()}))
        out.update({f"e2e_{stack.name}_{k}": float(v) for k, v in figs.items()})
    one, two = (out.get(f"e2e_nats{n}_sustained_windows_per_s") for n in (1, 2))
    if one is not None and two is not None:
        out["e2e_nats2_speedup"] = two / one if one > 0 else math.nan
    return out

