// Carnival dashboard: polls /api/panel/<name> for every chart of /api/layout and draws it with plotly.js.
// window.carnivalDashboard.charts[id] = {status, points, message} is the page's own account of what it
// drew (the browser test reads it).
"use strict";

const PALETTE = ["#5fb3f9", "#f2c14e", "#3fb950", "#f778ba", "#a371f7", "#ff7b54", "#56d4dd", "#c9d1d9",
                 "#e3b341", "#7ee787", "#d2a8ff", "#ffa198"];
const SOURCE_COLORS = { GRID: "#3fb950", BATTERY: "#5fb3f9", GENERATOR: "#f2c14e", NONE: "#f85149" };
const THRESHOLD_COLORS = ["#3fb950", "#f2c14e", "#f85149"];
const FONT = { family: "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, sans-serif", color: "#d6dde8", size: 11 };
const AXIS = { gridcolor: "#232b3b", zerolinecolor: "#2d364a", linecolor: "#2d364a", automargin: true };
const CONFIG = { displayModeBar: false, responsive: true };

const state = { charts: {}, layout: null, refreshes: 0 };
window.carnivalDashboard = state;

function baseLayout(extra) {
  return Object.assign({
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: FONT,
    margin: { l: 48, r: 16, t: 8, b: 32 }, hovermode: "x unified",
    legend: { orientation: "h", y: -0.18, x: 0, font: { size: 10 }, bgcolor: "rgba(0,0,0,0)" },
    xaxis: Object.assign({ type: "date", title: { text: "" } }, AXIS),
    yaxis: Object.assign({ rangemode: "tozero" }, AXIS),
  }, extra || {});
}

function column(result, name) {
  if (!result.rows.length) return [];  // an empty result may come without column names
  const i = result.columns.indexOf(name);
  if (i < 0) throw new Error(`panel ${result.panel}: no column ${name}`);
  return result.rows.map((r) => r[i]);
}

function groups(result, series) {
  // {series value: [row index, ...]} in first-seen order; one group "" without a series column.
  const out = new Map();
  const keys = series ? column(result, series) : result.rows.map(() => "");
  keys.forEach((k, i) => { const key = k === null ? "—" : String(k); if (!out.has(key)) out.set(key, []); out.get(key).push(i); });
  return out;
}

function traces(result, spec) {
  const xs = column(result, spec.x);
  const out = [];
  let color = 0;
  for (const [name, idx] of groups(result, spec.series)) {
    for (const y of spec.y) {
      const ys = column(result, y);
      const label = spec.series ? name : y.replaceAll("_", " ");
      const t = { name: label, x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]),
                  marker: { color: PALETTE[color % PALETTE.length] } };
      color += 1;
      if (spec.kind === "bar") Object.assign(t, { type: "bar" });
      else if (spec.kind === "area") Object.assign(t, { type: "scatter", mode: "lines", stackgroup: "one", line: { width: 1.2 } });
      else if (spec.kind === "scatter") Object.assign(t, { type: "scatter", mode: "markers", marker: { size: 8, color: t.marker.color } });
      else Object.assign(t, { type: "scatter", mode: "lines+markers", marker: { size: 4, color: t.marker.color }, line: { width: 2 } });
      out.push(t);
    }
  }
  for (const y of spec.y2 || []) {
    const ys = column(result, y);
    out.push({ name: y.replaceAll("_", " "), x: xs, y: ys, type: "scatter", mode: "lines+markers", yaxis: "y2",
               marker: { size: 4, color: PALETTE[color % PALETTE.length] }, line: { width: 2, dash: "dot" } });
    color += 1;
  }
  return out;
}

function timeRange(result) {
  return result.window ? [result.window.start, result.window.end] : undefined;
}

