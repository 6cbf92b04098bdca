// olla dashboard: polls the status routes and renders them; no framework, no build step.
// On the admin listener (/admin/ui/) it asks for the admin token, keeps it in sessionStorage,
// sends it as a bearer token, and adds the admin actions. Data never goes through innerHTML.
"use strict";

(function () {
  var ADMIN = location.pathname.indexOf("/admin/ui") === 0;
  var TOKEN_KEY = "olla-admin-token";
  var FAST_MS = 2000;
  var SLOW_MS = 5000;
  var HISTORY = 60;
  var WINDOW_MS = 60000;

  var state = {
    paused: false,
    endpoints: [],
    admin: {},          // name -> /admin/backends entry (admin mode)
    sortKey: "priority",
    sortDir: -1,
    samples: [],        // {t, requests, failures}
    series: { rate: [], errors: [], ttfb50: [], ttfb99: [], dur50: [], dur99: [] },
    recentMissingSince: 0,
    recentLimit: 100,   // raised to the ring's capacity once the route reports it
    openAdmin: false,   // the admin listener has no token configured
    lastModels: null,
    rows: new Map(),
  };

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") e.textContent = attrs[k];
        else if (k === "cls") e.className = attrs[k];
        else e.setAttribute(k, attrs[k]);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function dash(v) { return v === null || v === undefined || v === "" ? "–" : String(v); }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function ms(v) {
    v = num(v);
    if (v === null) return "–";
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    if (v >= 100) return Math.round(v) + " ms";
    return v.toFixed(1) + " ms";
  }
  function pct(v) { return v === null ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %"; }

  function badge(text) {
    var t = dash(text);
    return el("span", { cls: "badge s-" + t.toLowerCase().replace(/[^a-z0-9_]/g, "_"), text: t });
  }

  function toast(msg, bad) {
    var t = $("toast");
    t.textContent = msg;
    t.className = bad ? "toast bad" : "toast";
  }

  // --- HTTP ---------------------------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  // Resolves to {status, body} for any HTTP status; rejects only when the network fails.
  function api(path, opts) {
    opts = opts || {};
    var headers = { "Accept": "application/json" };
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    var sent = ADMIN && token();
    if (sent) headers["Authorization"] = "Bearer " + token();
    return fetch(path, {
      method: opts.method || "GET",
      headers: headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      credentials: "omit",
    }).then(function (r) {
      if (ADMIN && r.status === 401) needToken(sent ? "The admin API refused the token." : "");
      return r.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        return { status: r.status, body: body };
      });
    });
  }

  // --- admin token --------------------------------------------------------------------------

  function authReady() { return !ADMIN || state.openAdmin || !!token(); }

  function needToken(why) {
    state.openAdmin = false;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage unavailable */ }
    $("admin-login").hidden = false;
    $("admin-bar").hidden = true;
    $("token-error").textContent = why || "";
    $("token-input").focus();
  }

  function tokenReady() {
    $("admin-login").hidden = true;
    $("admin-bar").hidden = false;
    $("token-error").textContent = "";
  }

  // --- overview -----------------------------------------------------------------------------

  function push(arr, v) { arr.push(v); while (arr.length > HISTORY) arr.shift(); }

  function spark(id, a, b) {
    var box = $(id);
    if (!box) return;
    var all = a.concat(b || []).filter(function (v) { return v !== null; });
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    var max = all.length ? Math.max.apply(null, all) : 0;
    [a, b].forEach(function (series, i) {
      if (!series || series.length < 2) return;
      var pts = [];
      var offset = HISTORY - series.length;  // the newest sample sits at the right edge
      series.forEach(function (v, j) {
        if (v === null) return;
        var x = ((offset + j) / (HISTORY - 1)) * 100;
        var y = 29 - (max > 0 ? (v / max) * 27 : 0);
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      var line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", pts.join(" "));
      if (i === 1) line.setAttribute("class", "second");
      svg.appendChild(line);
    });
    box.replaceChildren(svg);
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    var i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
    return sorted[i];
  }

  function renderStatus(s) {
    var sys = (s && s.system) || {};
    $("sys-status").replaceChildren(badge(sys.status || "unknown"));
    $("ov-status").replaceChildren(badge(sys.status || "unknown"));
    $("ov-uptime").textContent = sys.uptime ? "up " + sys.uptime + " · " + dash(sys.version) : "";
    $("ov-up").textContent = dash(sys.endpoints_up);
    var now = Date.now();
    var requests = num(sys.total_requests), failures = num(sys.total_failures);
    if (requests !== null) {
      var prev = state.samples[state.samples.length - 1];
      state.samples.push({ t: now, requests: requests, failures: failures || 0 });
      while (state.samples.length > 2) state.samples.shift();
      if (prev && now > prev.t) {
        var dr = Math.max(0, requests - prev.requests);
        var df = Math.max(0, (failures || 0) - prev.failures);
        var rate = dr / ((now - prev.t) / 1000);
        push(state.series.rate, rate);
        push(state.series.errors, dr > 0 ? df / dr : 0);
        $("ov-rate").textContent = rate.toFixed(rate < 10 ? 2 : 0) + " /s";
        $("ov-errors").textContent = dr > 0 ? pct(df / dr) : "0 %";
        spark("sp-rate", state.series.rate);
        spark("sp-errors", state.series.errors);
      }
    }
  }

  function renderLatency(recent) {
    var cutoff = Date.now() - WINDOW_MS;
    var ttfb = [], dur = [];
    (recent || []).forEach(function (r) {
      if (!r || typeof r.path !== "string" || r.path.indexOf("/internal/") === 0) return;
      var t = Date.parse(r.time);
      if (!(t >= cutoff)) return;
      if (num(r.ttfb_ms) !== null) ttfb.push(r.ttfb_ms);
      if (num(r.duration_ms) !== null) dur.push(r.duration_ms);
    });
    ttfb.sort(function (a, b) { return a - b; });
    dur.sort(function (a, b) { return a - b; });
    var t50 = quantile(ttfb, 0.5), t99 = quantile(ttfb, 0.99);
    var d50 = quantile(dur, 0.5), d99 = quantile(dur, 0.99);
    push(state.series.ttfb50, t50); push(state.series.ttfb99, t99);
    push(state.series.dur50, d50); push(state.series.dur99, d99);
    $("ov-ttfb").textContent = t50 === null ? "–" : ms(t50) + " / " + ms(t99);
    $("ov-dur").textContent = d50 === null ? "–" : ms(d50) + " / " + ms(d99);
    spark("sp-ttfb", state.series.ttfb50, state.series.ttfb99);
    spark("sp-dur", state.series.dur50, state.series.dur99);
  }

  // --- endpoints ----------------------------------------------------------------------------

  function loadedNames(e) {
    var l = e.loaded_models;
    if (!Array.isArray(l)) return null;
    return l.map(function (m) { return typeof m === "string" ? m : (m && (m.name || m.id || m.model)) || ""; })
      .filter(function (n) { return n; });
  }

  function row(e) {
    var loaded = loadedNames(e);
    var adm = state.admin[e.name];
    var status = e.status;
    if (adm && adm.draining) status = "draining";
    if (adm && adm.enabled === false) status = "disabled";
    var latency = num(e.avg_latency_ms);
    return {
      name: e.name,
      status: status,
      breaker: e.circuit_breaker,
      inflight: num(e.active_connections),
      queued: num(e.queued),
      maxc: num(e.max_concurrency),
      priority: num(e.priority),
      weight: num(e.weight),
      latency: latency,
      latencyText: latency !== null ? ms(latency) : dash(e.response_time),
      loaded: loaded,
      error: e.last_error || e.discovery_error || e.issues || "",
      url: e.url,
    };
  }

  function compare(a, b) {
    var k = state.sortKey, x = a[k], y = b[k];
    if (k === "loaded") { x = x ? x.length : -1; y = y ? y.length : -1; }
    if (x === null || x === undefined) x = typeof y === "number" ? -Infinity : "";
    if (y === null || y === undefined) y = typeof x === "number" ? -Infinity : "";
    var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    if (c === 0) c = String(a.name).localeCompare(String(b.name));
    return c * state.sortDir;
  }

  function actionButtons(name) {
    var box = el("div", { cls: "actions" });
    ["drain", "enable", "disable", "probe"].forEach(function (a) {
      var b = el("button", { type: "button", "data-action": a, "data-endpoint": name, text: a[0].toUpperCase() + a.slice(1) });
      b.setAttribute("aria-label", a + " " + name);
      box.appendChild(b);
    });
    return box;
  }

  function setCells(tr, r) {
    var cells = tr.children;
    var set = function (i, node) {
      var c = cells[i];
      if (typeof node === "string") {
        if (c.textContent !== node || c.children.length) c.textContent = node;
      } else {
        c.replaceChildren(node);
      }
    };
    set(0, r.name);
    cells[0].title = r.url || "";
    set(1, badge(r.status));
    set(2, r.breaker ? badge(r.breaker) : "–");
    set(3, dash(r.inflight) + (r.maxc ? " / " + r.maxc : ""));
    set(4, dash(r.queued));
    set(5, dash(r.priority));
    set(6, dash(r.weight));
    set(7, r.latencyText);
    set(8, r.loaded === null ? "–" : (r.loaded.length ? r.loaded.join(", ") : "none"));
    set(9, r.error || "–");
    cells[9].className = r.error ? "err" : "";
  }

  function renderEndpoints() {
    var rows = state.endpoints.map(row).sort(compare);
    var body = $("ep-body");
    var seen = new Set();
    rows.forEach(function (r, i) {
      var tr = state.rows.get(r.name);
      if (!tr) {
        tr = el("tr", { "data-endpoint": r.name });
        for (var c = 0; c < 10; c++) tr.appendChild(el(c === 0 ? "th" : "td", c === 0 ? { scope: "row" } : null));
        if (ADMIN) tr.appendChild(el("td", null, actionButtons(r.name)));
        state.rows.set(r.name, tr);
      }
      setCells(tr, r);
      seen.add(r.name);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    state.rows.forEach(function (tr, name) {
      if (!seen.has(name)) { tr.remove(); state.rows.delete(name); }
    });
    $("ep-note").textContent = rows.length ? "" : "No endpoints configured.";
    document.querySelectorAll("#ep-table thead th[data-key]").forEach(function (th) {
      if (th.getAttribute("data-key") === state.sortKey) {
        th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
    var inflight = 0, queued = 0;
    rows.forEach(function (r) { inflight += r.inflight || 0; queued += r.queued || 0; });
    $("ov-inflight").textContent = String(inflight);
    $("ov-queued").textContent = String(queued);
    if (ADMIN) fillEndpointSelect(rows);
  }

  function fillEndpointSelect(rows) {
    var sel = $("w-endpoint");
    var names = rows.map(function (r) { return r.name; }).sort();
    var have = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    if (have.join("\n") === names.join("\n")) return;
    var cur = sel.value;
    sel.replaceChildren.apply(sel, names.map(function (n) { return el("option", { value: n, text: n }); }));
    if (names.indexOf(cur) >= 0) sel.value = cur;
    syncWeightInputs();
  }

  function syncWeightInputs() {
    var name = $("w-endpoint").value;
    var e = state.endpoints.find(function (x) { return x.name === name; });
    if (!e) return;
    $("w-priority").value = dash(e.priority) === "–" ? "" : e.priority;
    $("w-weight").value = dash(e.weight) === "–" ? "" : e.weight;
  }

  // --- models -------------------------------------------------------------------------------

  function renderModels(m) {
    var body = $("models-body");
    var models = [];
    ((m && m.model_groups) || []).forEach(function (g) { (g.models || []).forEach(function (x) { models.push(x); }); });
    models.sort(function (a, b) { return String(a.name).localeCompare(String(b.name)); });
    var status = {}, loadedBy = {};
    state.endpoints.forEach(function (e) {
      status[e.name] = e.status;
      (loadedNames(e) || []).forEach(function (n) { (loadedBy[n] = loadedBy[n] || []).push(e.name); });
    });
    var anyLoaded = state.endpoints.some(function (e) { return loadedNames(e) !== null; });
    body.replaceChildren.apply(body, models.map(function (x) {
      var avail = el("td");
      (x.endpoints || []).forEach(function (name, i) {
        if (i) avail.appendChild(document.createTextNode(" "));
        var st = status[name] || "unknown";
        avail.appendChild(el("span", { cls: "badge s-" + st.replace(/[^a-z0-9_]/g, "_"), title: st, text: name }));
      });
      var aliases = (x.aliases || []).filter(function (a) { return a !== x.name; });
      var names = [x.name].concat(aliases);
      var loaded = [];
      names.forEach(function (n) { (loadedBy[n] || []).forEach(function (e) { if (loaded.indexOf(e) < 0) loaded.push(e); }); });
      return el("tr", null,
        el("th", { scope: "row", text: dash(x.name) }),
        el("td", { text: aliases.length ? aliases.join(", ") : "–" }),
        avail,
        el("td", { text: anyLoaded ? (loaded.length ? loaded.join(", ") : "none") : "–" }));
    }));
    $("models-note").textContent = models.length ? "" : "No models discovered yet.";
  }

  // --- recent requests ----------------------------------------------------------------------

  function renderRecent(res) {
    var body = $("req-body");
    if (!res || res.status !== 200 || !res.body || !Array.isArray(res.body.requests)) {
      body.replaceChildren();
      $("req-note").textContent = res && res.status === 404
        ? "No data: this olla does not serve /internal/stats/recent."
        : "No data: recent requests are not available right now.";
      renderLatency([]);
      return false;
    }
    var list = res.body.requests.filter(function (r) {
      return r && typeof r.path === "string" && r.path.indexOf("/internal/") !== 0 && r.path.indexOf("/admin/") !== 0;
    });
    body.replaceChildren.apply(body, list.slice(0, 100).map(function (r) {
      var t = new Date(r.time);
      var cls = r.status >= 500 ? "s-5xx" : r.status >= 400 ? "s-4xx" : "s-2xx";
      var tokens = (r.tokens_in === null || r.tokens_in === undefined) && (r.tokens_out === null || r.tokens_out === undefined)
        ? "–" : dash(r.tokens_in) + " / " + dash(r.tokens_out);
      return el("tr", { "data-request-id": dash(r.request_id) },
        el("td", { text: isNaN(t) ? dash(r.time) : t.toLocaleTimeString(), title: dash(r.time) }),
        el("td", { text: dash(r.model) }),
        el("td", { text: dash(r.endpoint) }),
        el("td", null, el("span", { cls: "badge " + cls, text: dash(r.status) })),
        el("td", { text: ms(r.ttfb_ms) }),
        el("td", { text: ms(r.duration_ms) }),
        el("td", { text: tokens }));
    }));
    $("req-note").textContent = list.length ? "" : "No requests yet.";
    renderLatency(list);
    return true;
  }

  // --- supervision --------------------------------------------------------------------------

  function actorNode(a) {
    var li = el("li", null,
      el("strong", { text: dash(a.name) }), " ",
      badge(a.state),
      a.restarts ? el("span", { cls: "muted", text: " restarts: " + a.restarts }) : null,
      a.retry_at ? el("span", { cls: "muted", text: " retry at " + a.retry_at }) : null);
    if (a.last_failure) li.appendChild(el("div", { cls: "fail", text: "last failure: " + a.last_failure }));
    if (a.children && a.children.length) {
      li.appendChild(el.apply(null, ["ul", null].concat(a.children.map(actorNode))));
    }
    return li;
  }

  function renderSupervision(res) {
    if (!res || res.status !== 200 || !res.body || !res.body.root) {
      $("sup-tree").replaceChildren();
      $("sup-note").textContent = "No data: the supervision tree is not available right now.";
      return;
    }
    $("sup-tree").replaceChildren(el("ul", null, actorNode(res.body.root)));
    $("sup-note").textContent = "";
  }

  // --- polling ------------------------------------------------------------------------------

  function stamp() { $("updated").textContent = "updated " + new Date().toLocaleTimeString(); }

  function fail(what) {
    return function () { toast("Cannot reach olla (" + what + "); retrying.", true); };
  }

  function pollFast() {
    if (state.paused || !authReady()) return Promise.resolve();
    var jobs = [
      api("/internal/status").then(function (r) { if (r.status === 200) renderStatus(r.body); }, fail("status")),
      api("/internal/status/endpoints").then(function (r) {
        if (r.status === 200 && r.body && Array.isArray(r.body.endpoints)) {
          state.endpoints = r.body.endpoints;
        }
      }, fail("endpoints")),
    ];
    if (ADMIN) {
      jobs.push(api("/admin/backends").then(function (r) {
        if (r.status === 200 && r.body && Array.isArray(r.body.backends)) {
          var m = {};
          r.body.backends.forEach(function (b) { m[b.name] = b; });
          state.admin = m;
        }
      }, fail("admin")));
    }
    // A missing recent-requests route is asked again only every 30 s.
    if (!state.recentMissingSince || Date.now() - state.recentMissingSince > 30000) {
      jobs.push(api("/internal/stats/recent?limit=" + state.recentLimit).then(function (r) {
        state.recentMissingSince = r.status === 404 ? Date.now() : 0;
        var cap = r.status === 200 && r.body ? num(r.body.capacity) : null;
        if (cap !== null && cap >= 1) state.recentLimit = Math.min(Math.floor(cap), 10000);
        renderRecent(r);
      }, fail("recent")));
    } else {
      renderLatency([]);
    }
    return Promise.all(jobs).then(function () {
      renderEndpoints();
      if (state.lastModels) renderModels(state.lastModels);
      stamp();
    });
  }

  function pollSlow() {
    if (state.paused || !authReady()) return Promise.resolve();
    return Promise.all([
      api("/internal/status/models?detailed=true&group=family").then(function (r) {
        if (r.status === 200) { state.lastModels = r.body; renderModels(r.body); }
      }, fail("models")),
      api("/internal/status/supervision").then(renderSupervision, fail("supervision")),
    ]);
  }

  function loop(fn, every) {
    var run = function () {
      fn().catch(function (e) { toast("Dashboard error: " + (e && e.message), true); })
        .then(function () { setTimeout(run, every); });
    };
    run();
  }

  // --- admin actions ------------------------------------------------------------------------

  function report(what, r) {
    if (r.status >= 200 && r.status < 300) {
      toast(what + ": done.");
    } else {
      var msg = r.body && r.body.error && r.body.error.message;
      toast(what + " failed (" + r.status + ")" + (msg ? ": " + msg : ""), true);
    }
    return pollFast().then(pollSlow);
  }

  function onAction(ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b) return;
    var name = b.getAttribute("data-endpoint"), action = b.getAttribute("data-action");
    b.disabled = true;
    toast(action + " " + name + "…");
    api("/admin/backends/" + encodeURIComponent(name) + "/" + action, { method: "POST" })
      .then(function (r) { return report(action + " " + name, r); }, fail("admin"))
      .then(function () { b.disabled = false; });
  }

  function setupAdmin() {
    $("mode").textContent = "admin";
    document.title = "olla admin";
    document.querySelectorAll(".admin-only").forEach(function (n) { n.hidden = false; });
    $("token-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var v = $("token-input").value.trim();
      if (!v) return;
      try { sessionStorage.setItem(TOKEN_KEY, v); } catch (e) { /* storage unavailable */ }
      $("token-input").value = "";
      api("/admin/backends").then(function (r) {
        if (r.status === 200) { tokenReady(); pollFast().then(pollSlow); }
      }, fail("admin"));
    });
    $("forget-token").addEventListener("click", function () { needToken(""); });
    $("reload-config").addEventListener("click", function () {
      api("/admin/reload", { method: "POST" }).then(function (r) { return report("reload", r); }, fail("admin"));
    });
    $("w-endpoint").addEventListener("change", syncWeightInputs);
    $("weights-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var name = $("w-endpoint").value;
      if (!name) return;
      var patch = {};
      var p = $("w-priority").value, w = $("w-weight").value;
      if (p !== "") patch.priority = parseInt(p, 10);
      if (w !== "") patch.weight = parseInt(w, 10);
      api("/admin/backends/" + encodeURIComponent(name), { method: "PATCH", body: patch })
        .then(function (r) { return report("set priority/weight of " + name, r); }, fail("admin"));
    });
    $("ep-body").addEventListener("click", onAction);
    if (token()) {
      tokenReady();
    } else {
      // An admin listener without a token (loopback only) answers without one.
      api("/admin/backends").then(function (r) {
        if (r.status === 200) { state.openAdmin = true; tokenReady(); $("forget-token").hidden = true; }
        else needToken("");
      }, function () { needToken(""); });
    }
  }

  function setup() {
    document.querySelectorAll("#ep-table thead th[data-key] button").forEach(function (b) {
      b.addEventListener("click", function () {
        var key = b.parentElement.getAttribute("data-key");
        if (state.sortKey === key) state.sortDir = -state.sortDir;
        else { state.sortKey = key; state.sortDir = key === "name" || key === "status" ? 1 : -1; }
        renderEndpoints();
      });
    });
    $("pause").addEventListener("click", function () {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      $("pause").setAttribute("aria-pressed", String(state.paused));
    });
    if (ADMIN) setupAdmin();
    loop(pollFast, FAST_MS);
    loop(pollSlow, SLOW_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
