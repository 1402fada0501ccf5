"""Physics-based vibration of a machine with rolling-element bearings (numpy only).

The model follows Randall & Antoni, "Rolling element bearing diagnostics — A tutorial",
MSSP 25 (2011), §2: a localised bearing defect produces a train of impacts at its
defect frequency (BPFO, BPFI, 2×BSF for a ball, FTF for the cage) whose spacing varies
randomly by about 1.5 % (slip) and whose strength varies by about 35 % from one impact to
the next, each impact ringing the structure's resonances (here two
decaying sinusoids, 3.0 and 4.6 kHz, damping ratio 0.02 and 0.05). A defect that turns
with the shaft (inner race) or with the cage (ball) passes through the load zone once per
turn, which modulates the impact amplitudes at the shaft rate or at FTF; an outer-race
defect sits in the load zone and is not modulated. A standard envelope analysis (band-pass
around the resonances, Hilbert envelope, spectrum) therefore shows the defect line and its
harmonics, with ±fr sidebands for the inner race and ±FTF for a ball. A ball is not held
to one spin axis: its axis takes a random step each time it crosses the unloaded zone, so
the defect wanders on and off the contact track and strikes with the contact pressure it
meets there, on some cage turns only: ball faults are weak and intermittent, as on the
CWRU rig (Smith & Randall, MSSP 64-65 (2015)).

Every machine adds shaft-rate lines (1× residual imbalance, a little 2× and 3×),
broadband structural vibration and white measurement noise. Imbalance raises 1×,
misalignment 2× (and 1×, 3×); poor lubrication raises a broadband floor above ~5 kHz.
Amplitudes at severity 1.0 are in `ballpass.simulators.conditions`.

Everything noise-like and the impact response is built in the frequency domain and
turned into a signal by one inverse FFT (the impact train is convolved circularly with
the resonance response, which is stationary-equivalent for a window much longer than the
≈3 ms ring-down); shaft lines are added in the time domain. One second at 25.6 kHz costs
about 1.5 ms of CPU (0.15 % of a core per sensor-second).
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ballpass.models.bearing import DefectOrders
from ballpass.simulators.conditions import (
    CONDITION_NAMES,
    CONDITIONS,
    DEFAULT_NOISE_G,
    GEAR_MESH_G,
    GEAR_SIDEBAND,
    GEAR_SIDEBAND_DECAY,
    GEAR_SIDEBAND_WEAR,
    HEALTHY_MACHINE_RMS_G,
    HEALTHY_RESONANCE_SHARE,
    HEALTHY_SHAFT_MM_S,
    HEALTHY_TEMP_C,
    LOOSENESS_1X_MM_S,
    LOOSENESS_HALF,
    LOOSENESS_HARMONICS,
    LOOSENESS_MM_S,
    TEMP_NOISE_C,
    TEMP_WANDER_C,
    WEAR_1X_SHARE,
    WEAR_BAND_ORDERS,
    Condition,
    line_order,
)

__all__ = [
    "CONDITION_NAMES",
    "defect_hz",
    "hf_band_hz",
    "resonances_hz",
    "synthesize",
    "temperature",
    "validate",
    "velocity_rms_mm_s",
]

STANDARD_GRAVITY = 9.80665  # m/s² per g

#: Structural resonances excited by each impact: (nominal Hz, damping ratio, relative gain).
RESONANCES = ((3000.0, 0.02, 1.0), (4600.0, 0.05, 0.5))
#: A resonance never sits above this fraction of fs (it moves down for low sample rates).
RESONANCE_MAX_FRACTION = (0.25, 0.38)
#: Random slip: relative standard deviation of the interval between impacts.
SLIP = 0.015
#: Random impact-to-impact amplitude variation (relative standard deviation).
IMPACT_SPREAD = 0.35
#: Load zone: amplitude = floor + (1 − floor)·max(cos θ, 0)^1.5 (Stribeck, ε = 0.5).
LOAD_ZONE_FLOOR = 0.5
#: A ball strikes the inner and outer race alternately; the inner-race strike is weaker.
BALL_SECOND_STRIKE = 0.8
#: A ball's defect strikes only when it passes through the contact: its lateral offset
#: from the contact track (the great circle the spin axis defines), over the ball radius,
#: must be below this half-width: Hertz semi-major axis (≈ 0.75 mm for the most loaded
#: ball of a 6205 at ~0.5 kN radial load, Harris) plus the defect's radius (0.1-0.35 mm),
#: over the ball radius (3.97 mm). a/R stays near this for loads proportional to the
#: bearing's rating (a ∝ (Q·R)^(1/3), C ∝ D^1.8), so one fraction serves every size.
BALL_TRACK_HALF_WIDTH = 0.25
#: RMS angle (rad) by which a ball's spin axis turns each time the ball crosses the
#: unloaded zone (once per cage turn), where the races hold it least; in the load zone the
#: two race contacts pin it. A random walk on the sphere: the defect drifts on and off
#: the track over a few cage turns (the ball spins ~6 times per cage turn, so the walk is
#: slow against the spin). Not measured: chosen from the fidelity check (EVALUATION.md).
BALL_AXIS_STEP = 1.0
#: Lubrication floor band: from min(5 kHz, 0.35·fs) to min(20 kHz, 0.45·fs).
HF_BAND = (5000.0, 0.35, 20000.0, 0.45)
#: Healthy structural vibration band (Hz): rises above the first, rolls off above the second.
MACHINE_BAND = (150.0, 2500.0)
#: Fixed phases (rad) of the 2× and 3× shaft lines relative to the 1× line.
_HARMONIC_PHASE = (0.0, 0.7, 1.9)


def resonances_hz(fs_hz: float) -> tuple[float, ...]:
    """Frequencies (Hz) of the structural resonances used at sample rate `fs_hz`."""
    return tuple(
        min(f, frac * fs_hz) for (f, _, _), frac in zip(RESONANCES, RESONANCE_MAX_FRACTION,
                                                       strict=True)
    )


def hf_band_hz(fs_hz: float) -> tuple[float, float]:
    """The band (Hz) of the high-frequency floor a lubrication problem raises."""
    lo, lo_frac, hi, hi_frac = HF_BAND
    return min(lo, lo_frac * fs_hz), min(hi, hi_frac * fs_hz)


def defect_hz(condition: str, orders: DefectOrders, shaft_hz: float) -> tuple[str, float]:
    """The characteristic line of `condition` as (name, Hz): BPFO, BPFI, 2×BSF, FTF,
    2× shaft for misalignment, else 1× shaft."""
    name, order = line_order(_condition(condition), orders)
    return name, order * shaft_hz


def validate(condition: str, orders: DefectOrders, shaft_hz: float, fs_hz: float,
             severity: float = 1.0, noise_g: float = DEFAULT_NOISE_G) -> None:
    """Raise ValueError naming the bad item when `synthesize` would refuse these inputs."""
    _condition(condition)
    if not (_real(fs_hz) and fs_hz > 0):
        raise ValueError(f"fs_hz: must be a finite number > 0, got {fs_hz!r}")
    if not (_real(shaft_hz) and shaft_hz > 0):
        raise ValueError(f"shaft_hz: must be a finite number > 0, got {shaft_hz!r}")
    if not (_real(severity) and severity >= 0):
        raise ValueError(f"severity: must be a finite number >= 0, got {severity!r}")
    if not (_real(noise_g) and noise_g >= 0):
        raise ValueError(f"noise_g: must be a finite number >= 0, got {noise_g!r}")
    line, hz = defect_hz(condition, orders, shaft_hz)
    if hz >= fs_hz / 2:
        raise ValueError(
            f"{line}: {condition} line at {hz:.6g} Hz (shaft_hz={shaft_hz:g}) is not below "
            f"the Nyquist frequency {fs_hz / 2:g} Hz (fs_hz={fs_hz:g})"
        )


def synthesize(
    condition: str,
    orders: DefectOrders,
    shaft_hz: float,
    fs_hz: float,
    n_samples: int,
    *,
    severity: float = 1.0,
    rng: np.random.Generator,
    t0_s: float = 0.0,
    noise_g: float = DEFAULT_NOISE_G,
    load: float = 1.0,
    looseness: float = 0.0,
    gear_teeth: int = 0,
    gear_wear: float = 0.0,
    hf_extra: float = 0.0,
    wear_mm_s: float = 0.0,
) -> np.ndarray:
    """One window of acceleration (g) of a machine in `condition`.

    `orders`: the bearing's defect orders; `shaft_hz`: shaft speed (Hz); `fs_hz`: sample
    rate (Hz); `severity` ≥ 0 scales the fault (1.0: a developed fault, 0.0: healthy);
    `rng` drives every random part (deterministic for a seed); `t0_s` (s) sets the phase
    of the shaft lines, as a keyphasor would; `noise_g`: white sensor noise (g RMS).
    Machine-level extras, independent of `condition`: `load` (0..1.5, 1 nominal) scales
    the bearing impacts (a lightly loaded bearing strikes softer); `looseness` ≥ 0 adds
    shaft harmonics up to 10× and half orders (1.0: clear looseness); `gear_teeth` > 0
    adds the gear mesh of a pinion with that many teeth on this shaft, with ±1..3× shaft
    sidebands that grow with `gear_wear` ≥ 0; `hf_extra` ≥ 0 adds a lubrication-type
    high-frequency floor (as a lubrication severity: late bearing damage); `wear_mm_s` ≥ 0
    adds the low-frequency vibration of a worn bearing (mm/s RMS in 10-1000 Hz: a 1× line
    and a random haystack between 2× and 12× shaft, `conditions.WEAR_*`).
    Returns float64, shape (n_samples,). Each call is an independent window: the impact
    train starts at a random phase.
    """
    validate(condition, orders, shaft_hz, fs_hz, severity, noise_g)
    _check_extras(load, looseness, gear_teeth, gear_wear, hf_extra)
    if not (_real(wear_mm_s) and wear_mm_s >= 0):
        raise ValueError(f"wear_mm_s: must be a finite number >= 0, got {wear_mm_s!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) \
            or n_samples < 1:
        raise ValueError(f"n_samples: must be an integer >= 1, got {n_samples!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: must be a numpy.random.Generator, got {type(rng).__name__}")
    if not math.isfinite(t0_s):
        raise ValueError(f"t0_s: must be finite, got {t0_s!r}")
    cond = CONDITIONS[condition]
    n = int(n_samples)
    fs = float(fs_hz)
    sp = _spectra(n, fs)

    # Gaussian parts (structure, sensor noise, lubrication floor) are independent, so
    # their power shapes add; one complex draw and one inverse FFT make all of them.
    power = HEALTHY_MACHINE_RMS_G**2 * sp.machine + noise_g**2 * sp.white
    hf_g = severity * cond.hf_rms_g + hf_extra * CONDITIONS["lubrication"].hf_rms_g
    if hf_g:
        power = power + hf_g**2 * sp.hf
    if wear_mm_s > 0:
        power = power + (1.0 - WEAR_1X_SHARE) * wear_mm_s**2 * _wear_shape(sp, shaft_hz)
    m = sp.freq.size
    spectrum = (rng.standard_normal(m) + 1j * rng.standard_normal(m)) * np.sqrt(
        power * (n * n / 4.0)
    )
    if cond.line is not None and severity > 0 and n > 1:
        spectrum += sp.response * np.fft.rfft(
            _impact_train(cond, orders, shaft_hz, fs, n, severity * _load_gain(load), rng,
                          sp.impulse_energy)
        )
    x = np.fft.irfft(spectrum, n)
    if looseness > 0 or gear_teeth > 0:
        x += _periodic_lines(shaft_hz, fs, sp.index, t0_s, looseness, int(gear_teeth),
                             gear_wear)

    # Shaft-rate lines, phase-locked to t0 like a keyphasor reference.
    phase0 = 2.0 * math.pi * math.fmod(shaft_hz * t0_s, 1.0)
    for h, (base, added) in enumerate(zip(HEALTHY_SHAFT_MM_S, cond.shaft_mm_s, strict=True),
                                      start=1):
        f = h * shaft_hz
        v = base + severity * added
        if v <= 0 or f >= fs / 2:
            continue
        amp = math.sqrt(2.0) * v * 1e-3 * 2.0 * math.pi * f / STANDARD_GRAVITY
        x += amp * np.cos((2.0 * math.pi * f / fs) * sp.index + (h * phase0
                                                                + _HARMONIC_PHASE[h - 1]))
    if wear_mm_s > 0 and shaft_hz < fs / 2:
        # Clearance-driven 1×, a quarter turn from the residual 1× (their powers add).
        amp = _mm_s_to_g(math.sqrt(2.0 * WEAR_1X_SHARE) * wear_mm_s, shaft_hz)
        x += amp * np.cos((2.0 * math.pi * shaft_hz / fs) * sp.index
                          + (phase0 + _HARMONIC_PHASE[0] + 0.5 * math.pi))
    return x


def _wear_shape(sp: _Spectra, shaft_hz: float) -> np.ndarray:
    """Acceleration power (g² per bin, per (mm/s)² of velocity) of the wear haystack:
    flat in velocity between WEAR_BAND_ORDERS × shaft, 4th-order skirts."""
    f = sp.freq
    lo, hi = WEAR_BAND_ORDERS[0] * shaft_hz, WEAR_BAND_ORDERS[1] * shaft_hz
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        vel = (f / lo) ** 8 / (1.0 + (f / lo) ** 8) / (1.0 + (f / hi) ** 8)
    vel = _normalise(np.nan_to_num(vel) * (sp.white > 0))
    return vel * (1e-3 * 2.0 * math.pi * f / STANDARD_GRAVITY) ** 2


def velocity_rms_mm_s(x: np.ndarray, fs_hz: float, lo_hz: float = 10.0,
                      hi_hz: float = 1000.0) -> float:
    """Velocity RMS (mm/s) of acceleration `x` (g) between `lo_hz` and `hi_hz`, integrated
    in the frequency domain as the stream does. The default band is ISO 20816's at 600
    r/min and above; a slower shaft's is `iso20816.velocity_band_hz(shaft_hz)`."""
    n = x.size
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n, 1.0 / fs_hz)
    w = np.where((f >= lo_hz) & (f <= hi_hz) & (f > 0), 2.0 / (n * n), 0.0)
    if n % 2 == 0:
        w[-1] *= 0.5
    with np.errstate(divide="ignore"):
        w = np.where(w > 0, w / (2.0 * math.pi * np.maximum(f, 1e-12)) ** 2, 0.0)
    return float(math.sqrt(float(np.sum(w * np.abs(spec) ** 2))) * STANDARD_GRAVITY * 1000.0)


