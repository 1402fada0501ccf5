"""The systemd notify protocol (sd_notify(3)), stdlib only, no libsystemd.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: a unix datagram socket,
a file path or, when it starts with ``@``, a Linux abstract socket name. Each datagram is
newline-separated ``KEY=VALUE`` lines: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``WATCHDOG=1``, ``STATUS=free text``. With ``WatchdogSec=`` systemd also sets
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process meant): a service that does not
send ``WATCHDOG=1`` within that many microseconds is killed and (with ``Restart=``)
restarted.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False, so the
same code runs from a terminal, in tests and under systemd.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["monotonic_usec", "notify", "watchdog_interval_s"]


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # abstract namespace: leading NUL, no file
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms: not supported here


def notify(state: str) -> bool:
    """Send `state` (e.g. ``"READY=1"`` or ``"RELOADING=1\\nMONOTONIC_USEC=…"``) to
    ``$NOTIFY_SOCKET``; True if a datagram was sent.

    Never raises: outside systemd, with an unsupported address or when the socket is gone
    (systemd restarting), it returns False. The environment is left as it is.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when there is no
    watchdog for this process (unset, not a positive integer, or ``$WATCHDOG_PID`` names
    another process). Send ``WATCHDOG=1`` at about half this interval."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, for ``MONOTONIC_USEC=`` beside ``RELOADING=1`` (systemd 253+
    uses it to match the reload to the request; older versions ignore it)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
