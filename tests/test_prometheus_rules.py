"""The shipped Prometheus alert rules (deploy/prometheus): valid for the real promtool, their
unit tests pass, and every metric they read is one the stream exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ballpass.config import parse
from ballpass.stream.service import StreamService

PROM = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True,
                          timeout=60)


def test_rules_check_and_their_unit_tests_pass_in_promtool() -> None:
    check = _promtool("check", "rules", "ballpass-rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    test = _promtool("test", "rules", "ballpass-rules.test.yml")
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_example_scrape_config_is_valid(tmp_path: Path) -> None:
    config = (PROM / "prometheus.example.yml").read_text().replace(
        "/etc/prometheus/ballpass-rules.yml", str(PROM / "ballpass-rules.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


class _NoWriter:
    def write(self, points: object) -> None:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


def test_every_metric_the_rules_read_is_exported_by_the_stream(tmp_path: Path) -> None:
    config = parse({"site": {"id": "s"}, "stream": {"state_dir": str(tmp_path)},
                    "asset": [{"id": "m", "bearing": "SKF 6205", "shaft_hz": 25.0}],
                    "gateway": [{"id": "g", "sensor": [
                        {"id": "a", "driver": "simulated", "asset": "m", "fs_hz": 25600,
                         "window_samples": 4096, "interval_s": 1}]}]})
    service = StreamService(config, _NoWriter())
    service.gateways["g"] = {"state": "online", "counters": {"queued": 3, "captured": 5}}
    service.counters.rejected["crc"] += 1
    service.writer.last_written_t = 1.0
    exported = {s.name for f in text_string_to_metric_families(
        service.metrics.exposition().decode()) for s in f.samples}
    used = set(re.findall(r"\bballpass_\w+", (PROM / "ballpass-rules.yml").read_text()))
    assert used and used <= exported, used - exported
