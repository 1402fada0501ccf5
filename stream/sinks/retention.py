"""InfluxDB 1.x retention and hourly downsampling, set from `[influx]` (docs/influxdb-schema.md,
"Retention and downsampling").

- Policy `raw` (DEFAULT, `raw_retention_d` days): every point the stream writes, unless
  routed to `long` below.
- Policy `long` (`long_retention_d` days, 0 = forever): the hourly aggregates written by
  one continuous query per downsampled measurement, and the low-volume records an
  engineer needs for years (alerts, actions, events, iso20816), which the writer routes
  there (`LONG_MEASUREMENTS`).

`apply_retention` is idempotent: it creates what is missing, ALTERs a policy whose
duration or default flag differs from the config, and replaces a continuous query whose
text changed (its name ends in a hash of its text, since a CQ cannot be altered). The CQ
and the backfill statement are made by one function (`downsample_select`), so a backfill
computes exactly what the CQ does.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ballpass.log import kv
from ballpass.stream.features import ROW_FIELDS
from ballpass.stream.sinks.influx import InfluxQueryError, query_v1
from ballpass.stream.sinks.influx import quote_ident as ident

if TYPE_CHECKING:
    from ballpass.config import InfluxConfig

log = logging.getLogger(__name__)

RAW_RP = "raw"
LONG_RP = "long"
CQ_PREFIX = "bp_hourly_"

# Low-volume measurements kept as written, in `long`: the alert and action history is an
# audit trail, and `iso20816` is written once per stream start (the dashboards' zone lines
# would vanish with the raw policy otherwise).
LONG_MEASUREMENTS: frozenset[str] = frozenset({"alerts", "actions", "events", "iso20816"})

# Per field, the hourly aggregates: "mean" keeps the field's name (the same queries work
# on both policies); "max"/"min" add `_max`/`_min`. A max where a peak in the hour is the
# symptom (impacts, a line in the envelope spectrum, a velocity excursion), a min where the
# lowest value is the worst (days left to a zone).
_MEAN_MAX = ("mean", "max")
_VIBRATION: dict[str, tuple[str, ...]] = {
    "rms_g": _MEAN_MAX, "peak_g": _MEAN_MAX, "crest": _MEAN_MAX, "kurtosis": _MEAN_MAX,
    "skewness": ("mean",), "velocity_rms_mm_s": _MEAN_MAX, "bpfo_snr_db": _MEAN_MAX,
    "bpfi_snr_db": _MEAN_MAX, "bsf_snr_db": _MEAN_MAX, "ftf_snr_db": _MEAN_MAX,
    "hf_floor": _MEAN_MAX, "x1_g": _MEAN_MAX, "x2_g": _MEAN_MAX,
    "anomaly_score": _MEAN_MAX,
}
assert set(ROW_FIELDS) <= set(_VIBRATION), "a vibration field without an hourly aggregate"

DOWNSAMPLED: dict[str, dict[str, tuple[str, ...]]] = {
    "vibration": _VIBRATION,
    "temperature": {"celsius": ("mean", "max", "min")},
    "diagnosis": {
        "confidence": _MEAN_MAX,
        "days_to_zone_c": ("mean", "min"), "days_to_zone_c_lo": ("min",),
        "days_to_zone_d": ("mean", "min"), "days_to_zone_d_lo": ("min",),
    },
    # Counters and the outbox depth from the gateways' retained status: the hour's peak.
    "gateway": {k: ("max",) for k in ("captured", "queued", "published", "dropped",
                                      "replayed")},
}
"""Measurement -> field -> aggregates written hourly to `long` (strings are not kept)."""

# Windows per hour behind each aggregate row (`seq` is on every vibration point).
_COUNTS = {"vibration": ("seq", "windows")}


def _column(field: str, agg: str) -> str:
    return field if agg == "mean" else f"{field}_{agg}"


def downsample_select(db: str, measurement: str, *, where: str = "",
                      source_rp: str = RAW_RP, target_rp: str = LONG_RP) -> str:
    """The `SELECT … INTO` of `measurement`'s hourly aggregates, tags kept (GROUP BY *).

    `where`: an InfluxQL condition (e.g. a time range for a backfill); "" in a CQ, where
    InfluxDB adds the time range itself.
    """
    fields = DOWNSAMPLED[measurement]
    columns = [f"{agg}({ident(f)}) AS {ident(_column(f, agg))}"
               for f, aggs in fields.items() for agg in aggs]
    if measurement in _COUNTS:
        f, name = _COUNTS[measurement]
        columns.append(f"count({ident(f)}) AS {ident(name)}")
    condition = f" WHERE {where}" if where else ""
    return (f"SELECT {', '.join(columns)} INTO {ident(db)}.{ident(target_rp)}."
            f"{ident(measurement)} FROM {ident(db)}.{ident(source_rp)}.{ident(measurement)}"
            f"{condition} GROUP BY time(1h), *")


def backfill_statement(db: str, measurement: str, start_ns: int, end_ns: int, *,
                       source_rp: str = RAW_RP) -> str:
    """Recompute the hourly aggregates of [start_ns, end_ns) (ns since the epoch) now,
    e.g. after windows replayed later than `hourly_lookback_h`; rewriting an hour
    overwrites its row, so running it twice is harmless. `source_rp="autogen"` migrates
    data written before the policies existed."""
    return downsample_select(db, measurement, source_rp=source_rp,
                             where=f"time >= {int(start_ns)} AND time < {int(end_ns)}")


def cq_name(db: str, measurement: str, lookback_h: int) -> str:
    """`bp_hourly_<measurement>_<hash of the CQ's text>`."""
    digest = hashlib.sha256(_cq_body(db, measurement, lookback_h).encode()).hexdigest()[:8]
    return f"{CQ_PREFIX}{measurement}_{digest}"


def _cq_body(db: str, measurement: str, lookback_h: int, every: str | None = None) -> str:
    resample = []
    if every:
        resample.append(f"EVERY {every}")
    if lookback_h > 1:  # FOR must exceed the GROUP BY interval (1h)
        resample.append(f"FOR {lookback_h}h")
    head = f" RESAMPLE {' '.join(resample)}" if resample else ""
    return f"ON {ident(db)}{head} BEGIN {downsample_select(db, measurement)} END"


def cq_statement(db: str, measurement: str, lookback_h: int, *,
                 every: str | None = None, name: str | None = None) -> str:
    """CREATE CONTINUOUS QUERY for `measurement`: each hour (or each `every`, e.g. "1s"
    in tests), the aggregates of the last `lookback_h` hours."""
    name = name or cq_name(db, measurement, lookback_h)
    return f"CREATE CONTINUOUS QUERY {ident(name)} {_cq_body(db, measurement, lookback_h, every)}"


@dataclass(frozen=True)
class Policy:
    name: str
    days: int  # 0 = forever
    default: bool


def wanted_policies(cfg: InfluxConfig) -> list[Policy]:
    return [Policy(RAW_RP, cfg.raw_retention_d, True),
            Policy(LONG_RP, cfg.long_retention_d, False)]


def _duration_days(text: str) -> float:
    """Days of an InfluxDB duration as SHOW RETENTION POLICIES says it ("2160h0m0s"; "0s" =
    forever)."""
    hours = minutes = seconds = 0.0
    number = ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
            continue
        value, number = float(number or 0), ""
        if ch == "h":
            hours = value
        elif ch == "m":
            minutes = value
        elif ch == "s":
            seconds = value
    return (hours * 3600 + minutes * 60 + seconds) / 86400


def _duration(days: int) -> str:
    return f"{days}d" if days else "INF"


Query = Callable[[str], list[dict[str, Any]]]


def _query_for(cfg: InfluxConfig) -> Query:
    password = cfg.password()

    def q(statement: str) -> list[dict[str, Any]]:
        return query_v1(cfg.url, cfg.db, statement, username=cfg.username,
                        password=password, timeout_s=cfg.timeout_s)
    return q


def apply_retention(cfg: InfluxConfig, query: Query | None = None) -> list[str]:
    """Make the database's policies and continuous queries what `cfg` says; returns one
    line per change made (also logged as `event=influx_retention_set`). The database
    must exist. InfluxQueryError (naming the statement) on failure, e.g. a user without
    admin rights (then set `influx.manage_retention = false` and let the DBA do it)."""
    q = query or _query_for(cfg)
    db = cfg.db
    changes: list[str] = []
    existing = {r["name"]: r for r in q(f"SHOW RETENTION POLICIES ON {ident(db)}")}
    for p in wanted_policies(cfg):
        have = existing.get(p.name)
        default = " DEFAULT" if p.default else ""
        if have is None:
            q(f"CREATE RETENTION POLICY {ident(p.name)} ON {ident(db)} DURATION "
              f"{_duration(p.days)} REPLICATION 1{default}")
            change = dict(action="created", policy=p.name, days=p.days, default=p.default)
        else:
            was = _duration_days(str(have.get("duration", "0s")))
            if abs(was - p.days) < 1e-9 and bool(have.get("default")) == p.default:
                continue
            q(f"ALTER RETENTION POLICY {ident(p.name)} ON {ident(db)} DURATION "
              f"{_duration(p.days)}{default}")
            change = dict(action="altered", policy=p.name, days=p.days, was_days=round(was, 3),
                          default=p.default)
        log.info(kv("influx_retention_set", db=db, **change))
        changes.append(" ".join(f"{k}={v}" for k, v in change.items()))

    cqs = [r for r in q("SHOW CONTINUOUS QUERIES") if r.get("_measurement") == db]
    have_names = {str(r["name"]) for r in cqs}
    for measurement in DOWNSAMPLED:
        name = cq_name(db, measurement, cfg.hourly_lookback_h)
        stale = sorted(n for n in have_names
                       if n.startswith(f"{CQ_PREFIX}{measurement}_") and n != name)
        for old in stale:
            q(f"DROP CONTINUOUS QUERY {ident(old)} ON {ident(db)}")
            log.info(kv("influx_retention_set", db=db, action="cq_dropped", cq=old))
            changes.append(f"action=cq_dropped cq={old}")
        if name in have_names:
            continue
        try:
            q(cq_statement(db, measurement, cfg.hourly_lookback_h))
        except InfluxQueryError as e:
            # Another stream process (cluster workers) created it meanwhile: same name,
            # same text.
            if "already exists" not in str(e):
                raise
            continue
        log.info(kv("influx_retention_set", db=db, action="cq_created", cq=name,
                    measurement=measurement, lookback_h=cfg.hourly_lookback_h))
        changes.append(f"action=cq_created cq={name}")
    return changes


def statements(cfg: InfluxConfig) -> list[str]:
    """What `apply_retention` would create on an empty database, for a DBA who runs it by
    hand (`influx.manage_retention = false`)."""
    out = []
    for p in wanted_policies(cfg):
        out.append(f"CREATE RETENTION POLICY {ident(p.name)} ON {ident(cfg.db)} DURATION "
                   f"{_duration(p.days)} REPLICATION 1{' DEFAULT' if p.default else ''}")
    out += [cq_statement(cfg.db, m, cfg.hourly_lookback_h) for m in DOWNSAMPLED]
    return out


DAY_NS = 86400 * 10**9


def backfill(cfg: InfluxConfig, start_ns: int, end_ns: int, *, source_rp: str = RAW_RP,
             query: Query | None = None) -> dict[str, int]:
    """Recompute the hourly aggregates of [start_ns, end_ns), widened to whole hours, one
    day per statement (bounded memory in influxd); returns rows written per measurement.
    InfluxQueryError on failure."""
    q = query or _query_for(cfg)
    hour = 3600 * 10**9
    start, end = start_ns // hour * hour, -(-end_ns // hour) * hour
    written = dict.fromkeys(DOWNSAMPLED, 0)
    for m in DOWNSAMPLED:
        for t in range(start, end, DAY_NS):
            rows = q(backfill_statement(cfg.db, m, t, min(t + DAY_NS, end),
                                        source_rp=source_rp))
            written[m] += sum(int(r.get("written") or 0) for r in rows)
    log.info(kv("influx_backfilled", db=cfg.db, source_rp=source_rp, start_ns=start,
                end_ns=end, **written))
    return written


def routes() -> Mapping[str, str]:
    """Measurement -> retention policy for the writer once the policies exist."""
    return {m: LONG_RP for m in sorted(LONG_MEASUREMENTS)}


def has_long_policy(cfg: InfluxConfig, query: Query | None = None) -> bool:
    """Whether the database has the `long` policy (a read: for policies made by a DBA,
    `manage_retention = false`). InfluxQueryError on failure."""
    q = query or _query_for(cfg)
    return any(r.get("name") == LONG_RP for r in q(f"SHOW RETENTION POLICIES ON {ident(cfg.db)}"))
