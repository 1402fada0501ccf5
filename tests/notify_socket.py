"""A systemd notify socket for tests: the real protocol (an abstract unix datagram socket as
$NOTIFY_SOCKET), recording what a service sends."""

from __future__ import annotations

import os
import socket
import threading
import time


class NotifySocket:
    """An abstract unix datagram socket recording (monotonic time, datagram)."""

    def __init__(self) -> None:
        self.name = f"@ballpass-notify-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.got.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        with self.lock:
            return [m for _, m in self.got]

    def times(self, line: str) -> list[float]:
        with self.lock:
            return [t for t, m in self.got if line in m.split("\n")]

    def index(self, line: str, after: int = 0) -> int | None:
        for i, m in enumerate(self.messages()[after:], after):
            if line in m.split("\n"):
                return i
        return None

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()
