"""The site configuration: one TOML file, parsed once into frozen dataclasses.

Every error is collected with its key path and the bad value, e.g.
``gateway[0].sensor[2].fs_hz: must be > 0, got -5``, and raised together as one
`ConfigError`; the CLI prints them and exits 2. The rest of the code trusts the result.
See docs/config.md for every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ballpass import wire
from ballpass.credentials import expand_or_fail
from ballpass.listen import parse_listen
from ballpass.models import iso20816
from ballpass.models.bearing import BearingGeometry
from ballpass.models.catalog import lookup as lookup_bearing
from ballpass.models.window import MAX_WINDOW_SAMPLES, default_window_samples
from ballpass.topics import valid_id

FAULT_CLASSES = (
    "normal", "outer_race", "inner_race", "ball", "cage", "lubrication", "imbalance",
    "misalignment", "unknown_anomaly", "sensor_fault", "insufficient_data",
)
ASSET_KINDS = ("motor", "gearbox", "pump", "agitator", "fan", "compressor", "other")
ISO_FOUNDATIONS = ("rigid", "flexible")
# Samples per window, for the site file and for remote configs (gateway/remote.py).
WINDOW_SAMPLES_MIN, WINDOW_SAMPLES_MAX = 16, MAX_WINDOW_SAMPLES
# A sensor's capture period, s, for the site file and remote configs: one window a day is
# the sparsest schedule that makes sense, and bounded times keep the gateway's
# arithmetic on them (grids, timeouts) finite.
INTERVAL_S_MAX = 86400.0
# outbox.max_age_h: ten years is "never expire" for a window; the outbox's age cutoff
# (nanoseconds in SQLite's int64) overflows for values about 300 times larger.
OUTBOX_MAX_AGE_H = 87600.0
# outbox.max_mb counts these: the gateway's bound is max_mb × MB bytes.
MB = 1024 * 1024


class ConfigError(ValueError):
    """One or more configuration errors, each `path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class SiteConfig:
    id: str
    name: str = ""


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = 30

    def password(self) -> str | None:
        return _read_secret(self.password_file)


@dataclass(frozen=True)
class InfluxConfig:
    """`[influx]`. Retention (v1 only, docs/influxdb-schema.md "Retention"): with
    `manage_retention` the stream keeps windows' points `raw_retention_d` days in policy
    `raw` and hourly aggregates (plus alerts, actions, events) `long_retention_d` days in
    `long` (0 = forever); the hourly continuous queries recompute the last
    `hourly_lookback_h` hours each hour, so late (replayed) windows are counted."""

    api: str = "v1"
    url: str = "http://127.0.0.1:8086"
    db: str = "ballpass"
    bucket: str = "ballpass"
    org: str = "ballpass"
    token_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    timeout_s: float = 10.0
    manage_retention: bool = True
    raw_retention_d: int = 90
    long_retention_d: int = 3650
    hourly_lookback_h: int = 2

    def token(self) -> str | None:
        return _read_secret(self.token_file)

    def password(self) -> str | None:
        return _read_secret(self.password_file)


@dataclass(frozen=True)
class AlertPolicy:
    """Hysteresis: enter alarm when `enter_k` of the last `window_n` windows are faults,
    leave it when at most `leave_m` of the last `window_n` are."""

    enter_k: int = 3
    leave_m: int = 1
    window_n: int = 5


@dataclass(frozen=True)
class OnlinePolicy:
    """Online models of an asset's sensors (docs/online-models.md). The learning phase
    lasts until both `learn_hours` of operation and `learn_windows` windows have passed;
    the anomaly score is then `unknown_anomaly` when >= `anomaly_threshold` in
    `anomaly_k` of the last `anomaly_n` windows. Trend: medians per `trend_bucket_s` s,
    slope over the last `trend_points` of them, none before `trend_min_points`.
    `trend_calibration`: the model-error table that corrects `days_to_zone_c`/`_d` (a
    JSON file, `stream/online/trend.py`); None = the one shipped, learned on simulated
    fleets."""

    learn_hours: float = 24.0
    learn_windows: int = 2000
    speed_band_pct: float = 10.0
    band_min_windows: int = 30
    anomaly_threshold: float = 0.999
    anomaly_k: int = 3
    anomaly_n: int = 5
    trend_bucket_s: float = 3600.0
    trend_points: int = 24
    trend_min_points: int = 6
    trend_calibration: Path | None = None


@dataclass(frozen=True)
class StreamConfig:
    state_dir: Path = Path("state")
    client_id: str = "ballpass-stream"
    username: str | None = None
    password_file: Path | None = None
    batch_max: int = 16
    batch_wait_s: float = 0.2
    alert: AlertPolicy = field(default_factory=AlertPolicy)
    online_save_s: float = 300.0  # period of the online models' state files (s)
    http: str | None = None  # evidence page "HOST:PORT" (docs/evidence-page.md); None = off
    http_token_file: Path | None = None
    # Addresses of reverse proxies in front of the evidence page: every browser behind one
    # shares its address, so its connections are not held to the per-address limit.
    http_proxies: tuple[str, ...] = ()
    public_url: str | None = None  # base URL of the evidence page in alert messages
    # Window history (stream/history.py): one window per sensor every interval (0: only at
    # alert transitions), bounded by total size (MB) and age (days).
    history_interval_s: float = 3600.0
    history_max_mb: float = 200.0
    history_max_age_d: float = 30.0
    spool_max_mb: float = 500.0  # points the database refused, kept for an operator

    def password(self) -> str | None:
        return _read_secret(self.password_file)


LEVEL_KEYS: tuple[str, ...] = ("velocity_warning_mm_s", "velocity_alert_mm_s",
                               "velocity_danger_mm_s", "line_snr_db", "strong_line_snr_db")
"""An asset's own alert and danger levels in `[[asset]]` (docs/config.md "Levels"). The
velocity ones are the ISO 20816-3 zone boundaries A/B (warning), B/C (alert) and C/D
(danger); the SNR ones the envelope line thresholds of the diagnosis."""

SOURCE_CONFIG = "config"
SOURCE_DEFAULT_SNR = "default"


@dataclass(frozen=True)
class LevelOverrides:
    """The levels an `[[asset]]` sets itself (None: the default). mm/s and dB."""

    velocity_warning_mm_s: float | None = None
    velocity_alert_mm_s: float | None = None
    velocity_danger_mm_s: float | None = None
    line_snr_db: float | None = None
    strong_line_snr_db: float | None = None


@dataclass(frozen=True)
class Level:
    """One effective level: its value (mm/s or dB) and where it comes from ("config",
    "ISO 20816-3 group 2 rigid", "default")."""

    value: float
    source: str


@dataclass(frozen=True)
class AssetLevels:
    """The effective alert and danger levels of one asset: velocity r.m.s. zone
    boundaries in mm/s (warning A/B, alert B/C, danger C/D) and the envelope line SNR
    thresholds in dB (a line is present at `line_snr`, evidence on its own at
    `strong_line_snr`). What the diagnosis, the online models' zone projections, the
    `iso20816` points and the evidence page use for this asset."""

    warning: Level
    alert: Level
    danger: Level
    line_snr: Level
    strong_line_snr: Level

    @property
    def zone_boundaries_mm_s(self) -> tuple[float, float, float]:
        """(A/B, B/C, C/D) in mm/s."""
        return (self.warning.value, self.alert.value, self.danger.value)

    @property
    def line_snr_db(self) -> float:
        return self.line_snr.value

    @property
    def strong_line_snr_db(self) -> float:
        return self.strong_line_snr.value

    def by_key(self) -> dict[str, Level]:
        """Every level by its `[[asset]]` key (`LEVEL_KEYS` order)."""
        return dict(zip(LEVEL_KEYS, (self.warning, self.alert, self.danger, self.line_snr,
                                     self.strong_line_snr), strict=True))


def effective_levels(group: int, foundation: str, given: LevelOverrides) -> AssetLevels:
    """An asset's levels: each one `given` in its config, else the ISO 20816-3 boundary of
    its machine `group` and `foundation`, and the diagnosis' default line thresholds.
    Raises ValueError for an unknown group/foundation."""
    # Imported here: the line thresholds have one home, the stream's constants module (no
    # imports of its own, so a gateway loading its config stays light).
    from ballpass.stream import thresholds as th

    iso = iso20816.boundaries(group, foundation)
    where = iso20816.describe(group, foundation)

    def pick(value: float | None, default: float, source: str) -> Level:
        return Level(default, source) if value is None else Level(value, SOURCE_CONFIG)

    return AssetLevels(
        pick(given.velocity_warning_mm_s, iso[0], where),
        pick(given.velocity_alert_mm_s, iso[1], where),
        pick(given.velocity_danger_mm_s, iso[2], where),
        pick(given.line_snr_db, th.LINE_SNR_DB, SOURCE_DEFAULT_SNR),
        pick(given.strong_line_snr_db, th.STRONG_LINE_SNR_DB, SOURCE_DEFAULT_SNR),
    )


@dataclass(frozen=True)
class AssetConfig:
    """A machine. `shaft_hz` is the nominal running speed in Hz (None: estimated).
    `level_overrides`: its own alert and danger levels; `levels` the effective ones."""

    id: str
    kind: str
    bearing: BearingGeometry
    shaft_hz: float | None = None
    tacho_sensor: str | None = None
    iso_group: int = 2
    iso_foundation: str = "rigid"
    online: OnlinePolicy = field(default_factory=OnlinePolicy)
    alert: AlertPolicy | None = None  # None: the stream's [stream.alert]
    level_overrides: LevelOverrides = field(default_factory=LevelOverrides)

    @functools.cached_property
    def levels(self) -> AssetLevels:
        """The effective levels (`effective_levels`), computed once per asset."""
        return effective_levels(self.iso_group, self.iso_foundation, self.level_overrides)


@dataclass(frozen=True)
class SensorConfig:
    """One sensor on a gateway. `fs_hz` in Hz; a burst of `window_samples` every `interval_s`."""

    id: str
    driver: str
    asset: str
    fs_hz: float
    window_samples: int
    interval_s: float
    kind: str = "acceleration"
    options: dict[str, Any] = field(default_factory=dict)
    window_reason: str = ""  # why window_samples has its value (given, or the default's rule)


@dataclass(frozen=True)
class OutboxConfig:
    path: Path | None = None
    max_mb: float = 512.0
    max_age_h: float = 168.0
    flush_rate_per_s: float = 50.0


@dataclass(frozen=True)
class GatewayConfig:
    id: str
    sensors: tuple[SensorConfig, ...]
    username: str | None = None
    password_file: Path | None = None
    outbox: OutboxConfig = field(default_factory=OutboxConfig)

    def password(self) -> str | None:
        return _read_secret(self.password_file)


WEBHOOK_FORMATS = ("json", "slack", "teams", "pagerduty", "alertmanager")
WEBHOOK_EVENTS = ("firing", "resolved", "instrument_firing", "instrument_resolved")
"""Machine alarms fire and resolve; an instrument alert says a sensor needs maintenance."""


@dataclass(frozen=True)
class WebhookConfig:
    """One alert route (docs/alerting.md). Times in s; `rate_limit_per_min` messages/min."""

    url: str
    events: tuple[str, ...] = WEBHOOK_EVENTS
    timeout_s: float = 5.0
    retries: int = 3
    format: str = "json"
    name: str = ""
    secret_file: Path | None = None  # json: HMAC-SHA256 key
    routing_key_file: Path | None = None  # pagerduty: Events API v2 integration key
    group_wait_s: float = 30.0  # slack, teams, alertmanager: alerts of one asset in one message
    rate_limit_per_min: float = 20.0
    backoff_max_s: float = 60.0

    def secret(self) -> str | None:
        return _read_secret(self.secret_file)

    def routing_key(self) -> str | None:
        return _read_secret(self.routing_key_file)


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]`: stream workers on a NATS JetStream cluster (docs/scale-out.md).

    `partitions` must equal the servers' subject mapping (ballpass.nats_server); a
    worker's lease on a partition lapses `lease_s` seconds after its last renewal.
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    username: str | None = None
    password_file: Path | None = None
    partitions: int = 16
    replicas: int = 3
    worker_id: str = ""  # "": hostname-pid
    lease_s: float = 5.0
    window_retention_h: float = 168.0  # windows kept in the stream after processing (h)
    # JetStream domains of plants' leaf nodes whose streams this cluster takes windows
    # from; their own `ballpass relay` relays from their mosquitto, so workers do not.
    edges: tuple[str, ...] = ()

    def password(self) -> str | None:
        return _read_secret(self.password_file)


