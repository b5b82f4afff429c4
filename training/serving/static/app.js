// The forecast page: the champion run's series in natural id order, sorted by error and
// filtered by status and model; a series' history (7 days to all), forecast with intervals,
// chosen model and backtest metrics; its candidates' stored backtest forecasts overlaid on
// the actuals of each window; the portfolio chart; CSV export of each. Plain DOM +
// inline SVG, no third-party code (the page must work on a closed network).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE = 50;
const MAX_PAGE = 1000; // the API's largest /series page (CSV export pages through them)
const HISTORY_POINTS = 5000; // the API's most: the history length is cut here, not refetched
const DAY = 24 * 3600e3;
const PALETTE = ["#2f6fb0", "#c44e52", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#8c613c", "#dd8452"];
const METRIC_ORDER = ["mae", "rmse", "smape", "mase", "bias"];

const state = {
  key: sessionStorage.getItem("mmf-api-key") || "",
  prefix: "",
  cursor: null,
  selected: null,
  searchSeq: 0,
  selectSeq: 0,
  shown: null, // { id, history, forecast }: what the chart draws (the CSV exports it)
  overlay: null, // { id, body, hidden }: the stored backtest forecasts drawn, models hidden
  portfolio: null,
  hierarchy: null, // the /hierarchy body the hierarchy chart draws
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
    state.portfolio = p;
    $("export-portfolio").disabled = false;
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
      `model v${p.model_version}: ${fmt(sum)} over ${totals.length} day(s), ${series} series` +
      (p.levels && p.levels.length ? `, ${p.levels.join("% and ")}% intervals` : "");
    const byRegion = new Map();
    for (const r of p.rows.filter((row) => row.level === "region")) {
      byRegion.set(r.key, (byRegion.get(r.key) || 0) + (r.yhat || 0));
    }
    for (const [key, total] of [...byRegion.entries()].sort()) {
      const tr = el("tr");
      tr.append(el("td", {}, key), el("td", {}, fmt(total)));
      regions.append(tr);
    }
    const select = $("portfolio-level");
    const wanted = select.value || "total";
    select.replaceChildren(el("option", { value: "total" }, "total"));
    for (const level of ["region", "site"]) {
      const keys = new Set(p.rows.filter((r) => r.level === level).map((r) => r.key));
      // a level whose attribute is absent holds only "unknown": nothing to split by
      if (keys.size && !(keys.size === 1 && keys.has("unknown"))) select.append(el("option", { value: level }, level));
    }
    select.value = [...select.options].some((o) => o.value === wanted) ? wanted : "total";
    drawPortfolio();
    // coherent totals: gold/hierarchy serves every level (else the section stays hidden)
    $("hierarchy").hidden = !p.method;
    if (p.method) loadHierarchy($("hierarchy-level").value || "total");
  } catch (e) {
    state.portfolio = null;
    $("portfolio-summary").textContent = `no portfolio: ${e.message}`;
    $("hierarchy").hidden = true;
  }
}

