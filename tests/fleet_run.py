"""One short simulated fleet run shared by the Grafana and evidence-page tests.

Real mosquitto (password + ACL), the session's influxd, `ballpass stream` with its
evidence page (token-protected) and one `ballpass gateway` with simulated sensors: a
faulty bearing (outer race), a healthy one and a temperature probe. Started once per
test session by whichever module asks first (`shared_fleet`), stopped when the last
module using it is done; every process is stopped by PID.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from plant import query_rows, read_status, spawn_ballpass, wait_until, write_passwords

from ballpass.demo import WebhookReceiver
from ballpass.services import Influxd, Mosquitto

USERS = {"stream": "stream-pw", "gw1": "gw1-pw", "ops": "ops-pw"}
TOKEN = "evidence-token-for-tests"
SITE = "plant"


@dataclass
class FleetRun:
    broker: Mosquitto
    influxd: Influxd
    db: str
    tmp: Path
    site_file: Path
    status_file: Path
    receiver: WebhookReceiver
    stream: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes] | None = None
    http_url: str = ""

    def status(self) -> dict[str, Any]:
        return read_status(self.status_file)

    def rows(self, q: str) -> list[dict[str, Any]]:
        return query_rows(self.influxd, self.db, q)

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, str]:
        request = urllib.request.Request(self.http_url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def site_toml(broker: Mosquitto, influx_url: str, db: str, tmp: Path, webhook: str) -> str:
    return f"""
[site]
id = "{SITE}"
[broker]
host = "{broker.host}"
port = {broker.port}
[influx]
url = "{influx_url}"
db = "{db}"
[stream]
state_dir = "{tmp / 'state'}"
username = "stream"
password_file = "{tmp / 'stream.pw'}"
batch_wait_s = 0.1
http_token_file = "{tmp / 'http.token'}"
[[asset]]
id = "reactor1"
kind = "agitator"
bearing = "SKF 6205"
shaft_hz = 24.75
iso_group = 2
iso_foundation = "flexible"
[asset.online]
learn_hours = 0
learn_windows = 50
band_min_windows = 10
[[gateway]]
id = "gw1"
password_file = "{tmp / 'gw1.pw'}"
outbox = {{ path = "{tmp / 'outbox.sqlite'}" }}
[[gateway.sensor]]
id = "faulty"
driver = "simulated"
asset = "reactor1"
fs_hz = 25600
window_samples = 8192
interval_s = 0.35
options = {{ fault = "outer_race", seed = 11 }}
[[gateway.sensor]]
id = "healthy"
driver = "simulated"
asset = "reactor1"
fs_hz = 25600
window_samples = 8192
interval_s = 0.35
options = {{ fault = "normal", seed = 12 }}
[[gateway.sensor]]
id = "housing"
driver = "simulated"
asset = "reactor1"
kind = "temperature"
fs_hz = 16
window_samples = 16
interval_s = 1
[[webhook]]
url = "{webhook}"
"""




def _start(tmp: Path, influxd: Influxd) -> FleetRun:
    broker = Mosquitto(tmp / "mosquitto", users=USERS, operator_users=("ops",))
    broker.start()
    db = "fleet_shared"
    influxd.create_database(db)
    receiver = WebhookReceiver()
    receiver.start()
    write_passwords(tmp, USERS)
    (tmp / "http.token").write_text(TOKEN + "\n", encoding="utf-8")
    site = tmp / "site.toml"
    site.write_text(site_toml(broker, influxd.url, db, tmp, receiver.url), encoding="utf-8")
    status_file = tmp / "stream-status.json"
    stream = spawn_ballpass(["stream", "-c", str(site), "--status-file", str(status_file),
                     "--http", "127.0.0.1:0"], tmp / "stream.log")
    run = FleetRun(broker, influxd, db, tmp, site, status_file, receiver, stream)
    try:
        wait_until(lambda: run.status().get("mqtt_connected"), 120, "the stream to subscribe")
        run.http_url = run.status()["http_url"]
        run.gateway = spawn_ballpass(["gateway", "-c", str(site), "-g", "gw1"], tmp / "gateway.log")

        def ready() -> bool:
            s = run.status().get("sensors", {})
            return bool(s.get("faulty", {}).get("alerted")) and \
                s.get("healthy", {}).get("windows", 0) >= 10
        wait_until(ready, 90, "an alarm on the faulty sensor")
        wait_until(lambda: run.receiver.received, 20, "the alert webhook")
        # An operator acknowledges, so the Alerts dashboard has an action to show.
        req = urllib.request.Request(run.http_url + "/sensor/faulty/ack", method="POST",
                                     data=b"note=checked+on+site",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200  # after the 303 to the sensor page
        wait_until(lambda: run.rows("SELECT count(\"by\") FROM \"long\".\"actions\""), 10,
             "the operator action in InfluxDB")
        # After the learning phase (50 windows here) the online models score each window.
        wait_until(lambda: run.rows("SELECT count(\"anomaly_score\") FROM \"vibration\" "
                                    "WHERE \"sensor\" = 'healthy'"), 60,
             "anomaly scores of the healthy sensor")
    except BaseException:
        _stop(run)
        raise
    return run


def _stop(run: FleetRun) -> None:
    procs = [p for p in (run.gateway, run.stream) if p is not None]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    run.receiver.stop()
    run.broker.stop()


_run: FleetRun | None = None
_users = 0


@pytest.fixture(scope="session")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory,
                 influxd: Influxd) -> Iterator[FleetRun]:
    """The session's fleet run (import this fixture into a test module to use it)."""
    global _run, _users
    if _run is None:
        _run = _start(tmp_path_factory.mktemp("fleet"), influxd)
    _users += 1
    try:
        yield _run
    finally:
        _users -= 1
        if _users == 0 and _run is not None:
            _stop(_run)
            _run = None
