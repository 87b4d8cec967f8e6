// ltvsync status page: reads the JSON API with the bearer token and draws plain SVG charts.
// No libraries and no CDN; data is only ever inserted with textContent (never innerHTML).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "ltvsync-token";
const POLL_MS = 750;
const REFRESH_MS = 30000;
const LAG_WARN_SECONDS = 3 * 3600;
const W = 480, H = 240, PAD = { left: 48, right: 12, top: 12, bottom: 36 };
const PALETTE = ["#2f6fb3", "#d1495b", "#66a182", "#edae49", "#8e6c8a", "#00798c", "#30638e", "#a23b72"];

let token = null;

function readToken() {
  // The token arrives in the fragment (#token=...), which browsers never send to the server.
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {}

async function api(path, options = {}) {
  const used = token;
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + used });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    // Only a refusal of the current token counts: late answers to a replaced token are stale.
    if (used === token) {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenForm("The token was refused.");
    }
    throw new ApiError("unauthorized");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new ApiError(response.status + ": " + detail);
  }
  return response.json();
}

function $(id) { return document.getElementById(id); }

function el(tag, attrs, parent, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (parent) parent.appendChild(node);
  return node;
}

function svg(tag, attrs, parent, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (parent) parent.appendChild(node);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function fmtTime(iso) { return iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, "") : "—"; }

function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function fmtMoney(v) {
  if (v === null || v === undefined) return "—";
  return Math.abs(v) >= 1000 ? (v / 1000).toFixed(1) + "k" : v.toFixed(0);
}

function emptyChart(chart, message) {
  clear(chart);
  chart.dataset.rendered = "empty";
  svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, chart, message);
}

function frame(chart, yMax, yLabel) {
  clear(chart);
  const plotH = H - PAD.top - PAD.bottom;
  svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: "axis" }, chart);
  svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }, chart);
  for (const f of [0, 0.5, 1]) {
    const y = PAD.top + plotH * (1 - f);
    svg("text", { x: PAD.left - 4, y: y + 3, "text-anchor": "end" }, chart, yLabel(yMax * f));
  }
  return plotH;
}

// --- charts -----------------------------------------------------------------------------------

function drawHistogram(hist) {
  const chart = $("chart-ltv");
  const bins = hist.bins || [];
  if (!bins.length) return emptyChart(chart, "No LTV computed yet");
  const yMax = Math.max(1, ...bins.map((b) => b.count));
  const plotH = frame(chart, yMax, (v) => Math.round(v));
  const barW = (W - PAD.left - PAD.right) / bins.length;
  bins.forEach((b, i) => {
    const h = (b.count / yMax) * plotH;
    const rect = svg("rect", {
      class: "bar", x: PAD.left + i * barW + 1, y: H - PAD.bottom - h, width: Math.max(1, barW - 2), height: h,
      "data-count": b.count,
    }, chart);
    svg("title", {}, rect, `${fmtMoney(b.low)}–${fmtMoney(b.high)}: ${b.count} customers`);
  });
  const step = Math.max(1, Math.ceil(bins.length / 6));
  for (let i = 0; i <= bins.length; i += step) {
    const value = i < bins.length ? bins[i].low : bins[bins.length - 1].high;
    svg("text", { x: PAD.left + i * barW, y: H - PAD.bottom + 14, "text-anchor": "middle" }, chart, fmtMoney(value));
  }
  chart.dataset.rendered = "ok";
  $("chart-ltv-note").textContent = `${hist.total} customers` +
    (hist.overflow ? `; ${hist.overflow} above ${fmtMoney(bins[bins.length - 1].high)} (max ${fmtMoney(hist.overflow_max)})` : "");
}

function drawTagCounts(series) {
  const chart = $("chart-tags");
  const legend = $("chart-tags-legend");
  clear(legend);
  const days = [...new Set(series.flatMap((s) => s.points.map((p) => p.day)))].sort();
  if (!days.length) return emptyChart(chart, "No tags yet");
  if (days.length === 1) return drawTagBars(chart, series, days[0]);
  const yMax = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.count)));
  const plotH = frame(chart, yMax, (v) => Math.round(v));
  const plotW = W - PAD.left - PAD.right;
  const x = (day) => PAD.left + (days.length === 1 ? plotW / 2 : (days.indexOf(day) / (days.length - 1)) * plotW);
  const y = (count) => H - PAD.bottom - (count / yMax) * plotH;
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const points = s.points.map((p) => `${x(p.day).toFixed(1)},${y(p.count).toFixed(1)}`).join(" ");
    svg("polyline", { class: "series", points, stroke: color, "data-tag": s.tag }, chart);
    for (const p of s.points) {
      const dot = svg("circle", { cx: x(p.day), cy: y(p.count), r: 2.5, fill: color, class: "point" }, chart);
      svg("title", {}, dot, `${s.tag} on ${p.day}: ${p.count}`);
    }
    const item = el("span", {}, legend);
    el("i", {}, item).style.background = color;
    item.appendChild(document.createTextNode(s.tag));
  });
  svg("text", { x: PAD.left, y: H - PAD.bottom + 14 }, chart, days[0]);
  svg("text", { x: W - PAD.right, y: H - PAD.bottom + 14, "text-anchor": "end" }, chart, days[days.length - 1]);
  chart.dataset.rendered = "ok";
}

