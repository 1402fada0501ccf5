"""Access control of the evidence page: the token file, the bind address, sessions, and the
Host / Origin / CSRF checks of state-changing requests. Pure helpers plus small stores;
the server (`server.py`) calls them. See docs/evidence-page.md, "Security".
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ballpass.log import kv

log = logging.getLogger(__name__)

TOKEN_FILE = "evidence.token"  # in [stream] state_dir when http_token_file is not set
SESSION_COOKIE = "bp_session"
SESSION_TTL_S = 12 * 3600.0  # a control-room shift
MAX_SESSIONS = 256  # the oldest is forgotten beyond this (its browser logs in again)
ALL_INTERFACES = ("0.0.0.0", "::")


def load_or_create_token(state_dir: Path) -> tuple[str, Path, bool]:
    """The evidence page's token from `state_dir/evidence.token`, created on first use.

    Returns (token, path, created). The file is written 0600 through a temporary file
    and a hard link, so a crash never leaves a partial token and two starts racing get
    the same one. The token itself is never logged; `evidence_token_created` names the
    file once, on the start that created it.
    """
    path = state_dir / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, path, False
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)  # 256 bits
    tmp = state_dir / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another start created it first
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip(), path, False
    finally:
        tmp.unlink(missing_ok=True)
    log.warning(kv("evidence_token_created", path=path,
                   hint="log in to the evidence page with the token in this file"))
    return token, path, True


def is_all_interfaces(host: str) -> bool:
    return host in ALL_INTERFACES or host == ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ip(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    # A dual-stack socket ("::") sees an IPv4 client's connection on ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def split_host(value: str) -> tuple[str, int | None] | None:
    """("host", port) of a Host header value; None when it is malformed."""
    try:
        u = urllib.parse.urlsplit("//" + value)
        port = u.port
    except ValueError:
        return None
    if not u.hostname or u.username is not None or u.path or u.query:
        return None
    return u.hostname.lower(), port


@dataclass
class HostPolicy:
    """Which Host headers the page answers to (against DNS rebinding).

    Accepted: the bound address, `localhost` and loopback addresses when bound to
    loopback, the address the client actually connected to when it is an IP literal
    (a rebinding attack needs a name), the host of `public_url`, and `allowed` names.
    """

    bind_host: str
    port: int
    public_url: str | None = None
    allowed: tuple[str, ...] = ()

    def accepts(self, host_header: str | None, local_addr: str | None) -> bool:
        if not host_header:
            return False
        parsed = split_host(host_header)
        if parsed is None:
            return False
        host, port = parsed
        if self.public_url:
            pu = urllib.parse.urlsplit(self.public_url)
            default = 443 if pu.scheme == "https" else 80
            if host == (pu.hostname or "").lower() and (port or default) == (pu.port or
                                                                            default):
                return True
        # The page itself speaks plain HTTP (TLS is the reverse proxy's, `public_url`
        # above): a browser leaves the default port 80 out of Host.
        if (port or 80) != self.port:
            return False
        names = {n.lower() for n in self.allowed}
        bind_ip = _ip(self.bind_host)
        if host in names:
            return True
        if bind_ip is not None and not is_all_interfaces(bind_ip) and _ip(host) == bind_ip:
            return True
        if is_loopback(self.bind_host) and is_loopback(host):
            return True
        local = _ip(local_addr or "")
        return local is not None and _ip(host) == local


def same_origin(origin: str | None, referer: str | None, host_header: str,
                public_url: str | None) -> bool:
    """True if Origin (or, without it, Referer) is this page's own origin.

    The page's origin is `http://` + the (already checked) Host header, or the origin
    of `public_url` when the page sits behind a TLS proxy. A missing or "null" origin
    is refused: browsers send Origin on every POST, so its absence means a non-browser
    client, which authenticates with a bearer token instead of the session cookie.
    """
    own = {f"http://{host_header.lower()}"}
    if public_url:
        pu = urllib.parse.urlsplit(public_url)
        own.add(f"{pu.scheme}://{pu.netloc}".lower())
    if origin:
        return origin.lower() != "null" and origin.lower().rstrip("/") in own
    if referer:
        ru = urllib.parse.urlsplit(referer)
        return f"{ru.scheme}://{ru.netloc}".lower() in own
    return False


@dataclass
class Session:
    csrf: str
    expires: float  # time.monotonic() deadline


class Sessions:
    """Browser sessions after a login: an opaque cookie value -> its CSRF token."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), time.monotonic() + self.ttl_s)
        self._by_id[sid] = session
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        if time.monotonic() > session.expires:
            del self._by_id[sid]
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)


def tokens_equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
