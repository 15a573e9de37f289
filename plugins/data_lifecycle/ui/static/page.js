// The Data Lifecycle page: fetches api/overview (relative, so any base URL works) and draws the
// figures and charts as inline SVG. No library, no network access beyond this plugin.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CLASS_ORDER = ["STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"];
const COLORS = ["var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)", "var(--c5)", "var(--c6)", "var(--c7)"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
function fmtBytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(b), i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? fmtInt(v) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)) + " " + units[i];
}
function fmtUsd(x) {
  const v = Number(x);
  if (v !== 0 && Math.abs(v) < 0.01) return "$" + v.toFixed(Math.min(12, 1 - Math.floor(Math.log10(Math.abs(v)))));
  return "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
const fmtSeconds = (s) => (s === null || s === undefined ? "—" : Number(s).toFixed(Number(s) < 10 ? 2 : 1));
const sum = (xs) => xs.reduce((a, b) => a + Number(b || 0), 0);

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// Charts are drawn at the width they are shown at, so their text is the page's size.
const widthOf = (container) => Math.max(Math.round(container.clientWidth || 0), 320);

function legend(series) {
  return el("div", { class: "legend" }, ...series.map((s) => el("span", {}, el("i", { style: `background:${s.color}` }), s.name)));
}

function empty(container, text) {
  container.replaceChildren(el("p", { class: "empty" }, text));
}

// Stacked vertical bars: labels on x, one stack per label.
function barChart(container, { name, labels, series, format, labelEvery }) {
  const W = widthOf(container), H = 220, L = 64, R = 8, T = 10, B = 28;
  const totals = labels.map((_, i) => sum(series.map((s) => s.values[i])));
  const max = niceMax(Math.max(0, ...totals));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": name, "aria-label": name });
  const plotW = W - L - R, plotH = H - T - B, step = plotW / Math.max(labels.length, 1);
  for (let k = 0; k <= 4; k += 1) {
    const y = T + plotH - (plotH * k) / 4;
    root.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: y, y2: y }));
    root.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, format((max * k) / 4)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: T + plotH, y2: T + plotH }));
  const every = labelEvery || Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, i) => {
    let y = T + plotH;
    const x = L + i * step + step * 0.12, w = Math.max(step * 0.76, 1);
    series.forEach((s) => {
      const v = Number(s.values[i] || 0);
      if (v <= 0) return;
      const h = (plotH * v) / max;
      y -= h;
      const bar = svg("rect", { x, y, width: w, height: Math.max(h, 0.5), fill: s.color, "data-value": v });
      bar.append(svg("title", {}, `${label} · ${s.name}: ${format(v)}`));
      root.append(bar);
    });
    if (i % every === 0 || labels.length <= 8) {
      root.append(svg("text", { x: L + i * step + step / 2, y: H - 8, "text-anchor": "middle" }, label));
    }
  });
  container.replaceChildren(root, legend(series));
}

// Horizontal bars, one per item.
function hbarChart(container, { name, items, format, color }) {
  const row = 30, L = 150, R = 80, W = widthOf(container), H = row * items.length + 8;
  const max = niceMax(Math.max(0, ...items.map((i) => i.value)));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": name, "aria-label": name });
  items.forEach((item, i) => {
    const y = 4 + i * row, w = ((W - L - R) * item.value) / max;
    root.append(svg("text", { x: L - 8, y: y + row / 2 + 2, "text-anchor": "end" }, item.label));
    root.append(svg("rect", { x: L, y: y + 5, width: W - L - R, height: row - 12, fill: "var(--line)", rx: 3 }));
    const bar = svg("rect", { x: L, y: y + 5, width: Math.max(w, item.value > 0 ? 2 : 0), height: row - 12, fill: color, rx: 3, "data-value": item.value });
    bar.append(svg("title", {}, `${item.label}: ${format(item.value)}`));
    root.append(bar);
    root.append(svg("text", { x: W - R + 8, y: y + row / 2 + 2 }, format(item.value)));
  });
  container.replaceChildren(root);
}

// Lines over the same labels.
function lineChart(container, { name, labels, series, format }) {
  const W = widthOf(container), H = 220, L = 72, R = 12, T = 10, B = 28;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.map(Number))));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": name, "aria-label": name });
  const plotW = W - L - R, plotH = H - T - B;
  const x = (i) => L + (labels.length <= 1 ? plotW / 2 : (plotW * i) / (labels.length - 1));
  const y = (v) => T + plotH - (plotH * v) / max;
  for (let k = 0; k <= 4; k += 1) {
    const gy = T + plotH - (plotH * k) / 4;
    root.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: gy, y2: gy }));
    root.append(svg("text", { x: L - 6, y: gy + 4, "text-anchor": "end" }, format((max * k) / 4)));
  }
  labels.forEach((label, i) => root.append(svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, label)));
  series.forEach((s) => {
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(Number(v)).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2.5, "data-series": s.name }));
    s.values.forEach((v, i) => {
      const dot = svg("circle", { cx: x(i), cy: y(Number(v)), r: 3, fill: s.color, "data-value": v });
      dot.append(svg("title", {}, `${labels[i]} · ${s.name}: ${format(v)}`));
      root.append(dot);
    });
  });
  container.replaceChildren(root, legend(series));
}

