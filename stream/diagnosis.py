"""Physics-based diagnosis of one window from its features.

Rules, in order (the first that fires wins):

1. sensor_fault: non-finite samples, a flat line, a signal below any sensor's noise, an
   impossible peak, the wire's clipped flag, samples piled on the rails (saturation),
   isolated electrical spikes, flat broadband noise at tens of g, or mains hum. Each gives
   its reason; the alert layer routes it as an instrument alert, not a machine alarm.
2. insufficient_data: the window is too short to resolve shaft sidebands
   (fs/N > 1/4 of the shaft rate) or spans fewer than 5 revolutions.
3. Bearing defects, from the envelope spectrum (Randall & Antoni 2011, sec. 2). Each needs
   its fundamental above the line threshold, backed by two more lines (harmonics or
   sidebands) unless the fundamental alone is strong:
   outer_race: BPFO and its harmonics;
   inner_race: BPFI with ±1× shaft sidebands (the defect turns with the shaft through
   the load zone) or harmonics;
   ball: 2×BSF with ±FTF sidebands (the ball turns with the cage) or harmonics;
   cage: FTF and its 2nd harmonic, both clearly above the floor.
   Candidates are ranked by the SNR of their fundamental plus 1 dB per supporting line.
3b. ball, without a line: the lags between the envelope's impacts, pooled over the
   sensor's recent windows, fall at the ball's strike period 1/(2×BSF) (p < 1e-3 against
   the lags around it) more significantly than at either race's (`dsp.impacts`).
4. ISO 20816 zone C or D with the 1× shaft line (a real line over its floor) carrying most
   of the velocity: imbalance; with a 2× line at least half of 1×: misalignment.
5. lubrication: high broadband high-frequency level that is not impulsive.
6. unknown_anomaly: impulsive (kurtosis) without a kinematic line, or zone D unexplained.
7. normal.

Thresholds live in `ballpass.stream.thresholds`; none was fitted to a data set.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ballpass.models import iso20816
from ballpass.stream import thresholds as th
from ballpass.stream.faults import Fault, Line, Sideband
from ballpass.stream.features import IMPACT_FAMILIES, LINES, SIDEBANDS, FeatureBatch
from ballpass.stream.impact_history import expected_hits, interval_score

DIAGNOSES: tuple[str, ...] = tuple(Fault)


@dataclass(frozen=True)
class Evidence:
    """One spectral line supporting a diagnosis: name, harmonic, frequency (Hz), SNR (dB)."""

    line: str
    harmonic: int
    freq_hz: float
    snr_db: float


@dataclass(frozen=True)
class Diagnosis:
    """Diagnosis of one window. `confidence` in [0, 1]; `iso_zone` "A".."D" or "" if unknown."""

    diagnosis: str
    confidence: float
    evidence: tuple[Evidence, ...]
    reason: str
    iso_zone: str


class DecisionLevels(Protocol):
    """An asset's own decision levels (`ballpass.config.AssetLevels` is one): the velocity
    zone boundaries (A/B, B/C, C/D) in mm/s, and the envelope line thresholds in dB."""

    @property
    def zone_boundaries_mm_s(self) -> tuple[float, float, float]: ...

    @property
    def line_snr_db(self) -> float: ...

    @property
    def strong_line_snr_db(self) -> float: ...


@dataclass(frozen=True)
class _Thresholds:
    """The envelope line thresholds one window is judged by (dB)."""

    line: float = th.LINE_SNR_DB
    strong: float = th.STRONG_LINE_SNR_DB
    # Cage lines ask for more than any line (`CAGE_LINE_SNR_DB`), and never for less
    # than an asset's own presence threshold.
    cage: float = th.CAGE_LINE_SNR_DB


_DEFAULT_THRESHOLDS = _Thresholds()


@functools.lru_cache(maxsize=256)
def _thresholds(line_db: float, strong_db: float) -> _Thresholds:
    """An asset's thresholds (cached: the same few assets' at every window)."""
    return _Thresholds(line_db, strong_db, max(th.CAGE_LINE_SNR_DB, line_db))


def _conf(excess_db: float) -> float:
    """Confidence from evidence `excess_db` above its threshold: 0.5 at 0 dB, 1 at full."""
    return float(min(1.0, max(0.0, 0.5 + 0.5 * excess_db / th.CONFIDENCE_FULL_DB)))


def _line_evidence(batch: FeatureBatch, i: int, li: int) -> list[Evidence]:
    # One `tolist` per line, not a numpy scalar per value.
    freqs = batch.line_freq_hz[i, li].tolist()
    snrs = batch.line_snr_db[i, li].tolist()
    return [Evidence(LINES[li], h + 1, f, s)
            for h, (f, s) in enumerate(zip(freqs, snrs, strict=True))]


def _sideband_evidence(batch: FeatureBatch, i: int, sbs: tuple[int, ...],
                       min_db: float) -> list[Evidence]:
    """The sidebands `sbs` of window `i` at `min_db` or more."""
    out = []
    for s in sbs:
        freqs = batch.sideband_freq_hz[i, s].tolist()
        snrs = batch.sideband_snr_db[i, s].tolist()
        out += [Evidence(SIDEBANDS[s], h + 1, f, snr)
                for h, (f, snr) in enumerate(zip(freqs, snrs, strict=True)) if snr >= min_db]
    return out


@dataclass(frozen=True)
class _Candidate:
    """A defect family whose pattern is present in one window's envelope spectrum."""

    score: float  # ranking: fundamental SNR (dB) + SUPPORT_BONUS_DB per supporting line
    name: str
    support: list[Evidence]  # present lines, the fundamental first
    harmonics: list[Evidence]  # present harmonics of the family's own line (for ±1× shaft)


