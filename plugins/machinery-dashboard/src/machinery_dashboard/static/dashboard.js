// machinery dashboard: live refresh from /stream and workflow graphs drawn as inline SVG.
// Hand-written, no build step; every value from the server goes through textContent.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = {SUCCESS: "#2e9d4b", FAILURE: "#d93025", RETRY: "#f29900", STARTED: "#1a73e8",
    RECEIVED: "#7b8794", PENDING: "#bdc1c6", REVOKED: "#5f2a2a"};
  var listeners = [];
  var source = null;

  function onChanges(fn) {
    listeners.push(fn);
    if (source || !window.EventSource) return;
    source = new EventSource("/stream");
    source.onmessage = function (ev) {
      var changed;
      try { changed = JSON.parse(ev.data); } catch (err) { return; }
      listeners.forEach(function (f) { f(changed); });
    };
  }

  function throttle(fn, ms) {
    var timer = null, again = false;
    return function () {
      if (timer) { again = true; return; }
      fn();
      timer = setTimeout(function () { timer = null; if (again) { again = false; fn(); } }, ms);
    };
  }

  function el(tag, attrs, parent, ns) {
    var node = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  // -- pages refreshed in place (overview, tasks, dead letters) ---------------------------------
  function liveRegion() {
    var region = document.getElementById("live");
    if (!region || document.body.getAttribute("data-live") !== "1") return;
    var refresh = throttle(function () {
      var busy = Array.prototype.some.call(region.querySelectorAll("input, select"), function (i) {
        return i === document.activeElement || (i.type !== "hidden" && i.tagName === "INPUT" && i.value);
      });
      if (busy) return;
      var url = location.pathname + location.search + (location.search ? "&" : "?") + "partial=1";
      fetch(url, {credentials: "same-origin"}).then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var doc = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
          region.replaceChildren.apply(region, Array.prototype.slice.call(doc.body.firstChild.childNodes));
        });
    }, 1000);
    onChanges(refresh);
  }

  // -- workflow graph ---------------------------------------------------------------------------
  function workflow() {
    var box = document.getElementById("graph");
    if (!box) return;
    var id = box.getAttribute("data-workflow");
    var detail = document.getElementById("node-detail");
    var selected = null, known = {};

    function showNode(uuid) {
      selected = uuid;
      Array.prototype.forEach.call(box.querySelectorAll(".node"), function (n) {
        n.classList.toggle("selected", n.getAttribute("data-uuid") === uuid);
      });
      fetch("/api/task/" + encodeURIComponent(uuid), {credentials: "same-origin"})
        .then(function (r) { return r.json(); }).then(function (t) {
          detail.replaceChildren();
          var h = el("h2", {}, detail); h.textContent = t.name || uuid;
          var p = el("p", {}, detail);
          var badge = el("span", {"class": "state s-" + String(t.state || "").toLowerCase()}, p);
          badge.textContent = t.state || "unknown";
          var a = el("a", {href: "/task/" + encodeURIComponent(uuid), id: "node-link"}, p);
          a.textContent = " " + uuid;
          [["worker", t.worker], ["runtime", t.runtime != null ? Number(t.runtime).toFixed(3) + "s" : ""],
            ["retries", t.retries]].forEach(function (kv) {
            if (kv[1] === undefined || kv[1] === "" || kv[1] === null) return;
            var line = el("p", {}, detail); line.textContent = kv[0] + ": " + kv[1];
          });
          [["results", t.results], ["error", t.error], ["traceback", t.traceback]].forEach(function (kv) {
            if (!kv[1]) return;
            var h3 = el("h3", {}, detail); h3.textContent = kv[0];
            var pre = el("pre", {"class": kv[0]}, detail); pre.textContent = kv[1];
          });
        });
    }

    function draw(g) {
      known = {};
      var layers = [];
      g.nodes.forEach(function (n) { (layers[n.layer] = layers[n.layer] || []).push(n); known[n.uuid] = n; });
      var W = 190, H = 34, GX = 70, GY = 14, pos = {};
      var rows = Math.max.apply(null, layers.map(function (l) { return l ? l.length : 0; }).concat([1]));
      var width = layers.length * (W + GX) + 20, height = rows * (H + GY) + 20;
      layers.forEach(function (layer, li) {
        var offset = (rows - layer.length) * (H + GY) / 2;
        layer.forEach(function (n, i) { pos[n.uuid] = {x: 10 + li * (W + GX), y: 10 + offset + i * (H + GY)}; });
      });
      var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
        role: "img", "aria-label": g.kind + " graph"}, null, true);
      g.edges.forEach(function (ed) {
        var a = pos[ed.from], b = pos[ed.to];
        if (!a || !b) return;
        var x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
        el("path", {"class": "edge " + ed.kind, d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," +
          y2 + " " + x2 + "," + y2}, svg, true);
      });
      g.nodes.forEach(function (n) {
        var p = pos[n.uuid];
        var grp = el("g", {"class": "node" + (n.uuid === selected ? " selected" : ""), "data-uuid": n.uuid,
          "data-state": n.state, transform: "translate(" + p.x + "," + p.y + ")", tabindex: "0"}, svg, true);
        el("rect", {width: W, height: H, rx: 6, fill: COLORS[n.state] || "#9aa0a6"}, grp, true);
        var t1 = el("text", {x: 8, y: 14}, grp, true); t1.textContent = (n.name || "?").slice(0, 28);
        var t2 = el("text", {x: 8, y: 28}, grp, true); t2.textContent = n.state + " · " + n.uuid.slice(0, 14);
        var title = el("title", {}, grp, true); title.textContent = n.name + " " + n.uuid + " " + n.state;
        grp.addEventListener("click", function () { showNode(n.uuid); });
        grp.addEventListener("keydown", function (ev) { if (ev.key === "Enter") showNode(n.uuid); });
      });
      box.replaceChildren(svg);
      var summary = document.getElementById("graph-summary");
      if (summary) {
        summary.textContent = g.kind + " of " + g.nodes.length + " task" + (g.nodes.length === 1 ? "" : "s") +
          (g.truncated ? " (cut)" : "");
      }
      box.setAttribute("data-loaded", "1");
    }

    function load() {
      fetch("/api/workflow/" + encodeURIComponent(id), {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (g) { if (g) { draw(g); if (selected) showNode(selected); } });
    }
    var reload = throttle(load, 500);
    load();
    // running tasks are not in the event log (only outcomes are): while a node is unfinished,
    // redraw from the backend's states every few seconds as well
    setInterval(function () {
      var open = Object.keys(known).some(function (u) {
        return ["SUCCESS", "FAILURE", "REVOKED"].indexOf(known[u].state) < 0;
      });
      if (open && !document.hidden) reload();
    }, 3000);
    onChanges(function (changed) {
      var mine = changed.some(function (c) {
        return known[c.uuid] || (c.group_uuid && Object.keys(known).some(function (u) {
          return known[u].group_uuid === c.group_uuid; }));
      });
      if (mine || !Object.keys(known).length) reload();
    });
  }

  // -- confirmation of destructive actions ------------------------------------------------------
  function confirmations() {
    document.addEventListener("submit", function (ev) {
      var f = ev.target;
      if (f.classList && f.classList.contains("purge") && !window.confirm("Purge every waiting message of " +
          f.querySelector("[name=queue]").value + "?")) ev.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", function () { liveRegion(); workflow(); confirmations(); });
})();