function kpi(metric, label, value, text, hint, alert) {
  return el("div", { class: "kpi" + (alert ? " alert" : ""), "data-metric": metric, "data-value": value },
    el("div", { class: "label" }, label),
    el("div", { class: "value", title: String(value) }, text),
    el("div", { class: "hint" }, hint || ""));
}

function classesOf(byDate) {
  const seen = new Set();
  Object.values(byDate).forEach((m) => Object.keys(m).forEach((c) => seen.add(c)));
  return [...seen].sort((a, b) => (CLASS_ORDER.indexOf(a) + 99) % 99 - (CLASS_ORDER.indexOf(b) + 99) % 99 || a.localeCompare(b));
}

function render(data) {
  const { removals, postgres, s3, cost, erasure } = data;
  document.getElementById("generated").textContent = "as of " + new Date(data.generated_at).toLocaleString();
  const storedNow = sum(Object.values(s3.latest_by_class));
  const kpis = [
    kpi("rows_removed_90d", "Rows removed", sum(removals.rows), fmtInt(sum(removals.rows)), "PostgreSQL · 90 days"),
    kpi("objects_removed_90d", "Objects removed", sum(removals.objects), fmtInt(sum(removals.objects)), "S3, expired or archived · 90 days"),
    kpi("partitions_dropped_90d", "Partitions dropped", sum(removals.partitions), fmtInt(sum(removals.partitions)), "past retention · 90 days"),
    kpi("pg_bytes_freed", "PostgreSQL bytes freed", postgres.freed_total, fmtBytes(postgres.freed_total), "returned to disk"),
    kpi("s3_bytes_removed", "S3 bytes removed", s3.removed_total, fmtBytes(s3.removed_total), "expired objects"),
    kpi("s3_bytes_moved", "S3 bytes archived", s3.moved_total, fmtBytes(s3.moved_total), "copied colder, verified, deleted"),
    kpi("s3_bytes_now", "S3 stored now", storedNow, fmtBytes(storedNow), s3.latest_date ? "inventory of " + s3.latest_date : "no inventory yet"),
    kpi("cost_monthly_now", "Storage cost per month", cost.monthly_now_usd, fmtUsd(cost.monthly_now_usd), `S3, ${cost.region} list prices`),
    kpi("saving_per_month", "Saved per month", cost.saving_per_month_usd, fmtUsd(cost.saving_per_month_usd), `${fmtUsd(cost.saved_to_date_usd)} saved to date`),
    kpi("forecast_12_months", "Next 12 months", cost.forecast ? cost.forecast.total_with_rules_usd : 0, cost.forecast ? fmtUsd(cost.forecast.total_with_rules_usd) : "—", cost.forecast ? `with the rules; saves ${fmtUsd(cost.forecast.saving_12_months_usd)}` : "needs an inventory"),
    kpi("erasure_open", "Open erasure requests", erasure.open, fmtInt(erasure.open), erasure.overdue ? erasure.overdue + " past the deadline" : "none overdue", erasure.overdue > 0),
  ];
  document.getElementById("kpis").replaceChildren(...kpis);

  const days = removals.days.map((d) => d.slice(5));
  barChart(document.getElementById("chart-removals"), {
    name: "removals", labels: days, format: (v) => fmtInt(Math.round(v)), labelEvery: 10,
    series: [
      { name: "rows", values: removals.rows, color: "var(--c1)" },
      { name: "objects", values: removals.objects, color: "var(--c2)" },
      { name: "partitions", values: removals.partitions, color: "var(--c4)" },
    ],
  });

  const s3Chart = document.getElementById("chart-s3");
  if (s3.dates.length) {
    const classes = classesOf(s3.by_date);
    barChart(s3Chart, {
      name: "s3-bytes", labels: s3.dates.map((d) => d.slice(5)), format: fmtBytes,
      series: classes.map((c) => ({ name: c, values: s3.dates.map((d) => s3.by_date[d][c] || 0), color: COLORS[CLASS_ORDER.indexOf(c) % COLORS.length] })),
    });
  } else empty(s3Chart, "No inventory recorded yet: the lifecycle_inventory DAG records one a day.");

  const pgChart = document.getElementById("chart-pg");
  if (postgres.tables.length) {
    hbarChart(pgChart, { name: "pg-bytes", items: postgres.tables.map((t) => ({ label: t.table, value: t.freed })), format: fmtBytes, color: "var(--c3)" });
    pgChart.append(el("p", { class: "muted" }, "A DELETE leaves space for reuse inside the table; dropped partitions and VACUUM FULL return it to disk."));
  } else empty(pgChart, "No table sizes recorded yet.");

  renderForecast(cost);
  renderRuns(data.targets);
  renderErasure(erasure);
}