_FAMILIES: tuple[tuple[Fault, Line, tuple[Sideband, ...], tuple[int, ...]], ...] = (
    # (diagnosis, its envelope line, its sidebands, odd-BSF harmonic indices)
    (Fault.OUTER_RACE, Line.BPFO, (), ()),
    (Fault.INNER_RACE, Line.BPFI, (Sideband.BPFI_MINUS_SHAFT, Sideband.BPFI_PLUS_SHAFT), ()),
    (Fault.BALL, Line.BSF2, (Sideband.BSF2_MINUS_FTF, Sideband.BSF2_PLUS_FTF), (0, 2)),
    (Fault.CAGE, Line.FTF, (), ()),
)
"""Each defect's line family. A ball adds the odd multiples of BSF (1× and 3×, harmonic
indices 0 and 2: its strikes on the two races differ, see `features.LINES`); BSF's 2nd
harmonic is 2×BSF itself."""

_BSF = Line.BSF
_SHAFT = Line.SHAFT

_MODULATION = {Fault.INNER_RACE: Line.SHAFT, Fault.BALL: Line.FTF}
"""The envelope line of the rate at which each rotating defect passes the load zone: the
shaft for the inner race, the cage (FTF) for a ball (Randall & Antoni 2011, sec. 2.2).
Used only to tell two coinciding patterns apart, not to detect a defect."""


