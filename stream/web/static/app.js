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
  return {overview: overview, sensor: sensor};
})();

document.addEventListener("DOMContentLoaded", function () {
  var body = document.body, view = body.getAttribute("data-view");
  if (view === "overview") ballpass.overview();
  if (view === "sensor") ballpass.sensor(body.getAttribute("data-sensor"));
});
