// ballpass evidence page: live updates over server-sent events, no library.
"use strict";
var ballpass = (function () {
  function q(name) { return new URLSearchParams(location.search).get(name); }
  function feed() {
    var token = q("token");
    return new EventSource("/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
  }
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