def _bearing_candidates(batch: FeatureBatch, i: int, t: _Thresholds
                        ) -> tuple[list[_Candidate], list[str]]:
    """The defect families present in window `i` after exclusive attribution, best first,
    and the families left undecided (two patterns that only share lines), if any."""
    thr = t.line
    cands: list[_Candidate] = []
    for name, li, sbs, odd in _FAMILIES:
        # Most windows have no fundamental: read the number before building evidence.
        if batch.line_snr_db[i, li, 0] < (t.cage if name == Fault.CAGE else thr):
            continue
        lines = _line_evidence(batch, i, li)
        fundamental = lines[0]
        present = [e for e in lines if e.snr_db >= thr]
        sidebands = _sideband_evidence(batch, i, sbs, thr)
        bsf = _line_evidence(batch, i, _BSF) if odd else []
        odd_lines = [bsf[h] for h in odd if bsf[h].snr_db >= thr]
        if name == Fault.CAGE:
            ok = sum(e.snr_db >= t.cage for e in present) >= 2
        else:
            # Fundamental plus MIN_SUPPORT_LINES more (harmonics, sidebands, odd BSF lines),
            # or a strong fundamental. On white noise one line passes in ~1 % of searches.
            ok = (
                len(present) - 1 + len(sidebands) + len(odd_lines) >= th.MIN_SUPPORT_LINES
                or fundamental.snr_db >= t.strong
            )
        if not ok:
            continue
        support = present + sidebands + odd_lines
        # The fundamental is the most specific line; harmonics and sidebands add support.
        score = fundamental.snr_db + th.SUPPORT_BONUS_DB * (len(support) - 1)
        cands.append(_Candidate(score, name, support, present))
    shaft = float(batch.shaft_hz[i])
    slack = float(batch.resolution_hz[i]) + th.SPEED_TOLERANCE * shaft
    # Shaft modulation: 1× and 2× lines in the envelope mean the shaft modulates the band
    # (looseness, a worn gear mesh with its ±n× sidebands, a rub), so the envelope holds
    # every shaft harmonic. A defect whose fundamental sits on one (on a 6203, BPFO is
    # 3.05×, 1.8 % from 3×) must then be carried by MIN_SUPPORT_LINES lines off the
    # shaft harmonics; otherwise the peak is the shaft's.
    shaft_snr = batch.line_snr_db[i, _SHAFT]
    if shaft_snr[0] >= thr and shaft_snr[1] >= thr:

        def on_shaft(f: float) -> bool:
            n_x = round(f / shaft)
            return n_x >= 1 and abs(f - n_x * shaft) <= slack

        cands = [
            c
            for c in cands
            if not on_shaft(c.support[0].freq_hz)
            or sum(not on_shaft(e.freq_hz) for e in c.support) >= th.MIN_SUPPORT_LINES
        ]
    if len(cands) < 2:
        return cands, []
    # Exclusive attribution: one spectral peak is evidence for one family only.
    # (a) Two families whose kinematic lines coincide: F's fundamental within the search zone of
    #     a line G looks for, or the reverse (8 balls of 7.94 mm on a 39 mm pitch put BPFI and
    #     2×BSF 2 % apart, inside the slip tolerance, and their harmonics). Both read the same
    #     peaks there, so only the lines whose zone overlaps none of the other's can tell them
    #     apart (±1× sidebands for the inner race; ±FTF sidebands and odd BSF lines for a ball):
    #     the family with more evidence in them (sum of the SNRs of its present ones, dB) keeps
    #     the peaks, the other is dropped; with none on either side both are left undecided.
    #     Zones overlap when two kinematic frequencies are closer than the sum of their
    #     ±SPEED_TOLERANCE plus one bin.
    # (b) F's fundamental on a ±1× shaft sideband of one of G's present harmonics (the
    #     shaft modulates every impact train; on a 6205, BPFO+1× sits 2.7 % below
    #     2×BSF): F is G's consequence, unless G's fundamental is in turn F's sideband
    #     and weaker (amplitude modulation of depth m < 1 puts each sideband at m/2 of
    #     its carrier, so of two lines one shaft rate apart the weaker is the sideband).
    res = float(batch.resolution_hz[i])
    targets = _family_targets(batch, i)
    side = {c.name: [e.freq_hz + d for e in c.harmonics for d in (-shaft, shaft)] for c in cands}

    def on(f: float, freqs: list[float]) -> bool:
        return any(abs(f - g) <= slack for g in freqs)

    def coincide(f: float, other: str) -> bool:
        return any(
            abs(f - g) <= th.SPEED_TOLERANCE * (f + g) + res for g in targets[other].values()
        )

    def exclusive_db(c: _Candidate, other: str) -> float:
        own = sum(
            e.snr_db
            for e in c.support
            if not coincide(targets[c.name][(e.line, e.harmonic)], other)
        )
        # The modulation itself: an inner-race defect passes the load zone once per shaft
        # turn, a ball once per cage turn, so the envelope also shows 1× or FTF.
        li = _MODULATION.get(Fault(c.name))
        mod = float(batch.line_snr_db[i, li, 0]) if li is not None else 0.0
        return own + (mod if mod >= thr else 0.0)

    dropped: set[str] = set()
    undecided: set[str] = set()
    for a_i, a in enumerate(cands):
        for b in cands[a_i + 1 :]:
            fa, fb = a.support[0], b.support[0]
            ta = targets[a.name][(fa.line, fa.harmonic)]
            tb = targets[b.name][(fb.line, fb.harmonic)]
            if coincide(ta, b.name) or coincide(tb, a.name):
                sum_a, sum_b = exclusive_db(a, b.name), exclusive_db(b, a.name)
                if sum_a != sum_b:
                    dropped.add(b.name if sum_a > sum_b else a.name)
                else:
                    undecided.update((a.name, b.name))
                continue
            a_side = on(fa.freq_hz, side[b.name])
            b_side = on(fb.freq_hz, side[a.name])
            if a_side and (not b_side or fb.snr_db > fa.snr_db):
                dropped.add(a.name)
            elif b_side and (not a_side or fa.snr_db > fb.snr_db):
                dropped.add(b.name)
    kept = [c for c in cands if c.name not in dropped and c.name not in undecided]
    kept.sort(key=lambda c: c.score, reverse=True)
    # An undecided pair outranking every kept family leaves the window undecided.
    top_undecided = max((c.score for c in cands if c.name in undecided - dropped), default=None)
    if top_undecided is not None and (not kept or top_undecided > kept[0].score):
        return [], sorted(undecided - dropped)
    return kept, []


