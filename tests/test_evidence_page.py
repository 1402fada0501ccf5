"""The evidence page in real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium; no browser or driver download) against a running stream on a simulated fleet."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import chromium  # tests/ is on sys.path
from fleet_run import TOKEN, FleetRun, shared_fleet  # tests/ is on sys.path
from plant import wait_until
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["shared_fleet"]  # the fixture, imported so pytest finds it here

# One worker starts the session's fleet once for every test that reads it (make test -n 2).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("shared_fleet")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
READ_SENSOR_PAGE = """
const q = s => Array.from(document.querySelectorAll(s));
const ev = q('svg#envelope line.evidence');
return {diagnosis: document.getElementById('diagnosis').textContent,
        evidence: ev.map(e => e.getAttribute('data-line')),
        evidence_visible: ev.map(e => e.getBoundingClientRect().height > 50),
        defects: q('svg#envelope line.defect').map(e => e.getAttribute('data-line')),
        thresholds: q('svg#trend-velocity line.threshold').length,
        actions: document.getElementById('actions').textContent,
        alerts: document.getElementById('alerts').textContent};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def login(browser: webdriver.Chrome, base: str, path: str = "/") -> None:
    """Log in through the form (the token is POSTed, never put in a URL)."""
    browser.get(f"{base}/login?next={path}")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: "/login" not in d.current_url)
    assert TOKEN not in browser.current_url


def test_overview_lists_every_sensor_live(shared_fleet: FleetRun,
                                          browser: webdriver.Chrome) -> None:
    login(browser, shared_fleet.http_url)
    links = {a.text for a in browser.find_elements(By.CSS_SELECTOR, "#fleet a.sensor-link")}
    assert links == {"faulty", "healthy", "housing"}
    # Server-sent events update the table: the live line shows an update time.
    WebDriverWait(browser, 15).until(
        lambda d: d.find_element(By.ID, "live-status").text.startswith("updated"))
    state = browser.find_element(By.CSS_SELECTOR, "#row-faulty td[data-k=state]").text
    assert state == "alarm"
    assert browser.find_element(By.CSS_SELECTOR, "#row-faulty td[data-k=diagnosis]").text \
        == "outer_race"
    assert browser.find_element(By.CSS_SELECTOR, "#gw-gw1 td[data-k=state]").text == "online"


def test_faulty_sensor_page_highlights_its_defect_line(shared_fleet: FleetRun,
                                                       browser: webdriver.Chrome) -> None:
    login(browser, shared_fleet.http_url, "/sensor/faulty")
    # Read the page in one script: live updates replace the fragment between calls.
    page = browser.execute_script(READ_SENSOR_PAGE)
    assert page["diagnosis"] == "outer_race"
    assert page["evidence"], "no evidence line drawn on the envelope spectrum"
    assert set(page["evidence"]) == {"BPFO"}
    assert all(page["evidence_visible"])
    # The bearing's kinematic lines are drawn too, and the ISO boundaries on the trend.
    assert {"BPFO", "BPFI", "2xBSF", "FTF"} <= set(page["defects"])
    assert page["thresholds"] == 3
    assert "ack" in page["actions"] and "checked on site" in page["actions"]
    assert "firing" in page["alerts"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "evidence-faulty.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    browser.get(f"{shared_fleet.http_url}/")
    browser.save_screenshot(str(ARTIFACTS / "evidence-overview.png"))

    # The healthy bearing's page shows no evidence line.
    browser.get(f"{shared_fleet.http_url}/sensor/healthy")  # the session cookie
    page = browser.execute_script(READ_SENSOR_PAGE)
    assert page["diagnosis"] == "normal" and page["evidence"] == []


def test_bad_requests_answer_cleanly_and_the_stream_keeps_running(
        shared_fleet: FleetRun) -> None:
    status, body = shared_fleet.get("/sensor/nope")
    assert status == 404 and "no sensor" in body and "Traceback" not in body
    refused = shared_fleet.status()["http"]["refused"].get("unauthorized", 0)
    assert shared_fleet.get("/", token="wrong")[0] == 401
    # every refusal is counted where an admin looks: the status file
    wait_until(lambda: shared_fleet.status()["http"]["refused"].get("unauthorized", 0) > refused,
               10,
               "the refusal in the status file")
    assert shared_fleet.get("/", token=None)[0] == 401
    assert shared_fleet.get("/events", token="wrong")[0] == 401
    assert shared_fleet.get("/no/such/page")[0] == 404
    # A broken request line gets a 400, not a crash.
    host, port = shared_fleet.http_url.removeprefix("http://").split(":")
    import socket
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"garbage\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    windows = shared_fleet.status()["sensors"]["healthy"]["windows"]
    status, body = shared_fleet.get("/api/fleet")
    assert status == 200 and '"faulty"' in body
    wait_until(lambda: shared_fleet.status()["sensors"]["healthy"]["windows"] > windows, 10,
               "the stream to keep processing")
    assert shared_fleet.stream.poll() is None
    req = urllib.request.Request(shared_fleet.http_url + "/static/app.js",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert b"EventSource" in r.read()
