"""The online layer bands by the speed the physics used: window, tachometer, config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ballpass.config import parse
from ballpass.stream.pipeline import Incoming, Pipeline
from ballpass.wire import Window

FS, N, SHAFT = 12000.0, 4096, 25.0
T0 = 1_700_000_000 * 10**9


def _pipeline(**asset: object) -> Pipeline:
    sensors = [{"id": "a", "driver": "simulated", "asset": "m", "fs_hz": FS,
                "window_samples": N, "interval_s": 1},
               {"id": "tacho", "driver": "simulated", "asset": "m", "fs_hz": 100,
                "window_samples": 64, "interval_s": 1}]
    return Pipeline(parse({"site": {"id": "s"},
                           "asset": [{"id": "m", "bearing": "SKF 6205", **asset}],
                           "gateway": [{"id": "g", "sensor": sensors}]}, drivers=False))


@pytest.mark.parametrize("asset", [{"shaft_hz": SHAFT}, {"tacho_sensor": "tacho"}],
                         ids=["config", "tacho-only"])
def test_the_online_model_learns_with_the_speed_the_physics_used(asset: dict) -> None:
    """Before: a tacho-only asset (no shaft_hz) gave the online layer no speed: every
    window `no_speed`, never a baseline, an unknown_anomaly or a time to zone."""
    p = _pipeline(**asset)
    rng = np.random.default_rng(0)
    t = np.arange(N) / FS
    for i in range(30):
        p.update_tacho("tacho", json.dumps({"t_ns": T0 + i * 10**9, "shaft_hz": SHAFT}))
        x = 0.05 * np.sin(2 * np.pi * SHAFT * t) + 0.01 * rng.standard_normal(N)
        out = p.process([Incoming("s", "g", "a", Window(seq=i + 1, t0_ns=T0 + i * 10**9,
                                                        fs_hz=FS, samples=x[None, :]))])
        assert out.results[-1].diagnosis is not None
        assert out.results[-1].shaft_hz == pytest.approx(SHAFT)
    status = p.online.status("a")
    assert status["no_speed"] == 0 and status["learned_windows"] == 30, status