def _family_targets(batch: FeatureBatch, i: int) -> dict[str, dict[tuple[str, int], float]]:
    """Kinematic frequency (Hz) of every line each defect family searches, by (line name,
    harmonic), from the window's fundamentals (`line_target_hz`) and shaft rate."""
    fund = batch.line_target_hz
    if fund is None:  # a batch without targets: the found frequencies stand in
        fund = batch.line_freq_hz[:, :, 0]
    shaft = float(batch.shaft_hz[i])
    f = [float(v) for v in fund[i]]
    n_h = batch.line_snr_db.shape[2]
    out: dict[str, dict[tuple[str, int], float]] = {}
    offsets = {0: -shaft, 1: shaft, 2: -f[3], 3: f[3]}
    for name, li, sbs, odd in _FAMILIES:
        t = {(LINES[li], h + 1): (h + 1) * f[li] for h in range(n_h)}
        for sb in sbs:
            for h in range(n_h):
                t[(SIDEBANDS[sb], h + 1)] = (h + 1) * f[li] + offsets[sb]
        for h in odd:
            t[(LINES[_BSF], h + 1)] = (h + 1) * f[_BSF]
        out[name] = t
    return out


_IMPACT_BALL = IMPACT_FAMILIES.index("2xBSF")
"""Row of the ball's strike period in `impact_counts`."""


def _ball_from_intervals(
    batch: FeatureBatch, i: int, impacts: np.ndarray | None, zone: str
) -> Diagnosis | None:
    """`ball` when the impacts follow each other at the ball's strike period (1/(2×BSF))
    significantly (IMPACT_SCORE_MIN) and more so than at either race's, else None."""
    counts = impacts if impacts is not None else (
        None if batch.impact_counts is None else batch.impact_counts[i])
    if counts is None:
        return None
    ball = _IMPACT_BALL
    hits, flank = float(counts[ball, 0]), float(counts[ball, 1])
    score = interval_score(hits, flank)
    if score < th.IMPACT_SCORE_MIN:
        return None
    rival = max(interval_score(h, f) for k, (h, f) in enumerate(counts) if k != ball)
    if score <= rival:
        return None
    expected = expected_hits(flank)
    rate = float(batch.line_target_hz[i, Line.BSF2]) if batch.line_target_hz is not None \
        else math.nan
    return Diagnosis(
        Fault.BALL,
        _conf(score - th.IMPACT_SCORE_MIN),
        (Evidence("2xBSF-intervals", 1, rate, 10.0 * math.log10(hits / expected)),),
        f"impacts at the ball's strike period 1/(2xBSF) = {1000.0 / rate:.2f} ms: "
        f"{hits:.0f} lags against {expected:.1f} expected (p = 1e-{score:.1f}, "
        f"races 1e-{rival:.1f}), no envelope line",
        zone,
    )


