"""Per-sensor alert state with hysteresis: normal → watch → alarm and back.

A window is abnormal when its diagnosis names a fault. The sensor enters `alarm` when
at least `enter_k` of its last `window_n` windows are abnormal and leaves it when at
most `leave_m` are, so one noisy window neither raises nor clears an alarm. `watch`
means some recent windows were abnormal but not enough to alarm.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field

from ballpass.config import AlertPolicy

NOT_A_FAULT = frozenset({"normal", "insufficient_data"})


@dataclass
class SensorAlertState:
    recent: deque[str] = field(default_factory=deque)
    state: str = "normal"
    since_ns: int = 0
    alert_id: str = ""
    alerted: bool = False  # ever fired since the service started


@dataclass(frozen=True)
class Transition:
    """An alarm that fired or resolved. `diagnosis` is the most frequent recent fault."""

    sensor: str
    status: str  # "firing" | "resolved"
    alert_id: str
    diagnosis: str
    since_ns: int


class AlertTracker:
    """Alert state of every sensor; `update` returns a Transition when one happens."""

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self.sensors: dict[str, SensorAlertState] = {}

    def state(self, sensor: str) -> str:
        s = self.sensors.get(sensor)
        return s.state if s else "normal"

    def update(self, sensor: str, diagnosis: str, t_ns: int) -> Transition | None:
        s = self.sensors.setdefault(sensor, SensorAlertState(deque(maxlen=self.policy.window_n)))
        s.recent.append(diagnosis)
        faults = [d for d in s.recent if d not in NOT_A_FAULT]
        if s.state != "alarm":
            if len(faults) >= self.policy.enter_k:
                s.state = "alarm"
                s.since_ns = t_ns
                s.alert_id = _alert_id(sensor, t_ns)
                s.alerted = True
                return Transition(sensor, "firing", s.alert_id, _most_common(faults), t_ns)
            s.state = "watch" if faults else "normal"
            return None
        if len(faults) <= self.policy.leave_m:
            s.state = "watch" if faults else "normal"
            return Transition(sensor, "resolved", s.alert_id, _most_common(faults) or diagnosis,
                              s.since_ns)
        return None

    def current_fault(self, sensor: str) -> str:
        """The most frequent fault among the sensor's recent windows ("normal" if none)."""
        s = self.sensors.get(sensor)
        faults = [d for d in s.recent if d not in NOT_A_FAULT] if s else []
        return _most_common(faults) or "normal"


def _most_common(items: list[str]) -> str:
    return Counter(items).most_common(1)[0][0] if items else ""


def _alert_id(sensor: str, t_ns: int) -> str:
    return hashlib.sha1(f"{sensor}:{t_ns}".encode()).hexdigest()[:16]
