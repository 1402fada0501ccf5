"""Secret file paths in the site config that point into systemd's credentials directory.

systemd's ``LoadCredential=NAME:SOURCE`` copies SOURCE at service start into a private,
read-only directory and sets ``$CREDENTIALS_DIRECTORY`` to it (``%d`` in the unit file,
which TOML cannot see). A secret-path value in the site config (``password_file``,
``token_file``, ``cert_file``, ``key_file``, ...) may therefore be written as

- ``"credential:NAME"``: ``$CREDENTIALS_DIRECTORY/NAME``; an error when the variable is
  not set (the process is not running under a unit with ``LoadCredential=NAME:…``);
- a path containing ``${VAR}`` or ``${VAR:-default}`` for one of the directory variables
  systemd sets (`SYSTEMD_DIRECTORY_VARIABLES`), e.g.
  ``"${CREDENTIALS_DIRECTORY:-/etc/ballpass}/gw.password"``, which also works from a
  shell (``ballpass check-config``) through the default.

Only those variables are expanded: a site file cannot pull arbitrary environment into a
path, and an unknown ``${NAME}`` is an error naming it. A plain ``$`` stays as it is.
When systemd lists several directories (``StateDirectory=a b``) the first one is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

CREDENTIAL_PREFIX = "credential:"
SYSTEMD_DIRECTORY_VARIABLES = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY",
                               "CONFIGURATION_DIRECTORY", "RUNTIME_DIRECTORY",
                               "CACHE_DIRECTORY", "LOGS_DIRECTORY")
_VAR = re.compile(r"\$\{([^}:]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,255}")


class CredentialPathError(ValueError):
    """A secret path that cannot be expanded; the message says why and what to set."""


def _directory(name: str, env: Mapping[str, str]) -> str | None:
    value = env.get(name, "")
    # systemd joins several directories with ':'; the first is the unit's own.
    first = value.split(":", 1)[0]
    return first or None


def expand_secret_path(value: str, env: Mapping[str, str] | None = None) -> str:
    """`value` with ``credential:NAME`` and ``${VAR}``/``${VAR:-default}`` expanded.

    `env` defaults to ``os.environ``. Raises CredentialPathError (a ValueError) with a
    message that names the problem; the caller prefixes the config key path.
    """
    env = os.environ if env is None else env
    if value.startswith(CREDENTIAL_PREFIX):
        name = value[len(CREDENTIAL_PREFIX):]
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise CredentialPathError(
                f"credential name must be 1-255 of A-Z a-z 0-9 _ . @ - (no '/'), got {name!r}")
        base = _directory("CREDENTIALS_DIRECTORY", env)
        if base is None:
            raise CredentialPathError(
                f"{value!r} needs $CREDENTIALS_DIRECTORY, which is not set: run it under "
                f"systemd with LoadCredential={name}:/path/to/file, or give a plain path "
                "(or ${CREDENTIALS_DIRECTORY:-/etc/ballpass}/" + name + ")")
        return f"{base}/{name}"

    def replace(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var not in SYSTEMD_DIRECTORY_VARIABLES:
            raise CredentialPathError(
                f"${{{var}}}: only {', '.join(SYSTEMD_DIRECTORY_VARIABLES)} are expanded "
                f"in paths, got {value!r}")
        found = _directory(var, env)
        if found is not None:
            return found
        if default is not None:
            return default
        raise CredentialPathError(
            f"${{{var}}} is not set (not running under systemd?); write "
            f"${{{var}:-/some/dir}} for a fallback, got {value!r}")

    return _VAR.sub(replace, value)


def expand_or_fail(value: str, fail: Callable[[str], None]) -> str | None:
    """`expand_secret_path(value)`, or None after calling `fail(message)` on an error.

    The config hook: ``TableReader.path_value`` calls
    ``value = expand_or_fail(value, lambda m: self.fail(name, m))`` before it builds the
    Path, and returns None when that gives None (the error then carries the key path).
    """
    try:
        return expand_secret_path(value)
    except CredentialPathError as e:
        fail(str(e))
        return None
