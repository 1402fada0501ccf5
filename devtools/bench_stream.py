"""Speed figures of the diagnosis engine for `ballpass bench` (see BENCHMARKS.md).

Three implementations run in the same process on the same realistic batch (simulated
normal, outer-race, inner-race and ball windows of an SKF 6205 at 25 Hz, 25.6 kHz):

* the pipeline: `features.extract` on the batch, then `diagnosis.diagnose` per window;
* the baseline: `bench_baseline.extract_baseline` (per window, numpy/scipy), then the
  same `diagnose`;
* the FFT bound: only the FFTs the pipeline must do for that batch, with the same FFT
  library (rocket-fft inside numba) and with numpy's pocketfft; the faster of the two is
  the bound. Counted from `stream/features.py` and `stream/dsp/`: per window, the rfft of
  the window (`_rfft_rows`; the Hann spectrum is derived from it, `_amplitude_from_dft`),
  one inverse FFT over the bins of each kurtogram band the pipeline computes, zero-padded
  to the next 2·3·5-smooth length like the pipeline (`_sk_bands`:
  the bands wide enough for the lines and above `ENV_BAND_MIN_LO_HZ`), the
  inverse FFT of the selected band (`_envelope`, length N) and the rfft of the envelope
  (`_envelope_spectrum`). Everything else (moments, line searches, the diagnosis) is
  work beyond the bound.

`Pipeline.process` (`pipeline_process_ms_per_window`, `_state_` with a state dir): the
stream's whole process stage (features, diagnosis, impact history, online models, alert
state, results and points) for 16 sensors on one SKF 6205 asset like the end-to-end
benchmark's (3 of 4 faulty, so their alarms fire in the warm-up), in batches of one window
per sensor (decoded from wire format v1, float32), 50 batches after 10 of warm-up (quick:
10 after 3); `pipeline_dsp_ms_per_window`, measured in the same run on the same batches, is
the DSP engine alone (`extract` and `diagnose`), and `pipeline_overhead_ms_per_window` the
difference: the Python of `process` around the kernels (issue 12). These four are CPU time
of the calling thread (the kernels run in it), not wall time: on a shared machine the
wall time of a 5 ms batch moves by more than the overhead measured.

Each figure is the best of several repetitions (the run least disturbed by other
processes), as windows per second. `jit_warm_start_s` runs a fresh interpreter with the
numba cache already filled and measures from its start to the first `extract` result.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rocket_fft  # noqa: F401  (registers np.fft support inside @njit)
from numba import njit

from ballpass.log import kv
from ballpass.stream.dsp.envelope import _fast_len

log = logging.getLogger(__name__)

FS_HZ = 25600.0
SHAFT_HZ = 25.0
BEARING = "SKF 6205"
FAULTS = ("normal", "outer_race", "inner_race", "ball")
SIZES = (8192, 65536)
BATCH = 64
BASELINE_BATCH = {8192: 16, 65536: 4}
"""The baseline works window by window, so its rate does not depend on the batch; fewer
windows keep the bench short (it takes ~20 ms per window of 8192 here)."""


def signals(n: int, b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(b, n) windows (g) cycling through `FAULTS`, and their shaft rates (Hz)."""
    from ballpass.models.catalog import lookup
    from ballpass.simulators.signals import synthesize

    orders = lookup(BEARING).orders()
    rng = np.random.default_rng(seed)
    x = np.stack([synthesize(FAULTS[i % len(FAULTS)], orders, SHAFT_HZ, FS_HZ, n, rng=rng)
                  for i in range(b)])
    return x, np.full(b, SHAFT_HZ)


def best_time(fn: Callable[[], object], repeats: int, min_total_s: float = 0.0) -> float:
    """Least wall time (s) of `repeats` calls (and at least `min_total_s` of calls)."""
    fn()  # warm: compiled kernels loaded, caches filled
    best = float("inf")
    started = time.perf_counter()
    k = 0
    while k < repeats or time.perf_counter() - started < min_total_s:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        k += 1
    return best