function drawGeneric(el, result, spec) {
  const data = traces(result, spec);
  const extra = {
    barmode: "stack", bargap: 0.15,
    xaxis: Object.assign({}, AXIS, spec.x_title ? { type: "category", title: { text: spec.x_title } }
                                               : { type: "date", range: timeRange(result) }),
    yaxis: Object.assign({ title: { text: spec.y_title }, rangemode: "tozero" }, AXIS, spec.log_y ? { type: "log" } : {}),
  };
  if (spec.y2 && spec.y2.length) {
    extra.yaxis2 = Object.assign({}, AXIS, { overlaying: "y", side: "right", title: { text: spec.y2_title }, rangemode: "tozero", showgrid: false,
                                             tickmode: "auto" });
    extra.margin = { l: 48, r: 48, t: 8, b: 32 };
  }
  if (spec.x_title) extra.hovermode = "closest";
  Plotly.react(el, data, baseLayout(extra), CONFIG);
  return data.reduce((n, t) => n + t.x.length, 0);
}

function drawFailover(el, sources, transfers, thresholds) {
  // Top: one band per site, coloured by what carries the load; bottom: transfer times on a log scale.
  const sites = column(sources, "site_id"), times = column(sources, "time"), what = column(sources, "source");
  const end = sources.window.end;
  const bands = {};
  for (let i = 0; i < times.length; i++) {
    const until = i + 1 < times.length && sites[i + 1] === sites[i] ? times[i + 1] : end;
    const b = (bands[what[i]] = bands[what[i]] || { base: [], x: [], y: [], text: [] });
    const ms = Date.parse(until.replace(" ", "T") + "Z") - Date.parse(times[i].replace(" ", "T") + "Z");
    b.base.push(times[i]); b.x.push(Math.max(ms, 1)); b.y.push(sites[i]);
    b.text.push(`${sites[i]}: ${what[i]} from ${times[i].slice(0, 19)} for ${(ms / 60000).toFixed(1)} min`);
  }
  const data = Object.entries(bands).map(([src, b]) => ({
    type: "bar", orientation: "h", name: src, base: b.base, x: b.x, y: b.y, text: b.text,
    hoverinfo: "text", textposition: "none", marker: { color: SOURCE_COLORS[src] || "#8592a6" }, width: 0.6,
  }));
  const tSite = column(transfers, "site_id"), tTime = column(transfers, "time"), tMs = column(transfers, "transfer_ms");
  const tKind = column(transfers, "kind"), tWhat = column(transfers, "transfer");
  const perSite = new Map();
  tSite.forEach((s, i) => { if (!perSite.has(s)) perSite.set(s, []); perSite.get(s).push(i); });
  let c = 0;
  for (const [site, idx] of perSite) {
    data.push({ type: "scatter", mode: "markers", name: `${site} transfer`, xaxis: "x", yaxis: "y2",
                x: idx.map((i) => tTime[i]), y: idx.map((i) => tMs[i]),
                text: idx.map((i) => `${site} ${tKind[i]} ${tWhat[i]}: ${tMs[i]} ms`), hoverinfo: "text",
                marker: { size: 9, symbol: "diamond", color: PALETTE[c++ % PALETTE.length], line: { width: 1, color: "#0d1117" } } });
  }
  const shapes = [], annotations = [];
  Object.entries(thresholds).forEach(([label, ms], i) => {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y2", y0: ms, y1: ms,
                  line: { color: THRESHOLD_COLORS[i % 3], width: 1, dash: "dash" } });
    const left = i % 2 === 0;  // alternate sides: 4 ms and 20 ms are close on a log scale
    annotations.push({ xref: "paper", x: left ? 0 : 1, xanchor: left ? "left" : "right", yref: "y2", y: Math.log10(ms), yanchor: "bottom",
                       text: label, showarrow: false, font: { size: 10, color: THRESHOLD_COLORS[i % 3] } });
  });
  const range = [sources.window.start, end];
  Plotly.react(el, data, baseLayout({
    barmode: "overlay", hovermode: "closest", shapes, annotations,
    margin: { l: 70, r: 16, t: 8, b: 32 },
    xaxis: Object.assign({}, AXIS, { type: "date", range, anchor: "y2" }),
    yaxis: Object.assign({}, AXIS, { domain: [0.5, 1], type: "category", autorange: "reversed", title: { text: "" } }),
    yaxis2: Object.assign({}, AXIS, { domain: [0, 0.42], type: "log", title: { text: "transfer (ms)" },
                                      range: [Math.log10(0.5), Math.log10(60000)] }),
  }), CONFIG);
  return times.length + tTime.length;
}

