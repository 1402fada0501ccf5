"""Fidelity: simulated records of the CWRU rig against the real CWRU records.

Records written by `ballpass simulate record` (the same code path: `write_record`) for the
CWRU rig (SKF 6205 drive end, 1797 and 1772 rpm, 12 kHz) must fall inside the range of
the real records of the same fault type for kurtosis, crest factor and the envelope SNR
at the defect line, all computed by the stream's own `extract`.

The range of a fault type is the per-window minimum and maximum over every real record of
that type (windows of 8192 samples, up to 14 per record), widened by 10 % on each side
(the one normal record gives only a narrow range); a simulated record's value is the
median over its windows. Nothing was fitted to these records beyond choosing the model's
impact spread, slip and the step of a ball's spin-axis walk (see EVALUATION.md,
"Simulator fidelity").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ballpass.models.catalog import lookup
from ballpass.simulators.record import write_record
from ballpass.stream.features import extract

CWRU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cwru"
FS = 12000.0
WINDOW = 8192
MAX_WINDOWS = 14
MARGIN = 0.10
SNR_FIELD = {"normal": "bpfo_snr_db", "outer_race": "bpfo_snr_db",
             "inner_race": "bpfi_snr_db", "ball": "bsf_snr_db"}
FEATURES = ("kurtosis", "crest", "envelope_snr_db")

pytestmark = [
    pytest.mark.cwru,
    pytest.mark.skipif(not CWRU.is_dir(), reason=f"cwru data folder {CWRU} absent"),
]


def features(signal: np.ndarray, shaft_hz: float, label: str) -> np.ndarray:
    """(windows, 3): kurtosis, crest factor, envelope SNR (dB) at the defect line."""
    n = min(MAX_WINDOWS, signal.size // WINDOW)
    batch = extract(signal[: n * WINDOW].reshape(n, WINDOW), FS, np.full(n, shaft_hz),
                    lookup("SKF 6205").orders())
    return np.stack([batch.kurtosis, batch.crest, getattr(batch, SNR_FIELD[label])], axis=1)


@pytest.fixture(scope="module")
def real_ranges() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import scipy.io
    import scipy.signal

    with (CWRU / "manifest.csv").open() as f:
        records = list(csv.DictReader(f))
    per_type: dict[str, list[np.ndarray]] = {}
    for r in records:
        data = scipy.io.loadmat(CWRU / r["file"])[r["variable"]].ravel().astype(np.float64)
        if float(r["fs_hz"]) != FS:  # record 97 is sampled at 48 kHz
            data = scipy.signal.resample_poly(data, int(FS), int(float(r["fs_hz"])))
        per_type.setdefault(r["label"], []).append(
            features(data, float(r["rpm"]) / 60.0, r["label"]))
    return {label: (np.concatenate(v).min(axis=0), np.concatenate(v).max(axis=0))
            for label, v in per_type.items()}


def outside_range(tmp_path: Path, real_ranges, label: str, rpm: int,
                  features_checked: tuple[str, ...] = FEATURES) -> list[str]:
    lo, hi = real_ranges[label]
    lo, hi = lo * (1 - MARGIN), hi * (1 + MARGIN)
    problems = []
    for severity in (0.5, 1.0):
        out = write_record(tmp_path / f"{label}-{rpm}-{severity}.npz", fault=label,
                           bearing="SKF 6205", shaft_hz=rpm / 60.0, fs_hz=FS, seconds=8.0,
                           seed=rpm, severity=severity)
        meta = json.loads(out.with_suffix(".json").read_text())  # the metadata beside it
        assert meta["fault"] == label and meta["defect_hz"]["bpfo"] == pytest.approx(
            3.585 * rpm / 60.0, rel=1e-3)
        with np.load(out) as rec:
            assert float(rec["fs_hz"]) == FS and str(rec["bearing"]) == "SKF 6205"
            assert rec["signal"].size == meta["signal"]["n_samples"] == 8 * FS
            sim = np.median(features(rec["signal"], rpm / 60.0, label), axis=0)
        problems += [f"severity {severity}: {name} {v:.2f} not in [{a:.2f}, {b:.2f}]"
                     for name, v, a, b in zip(FEATURES, sim, lo, hi, strict=True)
                     if name in features_checked and not a <= v <= b]
    return problems


@pytest.mark.parametrize("label", ["normal", "outer_race", "inner_race", "ball"])
@pytest.mark.parametrize("rpm", [1797, 1772])
def test_simulated_record_falls_inside_the_real_range(tmp_path, real_ranges, label: str,
                                                      rpm: int) -> None:
    outside = outside_range(tmp_path, real_ranges, label, rpm)
    assert not outside, f"{label} at {rpm} rpm: {outside}"
