"""The gateway runtime: capture threads → outbox → MQTT publisher, until told to stop.

`run` is what `ballpass gateway` calls (the CLI owns signals and turns them into the
`stop` event). Several gateways may run in one process (`ballpass simulate fleet`), so
nothing here touches signals or global state.

This module and everything it imports must stay light: never numba, scipy, river or
influxdb-client (a test checks `sys.modules` in a fresh interpreter).

While running, `run` also applies remote configs from the retained config topic
(`ballpass.gateway.remote`; the result is on the status topic as ``config``) and watches
the wall clock against the monotonic one (the outbox's `ClockWatch`, which re-bases its
rows so their age stays right): a jump of more than `clock.CLOCK_JUMP_S` is logged as
``event=clock_jump`` and shown as the status problem ``clock`` for `CLOCK_PROBLEM_S`.
Capture and publishing go on: the schedule runs on the monotonic clock.

Supervision (`Supervisor`, used by `serve`, i.e. ``ballpass gateway``): the systemd
notify protocol (`ballpass.sdnotify`). ``READY=1`` once the config is loaded, the outbox
open and capture and publisher started; ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``
while the main loop turns and the publisher's network thread is alive and not stuck for
more than `PUBLISHER_STALL_S` (so systemd restarts a hung gateway); ``STATUS=`` lines on
changes (broker connected or not, queued windows, reload results); ``STOPPING=1`` on
stop. A reload request (SIGHUP) sends ``RELOADING=1``, re-reads the site file and applies
what can change while running: broker address and credentials (reconnect at once when
they changed), the sensors' schedule and window settings, their assets, the flush rate
(with the retained remote config still on top). What needs a restart (site id, sensors
added or removed, a sensor's kind, the outbox, TLS on/off) is logged as
``event=config_reload_needs_restart`` and shown as the status problem ``reload``; a new
config that does not load is logged as ``event=config_reload_failed``, shown the same
way, and the old one kept. ``READY=1`` follows in every case; a reload never exits.

Stuck capture: each turn, `_watch_captures` marks a sensor whose capture thread shows no
progress for longer than its `SensorCapture.stuck_after_s` as fault ("capture stuck for N
s"); this does not withhold ``WATCHDOG=1`` (why: at the call). At stop the capture threads
share one join deadline (`CAPTURE_JOIN_MAX_S`).

Metrics (optional, ``--metrics HOST:PORT``): `ballpass.gateway.metrics`, imported only
then (prometheus-client).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ballpass import sdnotify
from ballpass.config import MB, AssetConfig, Config, ConfigError, GatewayConfig, SensorConfig
from ballpass.gateway.clock import ClockWatch
from ballpass.gateway.outbox import Outbox
from ballpass.gateway.publisher import Publisher, PublisherSettings
from ballpass.gateway.remote import ConfigRejected, RemoteConfig, parse_remote
from ballpass.gateway.schedule import (
    STUCK_MARGIN_S,
    DriverFactory,
    SensorCapture,
    default_driver_factory,
)
from ballpass.gateway.status import SENSOR_DISABLED, SENSOR_FAULT, SENSOR_OK, Status
from ballpass.listen import parse_listen
from ballpass.log import kv

log = logging.getLogger(__name__)

CLOCK_PROBLEM_S = 600.0
"""How long (s) a clock jump stays on the status topic as a problem."""
PUBLISHER_STALL_S = 30.0
"""The publisher's network thread not turning for longer than this (s) is a hang: the
watchdog stops (a connect attempt blocks for at most its 5 s timeout, backoff waits tick)."""
MAIN_TICK_S = 0.5
"""The main loop's turn (s) when there is no faster watchdog."""
STUCK_REASON = "capture stuck for"
"""How the reason of a sensor whose capture thread is stuck starts (`_watch_captures`)."""
STATUS_EVERY_S = 5.0
"""At most one ``STATUS=`` line per this many seconds (s) from the main loop."""
CAPTURE_JOIN_MAX_S = 30.0
"""At stop, wait at most this long (s) for the capture threads (one in a long read), all
of them together: one deadline, not one wait per thread, so hung sensors cannot add up.
With the drain (5 s) and the final status (2 s) the stop ends within the unit's
TimeoutStopSec=45, before systemd's SIGKILL would cut the clean DISCONNECT."""


