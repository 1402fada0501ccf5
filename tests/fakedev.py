"""Fake device files that behave like hardware: a FIFO played by a thread.

A regular file in a fake sysfs tree answers at once and never refuses a write; a real
attribute may take milliseconds (an I2C register, a 1-Wire conversion) or refuse a write
(EBUSY). `FifoAttribute` plays one such attribute. `capture` builds the gateway's capture
loop of one sensor over such a tree, with its outbox and status.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from ballpass.config import SensorConfig
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.schedule import SensorCapture
from ballpass.gateway.status import Status


class FifoAttribute:
    """A sysfs attribute (or a slow register) played by a thread behind a FIFO at `path`.

    Each read by the driver gets `value` after `delay_s` (a slow bus). With `enable` (the
    buffer/enable file), each write is taken only while the buffer is off: what drivers that
    claim direct mode do (EBUSY while buffered), seen by the driver as the old value on
    read-back. The driver reads, writes, reads in turn (as `open()` does).
    """

    def __init__(self, path: Path, value: str, *, delay_s: float = 0.0,
                 enable: Path | None = None, writes: bool = False) -> None:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        self.path, self.value, self.delay_s, self.enable = path, value, delay_s, enable
        self.writes = writes
        self.refused: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop:
                # Wait before opening, not after: a reader of the previous value has then
                # long closed, so one open of the driver gets one value.
                time.sleep(max(self.delay_s, 0.002))
                with open(self.path, "w") as f:  # blocks until the driver opens to read
                    if self._stop:
                        return
                    f.write(self.value + "\n")
                if self.writes:
                    with open(self.path) as f:  # blocks until the driver opens to write
                        written = f.read().strip()
                    if self._stop:
                        return
                    if self.enable is not None and self.enable.read_text().strip() == "1":
                        self.refused.append(written)
                    else:
                        self.value = written
        except OSError:
            return

    def close(self) -> None:
        self._stop = True
        deadline = time.monotonic() + 2
        while self._thread.is_alive() and time.monotonic() < deadline:
            for mode in (os.O_RDONLY, os.O_WRONLY):  # wake the thread blocked in open()
                with contextlib.suppress(OSError):
                    os.close(os.open(self.path, mode | os.O_NONBLOCK))
            self._thread.join(0.01)
        assert not self._thread.is_alive()


def capture(s: SensorConfig, asset: Any, tmp_path: Path, backoff_initial_s: float,
            backoff_max_s: float) -> tuple[Outbox, Status, threading.Event, SensorCapture]:
    """The capture loop of sensor `s` (not started) on site plant1, gateway gw1, with a
    fresh outbox in `tmp_path`, its status and its stop event."""
    box = Outbox(tmp_path / "o.sqlite", 10**8, 3600)
    status = Status("plant1", "gw1", [s.id], box.counters)
    stop = threading.Event()
    cap = SensorCapture(s, asset, "plant1", "gw1", box, status, stop,
                        backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
    return box, status, stop, cap
