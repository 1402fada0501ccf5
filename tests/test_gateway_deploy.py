"""deploy/: the example gateway config loads and its drivers accept their options; the
systemd unit restarts on failure, runs unprivileged in the device groups, and keeps the
hardening that would break sysfs access out."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from ballpass.config import load
from ballpass.gateway.drivers import load as load_driver

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_gateway_config_loads_and_drivers_accept_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = load(DEPLOY / "gateway.example.toml")
    gw = config.gateway("gw-reactor3")
    assert config.broker.tls and config.broker.port == 8883
    # From a shell: the file README step 4 installs, the source of the unit's credential.
    assert gw.password_file == Path("/etc/ballpass/credentials/gw-reactor3.password")
    unit = (DEPLOY / "ballpass-gateway@.service").read_text()
    assert "LoadCredential=%i.password:/etc/ballpass/credentials/%i.password" in unit
    readme = (DEPLOY.parent / "README.md").read_text()
    assert "install -m 0600 gw-reactor3.password /etc/ballpass/credentials/gw-reactor3.password" \
        in readme
    assert {s.driver for s in gw.sensors} == {"iio", "ds18b20"}
    for s in gw.sensors:
        driver = load_driver(s.driver)(s, config.asset(s.asset))  # validates options, no I/O
        assert repr(driver)


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "ballpass-gateway@.service")
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "ballpass"
    assert set(service["SupplementaryGroups"].split()) >= {"i2c", "spi", "gpio", "iio"}
    assert service["ExecStart"].split()[1:4] == ["gateway", "-c", "/etc/ballpass/site.toml"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    # these would make /sys read-only or hide /dev/iio:device*: must stay off
    assert "ProtectKernelTunables" not in service and "PrivateDevices" not in service
    rules = (DEPLOY / "99-ballpass-iio.rules").read_text()
    assert 'SUBSYSTEM=="iio"' in rules and 'GROUP="iio"' in rules


def test_iio_rule_applies_without_a_reboot() -> None:
    # `udevadm trigger` sends "change" unless --action= says otherwise: the sysfs
    # permissions must follow both that and the documented `--action=add`.
    rules = (DEPLOY / "99-ballpass-iio.rules").read_text()
    (run,) = [line for line in rules.replace("\\\n", " ").splitlines()
              if "RUN+=" in line and not line.startswith("#")]
    assert 'ACTION=="add|change"' in run and "chgrp -R iio /sys%p" in run
    readme = (DEPLOY.parent / "README.md").read_text()
    assert "udevadm trigger --action=add -s iio" in readme
    assert "udevadm trigger -s iio" not in readme + rules
