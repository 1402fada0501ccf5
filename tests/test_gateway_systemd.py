"""The real `ballpass gateway` process under the systemd notify protocol: a real unix
datagram socket as $NOTIFY_SOCKET, the real mosquitto with passwords.

READY=1 after start; WATCHDOG=1 at half of $WATCHDOG_USEC; SIGHUP reloads (RELOADING=1,
READY=1): a bad new site file is logged and the old one kept, a good one switches the
gateway to a new password file and it reconnects with it; SIGTERM sends STOPPING=1.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import AUTH_USERS
from gateway_proc import outbox_counters, wait_for, write_site
from notify_socket import NotifySocket

from ballpass.services import Mosquitto


def test_gateway_notify_watchdog_and_reload(mosquitto_auth: Mosquitto, tmp_path: Path) -> None:
    broker = mosquitto_auth
    pw1, pw2 = tmp_path / "gw1-v1.password", tmp_path / "gw1-v2.password"
    pw1.write_text(AUTH_USERS["gw1"] + "\n")
    site, outbox = tmp_path / "site.toml", tmp_path / "o.sqlite"
    write_site(site, broker.port, outbox, password_file=pw1)
    ns = NotifySocket()
    log = tmp_path / "gateway.log"
    env = dict(os.environ, NOTIFY_SOCKET=ns.name, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    with log.open("ab") as out:
        gw = subprocess.Popen([sys.executable, "-m", "ballpass", "gateway", "-c", str(site),
                               "-g", "gw1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: ns.index("READY=1") is not None, 15, "READY=1")
        wait_for(lambda: len(ns.times("WATCHDOG=1")) >= 5, 10, "five WATCHDOG=1")
        pings = ns.times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # half of the 1 s watchdog, with slack for a loaded machine; never over the timeout
        assert all(0.3 < g < 0.95 for g in gaps), gaps
        wait_for(lambda: outbox_counters(outbox).get("published", 0) >= 5, 15, "publishing")

        # A broken site file: reload is refused, the old config kept, the process lives.
        good = site.read_text()
        site.write_text(good + "\n[[[ not toml\n")
        n = len(ns.messages())
        gw.send_signal(signal.SIGHUP)
        wait_for(lambda: ns.index("READY=1", n) is not None, 10, "READY=1 after a bad reload")
        assert ns.index("RELOADING=1", n) is not None
        assert any("reload failed" in m for m in ns.messages()[n:])
        assert gw.poll() is None and "config_reload_failed" in log.read_text()
        at = outbox_counters(outbox)["published"]
        wait_for(lambda: outbox_counters(outbox)["published"] >= at + 5, 10,
                 "publishing on the old config")

        # Rotation by config: a new password file named in the site file. The broker
        # switches first and kicks the gateway, whose old password is now refused.
        pw2.write_text("second-password\n")
        write_site(site, broker.port, outbox, password_file=pw2)
        subprocess.run(["mosquitto_passwd", "-b", str(broker.workdir / "passwd"), "gw1",
                        "second-password"], check=True, capture_output=True)
        os.kill(broker.pid or 0, signal.SIGHUP)
        wait_for(lambda: "Not authorized" in log.read_text(), 10, "the old password refused")
        stalled = outbox_counters(outbox)["published"]
        n = len(ns.messages())
        gw.send_signal(signal.SIGHUP)
        wait_for(lambda: ns.index("READY=1", n) is not None, 10, "READY=1 after the reload")
        reloading = ns.index("RELOADING=1", n)
        assert reloading is not None and reloading < (ns.index("READY=1", n) or 0)
        wait_for(lambda: outbox_counters(outbox)["published"] >= stalled + 10, 15,
                 "publishing with the new password file")
        assert "config_reloaded" in log.read_text()

        n = len(ns.messages())
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
        assert ns.index("STOPPING=1", n) is not None
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        ns.close()
    final = outbox_counters(outbox)
    assert final["queued"] == 0 and final["dropped"] == 0
    assert final["captured"] == final["published"]


def test_no_watchdog_pings_without_watchdog_usec(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site, outbox = tmp_path / "site.toml", tmp_path / "o.sqlite"
    write_site(site, mosquitto.port, outbox)
    ns = NotifySocket()
    env = dict(os.environ, NOTIFY_SOCKET=ns.name)
    env.pop("WATCHDOG_USEC", None)
    with (tmp_path / "gw.log").open("ab") as out:
        gw = subprocess.Popen([sys.executable, "-m", "ballpass", "gateway", "-c", str(site),
                               "-g", "gw1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: ns.index("READY=1") is not None, 15, "READY=1")
        time.sleep(1.0)
        assert ns.times("WATCHDOG=1") == []
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        ns.close()