def _no_notify(state: str) -> bool:
    return False


@dataclass
class Supervisor:
    """How `run` talks to a service manager; the defaults do nothing (tests, fleets).

    `notify`: sends one sd_notify datagram (`ballpass.sdnotify.notify`). `watchdog_s`:
    the watchdog timeout, s (None: none). `reload`: set by a SIGHUP handler; `run`
    clears it and reloads with `load_config` (which re-reads the site file).
    """

    notify: Callable[[str], bool] = _no_notify
    watchdog_s: float | None = None
    reload: threading.Event = field(default_factory=threading.Event)
    load_config: Callable[[], Config] | None = None


def outbox_path_for(config: Config, gateway_id: str, override: Path | None = None) -> Path:
    """`override`, else `[gateway.outbox] path`, else ``./outbox-{gateway_id}.sqlite``."""
    if override is not None:
        return Path(override)
    configured = config.gateway(gateway_id).outbox.path
    return configured if configured is not None else Path(f"outbox-{gateway_id}.sqlite")


def _open_outbox(config: Config, gateway: GatewayConfig, path: Path, from_option: bool,
                 clock: ClockWatch | None) -> Outbox:
    """The gateway's outbox at `path`; ConfigError (exit 2) naming the key (or the
    --outbox option) when the path cannot hold one: under a file, not writable, or an
    existing file that is not an SQLite database."""
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        return Outbox(path, max_bytes=int(gateway.outbox.max_mb * MB),
                      max_age_s=gateway.outbox.max_age_h * 3600.0, clock=clock)
    except (OSError, sqlite3.Error) as e:
        index = next(i for i, g in enumerate(config.gateways) if g.id == gateway.id)
        key = "--outbox" if from_option else f"gateway[{index}].outbox.path"
        raise ConfigError([f"{key}: cannot open the outbox {str(path)!r} "
                           f"({type(e).__name__}: {e})"]) from e


def _check_room(box: Outbox, gateway_id: str, status: Status) -> None:
    """Warn (status problem `disk`) when the disk cannot hold `outbox.max_mb`: during a long
    outage the disk would fill first, and windows be lost instead of the oldest dropped."""
    try:
        free = shutil.disk_usage(box.path.parent).free
        # The file and its write-ahead log are room the outbox has (pages it freed stay
        # in the file for it to reuse).
        held = sum(p.stat().st_size for p in (box.path, box.path.with_name(
            box.path.name + "-wal")) if p.exists())
    except OSError as e:
        log.warning(kv("outbox_disk_unknown", gateway=gateway_id, path=box.path, error=e))
        return
    room = free + held
    if box.max_bytes <= room:
        return
    mb = 1024 * 1024
    reason = (f"outbox.max_mb is {box.max_bytes / mb:.0f} MB but the disk has room for "
              f"{room / mb:.0f} MB: a long outage fills the disk, and windows are lost, "
              "before the oldest are dropped for room")
    status.problem("disk", reason)
    log.warning(kv("outbox_larger_than_disk", gateway=gateway_id, path=box.path,
                   max_mb=round(box.max_bytes / mb), room_mb=round(room / mb)))


def _clock_jumps(gateway_id: str, box: Outbox, status: Status) -> bool:
    """Show the wall-clock jumps the outbox followed as the `clock` problem; True if any."""
    try:
        jumps = box.clock_jumps()
    except sqlite3.Error as e:  # disk full: shifted when the disk takes it (next turn)
        log.error(kv("outbox_rebase_failed", gateway=gateway_id, error=e))
        status.problem("clock", f"the wall clock jumped and the outbox cannot follow it "
                       f"yet ({e}); the age bound may drop windows early")
        return True
    for jump_ns, shifted in jumps:
        _clock_jumped(jump_ns, shifted, gateway_id, status)
    return bool(jumps)


def _clock_jumped(jump_ns: int, shifted: int, gateway_id: str, status: Status) -> None:
    # started_at was read from the same wrong clock (1970 on a board without RTC before
    # NTP): shift it too. The publisher builds the will at each connect, so the next one
    # carries it (a will cannot change on a connection that is up).
    status.shift_started_at(jump_ns / 1e9)
    status.problem("clock", f"wall clock jumped {jump_ns / 1e9:+.1f} s at "
                   f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
                   "window times around it may be off")
    log.warning(kv("clock_jump", gateway=gateway_id, jump_s=round(jump_ns / 1e9, 3),
                   rebased_rows=shifted))


