"""`ballpass sensor` against the real mosquitto with the shipped ACL: it says "sent" only
when the broker took the command, and says why when it did not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import AUTH_USERS

from ballpass.services import Mosquitto


def _site(d: Path, port: int, user: str, password: str, broker_extra: str = "") -> Path:
    pw = d / f"{user}.pw"
    pw.write_text(password + "\n")
    site = d / f"site-{user}.toml"
    site.write_text(f"""
[site]
id = "s1"
[broker]
port = {port}
username = "{user}"
password_file = "{pw}"
{broker_extra}
[[asset]]
id = "m"
bearing = "SKF 6205"
shaft_hz = 25
[[gateway]]
id = "gw1"
[[gateway.sensor]]
id = "a"
driver = "simulated"
asset = "m"
fs_hz = 25600
window_samples = 4096
interval_s = 1
""")
    return site


def _sensor(site: Path, *extra: str, prefix: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "ballpass", "sensor", "ack", "a",
                           "-c", str(site), *extra], capture_output=True, text=True,
                          timeout=60, env=env)


class Commands:
    """The stream's view: every command published to the site."""

    def __init__(self, broker: Mosquitto) -> None:
        self.received: list[dict] = []
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stream",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set("stream", AUTH_USERS["stream"])
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe("bp/v1/s1/command", qos=1)
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_message = lambda _c, _u, m: self.received.append(json.loads(m.payload))
        c.connect(broker.host, broker.port, keepalive=30)
        c.loop_start()
        assert subscribed.wait(5)
        self.client = c

    def settle(self) -> list[dict]:
        time.sleep(0.5)
        return self.received

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def commands(mosquitto_auth: Mosquitto) -> Iterator[Commands]:
    c = Commands(mosquitto_auth)
    yield c
    c.close()


def test_operator_command_is_sent(mosquitto_auth: Mosquitto, commands: Commands,
                                  tmp_path: Path) -> None:
    r = _sensor(_site(tmp_path, mosquitto_auth.port, "ops", AUTH_USERS["ops"]), "--by", "ann")
    assert r.returncode == 0, r.stderr
    assert "sent ack for a to bp/v1/s1/command" in r.stdout
    assert [(m["action"], m["by"]) for m in commands.settle()] == [("ack", "ann")]


def test_refused_publish_is_not_reported_as_sent(mosquitto_auth: Mosquitto,
                                                 commands: Commands, tmp_path: Path) -> None:
    """Before: a gateway login (the ACL denies it the command topic) got "sent", exit 0:
    paho's is_published() is also true for a PUBACK "Not authorized"."""
    r = _sensor(_site(tmp_path, mosquitto_auth.port, "gw1", AUTH_USERS["gw1"]))
    assert r.returncode == 1, r.stdout
    assert "sent" not in r.stdout
    assert "refused the command on bp/v1/s1/command for gw1: not authorized" in r.stderr
    assert commands.settle() == []


def test_refused_login_says_why(mosquitto_auth: Mosquitto, tmp_path: Path) -> None:
    """Before: "Message publish failed: The client is not currently connected"."""
    r = _sensor(_site(tmp_path, mosquitto_auth.port, "ops", "wrong"))
    assert r.returncode == 1 and "sent" not in r.stdout
    assert "refused the login of ops: not authorized" in r.stderr, r.stderr


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_missing_tls_file_names_key_and_path(tmp_path: Path, key: str) -> None:
    """Before: exit 1 with "[Errno 2] No such file or directory", no key, no path."""
    missing = tmp_path / f"missing-{key}.pem"
    r = _sensor(_site(tmp_path, 1, "ops", "x", f'tls = true\n{key} = "{missing}"'))
    assert r.returncode == 2, r.stderr
    assert f"broker.{key}: {missing}: No such file or directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_uid_without_passwd_entry_acts_as_uid_n(mosquitto_auth: Mosquitto,
                                                commands: Commands, tmp_path: Path) -> None:
    """Before: getpass.getuser() raised KeyError (a container's arbitrary --user, no
    LOGNAME/USER), a traceback. The site and password file must be readable by it."""
    # Fails rather than skips: `make test` runs as root (it installs Debian packages).
    assert os.geteuid() == 0, "needs root to run a command as a UID without an entry"
    uid = 54321
    d = tmp_path / "site"
    d.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    site = _site(d, mosquitto_auth.port, "ops", AUTH_USERS["ops"])
    for f in d.iterdir():
        f.chmod(0o644)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOGNAME", "USER", "LNAME", "USERNAME")}
    # setpriv: the interpreter lives below /root (0700); keep CAP_DAC_READ_SEARCH only
    # for reading it, the uid is what getpass sees
    r = _sensor(site, prefix=("setpriv", f"--reuid={uid}", f"--regid={uid}",
                              "--clear-groups", "--inh-caps=+dac_read_search",
                              "--ambient-caps=+dac_read_search", "--"), env=env)
    assert r.returncode == 0, r.stderr
    assert [m["by"] for m in commands.settle()] == [f"uid{uid}"]