function drawPortfolio() {
  const fig = $("portfolio-chart");
  const p = state.portfolio;
  if (!p) return;
  const level = $("portfolio-level").value || "total";
  const byKey = new Map();
  for (const r of p.rows.filter((row) => row.level === level)) {
    if (!byKey.has(r.key)) byKey.set(r.key, []);
    byKey.get(r.key).push({ t: Date.parse(`${r.day}T00:00:00Z`), y: r.yhat, lo: r.lower || {}, up: r.upper || {} });
  }
  const keys = [...byKey.keys()].sort(naturalCompare);
  const lines = keys.map((key, i) => ({
    name: level === "total" ? "total" : key,
    cls: level === "total" ? "total" : "part",
    color: level === "total" ? null : PALETTE[i % PALETTE.length],
    points: byKey.get(key),
  }));
  const levels = [...(p.levels || [])].sort((a, b) => b - a);
  const root = chartFrame(fig, lines.flatMap((l) => l.points), levels, { daily: true, H: 260 });
  root.setAttribute("data-level", level);
  root.setAttribute("data-lines", String(lines.length));
  if (!root.frame) return;
  const { x, y } = root.frame;
  for (const line of lines) {
    levels.forEach((lv, i) => {
      const band = drawBand(root, line.points, lv, x, y, {
        class: "band pf-band", "fill-opacity": bandOpacity(i), "data-level": String(lv), "data-key": line.name,
      });
      if (band && line.color) band.style.fill = line.color; // CSSOM: allowed by the page's CSP
    });
  }
  for (const line of lines) {
    const path = drawLine(root, line.points, x, y, line.cls);
    if (path) {
      path.setAttribute("data-key", line.name);
      if (line.color) path.style.stroke = line.color;
    }
    for (const pt of line.points.filter((q) => q.y !== null)) {
      const dot = svg("circle", { class: "pf-point", cx: x(pt.t).toFixed(1), cy: y(pt.y).toFixed(1), r: 2.5 });
      dot.style.fill = line.color || "var(--fc)";
      dot.append(svg("title", {}, `${line.name} ${utcLabel(pt.t, false)}  ${fmt(pt.y)}`));
      root.append(dot);
    }
  }
  const items = lines.slice(0, 8).map((l) => ({ cls: l.cls, label: l.name, color: l.color }));
  if (lines.length > 8) items.push({ label: `… ${lines.length - 8} more` });
  legend(root, items, levels);
}

// -- hierarchy: coherent forecasts of any level and node --------------------------------
async function loadHierarchy(level, node) {
  const params = new URLSearchParams({ level: level || "total" });
  if (node) params.set("node", node);
  try {
    const h = await api(`/hierarchy?${params}`);
    state.hierarchy = h;
    const levels = $("hierarchy-level");
    levels.replaceChildren(...h.hierarchy_levels.map((lv) => el("option", { value: lv }, lv)));
    levels.value = h.level;
    const nodes = $("hierarchy-node");
    const names = h.level === "series" ? h.nodes : [...h.nodes].sort(naturalCompare);
    nodes.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    nodes.value = node && names.includes(node) ? node : names[0] || "";
    drawHierarchy();
  } catch (e) {
    state.hierarchy = null;
    $("hierarchy-summary").textContent = `no hierarchy: ${e.message}`;
    $("hierarchy-chart").replaceChildren();
  }
}

function onHierarchyLevel() {
  const level = $("hierarchy-level").value;
  // the series level shows the series picked in the list (or the first node's first series)
  loadHierarchy(level, level === "series" ? state.selected : null);
}

function drawHierarchy() {
  const h = state.hierarchy;
  if (!h) return;
  const node = $("hierarchy-node").value;
  const rows = h.rows.filter((r) => r.node === node);
  const points = rows.map((r) => ({ t: Date.parse(r.ts), y: r.yhat, lo: r.lower || {}, up: r.upper || {} }));
  const base = rows.map((r) => ({ t: Date.parse(r.ts), y: r.yhat_base }));
  const levels = [...(h.levels || [])].sort((a, b) => b - a);
  const root = chartFrame($("hierarchy-chart"), points, levels, { H: 260 });
  root.setAttribute("data-level", h.level);
  root.setAttribute("data-node", node);
  root.setAttribute("data-points", String(points.length));
  const series = rows.length ? rows[0].n_series : 0;
  $("hierarchy-summary").textContent =
    `${h.level} ${node}: ${series ?? "?"} series · ${h.method} · model v${h.model_version}` +
    (levels.length ? ` · ${levels.join("% and ")}% intervals` : "");
  if (!root.frame) return;
  const { x, y } = root.frame;
  levels.forEach((lv, i) => {
    drawBand(root, points, lv, x, y, { class: "band hier-band", "fill-opacity": bandOpacity(i), "data-level": String(lv) });
  });
  const own = drawLine(root, base, x, y, "part");
  if (own) own.setAttribute("data-key", "base");
  const line = drawLine(root, points, x, y, "total");
  if (line) line.setAttribute("data-key", "coherent");
  legend(root, [{ cls: "total", label: "coherent" }, { cls: "part", label: "own model" }], levels);
}

