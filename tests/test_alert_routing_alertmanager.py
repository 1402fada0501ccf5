"""The alertmanager route against the real `prometheus-alertmanager` (Debian) on loopback:
the alert shows firing through Alertmanager's API, then resolved (gone from it)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_alert_routing import PUBLIC, alert, hook  # tests/ is on sys.path

from ballpass.stream.sinks.webhook import WebhookSender


class Alertmanager:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "alertmanager.yml"
        config.write_text('route:\n  receiver: "null"\n  group_by: ["asset"]\n'
                          'receivers:\n  - name: "null"\n', encoding="utf-8")
        self.log = (workdir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={config}",
             f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "alertmanager exited"
            try:
                self.get("/api/v2/status")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("alertmanager did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path)
    try:
        am.wait_ready()
        yield am
    finally:
        am.stop()


def _ours(am: Alertmanager) -> list[dict[str, Any]]:
    return [a for a in am.get("/api/v2/alerts") if a["labels"].get("alertname")
            == "BallpassMachineAlarm"]


def test_alert_fires_then_resolves_in_alertmanager(alertmanager: Alertmanager,
                                                   tmp_path: Path) -> None:
    sender = WebhookSender((hook(alertmanager.url, "alertmanager", group_wait_s=0.5),),
                           0.1, state_dir=tmp_path / "state", public_url=PUBLIC)
    seen: dict[str, Any] = {}

    async def run() -> None:
        task = asyncio.create_task(sender.run())
        sender.submit(alert("de", iso_zone="D"))
        sender.submit(alert("nde"))
        deadline = time.monotonic() + 15
        while len(_ours(alertmanager)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        seen["firing"] = _ours(alertmanager)
        seen["posts_firing"] = sender.counters.attempts
        sender.submit(alert("de", "resolved", diagnosis="normal"))
        deadline = time.monotonic() + 15
        while len(_ours(alertmanager)) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        seen["after"] = _ours(alertmanager)
        await sender.close()
        await asyncio.wait_for(task, 10)

    asyncio.run(run())
    firing = {a["labels"]["sensor"]: a for a in seen["firing"]}
    assert set(firing) == {"de", "nde"}
    assert seen["posts_firing"] == 1  # two sensors of one asset: one POST (grouped)
    de = firing["de"]
    assert de["status"]["state"] == "active"
    assert de["labels"]["severity"] == "critical" and de["labels"]["asset"] == "reactor7"
    assert de["labels"]["fault"] == "outer_race" and de["labels"]["site"] == "plant"
    assert de["annotations"]["evidence"] == f"{PUBLIC}/sensor/de"
    assert de["generatorURL"] == f"{PUBLIC}/sensor/de"
    assert "Plan a bearing replacement" in de["annotations"]["action"]
    assert "reactor7 sensor de" in de["annotations"]["summary"]
    # The resolve reused the firing labels, so Alertmanager resolved that very alert.
    assert [a["labels"]["sensor"] for a in seen["after"]] == ["nde"]
    assert sender.counters.delivered == 3 and sender.counters.failed == 0
