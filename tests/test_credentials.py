"""ballpass.credentials: secret paths into systemd's $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import pytest

from ballpass.credentials import CredentialPathError, expand_or_fail, expand_secret_path

CRED = {"CREDENTIALS_DIRECTORY": "/run/credentials/ballpass-gateway@gw1.service"}


def test_credential_form() -> None:
    assert expand_secret_path("credential:gateway.password", CRED) == \
        "/run/credentials/ballpass-gateway@gw1.service/gateway.password"


def test_braced_variable_with_and_without_default() -> None:
    assert expand_secret_path("${CREDENTIALS_DIRECTORY}/gw.password", CRED) == \
        "/run/credentials/ballpass-gateway@gw1.service/gw.password"
    # outside systemd (check-config from a shell) the default applies
    assert expand_secret_path("${CREDENTIALS_DIRECTORY:-/etc/ballpass}/gw.password", {}) == \
        "/etc/ballpass/gw.password"
    # under systemd the variable wins over the default
    assert expand_secret_path("${CREDENTIALS_DIRECTORY:-/etc/ballpass}/x", CRED) == \
        CRED["CREDENTIALS_DIRECTORY"] + "/x"
    # several directories (StateDirectory=a b): the first
    assert expand_secret_path("${STATE_DIRECTORY}/o.sqlite",
                              {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == "/var/lib/a/o.sqlite"


def test_plain_paths_unchanged() -> None:
    for p in ("/etc/ballpass/gw.password", "relative/x", "/odd/$HOME/literal"):
        assert expand_secret_path(p, CRED) == p


@pytest.mark.parametrize(("value", "env", "needle"), [
    ("credential:gateway.password", {}, "CREDENTIALS_DIRECTORY"),
    ("credential:../etc/shadow", CRED, "no '/'"),
    ("credential:", CRED, "credential name"),
    ("${HOME}/.ssh/id_rsa", {"HOME": "/root"}, "only CREDENTIALS_DIRECTORY"),
    ("${CREDENTIALS_DIRECTORY}/x", {}, "is not set"),
])
def test_errors_name_the_problem(value: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(CredentialPathError, match=None) as e:
        expand_secret_path(value, env)
    assert needle in str(e.value)


def test_expand_or_fail_reports_through_the_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    errors: list[str] = []
    assert expand_or_fail("credential:gw.password", errors.append) is None
    assert len(errors) == 1 and "LoadCredential=gw.password" in errors[0]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/u")
    assert expand_or_fail("credential:gw.password", errors.append) == \
        "/run/credentials/u/gw.password"
    assert len(errors) == 1
