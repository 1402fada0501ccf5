"""The `ballpass` command line. Subcommand modules are imported lazily, so
`ballpass gateway` starts without loading numba, scipy or river."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ballpass import __version__

if TYPE_CHECKING:
    from ballpass.config import AssetLevels, Config

EXIT_CONFIG = 2
_log = logging.getLogger("ballpass.cli")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True, metavar="SITE.toml",
                   help="site configuration file (see docs/config.md)")


def _load_config(path: Path, *, drivers: bool = True) -> Config:
    """The site file, validated (ConfigError: exit 2). `drivers`: check every sensor's
    driver and options (see `ballpass.config.parse`)."""
    from ballpass.config import load
    return load(path, drivers=drivers)


def _host_port(spec: str) -> str:
    """argparse type for HOST:PORT (a bad one exits 2 with the reason)."""
    from ballpass.listen import parse_listen
    try:
        parse_listen(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return spec


def _positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (exit 2 naming the option, not a traceback
    from deep in the simulation)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so services shut down cleanly."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def cmd_gateway(args: argparse.Namespace) -> int:
    # serve() owns the signals (SIGHUP reloads) and the systemd notify protocol.
    from ballpass.gateway.service import serve
    return serve(args.config, args.gateway, outbox_path=args.outbox, metrics=args.metrics)


def cmd_stream(args: argparse.Namespace) -> int:
    import asyncio

    from ballpass.stream.service import StreamService
    from ballpass.stream.sinks.influx import create_writer

    # No driver runs here, and a gateway's third-party driver need not be installed on the
    # stream's host: the gateway and check-config check them.
    config = _cluster_config(args, "--engine nats") if args.engine == "nats" \
        else _load_config(args.config, drivers=False)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        writer = create_writer(config.influx)
        service = StreamService(config, writer, status_file=args.status_file,
                                http=args.http, metrics=args.metrics,
                                cluster=args.engine == "nats")
        loop.add_signal_handler(signal.SIGHUP, service.reload)
        try:
            await service.run(stop)
        finally:
            writer.close()

    asyncio.run(main())
    return 0


def _cluster_config(args: argparse.Namespace, what: str) -> Config:
    config = _load_config(args.config, drivers=False)
    if config.cluster is None:
        from ballpass.config import ConfigError
        raise ConfigError([f"cluster: {what} needs a [cluster] section (docs/scale-out.md)"])
    return config


def cmd_relay(args: argparse.Namespace) -> int:
    import asyncio

    from ballpass.stream.cluster.edge import run_edge_relay
    config = _cluster_config(args, "relay")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_edge_relay(config, stop, args.status_file)

    asyncio.run(main())
    return 0


def cmd_simulate_fleet(args: argparse.Namespace) -> int:
    import time

    from ballpass.config import check_drivers
    from ballpass.gateway.service import run
    from ballpass.simulators import fleet
    # With a scenario, the simulated sensors are checked with the options it gives them
    # (`fleet.apply`, errors naming the scenario's fault); every other driver after it.
    config = _load_config(args.config, drivers=args.scenario is None)
    ids = args.gateways.split(",") if args.gateways else [g.id for g in config.gateways]
    for gateway_id in ids:
        # Unknown ids, and unreadable secrets, fail here (exit 2), not in a thread.
        config.gateway(gateway_id).password()
    # Every sensor's driver and options were checked by the load; the scenario's
    # changes to them are checked by `fleet.apply`, before anything starts (exit 2
    # naming the item: unknown asset, fault line above Nyquist, negative severity).
    t_start_ns = time.time_ns()
    if args.scenario is not None:
        scenario = fleet.load_scenario(args.scenario)
        if args.seed is not None:
            scenario = dataclasses.replace(scenario, seed=args.seed)
        scale = args.time_scale if args.time_scale is not None else scenario.time_scale
        config, faults = fleet.apply(config, scenario, t_start_ns, scale)
        check_drivers(config, skip=("simulated",))
        if args.truth is not None:
            paths = fleet.write_truth(
                args.truth, fleet.truth(config, scenario, faults, t_start_ns, scale),
                fleet.truth_rows(faults, scenario.horizon_h))
            print(f"ground truth: {paths[0]} {paths[1]}")
    stop = _stop_on_signals()
    if args.duration is not None:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    threads = [threading.Thread(target=run, args=(config, g, stop), name=f"gateway-{g}")
               for g in ids]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    return 0


def cmd_simulate_site(args: argparse.Namespace) -> int:
    from ballpass.simulators.fleet import site_toml
    try:
        text = site_toml(args.reactors, seed=args.seed, reactors_per_gateway=args.per_gateway,
                         interval_s=args.interval, broker_port=args.broker_port,
                         influx_url=args.influx_url)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    except OSError as e:  # a directory, no permission, ...
        print(f"error: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {args.out}")
    return 0


def cmd_simulate_record(args: argparse.Namespace) -> int:
    from ballpass.simulators.record import write_record
    try:
        write_record(out=args.out, fault=args.fault, bearing=args.bearing,
                     shaft_hz=args.shaft_hz, fs_hz=args.fs, seconds=args.seconds,
                     seed=args.seed, severity=args.severity)
    except (ValueError, KeyError) as e:  # unknown bearing, fault above Nyquist, ...
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {args.out}")
    return 0


def cmd_simulate_agitators(args: argparse.Namespace) -> int:
    from ballpass.simulators.record import (
        AGITATOR_SHAFTS_HZ,
        REFERENCE_SHAFTS_HZ,
        write_speed_spec,
    )
    shafts = AGITATOR_SHAFTS_HZ + (REFERENCE_SHAFTS_HZ if args.reference else ())
    spec = write_speed_spec(args.out, shafts, fs_hz=args.fs, seed=args.seed)
    print(f"wrote {spec} (run: ballpass evaluate {spec})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ballpass.demo import run_demo
    if args.cluster:
        from ballpass.demo_cluster import cluster_extra_missing
        missing = cluster_extra_missing()
        if missing is not None:
            if args.log_format == "json":  # stderr stays one JSON object per line
                from ballpass.log import kv
                _log.error(kv("cluster_extra_missing", error=missing))
            else:
                print(f"error: {missing}", file=sys.stderr)
            return EXIT_CONFIG
    return run_demo(duration_s=args.duration, summary_json=args.summary_json,
                    live=not args.no_live, workdir=args.workdir, cluster=args.cluster)


def cmd_bench(args: argparse.Namespace) -> int:
    from ballpass.devtools import bench
    only = tuple(args.only.split(",")) if args.only else ()
    stacks = tuple(args.e2e_stacks.split(",")) if args.e2e_stacks else ()
    text = bench.to_json(bench.run(quick=args.quick, only=only, e2e_stacks=stacks))
    if args.json is None:
        print(text)
    else:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ballpass.stream.evaluate import main as evaluate
    return evaluate(args.spec, args.json)


def cmd_evaluate_life(args: argparse.Namespace) -> int:
    from ballpass.stream.evaluate_life import main as evaluate_life
    return evaluate_life(args.spec, args.json, args.plots)


def cmd_evaluate_fleet(args: argparse.Namespace) -> int:
    import json
    import logging

    from ballpass.devtools.fleet_eval import FleetSpec, calibrate, run, table
    from ballpass.stream.online.trend import CalibrationError, load_calibration
    if args.log_level != "DEBUG":
        # Thousands of simulated machines' events would drown the progress bar.
        logging.getLogger("ballpass.stream").setLevel(logging.WARNING)
    table_path = None
    if args.trend_calibration is not None:
        if args.calibrate_out is not None:
            print("error: --trend-calibration and --calibrate-out exclude each other (a "
                  "calibration run uses the raw projection)", file=sys.stderr)
            return EXIT_CONFIG
        try:
            load_calibration(args.trend_calibration)
        except CalibrationError as e:
            print(f"error: --trend-calibration: {e}", file=sys.stderr)
            return EXIT_CONFIG
        table_path = str(args.trend_calibration.resolve())
    spec = FleetSpec(seeds=args.seeds, horizon_days=args.horizon_days,
                     cadence_s=args.cadence_s, first_seed=args.first_seed,
                     trend_calibration=table_path)
    progress = None if args.quiet else sys.stderr
    if args.calibrate_out is not None:
        command = " ".join(["ballpass", *sys.argv[1:]]) if sys.argv[1:] else ""
        try:
            document, figures = calibrate(spec, args.calibration_bins, progress, command)
        except ValueError as e:  # too few estimates for the bins (a small fleet)
            print(f"error: --calibrate-out: {e}", file=sys.stderr)
            return 1
        args.calibrate_out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        figures = run(spec, progress=progress)
    print(table(figures))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("classes", "spec")}))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_sensor(args: argparse.Namespace) -> int:
    from ballpass import operator
    config = _load_config(args.config)
    if args.sensor not in config.sensor_index():
        print(f"error: sensor {args.sensor!r} is not in the site config", file=sys.stderr)
        return EXIT_CONFIG
    payload = operator.command(operator.ACTIONS[args.action], args.sensor, args.by, args.note)
    try:
        operator.publish(config, payload)
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"sent {payload['action']} for {args.sensor} to {operator.command_topic(config.site.id)}")
    return 0


def cmd_influx_retention(args: argparse.Namespace) -> int:
    import time

    from ballpass.stream.sinks.influx import InfluxQueryError
    from ballpass.stream.sinks.retention import apply_retention, backfill, statements

    config = _load_config(args.config, drivers=False)
    cfg = config.influx
    if cfg.api != "v1":
        print("error: influx.api = \"v2\": retention is the bucket's setting in InfluxDB "
              "2.x/3.x (no continuous queries there)", file=sys.stderr)
        return EXIT_CONFIG
    if args.print:
        for statement in statements(cfg):
            print(statement + ";")
        return 0
    try:
        changes = apply_retention(cfg)
        for line in changes:
            print(line)
        if not changes:
            print(f"db {cfg.db!r}: retention policies and continuous queries up to date")
        if args.backfill_days:
            now = time.time_ns()
            written = backfill(cfg, now - int(args.backfill_days * 86400e9), now,
                               source_rp=args.source_rp)
            print("backfilled hourly rows: " + ", ".join(f"{m}={n}"
                                                         for m, n in written.items()))
    except InfluxQueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_broker_add_gateway(args: argparse.Namespace) -> int:
    from ballpass.broker_admin import add_gateway, check_gateway_id, read_or_create_password
    try:
        check_gateway_id(args.gateway)  # before a password file is generated for it
        password, generated = read_or_create_password(args.password_file)
        result = add_gateway(args.gateway, password, args.passwd, args.acl)
    except ValueError as e:  # bad id; a file that cannot be read or written, named
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{'replaced' if result.replaced else 'added'} {result.gateway} in {args.passwd}")
    if generated:
        print(f"new password written to {args.password_file} (copy it to the gateway; "
              "[[gateway]] password_file)")
    print(f"acl {args.acl}: " + (f"added {len(result.acl_added)} pattern lines"
                                 if result.acl_added else "gateway pattern lines present"))
    print("reload the broker to apply: systemctl reload mosquitto (or SIGHUP)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    sensors = sum(len(g.sensors) for g in config.gateways)
    print(f"ok: site {config.site.id}: {len(config.assets)} assets, "
          f"{len(config.gateways)} gateways, {sensors} sensors, {len(config.webhooks)} webhooks")
    for g in config.gateways:  # one line per sensor: which window, and why
        for s in g.sensors:
            print(f"gateway {g.id} sensor {s.id}: {s.window_reason or s.window_samples}")
    for a in config.assets:  # one line per asset: its effective levels, and where from
        print(f"asset {a.id} levels: {_levels_line(a.levels)}")
    return 0


def _levels_line(levels: AssetLevels) -> str:
    """"warning (A/B) 1.4 mm/s, ... (ISO 20816-3 group 2 rigid); line_snr 10 dB, ...
    (default)": each group of levels with its source, said once when they share it."""
    by_key = levels.by_key()
    groups = (("velocity_warning_mm_s", "velocity_alert_mm_s", "velocity_danger_mm_s"),
              ("line_snr_db", "strong_line_snr_db"))
    names = {"velocity_warning_mm_s": "warning (A/B)", "velocity_alert_mm_s": "alert (B/C)",
             "velocity_danger_mm_s": "danger (C/D)", "line_snr_db": "line_snr",
             "strong_line_snr_db": "strong_line_snr"}
    parts = []
    for keys in groups:
        unit = "mm/s" if keys[0].endswith("mm_s") else "dB"
        sources = {by_key[k].source for k in keys}
        if len(sources) == 1:
            parts.append(", ".join(f"{names[k]} {by_key[k].value:g} {unit}" for k in keys)
                         + f" ({sources.pop()})")
        else:
            parts.append(", ".join(f"{names[k]} {by_key[k].value:g} {unit} "
                                   f"({by_key[k].source})" for k in keys))
    return "; ".join(parts)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    from ballpass.log import FORMATS

    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   default="INFO" if defaults else argparse.SUPPRESS,
                   help="least severe level logged (default INFO; any case)")
    p.add_argument("--log-format", choices=FORMATS,
                   default="kv" if defaults else argparse.SUPPRESS,
                   help="kv: `time level logger event=name key=value ...` lines (default); "
                   "json: one JSON object per line with the same event names and keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ballpass",
        description="Predictive maintenance for plant machines: edge gateways capture "
        "vibration, the stream service diagnoses bearing and machine faults, InfluxDB "
        "stores it, webhooks call people.")
    parser.add_argument("--version", action="version", version=f"ballpass {__version__}")
    _log_args(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole plant on this machine",
                       description="Start a private mosquitto and InfluxDB on free loopback "
                       "ports, the stream service, simulated gateways with healthy and faulty "
                       "bearings, and a local webhook receiver; show a live view. Ctrl-C (or "
                       "--duration) stops every process it started.")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop by itself after S seconds (default: run until Ctrl-C)")
    p.add_argument("--summary-json", type=Path, metavar="FILE",
                   help="write counters and per-sensor truth/diagnosis/alerted to FILE")
    p.add_argument("--no-live", action="store_true",
                   help="log progress lines instead of redrawing a live table")
    p.add_argument("--workdir", type=Path, help="keep configs, data and logs here "
                   "(default: a temporary dir, removed at exit)")
    p.add_argument("--cluster", action="store_true",
                   help="run the stream side as 2 workers on a local 3-node NATS JetStream "
                   "cluster (docs/scale-out.md; needs pip install 'ballpass[cluster]')")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("gateway", help="run one edge gateway",
                       description="Capture windows from the gateway's sensors on schedule, "
                       "keep them in the SQLite outbox and publish them to the broker at QoS 1. "
                       "SIGTERM/Ctrl-C drains the outbox briefly and stops cleanly.")
    _config_arg(p)
    p.add_argument("--gateway", "-g", required=True, help="gateway id in the site config")
    p.add_argument("--outbox", type=Path, help="outbox file (overrides gateway.outbox.path)")
    p.add_argument("--metrics", metavar="HOST:PORT", type=_host_port,
                   help="serve Prometheus /metrics there (':PORT' = 127.0.0.1; default off)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("stream", help="run the stream service",
                       description="Subscribe to every window of the site, compute features, "
                       "diagnose, write to InfluxDB, publish diagnoses and alerts, call webhooks.")
    _config_arg(p)
    p.add_argument("--status-file", type=Path, metavar="FILE",
                   help="keep a JSON file with counters and per-sensor state up to date")
    p.add_argument("--http", metavar="HOST:PORT", type=_host_port,
                   help="serve the evidence page here (overrides [stream] http; "
                   "port 0 picks a free one; see docs/evidence-page.md)")
    p.add_argument("--metrics", metavar="HOST:PORT", type=_host_port,
                   help="serve /healthz and Prometheus /metrics here (:PORT is loopback; "
                   "see docs/operations.md)")
    p.add_argument("--engine", choices=("mqtt", "nats"), default="mqtt",
                   help="mqtt: one process reading mosquitto (default); nats: one of N "
                   "workers on the NATS JetStream cluster of [cluster] (docs/scale-out.md)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("relay", help="a plant's relay from mosquitto to its NATS leaf node",
                       description="Copy the site's windows, tacho readings, status and "
                       "commands from mosquitto to the leaf node of [cluster] servers, and "
                       "the workers' diagnoses and alerts back (docs/scale-out.md, Edge sites).")
    _config_arg(p)
    p.add_argument("--status-file", type=Path, metavar="FILE",
                   help="keep a JSON file with the relay's counters up to date")
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("simulate", help="simulated machines: a fleet or one recording",
                       description="Simulated sensors for trying ballpass without hardware.")
    ssub = p.add_subparsers(dest="simulate_command", required=True, metavar="WHAT")
    q = ssub.add_parser("fleet", help="run the config's gateways with their (simulated) sensors",
                        description="Run the gateways of the site config in one process, "
                        "through the real gateway code (outbox, MQTT publisher).")
    _config_arg(q)
    q.add_argument("--gateways", help="comma-separated gateway ids (default: all)")
    q.add_argument("--scenario", metavar="FILE", help="scenario TOML, or the name of one "
                   "in simulators/scenarios/ (week, quick, healthy); see docs/simulator.md")
    q.add_argument("--time-scale", type=float, metavar="X",
                   help="simulated seconds per wall second (default: the scenario's)")
    q.add_argument("--seed", type=int, help="override the scenario's seed")
    q.add_argument("--truth", type=Path, metavar="FILE.json",
                   help="write the ground-truth timeline (JSON, and CSV beside it)")
    q.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    q.set_defaults(func=cmd_simulate_fleet)
    q = ssub.add_parser("site", help="write a site config of simulated reactors",
                        description="Write a site TOML of N reactors (agitator motor, "
                        "gearbox, pump; bearings from the catalog) with simulated sensors "
                        "and gateways, for `ballpass simulate fleet`.")
    q.add_argument("--reactors", type=int, default=50)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--per-gateway", type=int, default=5, help="reactors per gateway")
    q.add_argument("--interval", type=float, default=10.0, help="seconds between bursts")
    q.add_argument("--broker-port", type=int, default=1883)
    q.add_argument("--influx-url", default="http://127.0.0.1:8086")
    q.add_argument("--out", type=Path, required=True, metavar="SITE.toml")
    q.set_defaults(func=cmd_simulate_site)
    q = ssub.add_parser("record", help="write one simulated recording (.npz)",
                        description="Write one recording: array `signal` (acceleration, g) "
                        "and its metadata, for users who want test data.")
    q.add_argument("--fault", default="normal", help="normal, outer_race, inner_race, ball, "
                   "cage, imbalance, misalignment, lubrication")
    q.add_argument("--bearing", default="SKF 6205", help="catalog bearing name")
    q.add_argument("--shaft-hz", type=float, default=29.95, help="shaft speed, Hz")
    q.add_argument("--fs", type=float, default=12000.0, help="sample rate, Hz")
    q.add_argument("--seconds", type=float, default=10.0, help="length, s")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--severity", type=float, default=1.0, help=">= 0; 1 = developed fault")
    q.add_argument("--out", type=Path, required=True, metavar="FILE.npz")
    q.set_defaults(func=cmd_simulate_record)
    q = ssub.add_parser("agitators", help="write simulated agitators at 60-120 r/min and "
                        "an evaluation spec", description="Recordings of agitators at 60, "
                        "90 and 120 r/min (normal, outer_race, inner_race, ball, imbalance, "
                        "misalignment) and DIR/spec.toml for `ballpass evaluate`; no window "
                        "is given, the evaluation chooses it from the speed.")
    q.add_argument("--fs", type=_positive_float, default=25600.0, help="sample rate, Hz")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--reference", action="store_true",
                   help="also the same machines at 1500 r/min")
    q.add_argument("--out", type=Path, required=True, metavar="DIR")
    q.set_defaults(func=cmd_simulate_agitators)

    p = sub.add_parser("bench", help="measure speed figures against their baselines",
                       description="Measure every speed figure of ballpass together with its "
                       "baseline, in the same run, and print them (or write --json) as one flat "
                       "JSON object. See BENCHMARKS.md.")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures to OUT")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    p.add_argument("--only", help="comma-separated parts: stream, simulators, gateway, e2e")
    p.add_argument("--e2e-stacks", metavar="NAMES",
                   help="comma-separated configurations of the e2e part: embedded, nats1, "
                   "nats2 (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("evaluate", help="diagnose labelled recordings and score the result",
                       description="Cut each recording of SPEC into windows, diagnose every "
                       "window, vote per record, and print a per-record table and a confusion "
                       "matrix. Exit 2 on a bad spec (every error with its key path). See "
                       "EVALUATION.md and evaluation/cwru.toml.")
    p.add_argument("spec", type=Path, metavar="SPEC.toml", help="[[recording]] tables: path, "
                   "key or column, fs_hz, shaft_hz, label, bearing or [recording.geometry]")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results to OUT")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("evaluate-life", help="run-to-failure recordings through the stream's "
                       "path: lead time of the alarms, false alarms, projections",
                       description="Feed each [[run]] of SPEC (windows and their times in an "
                       ".npz) through the stream's pipeline in simulated time and report per "
                       "run the first watch and alarm with their lead before end of life, "
                       "alarms in the first half of life and the time-to-zone-D projections "
                       "against the end of life. Exit 2 on a bad spec. See "
                       "docs/evaluate-life.md and evaluation/femto.toml.")
    p.add_argument("spec", type=Path, metavar="SPEC.toml", help="[[run]] tables: path, fs_hz, "
                   "shaft_hz, bearing or [run.geometry]; optional [online] and [alert]")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results to OUT")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write one SVG per run to DIR")
    p.set_defaults(func=cmd_evaluate_life)

    p = sub.add_parser("evaluate-fleet", help="online models and physics on simulated "
                       "run-to-failure trajectories",
                       description="Simulate a fleet offline (no MQTT, no database): per seed "
                       "one outer race, inner race, ball, lubrication and imbalance degradation "
                       "and one healthy machine, all with changing speed and load; drive the "
                       "stream pipeline with simulated time and report the stage at first alarm, "
                       "lead time, false alarms per 100 sensor-days and the days_to_zone_d error "
                       "(docs/online-models.md).")
    p.add_argument("--seeds", type=_positive_int, default=20,
                   help="machines per class (default 20)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (default 0: the reported seeds 0..N-1)")
    p.add_argument("--trend-calibration", type=Path, metavar="TABLE.json",
                   help="model-error table of days_to_zone_c/_d (default: the shipped one)")
    p.add_argument("--calibrate-out", type=Path, metavar="PATH",
                   help="learn the model-error table on this fleet (raw projections) and "
                   "write it to PATH (docs/online-models.md §4); the figures printed are "
                   "the uncorrected ones")
    p.add_argument("--calibration-bins", type=int, default=None,
                   help="bins of the extrapolation length in the learned table "
                   "(default: fleet.CALIBRATION_BINS)")
    p.add_argument("--horizon-days", type=_positive_float, default=30.0,
                   help="simulated life after the warm-up, days (default 30)")
    p.add_argument("--cadence-s", type=float, default=3600.0,
                   help="simulated seconds between windows (default 3600)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the figures to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate_fleet)

    p = sub.add_parser("sensor", help="operator actions on a sensor (sent to the stream)",
                       description="Publish an operator action to bp/v1/{site}/command; the "
                       "stream applies it and logs it to InfluxDB (measurement actions). "
                       "rebaseline: maintenance done, learn the normal again; ack: acknowledge "
                       "the current alarm; false-alarm: the recent windows are normal.")
    p.add_argument("action", choices=["rebaseline", "ack", "false-alarm"])
    p.add_argument("sensor", metavar="ID", help="sensor id")
    _config_arg(p)
    p.add_argument("--by", help="who acts (default: the login name)")
    p.add_argument("--note", default="", help="free text kept with the action")
    p.set_defaults(func=cmd_sensor)

    p = sub.add_parser("broker", help="broker administration (gateway credentials)",
                       description="Manage the mosquitto password file and ACL.")
    bsub = p.add_subparsers(dest="broker_command", required=True, metavar="WHAT")
    q = bsub.add_parser("add-gateway", help="add or replace a gateway's broker login",
                        description="Add the gateway to the password file (the PBKDF2 "
                        "format of mosquitto_passwd, written in-process: the password never "
                        "goes on a command line) and make sure the ACL "
                        "holds the gateway pattern lines (each gateway writes only below its "
                        "own prefix). The password comes from --password-file, or is "
                        "generated and written there.")
    q.add_argument("gateway", metavar="ID", help="gateway id (= its MQTT username)")
    q.add_argument("--passwd", type=Path, required=True, metavar="FILE",
                   help="mosquitto password file (created if missing)")
    q.add_argument("--acl", type=Path, required=True, metavar="FILE",
                   help="mosquitto ACL file (created if missing)")
    q.add_argument("--password-file", type=Path, required=True, metavar="FILE",
                   help="the gateway's password (generated into FILE if it does not exist)")
    q.add_argument("--no-mosquitto-passwd", action="store_true",
                   help="accepted for compatibility, no effect: the hash is always written "
                   "in-process now (mosquitto_passwd -b would show the password to every "
                   "local user in its command line)")
    q.set_defaults(func=cmd_broker_add_gateway)

    p = sub.add_parser("influx-retention", help="set InfluxDB retention and hourly "
                       "downsampling now; backfill hourly aggregates",
                       description="Create or update the retention policies (raw, long) and "
                       "the hourly continuous queries of [influx] (what the stream does at "
                       "start), then optionally recompute the hourly aggregates of the last "
                       "days, e.g. after windows replayed later than hourly_lookback_h, or "
                       "from --source-rp autogen after an upgrade. InfluxDB 1.x; needs an "
                       "admin user. See docs/influxdb-schema.md.")
    _config_arg(p)
    p.add_argument("--print", action="store_true",
                   help="print the InfluxQL statements for a DBA instead of running them")
    p.add_argument("--backfill-days", type=float, default=0, metavar="D",
                   help="recompute the hourly aggregates of the last D days")
    p.add_argument("--source-rp", default="raw", metavar="RP",
                   help="policy the backfill reads (default raw; autogen: data written "
                   "before the policies existed)")
    p.set_defaults(func=cmd_influx_retention)

    p = sub.add_parser("check-config", help="validate a site config and exit (2 on errors)",
                       description="Load and validate a site config; print every error with "
                       "its key path. Exit 0 when valid, 2 when not.")
    p.add_argument("config", type=Path, metavar="SITE.toml")
    p.set_defaults(func=cmd_check_config)
    _log_args_after_subcommands(parser)
    return parser


def _log_args_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """The log options after any subcommand too (`ballpass stream -c x --log-level
    debug`). Their default there is SUPPRESS, so a subcommand that does not give them
    keeps the value given before it (or the main default)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases: once each
                _log_args(sub, defaults=False)
                _log_args_after_subcommands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    from ballpass import log
    from ballpass.config import ConfigError

    args = build_parser().parse_args(argv)
    log.setup(args.log_level, fmt=args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as e:
        if args.log_format == "json":  # stderr stays one JSON object per line
            for line in e.errors:
                _log.error(log.kv("config_error", error=line))
        else:
            print("config error:", file=sys.stderr)
            for line in e.errors:
                print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as e:
        if args.log_format == "json":
            _log.error(log.kv("file_not_found", error=e))
        else:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
