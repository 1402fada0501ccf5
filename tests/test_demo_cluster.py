"""`ballpass demo --cluster`: the demo plant on a real local 3-node NATS cluster with two
workers, and its exit 2 when the cluster extra is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plant import processes_mentioning

from ballpass.demo_cluster import INSTALL_HINT, cluster_extra_missing, merge_statuses


@pytest.mark.slow
def test_demo_cluster_by_duration_writes_an_honest_summary(tmp_path: Path) -> None:
    summary_path = tmp_path / "s.json"
    workdir = tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "ballpass", "demo", "--cluster",
                        "--duration", "40", "--summary-json", str(summary_path),
                        "--workdir", str(workdir)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    # The same accounting as the plain demo: every window captured is in InfluxDB once.
    assert s["windows_captured"] > 0
    assert s["windows_lost"] == 0
    assert s["windows_written"] == s["windows_captured"] == s["windows_published"]
    assert s["windows_ingested"] == s["windows_written"]
    assert s["duplicates"] == 0
    assert all(x["diagnosis"] is not None for x in s["sensors"]), s["sensors"]
    faulty = [x for x in s["sensors"] if x["truth"] != "normal"]
    assert faulty and all(x["alerted"] for x in faulty), faulty
    assert s["webhooks_received"] >= len(faulty)
    assert set(s["exit_codes"]) >= {"w1", "w2"} and set(s["exit_codes"].values()) == {0}

    c = s["cluster"]
    assert c["nodes"] == 3
    workers = {w["worker_id"]: w for w in c["workers"]}
    assert set(workers) == {"w1", "w2"}
    held = [set(w["partitions"]) for w in workers.values()]
    assert all(held), workers  # both held partitions
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(c["partitions"]))
    assert [w["relay"] for w in workers.values()].count(True) == 1 == c["relays"]
    # Every window came through the relay (plus gateway status), diagnoses went back.
    assert sum(w.get("relayed", 0) for w in workers.values()) >= s["windows_published"]
    assert sum(w.get("returned", 0) for w in workers.values()) > 0
    assert sum(w["written"] for w in workers.values()) == s["windows_written"]
    assert processes_mentioning(str(workdir)) == []


def test_cluster_extra_installed_here() -> None:
    # The dev extra includes the cluster extra: the check passes, nothing is missing.
    assert cluster_extra_missing() is None


def test_demo_cluster_without_nats_py_exits_2_naming_the_extra(tmp_path: Path) -> None:
    # nats-py made unimportable in the child only (a None entry in sys.modules makes
    # `import nats` raise ImportError), as on a host without the cluster extra.
    workdir = tmp_path / "work"
    code = ("import sys; sys.modules['nats'] = None; from ballpass.cli import main; "
            f"sys.exit(main(['demo', '--cluster', '--duration', '5', '--workdir', "
            f"{str(workdir)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "nats-py" in r.stderr and INSTALL_HINT in r.stderr, r.stderr
    assert not workdir.exists()  # refused before anything started


def test_merge_statuses_sums_workers_and_keeps_latest_lines() -> None:
    w1 = {"mqtt_connected": True, "http_url": "http://a",
          "counters": {"ingested": 5, "written": 5, "rejected": {"size": 1}},
          "gateways": {"g": {"counters": {"published": 7}}},
          "sensors": {"x": {"seq": 4, "diagnosis": "ball"}}}
    w2 = {"mqtt_connected": True, "http_url": None,
          "counters": {"ingested": 3, "written": 2, "rejected": {"size": 2, "crc": 1}},
          "gateways": {"g": {"counters": {"published": 9}}},
          "sensors": {"x": {"seq": 6, "diagnosis": "normal"}, "y": {"seq": 0}}}
    m = merge_statuses([w1, w2])
    assert m["counters"] == {"ingested": 8, "written": 7, "rejected": {"size": 3, "crc": 1}}
    assert m["gateways"]["g"]["counters"]["published"] == 9
    assert m["sensors"]["x"]["diagnosis"] == "normal" and set(m["sensors"]) == {"x", "y"}
    assert m["http_url"] == "http://a" and m["mqtt_connected"] is True
    assert merge_statuses([w1]) == w1  # the plain demo's one stream: unchanged