function card(chart) {
  const el = document.createElement("section");
  el.className = "card" + (chart.wide ? " wide" : "");
  el.id = `card-${chart.id}`;
  el.innerHTML = `<h2></h2><p></p><div class="chart"></div><div class="overlay">loading…</div>`;
  el.querySelector("h2").textContent = chart.title;
  el.querySelector("p").textContent = chart.description;
  document.getElementById("grid").appendChild(el);
  return el;
}

function showOverlay(el, text, isError) {
  const o = el.querySelector(".overlay");
  o.textContent = text || "";
  o.className = "overlay" + (isError ? " err" : "");
  o.style.display = text ? "flex" : "none";
}

async function fetchPanel(name) {
  const resp = await fetch(`/api/panel/${name}`, { cache: "no-store" });
  if (!resp.ok) return { panel: name, status: "error", message: `HTTP ${resp.status}`, columns: [], rows: [] };
  return resp.json();
}

async function refreshChart(chart, el) {
  const results = await Promise.all(chart.panels.map(fetchPanel));
  const bad = results.find((r) => r.status === "error");
  const plot = el.querySelector(".chart");
  let points = 0, status = "ok", message = "";
  if (bad) {
    status = "error"; message = bad.message || "query failed";
  } else if (results.every((r) => r.status === "no_data")) {
    status = "no_data";
    message = results.map((r) => r.message).find(Boolean) ? `No data: ${results.find((r) => r.message).message}` : "No data in this window yet";
  }
  if (status === "ok") {
    points = chart.panels[0] === "power_sources"
      ? drawFailover(plot, results[0], results[1], state.layout.thresholds_ms)
      : drawGeneric(plot, results[0], chart.charts[0]);
  } else {
    Plotly.purge(plot);
  }
  showOverlay(el, message, status === "error");
  state.charts[chart.id] = { status, points, message, window: results[0].window };
  return results[0].window;
}

function updateHeader(windows) {
  const ev = windows.find((w) => w && w.clock === "event");
  const statuses = Object.values(state.charts).map((c) => c.status);
  const errors = statuses.filter((s) => s === "error").length;
  const pill = document.getElementById("status");
  pill.textContent = errors ? `${errors} panel${errors > 1 ? "s" : ""} failing` : "live";
  pill.className = "pill " + (errors ? "err" : "ok");
  if (ev) {
    const hours = (Date.parse(ev.end.replace(" ", "T") + "Z") - Date.parse(ev.start.replace(" ", "T") + "Z")) / 3.6e6;
    document.getElementById("window").textContent =
      `data through ${ev.end.slice(0, 16)} UTC · ${hours.toFixed(hours < 1 ? 2 : 0)} h window · ` +
      `${ev.interval_s / 60} min buckets · refresh ${state.layout.refresh_s} s · updated ${new Date().toISOString().slice(11, 19)} UTC`;
  }
}

async function refreshAll(cards) {
  const windows = await Promise.all(state.layout.charts.map((c) => refreshChart(c, cards[c.id]).catch((e) => {
    state.charts[c.id] = { status: "error", points: 0, message: String(e) };
    showOverlay(cards[c.id], String(e), true);
    return null;
  })));
  state.refreshes += 1;
  updateHeader(windows);
}

async function main() {
  state.layout = await (await fetch("/api/layout")).json();
  const cards = {};
  for (const chart of state.layout.charts) cards[chart.id] = card(chart);
  await refreshAll(cards);
  setInterval(() => refreshAll(cards), state.layout.refresh_s * 1000);
}

main();