def _sensor_condition(batch: FeatureBatch, i: int, row: dict[str, float],
                      clipped_at_source: bool) -> str | None:
    """Why window `i` is not a trustworthy machine signal (the reason), or None."""
    if batch.finite[i] < 1.0 or not all(map(math.isfinite, row.values())):
        return "window holds non-finite samples"
    rms = row["rms_g"]
    if rms < th.SENSOR_MIN_STD_G:
        return f"flat line: rms {rms:.3g} g"
    if rms < th.SENSOR_MIN_RMS_G:
        return (f"signal too weak: rms {rms:.3g} g is below any sensor's own noise "
                f"({th.SENSOR_MIN_RMS_G:.0e} g): disconnected, wrong gain or not coupled")
    if row["peak_g"] > th.SENSOR_MAX_PEAK_G:
        return f"implausible peak {row['peak_g']:.3g} g"
    if clipped_at_source:
        return "clipped at source: the gateway flagged the window as over its range"
    plateau = int(batch.plateau_samples[i])
    if plateau >= th.SENSOR_PLATEAU_SAMPLES:
        return (f"saturated: {plateau} samples ({float(batch.clip_fraction[i]):.2%}) on the "
                f"rails at +-{row['peak_g']:.3g} g")
    spikes = int(batch.spikes[i])
    if spikes > th.SENSOR_MAX_SPIKES:
        return (f"spikes: {spikes} isolated sample(s) above {th.SPIKE_K:g} robust sigma "
                "(electrical, not mechanical: no ringing)")
    hf, flat = row["hf_floor"], float(batch.broadband_flatness[i])
    if hf >= th.BROADBAND_NOISE_G and flat >= th.BROADBAND_FLAT_RATIO:
        return (f"broadband noise: high-frequency floor {hf:.3g} g with a flat spectrum down "
                f"to {th.VELOCITY_BAND_LO_HZ:g} Hz (density ratio {flat:.2f}): not a machine "
                "signal (loose sensor, cable or amplifier)")
    hum = float(batch.mains_share[i])
    if hum > th.MAINS_HUM_SHARE:
        return (f"mains hum: {float(batch.mains_hz[i]):g} Hz and harmonics hold {hum:.0%} "
                "of the power (electrical pickup: grounding or cable shield)")
    return None


