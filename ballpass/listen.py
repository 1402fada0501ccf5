"""Listen addresses (`--http`, `--metrics`, `[stream] http`): one parser for every command."""

from __future__ import annotations


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
