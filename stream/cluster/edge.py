"""`ballpass relay`: a plant's relay from its mosquitto to its own NATS leaf node.

A plant that must keep working while its link to the central cluster is down runs a leaf
node with its own JetStream (ballpass.nats_server.edge_config) and this relay beside its
mosquitto. Windows are stored in the leaf's WINDOWS and CONTROL streams (acknowledged to
mosquitto only then, as the central relay does); the central streams source them, in
order, whenever the link is up (topology.py). The workers' diagnoses and alerts come back
over the leaf link to the plant's mosquitto, while the link is up.

Under systemd (deploy/ballpass-relay.service) it speaks the notify protocol: READY=1 once
connected to the leaf node, WATCHDOG=1 from the event loop, STOPPING=1 at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from ballpass import sdnotify
from ballpass.config import Config
from ballpass.log import kv
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.connection import connect
from ballpass.stream.cluster.relay import Relay

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0


async def run_edge_relay(config: Config, stop: asyncio.Event,
                         status_file: Path | None = None) -> None:
    """Relay until `stop`; the counters in `status_file` (JSON) every second."""
    c = config.cluster
    assert c is not None, "the config's [cluster] names the leaf node"
    name = f"{c.worker_id or config.site.id}-edge-relay"
    connected = await connect(c, name, stop, lambda js: topology.declare_edge(js, c))
    if connected is None:
        return
    nc, js, _ = connected
    relay = Relay(config, nc, js)
    log.info(kv("edge_relay_started", servers=",".join(c.servers), site=config.site.id))
    sdnotify.notify("READY=1")
    status = asyncio.create_task(_report(relay, status_file), name="status")
    try:
        await relay.run(stop)
    finally:
        sdnotify.notify("STOPPING=1")
        status.cancel()
        await nc.close()
        log.info(kv("edge_relay_stopped", **relay.counters))


async def _report(relay: Relay, path: Path | None) -> None:
    """The status file every STATUS_INTERVAL_S and, under a systemd watchdog, WATCHDOG=1
    at half its interval, both from the event loop (a blocked loop stops them)."""
    watchdog = sdnotify.watchdog_interval_s()
    interval = min(STATUS_INTERVAL_S, watchdog / 2) if watchdog else STATUS_INTERVAL_S
    while True:
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"relay": relay.counters,
                                       "mqtt_connected": relay.mqtt.connected}),
                           encoding="utf-8")
            os.replace(tmp, path)
        if watchdog:
            sdnotify.notify(f"WATCHDOG=1\nSTATUS=mosquitto "
                            f"{'connected' if relay.mqtt.connected else 'disconnected'}, "
                            f"{relay.counters['relayed']} windows relayed")
        await asyncio.sleep(interval)
