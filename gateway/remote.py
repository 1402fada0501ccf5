"""Remote configuration: the retained JSON on ``bp/v1/{site}/{gateway}/config``.

An operator publishes (retained, QoS 1)::

    {"flush_rate_per_s": 20,
     "sensors": {"pump3-de": {"interval_s": 5, "window_samples": 16384},
                 "pump3-nde": {"enabled": false}}}

Every key is optional. `sensors` may name only sensors of this gateway's site config;
per sensor, `interval_s` (> 0, at most a day, and >= window_samples / fs_hz),
`window_samples` (16 .. 4194304, and one window must fit the site file's `outbox.max_mb`)
and `enabled` (bool) override the site file. A sensor not named, or a key not given,
keeps its site-file value, so publishing ``{}`` returns to the site file; a site
file without `window_samples` has the default from the sensor's rate and its asset's
`shaft_hz` (`models.window.default_window_samples`), so that is what ``{}`` returns to.

The whole message is validated before anything changes; a message with any error is
rejected as a whole (`ConfigRejected`, every problem with its key path) and the gateway
keeps running on its current settings. The checks are the site file's (`TableReader`),
so a problem reads as in a site-file error (a JSON object is called a "table" there).
Applied without restart: the capture thread of a changed sensor closes its driver and
re-opens it with the new settings; the flush rate changes at once. An empty payload (the
retained message deleted) also means "site file".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ballpass.config import (
    GatewayConfig,
    SensorConfig,
    TableReader,
    burst_fits,
    did_you_mean,
    interval_in_range,
    positive,
    window_fits_outbox,
    window_samples_in_range,
)

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


def _sensor(r: TableReader, s: SensorConfig, max_mb: float) -> tuple[SensorConfig, bool]:
    """One `sensors.{id}` object over the site file's sensor `s` on a gateway whose outbox
    holds `max_mb`; errors go to `r`."""
    enabled = r.get("enabled", bool, True)
    before = len(r.errors)
    interval = r.get("interval_s", float, s.interval_s, check=interval_in_range)
    n = r.get("window_samples", int, s.window_samples,
              check=lambda v: window_samples_in_range(v) or window_fits_outbox(v, max_mb))
    # Only when both are valid: a bad one is already reported, the other is not its fault.
    if len(r.errors) == before:
        burst_fits(r, n, s.fs_hz, interval)
    r.finish()
    reason = s.window_reason if n == s.window_samples else \
        f"window_samples = {n} from the remote config"
    return replace(s, interval_s=interval, window_samples=n, window_reason=reason), enabled


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
    except RecursionError:  # 64 kB of "[[[[…" is enough to reach the parser's limit
        raise ConfigRejected(["payload: JSON nested too deeply"]) from None
    if not isinstance(data, dict):
        # Before the reader: the root has no key path for it to name.
        raise ConfigRejected([f"payload: must be a JSON object, got {type(data).__name__}"])
    errors: list[str] = []
    # The site file's reader: the same key paths and wording as a site-file error. It has
    # no file paths to resolve here, so its base directory is never used.
    root = TableReader(data, "", errors, Path("."))
    rate = root.get("flush_rate_per_s", float, gateway.outbox.flush_rate_per_s, check=positive)
    sensors = root.sub("sensors")
    root.finish()
    out: dict[str, tuple[SensorConfig, bool]] = {s.id: (s, True) for s in gateway.sensors}
    # The keys of `sensors` are sensor ids (data, not a schema): an unknown one gets its
    # own message, and `sensors.finish()` is not called (it would report it again).
    for sid in sensors.table:
        if sid not in base:
            sensors.fail(sid, f"no such sensor on gateway {gateway.id}"
                              f"{did_you_mean(sid, sorted(base))}")
            continue
        out[sid] = _sensor(sensors.sub(sid), base[sid], gateway.outbox.max_mb)
    if errors:
        raise ConfigRejected(errors)
    return RemoteConfig(rate, out)
