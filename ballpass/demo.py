"""`ballpass demo`: the whole plant on one machine.

Starts a private mosquitto (password + ACL, derived from mosquitto.conf) and influxd on
free loopback ports, the stream service and one process per simulated gateway, plus a
local webhook receiver; shows a live table; on Ctrl-C or after `--duration` stops the
gateways (they drain their outboxes), waits for the stream to write what was published,
stops everything it started by PID and writes the summary.

`--cluster` (ballpass.demo_cluster): the same plant with the stream side as two workers
on a private 3-node NATS JetStream cluster; the summary gains a "cluster" entry.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ballpass import demo_cluster
from ballpass.cli import EXIT_CONFIG
from ballpass.log import kv
from ballpass.nats_server import NatsCluster
from ballpass.services import Influxd, Mosquitto, Service, write_private

log = logging.getLogger(__name__)

DB = "ballpass"
EVIDENCE_PORT = 8787
"""The plain demo's (or first worker's) evidence page, when free: a URL that stays."""
FS_HZ = 25600.0
# 1.28 s: enough cage turns that an intermittent ball defect shows in most windows.
WINDOW_SAMPLES = 32768
INTERVAL_S = 2.0


@dataclass(frozen=True)
class DemoSensor:
    id: str
    truth: str  # simulated condition; "normal" for a healthy bearing
    severity: float = 1.0


@dataclass(frozen=True)
class DemoMachine:
    gateway: str
    asset: str
    kind: str
    bearing: str
    shaft_hz: float
    sensors: tuple[DemoSensor, ...]


PLANT = (
    DemoMachine("gw-r01", "r01-agitator", "motor", "SKF 6205", 24.75, (
        DemoSensor("r01-de", "outer_race"), DemoSensor("r01-nde", "normal"))),
    DemoMachine("gw-r02", "r02-pump", "pump", "SKF 6203", 49.2, (
        DemoSensor("r02-de", "inner_race"), DemoSensor("r02-nde", "normal"))),
    DemoMachine("gw-r03", "r03-gearbox", "gearbox", "SKF 6208", 24.75, (
        DemoSensor("r03-in", "ball"), DemoSensor("r03-out", "normal"))),
)


def site_toml(broker: Mosquitto, influx: Influxd, workdir: Path, webhook_url: str,
              passwords: dict[str, Path], *, state_dir: Path | None = None,
              cluster: str = "") -> str:
    """The demo's site config (a real one: the services load it like any other).

    `state_dir`: the stream's (default workdir/stream-state); `cluster`: a `[cluster]`
    section (demo_cluster.cluster_toml) for a worker of `--cluster`.
    """
    lines = [
        '[site]', 'id = "demo"', 'name = "ballpass demo plant"', '',
        '[broker]', f'host = "{broker.host}"', f'port = {broker.port}', '',
        '[influx]', 'api = "v1"', f'url = "{influx.url}"', f'db = "{DB}"', '',
        '[stream]', f'state_dir = "{state_dir or workdir / "stream-state"}"',
        'username = "stream"', f'password_file = "{passwords["stream"]}"', '',
    ]
    if cluster:
        lines += [cluster]
    for m in PLANT:
        lines += ['[[asset]]', f'id = "{m.asset}"', f'kind = "{m.kind}"',
                  f'bearing = "{m.bearing}"', f'shaft_hz = {m.shaft_hz}', '']
    for m in PLANT:
        lines += ['[[gateway]]', f'id = "{m.gateway}"',
                  f'password_file = "{passwords[m.gateway]}"',
                  f'outbox.path = "{workdir / (m.gateway + "-outbox.sqlite")}"', '']
        for s in m.sensors:
            lines += ['[[gateway.sensor]]', f'id = "{s.id}"', 'driver = "simulated"',
                      f'asset = "{m.asset}"', f'fs_hz = {FS_HZ}',
                      f'window_samples = {WINDOW_SAMPLES}', f'interval_s = {INTERVAL_S}',
                      f'options = {{ fault = "{s.truth}", severity = {s.severity} }}', '']
    lines += ['[[webhook]]', f'url = "{webhook_url}"', 'timeout_s = 5', 'retries = 3', '']
    return "\n".join(lines)


class WebhookReceiver:
    """A local HTTP server that records every POSTed alert (the on-call person's stand-in)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    receiver.received.append(json.loads(self.rfile.read(length)))
                    self.send_response(204)
                except ValueError:
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # the demo logs deliveries itself

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="webhook-receiver")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class StreamProc:
    """A stream process of the demo (the one stream, or a worker) and its status file."""

    child: Child
    status_path: Path

    def status(self) -> dict[str, Any]:
        return _read_json(self.status_path)

    def lost_evidence_port(self) -> bool:
        """It exited because the evidence page's preferred port, free when checked, was
        taken before it bound it (two demos starting at once): restarted on any free
        port instead. Any other exit is left to the caller."""
        preferred = f"127.0.0.1:{EVIDENCE_PORT}"
        if self.child.proc.returncode != EXIT_CONFIG or preferred not in self.child.args:
            return False
        if _evidence_port() == EVIDENCE_PORT:
            return False  # the port is free: it exited for another reason
        log.warning(kv("demo_evidence_port_taken", process=self.child.name,
                       port=EVIDENCE_PORT, retry="any free port"))
        self.child.wait(5)
        self.child = Child(self.child.name,
                           [a.replace(preferred, "127.0.0.1:0") for a in self.child.args],
                           self.child.log_path)
        return True


