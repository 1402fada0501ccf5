"""The public batched feature extraction: shapes, field names, validation, per-row independence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ballpass.models.catalog import lookup
from ballpass.stream.features import LINES, ROW_FIELDS, FeatureBatch, extract

ORDERS = lookup("SKF 6205").orders()
FS, N = 12000.0, 8192
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "influxdb-schema.md"


def signals(b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(N) / FS
    return np.array(
        [0.05 * np.sin(2 * np.pi * 29.95 * t) + 0.02 * rng.standard_normal(N) for _ in range(b)]
    )


def test_shapes_and_row_fields() -> None:
    batch = extract(signals(3), FS, np.full(3, 29.95), ORDERS)
    assert isinstance(batch, FeatureBatch) and len(batch) == 3
    for name, arr in batch.as_dict().items():
        assert arr.dtype == np.float64, name
        assert arr.shape[0] == 3, name
    for name in ("line_freq_hz", "line_amp_g", "line_snr_db"):
        assert getattr(batch, name).shape == (3, len(LINES), 3)
    row = batch.row(1)
    assert set(row) == set(ROW_FIELDS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in row.values())
    assert batch.rows() == [batch.row(i) for i in range(3)]


def test_row_fields_are_the_vibration_measurement_of_the_architecture() -> None:
    # ARCHITECTURE.md section 6 / docs/influxdb-schema.md: the `vibration` fields minus
    # seq and anomaly_score (which the stream adds).
    assert list(ROW_FIELDS) == [
        "rms_g", "peak_g", "crest", "kurtosis", "skewness", "velocity_rms_mm_s",
        "bpfo_snr_db", "bpfi_snr_db", "bsf_snr_db", "ftf_snr_db", "hf_floor", "x1_g", "x2_g",
    ]  # fmt: skip
    row = SCHEMA.read_text().split("| `vibration` |", 1)[1].split("\n", 1)[0]
    documented = [f.split("(")[0].strip() for f in row.split("|")[1].split(",")]
    assert [f for f in documented if f not in ("seq", "anomaly_score")] == list(ROW_FIELDS)


def test_values_of_a_known_signal() -> None:
    t = np.arange(N) / FS
    f1 = 30 * FS / N  # on a bin: 43.9 Hz
    x = 0.2 * np.sin(2 * np.pi * f1 * t) + 0.1 * np.sin(2 * np.pi * 2 * f1 * t)
    batch = extract(x[None, :], FS, np.array([f1]), ORDERS)
    r = batch.row(0)
    assert r["x1_g"] == pytest.approx(0.2, rel=1e-6)
    assert r["x2_g"] == pytest.approx(0.1, rel=1e-6)
    v1 = 0.2 * 9806.65 / (2 * np.pi * f1) / math.sqrt(2)
    v2 = 0.1 * 9806.65 / (2 * np.pi * 2 * f1) / math.sqrt(2)
    assert r["velocity_rms_mm_s"] == pytest.approx(math.hypot(v1, v2), rel=1e-6)
    assert r["rms_g"] == pytest.approx(math.sqrt(0.2**2 / 2 + 0.1**2 / 2), rel=1e-6)
    assert r["hf_floor"] < 1e-6


def test_rows_are_independent_of_their_batch() -> None:
    x = signals(4, seed=3)
    shafts = np.array([29.95, 25.0, 29.5, 20.0])
    batch = extract(x, FS, shafts, ORDERS)
    for i in range(4):
        alone = extract(x[i : i + 1], FS, shafts[i : i + 1], ORDERS)
        for name, arr in batch.as_dict().items():
            np.testing.assert_allclose(arr[i], getattr(alone, name)[0], rtol=1e-12, err_msg=name)


def test_non_finite_row_is_flagged_not_propagated() -> None:
    x = signals(2)
    x[0, 5] = np.inf
    batch = extract(x, FS, np.full(2, 29.95), ORDERS)
    assert batch.finite.tolist() == [0.0, 1.0]
    assert all(math.isfinite(v) for v in batch.row(0).values())
    good = extract(x[1:], FS, np.full(1, 29.95), ORDERS)
    assert batch.row(1) == good.row(0)


def test_extract_rejects_bad_input() -> None:
    x = signals(2)
    with pytest.raises(ValueError, match="shaft_hz"):
        extract(x, FS, np.array([29.95]), ORDERS)
    with pytest.raises(ValueError, match="shaft_hz"):
        extract(x, FS, np.array([29.95, 0.0]), ORDERS)
    with pytest.raises(ValueError, match="shaft_hz"):
        extract(x, FS, np.array([29.95, np.nan]), ORDERS)
    with pytest.raises(ValueError, match="fs_hz"):
        extract(x, 0.0, np.full(2, 29.95), ORDERS)
    with pytest.raises(ValueError, match="float64"):
        extract(x.astype(np.float32), FS, np.full(2, 29.95), ORDERS)
    with pytest.raises(ValueError, match="shape"):
        extract(x[0], FS, np.full(1, 29.95), ORDERS)
    with pytest.raises(ValueError, match="samples"):
        extract(x[:, :8], FS, np.full(2, 29.95), ORDERS)


def test_odd_lengths_and_low_rates_work() -> None:
    rng = np.random.default_rng(1)
    for fs, n in ((2000.0, 4001), (12000.0, 8191), (51200.0, 32769)):
        batch = extract(rng.standard_normal((2, n)), fs, np.array([20.0, 30.0]), ORDERS)
        assert all(math.isfinite(v) for v in batch.row(1).values())
        assert np.all(batch.env_hi_hz > batch.env_lo_hz)