def run(config: Config, gateway_id: str, stop: threading.Event, *,
        outbox_path: Path | None = None, status_interval_s: float = 5.0,
        drain_timeout_s: float = 5.0, driver_factory: DriverFactory | None = None,
        ready: threading.Event | None = None, clock: ClockWatch | None = None,
        supervisor: Supervisor | None = None,
        metrics: tuple[str, int] | None = None,
        capture_join_max_s: float = CAPTURE_JOIN_MAX_S,
        capture_stuck_margin_s: float = STUCK_MARGIN_S) -> int:
    """Run one gateway until `stop` is set; returns the exit code (0).

    On stop: capture stops, the outbox is flushed for up to `drain_timeout_s` seconds,
    a final retained status (state offline, final counters) is published, the MQTT
    session is closed cleanly and the outbox file is closed. Windows not flushed stay in
    the outbox for the next start. `driver_factory` replaces the registry lookup
    (tests); `ready` is set once capture and the publisher have started; `clock` replaces
    the wall-clock watch (tests). `supervisor`: systemd notify, watchdog and reload (see
    the module doc). `metrics`: (host, port) of a Prometheus endpoint; a port that cannot
    be bound raises ConfigError (exit 2), as does an outbox path that cannot hold an
    outbox (naming `gateway[N].outbox.path`, or --outbox when `outbox_path` is given).
    `capture_join_max_s`: at stop, the longest wait for all capture threads together, s.
    `capture_stuck_margin_s`: the slack of the stuck-capture bound, s (`_watch_captures`).
    """
    sup = supervisor or Supervisor()
    gateway = config.gateway(gateway_id)
    site = config.site.id
    path = outbox_path_for(config, gateway_id, outbox_path)
    box = _open_outbox(config, gateway, path, outbox_path is not None, clock)
    try:
        status = Status(site, gateway.id, [s.id for s in gateway.sensors], box.counters)
        _check_room(box, gateway.id, status)
        # A window older than two capture periods when it leaves is a replay, not live data.
        slowest = max(s.interval_s for s in gateway.sensors)
        settings = PublisherSettings(flush_rate_per_s=gateway.outbox.flush_rate_per_s,
                                     historical_after_s=max(2.0 * slowest, 1.0),
                                     status_interval_s=status_interval_s)
        capture_stop = threading.Event()
        captures = [
            SensorCapture(s, config.asset(s.asset), site, gateway.id, box, status,
                          capture_stop, driver_factory=driver_factory or default_driver_factory,
                          stuck_margin_s=capture_stuck_margin_s)
            for s in gateway.sensors]
        # Sensors whose capture thread is stuck: id -> the state shown before it was.
        stuck: dict[str, dict[str, str]] = {}
        applied: bytes | None = None
        # The status's config result for the last message received. `refit_failed`: a
        # reload found the applied message no longer fitting the site file, and the status
        # shows that instead until a later reload it fits again.
        received: tuple[str, str] = ("none", "")
        refit_failed = False
        lock = threading.Lock()  # on_config (network thread) vs reload (main thread)
        # The site file's gateway as last (re)loaded: the base the remote config overrides.
        current: dict[str, GatewayConfig] = {"gateway": gateway}

        def apply(remote_sensors: dict[str, tuple[SensorConfig, bool]], rate: float,
                  assets: dict[str, AssetConfig] | None = None) -> None:
            for c in captures:
                if c.sensor.id not in remote_sensors:
                    continue  # removed from the site file: captured as it was until a restart
                new, enabled = remote_sensors[c.sensor.id]
                if (new.kind, new.driver) != (c.sensor.kind, c.sensor.driver):
                    continue  # needs a restart (`_needs_restart` says so): not half-applied
                asset = assets.get(new.asset) if assets else None
                if asset is not None and asset != c.asset:
                    c.asset = asset  # used when the capture thread re-opens its driver
                    c.reconfigure(new, enabled)
                elif (new, enabled) != c.requested:
                    c.reconfigure(new, enabled)
                else:
                    continue
                # Shown at once; the capture thread applies it at its next turn.
                if enabled:
                    status.sensor_ok(c.sensor.id)
                else:
                    status.sensor_disabled(c.sensor.id)
            if rate != publisher.settings.flush_rate_per_s:
                publisher.set_flush_rate(rate)

        def log_applied(remote: RemoteConfig, **extra: str) -> None:
            log.info(kv("config_applied", gateway=gateway.id,
                        flush_rate_per_s=remote.flush_rate_per_s,
                        disabled=",".join(k for k, (_, on) in remote.sensors.items()
                                          if not on) or "-", **extra))

        def on_config(payload: bytes) -> None:
            nonlocal applied, received, refit_failed
            with lock:
                if payload == applied:
                    return  # the retained message again, after a reconnect
                refit_failed = False
                try:
                    remote = parse_remote(payload, current["gateway"])
                except ConfigRejected as e:
                    received = ("rejected", str(e))
                    status.config_result(*received)
                    log.warning(kv("config_rejected", gateway=gateway.id, reason=e))
                    return
                applied = payload
                received = ("applied", "")
                apply(remote.sensors, remote.flush_rate_per_s)
            status.config_result(*received)
            log_applied(remote)

        def reload() -> None:
            """Re-read the site file and apply what can change while running."""
            nonlocal refit_failed
            sup.notify(f"RELOADING=1\nMONOTONIC_USEC={sdnotify.monotonic_usec()}\n"
                       "STATUS=reloading the site config")
            try:
                if sup.load_config is None:
                    raise ConfigError(["reload: no config file to re-read"])
                new = sup.load_config()
                new_gw = new.gateway(gateway.id)
            except (ConfigError, OSError) as e:
                reason = "; ".join(e.errors) if isinstance(e, ConfigError) else str(e)
                status.problem("reload", f"new config not loaded, old one kept: {reason}")
                publisher.request_status()
                log.error(kv("config_reload_failed", gateway=gateway.id, error=reason))
                sup.notify(f"READY=1\nSTATUS=reload failed, old config kept: {reason}"[:900])
                return
            restart = _needs_restart(config, gateway, new, new_gw)
            try:
                reconnect = publisher.reconfigure(new.broker, new_gw.username or new_gw.id,
                                                  new_gw.password)
            except ValueError as e:
                restart.append(str(e))
                reconnect = False
            with lock:
                current["gateway"] = new_gw
                base = {s.id: s for s in new_gw.sensors}
                try:
                    remote = parse_remote(applied or b"", new_gw)
                    sensors, rate = remote.sensors, remote.flush_rate_per_s
                except ConfigRejected as e:
                    # The retained remote config does not fit the new site file: site file.
                    refit_failed = True
                    status.config_result("rejected", f"after reload: {e}")
                    log.warning(kv("config_rejected", gateway=gateway.id,
                                   reason=f"after reload: {e}"))
                    sensors = {k: (v, True) for k, v in base.items()}
                    rate = new_gw.outbox.flush_rate_per_s
                else:
                    if refit_failed:  # an earlier reload's rejection no longer holds
                        refit_failed = False
                        status.config_result(*received)
                        log_applied(remote, after="reload")
                apply(sensors, rate, {a.id: a for a in new.assets})
            if restart:
                status.problem("reload", "applied, but needs a restart: " + "; ".join(restart))
                log.warning(kv("config_reload_needs_restart", gateway=gateway.id,
                               items="; ".join(restart)))
            else:
                status.problem("reload", None)
            publisher.request_status()
            log.info(kv("config_reloaded", gateway=gateway.id, broker_reconnect=reconnect,
                        needs_restart=len(restart)))
            sup.notify("READY=1\nSTATUS=config reloaded" +
                       (f"; needs a restart: {'; '.join(restart)}"[:800] if restart else ""))

        publisher = Publisher(config.broker, site, gateway.id, box, status,
                              username=gateway.username or gateway.id,
                              password_source=lambda: current["gateway"].password(),
                              settings=settings, on_config=on_config)
        log.info(kv("gateway_starting", site=site, gateway=gateway.id, sensors=len(captures),
                    outbox=path, queued=box.queued,
                    broker=f"{config.broker.host}:{config.broker.port}"))
        server = None
        if metrics is not None:
            from ballpass.gateway.metrics import start_metrics_server
            try:
                server = start_metrics_server(metrics, box, status, publisher)
            except OSError as e:
                raise ConfigError([f"--metrics: cannot listen on {metrics[0]}:{metrics[1]}: "
                                   f"{e}"]) from e
        publisher.start()
        for c in captures:
            c.start()
        if ready is not None:
            ready.set()
        sup.notify("READY=1\nSTATUS=started, connecting to the broker")
        jumped_at: float | None = None
        wd = sup.watchdog_s
        tick = min(MAIN_TICK_S, wd / 4) if wd else MAIN_TICK_S
        last_ping = 0.0
        last_line, last_line_t = "", 0.0
        publisher_died = False
        while not stop.wait(tick):
            now = time.monotonic()
            if not publisher.alive:
                # Its crash is logged (publisher_crashed). Capture alone would fill the
                # outbox and send nothing: stop, exit 1, and let the service manager
                # restart us (the windows wait in the outbox).
                log.error(kv("gateway_stopping", reason="publisher thread died"))
                publisher_died = True
                break
            if _watch_captures(captures, stuck, status, gateway.id, now):
                publisher.request_status()
            # A stuck capture thread does not withhold WATCHDOG=1 (docs/gateway.md, "Stuck
            # capture"): the restart would stop every other sensor and the publisher for
            # one device, again each time a flaky one hangs; and a thread in uninterruptible
            # sleep (D state) keeps even a SIGKILLed process from going, so it would not
            # unstick. The sensor is shown as fault instead, for an operator to act on.
            if wd is not None and now - last_ping >= wd / 2 and _healthy(publisher, now):
                sup.notify("WATCHDOG=1")
                last_ping = now
            if sup.reload.is_set():
                sup.reload.clear()
                reload()
            line = _status_line(publisher, box)
            if line != last_line and now - last_line_t >= STATUS_EVERY_S:
                sup.notify(f"STATUS={line}")
                last_line, last_line_t = line, now
            if _clock_jumps(gateway.id, box, status):
                jumped_at = time.monotonic()
                publisher.request_status()
            elif jumped_at is not None and time.monotonic() - jumped_at > CLOCK_PROBLEM_S:
                jumped_at = None
                status.problem("clock", None)
        t0 = time.monotonic()
        sup.notify("STOPPING=1\nSTATUS=stopping: draining the outbox")
        capture_stop.set()
        # One deadline for all: the threads stop in parallel, and waiting for each in turn
        # would add up hung ones past systemd's stop timeout (SIGKILL: no drain, no final
        # status, no clean DISCONNECT). A driver stuck in read() must not hold the shutdown
        # hostage (threads are daemons); its late put, if any, fails harmlessly once the
        # outbox is closed.
        slowest_s = max(c.sensor.interval_s for c in captures)
        join_until = t0 + min(max(5.0, 2 * slowest_s), capture_join_max_s)
        for c in captures:
            c.join(timeout=max(0.0, join_until - time.monotonic()))
            if c.alive:
                log.warning(kv("capture_not_stopped", sensor=c.sensor.id))
        publisher.stop(drain_timeout_s=drain_timeout_s)
        if server is not None:
            server.shutdown()
            server.server_close()
        counters = box.counters()
        log.info(kv("gateway_stopped", site=site, gateway=gateway.id,
                    stop_s=round(time.monotonic() - t0, 2), **counters))
    finally:
        box.close()
    return 1 if publisher_died else 0


