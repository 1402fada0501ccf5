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

Reasons (sensor faults, problems, the config result) are cut to `MAX_REASON` characters:
a driver's error text has no bound, and the status must fit the broker's Maximum Packet
Size (the publisher sends a reduced form, `payload(reasons=False)`, when it still does not).

`started_at` follows the wall clock's jumps (`shift_started_at`, called by the service
when the outbox followed one): a board without RTC would otherwise report its start in
1970 until the next restart.

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
MAX_REASON = 256
"""Longest reason (characters) kept on the status topic; longer ones are cut, ending in
"…". Below the stream's own cut (`stream.gateway_status.MAX_REASON`, 500), so it keeps
them whole, and small enough that a status of a dozen faulty sensors stays a few kB."""


def cut_reason(reason: str) -> str:
    """`reason`, at most MAX_REASON characters (the last one "…" when it was cut)."""
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "…"


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
            self._sensors[sensor] = {"state": SENSOR_FAULT, "reason": cut_reason(reason)}

    def swap_sensor(self, sensor: str, expected: dict[str, str], state: str,
                    reason: str) -> bool:
        """Set `sensor` to (`state`, `reason`) only if it still is `expected` (as returned
        by `sensors`); True when it was set. For a writer other than the sensor's capture
        thread (the service's stuck check), which must not overwrite a newer state."""
        with self._lock:
            if self._sensors.get(sensor) != expected:
                return False
            self._sensors[sensor] = {"state": state, "reason": cut_reason(reason)}
            return True

    def shift_started_at(self, jump_s: float) -> None:
        """Move `started_at` by a wall-clock jump of `jump_s` seconds (the clock was wrong
        when the gateway started, e.g. 1970 on a board without RTC before NTP)."""
        with self._lock:
            self.started_at += jump_s

    def sensor_disabled(self, sensor: str) -> None:
        with self._lock:
            self._sensors[sensor] = {"state": SENSOR_DISABLED, "reason": "disabled by config"}

    def config_result(self, state: str, reason: str = "") -> None:
        """Record the outcome of a remote config: "applied" or "rejected" with a reason."""
        with self._lock:
            self._config = {"state": state, "reason": cut_reason(reason),
                            "t": iso_utc(time.time())}

    def problem(self, name: str, reason: str | None) -> None:
        """Set (or clear, with None) a gateway-level problem shown on the status topic."""
        with self._lock:
            if reason is None:
                self._problems.pop(name, None)
            else:
                self._problems[name] = cut_reason(reason)

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)

    def sensors(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {k: dict(v) for k, v in self._sensors.items()}

    def message(self, state: str = ONLINE, *, reasons: bool = True) -> dict:
        """The full status as a dict; `reasons` False: every reason "" (the reduced form,
        for a broker whose Maximum Packet Size the full one exceeds)."""
        sensors, config, problems = self.sensors(), self.config(), self.problems()
        if not reasons:
            sensors = {k: {**v, "reason": ""} for k, v in sensors.items()}
            config = {**config, "reason": ""}
            problems = dict.fromkeys(problems, "")
        return {
            "state": state,
            "gateway": self.gateway,
            "site": self.site,
            "version": ballpass.__version__,
            "started_at": iso_utc(self.started_at),
            "t": iso_utc(time.time()),
            "counters": self._counters(),
            "sensors": sensors,
            "config": config,
            "problems": problems,
        }

    def config(self) -> dict[str, str]:
        with self._lock:
            return dict(self._config)

    def payload(self, state: str = ONLINE, *, reasons: bool = True) -> bytes:
        """The status as UTF-8 JSON bytes (`reasons`: as in `message`)."""
        return json.dumps(self.message(state, reasons=reasons),
                          separators=(",", ":")).encode()

    def will_payload(self) -> bytes:
        """The last will: state offline, identity, no counters."""
        return json.dumps({
            "state": OFFLINE, "gateway": self.gateway, "site": self.site,
            "version": ballpass.__version__, "started_at": iso_utc(self.started_at),
        }, separators=(",", ":")).encode()