@njit(cache=True)
def _fft_work_numba(x: np.ndarray, lo_bins: np.ndarray, hi_bins: np.ndarray, use: np.ndarray,
                    lo_sel: np.ndarray, hi_sel: np.ndarray) -> float:
    """The pipeline's FFTs on batch `x`, nothing else (see the module docstring)."""
    b, n = x.shape
    raw = np.fft.rfft(x, axis=-1)  # _rfft_rows (the Hann spectrum is derived from it)
    acc = raw[0, 1].real
    env = np.empty((b, n))
    for i in range(b):
        for k in range(lo_bins.shape[0]):  # _sk_bands: one inverse FFT per candidate
            if not use[i, k]:
                continue
            m = hi_bins[k] - lo_bins[k]  # zero-padded to a 2·3·5-smooth length, as there
            seg = np.zeros(_fast_len(m), dtype=np.complex128)
            seg[:m] = raw[i, lo_bins[k] : hi_bins[k]]
            c = np.fft.ifft(seg)
            acc += c[0].real
        y = np.zeros(n, dtype=np.complex128)  # _envelope: the selected band, length N
        y[lo_sel[i] : hi_sel[i]] = raw[i, lo_sel[i] : hi_sel[i]]
        a = np.fft.ifft(y)
        for j in range(n):
            env[i, j] = a[j].real
    spec = np.fft.rfft(env, axis=-1)  # _envelope_spectrum
    return acc + spec[0, 1].real


def _fft_work_numpy(x: np.ndarray, lo_bins: np.ndarray, hi_bins: np.ndarray, use: np.ndarray,
                    lo_sel: np.ndarray, hi_sel: np.ndarray) -> float:
    """The same FFTs with numpy (pocketfft), batched over rows where numpy allows."""
    b, n = x.shape
    raw = np.fft.rfft(x, axis=-1)
    acc = float(raw[0, 1].real)
    for k, (lo, hi) in enumerate(zip(lo_bins, hi_bins, strict=True)):
        rows = use[:, k]
        if rows.any():
            c = np.fft.ifft(raw[rows, lo:hi], n=_fast_len(hi - lo), axis=-1)
            acc += float(c[0, 0].real)
    y = np.zeros((b, n), dtype=np.complex128)
    for i in range(b):
        y[i, lo_sel[i] : hi_sel[i]] = raw[i, lo_sel[i] : hi_sel[i]]
    env = np.fft.ifft(y, axis=-1).real
    return acc + float(np.fft.rfft(env, axis=-1)[0, 1].real)


def _pipeline_fn(x: np.ndarray, shaft: np.ndarray) -> Callable[[], list[str]]:
    """The pipeline on batch `x`: `extract`, then `diagnose` for every window."""
    from ballpass.models.catalog import lookup
    from ballpass.stream.diagnosis import diagnose
    from ballpass.stream.features import extract

    orders = lookup(BEARING).orders()

    def pipeline() -> list[str]:
        batch = extract(x, FS_HZ, shaft, orders)
        return [diagnose(batch, i).diagnosis for i in range(len(batch))]
    return pipeline


def pipeline_windows_per_s(n: int = 8192, quick: bool = False,
                           batch: int | None = None) -> float:
    """The pipeline's windows/s on a batch of `batch` windows of `n` (default `BATCH`, 16
    when `quick`), best of several repetitions: `dsp_pipeline_windows_per_s` alone."""
    n_win = batch or (16 if quick else BATCH)
    x, shaft = signals(n, n_win)
    return n_win / best_time(_pipeline_fn(x, shaft), 2 if quick else 7,
                             0.0 if quick else 2.0)


