"""The gateway's status message (ARCHITECTURE.md section 5), published retained.

``{"state": "online"|"offline", "gateway", "site", "version", "started_at", "t",
"counters": {"captured", "queued", "published", "dropped", "replayed"},
"sensors": {id: {"state": "ok"|"fault"|"disabled", "reason"}},
"config": {"state": "none"|"applied"|"rejected", "reason", "t"},
"problems": {name: reason}}``

`config` reports the last remote configuration received on the config topic (see
docs/gateway.md); `problems` holds gateway-level trouble that is not one sensor's fault,
e.g. ``"outbox": "disk full: ..."`` or ``"clock": "wall clock jumped ..."``; empty when
all is well.

Times (`started_at`, `t`) are UTC ISO 8601 strings with milliseconds and a ``Z``
(``2026-11-28T21:17:20.123Z``). The last will is the short form ``{"state": "offline",
"gateway", "site", "version", "started_at"}``: the broker sends it when the gateway dies,
so it cannot carry final counters.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import ballpass

ONLINE = "online"
OFFLINE = "offline"
SENSOR_OK = "ok"
SENSOR_FAULT = "fault"
SENSOR_DISABLED = "disabled"


def iso_utc(t: float) -> str:
    """Seconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Status:
    """Thread-safe sensor states plus the JSON builder for the status topic.

    `counters` is called for every message (normally `Outbox.counters`).
    """

    def __init__(self, site: str, gateway: str, sensors: Iterable[str],
                 counters: Callable[[], dict[str, int]], *,
                 started_at: float | None = None) -> None:
        self.site = site
        self.gateway = gateway
        self.started_at = time.time() if started_at is None else started_at
        self._counters = counters
        self._lock = threading.Lock()
        # A sensor is "ok" until its driver says otherwise.
        self._sensors: dict[str, dict[str, str]] = {
            s: {"state": SENSOR_OK, "reason": ""} for s in sensors}
        self._config: dict[str, str] = {"state": "none", "reason": "", "t": ""}
        self._problems: dict[str, str] = {}

    def sensor_ok(self, sensor: str) -> None:
        with self._lock:
            self._sensors[sensor] = {"state": SENSOR_OK, "reason": ""}

    def sensor_fault(self, sensor: str, reason: str) -> None:
        with self._lock:
            self._sensors[sensor] = {"state": SENSOR_FAULT, "reason": reason}

    def sensor_disabled(self, sensor: str) -> None:
        with self._lock:
            self._sensors[sensor] = {"state": SENSOR_DISABLED, "reason": "disabled by config"}

    def config_result(self, state: str, reason: str = "") -> None:
        """Record the outcome of a remote config: "applied" or "rejected" with a reason."""
        with self._lock:
            self._config = {"state": state, "reason": reason, "t": iso_utc(time.time())}

    def problem(self, name: str, reason: str | None) -> None:
        """Set (or clear, with None) a gateway-level problem shown on the status topic."""
        with self._lock:
            if reason is None:
                self._problems.pop(name, None)
            else:
                self._problems[name] = reason

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)

    def sensors(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {k: dict(v) for k, v in self._sensors.items()}

    def message(self, state: str = ONLINE) -> dict:
        """The full status as a dict."""
        return {
            "state": state,
            "gateway": self.gateway,
            "site": self.site,
            "version": ballpass.__version__,
            "started_at": iso_utc(self.started_at),
            "t": iso_utc(time.time()),
            "counters": self._counters(),
            "sensors": self.sensors(),
            "config": self.config(),
            "problems": self.problems(),
        }

    def config(self) -> dict[str, str]:
        with self._lock:
            return dict(self._config)

    def payload(self, state: str = ONLINE) -> bytes:
        """The full status as UTF-8 JSON bytes."""
        return json.dumps(self.message(state), separators=(",", ":")).encode()

    def will_payload(self) -> bytes:
        """The last will: state offline, identity, no counters."""
        return json.dumps({
            "state": OFFLINE, "gateway": self.gateway, "site": self.site,
            "version": ballpass.__version__, "started_at": iso_utc(self.started_at),
        }, separators=(",", ":")).encode()
