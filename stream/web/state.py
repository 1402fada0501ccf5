"""What the evidence page shows, kept in memory by the stream: per-sensor latest diagnosis,
feature trends, the latest acceleration window, alert history and operator actions.

`observe` runs on the event loop after each batch and only stores references and small
dicts (no maths), so the hot path stays fast. Spectra are computed on request, for the
latest window of one sensor only, and cached by its seq.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ballpass.config import AssetConfig, Config, SensorConfig
from ballpass.stream.features import LINES, extract
from ballpass.stream.pipeline import BatchOutput
from ballpass.wire import Kind, Window

TREND_POINTS = 720  # per sensor: 24 min at one window every 2 s
TREND_FIELDS = ("velocity_rms_mm_s", "kurtosis", "crest", "bpfo_snr_db", "bpfi_snr_db",
                "bsf_snr_db", "ftf_snr_db", "rms_g")
MAX_PLOT_POINTS = 1500  # spectrum points drawn (peak-preserving decimation)


@dataclass
class Spectra:
    """Latest window's spectra of one sensor. Frequencies in Hz, amplitudes in g."""

    seq: int
    freq_hz: np.ndarray
    amp_g: np.ndarray
    env_freq_hz: np.ndarray
    env_amp_g: np.ndarray
    env_band_hz: tuple[float, float]
    shaft_hz: float
    # Lines found in the envelope spectrum: (line, harmonic, freq_hz, snr_db).
    lines: list[tuple[str, int, float, float]]


@dataclass
class SensorView:
    sensor: SensorConfig
    asset: AssetConfig
    gateway: str
    latest: dict[str, Any] | None = None  # diagnosis JSON of the last window
    last_seen: float = 0.0  # wall clock (s) when its last window was processed
    windows: int = 0
    window: Window | None = None  # the latest acceleration window
    shaft_hz: float = math.nan
    celsius: float | None = None
    spectra: Spectra | None = None


class EvidenceState:
    """The fleet as the evidence page sees it. `version` changes on every update."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.site = config.site.id
        self.sensors: dict[str, SensorView] = {}
        for g in config.gateways:
            for s in g.sensors:
                self.sensors[s.id] = SensorView(s, config.asset(s.asset), g.id)
        self.trends: dict[str, deque[tuple[float, ...]]] = {
            s: deque(maxlen=TREND_POINTS) for s in self.sensors}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=500)
        self.actions: deque[dict[str, Any]] = deque(maxlen=500)
        self.gateways: dict[str, dict[str, Any]] = {}  # the service's dict, by reference
        self.version = 0
        self.history: Any = None  # the stream's HistoryStore (stream/history.py), if any

    def observe(self, output: BatchOutput, latest: dict[str, dict[str, Any]]) -> None:
        """Take in one processed batch (called by the service after it is written) and
        `latest`, each sensor's last diagnosis JSON of it (built once, by the service)."""
        now = time.time()
        for r in output.results:
            view = self.sensors.get(r.incoming.sensor)
            if view is None:
                continue
            w = r.incoming.window
            view.last_seen = now
            view.windows += 1
            if w.kind == Kind.TEMPERATURE:
                view.celsius = float(np.mean(w.samples))
                self.trends[view.sensor.id].append(
                    (w.t0_ns / 1e9, *([math.nan] * len(TREND_FIELDS)), view.celsius))
                continue
            if r.diagnosis is None:
                continue
            if r.incoming.sensor in latest:
                view.latest = latest[r.incoming.sensor]
            f = r.features
            self.trends[view.sensor.id].append(
                (w.t0_ns / 1e9, *(f.get(k, math.nan) for k in TREND_FIELDS), math.nan))
            if w.kind == Kind.ACCELERATION and f:
                view.window = w
                view.shaft_hz = w.shaft_hz if math.isfinite(w.shaft_hz) and w.shaft_hz > 0 \
                    else (view.asset.shaft_hz or math.nan)
        for alert in output.alerts:
            self.alerts.append(alert)
        self.version += 1

    def record_action(self, action: dict[str, Any]) -> None:
        self.actions.append(action)
        self.version += 1

    # --- views -------------------------------------------------------------------------

    def state_of(self, view: SensorView, now: float | None = None) -> str:
        """learning, normal, watch, alarm or offline (no window for 3 intervals + 10 s)."""
        now = time.time() if now is None else now
        if view.windows == 0 or now - view.last_seen > 3 * view.sensor.interval_s + 10:
            return "offline"
        if view.latest is None:
            return "normal"
        state = str(view.latest.get("state") or "normal")
        online = view.latest.get("online") or {}
        # The online model's learning phase shows while physics has nothing to say.
        return "learning" if state == "normal" and online.get("state") == "learning" else state

    def fleet(self) -> dict[str, Any]:
        """The overview: one row per sensor and the gateways (JSON for the SSE feed)."""
        now = time.time()
        rows = []
        for sid, v in self.sensors.items():
            d = v.latest or {}
            rows.append({
                "sensor": sid, "asset": v.asset.id, "gateway": v.gateway,
                "kind": v.sensor.kind, "state": self.state_of(v, now),
                "diagnosis": d.get("diagnosis", "-" if v.sensor.kind == "acceleration"
                                   else "temperature"),
                "confidence": d.get("confidence"), "iso_zone": d.get("iso_zone"),
                "velocity_rms_mm_s": d.get("velocity_rms_mm_s"), "celsius": v.celsius,
                "days_to_zone_d": _days(d.get("days_to_zone_d")),
                "windows": v.windows, "age_s": round(now - v.last_seen, 1) if v.windows
                else None,
            })
        gateways = []
        for gid, g in sorted(self.gateways.items()):
            c = g.get("counters") or {}
            gateways.append({"gateway": gid, "state": g.get("state", "?"),
                             **{k: c.get(k) for k in ("captured", "queued", "published",
                                                      "dropped", "replayed")}})
        return {"site": self.site, "t": now, "version": self.version, "sensors": rows,
                "gateways": gateways}

    def trend(self, sensor: str) -> dict[str, list[float]]:
        cols = ("t", *TREND_FIELDS, "celsius")
        data = list(self.trends[sensor])
        return {c: [row[i] for row in data] for i, c in enumerate(cols)}

    def iso_boundaries(self, sensor: str) -> tuple[float, float, float]:
        """(A/B, B/C, C/D) mm/s of the sensor's asset: its own levels, else ISO 20816-3."""
        return self.sensors[sensor].asset.levels.zone_boundaries_mm_s

    def spectra(self, sensor: str) -> Spectra | None:
        """Spectra of the sensor's latest window (computed once per window)."""
        view = self.sensors[sensor]
        w = view.window
        if w is None or not math.isfinite(view.shaft_hz):
            return None
        if view.spectra is not None and view.spectra.seq == w.seq:
            return view.spectra
        view.spectra = compute_spectra(w, view.shaft_hz, view.asset)
        return view.spectra


