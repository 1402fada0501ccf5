"""Shared fixtures: real mosquitto, influxd and victoria-metrics on free loopback ports.

- `mosquitto`: anonymous broker, one per test (starts in about 30 ms).
- `mosquitto_auth`: broker with users stream, gw1, gw2 and the ARCHITECTURE.md ACL;
  `mosquitto_auth.users` maps username -> password.
- `influxd`: one influxd per session; `influx_db` gives each test its own database as
  `(url, db)`.
- `victoria_metrics`: one per test (each test reads back only what it wrote).
- `nats_plant`: a 3-node NATS cluster and an authenticated mosquitto, with the site
  config of tests/natsplant.py that points at them, as `(cluster, config)`.

Every process is stopped by PID at teardown, also when the test fails.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from natsplant import PARTITIONS, PASSWORDS, USERS, site_toml

from ballpass.config import Config, load
from ballpass.nats_server import NatsCluster
from ballpass.services import Influxd, Mosquitto, VictoriaMetrics

AUTH_USERS = {"stream": "stream-pw", "gw1": "gw1-pw", "gw2": "gw2-pw", "ops": "ops-pw"}


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), anonymous=True)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Password + ACL broker: gateways gw1, gw2; stream user `stream`; operator `ops`."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto-auth"), users=AUTH_USERS,
                       operator_users=("ops",))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


_db_counter = itertools.count()


@pytest.fixture
def influx_db(influxd: Influxd, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh database on the session's influxd, named after the test: `(url, db)`."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40].strip("_")
    db = f"t{next(_db_counter)}_{stem}"
    influxd.create_database(db)
    return influxd.url, db


@pytest.fixture
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_plant(tmp_path: Path) -> Iterator[tuple[NatsCluster, Config]]:
    cluster = NatsCluster(tmp_path / "nats", users=USERS, partitions=PARTITIONS)
    broker = Mosquitto(tmp_path / "mqtt", users=PASSWORDS)
    cluster.start()
    try:
        broker.start()
        try:
            yield cluster, load(site_toml(tmp_path / "site.toml", cluster.urls, broker,
                                          "http://127.0.0.1:1", "db", tmp_path / "state",
                                          "http://127.0.0.1:1/hook"))
        finally:
            broker.stop()
    finally:
        cluster.stop()