def diagnose(
    batch: FeatureBatch,
    i: int,
    iso_group: int = 2,
    iso_foundation: str = "rigid",
    impacts: np.ndarray | None = None,
    clipped_at_source: bool = False,
    levels: DecisionLevels | None = None,
    row: dict[str, float] | None = None,
) -> Diagnosis:
    """Diagnose window `i` of `batch` for a machine in ISO 20816-3 `iso_group` (1 or 2)
    on a `iso_foundation` ("rigid" or "flexible") foundation.

    `impacts`: the sensor's impact-interval counts (F, 2) pooled over its recent windows,
    this one included (`ImpactHistory.add`); default: this window's own counts.
    `clipped_at_source`: the gateway flagged the window as clipped (wire flags bit 1).
    `levels`: the asset's own levels (`AssetConfig.levels`): its zone boundaries replace
    the ISO table's for `iso_group`/`iso_foundation`, its line thresholds LINE_SNR_DB and
    STRONG_LINE_SNR_DB; None: those defaults.
    `row`: `batch.row(i)`, if the caller has it already (read, not changed).
    Raises IndexError for a bad `i` and ValueError for an unknown group/foundation or
    boundaries that are not increasing.
    """
    n = len(batch)
    if not -n <= i < n:
        raise IndexError(f"window index {i} out of range for a batch of {n}")
    bounds = iso20816.boundaries(iso_group, iso_foundation) if levels is None \
        else levels.zone_boundaries_mm_s
    t = _DEFAULT_THRESHOLDS if levels is None else _thresholds(
        levels.line_snr_db, levels.strong_line_snr_db)
    if row is None:
        row = batch.row(i)
    vel = row["velocity_rms_mm_s"]
    zone = iso20816.zone_of(vel, bounds) if math.isfinite(vel) else ""

    # 1. Sensor health first: nothing else means anything on a broken signal.
    condition = _sensor_condition(batch, i, row, clipped_at_source)
    if condition is not None:
        return Diagnosis(Fault.SENSOR_FAULT, 1.0, (), condition, "" if "non-finite" in condition
                         else zone)

    # 2. Resolution: sidebands at ±1× shaft must be separable, lines must be resolved.
    shaft = float(batch.shaft_hz[i])
    res = float(batch.resolution_hz[i])
    revs = float(batch.n_revolutions[i])
    if revs < th.MIN_REVOLUTIONS or res > th.MAX_RESOLUTION_SHAFT_FRACTION * shaft:
        return Diagnosis(
            Fault.INSUFFICIENT_DATA,
            1.0,
            (),
            f"window spans {revs:.1f} revolutions at resolution {res:.3g} Hz for shaft "
            f"{shaft:.3g} Hz: need >= {th.MIN_REVOLUTIONS:g} revolutions and <= "
            f"{th.MAX_RESOLUTION_SHAFT_FRACTION:g}x shaft",
            zone,
        )

    # 2b. The bearing's lines must be readable: the cage line (the lowest, FTF ≈ 0.4×)
    # needs MIN_FTF_BINS bins, and a demodulation band wide enough for the highest line
    # must fit below Nyquist.
    if batch.line_target_hz is not None:
        ftf = float(batch.line_target_hz[i, Line.FTF])
        if res * th.MIN_FTF_BINS > ftf:
            return Diagnosis(
                Fault.INSUFFICIENT_DATA,
                1.0,
                (),
                f"window too short for the cage line: FTF {ftf:.3g} Hz at resolution "
                f"{res:.3g} Hz, need >= {th.MIN_FTF_BINS:g} bins",
                zone,
            )
    if batch.env_band_ok is not None and batch.env_band_ok[i] < 1.0:
        return Diagnosis(
            Fault.INSUFFICIENT_DATA,
            1.0,
            (),
            f"sample rate too low for the bearing lines: no demodulation band above "
            f"{th.ENV_BAND_MIN_LO_HZ:g} Hz is {th.ENV_BANDWIDTH_FACTOR:g}x wider than the "
            "highest envelope line",
            zone,
        )

    # 3. Bearing defects.
    cands, undecided = _bearing_candidates(batch, i, t)
    if undecided:
        ev = tuple(
            e
            for name, li, _, _ in _FAMILIES
            if name in undecided
            for e in _line_evidence(batch, i, li)
            if e.snr_db >= t.line
        )
        return Diagnosis(
            Fault.UNKNOWN_ANOMALY,
            0.5,
            ev,
            f"bearing lines present but {' and '.join(undecided)} cannot be told apart: "
            "their lines coincide on this bearing and no line of one is missing from the other",
            zone,
        )
    if cands:
        score, name, support = cands[0].score, cands[0].name, cands[0].support
        best = max(e.snr_db for e in support)
        conf = _conf(best - t.line + th.SUPPORT_BONUS_DB * (len(support) - 1))
        if len(cands) > 1:
            # A rival pattern close in score lowers the confidence.
            conf *= float(min(1.0, 0.5 + (score - cands[1].score) / th.CONFIDENCE_FULL_DB))
        support = sorted(support, key=lambda e: e.snr_db, reverse=True)
        lines = ", ".join(
            f"{e.line} h{e.harmonic} {e.freq_hz:.1f} Hz {e.snr_db:.1f} dB" for e in support[:4]
        )
        return Diagnosis(name, conf, tuple(support), f"envelope lines: {lines}", zone)

    # 3b. A ball whose strikes keep no phase: its period in the lags between impacts.
    ball = _ball_from_intervals(batch, i, impacts, zone)
    if ball is not None:
        return ball

    # 4. Shaft-rate faults only matter when the velocity level is unsatisfactory.
    x1, x2 = row["x1_g"], row["x2_g"]
    if zone in ("C", "D") and vel > 0.0:
        x1_vel = x1 * th.G_TO_M_S2 * 1000.0 / (2.0 * math.pi * shaft) / math.sqrt(2.0)
        share = min(1.0, (x1_vel / vel) ** 2)
        x1_snr = float(batch.x1_snr_db[i])
        x2_snr = float(batch.x2_snr_db[i])
        ev = (Evidence("1x", 1, shaft, x1_snr), Evidence("2x", 2, 2.0 * shaft, x2_snr))
        # Only real lines count: in broadband noise 1× and 2× read the noise level. These
        # are lines of the raw spectrum, not the envelope's: an asset's line_snr_db (set for
        # its envelope lines) does not move them.
        x1_line = x1_snr >= th.LINE_SNR_DB
        x2_line = x2_snr >= th.LINE_SNR_DB
        # The rule reads velocity, as the zone does: at 2x an acceleration line is twice
        # the velocity line of the same mm/s, so the ratio of the g lines is halved.
        x2_x1_vel = x2 / max(2.0 * x1, 1e-12)
        if x2_line and x2_x1_vel >= th.MISALIGNMENT_X2_RATIO:
            return Diagnosis(
                Fault.MISALIGNMENT,
                _conf(10.0 * (x2_x1_vel - th.MISALIGNMENT_X2_RATIO)),
                ev,
                f"zone {zone} ({vel:.2f} mm/s) with 2x/1x = {x2_x1_vel:.2f} in velocity",
                zone,
            )
        if x1_line and share >= th.IMBALANCE_X1_SHARE:
            return Diagnosis(
                Fault.IMBALANCE,
                _conf(20.0 * (share - th.IMBALANCE_X1_SHARE)),
                ev[:1],
                f"zone {zone} ({vel:.2f} mm/s), 1x holds {share:.0%} of the velocity",
                zone,
            )

    # 5. Lubrication: broadband, non-impulsive high-frequency rise.
    if row["hf_floor"] >= th.LUBRICATION_HF_G and row["kurtosis"] < th.LUBRICATION_MAX_KURTOSIS:
        ratio_db = 20.0 * math.log10(row["hf_floor"] / th.LUBRICATION_HF_G)
        return Diagnosis(
            Fault.LUBRICATION,
            _conf(ratio_db),
            (),
            f"high-frequency floor {row['hf_floor']:.3g} g, kurtosis {row['kurtosis']:.2f}",
            zone,
        )

    # 6. Something is wrong that no kinematic line explains.
    if row["kurtosis"] >= th.KURTOSIS_ANOMALY:
        return Diagnosis(
            Fault.UNKNOWN_ANOMALY,
            _conf(2.0 * (row["kurtosis"] - th.KURTOSIS_ANOMALY)),
            (),
            f"impulsive signal (kurtosis {row['kurtosis']:.2f}) without a bearing line",
            zone,
        )
    if zone == "D":
        return Diagnosis(
            Fault.UNKNOWN_ANOMALY, 0.5, (), f"velocity {vel:.2f} mm/s in zone D, cause unknown",
            zone
        )

    # 7. Normal: confident the further the strongest line sits below the threshold.
    worst = float(batch.line_snr_db[i, :_SHAFT, 0].max())  # bearing lines only
    conf = float(min(1.0, max(0.5, 0.5 + 0.5 * (t.line - worst) / t.line)))
    return Diagnosis(Fault.NORMAL, conf, (), f"no defect pattern; strongest line {worst:.1f} dB",
                     zone)
