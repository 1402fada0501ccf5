"""The services under test of the end-to-end benchmark (`bench_e2e`), one `Stack` each.

A stack starts the real services of one configuration on loopback (a broker gateways
publish to over MQTT, an InfluxDB, the stream workers), tells the load generator where
and as whom to publish, names the PIDs whose CPU and memory are measured, the database
the written windows are counted in and the workers' `/metrics` URLs, and stops it all by
PID. `EmbeddedStack` is the default site: mosquitto (password file and ACL as
ARCHITECTURE.md section 3) + influxd + one `ballpass stream` process. `ClusterStack` is
the scale-out (docs/scale-out.md): the same mosquitto (gateways publish there as before),
a private 3-node NATS JetStream cluster, N `ballpass stream --engine nats` workers and
influxd; one worker at a time relays mosquitto to JetStream and the workers' diagnoses
back to mosquitto, where the benchmark reads them as for the embedded stack.
"""

from __future__ import annotations

import json
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
from ballpass.nats_server import NatsCluster
from ballpass.services import TEMPLATE_PATH, Influxd, Mosquitto, Service, free_port

SITE = "bench"
DB = "bench"
RELAY_COUNTERS = ("relayed", "relay_duplicates", "relay_retries", "relay_refused",
                  "returned", "returned_failed", "returned_dropped")
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

    def figures(self) -> dict[str, float]:
        """Figures of its own, read while it still runs (keys without prefix)."""

    def stop(self) -> None:
        """Stop every process it started, by PID (safe to call twice)."""


def site_toml(sensors: Mapping[str, Sequence[str]], *, port: int, influx_url: str,
              state_dir: Path, stream_password_file: Path, stream_options: str = "",
              tables: str = "") -> str:
    """The site file of the benchmark: every sensor an acceleration sensor of 8192 samples
    at 25.6 kHz on one SKF 6205 asset at 25 Hz; the [stream] table keeps its defaults
    (batch size, batch wait, history and online settings) but for credentials and
    `stream_options` (extra `[stream]` lines); `tables`: more tables after [stream]
    (the [cluster] of a NATS worker)."""
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
{tables}
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
            raise RuntimeError(f"stream exited with {proc.returncode} (log {log}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"stream not ready at {url} within {timeout_s:g} s")


class _GatewaysBroker:
    """The mosquitto gateways and the latency reader log in to, and the influxd the
    stream writes to, in every stack."""

    _broker: Mosquitto | None
    _influxd: Influxd | None
    _passwords: dict[str, str]

    def influx(self) -> tuple[Influxd, str]:
        assert self._influxd is not None
        return self._influxd, DB

    def _service_pids(self, extra: Sequence[tuple[str, Service | None]] = ()
                      ) -> dict[str, int]:
        services = [("mosquitto", self._broker), ("influxd", self._influxd), *extra]
        return {name: service.pid for name, service in services
                if service is not None and service.pid is not None}

    def target(self) -> Target:
        assert self._broker is not None
        return Target(self._broker.host, self._broker.port, SITE,
                      {g: p for g, p in self._passwords.items() if g not in ("stream", READER)})

    def reader(self) -> tuple[str, int, str, str]:
        assert self._broker is not None
        return self._broker.host, self._broker.port, READER, self._passwords[READER]


class EmbeddedStack(_GatewaysBroker):
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

    def worker_pids(self) -> list[int]:
        return [self._stream.pid] if self._stream is not None else []

    def service_pids(self) -> dict[str, int]:
        return self._service_pids()

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self._metrics_port}/metrics"]

    def figures(self) -> dict[str, float]:
        return {}

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