def _watch_captures(captures: list[SensorCapture], stuck: dict[str, dict[str, str]],
                    status: Status, gateway_id: str, now: float) -> bool:
    """Mark each sensor whose capture thread made no progress for longer than its
    `stuck_after_s` (s) as fault ("capture stuck for N s"), and give it back the state it
    had when it moves again (unless its thread set a newer one). `stuck` holds the stuck
    ones (id -> state before), across calls. True when the set changed (a status is due).

    The thread's own status writes win: every write here is a compare-and-set, so a
    thread that just came back and reported its read is never overwritten."""
    changed = False
    for c in captures:
        sid = c.sensor.id
        overdue = c.overdue_s(now)
        shown = status.sensors().get(sid, {})
        ours = shown.get("reason", "").startswith(STUCK_REASON)
        if c.alive and overdue > c.stuck_after_s:
            reason = (f"{STUCK_REASON} {overdue:.0f} s: a driver call has not returned "
                      f"(bound {c.stuck_after_s:.0f} s)")
            # Also over a state set meanwhile by another writer (a remote config's "ok").
            if status.swap_sensor(sid, shown, SENSOR_FAULT, reason) and not ours:
                if sid not in stuck:
                    changed = True
                    log.error(kv("capture_stuck", gateway=gateway_id, sensor=sid,
                                 stuck_s=round(overdue, 1),
                                 bound_s=round(c.stuck_after_s, 1)))
                stuck[sid] = shown
        elif sid in stuck:
            before = stuck.pop(sid)
            changed = True
            log.info(kv("capture_unstuck", gateway=gateway_id, sensor=sid,
                        stuck_s=round(overdue, 1)))
            if ours:
                # The thread came back without a word (a hung open() or close()): show
                # what was shown before it hung.
                state = before.get("state", SENSOR_OK)
                if state not in (SENSOR_OK, SENSOR_FAULT, SENSOR_DISABLED):
                    state = SENSOR_OK
                status.swap_sensor(sid, shown, state, before.get("reason", ""))
    return changed


