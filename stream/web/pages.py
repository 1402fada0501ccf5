"""HTML and SVG of the evidence page, drawn on the server (no JavaScript plotting library,
nothing loaded from a CDN). Every value is escaped; ids are checked before they get here.
"""

from __future__ import annotations

import math
import urllib.parse
from datetime import UTC, datetime
from html import escape
from typing import Any

import numpy as np

from ballpass.stream.sinks.formats import ACTIONS
from ballpass.stream.web.state import EvidenceState, Spectra, defect_lines

LINE_COLOURS = {"BPFO": "#d62728", "BPFI": "#9467bd", "2xBSF": "#2ca02c", "FTF": "#ff7f0e",
                "1x": "#7f7f7f"}


def _fmt(v: Any, digits: int = 2, unit: str = "") -> str:
    """A value as HTML text (escaped: values may come from a gateway)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return escape(f"{v:.{digits}f}{unit}")
    return escape(f"{v}{unit}")


def _evidence_text(e: dict[str, Any]) -> tuple[str, str, str]:
    """An evidence line's name, harmonic and SNR as HTML text. The stream computes them,
    but escaping every value rendered costs nothing and needs no proof it is safe."""
    return escape(str(e["line"])), escape(str(e["harmonic"])), escape(str(e["snr_db"]))


def _when(t: float | None) -> str:
    if not t:
        return "–"
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(title: str, body: str, *, view: str = "", sensor: str = "", csrf: str = "") -> str:
    """A whole page. No inline script or style (the Content-Security-Policy forbids them):
    app.js starts the `view` named on <body>, and reads the CSRF token from a <meta>."""
    js = '<script src="/static/app.js"></script>' if view else ""
    meta = f'<meta name="csrf-token" content="{escape(csrf)}">' if csrf else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
            f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/style.css">'
            f'</head><body data-view="{escape(view)}" data-sensor="{escape(sensor)}">'
            f'<header><a href="/">ballpass</a> <span>{escape(title)}</span>'
            f'</header><main>{body}</main>{js}</body></html>')


def login_page(next_path: str, message: str = "") -> str:
    """The login form: the token is POSTed once, never put in a URL."""
    note = f'<p class="error">{escape(message)}</p>' if message else ""
    return page("log in", f'<h1>Evidence page</h1>{note}<form method="post" action="/login">'
                f'<input type="hidden" name="next" value="{escape(next_path)}">'
                '<label>Token <input type="password" name="token" id="token" '
                'autocomplete="current-password" required></label> '
                '<button type="submit" id="login">Log in</button></form>'
                '<p>The token is in the stream\'s state directory (<code>evidence.token</code>) '
                'or the file <code>[stream] http_token_file</code> names.</p>')


def _swatch(colour: str) -> str:
    """A colour key as SVG (a presentation attribute, which the CSP allows; style= is not)."""
    return (f'<svg class="swatch" width="10" height="10" aria-hidden="true">'
            f'<rect width="10" height="10" fill="{escape(colour)}"/></svg>')


def error_page(status: int, message: str) -> str:
    return page(f"{status}", f'<h1 class="error">{status}</h1><p>{escape(message)}</p>'
                '<p><a href="/">Back to the fleet</a></p>')


def overview(state: EvidenceState, csrf: str = "") -> str:
    fleet = state.fleet()
    rows = []
    for s in fleet["sensors"]:
        sid = escape(s["sensor"])
        rows.append(
            f'<tr id="row-{sid}" class="state-{escape(s["state"])}">'
            f'<td><a class="sensor-link" href="/sensor/{sid}">{sid}</a></td>'
            f'<td>{escape(s["asset"])}</td><td>{escape(s["gateway"])}</td>'
            f'<td data-k="state">{escape(s["state"])}</td>'
            f'<td data-k="diagnosis">{escape(str(s["diagnosis"]))}</td>'
            f'<td data-k="confidence">{_fmt(s["confidence"])}</td>'
            f'<td data-k="iso_zone">{_fmt(s["iso_zone"])}</td>'
            f'<td data-k="velocity_rms_mm_s">{_fmt(s["velocity_rms_mm_s"])}</td>'
            f'<td data-k="days_to_zone_d">{_fmt(s["days_to_zone_d"], 1)}</td>'
            f'<td data-k="windows">{_fmt(s["windows"])}</td></tr>')
    gws = "".join(
        f'<tr id="gw-{escape(g["gateway"])}"><td>{escape(g["gateway"])}</td>'
        f'<td data-k="state">{escape(str(g["state"]))}</td>'
        + "".join(f'<td data-k="{k}">{_fmt(g[k])}</td>' for k in
                  ("captured", "queued", "published", "dropped", "replayed")) + "</tr>"
        for g in fleet["gateways"])
    body = (f'<h1>Site {escape(fleet["site"])}</h1>'
            '<p class="live">live: <span id="live-status">connecting…</span></p>'
            '<table id="fleet"><thead><tr><th>sensor</th><th>asset</th><th>gateway</th>'
            '<th>state</th><th>diagnosis</th><th>confidence</th><th>ISO zone</th>'
            '<th>v RMS mm/s</th><th>days to zone D</th><th>windows</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            '<h2>Gateways</h2><table id="gateways"><thead><tr><th>gateway</th><th>state</th>'
            '<th>captured</th><th>outbox</th><th>published</th><th>dropped</th>'
            f'<th>replayed</th></tr></thead><tbody>{gws}</tbody></table>')
    return page(f"fleet {fleet['site']}", body, view="overview", csrf=csrf)


# --- SVG -------------------------------------------------------------------------------

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 900, 260, 60, 30, 14, 14


def _axes(x0: float, x1: float, y0: float, y1: float, xlabel: str, ylabel: str) -> str:
    out = [f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" '
           f'height="{H - PAD_T - PAD_B}" class="frame"/>']
    for i in range(6):
        fx = x0 + (x1 - x0) * i / 5
        px = PAD_L + (W - PAD_L - PAD_R) * i / 5
        out.append(f'<text x="{px:.1f}" y="{H - 10}" class="tick" text-anchor="middle">'
                   f'{fx:.4g}</text>')
    for i in range(5):
        fy = y0 + (y1 - y0) * i / 4
        py = H - PAD_B - (H - PAD_T - PAD_B) * i / 4
        out.append(f'<text x="{PAD_L - 4}" y="{py:.1f}" class="tick" text-anchor="end">'
                   f'{fy:.3g}</text>')
    out.append(f'<text x="{W / 2}" y="{H}" class="label" text-anchor="middle">'
               f'{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{H / 2}" class="label" transform="rotate(-90 12 {H / 2})" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    return "".join(out)


class _Scale:
    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1

    def x(self, v: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * (v - self.x0) / (self.x1 - self.x0)

    def y(self, v: float) -> float:
        return H - PAD_B - (H - PAD_T - PAD_B) * (v - self.y0) / (self.y1 - self.y0)


def _polyline(xs: Any, ys: Any, s: _Scale, cls: str, colour: str = "") -> str:
    pts = " ".join(f"{s.x(x):.1f},{s.y(y):.1f}" for x, y in zip(xs, ys, strict=False)
                   if math.isfinite(x) and math.isfinite(y))
    style = f' stroke="{colour}"' if colour else ""
    return f'<polyline class="{cls}"{style} points="{pts}"/>' if pts else ""


def spectrum_svg(sp: Spectra, envelope: bool, evidence: list[dict[str, Any]],
                 state: EvidenceState, sensor: str) -> str:
    """One spectrum with the kinematic lines (dashed) and the evidence lines (bold)."""
    f = sp.env_freq_hz if envelope else sp.freq_hz
    a = sp.env_amp_g if envelope else sp.amp_g
    fmax = float(f[-1]) if f.size else 1.0
    s = _Scale(0.0, fmax, 0.0, float(np.max(a)) * 1.1 if a.size else 1.0)
    parts = [_axes(0, fmax, s.y0, s.y1, "frequency, Hz", "amplitude, g"),
             _polyline(f, a, s, "trace")]
    if envelope:
        view = state.sensors[sensor]
        for name, h, hz in defect_lines(view.asset, sp.shaft_hz):
            if hz <= fmax:
                parts.append(f'<line class="defect" data-line="{name}" data-harmonic="{h}" '
                             f'stroke="{LINE_COLOURS[name]}" x1="{s.x(hz):.1f}" '
                             f'x2="{s.x(hz):.1f}" y1="{PAD_T}" y2="{H - PAD_B}">'
                             f'<title>{name} ×{h} {hz:.1f} Hz</title></line>')
        for e in evidence:
            hz = float(e["freq_hz"])
            if hz <= fmax:
                line, harmonic, snr = _evidence_text(e)
                parts.append(
                    f'<line class="evidence" data-line="{line}" '
                    f'data-harmonic="{harmonic}" x1="{s.x(hz):.1f}" x2="{s.x(hz):.1f}" '
                    f'y1="{PAD_T}" y2="{H - PAD_B}"><title>evidence {line} '
                    f'×{harmonic} {hz:.1f} Hz {snr} dB</title></line>'
                    f'<text class="evidence-label" x="{s.x(hz) + 3:.1f}" y="{PAD_T + 12}">'
                    f'{line}×{harmonic}</text>')
    kind = "envelope" if envelope else "spectrum"
    return (f'<svg id="{kind}" class="plot" viewBox="0 0 {W} {H}" role="img" '
            f'aria-label="{kind} of {escape(sensor)}">{"".join(parts)}</svg>')


def trend_svg(svg_id: str, t: list[float], series: dict[str, list[float]], ylabel: str,
              thresholds: tuple[tuple[str, float], ...] = ()) -> str:
    """An SVG line plot of `series` (name -> values in `ylabel` units) against `t`
    (window times, s since the epoch), with a horizontal line per (name, value) of
    `thresholds`; a "no data yet" paragraph when no time is finite."""
    finite_t = [x for x in t if math.isfinite(x)]
    if not finite_t:
        return f'<p id="{svg_id}" class="empty">no data yet</p>'
    t0 = finite_t[0]
    ys = [y for v in series.values() for y in v if math.isfinite(y)]
    y_hi = max([*ys, *(v for _, v in thresholds)], default=1.0)
    y_lo = min([*ys, 0.0], default=0.0)
    s = _Scale(0.0, max(1.0, finite_t[-1] - t0), y_lo, y_hi * 1.1 if y_hi > 0 else 1.0)
    parts = [_axes(s.x0, s.x1, s.y0, s.y1, "time, s since " + _when(t0), ylabel)]
    palette = ["#1f77b4", "#d62728", "#9467bd", "#2ca02c", "#ff7f0e"]
    legend = []
    for i, (name, ys_) in enumerate(series.items()):
        colour = palette[i % len(palette)]
        parts.append(_polyline([x - t0 for x in t], ys_, s, "trace", colour))
        legend.append(f'<span>{_swatch(colour)} {escape(name)}</span>')
    for name, v in thresholds:
        parts.append(f'<line class="threshold" x1="{PAD_L}" x2="{W - PAD_R}" '
                     f'y1="{s.y(v):.1f}" y2="{s.y(v):.1f}"/><text class="tick" '
                     f'x="{W - PAD_R - 4}" y="{s.y(v) - 3:.1f}" text-anchor="end">'
                     f'{escape(name)} {v:g}</text>')
    return (f'<div class="legend">{" ".join(legend)}</div><svg id="{svg_id}" class="plot" '
            f'viewBox="0 0 {W} {H}">{"".join(parts)}</svg>')


Events = tuple[list[dict[str, Any]], list[dict[str, Any]]]
"""A sensor's alerts and operator actions (see `sensor_events`)."""


