"""The window history (stream/history.py): bounds by size and age, counters, corrupt files,
the entries a real pipeline result makes, and the index read back after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ballpass.stream.history import HistoryStore, decimate_minmax

DAY_NS = 86_400 * 10**9


def _arrays(rng: np.random.Generator, n: int = 4096) -> dict[str, np.ndarray]:
    freq = np.linspace(0, 5000, 1500, dtype=np.float32)
    return {"samples": rng.standard_normal(n).astype(np.float32), "freq_hz": freq,
            "amp_g": np.abs(rng.standard_normal(1500)).astype(np.float32),
            "env_freq_hz": freq[:500], "env_amp_g": np.abs(rng.standard_normal(500))
            .astype(np.float32)}


def test_keep_load_and_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=30 * 86400)
    now = time.time()
    t0 = int((now - 3600) * 1e9)
    arrays = _arrays(rng)
    e = store.keep("s/1 x", t0, "firing", arrays, {"seq": 7, "alert": {"alert_id": "a1"}},
                   now_s=now)
    assert e is not None and e.size > 0
    store.keep("s/1 x", t0 + 10**9, "interval", _arrays(rng), {"seq": 8}, now_s=now)
    assert store.counters.kept == {"firing": 1, "interval": 1}
    # A new store (a restarted stream) reads the same index back from disk.
    again = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=30 * 86400)
    assert [x.id for x in again.entries("s/1 x")] == [e.id, f"{t0 + 10**9}-interval"]
    data = again.load("s/1 x", e.id)
    assert data is not None
    np.testing.assert_array_equal(data["samples"], arrays["samples"])
    assert data["meta"] == {"seq": 7, "alert": {"alert_id": "a1"}}
    assert again.load("s/1 x", "nope") is None
    assert again.status()["entries"] == 2


def test_interval_due(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    t0 = time.time_ns()
    assert store.due("a", t0, 3600)
    store.keep("a", t0, "interval", {"samples": np.zeros(8, np.float32)}, {})
    assert not store.due("a", t0 + 3599 * 10**9, 3600)
    assert store.due("a", t0 + 3600 * 10**9, 3600)
    assert store.due("b", t0, 3600)


def test_bounded_by_age(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = HistoryStore(tmp_path, max_bytes=10**9, max_age_s=2 * 86400)
    now_ns = time.time_ns()
    for day in (5, 4, 3, 1, 0):
        store.keep("a", now_ns - day * DAY_NS, "interval", _arrays(rng), {},
                   now_s=now_ns / 1e9)
    left = [round((now_ns - e.t0_ns) / DAY_NS) for e in store.entries("a")]
    assert left == [1, 0]
    assert store.counters.pruned == {"age": 3}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        e.path.name for e in store.entries("a"))


def test_bounded_by_size_oldest_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    probe = HistoryStore(tmp_path / "probe", max_bytes=10**9, max_age_s=86400)
    one = probe.keep("a", time.time_ns(), "interval", _arrays(rng), {})
    assert one is not None
    store = HistoryStore(tmp_path / "s", max_bytes=int(3.5 * one.size), max_age_s=86400)
    t0 = time.time_ns()
    for i in range(10):
        store.keep("a" if i % 2 else "b", t0 + i * 10**9, "interval", _arrays(rng), {})
        assert store.total_bytes() <= store.max_bytes
    kept = sorted(e.t0_ns for s in ("a", "b") for e in store.entries(s))
    assert kept == [t0 + i * 10**9 for i in (7, 8, 9)]  # the newest, across sensors
    assert store.counters.pruned == {"size": 7}


def test_corrupt_file_tolerated_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    t0 = time.time_ns()
    good = store.keep("a", t0, "interval", _arrays(rng), {})
    bad = store.keep("a", t0 + 10**9, "firing", _arrays(rng), {})
    assert good is not None and bad is not None
    bad.path.write_bytes(bad.path.read_bytes()[:100])  # torn
    (tmp_path / "a" / "junk.txt").write_text("not an entry")
    (tmp_path / "a" / f"{t0 + 5}-interval.tmp").write_bytes(b"half")  # a crash mid-write
    again = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    assert not (tmp_path / "a" / f"{t0 + 5}-interval.tmp").exists()
    assert again.load("a", bad.id) is None
    assert again.counters.corrupt == 1
    wf = again.waterfall("a")
    assert wf["ids"] == [good.id]  # the torn entry is skipped, the rest drawn
    assert again.counters.corrupt == 2


def test_write_error_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "a"
    blocker.write_text("a file where the sensor's directory should be")
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    assert store.keep("a", time.time_ns(), "interval", {"samples": np.zeros(4)}, {}) is None
    assert store.counters.write_errors == 1 and store.counters.kept == {}
    with pytest.raises(ValueError, match="reason"):
        store.keep("b", 1, "Bad-Reason", {}, {})


def test_waterfall_grid(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    t0 = time.time_ns()
    freq = np.linspace(0, 1000, 1001)
    for k, f_line in enumerate((100.0, 200.0, 300.0)):
        amp = np.where(np.isclose(freq, f_line), 1.0, 0.01)
        store.keep("a", t0 + k * 10**9, "interval",
                   {"freq_hz": freq, "amp_g": amp, "samples": np.zeros(4)}, {})
    wf = store.waterfall("a", bins=100)
    assert len(wf["amp_g"]) == 3 and len(wf["freq_hz"]) == 100
    peaks = [wf["freq_hz"][int(np.argmax(row))] for row in wf["amp_g"]]
    assert [round(p, -1) for p in peaks] == [100.0, 200.0, 300.0]
    assert store.waterfall("nobody") == {"t": [], "freq_hz": [], "amp_g": [], "ids": [],
                                         "reasons": []}


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(16, 3000), min_size=1, max_size=12),
       ages=st.lists(st.floats(0, 10), min_size=12, max_size=12),
       max_kb=st.integers(1, 60), max_age_d=st.floats(0.5, 8))
def test_bounds_always_hold(tmp_path_factory: pytest.TempPathFactory, sizes: list[int],
                            ages: list[float], max_kb: int, max_age_d: float) -> None:
    root = tmp_path_factory.mktemp("h")
    rng = np.random.default_rng(0)
    store = HistoryStore(root, max_bytes=max_kb * 1000, max_age_s=max_age_d * 86400)
    now = time.time()
    for i, n in enumerate(sizes):
        t0 = int((now - ages[i] * 86400) * 1e9) + i
        store.keep(f"s{i % 3}", t0, "interval",
                   {"samples": rng.standard_normal(n).astype(np.float32)}, {}, now_s=now)
        entries = [e for s in ("s0", "s1", "s2") for e in store.entries(s)]
        assert sum(e.size for e in entries) <= store.max_bytes
        assert all(now - e.t0_ns / 1e9 <= store.max_age_s for e in entries)
        on_disk = sorted(p.name for p in root.rglob("*.npz"))
        assert on_disk == sorted(e.path.name for e in entries)
    c = store.counters
    assert sum(c.kept.values()) == len(sizes)
    assert sum(c.kept.values()) - sum(c.pruned.values()) == len(
        [e for s in ("s0", "s1", "s2") for e in store.entries(s)])


def test_decimate_minmax() -> None:
    x = np.sin(np.linspace(0, 20, 10_000))
    lo, hi = decimate_minmax(x, 100)
    assert len(lo) == len(hi) == 100
    assert min(lo) == pytest.approx(x.min(), abs=1e-6)
    assert max(hi) == pytest.approx(x.max(), abs=1e-6)
    assert decimate_minmax(np.array([])) == ([], [])


def test_bad_deflate_data_is_skipped_and_counted(tmp_path: Path) -> None:
    """A file whose zip listing reads but whose compressed member is damaged (zlib.error)
    costs that entry only, not the sensor's whole history."""
    import zipfile

    rng = np.random.default_rng(5)
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    t0 = time.time_ns()
    bad = store.keep("a", t0, "interval", _arrays(rng), {})
    good = store.keep("a", t0 + 10**9, "interval", _arrays(rng), {})
    assert bad is not None and good is not None
    b = bytearray(bad.path.read_bytes())
    with zipfile.ZipFile(bad.path) as z:
        info = z.getinfo("amp_g.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 40, start + 60):
        b[i] ^= 0xA5
    bad.path.write_bytes(bytes(b))
    wf = store.waterfalls("a")
    assert wf["amp_g"]["ids"] == [good.id]
    assert store.load("a", bad.id) is None
    assert store.counters.corrupt == 2


def test_meta_that_is_no_object_is_corrupt(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=86400)
    e = store.keep("a", time.time_ns(), "interval", {"samples": np.zeros(8, np.float32)}, {})
    assert e is not None
    np.savez_compressed(e.path, meta=np.array("[1, 2]"), samples=np.zeros(8))
    assert store.load("a", e.id) is None and store.counters.corrupt == 1


def test_a_window_stamped_ahead_does_not_stop_the_interval(tmp_path: Path) -> None:
    """A gateway clock a day ahead for one window, then corrected: interval history goes
    on by the wall clock, and the future-dated entry ages from when it was written."""
    store = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=7 * 86400)
    now = time.time()
    a = {"samples": np.zeros(8, np.float32)}
    store.keep("a", int((now + 86400) * 1e9), "interval", a, {}, now_s=now)
    late = int((now + 60) * 1e9)  # after the correction: older than the last entry
    assert not store.due("a", late, 600, now_s=now + 60)
    assert store.due("a", int((now + 3600) * 1e9), 600, now_s=now + 3600)
    store.keep("a", int((now + 3600) * 1e9), "interval", a, {}, now_s=now + 3600)
    assert not store.due("a", int((now + 3700) * 1e9), 600, now_s=now + 3700)
    assert store.due("a", int((now + 4300) * 1e9), 600, now_s=now + 4300)
    # A restart knows when the last entry was written (its file's time).
    again = HistoryStore(tmp_path, max_bytes=10**8, max_age_s=7 * 86400)
    assert not again.due("a", int((now + 70) * 1e9), 600, now_s=time.time() + 60)
    # Age: the future entry was written at `now`, so it goes 7 days after that.
    store.prune(now + 8 * 86400)
    assert store.entries("a") == [] and store.counters.pruned == {"age": 2}


def test_bounds_apply_at_start(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    now = time.time()
    store = HistoryStore(tmp_path, max_bytes=10**9, max_age_s=365 * 86400)
    for k in range(3):
        store.keep("a", int((now - 40 * 86400 + k) * 1e9), "interval", _arrays(rng), {},
                   now_s=now)
    fresh = store.keep("a", int((now - 60) * 1e9), "interval", _arrays(rng), {}, now_s=now)
    assert fresh is not None and len(store.entries("a")) == 4
    # Restarted with history_max_age_d = 30 and no write to come: the bound holds now.
    again = HistoryStore(tmp_path, max_bytes=10**9, max_age_s=30 * 86400)
    assert [e.id for e in again.entries("a")] == [fresh.id]
    assert again.counters.pruned == {"age": 3}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [fresh.path.name]
    # And the size bound: only the newest fits.
    smaller = HistoryStore(tmp_path, max_bytes=fresh.size - 1, max_age_s=30 * 86400)
    assert smaller.entries("a") == [] and smaller.counters.pruned == {"size": 1}
