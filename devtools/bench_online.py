"""Speed figure of the online layer for `ballpass bench` (BENCHMARKS.md).

`online_update_us`: median wall time per window (µs) of the online update of one sensor
with a ready baseline (feature vector, band lookup, score, calibration, change detectors,
trend) plus the alert state machine, over windows of realistic features. Target: <= 200
µs, so 300 sensors at one window per second cost under 10 % of a core on top of the DSP.
"""

from __future__ import annotations

import time

import numpy as np

from ballpass.config import parse
from ballpass.stream.alerts import severity
from ballpass.stream.pipeline import Pipeline


def _features(rng: np.random.Generator) -> dict[str, float]:
    return {
        "rms_g": 0.08 * (1 + 0.05 * rng.standard_normal()),
        "peak_g": 0.35, "crest": 4.0 + 0.2 * rng.standard_normal(),
        "kurtosis": 3.0 + 0.1 * rng.standard_normal(), "skewness": 0.0,
        "velocity_rms_mm_s": 0.9 * (1 + 0.05 * rng.standard_normal()),
        "bpfo_snr_db": 3 + rng.standard_normal(), "bpfi_snr_db": 3 + rng.standard_normal(),
        "bsf_snr_db": 3 + rng.standard_normal(), "ftf_snr_db": 3 + rng.standard_normal(),
        "hf_floor": 0.01 * (1 + 0.05 * rng.standard_normal()),
        "x1_g": 0.003 * (1 + 0.05 * rng.standard_normal()),
        "x2_g": 0.001 * (1 + 0.05 * rng.standard_normal()),
    }


def figures(quick: bool = False) -> dict[str, float]:
    config = parse({
        "site": {"id": "bench"},
        "asset": [{"id": "a", "bearing": "SKF 6205", "shaft_hz": 25.0,
                   "online": {"learn_hours": 0.0, "learn_windows": 200}}],
        "gateway": [{"id": "g", "sensor": [{"id": "s", "driver": "simulated", "asset": "a",
                                            "fs_hz": 12000.0, "window_samples": 4096,
                                            "interval_s": 1.0}]}],
    })
    pipeline = Pipeline(config)
    online, alerts = pipeline.online, pipeline.alerts
    rng = np.random.default_rng(0)
    t_ns = 1_767_225_600 * 10**9
    n_learn, n = 400, 2000 if quick else 20000
    feats = [_features(rng) for _ in range(n_learn + n)]
    times = np.empty(n)
    for i, f in enumerate(feats):
        t_ns += 60 * 10**9  # one window a minute: trend buckets close every hour
        shaft = 25.0 * (1 + 0.002 * rng.standard_normal())
        started = time.perf_counter()
        o, _ = online.observe("bench", "g", "s", t_ns, i, shaft, f, 0.002, "normal")
        d = "unknown_anomaly" if o.anomaly else "normal"
        alerts.update("s", d, t_ns,
                      severity(d, "A", o.days_to_zone_d.days if o.days_to_zone_d else None))
        elapsed = time.perf_counter() - started
        if i >= n_learn:
            times[i - n_learn] = elapsed
    assert online.status("s")["state"] == "ready"
    return {"online_update_us": round(float(np.median(times)) * 1e6, 1),
            "online_update_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1)}
