"""Per-sensor alert state with hysteresis: normal → watch → alarm and back.

A window is abnormal when its diagnosis names a fault. The sensor enters `alarm` when
at least `enter_k` of its last `window_n` windows are abnormal and leaves it when at
most `leave_m` are for 2 × `window_n` windows in a row, so one noisy window neither raises
nor clears an alarm, and a fault seen in about half the windows does not flap. `watch`
means some recent windows were abnormal but not enough to alarm; it returns to `normal`
only when none of the last `window_n` is. The policy can differ per sensor (per asset,
`[asset.alert]`). Each alarm carries a severity ("low", "medium", "high") from the ISO
zone, the fault class and the trend (`severity`). Operator actions: `acknowledge` marks
the alarm as seen; `clear` (maintenance done, false alarm) resolves it and forgets the
recent windows, so the same evidence does not raise it again at once.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field

from ballpass.config import AlertPolicy

NOT_A_FAULT = frozenset({"normal", "insufficient_data"})
BEARING_FAULTS = frozenset({"outer_race", "inner_race", "ball", "cage"})
SEVERITIES = ("low", "medium", "high")


def severity(diagnosis: str, iso_zone: str = "", days_to_zone_d: float | None = None) -> str:
    """How urgent a fault is: "high" in ISO zone D, a bearing defect or misalignment in
    zone C, or zone D projected within 7 days; "medium" for any other named fault, zone C,
    or zone D within 30 days; "low" otherwise (an unexplained anomaly at a good level)."""
    if iso_zone == "D" or (days_to_zone_d is not None and days_to_zone_d < 7.0):
        return "high"
    if iso_zone == "C" and (diagnosis in BEARING_FAULTS or diagnosis == "misalignment"):
        return "high"
    if iso_zone == "C" or (days_to_zone_d is not None and days_to_zone_d < 30.0):
        return "medium"
    if diagnosis in NOT_A_FAULT or diagnosis == "unknown_anomaly":
        return "low"
    return "medium"


@dataclass
class SensorAlertState:
    recent: deque[str] = field(default_factory=deque)
    state: str = "normal"
    since_ns: int = 0
    alert_id: str = ""
    alerted: bool = False  # ever fired since the service started
    severity: str = ""  # of the current alarm (highest seen while it lasts)
    acknowledged_by: str = ""  # operator who acknowledged the current alarm
    calm: int = 0  # consecutive windows in alarm with at most leave_m faults


@dataclass(frozen=True)
class Transition:
    """An alarm that fired or resolved. `diagnosis` is the most frequent recent fault."""

    sensor: str
    status: str  # "firing" | "resolved"
    alert_id: str
    diagnosis: str
    since_ns: int
    severity: str = ""


class AlertTracker:
    """Alert state of every sensor; `update` returns a Transition when one happens.

    `policies` overrides `policy` for some sensors (their asset's `[asset.alert]`).
    """

    def __init__(self, policy: AlertPolicy,
                 policies: dict[str, AlertPolicy] | None = None) -> None:
        self.policy = policy
        self.policies = dict(policies or {})
        self.sensors: dict[str, SensorAlertState] = {}

    def policy_of(self, sensor: str) -> AlertPolicy:
        return self.policies.get(sensor, self.policy)

    def state(self, sensor: str) -> str:
        s = self.sensors.get(sensor)
        return s.state if s else "normal"

    def update(self, sensor: str, diagnosis: str, t_ns: int,
               severity: str = "") -> Transition | None:
        """Advance `sensor` by one window diagnosed `diagnosis` (its `severity`, if known)."""
        policy = self.policy_of(sensor)
        s = self.sensors.setdefault(sensor, SensorAlertState(deque(maxlen=policy.window_n)))
        s.recent.append(diagnosis)
        faults = [d for d in s.recent if d not in NOT_A_FAULT]
        if s.state != "alarm":
            if len(faults) >= policy.enter_k:
                s.state = "alarm"
                s.since_ns = t_ns
                s.alert_id = _alert_id(sensor, t_ns)
                s.alerted = True
                s.severity = severity
                s.acknowledged_by = ""
                s.calm = 0
                return Transition(sensor, "firing", s.alert_id, _most_common(faults), t_ns,
                                  severity)
            s.state = "watch" if faults else "normal"
            return None
        if severity and (not s.severity or SEVERITIES.index(severity) >
                         SEVERITIES.index(s.severity)):
            s.severity = severity
        s.calm = s.calm + 1 if len(faults) <= policy.leave_m else 0
        if s.calm >= 2 * policy.window_n:
            s.state = "watch" if faults else "normal"
            return Transition(sensor, "resolved", s.alert_id, _most_common(faults) or diagnosis,
                              s.since_ns, s.severity)
        return None

    def acknowledge(self, sensor: str, by: str) -> bool:
        """Mark the current alarm of `sensor` as seen by `by`; False if none is active."""
        s = self.sensors.get(sensor)
        if s is None or s.state != "alarm":
            return False
        s.acknowledged_by = by or "unknown"
        return True

    def clear(self, sensor: str) -> Transition | None:
        """Forget the recent windows (maintenance done, false alarm); resolves an alarm."""
        s = self.sensors.get(sensor)
        if s is None:
            return None
        faults = [d for d in s.recent if d not in NOT_A_FAULT]
        s.recent.clear()
        was = s.state
        s.state = "normal"
        if was != "alarm":
            return None
        return Transition(sensor, "resolved", s.alert_id, _most_common(faults) or "normal",
                          s.since_ns, s.severity)


def _most_common(items: list[str]) -> str:
    return Counter(items).most_common(1)[0][0] if items else ""


def _alert_id(sensor: str, t_ns: int) -> str:
    return hashlib.sha1(f"{sensor}:{t_ns}".encode()).hexdigest()[:16]
