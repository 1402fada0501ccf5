"""deploy/*.service: the gateway, stream and relay units are Type=notify with a watchdog, do
not restart on a config error (exit 2), load secrets with LoadCredential=, are hardened,
pass `systemd-analyze verify`, and are documented; gateway and stream reload with SIGHUP
(the relay has no reload, and SIGHUP would stop it)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = ("ballpass-gateway@.service", "ballpass-stream.service", "ballpass-relay.service")
RELOADABLE = UNITS[:2]


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / name)
    return unit


def _multi(name: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    return [line.split("=", 1)[1] for line in (DEPLOY / name).read_text().splitlines()
            if line.startswith(f"{key}=")]


@pytest.mark.parametrize("name", UNITS)
def test_unit_keys(name: str) -> None:
    unit = _unit(name)
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"].endswith("s") and int(svc["WatchdogSec"][:-1]) >= 10
    assert svc["Restart"] == "on-failure"
    assert "2" in svc["RestartPreventExitStatus"].split()
    if name in RELOADABLE:
        assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    else:
        assert "ExecReload" not in svc
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"].split()[0].startswith("/var/lib/ballpass")
    assert svc.get("User") == "ballpass" or svc.get("DynamicUser") == "yes"
    creds = _multi(name, "LoadCredential")
    assert creds and all(":/etc/ballpass/credentials/" in c for c in creds)
    # a [Unit] key: systemd ignores it in [Service]
    assert "StartLimitIntervalSec" not in svc and unit["Unit"]["StartLimitIntervalSec"] == "0"


def test_gateway_keeps_device_access() -> None:
    svc = _unit(UNITS[0])["Service"]
    assert set(svc["SupplementaryGroups"].split()) >= {"i2c", "spi", "gpio", "iio"}
    assert "ProtectKernelTunables" not in svc and "PrivateDevices" not in svc
    # One file under two names: "credential:gateway.password" (the same in every
    # [[gateway]]) and "${CREDENTIALS_DIRECTORY:-/etc/ballpass/credentials}/ID.password".
    assert _multi(UNITS[0], "LoadCredential") == [
        "gateway.password:/etc/ballpass/credentials/%i.password",
        "%i.password:/etc/ballpass/credentials/%i.password"]
    # ProtectClock= implies DeviceAllow=char-rtc r, which closes every other device node
    # (systemd.exec(5), systemd.resource-control(5)): /dev/iio:device*, /dev/i2c-* ...
    assert "ProtectClock" not in svc and "DeviceAllow" not in svc
    assert svc["CapabilityBoundingSet"] == ""  # CAP_SYS_TIME is gone without it


def test_stream_unit_exists_and_is_documented() -> None:
    svc = _unit(UNITS[1])["Service"]
    assert svc["ExecStart"].split()[1:4] == ["stream", "-c", "/etc/ballpass/site.toml"]
    assert svc["DynamicUser"] == "yes" and svc["StateDirectory"] == "ballpass-stream"
    ops = (ROOT / "docs" / "operations.md").read_text()
    for needle in ("ballpass-stream.service", "ballpass-gateway@.service", "WATCHDOG=1",
                   "RELOADING=1", "credential:", "RestartPreventExitStatus=2",
                   "systemctl reload ballpass-stream"):
        assert needle in ops, needle


def test_relay_unit_runs_the_relay_and_is_documented() -> None:
    svc = _unit(UNITS[2])["Service"]
    assert svc["ExecStart"].split()[1:4] == ["relay", "-c", "/etc/ballpass/plant.toml"]
    assert svc["StateDirectory"] == "ballpass-relay"
    assert "--status-file /var/lib/ballpass-relay/" in svc["ExecStart"]
    assert "deploy/ballpass-relay.service" in (ROOT / "docs" / "scale-out.md").read_text()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # Debian package systemd (252 here). verify checks that ExecStart exists: point it
    # at this venv's `ballpass`.
    assert shutil.which("systemd-analyze"), "install the Debian package systemd"
    exe = Path(sys.executable).with_name("ballpass")
    assert exe.exists()
    paths = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/ballpass/venv/bin/ballpass", str(exe))
        target = tmp_path / name.replace("@.", "@gw1.")
        target.write_text(text)
        paths.append(str(target))
    out = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


def _credentials(name: str, instance: str = "") -> dict[str, str]:
    """The unit's active LoadCredential= names -> source paths, %i expanded."""
    pairs = (c.replace("%i", instance).split(":", 1) for c in _multi(name, "LoadCredential"))
    return dict(pairs)


def _inside(path: Path, dirs: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in dirs)


def test_the_example_site_configs_fit_the_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/site.toml and deploy/gateway.example.toml name state and secrets the units
    provide: state_dir and outbox inside ReadWritePaths=, every secret file one of the
    unit's LoadCredential= names, and each active credential one the site uses (a missing
    source file fails the start with 243/CREDENTIALS)."""
    from ballpass.config import load

    creds_dir = "/run/credentials/ballpass-stream.service"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", creds_dir)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/ballpass-stream")
    stream_unit = _unit(UNITS[1])["Service"]
    site = load(ROOT / "examples" / "site.toml")
    assert _inside(site.stream.state_dir, stream_unit["ReadWritePaths"].split())
    assert site.stream.state_dir == Path("/var/lib") / stream_unit["StateDirectory"]
    secrets = [p for p in (site.broker.password_file, site.stream.password_file,
                           site.stream.http_token_file, site.influx.token_file,
                           site.influx.password_file,
                           *(w.secret_file for w in site.webhooks)) if p is not None]
    assert secrets and all(p.parent == Path(creds_dir) for p in secrets), secrets
    assert {p.name for p in secrets} == set(_credentials(UNITS[1]))

    for config_path, gateway_id in ((ROOT / "examples" / "site.toml", "gw-r01"),
                                    (DEPLOY / "gateway.example.toml", "gw-reactor3")):
        creds_dir = f"/run/credentials/ballpass-gateway@{gateway_id}.service"
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", creds_dir)
        gw = load(config_path).gateway(gateway_id)
        assert gw.password_file == Path(creds_dir) / f"{gateway_id}.password"
        loaded = _credentials(UNITS[0], gateway_id)
        assert gw.password_file.name in loaded
        svc = _unit(UNITS[0])["Service"]
        outbox = svc["ExecStart"].replace("%i", gateway_id).split("--outbox ")[1].split()[0]
        assert _inside(Path(outbox), svc["ReadWritePaths"].split())
        assert gw.outbox.path in (None, Path(outbox)), (config_path, gw.outbox.path)
        # From a root shell (check-config) the same file names the credential's source.
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")
        shell = load(config_path).gateway(gateway_id).password_file
        assert str(shell) == loaded[gw.password_file.name]