def _healthy(publisher: Publisher, now: float) -> bool:
    """The publisher's network thread is alive and turned within PUBLISHER_STALL_S."""
    return publisher.alive and now - publisher.last_turn < PUBLISHER_STALL_S


def _status_line(publisher: Publisher, box: Outbox) -> str:
    """One short line for ``systemctl status`` (STATUS=)."""
    b = publisher.broker
    state = "connected to" if publisher.connected else "not connected to"
    return f"{state} {b.host}:{b.port}; queued {box.queued}"


def _needs_restart(old: Config, old_gw: GatewayConfig, new: Config,
                   new_gw: GatewayConfig) -> list[str]:
    """What a reload cannot apply while running, one phrase each."""
    out: list[str] = []
    if new.site.id != old.site.id:
        out.append(f"site.id {old.site.id!r} -> {new.site.id!r}")
    old_s = {s.id: s for s in old_gw.sensors}
    new_s = {s.id: s for s in new_gw.sensors}
    if added := sorted(new_s.keys() - old_s.keys()):
        out.append(f"sensors added: {', '.join(added)}")
    if removed := sorted(old_s.keys() - new_s.keys()):
        out.append(f"sensors removed: {', '.join(removed)} (still captured)")
    for sid in sorted(old_s.keys() & new_s.keys()):
        if old_s[sid].kind != new_s[sid].kind:
            out.append(f"sensor {sid}: kind {old_s[sid].kind} -> {new_s[sid].kind}")
        if old_s[sid].driver != new_s[sid].driver:
            out.append(f"sensor {sid}: driver {old_s[sid].driver} -> {new_s[sid].driver}")
    o, n = old_gw.outbox, new_gw.outbox
    if dataclasses.replace(o, flush_rate_per_s=0) != dataclasses.replace(n, flush_rate_per_s=0):
        out.append("gateway.outbox (path, max_mb, max_age_h)")
    return out


