"""`ballpass broker add-gateway` against a real mosquitto: the new gateway logs in after a
reload, publishes below its own prefix only; anonymous clients stay refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import AUTH_USERS

from ballpass.broker_admin import add_gateway, gateway_acl_lines
from ballpass.services import Mosquitto


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                          text=True, timeout=60)


def _login(broker: Mosquitto, user: str | None, password: str | None) -> mqtt.Client | int:
    """A connected MQTT 5 client, or the CONNACK reason code value when refused."""
    result: list[mqtt.ReasonCode] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    c.connect(broker.host, broker.port, keepalive=5)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not result and time.monotonic() < deadline:
        time.sleep(0.01)
    if not result or result[0].is_failure:
        c.loop_stop()
        return result[0].value if result else -1
    return c


def _publish_rc(c: mqtt.Client, topic: str) -> int:
    """The PUBACK reason code of one QoS 1 publish (MQTT 5: a denied publish says so)."""
    codes: list[int] = []
    c.on_publish = lambda _c, _u, _mid, rc, _p: codes.append(rc.value)
    c.publish(topic, b"x", qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.01)
    return codes[0]


@pytest.mark.parametrize("legacy_flag", [False, True], ids=["default", "no-mosquitto-passwd"])
def test_added_gateway_logs_in_and_is_scoped(tmp_path: Path, legacy_flag: bool) -> None:
    """The in-process PBKDF2 hash is one the real mosquitto accepts; the old
    --no-mosquitto-passwd flag is still accepted (it is the only way now)."""
    broker = Mosquitto(tmp_path / "mq", users=AUTH_USERS, operator_users=("ops",))
    broker.start()
    try:
        pw_file = tmp_path / "gw3.pw"
        args = ["broker", "add-gateway", "gw3", "--passwd", str(broker.workdir / "passwd"),
                "--acl", str(broker.workdir / "acl"), "--password-file", str(pw_file)]
        out = _cli(*args, *(["--no-mosquitto-passwd"] if legacy_flag else []))
        assert out.returncode == 0, out.stderr
        assert "added gw3" in out.stdout and "new password written" in out.stdout
        assert "gateway pattern lines present" in out.stdout
        assert oct(pw_file.stat().st_mode & 0o777) == "0o600"
        assert _login(broker, "gw3", pw_file.read_text().strip()) == 135  # not reloaded yet
        os.kill(broker.pid, signal.SIGHUP)  # what `systemctl reload mosquitto` does
        time.sleep(0.5)
        c = _login(broker, "gw3", pw_file.read_text().strip())
        assert isinstance(c, mqtt.Client)
        try:
            # accepted: 0, or 16 "no matching subscribers" (MQTT 5 reason codes)
            assert _publish_rc(c, "bp/v1/p1/gw3/s1/window") in (0, 16)
            assert _publish_rc(c, "bp/v1/p1/gw1/s1/window") == 135  # another gateway's prefix
        finally:
            c.loop_stop()
            c.disconnect()
        assert _login(broker, None, None) == 135                  # anonymous
        assert _login(broker, "gw3", "wrong") == 135              # bad password
        assert isinstance(_login(broker, "gw1", AUTH_USERS["gw1"]), mqtt.Client)  # kept
    finally:
        broker.stop()


def test_replace_and_acl_completion(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    acl.write_text("user stream\ntopic read bp/v1/#\n")
    r1 = add_gateway("gw7", "one", passwd, acl)
    assert not r1.replaced and r1.acl_added == tuple(gateway_acl_lines())
    r2 = add_gateway("gw7", "two", passwd, acl)
    assert r2.replaced and r2.acl_added == ()
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["gw7"]
    with pytest.raises(ValueError, match="gateway id"):
        add_gateway("GW 7", "x", passwd, acl)
    bad = _cli("broker", "add-gateway", "Bad/Id", "--passwd", str(passwd), "--acl", str(acl),
               "--password-file", str(tmp_path / "p"))
    assert bad.returncode == 2 and "gateway id" in bad.stderr