function drawTagBars(chart, series, day) {
  // A single day of counts (a fresh install) reads better as bars than as a column of dots.
  clear(chart);
  const rows = series.map((s) => ({ tag: s.tag, count: s.points[s.points.length - 1].count }));
  const max = Math.max(1, ...rows.map((r) => r.count));
  const left = 96, rowH = Math.min(24, (H - PAD.top - PAD.bottom) / rows.length);
  rows.forEach((r, i) => {
    const y = PAD.top + i * rowH;
    const width = (r.count / max) * (W - left - PAD.right - 36);
    svg("text", { x: left - 6, y: y + rowH / 2 + 3, "text-anchor": "end" }, chart, r.tag);
    const bar = svg("rect", {
      class: "bar", x: left, y: y + 2, width: Math.max(1, width), height: rowH - 4,
      fill: PALETTE[i % PALETTE.length], "data-tag": r.tag, "data-count": r.count,
    }, chart);
    svg("title", {}, bar, `${r.tag} on ${day}: ${r.count}`);
    svg("text", { x: left + width + 4, y: y + rowH / 2 + 3 }, chart, r.count);
  });
  svg("text", { x: W - PAD.right, y: H - 8, "text-anchor": "end" }, chart, "customers per tag on " + day);
  chart.dataset.rendered = "ok";
}

function drawRetention(matrix) {
  const chart = $("chart-retention");
  const rows = matrix.rows || [];
  if (!rows.length) return emptyChart(chart, "No cohorts yet");
  clear(chart);
  const cols = Math.max(1, ...rows.map((r) => r.retention.length));
  const left = 56, top = 16, ch = 14;
  // Grow the drawing with the number of cohorts instead of squeezing the rows illegibly.
  chart.setAttribute("viewBox", `0 0 ${W} ${Math.max(H, top + rows.length * ch + 8)}`);
  const cw = (W - left - PAD.right) / cols;
  for (let k = 0; k < cols; k += Math.max(1, Math.ceil(cols / 12))) {
    svg("text", { x: left + k * cw + cw / 2, y: top - 4, "text-anchor": "middle" }, chart, "M" + k);
  }
  rows.forEach((r, i) => {
    const yTop = top + i * ch;
    svg("text", { x: left - 4, y: yTop + ch / 2 + 3, "text-anchor": "end" }, chart, r.cohort);
    r.retention.forEach((share, k) => {
      const light = 97 - Math.round(Math.min(1, share) * 62);
      const cell = svg("rect", {
        class: "cell", x: left + k * cw, y: yTop, width: cw - 1, height: ch - 1,
        fill: `hsl(212, 62%, ${light}%)`, "data-share": share.toFixed(4),
      }, chart);
      svg("title", {}, cell, `${r.cohort} month ${k}: ${(share * 100).toFixed(1)}% of ${r.size}`);
    });
  });
  chart.dataset.rendered = "ok";
}

function drawCohortLtv(matrix) {
  const chart = $("chart-cohort-ltv");
  const rows = (matrix.rows || []).filter((r) => r.avg_ltv !== null);
  if (!rows.length) return emptyChart(chart, "No LTV by cohort yet");
  const yMax = Math.max(1, ...rows.map((r) => r.avg_ltv));
  const plotH = frame(chart, yMax, fmtMoney);
  const barW = (W - PAD.left - PAD.right) / rows.length;
  const step = Math.max(1, Math.ceil(rows.length / 8));
  rows.forEach((r, i) => {
    const h = (Math.max(0, r.avg_ltv) / yMax) * plotH;
    const bar = svg("rect", {
      class: "bar", x: PAD.left + i * barW + 2, y: H - PAD.bottom - h, width: Math.max(1, barW - 4), height: h,
      "data-ltv": r.avg_ltv.toFixed(2),
    }, chart);
    svg("title", {}, bar, `${r.cohort}: average LTV ${r.avg_ltv.toFixed(2)} over ${r.size} customers`);
    if (i % step === 0) {
      svg("text", { x: PAD.left + i * barW + barW / 2, y: H - PAD.bottom + 14, "text-anchor": "middle" }, chart, r.cohort);
    }
  });
  chart.dataset.rendered = "ok";
}

// --- tables -----------------------------------------------------------------------------------