def sensor_events(state: EvidenceState, sensor: str) -> Events:
    """`sensor`'s alerts and operator actions, copied. Call it on the event loop, which
    appends to `state.alerts` and `state.actions`: iterating those deques in a worker
    thread meanwhile raises "deque mutated during iteration"."""
    return ([a for a in state.alerts if a.get("sensor") == sensor],
            [a for a in state.actions if a.get("sensor") == sensor])


def sensor_page(state: EvidenceState, sensor: str, csrf: str = "",
                events: Events | None = None) -> str:
    return page(f"sensor {sensor}",
                f'<div id="fragment">{sensor_fragment(state, sensor, csrf, events)}</div>'
                + (_history_section() if state.history is not None else ""),
                view="sensor", sensor=sensor, csrf=csrf)


def _history_section() -> str:
    """The window history (drawn by app.js from /sensor/ID/history): a waterfall of the
    kept amplitude or envelope spectra over days, and the windows kept at alert transitions."""
    return ('<section id="history"><h2>History</h2>'
            '<p class="hint">Spectra of the kept windows (one every '
            '<code>history_interval_s</code> and one at each alert transition, marked red at '
            'the left), newest at the top; colour: dB re 1 g, 60 dB range. '
            '<span id="history-status">loading…</span></p>'
            '<p id="waterfall-kind"><label><input type="radio" name="waterfall-kind" '
            'value="spectrum" checked> amplitude spectrum</label> <label><input type="radio" '
            'name="waterfall-kind" value="envelope"> envelope spectrum</label></p>'
            '<canvas id="waterfall" width="900" height="320"></canvas>'
            '<h3>Windows kept at alert transitions</h3><ul id="history-alerts"></ul>'
            '</section>')