def _size_figures(n: int, quick: bool) -> dict[str, float]:
    from ballpass.devtools.bench_baseline import admissible, extract_baseline, pipeline_bands
    from ballpass.models.catalog import lookup
    from ballpass.stream.diagnosis import diagnose
    from ballpass.stream.features import extract

    orders = lookup(BEARING).orders()
    n_win = 16 if quick else BATCH  # a smoke run only checks that every figure comes out
    x, shaft = signals(n, n_win)
    repeats = 2 if quick else 7

    pipeline = _pipeline_fn(x, shaft)

    nb = BASELINE_BATCH[n] if not quick else 4
    xb, shaft_b = x[:nb], shaft[:nb]

    def baseline() -> list[str]:
        batch = extract_baseline(xb, FS_HZ, shaft_b, orders)
        return [diagnose(batch, i).diagnosis for i in range(len(batch))]

    feats = extract(x, FS_HZ, shaft, orders)
    df = FS_HZ / n
    lo_bins, hi_bins = pipeline_bands(FS_HZ, n)
    use = np.stack([admissible(lo_bins, hi_bins, df, s, orders) for s in shaft])
    lo_sel = np.round(feats.env_lo_hz / df).astype(np.int64)
    hi_sel = np.round(feats.env_hi_hz / df).astype(np.int64)
    t_pipe = best_time(pipeline, repeats, 0.0 if quick else 2.0)
    t_base = best_time(baseline, 1 if quick else 5, 0.0 if quick else 2.0)
    t_fft_nb = best_time(lambda: _fft_work_numba(x, lo_bins, hi_bins, use, lo_sel, hi_sel),
                         repeats, 0.0 if quick else 2.0)
    t_fft_np = best_time(lambda: _fft_work_numpy(x, lo_bins, hi_bins, use, lo_sel, hi_sel),
                         repeats, 0.0 if quick else 2.0)
    agree = np.mean([a == b for a, b in zip(pipeline()[:nb], baseline(), strict=True)])
    sfx = "" if n == 8192 else f"_{n}"
    pipe_rate = n_win / t_pipe
    bound_rate = n_win / min(t_fft_nb, t_fft_np)
    out = {
        f"dsp_pipeline_windows_per_s{sfx}": pipe_rate,
        f"dsp_baseline_windows_per_s{sfx}": nb / t_base,
        f"dsp_fft_bound_windows_per_s{sfx}": bound_rate,
        f"dsp_fft_bound_rocket_windows_per_s{sfx}": n_win / t_fft_nb,
        f"dsp_fft_bound_numpy_windows_per_s{sfx}": n_win / t_fft_np,
        f"dsp_speedup_vs_baseline{sfx}": pipe_rate / (nb / t_base),
        f"dsp_fraction_of_fft_bound{sfx}": pipe_rate / bound_rate,
        f"dsp_baseline_same_diagnosis{sfx}": float(agree),
    }
    log.info(kv("bench_dsp", n=n, **{k: round(v, 3) for k, v in out.items()}))
    return out


_WARM_CHILD = """
import time, sys
import numpy as np
from ballpass.models.catalog import lookup
from ballpass.stream.features import extract
x = np.random.default_rng(0).normal(size=(2, 8192))
extract(x, 25600.0, np.full(2, 25.0), lookup("SKF 6205").orders())
print(repr(time.time()))
"""


def warm_start(runs: int = 3) -> tuple[float, int]:
    """Seconds from a fresh interpreter's start to its first `extract` result with a warm
    numba cache (best of `runs`), and how many kernels that run compiled (should be 0)."""
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    cmd = [sys.executable, "-c", _WARM_CHILD]
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # fill the cache
    best, saved = float("inf"), 0
    for _ in range(runs):
        t0 = time.time()
        r = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        best = min(best, float(r.stdout.strip().splitlines()[-1]) - t0)
        saved = max(saved, sum("data saved to" in line for line in r.stdout.splitlines()))
    return best, saved


PROCESS_SENSORS = 16


