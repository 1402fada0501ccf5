"""`ballpass broker add-gateway` as a provisioning script meets it: the password never on
a command line, no world bits left on the files it writes, ordinary file problems as
exit 2 naming the file, and parallel runs that keep every entry (real mosquitto)."""

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

from ballpass.broker_admin import gateway_acl_lines
from ballpass.services import Mosquitto, mosquitto_password_hash


def _cli(*args: str, env: dict[str, str] | None = None,
         prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "ballpass", "broker", "add-gateway",
                           *args], capture_output=True, text=True, timeout=60, env=env)


# root reads any file: run without capabilities (CAP_DAC_OVERRIDE) so a mode 0000 file
# refuses it as it refuses an operator
NO_CAPS = ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--") \
    if os.geteuid() == 0 else ()


def _files(d: Path, gateway: str = "gw3") -> list[str]:
    return [gateway, "--passwd", str(d / "passwd"), "--acl", str(d / "acl"),
            "--password-file", str(d / f"{gateway}.pw")]


def _connack(broker: Mosquitto, user: str, password: str) -> int:
    """The CONNACK reason code value of an MQTT 5 login (0: accepted)."""
    codes: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    c.connect(broker.host, broker.port, keepalive=5)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.01)
    c.disconnect()
    c.loop_stop()
    return codes[0] if codes else -1


def test_password_never_on_a_command_line(tmp_path: Path) -> None:
    """Before: `mosquitto_passwd -b FILE ID PASSWORD` ran whenever it was installed, so
    every local user could read the password in /proc/PID/cmdline. A mosquitto_passwd
    first on PATH records any call; the written hash logs in to the real mosquitto."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    calls = tmp_path / "mosquitto_passwd.argv"
    (fakebin / "mosquitto_passwd").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/bin/mosquitto_passwd "$@"\n')
    (fakebin / "mosquitto_passwd").chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}:{os.environ['PATH']}"}
    with Mosquitto(tmp_path / "mq", users=AUTH_USERS, operator_users=("ops",)) as broker:
        pw_file = tmp_path / "gw3.pw"
        out = _cli("gw3", "--passwd", str(broker.workdir / "passwd"), "--acl",
                   str(broker.workdir / "acl"), "--password-file", str(pw_file), env=env)
        assert out.returncode == 0, out.stderr
        assert not calls.exists(), f"mosquitto_passwd ran: {calls.read_text()}"
        password = pw_file.read_text().strip()
        assert password not in out.stdout + out.stderr
        os.kill(broker.pid, signal.SIGHUP)  # systemctl reload mosquitto
        time.sleep(0.5)
        assert _connack(broker, "gw3", password) == 0
        assert _connack(broker, "gw1", AUTH_USERS["gw1"]) == 0  # the other logins kept


def test_world_readable_files_lose_their_world_bits(tmp_path: Path) -> None:
    """Before: mosquitto_passwd rewrote an existing 0644 password file in place and the
    ACL was appended to, so both stayed world-readable (docs/broker.md: never)."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text(f"gw1:{mosquitto_password_hash('x')}\n")
    acl.write_text("user stream\ntopic read bp/v1/#\n")
    for f in (passwd, acl):
        f.chmod(0o644)
    out = _cli(*_files(tmp_path))
    assert out.returncode == 0, out.stderr
    # group read kept (Debian's root:mosquitto 0640), others gone
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in (passwd, acl)} == {
        "passwd": "0o640", "acl": "0o640"}
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["gw1", "gw3"]
    assert acl.read_text().startswith("user stream\ntopic read bp/v1/#\n")
    assert all(line in acl.read_text().splitlines() for line in gateway_acl_lines())


def test_symlinked_files_are_written_where_they_point(tmp_path: Path) -> None:
    """Before: the atomic replace put a regular file in the link's place; the broker's
    files (where the links pointed: config management) were left without the gateway."""
    real = tmp_path / "etc"
    real.mkdir()
    (real / "passwd").write_text(f"gw1:{mosquitto_password_hash('x')}\n")
    (real / "acl").write_text("user stream\ntopic read bp/v1/#\n")
    links = tmp_path / "links"
    links.mkdir()
    for name in ("passwd", "acl"):
        (links / name).symlink_to(real / name)
    out = _cli(*_files(links))
    assert out.returncode == 0, out.stderr
    assert all((links / name).is_symlink() for name in ("passwd", "acl"))
    assert [line.split(":")[0] for line in (real / "passwd").read_text().splitlines()] == [
        "gw1", "gw3"]
    assert all(line in (real / "acl").read_text().splitlines() for line in gateway_acl_lines())


@pytest.mark.parametrize(("case", "option"), [
    ("passwd_is_dir", "--passwd"),
    ("acl_is_dir", "--acl"),
    ("password_file_is_dir", "--password-file"),
    ("password_file_not_utf8", "--password-file"),
    ("passwd_not_readable", "--passwd"),
    ("parent_is_a_file", "--passwd"),
])
def test_file_problems_exit_2_naming_the_file(tmp_path: Path, case: str, option: str) -> None:
    """Before: a traceback and exit 1 (only ValueError was caught)."""
    d = tmp_path
    args = _files(d)
    prefix: tuple[str, ...] = ()
    target = {"--passwd": d / "passwd", "--acl": d / "acl",
              "--password-file": d / "gw3.pw"}[option]
    if case.endswith("_is_dir"):
        target.mkdir()
    elif case == "password_file_not_utf8":
        target.write_bytes(b"\xff\xfe\n")
    elif case == "passwd_not_readable":
        (d / "gw3.pw").write_text("pw\n")
        target.write_text("gw1:x\n")
        target.chmod(0o000)
        prefix = NO_CAPS
    elif case == "parent_is_a_file":
        (d / "file").write_text("")
        target = d / "file" / "passwd"
        args[args.index("--passwd") + 1] = str(target)
    out = _cli(*args, prefix=prefix)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"error: {option} {target}: " in out.stderr, out.stderr
    if case == "password_file_not_utf8":
        assert "not valid UTF-8" in out.stderr


def test_bad_gateway_id_leaves_no_password_file(tmp_path: Path) -> None:
    """Before: the password file was generated before the id was checked."""
    out = _cli(*_files(tmp_path, "Bad/Id"))
    assert out.returncode == 2 and "gateway id 'Bad/Id'" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parallel_runs_keep_every_entry(tmp_path: Path) -> None:
    """Before: the read-modify-write of the password file had no lock, so parallel runs
    (a provisioning script) lost each other's entries."""
    n = 12
    procs = [subprocess.Popen([sys.executable, "-m", "ballpass", "broker", "add-gateway",
                               *_files(tmp_path, f"gw{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    names = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert sorted(names) == sorted(f"gw{i}" for i in range(n))
    acl = (tmp_path / "acl").read_text().splitlines()
    assert all(acl.count(line) == 1 for line in gateway_acl_lines())