// -- series list -----------------------------------------------------------------------
function naturalCompare(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}

function listParams(limit) {
  const [sort, order] = $("sort").value.split(":");
  const params = new URLSearchParams({ prefix: state.prefix, limit: String(limit), sort, order });
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  if ($("filter-model").value) params.set("model", $("filter-model").value);
  return params;
}

function fillFilter(select, counts) {
  const wanted = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"));
  for (const [value, n] of Object.entries(counts || {})) select.append(el("option", { value }, `${value} (${n})`));
  select.value = Object.prototype.hasOwnProperty.call(counts || {}, wanted) ? wanted : "";
}

async function loadSeries(reset) {
  const seq = ++state.searchSeq;
  if (reset) state.cursor = null;
  const params = listParams(PAGE);
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
  if (page.counts) {
    fillFilter($("filter-status"), page.counts.status);
    fillFilter($("filter-model"), page.counts.model);
  }
  const metric = (page.items.find((i) => i.metric) || {}).metric;
  if (metric) $("error-head").textContent = `error (${metric})`;
  for (const item of page.items) {
    const tr = el("tr", { "data-id": item.series_id, "data-error": item.metric_value ?? "" });
    const button = el("button", { type: "button", "data-id": item.series_id }, item.series_id);
    const idCell = el("td");
    idCell.append(button);
    const statusCell = el("td", { class: "status" });
    statusCell.append(el("span", { class: `badge ${item.status || ""}` }, item.status || "?"));
    tr.append(idCell, el("td", { class: "model" }, item.model || "–"), statusCell, el("td", { class: "error" }, fmt(item.metric_value)));
    if (item.reason) tr.title = item.reason;
    if (item.series_id === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => selectSeries(item.series_id));
    list.append(tr);
  }
  state.cursor = page.next_cursor;
  $("more").hidden = !page.next_cursor;
  const shown = list.rows.length;
  $("series-count").textContent =
    `${shown < page.total ? `${shown} of ` : ""}${page.total} series${state.prefix ? ` starting with “${state.prefix}”` : ""}`;
  return page;
}