@dataclass(frozen=True)
class Config:
    site: SiteConfig
    broker: BrokerConfig
    influx: InfluxConfig
    stream: StreamConfig
    assets: tuple[AssetConfig, ...]
    gateways: tuple[GatewayConfig, ...]
    webhooks: tuple[WebhookConfig, ...]
    source: Path | None = None
    cluster: ClusterConfig | None = None  # None: no [cluster] section (mosquitto + one process)

    def asset(self, asset_id: str) -> AssetConfig:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise KeyError(asset_id)

    def gateway(self, gateway_id: str) -> GatewayConfig:
        for g in self.gateways:
            if g.id == gateway_id:
                return g
        known = ", ".join(g.id for g in self.gateways)
        raise ConfigError([f"gateway: no gateway {gateway_id!r} in the config (known: {known})"])

    def sensor_index(self) -> dict[str, tuple[GatewayConfig, SensorConfig]]:
        """Every sensor by id, with its gateway."""
        return {s.id: (g, s) for g in self.gateways for s in g.sensors}


def _read_secret(path: Path | None) -> str | None:
    """The secret in `path`, stripped. ConfigError naming the file when it cannot be read
    (missing, a directory, not UTF-8): the services exit 2 instead of a traceback. The
    load checks the files that exist already (`TableReader.secret_path`)."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: must be a readable UTF-8 file ({_why(e)})"]) from None


def _why(e: OSError | UnicodeDecodeError | ValueError) -> str:
    """The reason of a failed file read, without the path (the caller names it)."""
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {e.start})"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return str(e)


def _defaults(cls: type) -> dict[str, Any]:
    """The field defaults of dataclass `cls`: the one place a default is written."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# --- parsing -------------------------------------------------------------------------


