"""A simulated fleet: a generated site of reactors, scenario files, and the ground truth.

- `site_toml(reactors=50, ...)` writes a real site config: per reactor an agitator
  motor, its gearbox and a pump (bearings from the catalog, speeds, a gear tooth count),
  a vibration sensor on each and a temperature probe on the motor; a gateway per
  `reactors_per_gateway` reactors. `ballpass check-config` accepts it.
- `load_scenario(path)` reads a scenario TOML (docs/simulator.md): faults that grow on
  named assets along run-to-failure trajectories, sensor faults, machine extras, and
  random faults drawn from the seed.
- `apply(config, scenario, t_start_ns)` returns the config with the scenario written into
  the simulated sensors' driver options, after checking every sensor can be built
  (unknown asset, fault line above Nyquist, negative severity: a `ConfigError` naming the
  item, before anything starts).
- `truth(...)` is the ground-truth timeline of a run (JSON), `truth_rows(...)` its
  severity over time (CSV rows).

Deterministic for a seed: the same site, scenario and seed give the same faults, the
same trajectories and the same sensor seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ballpass.config import Config, ConfigError, SensorConfig, read_toml
from ballpass.models.catalog import lookup
from ballpass.models.window import default_window_samples
from ballpass.simulators.degradation import (
    FAULT_CONDITIONS,
    Trajectory,
    random_trajectory,
    seed_for,
    zone_crossings_s,
)
from ballpass.simulators.sensor_faults import SENSOR_FAULTS

#: Per reactor: (asset suffix, kind, bearing choices, shaft Hz choices, sensor suffix).
REACTOR_PARTS = (
    ("motor", "motor", ("SKF 6310", "SKF 6208"), (24.75, 24.6), "de"),
    ("gearbox", "gearbox", ("SKF 6208", "SKF 6207"), (24.75, 24.6), "in"),
    ("pump", "pump", ("SKF 6206", "SKF 6207"), (49.2, 48.8), "de"),
)
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


def site_toml(reactors: int = 50, *, seed: int = 0, site_id: str = "plant",
              reactors_per_gateway: int = 5, fs_hz: float = 25600.0,
              window_samples: int | None = None, interval_s: float = 10.0,
              broker_host: str = "127.0.0.1", broker_port: int = 1883,
              influx_url: str = "http://127.0.0.1:8086") -> str:
    """A site TOML with `reactors` reactors (agitator motor, gearbox, pump each).

    `window_samples` None leaves the key out, so each sensor gets the default window of
    its asset's speed (models/window.py), as a hand-written site config would.
    """
    if not 1 <= reactors <= 999:
        raise ValueError(f"reactors: must be in 1..999, got {reactors!r}")
    if reactors_per_gateway < 1:
        raise ValueError(f"reactors_per_gateway: must be >= 1, got {reactors_per_gateway!r}")
    slowest_hz = min(min(speeds) for *_, speeds, _ in REACTOR_PARTS)
    longest = window_samples or default_window_samples(fs_hz, slowest_hz)[0]
    if longest / fs_hz > interval_s:
        raise ValueError(f"interval_s: must be >= window_samples / fs_hz = "
                         f"{longest / fs_hz:g} s, got {interval_s!r}")
    rng = np.random.default_rng([seed, 0x517E])
    width = max(2, len(str(reactors)))
    lines = [f"# {reactors} simulated reactors (agitator motor, gearbox, pump), seed {seed}.",
             "# Written by `ballpass simulate site`; run it with `ballpass simulate fleet`.",
             "[site]", f'id = "{site_id}"', f'name = "simulated plant, {reactors} reactors"', "",
             "[broker]", f'host = "{broker_host}"', f"port = {broker_port}", "",
             "[influx]", 'api = "v1"', f'url = "{influx_url}"', 'db = "ballpass"', ""]
    sensors: dict[int, list[str]] = {}
    for r in range(1, reactors + 1):
        name = f"r{r:0{width}d}"
        block: list[str] = []
        for part, kind, bearings, speeds, where in REACTOR_PARTS:
            asset = f"{name}-{part}"
            bearing = str(rng.choice(bearings))
            shaft = float(rng.choice(speeds))
            lines += ["[[asset]]", f'id = "{asset}"', f'kind = "{kind}"',
                      f'bearing = "{bearing}"', f"shaft_hz = {shaft}", ""]
            options = []
            if part in ("motor", "gearbox"):
                options.append('profile = "batch"')  # the agitator follows the batch
            if part == "gearbox":
                options.append(f"gear_teeth = {int(rng.integers(17, 30))}")
            block += ["[[gateway.sensor]]", f'id = "{asset}-{where}"', 'driver = "simulated"',
                      f'asset = "{asset}"', f"fs_hz = {fs_hz:g}", f"interval_s = {interval_s:g}"]
            if window_samples is not None:
                block.append(f"window_samples = {window_samples}")
            if options:
                block.append(f"options = {{ {', '.join(options)} }}")
            block.append("")
            if part == "motor":
                block += ["[[gateway.sensor]]", f'id = "{asset}-temp"', 'driver = "simulated"',
                          f'asset = "{asset}"', 'kind = "temperature"', "fs_hz = 1",
                          "window_samples = 16", f"interval_s = {max(interval_s, 16.0):g}",
                          'options = { profile = "batch" }', ""]
        sensors.setdefault((r - 1) // reactors_per_gateway, []).extend(block)
    for g, block in sensors.items():
        gw = f"gw-{g + 1:02d}"
        lines += ["[[gateway]]", f'id = "{gw}"', f'outbox.path = "outbox/{gw}.sqlite"', ""]
        lines += block
    return "\n".join(lines)


# --- scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSpec:
    """One fault on one asset: a trajectory, or a constant `severity` (None: trajectory)."""

    asset: str
    trajectory: Trajectory | None
    condition: str
    severity: float | None = None


@dataclass(frozen=True)
class SensorFaultSpec:
    sensor: str
    kind: str
    start_h: float
    end_h: float


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file (times in hours of simulated time)."""

    name: str
    seed: int = 0
    time_scale: float = 1.0
    horizon_h: float = 168.0
    profile: str | None = None
    faults: tuple[FaultSpec, ...] = ()
    sensor_faults: tuple[SensorFaultSpec, ...] = ()
    machines: dict[str, dict[str, float]] = field(default_factory=dict)
    random_faults: int = 0
    random_conditions: tuple[str, ...] = ("outer_race", "inner_race", "ball", "lubrication",
                                          "imbalance", "misalignment")
    source: Path | None = None