class Child:
    """A ballpass subprocess in its own session (terminal Ctrl-C reaches only the demo)."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ballpass", *args], stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(kv("demo_kill", process=self.name, reason="no exit after SIGTERM"))
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _count(influx: Influxd, measurement: str, field: str) -> int:
    result = influx.query(f'SELECT count("{field}") FROM "{measurement}"', db=DB)
    series = result.get("results", [{}])[0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def _evidence_port() -> int:
    """The evidence page's port: EVIDENCE_PORT when free (a stable URL), else 0 (any)."""
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", EVIDENCE_PORT))
        except OSError:
            return 0
    return EVIDENCE_PORT


def _render(status: dict[str, Any], started: float, webhooks: int, live: bool,
            extra: str = "") -> str:
    c = status.get("counters", {})
    truth = {s.id: s.truth for m in PLANT for s in m.sensors}
    rows = [f"ballpass demo  {time.time() - started:5.0f} s   windows ingested "
            f"{c.get('ingested', 0)}  written {c.get('written', 0)}  alerts "
            f"{c.get('alerts_fired', 0)}  webhooks received {webhooks}",
            f"evidence page: {status.get('http_url') or '-'}"]
    if extra:
        rows.append(extra)
    rows.append(f"{'sensor':10} {'truth':12} {'diagnosis':16} {'conf':>5} {'state':6} "
                f"{'ISO':3} {'v mm/s':>7} {'windows':>7} alerted")
    sensors = status.get("sensors", {})
    for sensor_id, t in truth.items():
        s = sensors.get(sensor_id, {})
        v = s.get("velocity_rms_mm_s")
        rows.append(f"{sensor_id:10} {t:12} {s.get('diagnosis', '-'):16} "
                    f"{s.get('confidence', 0):5.2f} {s.get('state', '-'):6} "
                    f"{s.get('iso_zone') or '-':3} {v if v is not None else float('nan'):7.2f} "
                    f"{s.get('windows', 0):7d} {'YES' if s.get('alerted') else ''}")
    text = "\n".join(rows)
    return ("\x1b[H\x1b[2J" + text + "\n") if live else text


class _Plant:
    """The stream side the demo started: one stream, or the workers of `--cluster`."""

    def __init__(self, streams: list[StreamProc], nats: NatsCluster | None) -> None:
        self.streams = streams
        self.nats = nats

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {p.child.name: p.status() for p in self.streams}

    def status(self) -> dict[str, Any]:
        """The one status the table and the summary read (merged over workers)."""
        return demo_cluster.merge_statuses(list(self.statuses().values()))

    def ready(self) -> bool:
        if self.nats is None:
            return bool(self.streams[0].status().get("mqtt_connected"))
        return demo_cluster.workers_ready(list(self.statuses().values()))

    def extra_line(self) -> str:
        return demo_cluster.render_workers(self.statuses()) if self.nats is not None else ""