def window_page(sensor: str, entry: str, csrf: str = "") -> str:
    """One kept window (drawn by app.js from /sensor/ID/history/ENTRY)."""
    sid = escape(sensor)
    body = (f'<p><a href="/sensor/{escape(urllib.parse.quote(sensor))}">← {sid}</a></p>'
            f'<h1>{sid} <small>window {escape(entry)}</small></h1>'
            f'<div id="window-view" data-entry="{escape(entry)}">'
            '<p id="window-meta">loading…</p>'
            '<h2>Raw window (g)</h2><canvas id="wave" width="900" height="220"></canvas>'
            '<h2>Amplitude spectrum (g)</h2><canvas id="spectrum" width="900" height="220">'
            '</canvas><h2>Envelope spectrum (g)</h2>'
            '<canvas id="envelope" width="900" height="220"></canvas></div>')
    return page(f"{sensor} window {entry}", body, view="window", sensor=sensor, csrf=csrf)


def sensor_fragment(state: EvidenceState, sensor: str, csrf: str = "",
                    events: Events | None = None) -> str:
    """The live part of a sensor's page (re-fetched when a new window arrives); `events`
    from `sensor_events` (taken here when not given: only safe on the event loop)."""
    view = state.sensors[sensor]
    d = view.latest or {}
    sid = escape(sensor)
    evidence = list(d.get("evidence") or [])
    diag = str(d.get("diagnosis", "–"))
    head = (f'<h1>{sid} <small>on {escape(view.asset.id)} · gateway {escape(view.gateway)}'
            f'</small></h1><div class="cards">'
            f'<div class="card state-{escape(state.state_of(view))}"><b>state</b>'
            f'<span id="state">{escape(state.state_of(view))}</span></div>'
            f'<div class="card"><b>diagnosis</b><span id="diagnosis">{escape(diag)}</span></div>'
            f'<div class="card"><b>confidence</b><span>{_fmt(d.get("confidence"))}</span></div>'
            f'<div class="card"><b>ISO 20816 zone</b><span id="iso-zone">'
            f'{_fmt(d.get("iso_zone"))}</span><i>{_fmt(d.get("velocity_rms_mm_s"))} mm/s</i>'
            f'</div><div class="card"><b>window</b><span>{_fmt(d.get("seq"))}</span>'
            f'<i>{_when(d.get("t"))}</i></div></div>'
            f'<p class="reason">{escape(str(d.get("reason") or ""))}</p>')
    if diag in ACTIONS and diag != "normal":
        head += f'<p class="action"><b>Recommended:</b> {escape(ACTIONS[diag])}</p>'
    ev = "".join(f'<li class="evidence-item" data-line="{line}">{line} ×{harmonic} at '
                 f'{escape(str(e["freq_hz"]))} Hz, {snr} dB over the floor</li>'
                 for e in evidence for line, harmonic, snr in [_evidence_text(e)])
    head += f'<h2>Evidence</h2><ul id="evidence">{ev or "<li>none</li>"}</ul>'

    sp = state.spectra(sensor) if view.sensor.kind == "acceleration" else None
    if sp is not None:
        lo, hi = sp.env_band_hz
        plots = (f'<h2>Envelope spectrum <small>band {lo:.0f}–{hi:.0f} Hz, shaft '
                 f'{sp.shaft_hz:.2f} Hz, window {sp.seq}</small></h2>'
                 + _line_legend()
                 + spectrum_svg(sp, True, evidence, state, sensor)
                 + '<h2>Spectrum</h2>' + spectrum_svg(sp, False, evidence, state, sensor))
    elif view.sensor.kind == "acceleration":
        plots = '<p class="empty">no window yet</p>'
    else:
        plots = ""
    tr = state.trend(sensor)
    if view.sensor.kind == "acceleration":
        ab, bc, cd = state.iso_boundaries(sensor)
        levels = view.asset.levels  # the asset's own line thresholds, else the defaults
        trends = ('<h2>Trends</h2>'
                  + trend_svg("trend-velocity", tr["t"], {"velocity RMS mm/s":
                              tr["velocity_rms_mm_s"]}, "mm/s",
                              (("A/B", ab), ("B/C", bc), ("C/D", cd)))
                  + trend_svg("trend-snr", tr["t"], {
                      "BPFO": tr["bpfo_snr_db"], "BPFI": tr["bpfi_snr_db"],
                      "2xBSF": tr["bsf_snr_db"], "FTF": tr["ftf_snr_db"]}, "SNR, dB",
                      (("line", levels.line_snr_db), ("strong", levels.strong_line_snr_db)))
                  + trend_svg("trend-shape", tr["t"], {"kurtosis": tr["kurtosis"],
                              "crest": tr["crest"]}, "ratio"))
    else:
        trends = '<h2>Trend</h2>' + trend_svg("trend-temperature", tr["t"],
                                              {"°C": tr["celsius"]}, "°C")
    alerts, actions = events if events is not None else sensor_events(state, sensor)
    rows = "".join(f'<tr class="alert-{escape(str(a.get("status")))}"><td>{_when(a.get("t"))}'
                   f'</td><td>{escape(str(a.get("status")))}</td><td>'
                   f'{escape(str(a.get("diagnosis")))}</td><td>{escape(str(a.get("alert_id")))}'
                   f'</td><td>{escape(str(a.get("summary", "")))}</td></tr>'
                   for a in reversed(alerts))
    acts = "".join(f'<tr><td>{_when(a.get("t"))}</td><td>{escape(str(a.get("action")))}</td>'
                   f'<td>{escape(str(a.get("by")))}</td><td>{escape(str(a.get("note", "")))}'
                   f'</td></tr>' for a in reversed(actions))
    history = (f'<h2>Alerts</h2><table id="alerts"><thead><tr><th>time</th><th>status</th>'
               f'<th>diagnosis</th><th>alert id</th><th>summary</th></tr></thead><tbody>'
               f'{rows or "<tr><td colspan=5>none</td></tr>"}</tbody></table>'
               f'<form method="post" action="/sensor/{sid}/ack" id="ack-form">'
               f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
               f'<input name="note" placeholder="note (optional)" maxlength="200">'
               f'<button type="submit" id="ack">Acknowledge</button></form>'
               f'<h2>Operator actions</h2><table id="actions"><thead><tr><th>time</th>'
               f'<th>action</th><th>by</th><th>note</th></tr></thead><tbody>'
               f'{acts or "<tr><td colspan=4>none</td></tr>"}</tbody></table>')
    return head + plots + trends + history


def _line_legend() -> str:
    return '<div class="legend">' + " ".join(
        f'<span>{_swatch(c)} {escape(n)}</span>' for n, c in LINE_COLOURS.items()) + \
        ' <span class="evidence-key">┃ evidence of the diagnosis</span></div>'
