"""`ballpass broker add-gateway`: give a new gateway its broker credentials.

Adds (or replaces) the gateway's entry in a mosquitto password file, in the PBKDF2-SHA512
format `mosquitto_passwd` writes (`ballpass.services.mosquitto_password_hash`), computed
here: `mosquitto_passwd -b` would take the password on its command line, readable by
every local user in /proc/PID/cmdline (and printed with a failed command). Makes sure the
ACL file holds the gateway `pattern` lines of `ballpass.services.acl_text` (username =
gateway id, so one set of lines covers every gateway; nothing per gateway is needed). The
broker re-reads both files on SIGHUP (``systemctl reload mosquitto``).

Files: the gateway's password file is created 0600 (O_EXCL); the broker password file
and the ACL are replaced atomically (`write_private`), a new one 0600 and owned by the
`mosquitto` user when run as root (the broker opens them after dropping to that user); a
replaced one keeps its owner, group and group-read bit, never world bits. Each
read-modify-write holds an exclusive `flock` on `FILE.lock` beside it, so parallel runs
(a provisioning script adding many gateways) never lose each other's entries.

Stdlib only, like the rest of the CLI's light paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ballpass.log import kv
from ballpass.services import acl_text, mosquitto_password_hash, write_private
from ballpass.topics import valid_id

log = logging.getLogger(__name__)

BROKER_USER = "mosquitto"
"""The user Debian's mosquitto drops to before it opens the password and ACL files."""


@dataclass(frozen=True)
class AddResult:
    """What `add_gateway` did: `acl_added` lists the ACL lines added (empty when they
    were there already)."""

    gateway: str
    replaced: bool
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


@contextlib.contextmanager
def _naming(option: str, path: Path) -> Iterator[None]:
    """OSError and UnicodeDecodeError inside as ValueError naming the option and path
    (the CLI exits 2 on it): a directory, a permission problem, a non-UTF-8 file."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise ValueError(f"{option} {path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        other = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise ValueError(f"{option} {path}: {e.strerror or type(e).__name__}{other}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`.lock for a read-modify-write of `path`. Not on `path`
    itself: `write_private` renames a new file over it, so a lock on the old inode would
    not exclude a writer that opened the new one."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_gateway_id(gateway: str) -> None:
    """ValueError unless `gateway` is a valid gateway id (= its MQTT username)."""
    if not valid_id(gateway):
        raise ValueError(f"gateway id {gateway!r}: must match [a-z0-9][a-z0-9_-]{{0,63}}")


def read_or_create_password(path: Path) -> tuple[str, bool]:
    """The password in `path`; a new random one written there (mode 0600) if missing.
    ValueError naming `path` when it cannot be read or written."""
    with _naming("--password-file", path):
        if path.exists():
            password = path.read_text(encoding="utf-8").strip()
            if not password:
                raise ValueError(f"--password-file {path}: empty password file")
            return password, False
        password = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
    return password, True


def add_gateway(gateway: str, password: str, passwd: Path, acl: Path) -> AddResult:
    """Add or replace `gateway` in the password file `passwd`; complete the ACL `acl`.

    ValueError for a bad gateway id or password, or naming the file that cannot be read
    or written.
    """
    check_gateway_id(gateway)
    if "\n" in password or not password:
        raise ValueError("password: must be one non-empty line")
    broker_owner = _broker_owner()
    # A symlinked file (config management often links them) is written where it points:
    # the atomic replace would put a regular file in the link's place, the broker's file
    # left unchanged.
    passwd, acl = Path(os.path.realpath(passwd)), Path(os.path.realpath(acl))
    with _naming("--passwd", passwd):
        passwd.parent.mkdir(parents=True, exist_ok=True)
        with _locked(passwd):
            existing = passwd.read_text(encoding="utf-8").splitlines() \
                if passwd.exists() else []
            replaced = any(line.split(":", 1)[0] == gateway for line in existing)
            lines = [line for line in existing if line.split(":", 1)[0] != gateway]
            lines.append(f"{gateway}:{mosquitto_password_hash(password)}")
            # atomic: a broker reload never sees half a file; a new file 0600 (owned by
            # the broker's user when root), a replaced one keeps owner and group read
            write_private(passwd, "\n".join(lines) + "\n", owner=broker_owner)
    added: list[str] = []
    with _naming("--acl", acl):
        acl.parent.mkdir(parents=True, exist_ok=True)
        with _locked(acl):
            if not acl.exists():
                write_private(acl, acl_text() + "\n", owner=broker_owner)
                added = gateway_acl_lines()
            else:
                text = acl.read_text(encoding="utf-8")
                present = {" ".join(line.split()) for line in text.splitlines()}
                missing = [line for line in gateway_acl_lines() if line not in present]
                if missing:
                    # `pattern` lines apply to every user wherever they stand in the file
                    write_private(acl, text.rstrip("\n") + "\n\n# gateways (added by "
                                  "ballpass broker add-gateway)\n" + "\n".join(missing)
                                  + "\n")
                    added = missing
    log.info(kv("gateway_credentials_added", gateway=gateway, replaced=replaced,
                acl_added=len(added)))
    return AddResult(gateway, replaced, tuple(added), False)