def _start_streams(work: Path, broker: Mosquitto, influx: Influxd, receiver_url: str,
                   passwords: dict[str, Path], nats: NatsCluster | None) -> list[StreamProc]:
    """The plain demo's `ballpass stream`, or one `--engine nats` worker per
    demo_cluster.WORKERS, each with its own site file, state dir and status file."""
    evidence = ["--http", f"127.0.0.1:{_evidence_port()}"]
    if nats is None:
        status_path = work / "stream-status.json"
        return [StreamProc(Child("stream", ["stream", "--config", str(work / "site.toml"),
                                            "--status-file", str(status_path), *evidence],
                                 work / "stream.log"), status_path)]
    streams = []
    for i, worker in enumerate(demo_cluster.WORKERS):
        section = demo_cluster.cluster_toml(
            nats.urls, username="stream", password_file=passwords["stream"],
            partitions=nats.partitions, lease_s=demo_cluster.LEASE_S, worker_id=worker)
        site = work / f"site-{worker}.toml"
        # Each worker its own state dir (webhook spool, history), as on its own machine.
        site.write_text(site_toml(broker, influx, work, receiver_url, passwords,
                                  state_dir=work / f"{worker}-state", cluster=section),
                        encoding="utf-8")
        status_path = work / f"{worker}-status.json"
        http = evidence if i == 0 else ["--http", "127.0.0.1:0"]
        streams.append(StreamProc(Child(worker, [
            "stream", "--config", str(site), "--engine", "nats",
            "--status-file", str(status_path), *http], work / f"{worker}.log"), status_path))
    return streams


