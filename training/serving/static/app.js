// The forecast page: pick or search a series, see its history, forecast with intervals,
// chosen model, backtest metrics and the portfolio totals. Plain DOM + inline SVG, no
// third-party code (the page must work on a closed network).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE = 50;
const HISTORY_POINTS = 168;
const METRIC_ORDER = ["mae", "rmse", "smape", "mase", "bias"];

const state = {
  key: sessionStorage.getItem("mmf-api-key") || "",
  prefix: "",
  cursor: null,
  selected: null,
  searchSeq: 0,
  selectSeq: 0,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path) {
  const headers = state.key ? { "X-API-Key": state.key } : {};
  const response = await fetch(path, { headers });
  let body = {};
  try {
    body = await response.json();
  } catch (e) {
    body = {};
  }
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new ApiError(401, body.detail || "an API key is needed");
  }
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : response.statusText;
    throw new ApiError(response.status, detail);
  }
  return body;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits + 1)).toLocaleString("en", { maximumFractionDigits: digits });
}

function utcLabel(ms, withTime = true) {
  const d = new Date(ms).toISOString();
  return withTime ? `${d.slice(5, 10)} ${d.slice(11, 16)}` : d.slice(0, 10);
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

// -- champion and portfolio ------------------------------------------------------------
async function loadChampion() {
  try {
    const c = await api("/models/champion");
    const promoted = c.promoted_at ? `, promoted ${c.promoted_at.replace("T", " ").replace("+00:00", " UTC")}` : "";
    $("champion").textContent =
      `champion ${c.name} v${c.version} · trained on silver v${c.silver_version ?? "?"}${promoted}`;
  } catch (e) {
    $("champion").textContent = `no champion: ${e.message}`;
  }
}

async function loadPortfolio() {
  const body = $("portfolio-table").tBodies[0];
  const regions = $("region-table").tBodies[0];
  body.replaceChildren();
  regions.replaceChildren();
  try {
    const p = await api("/portfolio");
    const totals = p.rows.filter((r) => r.level === "total");
    let sum = 0;
    let series = 0;
    for (const r of totals) {
      sum += r.yhat || 0;
      series = Math.max(series, r.n_series || 0);
      const tr = el("tr");
      tr.append(el("td", {}, r.day), el("td", {}, fmt(r.yhat)), el("td", {}, r.n_series ?? "–"));
      body.append(tr);
    }
    $("portfolio-summary").textContent =
      `model v${p.model_version}: ${fmt(sum)} over ${totals.length} day(s), ${series} series`;
    const byRegion = new Map();
    for (const r of p.rows.filter((row) => row.level === "region")) {
      byRegion.set(r.key, (byRegion.get(r.key) || 0) + (r.yhat || 0));
    }
    for (const [key, total] of [...byRegion.entries()].sort()) {
      const tr = el("tr");
      tr.append(el("td", {}, key), el("td", {}, fmt(total)));
      regions.append(tr);
    }
  } catch (e) {
    $("portfolio-summary").textContent = `no portfolio: ${e.message}`;
  }
}

// -- series list -----------------------------------------------------------------------
async function loadSeries(reset) {
  const seq = ++state.searchSeq;
  if (reset) state.cursor = null;
  const params = new URLSearchParams({ prefix: state.prefix, limit: String(PAGE) });
  if (state.cursor) params.set("cursor", state.cursor);
  let page;
  try {
    page = await api(`/series?${params}`);
  } catch (e) {
    if (seq === state.searchSeq) $("series-count").textContent = e.message;
    return null;
  }
  if (seq !== state.searchSeq) return null; // a newer search is under way
  const list = $("series-list");
  if (reset) list.replaceChildren();
  for (const item of page.items) {
    const button = el("button", { type: "button", "data-id": item.series_id });
    button.append(el("span", {}, item.series_id), el("span", { class: `badge ${item.status || ""}` }, item.model || item.status || "?"));
    if (item.series_id === state.selected) button.classList.add("selected");
    button.addEventListener("click", () => selectSeries(item.series_id));
    const li = el("li");
    li.append(button);
    list.append(li);
  }
  state.cursor = page.next_cursor;
  $("more").hidden = !page.next_cursor;
  $("series-count").textContent = `${page.total} series${state.prefix ? ` starting with “${state.prefix}”` : ""}`;
  return page;
}

// -- one series ------------------------------------------------------------------------
async function selectSeries(id) {
  const seq = ++state.selectSeq;
  state.selected = id;
  history.replaceState(null, "", `#series=${encodeURIComponent(id)}`);
  for (const b of document.querySelectorAll("#series-list button")) {
    b.classList.toggle("selected", b.dataset.id === id);
  }
  $("series-title").textContent = id;
  showMessage("");
  const enc = encodeURIComponent(id);
  const [fc, hist, bt] = await Promise.allSettled([
    api(`/series/${enc}/forecast`),
    api(`/series/${enc}/history?points=${HISTORY_POINTS}`),
    api(`/series/${enc}/backtest`),
  ]);
  if (seq !== state.selectSeq) return; // another series was picked meanwhile
  const forecast = fc.status === "fulfilled" ? fc.value : null;
  const historyRows = hist.status === "fulfilled" ? hist.value : { points: [] };
  const backtest = bt.status === "fulfilled" ? bt.value : null;
  const problems = [fc, hist, bt].filter((r) => r.status === "rejected").map((r) => r.reason.message);
  showMessage(problems.join(" · "));

  $("model-info").hidden = false;
  $("model-name").textContent = (forecast && forecast.model) || (backtest && backtest.chosen_model) || "–";
  $("model-version").textContent = forecast ? forecast.model_version : "–";
  $("series-status").textContent = (backtest && backtest.status) || "–";
  $("cutoff").textContent = forecast && forecast.cutoff ? utcLabel(Date.parse(forecast.cutoff)) : "–";
  drawChart(historyRows, forecast);
  renderBacktest(backtest);
}

function renderBacktest(bt) {
  const body = $("metrics").tBodies[0];
  const cands = $("candidates").tBodies[0];
  body.replaceChildren();
  cands.replaceChildren();
  if (!bt) return;
  const keys = Object.keys(bt.chosen).sort((a, b) => {
    const ia = METRIC_ORDER.indexOf(a);
    const ib = METRIC_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  for (const key of keys) {
    const tr = el("tr", { "data-metric": key });
    tr.append(el("td", {}, key), el("td", {}, fmt(bt.chosen[key])));
    body.append(tr);
  }
  const metric = bt.metric || "mase";
  $("cand-metric").textContent = metric;
  const byModel = new Map();
  for (const row of bt.rows) {
    const entry = byModel.get(row.model) || { n: 0, sum: 0, count: 0 };
    entry.n += 1;
    const v = row.metrics[metric];
    if (v !== null && v !== undefined) {
      entry.sum += v;
      entry.count += 1;
    }
    byModel.set(row.model, entry);
  }
  for (const [model, e] of [...byModel.entries()].sort((a, b) => a[1].sum / a[1].count - b[1].sum / b[1].count)) {
    const tr = el("tr", { class: model === bt.chosen_model ? "chosen" : "" });
    tr.append(el("td", {}, model), el("td", {}, e.n), el("td", {}, e.count ? fmt(e.sum / e.count) : "–"));
    cands.append(tr);
  }
}

// -- the chart -------------------------------------------------------------------------
function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

const HOUR = 3600e3;
const TIME_STEPS = [1, 2, 3, 6, 12, 24, 48, 168, 336, 720].map((h) => h * HOUR);

function timeTicks(t0, t1, n) {
  // UTC-aligned steps (hours, days, weeks) giving at most n ticks inside [t0, t1]
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= n) || TIME_STEPS[TIME_STEPS.length - 1];
  const ticks = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) ticks.push(t);
  return { ticks, daily: step >= 24 * HOUR };
}

function bandOpacity(i) {
  return String(0.12 + 0.12 * i); // i-th level from the widest
}

function drawChart(hist, forecast) {
  const fig = $("chart");
  fig.replaceChildren();
  const W = 860;
  const H = 340;
  const m = { l: 56, r: 16, t: 24, b: 34 };
  const hp = (hist.points || []).filter((p) => p.y !== null).map((p) => ({ t: Date.parse(p.ts), y: p.y }));
  const fp = forecast ? forecast.points.map((p) => ({ t: Date.parse(p.ts), y: p.yhat, lo: p.lower, up: p.upper })) : [];
  const levels = forecast ? [...forecast.levels].sort((a, b) => b - a) : [];
  const root = svg("svg", {
    class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "data-history-points": String(hp.length), "data-forecast-points": String(fp.length),
  });
  fig.append(root);
  if (!hp.length && !fp.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no data"));
    return;
  }
  const ts = [...hp.map((p) => p.t), ...fp.map((p) => p.t)];
  const ys = [...hp.map((p) => p.y)];
  for (const p of fp) {
    if (p.y !== null) ys.push(p.y);
    for (const lv of levels) {
      if (p.lo[lv] !== null && p.lo[lv] !== undefined) ys.push(p.lo[lv]);
      if (p.up[lv] !== null && p.up[lv] !== undefined) ys.push(p.up[lv]);
    }
  }
  const t0 = Math.min(...ts);
  const t1 = Math.max(...ts);
  let y0 = Math.min(...ys);
  let y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const x = (t) => m.l + ((t - t0) / (t1 - t0 || 1)) * (W - m.l - m.r);
  const y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);

  const axis = svg("g", { class: "axis" });
  for (const v of niceTicks(y0, y1, 5)) {
    axis.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    axis.append(svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 2)));
  }
  const { ticks, daily } = timeTicks(t0, t1, 7);
  for (const t of ticks) {
    axis.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
    axis.append(svg("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, utcLabel(t, !daily)));
  }
  axis.append(svg("text", { x: W - m.r, y: H - 4, "text-anchor": "end" }, "UTC"));
  root.append(axis);

  levels.forEach((lv, i) => {
    const pts = fp.filter((p) => p.lo[lv] !== null && p.up[lv] !== null && p.lo[lv] !== undefined);
    if (pts.length < 2) return;
    const upper = pts.map((p) => `${x(p.t)},${y(p.up[lv])}`);
    const lower = pts.slice().reverse().map((p) => `${x(p.t)},${y(p.lo[lv])}`);
    root.append(svg("polygon", {
      class: `band band-${lv}`, points: [...upper, ...lower].join(" "),
      "fill-opacity": bandOpacity(i), "data-level": String(lv),
    }));
  });
  const line = (points, cls) => {
    const d = points.filter((p) => p.y !== null).map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`);
    if (d.length) root.append(svg("path", { class: cls, d: d.join("") }));
  };
  line(hp, "history");
  if (forecast && forecast.cutoff) {
    const tc = Date.parse(forecast.cutoff);
    if (tc >= t0 && tc <= t1) root.append(svg("line", { class: "cutoff", x1: x(tc), x2: x(tc), y1: m.t, y2: H - m.b }));
  }
  line(fp, "forecast");
  const dots = svg("g", { class: "fc-points" });
  for (const p of fp) {
    if (p.y === null) continue;
    const dot = svg("circle", { class: "fc-point", cx: x(p.t).toFixed(1), cy: y(p.y).toFixed(1), r: 2.2 });
    const band = levels.length ? ` [${fmt(p.lo[levels[0]])}, ${fmt(p.up[levels[0]])}] at ${levels[0]}%` : "";
    dot.append(svg("title", {}, `${utcLabel(p.t)}  ${fmt(p.y)}${band}`));
    dots.append(dot);
  }
  root.append(dots);

  const legend = svg("g", { class: "legend", transform: `translate(${m.l + 8},${m.t - 10})` });
  const items = [["history", "actual"], ["forecast", "forecast"]];
  let lx = 0;
  for (const [cls, label] of items) {
    legend.append(svg("line", { class: cls, x1: lx, x2: lx + 18, y1: 0, y2: 0 }));
    legend.append(svg("text", { x: lx + 22, y: 4 }, label));
    lx += 90;
  }
  for (const lv of levels.slice().reverse()) {
    // the narrower band is drawn over the wider ones: show what the eye sees
    let covered = 0;
    for (let j = 0; j <= levels.indexOf(lv); j++) covered += Number(bandOpacity(j));
    const opacity = String(Math.min(0.8, covered));
    legend.append(svg("rect", { class: "band", x: lx, y: -5, width: 18, height: 10, "fill-opacity": opacity }));
    legend.append(svg("text", { x: lx + 22, y: 4 }, `${lv}% interval`));
    lx += 100;
  }
  root.append(legend);
}

// -- wiring ----------------------------------------------------------------------------
function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

async function start() {
  loadChampion();
  loadPortfolio();
  const wanted = decodeURIComponent((location.hash.match(/^#series=(.+)$/) || [])[1] || "");
  const page = await loadSeries(true);
  if (wanted) selectSeries(wanted);
  else if (page && page.items.length) selectSeries(page.items[0].series_id);
}

document.addEventListener("DOMContentLoaded", () => {
  const search = $("search");
  const onSearch = debounce(() => {
    const value = search.value.trim();
    if (!/^[A-Za-z0-9._:-]{0,128}$/.test(value)) {
      $("series-count").textContent = "ids hold only A-Z a-z 0-9 . _ : -";
      return;
    }
    state.prefix = value;
    loadSeries(true);
  }, 200);
  search.addEventListener("input", onSearch);
  search.addEventListener("keydown", async (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    state.prefix = search.value.trim();
    const page = await loadSeries(true);
    if (!page || !page.items.length) return;
    const exact = page.items.find((i) => i.series_id === state.prefix);
    selectSeries((exact || page.items[0]).series_id);
  });
  $("more").addEventListener("click", () => loadSeries(false));
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value;
    sessionStorage.setItem("mmf-api-key", state.key);
    $("auth").hidden = true;
    start();
  });
  start();
});
