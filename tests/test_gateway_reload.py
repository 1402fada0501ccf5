"""A reload (SIGHUP) under a retained remote config: the config result on the status topic
and the log, against a real mosquitto."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from plant import wait_until
from test_gateway_service import SITE, site_config
from test_publisher import Subscriber, status_of  # tests/ is on sys.path (rootdir mode)

from ballpass.config import Config
from ballpass.gateway.service import Supervisor, run


def _with_window(config: Config, samples: int) -> Config:
    """`config` with every sensor's window_samples set to `samples`."""
    [g] = config.gateways
    return dataclasses.replace(config, gateways=(dataclasses.replace(g, sensors=tuple(
        dataclasses.replace(s, window_samples=samples) for s in g.sensors)),))


def test_a_reload_rejecting_the_remote_config_and_one_fitting_it_again_show_on_status(
        mosquitto, tmp_path: Path, caplog) -> None:
    """Before: a reload after which the retained remote config fits again re-applied it,
    but the status kept saying "rejected ... after reload"; and the rejection by a reload
    was not logged as ``event=config_rejected``."""
    caplog.set_level(logging.INFO, logger="ballpass.gateway.service")
    gw = "gw-refit"
    config = site_config(mosquitto.host, mosquitto.port, gw, tmp_path / "o.sqlite")
    site_file = [config]  # what the next reload reads
    sup = Supervisor(load_config=lambda: site_file[0])
    sub = Subscriber(mosquitto.host, mosquitto.port, f"bp/v1/{SITE}/{gw}/status", gw)
    ops = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ops.connect(mosquitto.host, mosquitto.port)
    ops.loop_start()
    # 0.2 s fits the site file's 4096 samples at 25.6 kHz (0.16 s), not 8192 (0.32 s).
    ops.publish(f"bp/v1/{SITE}/{gw}/config", json.dumps({"sensors": {"s1": {
        "interval_s": 0.2}}}), qos=1, retain=True).wait_for_publish(5)

    def config_state() -> dict:
        statuses = status_of(sub.snapshot())
        return statuses[-1]["config"] if statuses else {}

    stop, ready = threading.Event(), threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        run(config, gw, stop, status_interval_s=0.2, ready=ready, supervisor=sup)))
    t.start()
    try:
        assert ready.wait(5)
        wait_until(lambda: config_state().get("state") == "applied", 10, "applied")

        site_file[0] = _with_window(config, 8192)
        sup.reload.set()
        wait_until(lambda: config_state().get("state") == "rejected", 10, "rejected")
        reason = config_state()["reason"]
        assert reason.startswith("after reload: sensors.s1") and "interval_s" in reason, reason
        rejected = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith(f"event=config_rejected gateway={gw} ")]
        assert len(rejected) == 1 and "after reload: sensors.s1" in rejected[0], rejected

        site_file[0] = config
        sup.reload.set()
        wait_until(lambda: config_state().get("state") == "applied", 10,
                   "applied again after the second reload")
        assert config_state()["reason"] == ""
        assert any(r.getMessage().startswith(f"event=config_applied gateway={gw} ")
                   and r.getMessage().endswith(" after=reload") for r in caplog.records)
    finally:
        stop.set()
        t.join(15)
        ops.publish(f"bp/v1/{SITE}/{gw}/config", b"", qos=1, retain=True).wait_for_publish(5)
        ops.disconnect()
        ops.loop_stop()
        sub.close()
    assert result == [0]
