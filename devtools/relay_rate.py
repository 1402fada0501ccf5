"""The relay's rate alone (stream/cluster/relay.py): mosquitto -> JetStream, no stream.

`python -m ballpass.devtools.relay_rate [--windows N] [--sequential]` (BENCHMARKS.md, "End
to end"): a private mosquitto and 3-node NATS cluster on loopback; the relay connects once
(its persistent session and subscriptions), stops; the load generator publishes N windows
of 8192 samples (512 sensors, 8 gateways), which mosquitto queues for the relay's session;
the relay starts again and the time until all N are stored in JetStream (publish
acknowledged) gives windows/s. Nothing else runs meanwhile: this is the relay's ceiling
on this machine, and the CPU seconds of the relay's process and of the NATS nodes per
window. `--sequential`: one JetStream publish at a time, as before the waves (for the
comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

import nats

from ballpass import config as site_config
from ballpass.devtools.e2e_stack import site_toml
from ballpass.devtools.loadgen import LoadGenerator, Target, encoded_windows, layout
from ballpass.devtools.procstat import cpu_s
from ballpass.nats_server import NatsCluster
from ballpass.services import Mosquitto
from ballpass.stream.cluster import topology
from ballpass.stream.cluster.relay import Relay, message_id
from ballpass.stream.mqtt_source import Delivery


class SequentialRelay(Relay):
    """The relay as it was: each message's JetStream publish awaited before the next."""

    async def _relay(self, batch: list[Delivery]) -> None:
        for d in batch:
            payload = d.payload if isinstance(d.payload, bytes) else str(d.payload).encode()
            ack = await self.js.publish(d.topic.replace("/", "."), payload,
                                        headers={"Nats-Msg-Id": message_id(d.topic, payload)})
            self.counters["relay_duplicates" if ack.duplicate else "relayed"] += 1
            self.mqtt.ack(d)


async def _measure(workdir: Path, windows: int, sequential: bool) -> dict[str, float]:
    sensors = layout(512, 8)
    passwords = {u: secrets.token_hex(12) for u in ("stream", *sensors)}
    with Mosquitto(workdir / "mqtt", users=passwords) as broker, \
            NatsCluster(workdir / "nats", users={"stream": (passwords["stream"], "stream")}
                        ) as cluster:
        pw = workdir / "stream.pw"
        pw.write_text(passwords["stream"] + "\n", encoding="utf-8")
        servers = ", ".join(f'"{u}"' for u in cluster.urls)
        site = workdir / "site.toml"
        site.write_text(site_toml(
            sensors, port=broker.port, influx_url="http://127.0.0.1:1", state_dir=workdir / "s",
            stream_password_file=pw,
            tables=f'[cluster]\nservers = [{servers}]\nusername = "stream"\n'
                   f'password_file = "{pw}"\n'), encoding="utf-8")
        config = site_config.load(site)
        assert config.cluster is not None
        nc = await nats.connect(cluster.urls, user="stream", password=passwords["stream"])
        js = nc.jetstream(timeout=10)
        await topology.declare(js, config.cluster, config.site.id)
        kind = SequentialRelay if sequential else Relay

        async def relay_until(done: int | None) -> Relay:
            relay = kind(config, nc, js)
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            while (not relay.mqtt.connected if done is None
                   else relay.counters["relayed"] + relay.counters["relay_duplicates"] < done):
                await asyncio.sleep(0.01)
            stop.set()
            await task
            return relay

        await relay_until(None)  # the session and its subscriptions, then away
        gen = LoadGenerator(Target(broker.host, broker.port, "bench",
                                   {g: passwords[g] for g in sensors}),
                            sensors, encoded_windows())
        gen.connect()
        gen.run(2000.0, windows / 2000.0)
        if not await asyncio.to_thread(gen.wait_acked, 120.0):
            raise RuntimeError("relay_rate: mosquitto did not acknowledge every publish")
        gen.close()
        pids = {"relay": os.getpid(),
                **{f"nats_{n.address.name}": n.pid for n in cluster.nodes if n.pid}}
        c0 = {k: cpu_s(p) for k, p in pids.items()}
        t0 = time.perf_counter()
        relay = await relay_until(len(gen.sent))
        seconds = time.perf_counter() - t0
        c1 = {k: cpu_s(p) for k, p in pids.items()}
        stored = (await js.stream_info(topology.WINDOWS)).state.messages
        await nc.close()
    n = len(gen.sent)
    return {"windows": float(n), "stored": float(stored), "seconds": seconds,
            "windows_per_s": n / seconds,
            **{f"cpu_ms_per_window_{k}": 1e3 * (c1[k] - c0[k]) / n for k in pids},
            **{k: float(v) for k, v in relay.counters.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=4000)
    p.add_argument("--sequential", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ballpass-relay-") as tmp:
        out = asyncio.run(_measure(Path(tmp), args.windows, args.sequential))
    print(json.dumps({"sequential": args.sequential, **out}, indent=1))


if __name__ == "__main__":
    main()
