"""`ballpass broker add-gateway`: give a new gateway its broker credentials.

Adds (or replaces) the gateway's entry in a mosquitto password file, with
`mosquitto_passwd -b` when it is installed, else with the same PBKDF2-SHA512 format
written here (`ballpass.services.mosquitto_password_hash`). Makes sure the ACL file holds
the gateway `pattern` lines of `ballpass.services.acl_text` (username = gateway id, so one
set of lines covers every gateway; nothing per gateway is needed). The broker re-reads
both files on SIGHUP (``systemctl reload mosquitto``).

Files: the gateway's password file is created 0600 (O_EXCL); a new broker password file
or ACL is created 0600 before anything is written to it, owned by the `mosquitto` user
when run as root (the broker opens them after dropping to that user); a replaced one
keeps its owner, group and group-read bit, never world bits.

Stdlib only, like the rest of the CLI's light paths.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ballpass.services import acl_text, mosquitto_password_hash, write_private
from ballpass.topics import valid_id

log = logging.getLogger(__name__)

BROKER_USER = "mosquitto"
"""The user Debian's mosquitto drops to before it opens the password and ACL files."""


@dataclass(frozen=True)
class AddResult:
    """What `add_gateway` did: `method` is "mosquitto_passwd" or "pbkdf2"; `acl_added`
    lists the ACL lines appended (empty when they were there already)."""

    gateway: str
    replaced: bool
    method: str
    acl_added: tuple[str, ...]
    password_generated: bool


def gateway_acl_lines() -> list[str]:
    """The ACL's gateway `pattern` lines (the same for every gateway)."""
    return [line for line in acl_text(()).splitlines() if line.startswith("pattern ")]


def _broker_owner() -> tuple[int, int] | None:
    """(uid, gid) of the `mosquitto` system user, when there is one and we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def read_or_create_password(path: Path) -> tuple[str, bool]:
    """The password in `path`; a new random one written there (mode 0600) if missing."""
    if path.exists():
        password = path.read_text(encoding="utf-8").strip()
        if not password:
            raise ValueError(f"{path}: empty password file")
        return password, False
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return password, True


def add_gateway(gateway: str, password: str, passwd: Path, acl: Path, *,
                use_mosquitto_passwd: bool = True) -> AddResult:
    """Add or replace `gateway` in the password file `passwd`; complete the ACL `acl`.

    ValueError for a bad gateway id; subprocess.CalledProcessError if mosquitto_passwd
    fails.
    """
    if not valid_id(gateway):
        raise ValueError(f"gateway id {gateway!r}: must match [a-z0-9][a-z0-9_-]{{0,63}}")
    if "\n" in password or not password:
        raise ValueError("password: must be one non-empty line")
    broker_owner = _broker_owner()
    if not passwd.exists():
        # 0600 before the first hash is in it (`mosquitto_passwd -c` would create it with
        # the caller's umask, 0644 as a rule); owned by the broker's user when run as root,
        # because mosquitto opens it after dropping to that user.
        passwd.parent.mkdir(parents=True, exist_ok=True)
        write_private(passwd, "", owner=broker_owner)
    existing = passwd.read_text(encoding="utf-8").splitlines()
    replaced = any(line.split(":", 1)[0] == gateway for line in existing)
    tool = shutil.which("mosquitto_passwd") if use_mosquitto_passwd else None
    if tool is None and use_mosquitto_passwd:
        for d in ("/usr/bin", "/usr/sbin"):
            if os.access(f"{d}/mosquitto_passwd", os.X_OK):
                tool = f"{d}/mosquitto_passwd"
    if tool is not None:
        # -b on the existing file (never -c): mosquitto_passwd rewrites it in place, so
        # its mode and owner stay as they are.
        args = [tool, "-b", str(passwd), gateway, password]
        subprocess.run(args, check=True, capture_output=True, text=True)
        method = "mosquitto_passwd"
    else:
        lines = [line for line in existing if line.split(":", 1)[0] != gateway]
        lines.append(f"{gateway}:{mosquitto_password_hash(password)}")
        # atomic: a broker reload never sees half a file; mode and owner kept
        write_private(passwd, "\n".join(lines) + "\n")
        method = "pbkdf2"
    added: list[str] = []
    if not acl.exists():
        write_private(acl, acl_text() + "\n", owner=broker_owner)
        added = gateway_acl_lines()
    else:
        present = {" ".join(line.split()) for line in acl.read_text(encoding="utf-8").splitlines()}
        missing = [line for line in gateway_acl_lines() if line not in present]
        if missing:
            with acl.open("a", encoding="utf-8") as f:
                # `pattern` lines apply to every user wherever they stand in the file
                f.write("\n# gateways (added by ballpass broker add-gateway)\n"
                        + "\n".join(missing) + "\n")
            added = missing
    log.info("event=gateway_credentials_added gateway=%s replaced=%s method=%s acl_added=%d",
             gateway, replaced, method, len(added))
    return AddResult(gateway, replaced, method, tuple(added), False)