def _process_batches(n_batches: int) -> list[list[Any]]:
    """Batches of one decoded window per sensor, sensor k in condition FAULTS[k % 4]."""
    from ballpass import wire
    from ballpass.stream.pipeline import Incoming

    x, shaft = signals(8192, 2 * len(FAULTS))
    t0 = 1_767_225_600 * 10**9
    batches = []
    for b in range(n_batches):
        batch = []
        for k in range(PROCESS_SENSORS):
            i = k % len(FAULTS) + len(FAULTS) * (b % 2)
            message = wire.encode(wire.Window(seq=b + 1, t0_ns=t0 + b * 10**9, fs_hz=FS_HZ,
                                              samples=x[i : i + 1], shaft_hz=float(shaft[i])))
            batch.append(Incoming("bench", f"gw{k % 2}", f"s{k:02d}", wire.decode(message)))
        batches.append(batch)
    return batches


def _process_config() -> Any:
    from ballpass.config import parse

    return parse({
        "site": {"id": "bench"},
        "asset": [{"id": "m", "kind": "motor", "bearing": BEARING, "shaft_hz": SHAFT_HZ}],
        "gateway": [{"id": f"gw{g}", "sensor": [
            {"id": f"s{k:02d}", "driver": "simulated", "asset": "m", "fs_hz": FS_HZ,
             "window_samples": 8192, "interval_s": 1.0}
            for k in range(PROCESS_SENSORS) if k % 2 == g]} for g in range(2)],
    })


def process_figures(quick: bool = False) -> dict[str, float]:
    """`Pipeline.process` against the DSP engine alone, ms per window (module docstring)."""
    import tempfile
    from pathlib import Path

    from ballpass.stream.diagnosis import diagnose
    from ballpass.stream.features import extract
    from ballpass.stream.pipeline import Pipeline

    warm, timed = (3, 10) if quick else (10, 50)
    batches = _process_batches(warm + timed)
    config = _process_config()
    orders = config.assets[0].bearing.orders()

    def run(state_dir: Path | None) -> float:
        pipeline = Pipeline(config, state_dir)
        pipeline.warm_up()
        for batch in batches[:warm]:
            pipeline.process(batch)
        started = time.thread_time()
        for batch in batches[warm:]:
            pipeline.process(batch)
        return time.thread_time() - started

    def dsp() -> float:
        started = time.thread_time()
        for batch in batches[warm:]:
            x = np.stack([item.window.samples[0] for item in batch])
            feats = extract(x, FS_HZ, np.array([item.window.shaft_hz for item in batch]),
                            orders)
            for i in range(len(batch)):
                diagnose(feats, i)
        return time.thread_time() - started

    best = {"plain": float("inf"), "state": float("inf"), "dsp": float("inf")}
    dsp()  # kernels loaded
    for _ in range(1 if quick else 3):  # interleaved: the machine may be shared
        best["plain"] = min(best["plain"], run(None))
        with tempfile.TemporaryDirectory() as d:
            best["state"] = min(best["state"], run(Path(d)))
        best["dsp"] = min(best["dsp"], dsp())
    ms = {k: v / (timed * PROCESS_SENSORS) * 1e3 for k, v in best.items()}
    out = {"pipeline_process_ms_per_window": ms["plain"],
           "pipeline_process_state_ms_per_window": ms["state"],
           "pipeline_dsp_ms_per_window": ms["dsp"],
           "pipeline_overhead_ms_per_window": ms["plain"] - ms["dsp"]}
    log.info(kv("bench_process", **{k: round(v, 4) for k, v in out.items()}))
    return out


def figures(quick: bool = False) -> dict[str, float]:
    """Every figure of the diagnosis engine (see the module docstring)."""
    out: dict[str, float] = {}
    for n in SIZES:
        out.update(_size_figures(n, quick))
    out.update(process_figures(quick))
    warm, compiled = warm_start(1 if quick else 3)
    out["jit_warm_start_s"] = warm
    out["jit_warm_start_kernels_compiled"] = float(compiled)
    return out
