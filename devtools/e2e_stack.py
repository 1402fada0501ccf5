"""The services under test of the end-to-end benchmark (`bench_e2e`), one `Stack` each.

A stack starts the real services of one configuration on loopback (a broker gateways
publish to over MQTT, an InfluxDB, the stream workers), tells the load generator where
and as whom to publish, names the PIDs whose CPU and memory are measured, the database
the written windows are counted in and the workers' `/metrics` URLs, and stops it all by
PID. `EmbeddedStack` is the default site: mosquitto (password file and ACL as
ARCHITECTURE.md section 3) + influxd + one `ballpass stream` process. Another
configuration (a NATS cluster with N workers) is one more class with the same methods.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ballpass.devtools.loadgen import FS_HZ, N_SAMPLES, SHAFT_HZ, Target
from ballpass.services import TEMPLATE_PATH, Influxd, Mosquitto, free_port

SITE = "bench"
DB = "bench"
READER = "bench-reader"
"""An operator account (reads every topic): the benchmark's diagnosis subscriber. Its
own username, because the broker takes the username as the client id
(use_username_as_clientid) and a second `stream` login would take over the stream's."""


class Stack(Protocol):
    """One configuration of the services under test."""

    name: str
    """Short name, used in the figure keys (`e2e_{name}_...`)."""

    def start(self, sensors: Mapping[str, Sequence[str]], workdir: Path) -> None:
        """Start every service for `sensors` ({gateway: [sensor ids]}); files in `workdir`."""

    def target(self) -> Target:
        """Where gateways publish, with each gateway's credentials."""

    def reader(self) -> tuple[str, int, str, str]:
        """(host, port, username, password) of an MQTT login that may read diagnoses."""

    def worker_pids(self) -> list[int]:
        """PIDs of the stream worker processes (CPU and RSS are measured on them)."""

    def service_pids(self) -> dict[str, int]:
        """PIDs of the other services by name (broker, database), for their CPU."""

    def influx(self) -> tuple[Influxd, str]:
        """The InfluxDB the windows are written to, and its database."""

    def metrics_urls(self) -> list[str]:
        """Each worker's Prometheus `/metrics` URL."""

    def stop(self) -> None:
        """Stop every process it started, by PID (safe to call twice)."""


def site_toml(sensors: Mapping[str, Sequence[str]], *, port: int, influx_url: str,
              state_dir: Path, stream_password_file: Path, stream_options: str = "") -> str:
    """The site file of the benchmark: every sensor an acceleration sensor of 8192 samples
    at 25.6 kHz on one SKF 6205 asset at 25 Hz; the [stream] table keeps its defaults
    (batch size, batch wait, history and online settings) but for credentials and
    `stream_options` (extra `[stream]` lines)."""
    gateways = "".join(
        f'[[gateway]]\nid = "{g}"\n' + "".join(
            f'[[gateway.sensor]]\nid = "{s}"\ndriver = "simulated"\nasset = "m"\n'
            f'fs_hz = {FS_HZ}\nwindow_samples = {N_SAMPLES}\ninterval_s = 1\n' for s in ids)
        for g, ids in sensors.items())
    return f"""[site]
id = "{SITE}"
[broker]
host = "127.0.0.1"
port = {port}
[influx]
url = "{influx_url}"
db = "{DB}"
[stream]
state_dir = "{state_dir}"
username = "stream"
password_file = "{stream_password_file}"
{stream_options}
[[asset]]
id = "m"
kind = "motor"
bearing = "SKF 6205"
shaft_hz = {SHAFT_HZ}
{gateways}"""


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stream exited with {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"stream not ready at {url} within {timeout_s:g} s")


class EmbeddedStack:
    """mosquitto + influxd + one `ballpass stream` subprocess (the embedded default)."""

    name = "embedded"

    def __init__(self, stream_options: str = "", broker_max_inflight: int | None = None
                 ) -> None:
        """`stream_options`: extra `[stream]` lines (e.g. "batch_max = 64");
        `broker_max_inflight`: mosquitto's `max_inflight_messages` instead of the shipped
        config's (for experiments; the benchmark runs the defaults)."""
        self.stream_options = stream_options
        self.broker_max_inflight = broker_max_inflight
        self._broker: Mosquitto | None = None
        self._influxd: Influxd | None = None
        self._stream: subprocess.Popen[bytes] | None = None
        self._passwords: dict[str, str] = {}
        self._metrics_port = 0

    def start(self, sensors: Mapping[str, Sequence[str]], workdir: Path) -> None:
        self._passwords = {u: secrets.token_hex(12) for u in ("stream", READER, *sensors)}
        template = None
        if self.broker_max_inflight is not None:
            template = workdir / "mosquitto-template.conf"
            template.write_text(re.sub(r"(?m)^max_inflight_messages .*$",
                                       f"max_inflight_messages {self.broker_max_inflight}",
                                       TEMPLATE_PATH.read_text(encoding="utf-8")),
                                encoding="utf-8")
        self._broker = Mosquitto(workdir / "mqtt", users=self._passwords,
                                 operator_users=(READER,), template=template)
        self._broker.start()
        self._influxd = Influxd(workdir / "influxd")
        self._influxd.start()
        self._influxd.create_database(DB)
        pw = workdir / "stream.pw"
        pw.write_text(self._passwords["stream"] + "\n", encoding="utf-8")
        site = workdir / "site.toml"
        site.write_text(site_toml(sensors, port=self._broker.port, influx_url=self._influxd.url,
                                  state_dir=workdir / "state", stream_password_file=pw,
                                  stream_options=self.stream_options),
                        encoding="utf-8")
        self._metrics_port = free_port()
        log = workdir / "stream.log"
        with log.open("ab") as out:
            self._stream = subprocess.Popen(
                [sys.executable, "-m", "ballpass", "--log-level", "WARNING", "stream",
                 "-c", str(site), "--metrics", f"127.0.0.1:{self._metrics_port}"],
                stdout=out, stderr=subprocess.STDOUT)
        # Ready = subscribed and the kernels loaded (/healthz answers 200 then).
        _wait_http(f"http://127.0.0.1:{self._metrics_port}/healthz", 120, self._stream, log)

    def target(self) -> Target:
        assert self._broker is not None
        return Target(self._broker.host, self._broker.port, SITE,
                      {g: p for g, p in self._passwords.items() if g not in ("stream", READER)})

    def reader(self) -> tuple[str, int, str, str]:
        assert self._broker is not None
        return self._broker.host, self._broker.port, READER, self._passwords[READER]

    def worker_pids(self) -> list[int]:
        return [self._stream.pid] if self._stream is not None else []

    def service_pids(self) -> dict[str, int]:
        out = {}
        for name, service in (("mosquitto", self._broker), ("influxd", self._influxd)):
            if service is not None and service.pid is not None:
                out[name] = service.pid
        return out

    def influx(self) -> tuple[Influxd, str]:
        assert self._influxd is not None
        return self._influxd, DB

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self._metrics_port}/metrics"]

    def stop(self) -> None:
        proc, self._stream = self._stream, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for service in (self._broker, self._influxd):
            if service is not None:
                service.stop()
        self._broker = self._influxd = None