def _check_extras(load: float, looseness: float, gear_teeth: int, gear_wear: float,
                  hf_extra: float) -> None:
    if not (_real(load) and 0 <= load <= 1.5):
        raise ValueError(f"load: must be a number in [0, 1.5], got {load!r}")
    for name, value in (("looseness", looseness), ("gear_wear", gear_wear),
                        ("hf_extra", hf_extra)):
        if not (_real(value) and value >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    if isinstance(gear_teeth, bool) or not isinstance(gear_teeth, int | np.integer) \
            or not (gear_teeth == 0 or 5 <= gear_teeth <= 500):
        raise ValueError(f"gear_teeth: must be 0 (no gear) or an integer in 5..500, "
                         f"got {gear_teeth!r}")


def _load_gain(load: float) -> float:
    """Impact amplitude relative to full load (an unloaded bearing still rattles)."""
    return 0.4 + 0.6 * min(load, 1.5)


#: Points per two shaft turns of the table the periodic lines are read from.
_TABLE = 16384


def _periodic_lines(shaft_hz: float, fs: float, index: np.ndarray, t0_s: float,
                    looseness: float, gear_teeth: int, gear_wear: float) -> np.ndarray:
    """Looseness harmonics and gear mesh lines (g), phase-locked to the shaft.

    Every line is a multiple of half the shaft rate, so the sum is periodic over two
    turns: it is built once per call as a table by one inverse FFT (cost independent of
    the number of lines) and read with linear interpolation. Lines at or above Nyquist
    are left out.
    """
    spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)

    def add(order: float, rms_g: float, phase: float) -> None:
        k = round(2 * order)  # cycles per table (two turns)
        if rms_g <= 0 or order * shaft_hz >= fs / 2 or not 0 < k < _TABLE // 2:
            return
        spec[k] += math.sqrt(2.0) * rms_g * (_TABLE / 2.0) * complex(math.cos(phase),
                                                                   math.sin(phase))

    if looseness > 0:
        for h in range(1, LOOSENESS_HARMONICS + 1):
            v = LOOSENESS_1X_MM_S if h == 1 else LOOSENESS_MM_S / math.sqrt(h)
            add(h, looseness * _mm_s_to_g(v, h * shaft_hz), 0.9 * h)
            half = h - 0.5
            add(half, looseness * LOOSENESS_HALF * _mm_s_to_g(LOOSENESS_MM_S / math.sqrt(
                max(half, 1.0)), half * shaft_hz), 1.3 * h)
    if gear_teeth > 0:
        side = GEAR_SIDEBAND + GEAR_SIDEBAND_WEAR * gear_wear
        for m, mesh_g in enumerate(GEAR_MESH_G, start=1):
            centre = m * gear_teeth
            add(centre, mesh_g * (1.0 + 0.5 * gear_wear), 0.4 * m)
            for j in (1, 2, 3):
                amp = mesh_g * side * GEAR_SIDEBAND_DECAY ** (j - 1)
                add(centre - j, amp, 0.4 * m - 1.1 * j)
                add(centre + j, amp, 0.4 * m + 1.1 * j)
    table = np.fft.irfft(spec, _TABLE)
    table = np.append(table, table[0])  # closes the period for interpolation
    # Position in the two-turn period (in table points), continued from t0 like a keyphasor.
    start = math.fmod(shaft_hz * t0_s, 2.0) / 2.0 * _TABLE
    pos = np.fmod(start + index * (shaft_hz / fs / 2.0 * _TABLE), float(_TABLE))
    return np.interp(pos, np.arange(_TABLE + 1, dtype=np.float64), table)


