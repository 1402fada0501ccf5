"""Listen addresses (`--http`, `--metrics`, `[stream] http`): one parser for every command,
and what the stream's HTTP servers share: binding the address, capping connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT", "[V6]:PORT" or ":PORT"; port 0 picks a free port.

    An empty host means loopback (127.0.0.1), never every interface: that takes an
    explicit 0.0.0.0 or [::]. Raises ValueError naming the value when it is malformed.
    """
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        raise ValueError(f"must be HOST:PORT or :PORT, got {value!r}")
    if not port.isdigit():
        raise ValueError(f"port must be an integer, got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port must be 0 (any free port) or 1-65535, got {value!r}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


async def start_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]],
                       host: str, port: int, *, limit: int) -> asyncio.Server:
    """`asyncio.start_server`, except that "::" (every interface) takes IPv4 clients too.

    asyncio sets IPV6_V6ONLY on every IPv6 socket it binds, so "[::]:PORT" would refuse
    every IPv4 client; a socket bound here without it is dual-stack (IPv4 peers then show
    as ::ffff:a.b.c.d). OSError when the address cannot be bound, as asyncio's.
    """
    if host != "::":
        return await asyncio.start_server(handle, host, port, limit=limit)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return await asyncio.start_server(handle, sock=sock, limit=limit)


class OpenConnections:
    """A server's open connections, in all and per peer address, so it can cap both: with
    only a total, one client holding idle sockets locks every other client out."""

    def __init__(self) -> None:
        self.total = 0
        self.by_peer: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, peer: str) -> Iterator[None]:
        """Counts a connection of `peer` while the block runs."""
        self.total += 1
        self.by_peer[peer] += 1
        try:
            yield
        finally:
            self.total -= 1
            self.by_peer[peer] -= 1
            if not self.by_peer[peer]:
                del self.by_peer[peer]  # peers come and go: the counter must not grow

    def busy(self, peer: str, max_total: int, max_per_peer: int | None) -> str | None:
        """Why a connection of `peer` (counted already) must be refused; None: serve it.
        `max_per_peer` None: `peer` counts only toward the total (a reverse proxy)."""
        if self.total > max_total:
            return "too many connections"
        if max_per_peer is not None and self.by_peer[peer] > max_per_peer:
            return "too many connections from your address"
        return None
