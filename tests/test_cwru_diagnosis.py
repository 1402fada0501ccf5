"""Diagnosis on the CWRU bearing recordings (measuring only: nothing was fitted to them).

Each record is cut into windows of 8192 samples at 12 kHz (record 97, sampled at 48 kHz,
is resampled to 12 kHz first), every window is diagnosed with the SKF 6205 drive-end
geometry, and the record's diagnosis is the majority vote of its windows.

A record is one sensor's history, as in `ballpass evaluate`: the impact-interval counts
pool over its windows in order (`ImpactHistory`, diagnosis rule 3b).

What is asserted: what envelope analysis is known to achieve on this set (Smith &
Randall, MSSP 64-65 (2015), "Rolling element bearing diagnostics using the Case Western
Reserve University data: a benchmark study"): the normal record stays normal, the 6205
inner-race records and the outer-race records at 6:00 are diagnosed correctly, most
outer-race records at 3:00 and 12:00 too; and the issue's targets (outer race 12 of 14,
ball 3 of 6). Records 197/198 and the 0.028 in records (another bearing, so other defect
frequencies) are measured but only checked not to be called a sensor fault or short data.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.signal

from ballpass.models.catalog import lookup
from ballpass.stream.diagnosis import diagnose
from ballpass.stream.features import extract
from ballpass.stream.impact_history import ImpactHistory

CWRU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cwru"
FS = 12000.0
WINDOW = 8192

pytestmark = [
    pytest.mark.cwru,
    pytest.mark.skipif(not CWRU.is_dir(), reason=f"cwru data folder {CWRU} absent"),
]


def vote(record: dict[str, str]) -> tuple[str, Counter[str]]:
    data = scipy.io.loadmat(CWRU / record["file"])[record["variable"]].ravel().astype(np.float64)
    if float(record["fs_hz"]) != FS:
        up_down = (int(FS), int(float(record["fs_hz"])))
        data = scipy.signal.resample_poly(data, *up_down)
    n_win = data.size // WINDOW
    windows = data[: n_win * WINDOW].reshape(n_win, WINDOW)
    shaft = float(record["rpm"]) / 60.0
    batch = extract(windows, FS, np.full(n_win, shaft), lookup("SKF 6205").orders())
    impacts = ImpactHistory()
    counts = Counter(diagnose(batch, i, impacts=impacts.add(record["file"], batch.impact_counts[i]))
                     .diagnosis for i in range(n_win))
    return counts.most_common(1)[0][0], counts


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[dict[str, str], str, Counter[str]]]:
    with (CWRU / "manifest.csv").open() as f:
        records = list(csv.DictReader(f))
    return {r["file"].removesuffix(".mat"): (r, *vote(r)) for r in records}


def table(results: dict, names: list[str]) -> str:
    return "; ".join(
        f"{n} {results[n][0]['label']} -> {results[n][1]} {dict(results[n][2])}" for n in names
    )


def test_normal_record_is_normal(results) -> None:
    _, got, counts = results["97"]
    assert got == "normal", table(results, ["97"])
    assert counts["normal"] / counts.total() >= 0.8


def test_inner_race_6205_records(results) -> None:
    names = ["105", "106", "169", "170", "209", "210"]
    wrong = [n for n in names if results[n][1] != "inner_race"]
    assert not wrong, table(results, wrong)


def test_outer_race_at_6_records(results) -> None:
    names = ["130", "131", "234", "235"]
    wrong = [n for n in names if results[n][1] != "outer_race"]
    assert not wrong, table(results, wrong)


def test_outer_race_at_3_and_12_mostly(results) -> None:
    names = ["144", "145", "246", "247", "156", "158", "258", "259"]
    right = [n for n in names if results[n][1] == "outer_race"]
    assert len(right) >= 6, table(results, names)


def test_outer_race_12_of_14(results) -> None:
    # Issue 3 target: at least 12 of the 14 outer-race records (197/198 show no BPFO line).
    names = [n for n, (r, _, _) in results.items()
             if r["label"] == "outer_race" and r["fault_size_in"] != "0.028"]
    right = [n for n in names if results[n][1] == "outer_race"]
    assert len(names) == 14
    assert len(right) >= 12, table(results, names)


def test_ball_3_of_6(results) -> None:
    names = ["118", "119", "185", "186", "222", "223"]
    right = [n for n in names if results[n][1] == "ball"]
    assert len(right) >= 3, table(results, names)


def test_ball_records_are_never_called_outer_race_or_ball_on_the_healthy(results) -> None:
    # What the ball rules must not do: call a ball record an outer-race fault, or call
    # the healthy record, or any window of a race record, a ball fault.
    names = ["118", "119", "185", "186", "222", "223"]
    assert not [n for n in names if results[n][1] == "outer_race"], table(results, names)
    assert results["97"][2]["ball"] == 0, table(results, ["97"])
    races = [n for n, (r, _, _) in results.items()
             if r["label"] in ("outer_race", "inner_race") and r["fault_size_in"] != "0.028"]
    assert not [n for n in races if results[n][2]["ball"]], table(results, races)


def test_0028_records_reported_apart(results) -> None:
    # Another bearing (not 6205 kinematics): measured and shown, never a sensor fault.
    names = ["3001", "3002", "3005", "3006"]
    print("0.028 in records:", table(results, names))
    assert all(results[n][1] not in ("sensor_fault", "insufficient_data") for n in names)


def test_no_record_is_a_sensor_fault_or_short(results) -> None:
    bad = [n for n, (_, got, _) in results.items() if got in ("sensor_fault", "insufficient_data")]
    assert not bad, table(results, bad)


def test_fault_records_are_mostly_not_normal(results) -> None:
    faults = [n for n, (r, _, _) in results.items() if r["label"] != "normal"]
    flagged = [n for n in faults if results[n][1] != "normal"]
    assert len(flagged) / len(faults) >= 0.7, table(results, faults)