def serve(config_path: Path, gateway_id: str, *, outbox_path: Path | None = None,
          metrics: str | None = None) -> int:
    """``ballpass gateway``: one gateway in this process, under a service manager or not.

    Loads the site file (ConfigError: exit 2 via the CLI), turns SIGINT/SIGTERM into a
    clean stop and SIGHUP into a reload, and talks sd_notify when ``$NOTIFY_SOCKET`` is
    set (see the module doc). Returns the exit code.
    """
    from ballpass.config import load

    listen: tuple[str, int] | None = None
    if metrics is not None:
        try:
            listen = parse_listen(metrics)
        except ValueError as e:
            raise ConfigError([f"--metrics: {e}"]) from None
    config = load(config_path)
    gateway = config.gateway(gateway_id)
    # A secret missing at start is a config error (exit 2); one missing later, mid-rotation,
    # is retried at each connect (the publisher).
    gateway.password()
    stop = threading.Event()
    sup = Supervisor(notify=sdnotify.notify, watchdog_s=sdnotify.watchdog_interval_s(),
                     load_config=lambda: load(config_path))

    def on_stop(signum: int, _frame: Any) -> None:
        stop.set()

    def on_hup(signum: int, _frame: Any) -> None:
        sup.reload.set()  # handled by the main loop at its next turn, not in the handler

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return run(config, gateway.id, stop, outbox_path=outbox_path, supervisor=sup,
               metrics=listen)