function renderForecast(cost) {
  const chart = document.getElementById("chart-forecast");
  if (!cost.forecast || !cost.forecast.months || !cost.forecast.months.length) {
    empty(chart, "No forecast yet: it needs a recorded inventory.");
    return;
  }
  const f = cost.forecast;
  document.getElementById("forecast-note").textContent = `${cost.region} prices of ${cost.prices_as_of}, from the inventory of ${cost.as_of}`;
  lineChart(chart, {
    name: "forecast", labels: f.months, format: fmtUsd,
    series: [
      { name: "without the tiering rules", values: f.without_rules_usd, color: "var(--c5)" },
      { name: "with the tiering rules", values: f.with_rules_usd, color: "var(--c2)" },
    ],
  });
}

function runCell(field, value, text, cls) {
  return el("td", { "data-field": field, "data-value": value === null || value === undefined ? "" : value, class: cls || null }, text);
}

function renderRuns(targets) {
  const body = document.getElementById("runs");
  if (!targets.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No cleanup run recorded yet.")));
    return;
  }
  body.replaceChildren(...targets.map((t) => {
    const [last, ...earlier] = t.runs;
    const counted = (n) => (n === null || n === undefined || t.unit === "none" ? "—" : `${fmtInt(n)} ${n === 1 ? t.unit.replace(/s$/, "") : t.unit}`);
    const row = el("tr", { "data-target": `${t.dag_id}/${t.task_id}` },
      el("td", {}, el("code", {}, t.dag_id)),
      el("td", {}, t.target, el("div", { class: "task" }, t.task_id)));
    if (!last) {
      row.append(el("td", { colspan: 5, class: "muted" }, "no run in 90 days"));
      return row;
    }
    row.append(
      runCell("state", last.state, el("span", { class: "state " + last.state, title: last.run_id }, last.state)),
      runCell("removed", last.removed, counted(last.removed), "num"),
      runCell("seconds", last.seconds, fmtSeconds(last.seconds), "num"),
      runCell("stopped_by", last.stopped_by, last.stopped_by || "—"),
      el("td", {}, ...earlier.map((r) => el("span", { class: "dot " + r.state, title: `${r.run_id}: ${r.state}, ${counted(r.removed)}` }))),
    );
    return row;
  }));
}

function renderErasure(erasure) {
  document.getElementById("erasure-note").textContent = `legal deadline ${erasure.deadline_days} days from the request`;
  const counts = el("div", { class: "erasure-counts" },
    el("div", { "data-metric": "erasure_open_count", "data-value": erasure.open }, el("b", {}, fmtInt(erasure.open)), "open"),
    el("div", { "data-metric": "erasure_overdue", "data-value": erasure.overdue }, el("b", { class: erasure.overdue ? "overdue" : null }, fmtInt(erasure.overdue)), "past the deadline"),
    el("div", { "data-metric": "erasure_due_soon", "data-value": erasure.due_within_7_days }, el("b", {}, fmtInt(erasure.due_within_7_days)), "due within 7 days"));
  const box = document.getElementById("erasure");
  if (!erasure.requests.length) {
    box.replaceChildren(counts, el("p", { class: "muted" }, "Every erasure request in the ledger is complete."));
    return;
  }
  const rows = erasure.requests.map((r) => el("tr", { "data-request": r.request_id },
    el("td", {}, el("code", {}, r.request_id)),
    el("td", {}, r.requested_at.slice(0, 10)),
    el("td", { class: r.overdue ? "overdue" : null }, r.deadline.slice(0, 10)),
    el("td", { class: "num" }, r.overdue ? "overdue" : `${r.days_left} days`),
    el("td", {}, r.last_status)));
  box.replaceChildren(counts, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Request"), el("th", {}, "Requested"), el("th", {}, "Deadline"), el("th", { class: "num" }, "Left"), el("th", {}, "Last status"))),
    el("tbody", {}, ...rows)));
}

async function main() {
  const status = document.getElementById("status");
  const main = document.getElementById("main");
  let response;
  try {
    response = await fetch("api/overview", { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch (err) {
    status.textContent = "Could not reach the Airflow API server: " + err.message;
    status.className = "status error";
    return;
  }
  if (response.status === 401 || response.status === 403) {
    status.textContent = "Sign in to Airflow to see this page (or ask for read access to DAG runs).";
    status.className = "status error";
    status.dataset.refused = String(response.status);
    return;
  }
  if (!response.ok) {
    status.textContent = `The page's data could not be read (HTTP ${response.status}).`;
    status.className = "status error";
    return;
  }
  const data = await response.json();
  status.hidden = true;
  document.getElementById("content").hidden = false; // shown first: charts are drawn at its width
  render(data);
  main.setAttribute("aria-busy", "false");
  document.body.dataset.ready = "true";
}

main();