async function exportTable() {
  // every series that matches the filters, in the order shown
  const rows = [];
  let cursor = null;
  do {
    const params = listParams(MAX_PAGE);
    if (cursor) params.set("cursor", cursor);
    const page = await api(`/series?${params}`);
    rows.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  const cols = ["series_id", "status", "model", "metric", "metric_value", "reason"];
  download("series.csv", toCsv(cols, rows.map((r) => cols.map((c) => r[c]))));
}

// -- one series ------------------------------------------------------------------------
async function selectSeries(id) {
  const seq = ++state.selectSeq;
  state.selected = id;
  history.replaceState(null, "", `#series=${encodeURIComponent(id)}`);
  for (const tr of $("series-list").rows) tr.classList.toggle("selected", tr.dataset.id === id);
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
  $("live-accuracy").textContent = liveAccuracy(forecast && forecast.accuracy);
  state.shown = { id, history: historyRows, forecast };
  $("export-series").disabled = false;
  redraw();
  renderBacktest(backtest);
  loadOverlay(id, seq);
}

function liveAccuracy(a) {
  if (!a) return "–";
  const cov = Object.entries(a.coverage || {}).map(([lv, c]) => `${lv}%: ${c == null ? "–" : Math.round(100 * c) + "%"}`);
  return `MASE ${fmt(a.mase)} (backtest ${fmt(a.backtest_mase)}${a.drifted ? ", drifted" : ""}) · MAE ${fmt(a.mae)} · ` +
    `coverage ${cov.join(", ")} · ${a.n} steps`;
}

function shownHistory() {
  // the readings within the chosen length, counted back from the last one
  const points = (state.shown && state.shown.history.points) || [];
  const days = $("history-length").value;
  if (days === "all" || !points.length) return points;
  const last = Date.parse(points[points.length - 1].ts);
  return points.filter((p) => Date.parse(p.ts) > last - Number(days) * DAY);
}

function redraw() {
  if (state.shown) drawChart({ points: shownHistory() }, state.shown.forecast);
}

function exportSeries() {
  const { id, forecast } = state.shown;
  const levels = forecast ? [...forecast.levels].sort((a, b) => a - b) : [];
  const cols = ["series_id", "ts", "kind", "y", "yhat", ...levels.flatMap((lv) => [`yhat_lower_${lv}`, `yhat_upper_${lv}`])];
  const rows = shownHistory().map((p) => [id, p.ts, "actual", p.y, null, ...levels.flatMap(() => [null, null])]);
  for (const p of forecast ? forecast.points : []) {
    rows.push([id, p.ts, "forecast", null, p.yhat, ...levels.flatMap((lv) => [p.lower[lv], p.upper[lv]])]);
  }
  download(`${id}.csv`, toCsv(cols, rows));
}

function exportPortfolio() {
  const p = state.portfolio;
  const levels = [...(p.levels || [])].sort((a, b) => a - b);
  const cols = ["model_version", "level", "key", "day", "yhat", "n_series", ...levels.flatMap((lv) => [`yhat_lower_${lv}`, `yhat_upper_${lv}`])];
  const rows = p.rows.map((r) => [p.model_version, r.level, r.key, r.day, r.yhat, r.n_series,
    ...levels.flatMap((lv) => [(r.lower || {})[lv], (r.upper || {})[lv]])]);
  download(`portfolio-v${p.model_version}.csv`, toCsv(cols, rows));
}

// -- CSV -------------------------------------------------------------------------------
function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function toCsv(cols, rows) {
  return [cols, ...rows].map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = el("a", { href: url, download: name, hidden: "" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
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

// -- candidate overlays: the stored backtest forecasts (gold/backtest_forecasts) --------
async function loadOverlay(id, seq) {
  state.overlay = null;
  $("overlay").hidden = true;
  let body = null;
  let why = "";
  try {
    body = await api(`/series/${encodeURIComponent(id)}/backtest_forecasts`);
  } catch (e) {
    why = e.message;
  }
  if (seq !== state.selectSeq) return; // another series was picked meanwhile
  const found = Boolean(body && body.windows.length);
  $("overlay-note").hidden = found;
  $("overlay-note").textContent = found ? "" : `No stored backtest forecasts: ${why || "none for this series"}`;
  if (!found) return;
  const models = [];
  for (const w of body.windows) for (const m of w.models) if (!models.includes(m.model)) models.push(m.model);
  state.overlay = { id, body, models, hidden: new Set() };
  const n = body.windows.length;
  $("overlay-window").replaceChildren(...body.windows.map((w, i) =>
    el("option", { value: String(w.window) }, `${i + 1} of ${n} · cutoff ${w.cutoff ? utcLabel(Date.parse(w.cutoff)) : "?"}`)));
  $("overlay-window").value = String(body.windows[n - 1].window); // the latest window
  const boxes = models.map((model, i) => {
    const box = el("input", { type: "checkbox", value: model, "data-model": model });
    box.checked = true;
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = overlayColor(i);
    const label = el("label", { title: model === body.chosen_model ? "the chosen model" : "a candidate" });
    label.append(box, swatch, model === body.chosen_model ? `${model} (chosen)` : model);
    return label;
  });
  $("overlay-models").replaceChildren(...boxes);
  $("overlay").hidden = false;
  drawOverlay();
}

function overlayColor(i) {
  return PALETTE[i % PALETTE.length];
}

function overlayWindow() {
  const windows = state.overlay.body.windows;
  return windows.find((w) => String(w.window) === $("overlay-window").value) || windows[windows.length - 1];
}

function drawOverlay() {
  const o = state.overlay;
  if (!o) return;
  const w = overlayWindow();
  const t = w.ts.map((ts) => Date.parse(ts));
  const actual = t.map((tt, i) => ({ t: tt, y: w.y[i] }));
  const levels = [...o.body.levels].sort((a, b) => b - a);
  const shown = w.models.filter((m) => !o.hidden.has(m.model));
  const lines = shown.map((m) => ({
    model: m.model,
    color: overlayColor(o.models.indexOf(m.model)),
    chosen: m.model === o.body.chosen_model,
    pts: t.map((tt, i) => ({
      t: tt,
      y: m.yhat[i],
      lo: Object.fromEntries(levels.map((lv) => [lv, (m.lower[lv] || [])[i] ?? null])),
      up: Object.fromEntries(levels.map((lv) => [lv, (m.upper[lv] || [])[i] ?? null])),
    })),
  }));
  const chosen = lines.find((l) => l.chosen);
  const bandLevels = chosen ? levels : [];
  const points = [...actual, ...lines.flatMap((l) => l.pts.map((p) => ({ t: p.t, y: p.y })))];
  const root = chartFrame($("overlay-chart"), chosen ? [...points, ...chosen.pts] : points, bandLevels, { H: 300 });
  root.setAttribute("data-window", String(w.window));
  root.setAttribute("data-models", lines.map((l) => l.model).join(","));
  if (root.frame) {
    const { x, y } = root.frame;
    bandLevels.forEach((lv, i) => {
      const band = drawBand(root, chosen.pts, lv, x, y, { class: `band band-${lv}`, "fill-opacity": bandOpacity(i), "data-level": String(lv) });
      if (band) band.style.fill = chosen.color;
    });
    for (const l of lines) {
      const path = drawLine(root, l.pts, x, y, l.chosen ? "cand chosen" : "cand");
      if (!path) continue;
      path.style.stroke = l.color;
      path.setAttribute("data-model", l.model);
      path.append(svg("title", {}, l.chosen ? `${l.model} (chosen)` : l.model));
    }
    drawLine(root, actual, x, y, "actual");
    legend(root, [{ cls: "actual", label: "actual" }], bandLevels);
    for (const rect of root.querySelectorAll(".legend rect.band")) rect.style.fill = chosen.color; // its bands
  }
  renderOverlayErrors(w, lines, levels[levels.length - 1]);
}

function renderOverlayErrors(w, lines, level) {
  // each shown model's errors on this window's actuals (the page's own arithmetic)
  $("overlay-coverage").textContent = level ? `${level}% covered` : "covered";
  const rows = lines.map((l) => {
    const errs = [];
    let inside = 0;
    let scored = 0;
    l.pts.forEach((p, i) => {
      if (p.y === null || w.y[i] === null) return;
      errs.push(p.y - w.y[i]);
      const lo = level ? p.lo[level] : null;
      const up = level ? p.up[level] : null;
      if (lo !== null && up !== null) {
        scored += 1;
        if (w.y[i] >= lo && w.y[i] <= up) inside += 1;
      }
    });
    const mae = errs.length ? errs.reduce((a, e) => a + Math.abs(e), 0) / errs.length : null;
    const bias = errs.length ? errs.reduce((a, e) => a + e, 0) / errs.length : null;
    return { l, mae, bias, covered: scored ? inside / scored : null };
  });
  rows.sort((a, b) => (a.mae ?? Infinity) - (b.mae ?? Infinity));
  $("overlay-errors").tBodies[0].replaceChildren(...rows.map(({ l, mae, bias, covered }) => {
    const tr = el("tr", { class: l.chosen ? "chosen" : "", "data-model": l.model });
    const name = el("td", {});
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = l.color;
    name.append(swatch, ` ${l.model}`);
    tr.append(name, el("td", {}, fmt(mae)), el("td", {}, fmt(bias)), el("td", {}, covered === null ? "–" : `${Math.round(100 * covered)}%`));
    return tr;
  }));
}

function exportOverlay() {
  const o = state.overlay;
  const levels = [...o.body.levels].sort((a, b) => a - b);
  const cols = ["series_id", "run_id", "model", "window", "cutoff", "ts", "y", "yhat", ...levels.flatMap((lv) => [`yhat_lower_${lv}`, `yhat_upper_${lv}`])];
  const rows = [];
  for (const w of o.body.windows) {
    for (const m of w.models) {
      w.ts.forEach((ts, i) => rows.push([o.id, o.body.run_id, m.model, w.window, w.cutoff, ts, w.y[i], m.yhat[i],
        ...levels.flatMap((lv) => [(m.lower[lv] || [])[i], (m.upper[lv] || [])[i]])]));
    }
  }
  download(`${o.id}-backtest-forecasts.csv`, toCsv(cols, rows));
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

function timeTicks(t0, t1, n, least = 0) {
  // UTC-aligned steps (hours, days, weeks; at least `least`) giving at most n ticks inside [t0, t1]
  const step = TIME_STEPS.find((s) => s >= least && (t1 - t0) / s <= n) || TIME_STEPS[TIME_STEPS.length - 1];
  const ticks = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) ticks.push(t);
  return { ticks, daily: step >= 24 * HOUR };
}

function bandOpacity(i) {
  return String(0.12 + 0.12 * i); // i-th level from the widest
}

function chartFrame(fig, points, levels, opts = {}) {
  // a fresh <svg> in fig with axes fitted to points (and their bands); root.frame holds the
  // scales (null: nothing to draw)
  fig.replaceChildren();
  const W = 860;
  const H = opts.H || 340;
  const m = { l: 56, r: 16, t: 24, b: 34 };
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  root.frame = null;
  fig.append(root);
  const ts = points.map((p) => p.t);
  const ys = [];
  for (const p of points) {
    if (p.y !== null && p.y !== undefined) ys.push(p.y);
    for (const lv of levels) {
      if (p.lo && p.lo[lv] !== null && p.lo[lv] !== undefined) ys.push(p.lo[lv]);
      if (p.up && p.up[lv] !== null && p.up[lv] !== undefined) ys.push(p.up[lv]);
    }
  }
  if (!ts.length || !ys.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no data"));
    return root;
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
  const { ticks, daily } = timeTicks(t0, t1, 7, opts.daily ? DAY : 0);
  for (const t of ticks) {
    // labels near an edge are anchored inside the chart
    const anchor = x(t) > W - m.r - 36 ? "end" : x(t) < m.l + 36 ? "start" : "middle";
    axis.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
    axis.append(svg("text", { x: x(t), y: H - m.b + 16, "text-anchor": anchor }, utcLabel(t, !daily)));
  }
  axis.append(svg("text", { x: W - m.r, y: H - 2, "text-anchor": "end" }, opts.daily ? "UTC days" : "UTC"));
  root.append(axis);
  root.frame = { x, y, W, H, m, t0, t1 };
  return root;
}

function drawBand(root, points, lv, x, y, attrs) {
  const pts = points.filter((p) => p.lo && p.up && p.lo[lv] !== null && p.up[lv] !== null && p.lo[lv] !== undefined && p.up[lv] !== undefined);
  if (pts.length < 2) return null;
  const upper = pts.map((p) => `${x(p.t)},${y(p.up[lv])}`);
  const lower = pts.slice().reverse().map((p) => `${x(p.t)},${y(p.lo[lv])}`);
  const band = svg("polygon", { ...attrs, points: [...upper, ...lower].join(" ") });
  root.append(band);
  return band;
}

function drawLine(root, points, x, y, cls) {
  const d = points.filter((p) => p.y !== null && p.y !== undefined).map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`);
  if (!d.length) return null;
  const path = svg("path", { class: cls, d: d.join("") });
  root.append(path);
  return path;
}

function legend(root, items, levels) {
  const { m } = root.frame;
  const g = svg("g", { class: "legend", transform: `translate(${m.l + 8},${m.t - 10})` });
  let lx = 0;
  for (const { cls, label, color } of items) {
    if (cls) {
      const line = svg("line", { class: cls, x1: lx, x2: lx + 18, y1: 0, y2: 0 });
      if (color) line.style.stroke = color;
      g.append(line);
    }
    g.append(svg("text", { x: lx + (cls ? 22 : 0), y: 4 }, label));
    lx += Math.max(70, 30 + 6.5 * label.length);
  }
  for (const lv of levels.slice().reverse()) {
    // the narrower band is drawn over the wider ones: show what the eye sees
    let covered = 0;
    for (let j = 0; j <= levels.indexOf(lv); j++) covered += Number(bandOpacity(j));
    const opacity = String(Math.min(0.8, covered));
    g.append(svg("rect", { class: "band", x: lx, y: -5, width: 18, height: 10, "fill-opacity": opacity }));
    g.append(svg("text", { x: lx + 22, y: 4 }, `${lv}% interval`));
    lx += 100;
  }
  root.append(g);
}

function drawChart(hist, forecast) {
  const hp = (hist.points || []).filter((p) => p.y !== null).map((p) => ({ t: Date.parse(p.ts), y: p.y }));
  const fp = forecast ? forecast.points.map((p) => ({ t: Date.parse(p.ts), y: p.yhat, lo: p.lower, up: p.upper })) : [];
  const levels = forecast ? [...forecast.levels].sort((a, b) => b - a) : [];
  const root = chartFrame($("chart"), [...hp, ...fp], levels);
  root.setAttribute("data-history-points", String(hp.length));
  root.setAttribute("data-forecast-points", String(fp.length));
  if (hp.length) {
    root.setAttribute("data-history-from", new Date(hp[0].t).toISOString());
  }
  if (!root.frame) return;
  const { x, y, m, H, t0, t1 } = root.frame;
  levels.forEach((lv, i) => drawBand(root, fp, lv, x, y, {
    class: `band band-${lv}`, "fill-opacity": bandOpacity(i), "data-level": String(lv),
  }));
  drawLine(root, hp, x, y, "history");
  if (forecast && forecast.cutoff) {
    const tc = Date.parse(forecast.cutoff);
    if (tc >= t0 && tc <= t1) root.append(svg("line", { class: "cutoff", x1: x(tc), x2: x(tc), y1: m.t, y2: H - m.b }));
  }
  drawLine(root, fp, x, y, "forecast");
  const dots = svg("g", { class: "fc-points" });
  for (const p of fp) {
    if (p.y === null) continue;
    const dot = svg("circle", { class: "fc-point", cx: x(p.t).toFixed(1), cy: y(p.y).toFixed(1), r: 2.2 });
    const band = levels.length ? ` [${fmt(p.lo[levels[0]])}, ${fmt(p.up[levels[0]])}] at ${levels[0]}%` : "";
    dot.append(svg("title", {}, `${utcLabel(p.t)}  ${fmt(p.y)}${band}`));
    dots.append(dot);
  }
  root.append(dots);
  legend(root, [{ cls: "history", label: "actual" }, { cls: "forecast", label: "forecast" }], levels);
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
  for (const id of ["sort", "filter-status", "filter-model"]) $(id).addEventListener("change", () => loadSeries(true));
  $("history-length").addEventListener("change", redraw);
  $("portfolio-level").addEventListener("change", drawPortfolio);
  $("hierarchy-level").addEventListener("change", onHierarchyLevel);
  $("hierarchy-node").addEventListener("change", () => {
    const h = state.hierarchy;
    if (h && h.level !== "series") drawHierarchy();
  });
  $("export-series").addEventListener("click", exportSeries);
  $("export-portfolio").addEventListener("click", exportPortfolio);
  $("overlay-window").addEventListener("change", drawOverlay);
  $("export-overlay").addEventListener("click", exportOverlay);
  $("overlay-models").addEventListener("change", (event) => {
    const model = event.target.dataset.model;
    if (!state.overlay || !model) return;
    if (event.target.checked) state.overlay.hidden.delete(model);
    else state.overlay.hidden.add(model);
    drawOverlay();
  });
  $("export-table").addEventListener("click", () => exportTable().catch((e) => { $("series-count").textContent = e.message; }));
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value;
    sessionStorage.setItem("mmf-api-key", state.key);
    $("auth").hidden = true;
    start();
  });
  start();
});
