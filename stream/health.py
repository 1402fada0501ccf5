"""Is the stream alive, and is it ready to do its job? (`/healthz`, docs/operations.md)

Pure: from what the service knows (broker connection, the writer's last outcome, the spool)
to a verdict. Ready means the broker is connected and the database took the last write
(or none was tried yet) and has not been failing for longer than `DB_FAILING_S`.

The broker check reads "not started" until the stream starts its broker session: it
first waits for the database (`ensure_database`), so a database down at the start must
not read as a broker "disconnected".
"""

from __future__ import annotations

from dataclasses import dataclass

DB_FAILING_S = 30.0
"""A write failing for this long makes the stream not ready (retries go on meanwhile)."""


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    checks: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        return {"status": "ok" if self.ready else "not_ready", "live": self.live,
                "ready": self.ready, "checks": self.checks}


def assess(*, broker_connected: bool, db_failing_since: float | None, now: float,
           spool_bytes: int, deadletter_bytes: int, webhooks_pending: int,
           alert_state_unsaved_since: float | None = None,
           broker_started: bool = True) -> Health:
    """The verdict at `now` (s, monotonic like `db_failing_since`). An alert state the disk
    refuses is shown, not made unready: the stream still diagnoses and alerts, but a crash
    meanwhile would forget its open alarms. `broker_started`: the broker session has been
    started (it has tried to connect at least once)."""
    db_failing_s = 0.0 if db_failing_since is None else now - db_failing_since
    db_ok = db_failing_s < DB_FAILING_S
    return Health(
        live=True,
        ready=broker_connected and db_ok,
        checks={"broker": "connected" if broker_connected else
                "disconnected" if broker_started else "not started",
                "database": "ok" if db_failing_since is None else
                f"failing for {db_failing_s:.0f} s",
                "spool_bytes": spool_bytes, "deadletter_bytes": deadletter_bytes,
                "webhooks_pending": webhooks_pending,
                "alert_state": "saved" if alert_state_unsaved_since is None else
                f"not saved for {now - alert_state_unsaved_since:.0f} s"},
    )