class TableReader:
    """Reads one TOML table, recording errors against the table's key path."""

    def __init__(self, table: Any, path: str, errors: list[str], base: Path) -> None:
        self.path = path
        self.errors = errors
        self.base = base
        self.used: set[str] = set()
        if not isinstance(table, dict):
            self.fail("", f"must be a table, got {table!r}")
            table = {}
        self.table: dict[str, Any] = table

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> None:
        where = self.key(name) if name else self.path
        self.errors.append(f"{where}: {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False, check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(name)
        if name not in self.table:
            if required:
                self.fail(name, "is required")
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML ints are acceptable where a float is asked for; bools are not numbers here.
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # JSON (remote config) allows integers of any size
                self.fail(name, f"must be a number, got an integer of {len(str(value))} digits")
                return default
        if isinstance(value, bool) and bool not in kinds:
            self.fail(name, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if not isinstance(value, kinds):
            self.fail(name, f"must be {_kind_name(kinds)}, got {value!r}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(name, f"{problem}, got {value!r}")
                return default
        return value

    def path_value(self, name: str, default: Path | None = None,
                   directory: bool = False) -> Path | None:
        """A path (relative to the config file, `~` expanded). An error when it holds a
        NUL byte, names an unknown ~user, or exists as the wrong kind (a directory where
        a file is meant, or with `directory`, a file); a missing one is fine here (it may
        be on another host, or created later)."""
        value = self.get(name, str)
        if value is None:
            return None if default is None else self._resolve(default)
        # systemd credentials: "credential:NAME", "${CREDENTIALS_DIRECTORY}/..."
        value = expand_or_fail(value, lambda m: self.fail(name, m))
        if value is None:
            return None
        if "\0" in value:
            self.fail(name, f"must be a path without NUL bytes, got {value!r}")
            return None
        try:
            p = self._resolve(Path(value))
        except RuntimeError:  # pathlib: "Could not determine home directory"
            self.fail(name, f"must be a path whose ~user exists, got {value!r}")
            return None
        try:
            if directory and p.exists() and not p.is_dir():
                self.fail(name, f"must be a directory, got a file {value!r}")
                return None
            if not directory and p.is_dir():
                self.fail(name, f"must be a file, got a directory {value!r}")
                return None
        except OSError as e:  # e.g. a name longer than the system allows
            self.fail(name, f"must be a usable path ({_why(e)}), got {value!r}")
            return None
        return p

    def _resolve(self, p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else self.base / p

    def secret_path(self, name: str) -> Path | None:
        """A `*_file` key naming a secret: `path_value`, and when the file exists it must
        be readable UTF-8 (what the service will read). A missing file is not an error
        here: a site file lists every host's secrets and each host has only its own; the
        service that needs it exits 2 naming it."""
        p = self.path_value(name)
        if p is None:
            return None
        try:
            p.read_text(encoding="utf-8")
        except FileNotFoundError:
            pass
        except PermissionError:
            pass  # another user's secret (check-config run by an operator): the service reads it
        except (OSError, UnicodeDecodeError) as e:
            self.fail(name, f"must be a readable UTF-8 file ({_why(e)}), got {str(p)!r}")
            return None
        return p

    def tables(self, name: str) -> list[TableReader]:
        self.used.add(name)
        value = self.table.get(name, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            self.fail(name, f"must be an array of tables, got {value!r}")
            return []
        return [TableReader(v, f"{self.key(name)}[{i}]", self.errors, self.base)
                for i, v in enumerate(value)]

    def sub(self, name: str) -> TableReader:
        self.used.add(name)
        return TableReader(self.table.get(name, {}), self.key(name), self.errors, self.base)

    def finish(self) -> None:
        """Report keys nobody asked for, with the closest known key as a hint."""
        for name in self.table:
            if name not in self.used:
                self.fail(name, f"unknown key{did_you_mean(name, sorted(self.used))}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The hint "; did you mean 'x'?" with the known name closest to `name` ("" if none)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "must be > 0"


def window_samples_in_range(v: int) -> str | None:
    return None if WINDOW_SAMPLES_MIN <= v <= WINDOW_SAMPLES_MAX \
        else f"must be in {WINDOW_SAMPLES_MIN}..{WINDOW_SAMPLES_MAX}"


def positive_at_most(hi: float, meaning: str) -> Callable[[float], str | None]:
    """`0 < v <= hi`, said as "must be > 0 and <= hi (meaning)"."""
    def check(v: float) -> str | None:
        return None if 0 < v <= hi else f"must be > 0 and <= {hi:g} ({meaning})"
    return check


interval_in_range = positive_at_most(INTERVAL_S_MAX, "one day")


def window_bytes(n: int) -> int:
    """The largest outbox payload of one window of `n` samples: what the gateway encodes
    (`wire.encode`, float32) with the most channels a driver may give, and the header."""
    return wire.HEADER_SIZE + wire.MAX_CHANNELS * 4 * n


def window_fits_outbox(n: int, max_mb: float) -> str | None:
    """Why a window of `n` samples cannot be stored in an outbox of `max_mb`, or None.
    The outbox refuses a window larger than its bound (it would have to drop the whole
    backlog for it and still be over the bound)."""
    size = window_bytes(n)
    if size <= max_mb * MB:
        return None
    return (f"a window of {n} samples is up to {size} bytes ({wire.MAX_CHANNELS} float32 "
            f"channels + {wire.HEADER_SIZE}-byte header), more than outbox.max_mb = "
            f"{max_mb:g} ({int(max_mb * MB)} bytes) holds")


def burst_fits(r: TableReader, n: int, fs_hz: float, interval_s: float) -> bool:
    """A burst of `n` samples at `fs_hz` must fit in `interval_s`; else the error goes to
    `r` under `interval_s` (the site file and the remote config say it alike)."""
    if n / fs_hz <= interval_s:
        return True
    r.fail("interval_s", f"must be >= window_samples / fs_hz = {n / fs_hz:g} s, "
           f"got {interval_s!r}")
    return False


def _finite_positive(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "must be finite and > 0"


def _non_negative(v: float) -> str | None:
    return None if math.isfinite(v) and v >= 0 else "must be >= 0"


def _an_id(v: str) -> str | None:
    return None if valid_id(v) else "must match [a-z0-9][a-z0-9_-]{0,63}"


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        if v in choices:
            return None
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"must be one of {', '.join(choices)}{hint}"
    return check


def _in_range(lo: float, hi: float, *, hi_open: bool = False) -> Callable[[float], str | None]:
    """`lo <= v <= hi` (`< hi` with `hi_open`), said as "must be in [lo, hi]"."""
    def check(v: float) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return check


def _http_url(v: str) -> str | None:
    if not v.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    try:
        parts = urllib.parse.urlsplit(v)
        _ = parts.port  # "host:80x86" raises only here
    except ValueError as e:
        return f"not a URL: {e}"
    return None if parts.hostname else "has no host"


# A request may wait this long at most (a socket timeout of 1e300 s overflows).
_timeout_s = positive_at_most(3600.0, "one hour")


def _database_name(v: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", v)
    return None if ok else "must be letters, digits, _ . - (not starting with . or -)"


def _host_port(v: str) -> str | None:
    try:
        parse_listen(v)
    except ValueError as e:
        return str(e)
    return None


def _ip_addresses(v: list[Any]) -> str | None:
    for address in v:
        try:
            ipaddress.ip_address(address)
        except (TypeError, ValueError):
            return f"each entry must be an IP address (as the page sees it), not {address!r}"
    return None


def _port(v: int) -> str | None:
    return None if 0 < v < 65536 else "must be a TCP port 1-65535"


def _at_least(n: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= n else f"must be >= {n}"


def parse_bearing(r: TableReader) -> BearingGeometry | None:
    name = r.get("bearing", str)
    geometry = r.sub("geometry") if "geometry" in r.table else None
    if name is not None and geometry is not None:
        r.fail("bearing", "give either a catalog name or a geometry table, not both")
        return None
    if name is not None:
        try:
            return lookup_bearing(name)
        except KeyError as e:
            r.fail("bearing", str(e.args[0]))
            return None
    if geometry is None:
        r.fail("bearing", "is required (a catalog name such as \"SKF 6205\" or a geometry table)")
        return None
    n = geometry.get("n_elements", int, required=True, check=_at_least(3))
    d = geometry.get("element_diameter", float, required=True, check=positive)
    pd = geometry.get("pitch_diameter", float, required=True, check=positive)
    angle = geometry.get("contact_angle_deg", float, BearingGeometry.contact_angle_deg,
                         check=_in_range(0, 90, hi_open=True))
    geometry.finish()
    if None in (n, d, pd, angle):
        return None
    try:
        return BearingGeometry(n, d, pd, angle, name=r.key("geometry"))
    except ValueError as e:
        geometry.fail("", str(e))
        return None


def _parse_asset(r: TableReader) -> AssetConfig | None:
    d = _defaults(AssetConfig)
    asset_id = r.get("id", str, required=True, check=_an_id)
    # `kind` has no field default (an AssetConfig is always given one); "other" is the
    # site file's.
    kind = r.get("kind", str, "other", check=one_of(*ASSET_KINDS))
    shaft_hz = r.get("shaft_hz", float, d["shaft_hz"], check=positive)
    tacho = r.get("tacho_sensor", str, d["tacho_sensor"], check=_an_id)
    group = r.get("iso_group", int, d["iso_group"],
                  check=lambda v: None if v in (1, 2) else "must be 1 or 2")
    foundation = r.get("iso_foundation", str, d["iso_foundation"],
                       check=one_of(*ISO_FOUNDATIONS))
    bearing = parse_bearing(r)
    online = _parse_online(r.sub("online")) if "online" in r.table else d["online"]
    alert = _parse_alert_policy(r.sub("alert")) if "alert" in r.table else d["alert"]
    overrides = _parse_levels(r, group, foundation)
    r.finish()
    if asset_id is None or bearing is None:
        return None
    return AssetConfig(asset_id, kind, bearing, shaft_hz, tacho, group, foundation,
                       online, alert, overrides)


def _parse_levels(r: TableReader, group: int, foundation: str) -> LevelOverrides:
    """The asset's own levels (`LEVEL_KEYS`), each finite and > 0, checked together with
    the defaults they replace: warning < alert < danger (mm/s) and line_snr_db <=
    strong_line_snr_db (dB). A broken order is reported at a key the asset set."""
    given = LevelOverrides(**{k: r.get(k, float, check=_finite_positive) for k in LEVEL_KEYS})
    if all(v is None for v in dataclasses.astuple(given)):
        return given
    levels = effective_levels(group, foundation, given).by_key()
    set_keys = {k for k in LEVEL_KEYS if getattr(given, k) is not None}
    pairs = (("velocity_warning_mm_s", "velocity_alert_mm_s", "<"),
             ("velocity_alert_mm_s", "velocity_danger_mm_s", "<"),
             ("line_snr_db", "strong_line_snr_db", "<="))
    for lo, hi, op in pairs:
        a, b = levels[lo], levels[hi]
        if (a.value < b.value) if op == "<" else (a.value <= b.value):
            continue
        # Blame the key the asset set: the upper one when both are its own.
        key, other, rel = (hi, lo, ">" if op == "<" else ">=") if hi in set_keys \
            else (lo, hi, op)
        o = levels[other]
        r.fail(key, f"must be {rel} {other} = {o.value:g} ({o.source}), "
               f"got {getattr(given, key)!r}")
    return given


def _parse_online(o: TableReader) -> OnlinePolicy:
    d = OnlinePolicy()
    p = OnlinePolicy(
        learn_hours=o.get("learn_hours", float, d.learn_hours, check=_non_negative),
        learn_windows=o.get("learn_windows", int, d.learn_windows, check=_at_least(50)),
        speed_band_pct=o.get("speed_band_pct", float, d.speed_band_pct, check=positive),
        band_min_windows=o.get("band_min_windows", int, d.band_min_windows,
                               check=_at_least(10)),
        anomaly_threshold=o.get("anomaly_threshold", float, d.anomaly_threshold,
                                check=_in_range(0.5, 1, hi_open=True)),
        anomaly_k=o.get("anomaly_k", int, d.anomaly_k, check=_at_least(1)),
        anomaly_n=o.get("anomaly_n", int, d.anomaly_n, check=_at_least(1)),
        trend_bucket_s=o.get("trend_bucket_s", float, d.trend_bucket_s, check=positive),
        trend_points=o.get("trend_points", int, d.trend_points, check=_at_least(3)),
        trend_min_points=o.get("trend_min_points", int, d.trend_min_points,
                               check=_at_least(3)),
        trend_calibration=_trend_calibration(o),
    )
    o.finish()
    if p.anomaly_k > p.anomaly_n:
        o.fail("anomaly_k", f"must be <= anomaly_n = {p.anomaly_n}, got {p.anomaly_k}")
    if p.trend_min_points > p.trend_points:
        o.fail("trend_min_points", f"must be <= trend_points = {p.trend_points}, "
               f"got {p.trend_min_points}")
    return p


def _trend_calibration(o: TableReader) -> Path | None:
    """The `trend_calibration` path, its file read and validated now (a bad table is a
    config error, not a crash of the stream later)."""
    path = o.path_value("trend_calibration")
    if path is None:
        return None
    try:
        # Imported here: the stream's modules import this one. An install without the
        # stream's dependencies (a gateway) does not use the table and cannot check it.
        from ballpass.stream.online.trend import CalibrationError, load_calibration
    except ImportError:
        return path
    try:
        load_calibration(path)
    except CalibrationError as e:
        o.fail("trend_calibration", str(e))
        return None
    return path


def _parse_alert_policy(a: TableReader) -> AlertPolicy:
    """An `alert` table ([stream.alert] or an asset's); checked as a whole."""
    d = AlertPolicy()
    policy = AlertPolicy(
        enter_k=a.get("enter_k", int, d.enter_k, check=_at_least(1)),
        leave_m=a.get("leave_m", int, d.leave_m, check=_at_least(0)),
        window_n=a.get("window_n", int, d.window_n, check=_at_least(1)),
    )
    a.finish()
    if policy.enter_k > policy.window_n or policy.leave_m >= policy.enter_k:
        a.fail("", "need leave_m < enter_k <= window_n, got "
               f"leave_m={policy.leave_m} enter_k={policy.enter_k} window_n={policy.window_n}")
    return policy


def _parse_sensor(r: TableReader, assets: dict[str, float | None]) -> SensorConfig | None:
    sensor_id = r.get("id", str, required=True, check=_an_id)
    driver = r.get("driver", str, required=True)
    asset = r.get("asset", str, required=True)
    if asset is not None and asset not in assets:
        r.fail("asset", f"no [[asset]] with this id{did_you_mean(asset, sorted(assets))}, "
               f"got {asset!r}")
        asset = None
    fs_hz = r.get("fs_hz", float, required=True, check=positive)
    n = r.get("window_samples", int, check=window_samples_in_range)
    interval = r.get("interval_s", float, required=True, check=interval_in_range)
    d = _defaults(SensorConfig)
    kind = r.get("kind", str, d["kind"], check=one_of("acceleration", "temperature"))
    options = r.get("options", dict, d["options"])
    r.finish()
    reason = f"window_samples = {n} given" if n is not None else ""
    if n is None and "window_samples" not in r.table and asset is not None \
            and fs_hz is not None:
        # The default follows from the rate and the asset's speed (models/window.py).
        shaft = assets[asset]
        if kind == "acceleration" and shaft is not None:
            n, reason = default_window_samples(fs_hz, shaft)
            reason = "default " + reason
        else:
            r.fail("window_samples", "is required" + (
                f" (asset {asset} has no shaft_hz, from which the default follows)"
                if kind == "acceleration" else " for a temperature sensor"))
    if None in (sensor_id, driver, asset, fs_hz, n, interval):
        return None
    assert n is not None  # just checked (`None in` does not narrow)
    if not burst_fits(r, n, fs_hz, interval):
        return None
    return SensorConfig(sensor_id, driver, asset, fs_hz, n, interval, kind, dict(options),
                        reason)


def _parse_gateway(r: TableReader, assets: dict[str, float | None]) -> GatewayConfig | None:
    gateway_id = r.get("id", str, required=True, check=_an_id)
    username = r.get("username", str)
    password_file = r.secret_path("password_file")
    o = r.sub("outbox")
    d = OutboxConfig()
    outbox = OutboxConfig(
        path=o.path_value("path"),
        max_mb=o.get("max_mb", float, d.max_mb, check=positive),
        max_age_h=o.get("max_age_h", float, d.max_age_h,
                        check=positive_at_most(OUTBOX_MAX_AGE_H, "ten years")),
        flush_rate_per_s=o.get("flush_rate_per_s", float, d.flush_rate_per_s, check=positive),
    )
    o.finish()
    sensors = [_parse_sensor(s, assets) for s in r.tables("sensor")]
    # `sensor = []` too: a gateway with nothing to capture cannot run (it would crash at
    # start, exit 1, and be restarted by systemd for ever). A `sensor` that is not an
    # array of tables has had its own error from `tables`.
    if not sensors and isinstance(r.table.get("sensor", []), list):
        r.fail("sensor", "at least one [[gateway.sensor]] is required")
    for s in sensors:
        if s is not None and (problem := window_fits_outbox(s.window_samples, outbox.max_mb)):
            o.fail("max_mb", f"must hold one window of sensor {s.id}: {problem}")
    r.finish()
    if gateway_id is None or None in sensors:
        return None
    return GatewayConfig(gateway_id, tuple(s for s in sensors if s), username,
                         password_file, outbox)


def parse(data: dict[str, Any], base: Path = Path("."), *, drivers: bool = True) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base`.

    `drivers`: also check each sensor's driver name and options against the installed
    drivers (`ballpass.gateway.drivers.validate`); off only where no driver is run and
    a gateway's third-party driver may not be installed (the stream's host).
    """
    errors: list[str] = []
    root = TableReader(data, "", errors, base)

    s = root.sub("site")
    site = SiteConfig(s.get("id", str, required=True, check=_an_id) or "",
                      s.get("name", str, SiteConfig.name))
    s.finish()

    b = root.sub("broker")
    d = BrokerConfig()
    broker = BrokerConfig(
        host=b.get("host", str, d.host),
        port=b.get("port", int, d.port, check=_port),
        tls=b.get("tls", bool, d.tls),
        ca_file=b.path_value("ca_file"),
        cert_file=b.path_value("cert_file"),
        key_file=b.path_value("key_file"),
        username=b.get("username", str),
        password_file=b.secret_path("password_file"),
        # MQTT's keep alive is 16 bits.
        keepalive_s=b.get("keepalive_s", int, d.keepalive_s, check=_in_range(5, 65535)),
    )
    b.finish()

    i = root.sub("influx")
    di = InfluxConfig()
    influx = InfluxConfig(
        api=i.get("api", str, di.api, check=one_of("v1", "v2")),
        url=i.get("url", str, di.url, check=_http_url),
        db=i.get("db", str, di.db, check=_database_name),
        bucket=i.get("bucket", str, di.bucket),
        org=i.get("org", str, di.org),
        token_file=i.secret_path("token_file"),
        username=i.get("username", str),
        password_file=i.secret_path("password_file"),
        timeout_s=i.get("timeout_s", float, di.timeout_s, check=_timeout_s),
        manage_retention=i.get("manage_retention", bool, di.manage_retention),
        raw_retention_d=i.get("raw_retention_d", int, di.raw_retention_d,
                              check=_in_range(1, 100_000)),
        long_retention_d=i.get("long_retention_d", int, di.long_retention_d,
                               check=_in_range(0, 100_000)),
        hourly_lookback_h=i.get("hourly_lookback_h", int, di.hourly_lookback_h,
                                check=_in_range(1, 24 * 31)),
    )
    if 0 < influx.long_retention_d < influx.raw_retention_d:
        # The hourly aggregates would vanish before the windows they summarize.
        i.fail("long_retention_d", f"must be 0 (forever) or >= raw_retention_d = "
               f"{influx.raw_retention_d}, got {influx.long_retention_d}")
    i.finish()

    st = root.sub("stream")
    ds = _defaults(StreamConfig)
    stream = StreamConfig(
        state_dir=st.path_value("state_dir", ds["state_dir"], directory=True)
        or base / ds["state_dir"],
        client_id=st.get("client_id", str, ds["client_id"]),
        username=st.get("username", str),
        password_file=st.secret_path("password_file"),
        batch_max=st.get("batch_max", int, ds["batch_max"], check=_at_least(1)),
        batch_wait_s=st.get("batch_wait_s", float, ds["batch_wait_s"], check=_non_negative),
        alert=_parse_alert_policy(st.sub("alert")),
        online_save_s=st.get("online_save_s", float, ds["online_save_s"], check=positive),
        http=st.get("http", str, check=_host_port),
        http_token_file=st.secret_path("http_token_file"),
        http_proxies=tuple(st.get("http_proxies", list, [], check=_ip_addresses)),
        public_url=st.get("public_url", str, check=_http_url),
        history_interval_s=st.get("history_interval_s", float, ds["history_interval_s"],
                                  check=_non_negative),
        history_max_mb=st.get("history_max_mb", float, ds["history_max_mb"], check=positive),
        history_max_age_d=st.get("history_max_age_d", float, ds["history_max_age_d"],
                                 check=positive),
        spool_max_mb=st.get("spool_max_mb", float, ds["spool_max_mb"], check=positive),
    )
    st.finish()

    asset_readers = root.tables("asset")
    assets = [_parse_asset(r) for r in asset_readers]
    # Ids of assets that failed for another reason still count, so one bad bearing does
    # not also report every sensor on that asset.
    asset_ids = [r.table["id"] for r in asset_readers if isinstance(r.table.get("id"), str)]
    _no_duplicates(root, "asset", asset_ids)
    speeds = {a.id: a.shaft_hz for a in assets if a is not None}
    gateways = [_parse_gateway(r, {aid: speeds.get(aid) for aid in asset_ids})
                for r in root.tables("gateway")]
    _no_duplicates(root, "gateway", [g.id for g in gateways if g])
    _no_duplicates(root, "gateway.sensor",
                   [s.id for g in gateways if g for s in g.sensors])
    for ai, asset in enumerate(assets):
        if asset and asset.tacho_sensor and asset.tacho_sensor not in {
                s.id for g in gateways if g for s in g.sensors}:
            errors.append(f"asset[{ai}].tacho_sensor: no sensor with this id, "
                          f"got {asset.tacho_sensor!r}")

    if drivers:
        _check_drivers(errors, assets, gateways)

    webhooks = [_parse_webhook(r) for r in root.tables("webhook")]
    cluster = _parse_cluster(root.sub("cluster")) if "cluster" in root.table else None

    root.finish()
    if errors:
        raise ConfigError(errors)
    return Config(site, broker, influx, stream, tuple(a for a in assets if a),
                  tuple(g for g in gateways if g), tuple(webhooks), cluster=cluster)


def _nats_urls(v: list[Any]) -> str | None:
    if not v:
        return "must list at least one nats://HOST:PORT"
    for url in v:
        if not isinstance(url, str) or not re.fullmatch(r"(nats|tls)://[^\s/]+:\d+", url):
            return f"each server must be nats://HOST:PORT or tls://HOST:PORT, not {url!r}"
    return None


def _edge_ids(v: list[Any]) -> str | None:
    for edge in v:
        if not isinstance(edge, str) or not valid_id(edge):
            return f"each edge is a JetStream domain matching [a-z0-9][a-z0-9_-]{{0,63}}, " \
                   f"not {edge!r}"
    return None if len(set(v)) == len(v) else "lists an edge twice"


def _parse_cluster(c: TableReader) -> ClusterConfig:
    d = ClusterConfig()
    cluster = ClusterConfig(
        servers=tuple(c.get("servers", list, list(d.servers), check=_nats_urls)),
        username=c.get("username", str),
        password_file=c.secret_path("password_file"),
        partitions=c.get("partitions", int, d.partitions, check=_in_range(1, 1024)),
        replicas=c.get("replicas", int, d.replicas, check=_in_range(1, 5)),
        worker_id=c.get("worker_id", str, d.worker_id, check=lambda v: None if not v else
                        _an_id(v)),
        lease_s=c.get("lease_s", float, d.lease_s, check=_in_range(1.0, 300.0)),
        window_retention_h=c.get("window_retention_h", float, d.window_retention_h,
                                 check=positive),
        edges=tuple(c.get("edges", list, list(d.edges), check=_edge_ids)),
    )
    c.finish()
    return cluster


def _parse_webhook(r: TableReader) -> WebhookConfig:
    d = _defaults(WebhookConfig)
    url = r.get("url", str, required=True, check=_http_url)
    events = r.get("events", list, list(d["events"]))
    is_event = one_of(*WEBHOOK_EVENTS)
    for e in events or ():
        problem = is_event(str(e))
        if problem:
            r.fail("events", f"each {problem}, got {e!r}")
    fmt = r.get("format", str, d["format"], check=one_of(*WEBHOOK_FORMATS))
    hook = WebhookConfig(
        url or "", tuple(events or ()),
        timeout_s=r.get("timeout_s", float, d["timeout_s"], check=_timeout_s),
        retries=r.get("retries", int, d["retries"], check=_at_least(0)),
        format=fmt or d["format"],
        name=r.get("name", str, d["name"]),
        secret_file=r.secret_path("secret_file"),
        routing_key_file=r.secret_path("routing_key_file"),
        group_wait_s=r.get("group_wait_s", float, d["group_wait_s"], check=_non_negative),
        rate_limit_per_min=r.get("rate_limit_per_min", float, d["rate_limit_per_min"],
                                 check=positive),
        backoff_max_s=r.get("backoff_max_s", float, d["backoff_max_s"], check=positive))
    if fmt == "pagerduty" and hook.routing_key_file is None:
        r.fail("routing_key_file", "is required for format = \"pagerduty\"")
    r.finish()
    return hook


def check_drivers(config: Config, skip: Iterable[str] = ()) -> None:
    """ConfigError with every problem of the sensors' drivers and options (as `parse`
    with `drivers=True` reports them); drivers named in `skip` are left out (checked by
    the caller, e.g. `simulate fleet` with a scenario checks the simulated ones)."""
    errors: list[str] = []
    _check_drivers(errors, list(config.assets), list(config.gateways), tuple(skip))
    if errors:
        raise ConfigError(errors)


def _check_drivers(errors: list[str], assets: list[AssetConfig | None],
                   gateways: list[GatewayConfig | None], skip: tuple[str, ...] = ()) -> None:
    """Each sensor's driver name and options, as `gateway[i].sensor[j].KEY: problem`.

    Only for gateways and assets that parsed: a sensor of a broken gateway is reported
    by its own keys already. Imported here: the drivers import this module.
    """
    from ballpass.gateway.drivers import validate

    by_id = {a.id: a for a in assets if a}
    for gi, g in enumerate(gateways):
        if g is None:
            continue
        for si, sensor in enumerate(g.sensors):
            asset = by_id.get(sensor.asset)
            if asset is None or sensor.driver in skip:  # its asset failed: reported there
                continue
            errors.extend(f"gateway[{gi}].sensor[{si}].{e}" for e in validate(sensor, asset))


def _no_duplicates(root: TableReader, what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for x in ids:
        if x in seen:
            root.errors.append(f"{what}: duplicate id {x!r}")
        seen.add(x)


def load(path: str | Path, *, drivers: bool = True) -> Config:
    """Load and validate a site file (`drivers`: see `parse`). Raises ConfigError with
    every problem, the file's own ones (missing, a directory, not UTF-8, not TOML)
    included."""
    path = Path(path)
    data = read_toml(path, "the site file")
    source = path.resolve()
    config = parse(data, base=source.parent, drivers=drivers)
    return dataclasses.replace(config, source=source)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document at `path` (`what` names it in errors: "the site file"). Raises
    ConfigError naming the file when it is missing, a directory, not UTF-8 or not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL in the path
        raise ConfigError([f"{path}: cannot read {what}: {_why(e)}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from e