function drawRuns(runs) {
  const body = $("runs").tBodies[0];
  clear(body);
  for (const run of runs) {
    const tr = el("tr", { "data-run-id": run.id }, body);
    el("td", {}, tr, "#" + run.id);
    el("td", {}, tr, run.trigger);
    el("td", { class: "status-" + run.status }, tr, run.status);
    el("td", {}, tr, fmtTime(run.started_at));
    el("td", {}, tr, fmtSeconds(run.duration_seconds));
    el("td", { class: "error" }, tr, run.error || "");
  }
  if (!runs.length) el("td", { colspan: 6, class: "muted" }, el("tr", {}, body), "No runs yet");
}

function drawStreams(streams) {
  const body = $("streams").tBodies[0];
  clear(body);
  for (const s of streams) {
    const tr = el("tr", {}, body);
    el("td", {}, tr, s.connector);
    el("td", {}, tr, s.stream);
    const lag = el("td", { title: "measured from " + s.lag_basis }, tr, fmtSeconds(s.lag_seconds));
    if (s.lag_seconds > LAG_WARN_SECONDS) lag.className = "lag-high";
    const cursor = s.cursor || "—";
    el("td", { class: "muted cursor", title: cursor }, tr, cursor.length > 48 ? cursor.slice(0, 47) + "…" : cursor);
    el("td", {}, tr, fmtTime(s.updated_at));
  }
  if (!streams.length) el("td", { colspan: 5, class: "muted" }, el("tr", {}, body), "No cursors yet");
}

function drawDaemon(daemon) {
  const parts = [daemon.scheduler_running ? "scheduler running" : "scheduler stopped"];
  if (daemon.cycle_running) parts.push(`cycle #${daemon.current_run_id} (${daemon.current_trigger}) in progress`);
  const next = (daemon.jobs || []).filter((j) => j.next_run_at).map((j) => j.next_run_at).sort()[0];
  if (next) parts.push("next " + fmtTime(next));
  $("daemon-state").textContent = parts.join(" · ");
}

// --- actions ----------------------------------------------------------------------------------

async function refresh() {
  const [status, runs, hist, tags, cohorts] = await Promise.all([
    api("/api/status"), api("/api/runs?limit=15"), api("/api/charts/ltv-distribution?bins=20"),
    api("/api/charts/tag-counts"), api("/api/charts/cohorts"),
  ]);
  drawDaemon(status.daemon);
  drawStreams(status.streams);
  drawRuns(runs);
  drawHistogram(hist);
  drawTagCounts(tags);
  drawRetention(cohorts);
  drawCohortLtv(cohorts);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function syncNow() {
  const button = $("sync-now");
  const line = $("sync-status");
  button.disabled = true;
  line.dataset.state = "starting";
  line.textContent = "Starting a cycle…";
  try {
    const started = await api("/api/sync", { method: "POST" });
    line.dataset.state = "running";
    line.dataset.runId = started.run_id;
    line.textContent = `Run #${started.run_id} ${started.joined ? "(joined the cycle already running) " : ""}in progress…`;
    let run;
    for (;;) {
      await sleep(POLL_MS);
      run = await api(`/api/runs/${started.run_id}`);
      if (run.finished_at) break;
    }
    line.dataset.state = "finished";
    line.textContent = `Run #${run.id} finished: ${run.status} in ${fmtSeconds(run.duration_seconds)}` +
      (run.error ? ` — ${run.error}` : "");
    await refresh();
  } catch (err) {
    line.dataset.state = "error";
    line.textContent = "Sync failed to start: " + err.message;
  } finally {
    button.disabled = false;
  }
}

async function lookupCustomer(event) {
  event.preventDefault();
  const out = $("customer-result");
  const email = $("customer-email").value.trim();
  try {
    const customer = await api("/api/customers/" + encodeURIComponent(email));
    out.textContent = JSON.stringify(customer, null, 2);
  } catch (err) {
    out.textContent = err.message.startsWith("404") ? "No customer with that email." : err.message;
  }
}

function showTokenForm(message) {
  $("token-form").hidden = false;
  $("content").hidden = true;
  $("sync-now").disabled = true;
  $("token-message").textContent = message || "";
}

async function start() {
  $("token-form").hidden = true;
  $("content").hidden = false;
  try {
    await refresh();
    $("sync-now").disabled = false;
  } catch (err) {
    if (!(err instanceof ApiError && err.message === "unauthorized")) {
      $("daemon-state").textContent = "Could not load status: " + err.message;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  token = readToken();
  $("sync-now").addEventListener("click", syncNow);
  $("customer-form").addEventListener("submit", lookupCustomer);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  if (token) start(); else showTokenForm("");
  setInterval(() => { if (token && !$("content").hidden) refresh().catch(() => {}); }, REFRESH_MS);
});
