"""The window history across a real stream restart, and drawn in real headless Chromium.

Real mosquitto, the session's influxd, `ballpass stream` (evidence page) and `ballpass
gateway` with a simulated outer-race fault: the stream keeps a window every second and the
one that raised the alarm; it is stopped and started again on the same state dir; the
history it kept before is served after, and Chromium draws the waterfall and the alarm's
window from it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import chromium  # tests/ is on sys.path
from fleet_run import TOKEN, USERS, site_toml
from plant import read_status, spawn_ballpass, wait_until, write_passwords
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ballpass.demo import WebhookReceiver
from ballpass.services import Influxd, Mosquitto

pytestmark = pytest.mark.slow

INK = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let ink = 0;
for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++;
return ink / (c.width * c.height);
"""


def _get(base: str, path: str) -> Any:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def test_history_survives_a_restart_and_is_drawn(tmp_path: Path, influxd: Influxd,
                                                 browser: webdriver.Chrome) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", users=USERS, operator_users=("ops",))
    broker.start()
    receiver = WebhookReceiver()
    receiver.start()
    influxd.create_database("history")
    write_passwords(tmp_path, USERS)
    (tmp_path / "http.token").write_text(TOKEN + "\n", encoding="utf-8")
    site = tmp_path / "site.toml"
    toml = site_toml(broker, influxd.url, "history", tmp_path, receiver.url)
    site.write_text(toml.replace("[stream]\n", "[stream]\nhistory_interval_s = 1\n", 1),
                    encoding="utf-8")
    status_file = tmp_path / "status.json"
    args = ["stream", "-c", str(site), "--status-file", str(status_file),
            "--http", "127.0.0.1:0", "--metrics", ":0"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn_ballpass(args, tmp_path / "stream1.log"))
        wait_until(lambda: read_status(status_file).get("mqtt_connected"), 120,
                   "the stream to subscribe")
        procs.append(spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"],
                                    tmp_path / "gateway.log"))
        wait_until(lambda: read_status(status_file).get("history", {}).get("kept", {})
                   .get("firing"), 90, "the alarm's window in the history")
        wait_until(lambda: read_status(status_file)["history"]["kept"].get("interval", 0)
                   >= 8, 30, "interval windows in the history")
        first = read_status(status_file)
        base = first["http_url"]
        metrics = urllib.request.urlopen(first["metrics_url"] + "/metrics",
                                         timeout=10).read().decode()
        assert 'ballpass_stream_history_kept_total{reason="firing"}' in metrics
        assert "ballpass_stream_history_write_errors_total 0.0" in metrics
        before = _get(base, "/sensor/faulty/history")
        firing = [e for e in before["entries"] if e["reason"] == "firing"]
        assert firing
        assert first["history"]["write_errors"] == 0

        # Restart the stream on the same state dir (the gateway keeps running).
        _terminate(procs.pop(0))
        status_file.unlink()
        procs.append(spawn_ballpass(args, tmp_path / "stream2.log"))
        wait_until(lambda: status_file.exists() and read_status(status_file)
                   .get("mqtt_connected"), 120, "the restarted stream to subscribe")
        base = read_status(status_file)["http_url"]
        after = _get(base, "/sensor/faulty/history")
        ids = {e["id"] for e in after["entries"]}
        assert {e["id"] for e in before["entries"]} <= ids | {
            e["id"] for e in before["entries"] if e["reason"] == "interval"}
        assert {e["id"] for e in firing} <= ids  # the alarm's window is still there
        window = _get(base, f"/sensor/faulty/history/{firing[0]['id']}")
        assert window["meta"]["alert"]["status"] == "firing"
        assert window["meta"]["diagnosis"] == "outer_race"
        assert window["n_samples"] == 8192 and len(window["amp_g"]) > 100

        # Chromium: the waterfall and the alarm's window.
        browser.get(f"{base}/login?next=/sensor/faulty")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-history")
            == "ready")
        rows = int(browser.find_element(By.ID, "waterfall").get_attribute("data-rows") or 0)
        assert rows >= len(before["waterfall"]["t"]) and rows >= 8
        assert browser.execute_script(INK, "waterfall") > 0.5  # coloured cells, not blank
        waterfall = browser.find_element(By.ID, "waterfall")
        assert waterfall.get_attribute("data-kind") == "spectrum"
        assert int(waterfall.get_attribute("data-time-ticks") or 0) >= 2
        browser.find_element(By.CSS_SELECTOR, 'input[value="envelope"]').click()
        WebDriverWait(browser, 5).until(lambda d: d.find_element(By.ID, "waterfall")
                                        .get_attribute("data-kind") == "envelope")
        assert int(waterfall.get_attribute("data-rows") or 0) >= 8
        assert browser.execute_script(INK, "waterfall") > 0.5
        links = browser.find_elements(By.CSS_SELECTOR, "#history-alerts a.reason-firing")
        assert links
        links[-1].click()  # the oldest firing: the window that raised the alarm
        WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-history")
            == "ready")
        assert firing[0]["id"] in browser.current_url
        meta = browser.find_element(By.ID, "window-meta").text
        assert "needs attention" in meta and "outer_race" in meta
        for canvas in ("wave", "spectrum", "envelope"):
            assert browser.execute_script(INK, canvas) > 0.001, canvas
        artifacts = Path(__file__).resolve().parent.parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        browser.save_screenshot(str(artifacts / "history-window.png"))
    finally:
        for proc in reversed(procs):
            _terminate(proc)
        receiver.stop()
        broker.stop()
