// The tierlm dashboard: polls admin/dashboard and draws it. Every name from the gateway is
// written as text (textContent, SVG <title>), never parsed as markup. No library, no URL
// outside the gateway. Marks "tierlm-first-render" once the first data is on the page, and
// counts renders in <body data-renders>.
"use strict";
(() => {
  const KEY = "tierlm-admin-key";
  const SVGNS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3f6fd8", "#e0862b", "#2e9e6a", "#b2458f", "#7d6bd6", "#c9a227", "#4aa3b5", "#8a8f99"];
  const params = new URLSearchParams(location.search);
  const pollMs = Math.max(250, Number(params.get("poll")) || 3000);
  const $ = (sel) => document.querySelector(sel);
  let timer = null;
  let renders = 0;
  let colors = {};

  // -- small helpers ------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, title) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (title) node.appendChild(svgTitle(title));
    return node;
  }
  function svgTitle(text) {
    const t = document.createElementNS(SVGNS, "title");
    t.textContent = text;
    return t;
  }
  const int = (n) => Number(n || 0).toLocaleString("en-US");
  const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
  const ms = (x) => (x === null || x === undefined ? "-" : x < 10 ? x.toFixed(1) : Math.round(x).toString());
  function usd(x) {
    x = Number(x || 0);
    if (x === 0) return "$0";
    return x >= 0.01 ? "$" + x.toFixed(2) : "$" + x.toPrecision(2);
  }
  function setValue(node, value, text) {
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.textContent = text;
  }
  function color(tier) {
    if (!(tier in colors)) colors[tier] = PALETTE[Object.keys(colors).length % PALETTE.length];
    return colors[tier];
  }
  function swatch(tier) {
    const s = el("span", { class: "swatch" });
    s.style.background = color(tier);
    return s;
  }
  function legend(names) {
    const box = el("div", { class: "legend" });
    for (const n of names) {
      const item = el("span");
      item.append(swatch(n), document.createTextNode(n));
      box.append(item);
    }
    return box;
  }

  // -- talking to the gateway ---------------------------------------------------------------
  function headers() {
    const key = sessionStorage.getItem(KEY);
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function showLogin(message) {
    clearTimeout(timer);
    $("#main").hidden = true;
    $("#signout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#status").textContent = "sign in";
    $("#key").focus();
  }
  async function poll() {
    clearTimeout(timer);
    if (document.body.dataset.auth === "key" && !sessionStorage.getItem(KEY)) {
      showLogin("");
      return;
    }
    const since = encodeURIComponent($("#since").value);
    const t0 = performance.now();
    let res;
    try {
      res = await fetch("admin/dashboard?since=" + since, { headers: headers(), cache: "no-store" });
    } catch (e) {
      stale("gateway unreachable");
      return;
    }
    if (res.status === 401 || res.status === 403) {
      sessionStorage.removeItem(KEY);
      const body = await res.json();
      showLogin(body.error ? body.error.message : "not allowed");
      return;
    }
    if (!res.ok) {
      stale("gateway answered " + res.status);
      return;
    }
    render(await res.json());
    // a report that takes long to build is asked for less often (at most a fifth of the time)
    timer = setTimeout(poll, Math.max(pollMs, 4 * (performance.now() - t0)));
  }
  function stale(why) {
    const s = $("#status");
    s.textContent = why + ", retrying";
    s.classList.add("stale");
    timer = setTimeout(poll, pollMs);
  }

  // -- drawing ------------------------------------------------------------------------------
  function render(data) {
    const rep = data.report;
    const live = data.live;
    colors = {};
    [...live.tiers, "rules", "cache"].forEach(color);
    $("#login").hidden = true;
    $("#main").hidden = false;
    $("#signout").hidden = document.body.dataset.auth !== "key";
    $("#ledger-off").hidden = rep !== null;
    renderKpis(rep, live);
    renderTimeline(rep, data.since);
    renderTiers(rep);
    renderLatency(rep);
    renderBudgets(rep);
    renderBackends(live);
    renderKeys(rep);
    renderCache(live.cache);
    renderDeferred(rep);
    const s = $("#status");
    s.classList.remove("stale");
    s.textContent = "updated " + new Date(data.now * 1000).toLocaleTimeString();
    renders += 1;
    document.body.dataset.renders = String(renders);
    if (renders === 1) performance.mark("tierlm-first-render");
  }

  function tierRequests(rep, name) {
    const g = rep ? rep.by_tier.find((t) => t.name === name) : null;
    return g ? g.requests : 0;
  }
  function renderKpis(rep, live) {
    const k = (name) => $('[data-k="' + name + '"]');
    setValue(k("in_flight"), live.in_flight, int(live.in_flight));
    if (!rep) return;
    setValue(k("requests"), rep.requests, int(rep.requests));
    setValue(k("cost_usd"), rep.cost_usd, usd(rep.cost_usd));
    for (const r of ["fallback_rate", "escalation_rate", "error_rate"]) setValue(k(r), rep[r], pct(rep[r]));
    for (const t of ["cache", "rules"]) setValue(k(t), tierRequests(rep, t), int(tierRequests(rep, t)));
    for (const n of ["privacy_kept_local", "budget_kept_local"]) setValue(k(n), rep[n] || 0, int(rep[n]));
  }

  function series(rep, since) {
    // hourly bars for two days or less, daily beyond
    const hours = rep.until - rep.since <= 2 * 86400 + 1;
    const rows = hours ? rep.hourly : rep.daily;
    const unit = hours ? 3600 : 86400;
    const key = hours ? "hour" : "day";
    const first = Math.floor(rep.since / unit);
    const last = Math.floor((rep.until - 1e-6) / unit);
    // the whole period; a very long one from its first slot with data
    const oldest = rows.length ? Math.min(last, ...rows.map((r) => r[key])) : last;
    const start = last - first > 400 ? Math.max(first, oldest) : first;
    const slots = [];
    for (let i = start; i <= last; i++) slots.push({ at: i * unit, tiers: {} });
    for (const r of rows) {
      const slot = slots[r[key] - start];
      if (slot) slot.tiers[r.tier] = (slot.tiers[r.tier] || 0) + r.requests;
    }
    return { slots, unit };
  }
  function renderTimeline(rep, since) {
    const box = $("#timeline");
    box.replaceChildren();
    if (!rep || !rep.requests) {
      box.append(el("p", { class: "note" }, "No requests in this period."));
      return;
    }
    const { slots, unit } = series(rep, since);
    const names = Object.keys(colors).filter((n) => slots.some((s) => s.tiers[n]));
    for (const s of slots) for (const n of Object.keys(s.tiers)) if (!names.includes(n)) names.push(n);
    const W = 900, H = 200, L = 44, B = 22;
    const max = Math.max(1, ...slots.map((s) => Object.values(s.tiers).reduce((a, b) => a + b, 0)));
    const bw = (W - L) / slots.length;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "requests per tier over time" });
    root.append(svg("text", { x: 0, y: 12 }), svg("line", { x1: L, x2: W, y1: H - B, y2: H - B, stroke: "#dde1e8" }));
    root.firstChild.textContent = int(max);
    slots.forEach((s, i) => {
      let y = H - B;
      for (const n of names) {
        const v = s.tiers[n] || 0;
        if (!v) continue;
        const h = ((H - B - 16) * v) / max;
        y -= h;
        const when = new Date(s.at * 1000);
        const label = (unit === 3600 ? when.toISOString().slice(0, 13) + ":00" : when.toISOString().slice(0, 10)) + " UTC";
        root.append(svg("rect", { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, fill: color(n) }, `${n}: ${int(v)} requests, ${label}`));
      }
    });
    const tick = (i) => {
      const d = new Date(slots[i].at * 1000);
      const t = svg("text", { x: L + i * bw, y: H - 6 });
      t.textContent = unit === 3600 ? d.toISOString().slice(11, 13) + "h" : d.toISOString().slice(5, 10);
      root.append(t);
    };
    const every = Math.ceil(slots.length / 12);
    for (let i = 0; i < slots.length; i += every) tick(i);
    box.append(root, legend(names));
  }

  function renderTiers(rep) {
    const body = $("#tiers tbody");
    const share = $("#share");
    body.replaceChildren();
    share.replaceChildren();
    if (!rep) return;
    const lat = Object.fromEntries(rep.latency.map((l) => [l.name, l]));
    const W = 900, H = 26;
    const bar = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "share of requests per tier" });
    let x = 0;
    for (const g of rep.by_tier) {
      const w = g.share * W;
      bar.append(svg("rect", { x, y: 0, width: w, height: H, fill: color(g.name) }, `${g.name}: ${pct(g.share)}`));
      x += w;
      const l = lat[g.name] || {};
      const row = el("tr", { "data-tier": g.name });
      const name = el("td");
      name.append(swatch(g.name), document.createTextNode(g.name));
      row.append(name);
      const cells = [
        ["requests", g.requests, int(g.requests)],
        ["share", g.share, pct(g.share)],
        ["cost_usd", g.cost_usd, usd(g.cost_usd)],
        ["p50_ms", l.p50_ms, ms(l.p50_ms)],
        ["p90_ms", l.p90_ms, ms(l.p90_ms)],
        ["p99_ms", l.p99_ms, ms(l.p99_ms)],
        ["fallback_rate", g.fallback_rate, pct(g.fallback_rate)],
        ["escalation_rate", g.escalation_rate, pct(g.escalation_rate)],
        ["error_rate", g.error_rate, pct(g.error_rate)],
      ];
      for (const [f, v, t] of cells) {
        const td = el("td", { class: "num", "data-f": f });
        setValue(td, v, t);
        row.append(td);
      }
      body.append(row);
    }
    if (rep.by_tier.length) share.append(bar);
  }

  function renderLatency(rep) {
    const box = $("#latency");
    box.replaceChildren();
    const rows = rep ? rep.latency.filter((l) => l.name !== "all" && l.n) : [];
    if (!rows.length) {
      box.append(el("p", { class: "note" }, "No latencies recorded in this period."));
      return;
    }
    const W = 900, L = 110, R = 60, row = 22, H = rows.length * row * 3 + 10;
    const max = Math.max(...rows.map((l) => l.p99_ms || l.p90_ms || l.p50_ms || 1));
    const scale = (v) => ((W - L - R) * Math.log1p(v)) / Math.log1p(max);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "latency percentiles per tier" });
    rows.forEach((l, i) => {
      const y0 = i * row * 3 + 4;
      const name = svg("text", { x: 0, y: y0 + row * 1.6 });
      name.textContent = l.name;
      root.append(name);
      [["p50", l.p50_ms, 1], ["p90", l.p90_ms, 0.7], ["p99", l.p99_ms, 0.45]].forEach(([q, v, op], j) => {
        if (v === null || v === undefined) return;
        const y = y0 + j * row * 0.9;
        root.append(svg("rect", { x: L, y, width: Math.max(1, scale(v)), height: row * 0.75, fill: color(l.name), "fill-opacity": op, "data-tier": l.name, "data-q": q, "data-value": v }, `${l.name} ${q}: ${ms(v)} ms`));
        const t = svg("text", { x: L + scale(v) + 4, y: y + row * 0.6 });
        t.textContent = `${q} ${ms(v)}`;
        root.append(t);
      });
    });
    box.append(root);
  }

  function renderBudgets(rep) {
    const box = $("#budgets");
    box.replaceChildren();
    if (!rep || !rep.budgets.length) {
      box.append(el("p", { class: "note" }, "No budgets configured."));
      return;
    }
    for (const b of rep.budgets) {
      const div = el("div", { class: "budget", "data-bucket": b.bucket, "data-spent": b.spent_usd, "data-limit": b.limit_usd });
      div.append(el("div", {}, `${b.label}: ${usd(b.spent_usd)} spent, ${usd(b.reserved_usd)} reserved of ${usd(b.limit_usd)}`));
      const W = 900, H = 16, lim = b.limit_usd || 1;
      const bar = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": b.label });
      const spent = Math.min(W, (W * b.spent_usd) / lim);
      const held = Math.min(W - spent, (W * b.reserved_usd) / lim);
      const used = (b.spent_usd + b.reserved_usd) / lim;
      bar.append(
        svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#eceff3" }),
        svg("rect", { x: 0, y: 0, width: spent, height: H, fill: used > 0.9 ? "#c62828" : "#3f6fd8" }, "spent " + usd(b.spent_usd)),
        svg("rect", { x: spent, y: 0, width: held, height: H, fill: "#9fb6ea" }, "reserved " + usd(b.reserved_usd)),
      );
      div.append(bar);
      box.append(div);
    }
  }

  function renderBackends(live) {
    const body = $("#backends tbody");
    body.replaceChildren();
    for (const b of live.backends) {
      const row = el("tr", { "data-backend": b.name, "data-ok": String(b.ok), "data-breaker": b.breaker });
      const health = b.ok === true ? ["up", "ok"] : b.ok === false ? ["down", "bad"] : ["unknown", "warn"];
      const breaker = b.breaker === "closed" ? "ok" : b.breaker === "open" ? "bad" : "warn";
      row.append(
        el("td", {}, b.name),
        el("td", {}, b.model),
        el("td", {}, b.tiers.join(", ")),
        el("td", {}, b.boundary),
        el("td", { class: health[1] }, health[0]),
        el("td", { class: breaker }, b.breaker.replace("_", "-")),
        el("td", {}, b.detail || ""),
      );
      body.append(row);
    }
  }

  function renderKeys(rep) {
    const body = $("#keys tbody");
    body.replaceChildren();
    for (const g of rep ? rep.by_key : []) {
      const row = el("tr", { "data-key": g.name });
      row.append(
        el("td", {}, g.name),
        el("td", { class: "num" }, int(g.requests)),
        el("td", { class: "num" }, pct(g.share)),
        el("td", { class: "num" }, usd(g.cost_usd)),
        el("td", { class: "num" }, pct(g.error_rate)),
      );
      body.append(row);
    }
  }

  function renderCache(cache) {
    const dl = $("#cache");
    dl.replaceChildren();
    if (!cache.enabled) {
      dl.append(el("dt", {}, "cache"), el("dd", {}, "off"));
      return;
    }
    for (const [k, v] of Object.entries(cache.counts || {})) {
      dl.append(el("dt", {}, k), el("dd", { "data-count": k, "data-value": v }, int(v)));
    }
    for (const s of cache.stores || []) {
      const label = s.store || s.kind || "store";
      dl.append(el("dt", {}, label + " entries"), el("dd", {}, int(s.entries)));
    }
  }

  function renderDeferred(rep) {
    // the report's deferred queue (Batch API): line counts by state, batches by status,
    // and money (*_usd); "none" while nothing waits, runs or was submitted in the period
    const box = $("#deferred");
    box.replaceChildren();
    const d = (rep && rep.deferred) || {};
    const counts = Object.entries(d).filter(([k, v]) => typeof v === "number" && !k.endsWith("_usd"));
    const batches = Object.entries(d.batches || {});
    if (!counts.some(([, v]) => v) && !batches.length) {
      box.append(el("p", { class: "note", "data-deferred": "none" }, "No deferred work."));
      return;
    }
    const dl = el("dl", { "data-deferred": "some" });
    const add = (label, key, v, text) => dl.append(el("dt", {}, label), el("dd", { "data-d": key, "data-value": v }, text));
    for (const [k, v] of counts) add("lines " + k, k, v, int(v));
    for (const [k, v] of batches) add("batches " + k, "batches." + k, v, int(v));
    const money = { cost_usd: "spent on finished lines", at_submission_usd: "had they run at once", saved_usd: "saved by waiting" };
    for (const [k, v] of Object.entries(d)) if (k.endsWith("_usd")) add(money[k] || k, k, v, usd(v));
    box.append(dl);
  }

  // -- wiring -------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("#login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("#key").value.trim());
      $("#key").value = "";
      poll();
    });
    $("#signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showLogin("Signed out.");
    });
    $("#since").addEventListener("change", poll);
    poll();
  });
})();