def _days(value: Any) -> float | None:
    """days_to_zone_d of the diagnosis JSON: a number or {"days", "lo", "hi"}."""
    if isinstance(value, dict):
        value = value.get("days")
    return float(value) if isinstance(value, int | float) else None


def _decimate(freq: np.ndarray, amp: np.ndarray, fmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most MAX_PLOT_POINTS points up to fmax, each the peak of its bucket."""
    keep = freq <= fmax
    freq, amp = freq[keep], amp[keep]
    step = max(1, math.ceil(freq.size / MAX_PLOT_POINTS))
    if step == 1:
        return freq, amp
    n = freq.size // step * step
    idx = amp[:n].reshape(-1, step).argmax(axis=1) + np.arange(0, n, step)
    return freq[idx], amp[idx]


def compute_spectra(w: Window, shaft_hz: float, asset: AssetConfig) -> Spectra:
    """Amplitude spectrum (Hann) and envelope spectrum of one window, in the stream's band.

    The envelope band is the one the stream's kernels chose for this window (highest
    spectral kurtosis); the lines are the kernels' own line search, so what is drawn is
    what the diagnosis saw.
    """
    x = np.asarray(w.samples[0], dtype=np.float64)
    n = x.size
    fs = w.fs_hz
    orders = asset.bearing.orders()
    feats = extract(x[None, :], fs, np.array([shaft_hz]), orders)
    lo, hi = float(feats.env_lo_hz[0]), float(feats.env_hi_hz[0])
    hann = np.hanning(n)
    spec = np.fft.rfft((x - x.mean()) * hann)
    freq = np.fft.rfftfreq(n, 1.0 / fs)
    amp = 2.0 * np.abs(spec) / hann.sum()
    # Envelope: band-pass in the frequency domain, analytic signal, magnitude.
    full = np.fft.fft(x - x.mean())
    f_full = np.fft.fftfreq(n, 1.0 / fs)
    band = (f_full >= lo) & (f_full <= hi)
    analytic = np.fft.ifft(np.where(band, 2.0 * full, 0.0))
    env = np.abs(analytic)
    env_spec = np.fft.rfft((env - env.mean()) * hann)
    env_amp = 2.0 * np.abs(env_spec) / hann.sum()
    top = 3.3 * max(orders.bpfo, orders.bpfi, 2 * orders.bsf) * shaft_hz
    f1, a1 = _decimate(freq, amp, min(fs / 2, max(1000.0, 0.5 * fs / 2)))
    f2, a2 = _decimate(freq, env_amp, min(fs / 2, top))
    lines = [(LINES[li], h + 1, float(feats.line_freq_hz[0, li, h]),
              float(feats.line_snr_db[0, li, h]))
             for li in range(len(LINES)) for h in range(feats.line_freq_hz.shape[2])]
    return Spectra(w.seq, f1, a1, f2, a2, (lo, hi), shaft_hz, lines)


def defect_lines(asset: AssetConfig, shaft_hz: float, harmonics: int = 3
                 ) -> list[tuple[str, int, float]]:
    """Kinematic lines (name, harmonic, Hz) of the asset's bearing at `shaft_hz`, plus 1×."""
    o = asset.bearing.orders()
    base = {"BPFO": o.bpfo, "BPFI": o.bpfi, "2xBSF": 2 * o.bsf, "FTF": o.ftf, "1x": 1.0}
    return [(name, h, order * h * shaft_hz) for name, order in base.items()
            for h in range(1, harmonics + 1)]
