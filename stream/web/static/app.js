// ballpass evidence page: live updates over server-sent events, no library.
// Loaded as a file (the Content-Security-Policy allows no inline script); <body data-view>
// says which page this is. The session cookie (HttpOnly) authenticates every request;
// data from the stream is only ever set as text (textContent), never as HTML.
"use strict";
var ballpass = (function () {
  function feed() { return new EventSource("/events"); }
  function fmt(v, d) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "–";
    return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(d === undefined ? 2 : d) : String(v);
  }
  function overview() {
    var es = feed(), status = document.getElementById("live-status");
    es.onopen = function () { status.textContent = "connected"; };
    es.onerror = function () { status.textContent = "reconnecting…"; };
    es.onmessage = function (ev) {
      var fleet = JSON.parse(ev.data);
      status.textContent = "updated " + new Date(fleet.t * 1000).toLocaleTimeString();
      fleet.sensors.forEach(function (s) {
        var row = document.getElementById("row-" + s.sensor);
        if (!row) return;
        row.className = "state-" + s.state;
        row.querySelectorAll("td[data-k]").forEach(function (td) {
          var k = td.getAttribute("data-k");
          td.textContent = fmt(s[k], k === "days_to_zone_d" ? 1 : 2);
        });
      });
      fleet.gateways.forEach(function (g) {
        var row = document.getElementById("gw-" + g.gateway);
        if (!row) return;
        row.querySelectorAll("td[data-k]").forEach(function (td) {
          td.textContent = fmt(g[td.getAttribute("data-k")]);
        });
      });
    };
  }
  function sensor(id) {
    var es = feed(), windows = null, busy = false;
    es.onmessage = function (ev) {
      var fleet = JSON.parse(ev.data), me = null;
      fleet.sensors.forEach(function (s) { if (s.sensor === id) me = s; });
      if (!me || me.windows === windows || busy) return;
      windows = me.windows; busy = true;
      fetch("/sensor/" + encodeURIComponent(id) + "/fragment", {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html) document.getElementById("fragment").innerHTML = html; })
        .finally(function () { busy = false; });
    };
  }
  function getJSON(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }
  function when(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"; }
  // Colour of a level in [0, 1]: dark blue to yellow.
  function colour(v) {
    v = Math.max(0, Math.min(1, v));
    var r = Math.round(255 * Math.min(1, 2 * v)), g = Math.round(255 * Math.max(0, 2 * v - 0.6) / 1.4 + 40 * v),
        b = Math.round(140 * (1 - v));
    return "rgb(" + r + "," + Math.min(255, g) + "," + b + ")";
  }
  // The waterfall: one row per kept window (newest at the top), one column per bin;
  // ticks: frequency below, the time of every few rows at the left, a red mark on the
  // rows kept at an alert transition.
  function waterfall(canvas, wf) {
    var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 96, bottom = 24;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    var rows = wf.amp_g.length, bins = wf.freq_hz.length;
    canvas.setAttribute("data-rows", String(rows));
    if (!rows) return 0;
    var db = wf.amp_g.map(function (row) { return row.map(function (a) { return 20 * Math.log10(Math.max(a, 1e-7)); }); });
    var hi = -Infinity;
    db.forEach(function (row) { row.forEach(function (v) { if (v > hi) hi = v; }); });
    var lo = hi - 60, cw = (W - left) / bins, rh = (H - bottom) / rows;
    for (var i = 0; i < rows; i++) {
      var y = (rows - 1 - i) * rh;
      for (var j = 0; j < bins; j++) {
        ctx.fillStyle = colour((db[i][j] - lo) / (hi - lo));
        ctx.fillRect(left + j * cw, y, Math.ceil(cw), Math.ceil(rh));
      }
      if (wf.reasons[i] !== "interval") { ctx.fillStyle = "#c62828"; ctx.fillRect(left - 6, y, 5, Math.max(2, rh)); }
    }
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    var fmax = wf.freq_hz[bins - 1] + (wf.freq_hz[1] - wf.freq_hz[0]) / 2 || wf.freq_hz[bins - 1];
    for (var k = 0; k <= 5; k++) {
      var fx = left + (W - left) * k / 5, label = fmt(fmax * k / 5, 0) + (k === 5 ? " Hz" : "");
      ctx.fillRect(fx - (k === 5 ? 1 : 0), H - bottom, 1, 4);
      ctx.fillText(label, Math.min(fx, W - ctx.measureText(label).width - 2), H - 8);
    }
    var ticks = Math.min(rows, Math.max(2, Math.floor((H - bottom) / 40))), drawn = [];
    for (var t = 0; t < ticks; t++) {
      var r = Math.round((rows - 1) * t / Math.max(1, ticks - 1));
      if (drawn.indexOf(r) >= 0) continue;
      drawn.push(r);
      var ty = (rows - 1 - r) * rh + rh / 2;
      ctx.fillText(when(wf.t[r]).slice(5, 16), 0, Math.max(10, Math.min(H - bottom - 2, ty + 4)));
    }
    canvas.setAttribute("data-time-ticks", String(drawn.length));
    return rows;
  }
  function line(canvas, xs, ys, ys2, xlabel) {
    var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, left = 50, bottom = 20;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    var all = ys2 ? ys.concat(ys2) : ys, lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    if (!(hi > lo)) { hi = lo + 1; }
    var x0 = xs[0], x1 = xs[xs.length - 1] || 1;
    function px(x) { return left + (W - left - 4) * (x - x0) / ((x1 - x0) || 1); }
    function py(y) { return 4 + (H - bottom - 8) * (1 - (y - lo) / (hi - lo)); }
    [ys, ys2].forEach(function (series) {
      if (!series) return;
      ctx.strokeStyle = "#1f5fa8"; ctx.beginPath();
      series.forEach(function (y, i) { if (i) ctx.lineTo(px(xs[i]), py(y)); else ctx.moveTo(px(xs[i]), py(y)); });
      ctx.stroke();
    });
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.fillText(fmt(hi, 3), 0, 12); ctx.fillText(fmt(lo, 3), 0, H - bottom);
    ctx.fillText(fmt(x0, 0), left, H - 6); ctx.fillText(fmt(x1, 1) + " " + xlabel, W - 90, H - 6);
    canvas.setAttribute("data-points", String(xs.length));
  }
  function history(id) {
    var status = document.getElementById("history-status");
    if (!status) return;
    getJSON("/sensor/" + encodeURIComponent(id) + "/history").then(function (h) {
      var canvas = document.getElementById("waterfall");
      function draw() {
        var key = document.querySelector('input[name="waterfall-kind"]:checked').value;
        var wf = key === "envelope" ? h.envelope_waterfall : h.waterfall;
        var rows = waterfall(canvas, wf);
        canvas.setAttribute("data-kind", key);
        status.textContent = rows ? rows + " windows, " + when(wf.t[0]) + " to " +
          when(wf.t[rows - 1]) : "no window kept yet";
      }
      document.querySelectorAll('input[name="waterfall-kind"]').forEach(function (input) {
        input.addEventListener("change", draw);
      });
      draw();
      var ul = document.getElementById("history-alerts");
      ul.textContent = "";
      h.entries.filter(function (e) { return e.reason !== "interval"; }).reverse().forEach(function (e) {
        var li = document.createElement("li"), a = document.createElement("a");
        a.href = "/sensor/" + encodeURIComponent(id) + "/window/" + encodeURIComponent(e.id);
        a.textContent = e.reason + " at " + when(e.t);
        a.className = "history-window reason-" + e.reason;
        li.appendChild(a); ul.appendChild(li);
      });
      if (!ul.children.length) { var li = document.createElement("li"); li.textContent = "none"; ul.appendChild(li); }
      document.body.setAttribute("data-history", "ready");
    }).catch(function (err) { status.textContent = String(err); });
  }
  function windowView(id) {
    var view = document.getElementById("window-view"), entry = view.getAttribute("data-entry");
    getJSON("/sensor/" + encodeURIComponent(id) + "/history/" + encodeURIComponent(entry)).then(function (w) {
      var m = w.meta, a = m.alert || {};
      document.getElementById("window-meta").textContent = (a.summary || m.reason) + " · " + when(m.t) +
        " · seq " + m.seq + " · " + w.n_samples + " samples at " + fmt(m.fs_hz, 0) + " Hz · diagnosis " +
        m.diagnosis + " · state " + m.state;
      var n = w.wave_min_g.length, dt = (w.duration_s || n) / n, xs = [];
      for (var i = 0; i < n; i++) xs.push(i * dt);
      line(document.getElementById("wave"), xs, w.wave_min_g, w.wave_max_g, "s");
      if (w.freq_hz) line(document.getElementById("spectrum"), w.freq_hz, w.amp_g, null, "Hz");
      if (w.env_freq_hz) line(document.getElementById("envelope"), w.env_freq_hz, w.env_amp_g, null, "Hz");
      document.body.setAttribute("data-history", "ready");
    }).catch(function (err) { document.getElementById("window-meta").textContent = String(err); });
  }
  return {overview: overview, sensor: sensor, history: history, windowView: windowView};
})();

document.addEventListener("DOMContentLoaded", function () {
  var body = document.body, view = body.getAttribute("data-view");
  if (view === "overview") ballpass.overview();
  if (view === "sensor") { ballpass.sensor(body.getAttribute("data-sensor")); ballpass.history(body.getAttribute("data-sensor")); }
  if (view === "window") ballpass.windowView(body.getAttribute("data-sensor"));
});