def _mm_s_to_g(v_mm_s: float, f_hz: float) -> float:
    """RMS acceleration (g) of a sinusoid of RMS velocity `v_mm_s` (mm/s) at `f_hz`."""
    return v_mm_s * 1e-3 * 2.0 * math.pi * f_hz / STANDARD_GRAVITY


def temperature(condition: str, n_samples: int, *, severity: float = 1.0,
                rng: np.random.Generator) -> np.ndarray:
    """A burst of `n_samples` bearing-housing temperatures (°C), float64.

    Healthy about 40 °C with a slow wander between bursts; a fault adds its
    `temp_rise_c` × severity (friction heat), lubrication most.
    """
    cond = _condition(condition)
    if not (_real(severity) and severity >= 0):
        raise ValueError(f"severity: must be a finite number >= 0, got {severity!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) \
            or n_samples < 1:
        raise ValueError(f"n_samples: must be an integer >= 1, got {n_samples!r}")
    level = HEALTHY_TEMP_C + severity * cond.temp_rise_c + TEMP_WANDER_C * rng.standard_normal()
    return level + TEMP_NOISE_C * rng.standard_normal(int(n_samples))


# --- internals -----------------------------------------------------------------------


def _real(value: object) -> bool:
    """A finite real number (numpy scalars included, bools not)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _condition(name: str) -> Condition:
    try:
        return CONDITIONS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), CONDITION_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"condition: unknown {name!r}{hint} (known: {', '.join(CONDITION_NAMES)})"
        ) from None


@dataclass(frozen=True)
class _Spectra:
    """Per-(n, fs) arrays, computed once: everything a window needs but the random draws.

    Power shapes are per rfft bin, normalised to sum 1 over the bins (DC and Nyquist
    excluded), so `rms² · shape` gives a process of that RMS (see `synthesize`).
    """

    freq: np.ndarray
    index: np.ndarray
    machine: np.ndarray
    white: np.ndarray
    hf: np.ndarray
    response: np.ndarray  # DFT of the (periodised) impulse response of the structure
    impulse_energy: float  # Σ h² of that response (g² per unit impulse²)


def _normalise(shape: np.ndarray) -> np.ndarray:
    shape = shape.copy()
    shape[0] = 0.0
    total = shape.sum()
    return shape / total if total > 0 else shape


# A gateway uses a handful of (window, rate) pairs; a 25600-sample entry is ~1 MB.
@functools.lru_cache(maxsize=8)
def _spectra(n: int, fs: float) -> _Spectra:
    freq = np.fft.rfftfreq(n, 1.0 / fs)
    zinv = np.exp(-2j * np.pi * np.arange(freq.size) / n)
    response = np.zeros(freq.size, dtype=np.complex128)
    for (_, zeta, gain), f_res in zip(RESONANCES, resonances_hz(fs), strict=True):
        # Z-transform of r^k·sin(θk) (k ≥ 0) on the unit circle = DFT of the decaying
        # sinusoid wrapped onto n samples: the exact circular-convolution kernel.
        w = 2.0 * math.pi * f_res
        r = math.exp(-zeta * w / fs)
        theta = w * math.sqrt(1.0 - zeta * zeta) / fs
        wrap = 1.0 / (1.0 - r**n)
        response += gain * wrap * r * math.sin(theta) * zinv / (
            1.0 - 2.0 * r * math.cos(theta) * zinv + r * r * zinv * zinv
        )
    power = np.abs(response) ** 2
    # Parseval over the full (two-sided) spectrum.
    impulse_energy = float((2.0 * power.sum() - power[0] - (power[-1] if n % 2 == 0 else 0.0))
                           / n)

    interior = np.ones(freq.size)
    interior[0] = 0.0
    if n % 2 == 0:
        interior[-1] = 0.0  # the Nyquist bin of an even n is real: leave it empty
    f_lo, f_hi = MACHINE_BAND
    with np.errstate(divide="ignore", invalid="ignore"):
        band = (freq / f_lo) ** 2 / (1.0 + (freq / f_lo) ** 2) / (1.0 + (freq / f_hi) ** 4)
        h_lo, h_hi = hf_band_hz(fs)
        hf = (freq / h_lo) ** 8 / (1.0 + (freq / h_lo) ** 8) / (1.0 + (freq / h_hi) ** 8)
    band = _normalise(band * interior)
    structure = _normalise(power * interior)
    machine = (1.0 - HEALTHY_RESONANCE_SHARE) * band + HEALTHY_RESONANCE_SHARE * structure
    out = _Spectra(
        freq=freq,
        index=np.arange(n, dtype=np.float64),
        machine=machine,
        white=_normalise(interior),
        hf=_normalise(hf * interior),
        response=response,
        impulse_energy=impulse_energy,
    )
    for a in (out.freq, out.index, out.machine, out.white, out.hf, out.response):
        a.flags.writeable = False
    return out


def _load_zone(theta: np.ndarray) -> np.ndarray:
    """Relative impact amplitude of a defect at angle θ (rad) from the load-zone centre."""
    return LOAD_ZONE_FLOOR + (1.0 - LOAD_ZONE_FLOOR) * np.maximum(np.cos(theta), 0.0) ** 1.5


# Mean square of the load-zone factor over a turn (normalises the modulated RMS).
_LOAD_ZONE_MS = float(np.mean(_load_zone(np.linspace(0.0, 2.0 * np.pi, 4096,
                                                     endpoint=False)) ** 2))


# Mean square of the track factor: in the random walk's stationary (uniform) distribution
# the defect's height z above the track plane is uniform on [-1, 1] (Archimedes), so
# E[1 − (z/w)²; |z| < w] = 2w/3.
_BALL_TRACK_MS = 2.0 * BALL_TRACK_HALF_WIDTH / 3.0


def _ball_track(turns: int, rng: np.random.Generator) -> np.ndarray:
    """Strike amplitude factor of a ball's defect for `turns` consecutive cage turns.

    The defect is a point d on the ball; the race contacts run along the great circle
    normal to the spin axis. The axis takes a random step of RMS angle BALL_AXIS_STEP per
    turn (a random walk on the sphere, started from its uniform stationary state), so the
    defect's height z = d·axis wanders; it strikes with the Hertz pressure it meets,
    sqrt(1 − (z/w)²) for |z| < w = BALL_TRACK_HALF_WIDTH, else not at all.
    """
    if turns <= 0:
        return np.zeros(0)
    # Walk d relative to a fixed axis (the same thing): tangential steps of RMS angle
    # BALL_AXIS_STEP (two components of σ = step/√2), projected back onto the sphere.
    steps = rng.standard_normal((turns, 3)) * (BALL_AXIS_STEP / math.sqrt(2.0))
    z0 = rng.uniform(-1.0, 1.0)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    rho = math.sqrt(1.0 - z0 * z0)
    x, y, z = rho * math.cos(phi), rho * math.sin(phi), z0
    height = np.empty(turns)
    for k, (dx, dy, dz) in enumerate(steps.tolist()):
        height[k] = z
        x, y, z = x + dx, y + dy, z + dz
        norm = math.sqrt(x * x + y * y + z * z)
        x, y, z = x / norm, y / norm, z / norm
    u = height / BALL_TRACK_HALF_WIDTH
    return np.sqrt(np.maximum(1.0 - u * u, 0.0))


def _impact_train(cond: Condition, orders: DefectOrders, shaft_hz: float, fs: float, n: int,
                  severity: float, rng: np.random.Generator, impulse_energy: float
                  ) -> np.ndarray:
    """Impacts of one window as unit-sample impulses (length n), scaled so that their
    response has RMS severity × `cond.impact_rms_g` in expectation."""
    _, order = line_order(cond, orders)
    rate = order * shaft_hz  # impacts per second
    duration = n / fs
    period = 1.0 / rate
    # Random phase of the first impact; intervals jittered by slip (a random walk in time,
    # as in Randall & Antoni: the defect lines smear more at higher harmonics).
    count = int(duration * rate * (1.0 + 6.0 * SLIP)) + 8
    intervals = period * (1.0 + SLIP * rng.standard_normal(count))
    times = rng.uniform(0.0, period) + np.concatenate(([0.0], np.cumsum(intervals[:-1])))
    times = times[times < duration]
    # Impacts vary a lot from one to the next (a roller enters the defect at a slightly
    # different speed and angle each time); never negative.
    amps = np.abs(1.0 + IMPACT_SPREAD * rng.standard_normal(times.size))
    mean_square = 1.0 + IMPACT_SPREAD**2
    if cond.line == "2bsf":
        # The ball's defect strikes outer and inner race in turn (its spin is 2×BSF); both
        # contacts lie on the same track (zero contact angle), so they share its offset.
        start = int(rng.integers(2))
        amps[start::2] *= BALL_SECOND_STRIKE
        mean_square *= (1.0 + BALL_SECOND_STRIKE**2) / 2.0
        # The ball's position in the cage turn (turns; integer = load-zone centre). Its
        # spin axis is free only in the unloaded zone, so it changes once per turn there:
        # a turn runs from one unloaded-zone centre to the next.
        cage = orders.ftf * shaft_hz * times + rng.uniform()
        turn = np.floor(cage + 0.5).astype(np.int64)
        first = int(turn[0]) if turn.size else 0
        track = _ball_track(int(turn[-1]) - first + 1 if turn.size else 0, rng)
        # The same load zone as any rotating defect (`_load_zone`).
        amps *= track[turn - first] * _load_zone(2.0 * math.pi * cage)
        mean_square *= _BALL_TRACK_MS * _LOAD_ZONE_MS
    elif cond.modulation != "none":
        carrier = shaft_hz if cond.modulation == "shaft" else orders.ftf * shaft_hz
        phase = rng.uniform(0.0, 2.0 * math.pi)
        amps *= _load_zone(2.0 * math.pi * carrier * times + phase)
        mean_square *= _LOAD_ZONE_MS
    # Expected power per sample of the response: (rate/fs)·E[a²]·Σh².
    scale = severity * cond.impact_rms_g / math.sqrt(
        rate / fs * mean_square * impulse_energy
    )
    index = np.minimum((times * fs).astype(np.int64), n - 1)
    return np.bincount(index, weights=amps * scale, minlength=n)