def _num(table: dict[str, Any], key: str, where: str, errors: list[str],
         default: float | None = None, minimum: float | None = None) -> float | None:
    value = table.get(key, default)
    if value is None:
        errors.append(f"{where}.{key}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors.append(f"{where}.{key}: must be a number, got {value!r}")
        return None
    if minimum is not None and value < minimum:
        errors.append(f"{where}.{key}: must be >= {minimum:g}, got {value!r}")
        return None
    return float(value)


def _unknown_keys(table: dict[str, Any], known: tuple[str, ...], where: str,
                  errors: list[str]) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{where}.{key}: unknown key{hint}")


def _condition(value: Any, where: str, errors: list[str]) -> str | None:
    if value in FAULT_CONDITIONS:
        return str(value)
    close = difflib.get_close_matches(str(value), FAULT_CONDITIONS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    errors.append(f"{where}.condition: unknown condition {value!r}{hint} "
                  f"(known: {', '.join(FAULT_CONDITIONS)})")
    return None


def parse_scenario(data: dict[str, Any], name: str = "scenario") -> Scenario:
    """Validate a parsed scenario document; raises ConfigError listing every problem."""
    errors: list[str] = []
    _unknown_keys(data, ("scenario", "fault", "sensor_fault", "machine", "random"), "", errors)
    head = data.get("scenario", {})
    _unknown_keys(head, ("name", "seed", "time_scale", "horizon_h", "profile"), "scenario",
                  errors)
    seed = head.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        errors.append(f"scenario.seed: must be an integer >= 0, got {seed!r}")
        seed = 0
    time_scale = _num(head, "time_scale", "scenario", errors, 1.0, 1e-9) or 1.0
    horizon = _num(head, "horizon_h", "scenario", errors, 168.0, 1e-9) or 168.0
    profile = head.get("profile")
    if profile not in (None, "steady", "batch"):
        errors.append(f"scenario.profile: must be 'steady' or 'batch', got {profile!r}")

    faults = []
    for i, f in enumerate(data.get("fault", [])):
        where = f"fault[{i}]"
        _unknown_keys(f, ("asset", "condition", "severity", "onset_h", "incipient_h",
                          "developed_h", "severe_h", "max_severity"), where, errors)
        asset = f.get("asset")
        if not isinstance(asset, str):
            errors.append(f"{where}.asset: is required (an asset id), got {asset!r}")
            continue
        cond = _condition(f.get("condition"), where, errors)
        if cond is None:
            continue
        if "severity" in f:
            sev = _num(f, "severity", where, errors, minimum=0.0)
            if sev is not None:
                faults.append(FaultSpec(asset, None, cond, sev))
            continue
        if "max_severity" in f and isinstance(f["max_severity"], int | float) \
                and f["max_severity"] < 0:
            errors.append(f"{where}.max_severity: a severity must be >= 0, "
                          f"got {f['max_severity']!r}")
            continue
        times = [_num(f, k, where, errors, d, 0.0) for k, d in (
            ("onset_h", 0.0), ("incipient_h", 24.0), ("developed_h", 48.0), ("severe_h", 24.0))]
        top = _num(f, "max_severity", where, errors, 2.5, 1.0)
        onset, incipient, developed, severe = times
        if onset is None or incipient is None or developed is None or severe is None or (
                top is None):
            continue
        try:
            traj = Trajectory(cond, onset * 3600.0, incipient * 3600.0, developed * 3600.0,
                              severe * 3600.0, top)
        except ValueError as e:
            errors.append(f"{where}: {e}")
            continue
        faults.append(FaultSpec(asset, traj, cond))

    sensor_faults = []
    for i, f in enumerate(data.get("sensor_fault", [])):
        where = f"sensor_fault[{i}]"
        _unknown_keys(f, ("sensor", "kind", "start_h", "end_h"), where, errors)
        sensor, kind = f.get("sensor"), f.get("kind")
        if not isinstance(sensor, str):
            errors.append(f"{where}.sensor: is required (a sensor id), got {sensor!r}")
        if kind not in SENSOR_FAULTS:
            errors.append(f"{where}.kind: must be one of {', '.join(SENSOR_FAULTS)}, "
                          f"got {kind!r}")
        start = _num(f, "start_h", where, errors, 0.0, 0.0)
        end = _num(f, "end_h", where, errors, math.inf, 0.0) if "end_h" in f else math.inf
        if start is not None and end is not None and not start < end:
            errors.append(f"{where}: need start_h < end_h, got {start!r}, {end!r}")
        elif isinstance(sensor, str) and kind in SENSOR_FAULTS and start is not None \
                and end is not None:
            sensor_faults.append(SensorFaultSpec(sensor, str(kind), start, end))

    machines: dict[str, dict[str, float]] = {}
    for i, m in enumerate(data.get("machine", [])):
        where = f"machine[{i}]"
        _unknown_keys(m, ("asset", "looseness", "gear_wear"), where, errors)
        asset = m.get("asset")
        if not isinstance(asset, str):
            errors.append(f"{where}.asset: is required (an asset id), got {asset!r}")
            continue
        extras = {}
        for key in ("looseness", "gear_wear"):
            if key in m:
                v = _num(m, key, where, errors, minimum=0.0)
                if v is not None:
                    extras[key] = v
        machines[asset] = extras

    rnd = data.get("random", {})
    _unknown_keys(rnd, ("faults", "conditions"), "random", errors)
    count = rnd.get("faults", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        errors.append(f"random.faults: must be an integer >= 0, got {count!r}")
        count = 0
    conditions = tuple(rnd.get("conditions", Scenario.random_conditions))
    for c in conditions:
        _condition(c, "random.conditions", errors)
    if errors:
        raise ConfigError(errors)
    return Scenario(name=str(head.get("name", name)), seed=seed, time_scale=time_scale,
                    horizon_h=horizon, profile=profile, faults=tuple(faults),
                    sensor_faults=tuple(sensor_faults), machines=machines,
                    random_faults=count, random_conditions=conditions)


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML. A bare name ("week") is looked up in simulators/scenarios/."""
    p = Path(path)
    if not p.exists() and not p.suffix and (SCENARIO_DIR / f"{p.name}.toml").exists():
        p = SCENARIO_DIR / f"{p.name}.toml"
    data = read_toml(p, "the scenario")
    return dataclasses.replace(parse_scenario(data, p.stem), source=p.resolve())


# --- applying a scenario to a site -----------------------------------------------------


def resolve_faults(config: Config, scenario: Scenario) -> list[FaultSpec]:
    """The scenario's faults plus its random ones (drawn from the seed among the assets
    without a scheduled fault). Raises ConfigError for an unknown asset."""
    asset_ids = [a.id for a in config.assets]
    errors = []
    for i, f in enumerate(scenario.faults):
        if f.asset not in asset_ids:
            close = difflib.get_close_matches(f.asset, asset_ids, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"fault[{i}].asset: no asset {f.asset!r} in the site config{hint}")
    for asset in scenario.machines:
        if asset not in asset_ids:
            errors.append(f"machine.asset: no asset {asset!r} in the site config")
    sensors = config.sensor_index()
    for i, sf in enumerate(scenario.sensor_faults):
        if sf.sensor not in sensors:
            close = difflib.get_close_matches(sf.sensor, list(sensors), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"sensor_fault[{i}].sensor: no sensor {sf.sensor!r} in the site "
                          f"config{hint}")
    if errors:
        raise ConfigError(errors)
    taken = {f.asset for f in scenario.faults}
    free = [a for a in asset_ids if a not in taken]
    rng = np.random.default_rng([scenario.seed, 0xF1EE7])
    picked = rng.choice(len(free), size=min(scenario.random_faults, len(free)), replace=False)
    out = list(scenario.faults)
    for k in sorted(int(i) for i in picked):
        asset = free[k]
        cond = str(rng.choice(scenario.random_conditions))
        traj = random_trajectory(seed_for(scenario.seed, asset), scenario.horizon_h * 3600.0,
                                 condition=cond)
        out.append(FaultSpec(asset, traj, cond))
    return out


def apply(config: Config, scenario: Scenario, t_start_ns: int,
          time_scale: float | None = None) -> tuple[Config, list[FaultSpec]]:
    """`config` with the scenario in the simulated sensors' options, and its faults.

    Every simulated sensor gets the scenario's clock (`t_start_ns`, `time_scale`) and a
    seed from the scenario seed; sensors of a faulty asset get its trajectory. Each
    sensor's driver is built once to check it (no I/O): a bad combination raises
    ConfigError naming the scenario item and the sensor.
    """
    from ballpass.simulators.driver import SimulatedDriver

    faults = resolve_faults(config, scenario)
    by_asset = {f.asset: (i, f) for i, f in enumerate(faults)}
    faults_by_sensor: dict[str, list[dict[str, Any]]] = {}
    for sf in scenario.sensor_faults:
        item: dict[str, Any] = {"kind": sf.kind, "start_h": sf.start_h}
        if math.isfinite(sf.end_h):
            item["end_h"] = sf.end_h
        faults_by_sensor.setdefault(sf.sensor, []).append(item)
    scale = scenario.time_scale if time_scale is None else time_scale
    errors = []
    gateways = []
    for g in config.gateways:
        sensors = []
        for s in g.sensors:
            if s.driver != "simulated":
                sensors.append(s)
                continue
            opts = dict(s.options)
            opts.update(time_scale=scale, t_start_ns=int(t_start_ns),
                        seed=opts.get("seed", seed_for(scenario.seed, s.id)))
            if scenario.profile is not None:
                opts["profile"] = scenario.profile
            opts.update(scenario.machines.get(s.asset, {}))
            where = "site"
            if s.asset in by_asset:
                i, f = by_asset[s.asset]
                where = f"fault[{i}]" if i < len(scenario.faults) else f"random fault on {s.asset}"
                opts.pop("fault", None)
                opts.pop("severity", None)
                if f.trajectory is None:
                    opts.update(fault=f.condition, severity=f.severity)
                else:
                    t = f.trajectory
                    opts["trajectory"] = {
                        "condition": t.condition, "onset_h": t.onset_s / 3600.0,
                        "incipient_h": t.incipient_s / 3600.0,
                        "developed_h": t.developed_s / 3600.0,
                        "severe_h": t.severe_s / 3600.0, "max_severity": t.max_severity}
            if s.id in faults_by_sensor:
                opts["sensor_fault"] = faults_by_sensor[s.id]
            sensor = dataclasses.replace(s, options=opts)
            try:
                SimulatedDriver(sensor, config.asset(s.asset))
            except ValueError as e:
                errors.append(f"{where} (asset {s.asset}, sensor {s.id}): {e}")
            sensors.append(sensor)
        gateways.append(dataclasses.replace(g, sensors=tuple(sensors)))
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(config, gateways=tuple(gateways)), faults


def check_sensors(config: Config) -> None:
    """Build every simulated sensor's driver once (no I/O); ConfigError naming each bad one."""
    from ballpass.simulators.driver import SimulatedDriver

    errors = []
    for gi, g in enumerate(config.gateways):
        for si, s in enumerate(g.sensors):
            if s.driver == "simulated":
                try:
                    SimulatedDriver(s, config.asset(s.asset))
                except ValueError as e:
                    errors.append(f"gateway[{gi}].sensor[{si}] ({s.id}): {e}")
    if errors:
        raise ConfigError(errors)


# --- ground truth ----------------------------------------------------------------------


def truth(config: Config, scenario: Scenario, faults: list[FaultSpec], t_start_ns: int,
          time_scale: float) -> dict[str, Any]:
    """The ground truth of a run, JSON-ready: per faulty asset its sensors, condition,
    trajectory and stage start times (simulated seconds and wall-clock ns)."""
    by_asset: dict[str, list[str]] = {}
    for g in config.gateways:
        for s in g.sensors:
            by_asset.setdefault(s.asset, []).append(s.id)

    def wall_ns(t_s: float) -> int | None:
        return int(t_start_ns + t_s / time_scale * 1e9) if math.isfinite(t_s) else None

    items = []
    for f in faults:
        item: dict[str, Any] = {"asset": f.asset, "sensors": by_asset.get(f.asset, []),
                                "condition": f.condition}
        if f.trajectory is None:
            item["severity"] = f.severity
        else:
            d = f.trajectory.to_dict()
            item["trajectory"] = d
            item["stage_starts_ns"] = {k: wall_ns(v) for k, v in d["stage_starts_s"].items()}
            cross = zone_crossings(config, f)
            if cross is not None:
                item["iso_zone_crossings_s"] = cross
                item["iso_zone_crossings_ns"] = {
                    k: None if v is None else wall_ns(v) for k, v in cross.items()}
        items.append(item)
    faulty = {f.asset for f in faults}
    return {
        "scenario": scenario.name, "seed": scenario.seed, "time_scale": time_scale,
        "t_start_ns": int(t_start_ns), "horizon_h": scenario.horizon_h,
        "faults": items,
        "sensor_faults": [{**dataclasses.asdict(sf), "end_h": sf.end_h
                           if math.isfinite(sf.end_h) else None}
                          for sf in scenario.sensor_faults],
        "healthy_assets": [a.id for a in config.assets if a.id not in faulty],
    }


def zone_crossings(config: Config, fault: FaultSpec) -> dict[str, float | None] | None:
    """When the faulty asset's simulated velocity RMS (10-1000 Hz) first reaches the ISO
    20816 zone C and zone D boundaries of its group and foundation (simulated s; None: not
    before failure), measured on simulated windows of its first vibration sensor at the
    asset's nominal speed and full load (`degradation.zone_crossings_s`). None for a
    constant fault or an asset without a simulated vibration sensor or known speed."""
    from ballpass.simulators.driver import SimulatedDriver

    asset = config.asset(fault.asset)
    sensors = [s for s in sensors_of(config, fault.asset)
               if s.driver == "simulated" and s.kind != "temperature"]
    if fault.trajectory is None or not sensors:
        return None
    s = sensors[0]
    drv = SimulatedDriver(s, asset)  # its machine extras, as the run will synthesize them
    if not drv.shaft_hz:
        return None
    _, c, d = asset.levels.zone_boundaries_mm_s  # the zones the stream will judge by
    extras = {"looseness": drv.looseness, "gear_teeth": drv.gear_teeth,
              "gear_wear": drv.gear_wear, "noise_g": drv.noise_g}
    return zone_crossings_s(fault.trajectory, asset.bearing.orders(), drv.shaft_hz,
                            s.fs_hz, s.window_samples, {"C": c, "D": d}, extras=extras)


def truth_rows(faults: list[FaultSpec], horizon_h: float, step_h: float = 1.0
               ) -> list[tuple[float, str, str, str, float]]:
    """(t_h, asset, condition, stage, severity) for every faulty asset every `step_h` h."""
    rows = []
    for k in range(math.floor(horizon_h / step_h) + 1):
        t_h = k * step_h
        for f in faults:
            if f.trajectory is None:
                rows.append((t_h, f.asset, f.condition, "fixed", float(f.severity or 0.0)))
            else:
                p = f.trajectory.at(t_h * 3600.0)
                rows.append((t_h, f.asset, f.condition, p.stage, round(p.severity, 6)))
    return rows


def write_truth(path: Path, data: dict[str, Any], rows: list[tuple]) -> tuple[Path, Path]:
    """Write the truth JSON at `path` and its severity timeline CSV beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["t_h", "asset", "condition", "stage", "severity"])
        w.writerows(rows)
    return path, csv_path


def sensors_of(config: Config, asset: str) -> list[SensorConfig]:
    """Every sensor mounted on `asset`."""
    return [s for g in config.gateways for s in g.sensors if s.asset == asset]


def bearing_names() -> list[str]:
    """Catalog bearings a generated site uses (all must exist: checked by a test)."""
    names = sorted({b for _, _, bs, _, _ in REACTOR_PARTS for b in bs})
    for n in names:
        lookup(n)
    return names