def _stop_processes(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all, then wait for each (30 s, then SIGKILL)."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    for p in running:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _read_json(path: Path) -> dict[str, object]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}
    return out if isinstance(out, dict) else {}


def _partitions(cluster_status: Mapping[str, object]) -> list[int]:
    held = cluster_status.get("partitions")
    return [int(p) for p in held] if isinstance(held, list) else []


class ClusterStack(_GatewaysBroker):
    """The scale-out: mosquitto + a private 3-node NATS cluster + `workers` processes of
    `ballpass stream --engine nats` + influxd (docs/scale-out.md).

    Gateways publish to mosquitto with the same logins as for `EmbeddedStack`; the worker
    holding the relay lease copies their windows to JetStream (acknowledging them to
    mosquitto after JetStream's) and the workers' diagnoses back to mosquitto. Each worker
    has its own state dir, `/metrics` port and status file, as on its own machine.
    """

    def __init__(self, workers: int = 1, *, partitions: int = 16, nodes: int = 3,
                 stream_options: str = "", profile_dir: Path | None = None) -> None:
        """`partitions`: the cluster's sensor partitions (the subject mapping and the
        workers' `[cluster] partitions`); `nodes`: NATS nodes (replicas = min(3, nodes));
        `profile_dir`: run each worker under cProfile, its stats written there as
        `worker-{i}.prof` when it stops (for finding where time goes; slower)."""
        if workers < 1:
            raise ValueError(f"ClusterStack: workers must be >= 1, got {workers}")
        self.workers = workers
        self.partitions = partitions
        self.nodes = nodes
        self.stream_options = stream_options
        self.profile_dir = profile_dir
        self.name = f"nats{workers}"
        self._broker: Mosquitto | None = None
        self._influxd: Influxd | None = None
        self._cluster: NatsCluster | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._passwords: dict[str, str] = {}
        self._metrics_ports: list[int] = []
        self.status_files: list[Path] = []

    def start(self, sensors: Mapping[str, Sequence[str]], workdir: Path) -> None:
        self._passwords = {u: secrets.token_hex(12) for u in ("stream", READER, *sensors)}
        self._broker = Mosquitto(workdir / "mqtt", users=self._passwords,
                                 operator_users=(READER,))
        self._broker.start()
        self._influxd = Influxd(workdir / "influxd")
        self._influxd.start()
        self._influxd.create_database(DB)
        # Only the workers log in to NATS: gateways stay on mosquitto.
        self._cluster = NatsCluster(workdir / "nats", users={
            "stream": (self._passwords["stream"], "stream")}, size=self.nodes,
            partitions=self.partitions)
        self._cluster.start()
        pw = workdir / "stream.pw"
        pw.write_text(self._passwords["stream"] + "\n", encoding="utf-8")
        servers = ", ".join(f'"{u}"' for u in self._cluster.urls)
        cluster_table = (f'[cluster]\nservers = [{servers}]\nusername = "stream"\n'
                         f'password_file = "{pw}"\npartitions = {self.partitions}\n'
                         f"replicas = {min(3, self.nodes)}\n")
        logs = []
        for i in range(self.workers):
            site = workdir / f"site-{i}.toml"
            site.write_text(site_toml(sensors, port=self._broker.port,
                                      influx_url=self._influxd.url,
                                      state_dir=workdir / f"state-{i}",
                                      stream_password_file=pw,
                                      stream_options=self.stream_options,
                                      tables=cluster_table), encoding="utf-8")
            port = free_port()
            status = workdir / f"status-{i}.json"
            log = workdir / f"worker-{i}.log"
            profile = ([] if self.profile_dir is None else
                       ["-m", "cProfile", "-o", str(self.profile_dir / f"worker-{i}.prof")])
            with log.open("ab") as out:
                self._procs.append(subprocess.Popen(
                    [sys.executable, *profile, "-m", "ballpass", "--log-level", "WARNING",
                     "stream",
                     "-c", str(site), "--engine", "nats", "--metrics", f"127.0.0.1:{port}",
                     "--status-file", str(status)],
                    stdout=out, stderr=subprocess.STDOUT))
            self._metrics_ports.append(port)
            self.status_files.append(status)
            logs.append(log)
        for proc, port, log in zip(self._procs, self._metrics_ports, logs, strict=True):
            _wait_http(f"http://127.0.0.1:{port}/healthz", 120, proc, log)
        self._wait_spread(120)

    def cluster_status(self) -> list[dict[str, object]]:
        """Each worker's `cluster` block of its status file ({} until written)."""
        out = []
        for path in self.status_files:
            c = _read_json(path).get("cluster")
            out.append(c if isinstance(c, dict) else {})
        return out

    def _wait_spread(self, timeout_s: float) -> None:
        """Until every partition has one owner, every worker its fair share, and the relay
        is subscribed to mosquitto (before that, a gateway's window would have no
        subscriber to queue it for)."""
        share = -(-self.partitions // self.workers)
        deadline = time.monotonic() + timeout_s
        status: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            status = self.cluster_status()
            held = [_partitions(s) for s in status]
            owned = sorted(p for ps in held for p in ps)
            if (owned == list(range(self.partitions)) and all(len(ps) <= share for ps in held)
                    and sum(bool(s.get("relay_connected")) for s in status) == 1):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: partitions not spread or relay not connected "
                           f"within {timeout_s:g} s: {status}")

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def service_pids(self) -> dict[str, int]:
        nodes = self._cluster.nodes if self._cluster is not None else []
        return self._service_pids([(f"nats_{n.address.name}", n) for n in nodes])

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/metrics" for p in self._metrics_ports]

    def figures(self) -> dict[str, float]:
        """The relay's counters (stream/cluster/relay.py) summed over the workers that
        held its lease, and each worker's partitions."""
        out: dict[str, float] = {}
        for i, s in enumerate(self.cluster_status()):
            out[f"partitions_worker{i}"] = float(len(_partitions(s)))
            for key in RELAY_COUNTERS:
                v = s.get(key)
                if isinstance(v, (int, float)):
                    out[key] = out.get(key, 0.0) + float(v)
        return out

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        _stop_processes(procs)
        for service in (self._cluster, self._broker, self._influxd):
            if service is not None:
                service.stop()
        self._cluster = self._broker = self._influxd = None