def run_demo(duration_s: float | None = None, summary_json: Path | None = None,
             live: bool = True, workdir: Path | None = None, cluster: bool = False) -> int:
    """Run the demo plant; returns the exit code. See the module docstring.

    `cluster`: the stream side as workers on a local NATS cluster (the caller checks
    demo_cluster.cluster_extra_missing first).
    """
    keep = workdir is not None
    # Absolute: the config's paths are relative to the config file's own directory.
    work = Path(workdir).resolve() if workdir else Path(tempfile.mkdtemp(prefix="ballpass-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    live = live and sys.stdout.isatty()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.time()
    services: list[Service] = []
    nats: NatsCluster | None = None
    streams: list[StreamProc] = []
    gateways: list[Child] = []
    receiver = WebhookReceiver()
    try:
        users = {"stream": secrets.token_urlsafe(12)} | {
            m.gateway: secrets.token_urlsafe(12) for m in PLANT}
        passwords = {}
        for user, pw in users.items():
            passwords[user] = work / f"{user}.password"
            write_private(passwords[user], pw + "\n")  # 0600 from the first byte
        broker = Mosquitto(work / "mosquitto", users=users)
        influx = Influxd(work / "influxd")
        for service in (broker, influx):
            service.start()
            services.append(service)
        influx.create_database(DB)
        if cluster:
            # Only the workers log in to NATS; the gateways stay on mosquitto.
            nats = NatsCluster(work / "nats", users={"stream": (users["stream"], "stream")},
                               size=demo_cluster.NODES, partitions=demo_cluster.PARTITIONS)
            nats.start()
        receiver.start()
        config_path = work / "site.toml"
        config_path.write_text(site_toml(broker, influx, work, receiver.url, passwords),
                               encoding="utf-8")
        log.info(kv("demo_started", workdir=work, mqtt=f"{broker.host}:{broker.port}",
                    influx=influx.url, webhook=receiver.url,
                    **({"nats": ",".join(nats.urls)} if nats else {})))

        streams = _start_streams(work, broker, influx, receiver.url, passwords, nats)
        plant = _Plant(streams, nats)
        # Gateways start once the stream holds its persistent session (with --cluster: the
        # relay its session, every worker its partitions), so nothing published is missed;
        # the first run compiles the Numba kernels meanwhile.
        while not stop.is_set() and not plant.ready():
            for p in streams:
                if p.child.proc.poll() is not None and not p.lost_evidence_port():
                    raise RuntimeError(f"{p.child.name} exited early; see {p.child.log_path}")
            stop.wait(0.2)
        if stop.is_set():  # Ctrl-C while starting (the first run compiles for a minute)
            log.info(kv("demo_stopping", reason="signal", before="the gateways started"))
            return 0
        for p in streams:
            state = work / (f"{p.child.name}-state" if nats else "stream-state")
            print(f"evidence page{' of ' + p.child.name if nats else ''}: "
                  f"{p.status().get('http_url')} (log in with the token in "
                  f"{state / 'evidence.token'})", flush=True)
        for m in PLANT:
            gateways.append(Child(m.gateway, ["gateway", "--config", str(config_path),
                                              "--gateway", m.gateway],
                                  work / f"{m.gateway}.log"))

        last_line = 0.0
        while not stop.is_set():
            if duration_s is not None and time.time() - started >= duration_s:
                break
            for child in [p.child for p in streams] + gateways:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; "
                                       f"see {child.log_path}")
            status = plant.status()
            if live:
                sys.stdout.write(_render(status, started, len(receiver.received), True,
                                         plant.extra_line()))
                sys.stdout.flush()
            elif time.time() - last_line >= 10:
                print(_render(status, started, len(receiver.received), False,
                              plant.extra_line()), flush=True)
                last_line = time.time()
            stop.wait(1.0)

        log.info(kv("demo_stopping", reason="signal" if stop.is_set() else "duration"))
        return _finish(gateways, plant, influx, receiver, started, summary_json)
    finally:
        children = gateways + [p.child for p in streams]
        for child in children:
            child.terminate()
        for child in children:
            if child.proc.poll() is None:
                child.wait(20)
        receiver.stop()
        if nats is not None:
            nats.stop()
        for svc in reversed(services):
            svc.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _finish(gateways: list[Child], plant: _Plant, influx: Influxd,
            receiver: WebhookReceiver, started: float, summary_json: Path | None) -> int:
    for g in gateways:
        g.terminate()
    codes = {g.name: g.wait(30) for g in gateways}
    # The gateways' final retained status carries their final counters.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = plant.status()
        published = sum(int(g.get("counters", {}).get("published", 0))
                        for g in status.get("gateways", {}).values())
        c = status.get("counters", {})
        done = c.get("written", 0) + c.get("spooled", 0)
        if done >= published and c.get("ingested", 0) >= published:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # let the last webhook deliveries land
    running = plant.statuses()  # partitions and relay as held, before they are released
    for p in plant.streams:
        p.child.terminate()
    for p in plant.streams:
        codes[p.child.name] = p.child.wait(60)
    status = plant.status()
    counters = status.get("counters", {})
    gateway_counters = [g.get("counters", {}) for g in status.get("gateways", {}).values()]
    captured = sum(int(g.get("captured", 0)) for g in gateway_counters)
    published = sum(int(g.get("published", 0)) for g in gateway_counters)
    written = _count(influx, "vibration", "seq") + _count(influx, "temperature", "celsius")
    sensors = status.get("sensors", {})
    summary: dict[str, Any] = {
        "duration_s": round(time.time() - started, 1),
        "windows_captured": captured,
        "windows_published": published,
        "windows_ingested": int(counters.get("ingested", 0)),
        "windows_written": written,
        "windows_lost": max(0, captured - written),
        "windows_dropped_at_gateway": sum(int(g.get("dropped", 0)) for g in gateway_counters),
        "windows_rejected": counters.get("rejected", {}),
        "duplicates": int(counters.get("duplicates", 0)),
        "alerts_fired": int(counters.get("alerts_fired", 0)),
        "webhooks_delivered": int(counters.get("webhooks_delivered", 0)),
        "webhooks_received": len(receiver.received),
        "exit_codes": codes,
        "sensors": [
            {"id": s.id, "truth": s.truth,
             "diagnosis": sensors.get(s.id, {}).get("diagnosis"),
             "alerted": bool(sensors.get(s.id, {}).get("alerted"))}
            for m in PLANT for s in m.sensors
        ],
    }
    if plant.nats is not None:
        summary["cluster"] = demo_cluster.cluster_summary(
            running, plant.statuses(), nodes=len(plant.nats.nodes),
            partitions=plant.nats.partitions)
    print(_render(status, started, len(receiver.received), False), flush=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "sensors"}), flush=True)
    if summary_json is not None:
        Path(summary_json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info(kv("demo_stopped", captured=captured, written=written,
                lost=summary["windows_lost"], webhooks=summary["webhooks_delivered"]))
    return 0 if all(code == 0 for code in codes.values()) else 1
