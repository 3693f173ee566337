// Charts over uPlot (vendor/uplot, 1.6.32): time series (lines or bars) and category bars.
//
// Every chart box gets data-points (the number of drawn points: tests and people can tell an
// empty chart from a drawn one), role="img" and an aria-label saying what it shows; the
// numbers themselves are also in a table next to it wherever the page has one. Times are UTC.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h, replace } from "./dom.js";

const COLORS = ["#1f5fbf", "#d9822b", "#2e9e5b", "#c23b5a", "#7b5cc4", "#168a9e", "#a88a1a", "#5b6475",
  "#e0559a", "#3e7d2f"];
const MAX_SERIES = 12;
const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
// Time axis labels, 24-hour and ISO-like: [tick step s, label, then the label's second line
// when the year / month / day / hour / minute / second changes, mode].
const TIME_LABELS = [
  [86400 * 365, "{YYYY}", null, null, null, null, null, null, 1],
  [86400 * 28, "{MMM}", "\n{YYYY}", null, null, null, null, null, 1],
  [86400, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
  [60, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [1, "{HH}:{mm}:{ss}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [0.001, ":{ss}.{fff}", "\n{YYYY}-{MM}-{DD} {HH}:{mm}", null, "\n{MM}-{DD} {HH}:{mm}", null, "\n{HH}:{mm}", null, 1],
];

export function color(i) {
  return COLORS[i % COLORS.length];
}

function mount(box, opts, data, signal) {
  if (box.chart) box.chart.destroy();
  if (box.observer) box.observer.disconnect();
  replace(box);
  const width = Math.max(box.clientWidth - 8, 240);
  const chart = new uPlot({ ...opts, width }, data, box);
  box.chart = chart;
  box.observer = new ResizeObserver(() => {
    const w = Math.max(box.clientWidth - 8, 240);
    if (Math.abs(w - chart.width) > 2) chart.setSize({ width: w, height: opts.height });
  });
  box.observer.observe(box);
  if (signal) {
    signal.addEventListener("abort", () => { box.observer.disconnect(); chart.destroy(); }, { once: true });
  }
  return chart;
}

function empty(box, text) {
  if (box.chart) { box.chart.destroy(); box.chart = null; }
  box.dataset.points = "0";
  replace(box, h("div", { class: "empty" }, text));
}

/**
 * A time chart. xs: seconds (ascending); series: [{label, values}] (null = gap).
 * options: height, bars (draw bars; for histograms), stepS (bar width), onSelect(fromMs, toMs)
 * (drag across the chart to select a range), label (the aria-label), signal.
 */
export function timeChart(box, xs, series, options = {}) {
  const shown = series.slice(0, MAX_SERIES);
  const points = shown.reduce((n, s) => n + s.values.filter((v) => v !== null && v !== undefined).length, 0);
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", options.label || `Chart of ${shown.map((s) => s.label).join(", ")}`);
  if (!xs.length || !points) return empty(box, options.emptyText || "No data in this range.");
  const height = options.height || 220;
  const bars = options.bars ? uPlot.paths.bars({ size: [0.92, 64], align: 1 }) : null;
  const opts = {
    height,
    tzDate: utc,
    legend: { show: shown.length > 1 || !options.bars },
    cursor: { drag: { x: Boolean(options.onSelect), y: false, setScale: false } },
    scales: { x: { time: true, range: options.range ? () => options.range : undefined } },
    axes: [{ stroke: "#5b6475", grid: { stroke: "#eceef2" }, values: TIME_LABELS },
      { stroke: "#5b6475", grid: { stroke: "#eceef2" }, size: 56 }],
    series: [{ value: "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}" }, ...shown.map((s, i) => ({
      label: s.label,
      stroke: color(i),
      fill: options.bars ? `${color(i)}99` : undefined,
      width: options.bars ? 0 : 1.6,
      paths: bars || undefined,
      points: { show: !options.bars && xs.length < 60 },
      spanGaps: false,
    }))],
    hooks: {},
  };
  if (options.onSelect) {
    opts.hooks.setSelect = [(u) => {
      if (u.select.width < 3) return;
      const from = u.posToVal(u.select.left, "x");
      const to = u.posToVal(u.select.left + u.select.width, "x");
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      options.onSelect(Math.floor(from * 1000), Math.ceil(to * 1000));
    }];
  }
  mount(box, opts, [xs, ...shown.map((s) => s.values)], options.signal);
  box.dataset.points = String(points);
  return box.chart;
}

/** Bars by category: labels (strings), series [{label, values}] (one value per label). */
export function barChart(box, labels, series, options = {}) {
  const shown = series.slice(0, MAX_SERIES);
  const points = labels.length ? shown.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0) : 0;
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", options.label || `Bar chart of ${shown.map((s) => s.label).join(", ")}`);
  if (!points) return empty(box, options.emptyText || "No data in this range.");
  const xs = labels.map((_, i) => i);
  const short = labels.map((l) => (l.length > 16 ? `${l.slice(0, 15)}…` : l));
  const opts = {
    height: options.height || 220,
    legend: { show: shown.length > 1 },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false, range: [-0.6, labels.length - 0.4] } },
    axes: [{ stroke: "#5b6475", grid: { show: false }, incrs: [1, 2, 5, 10, 20, 50], space: 18,
      rotate: labels.length > 6 ? 30 : 0, size: labels.length > 6 ? 72 : 40,
      values: (u, splits) => splits.map((i) => (Number.isInteger(i) ? short[i] ?? "" : "")) },
      { stroke: "#5b6475", grid: { stroke: "#eceef2" }, size: 56 }],
    series: [{ label: "category", value: (u, i) => labels[i] ?? "" }, ...shown.map((s, i) => ({
      label: s.label,
      stroke: color(i),
      fill: `${color(i)}bb`,
      width: 0,
      paths: uPlot.paths.bars({ size: [0.7 / shown.length, 80], align: 0 }),
      points: { show: false },
    }))],
  };
  mount(box, opts, [xs, ...shown.map((s) => s.values)], options.signal);
  box.dataset.points = String(points);
  return box.chart;
}
