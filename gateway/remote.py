"""Remote configuration: the retained JSON on ``bp/v1/{site}/{gateway}/config``.

An operator publishes (retained, QoS 1)::

    {"flush_rate_per_s": 20,
     "sensors": {"pump3-de": {"interval_s": 5, "window_samples": 16384},
                 "pump3-nde": {"enabled": false}}}

Every key is optional. `sensors` may name only sensors of this gateway's site config;
per sensor, `interval_s` (> 0 and >= window_samples / fs_hz), `window_samples` (16 ..
4194304) and `enabled` (bool) override the site file. A sensor not named, or a key not
given, keeps its site-file value, so publishing ``{}`` returns to the site file.

The whole message is validated before anything changes; a message with any error is
rejected as a whole (`ConfigRejected`, every problem with its key path) and the gateway
keeps running on its current settings. Applied without restart: the capture thread of a
changed sensor closes its driver and re-opens it with the new settings; the flush rate
changes at once. An empty payload (the retained message deleted) also means "site file".
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from ballpass.config import WINDOW_SAMPLES_MAX, WINDOW_SAMPLES_MIN, GatewayConfig, SensorConfig

TOP_KEYS = ("flush_rate_per_s", "sensors")
SENSOR_KEYS = ("enabled", "interval_s", "window_samples")
MAX_PAYLOAD = 64 * 1024


class ConfigRejected(ValueError):
    """A remote config that cannot be applied; `errors` lists `path: problem`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class RemoteConfig:
    """The effective settings after a remote config: per sensor (config, enabled)."""

    flush_rate_per_s: float
    sensors: dict[str, tuple[SensorConfig, bool]]


def _hint(key: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def parse_remote(payload: bytes, gateway: GatewayConfig) -> RemoteConfig:
    """Validate `payload` against the site file's `gateway`; ConfigRejected if invalid."""
    base = {s.id: s for s in gateway.sensors}
    if not payload.strip():
        return RemoteConfig(gateway.outbox.flush_rate_per_s,
                            {s.id: (s, True) for s in gateway.sensors})
    if len(payload) > MAX_PAYLOAD:
        raise ConfigRejected([f"payload: larger than {MAX_PAYLOAD} bytes"])
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigRejected([f"payload: not valid JSON ({e})"]) from None
    if not isinstance(data, dict):
        raise ConfigRejected([f"payload: must be a JSON object, got {type(data).__name__}"])
    errors: list[str] = []
    for key in data:
        if key not in TOP_KEYS:
            errors.append(f"{key}: unknown key{_hint(key, TOP_KEYS)} "
                          f"(known: {', '.join(TOP_KEYS)})")
    rate = data.get("flush_rate_per_s", gateway.outbox.flush_rate_per_s)
    if not _number(rate) or rate <= 0:
        errors.append(f"flush_rate_per_s: must be a number > 0, got {rate!r}")
    sensors_in = data.get("sensors", {})
    out: dict[str, tuple[SensorConfig, bool]] = {s.id: (s, True) for s in gateway.sensors}
    if not isinstance(sensors_in, dict):
        errors.append(f"sensors: must be an object of sensor id -> settings, got {sensors_in!r}")
        sensors_in = {}
    for sid, settings in sensors_in.items():
        where = f"sensors.{sid}"
        if sid not in base:
            errors.append(f"{where}: no such sensor on gateway {gateway.id}"
                          f"{_hint(sid, sorted(base))}")
            continue
        if not isinstance(settings, dict):
            errors.append(f"{where}: must be an object, got {settings!r}")
            continue
        for key in settings:
            if key not in SENSOR_KEYS:
                errors.append(f"{where}.{key}: unknown key{_hint(key, SENSOR_KEYS)} "
                              f"(known: {', '.join(SENSOR_KEYS)})")
        s = base[sid]
        enabled = settings.get("enabled", True)
        if not isinstance(enabled, bool):
            errors.append(f"{where}.enabled: must be true or false, got {enabled!r}")
        interval = settings.get("interval_s", s.interval_s)
        if not _number(interval) or interval <= 0:
            errors.append(f"{where}.interval_s: must be a number > 0, got {interval!r}")
            interval = None
        n = settings.get("window_samples", s.window_samples)
        if not isinstance(n, int) or isinstance(n, bool) or \
                not WINDOW_SAMPLES_MIN <= n <= WINDOW_SAMPLES_MAX:
            errors.append(f"{where}.window_samples: must be an integer in "
                          f"{WINDOW_SAMPLES_MIN}..{WINDOW_SAMPLES_MAX}, got {n!r}")
            n = None
        if interval is not None and n is not None and n / s.fs_hz > interval:
            errors.append(f"{where}.interval_s: must be >= window_samples / fs_hz = "
                          f"{n / s.fs_hz:g} s, got {interval!r}")
        if interval is not None and n is not None and isinstance(enabled, bool):
            out[sid] = (replace(s, interval_s=float(interval), window_samples=int(n)),
                        enabled)
    if errors:
        raise ConfigRejected(errors)
    return RemoteConfig(float(rate), out)
