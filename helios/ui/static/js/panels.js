// Dashboard panels: each is drawn from its query over the dashboard's time range.
//
//   table      the rows as a table
//   timechart  a time chart; a query without stats/top/timechart is counted per step
//   stat       one big number: the first numeric result (a plain query: its row count)
//   bar        bars of the result's categories (stats … by (x), top N x)
//   logs       log rows, newest first (at most LOGS_LIMIT)

import { query } from "./api.js";
import { barChart, timeChart } from "./chart.js";
import { h, notice, num, replace, show } from "./dom.js";
import { isAggregation, splitQuery } from "./querytext.js";
import { categories, fillFor, logTable, pivotTime, rowsTable } from "./results.js";
import { rangeParams, stepFor } from "./time.js";

export const PANEL_TYPES = ["timechart", "table", "stat", "bar", "logs"];
const LOGS_LIMIT = 100;
const ROWS_LIMIT = 5000;

/** The query a panel runs (what its type needs added to a plain search). */
export function panelQuery(panel, range) {
  const text = (panel.query || "*").trim();
  if (isAggregation(text)) return text;
  if (panel.type === "timechart") return `${splitQuery(text).filter || "*"} | timechart ${stepFor(range.toMs - range.fromMs).step}`;
  if (panel.type === "stat") return `${splitQuery(text).filter || "*"} | stats count() as count`;
  return text;
}

function datasets(value) {
  if (!value) return undefined;
  return Array.isArray(value) ? value : String(value).split(",").map((s) => s.trim()).filter(Boolean);
}

/** The search page's address for a panel (its query over the range). */
export function searchLink(panel, range) {
  const params = new URLSearchParams({ q: panel.query || "*" });
  for (const [k, v] of Object.entries(rangeParams(range))) if (v) params.set(k, v);
  const ds = datasets(panel.dataset);
  if (ds) params.set("dataset", ds.join(","));
  return `/?${params}`;
}

/** Draw panel into body (replacing what is there). Errors are shown in the panel. */
export async function drawPanel(body, panel, range, signal) {
  body.setAttribute("aria-busy", "true");
  try {
    const text = panelQuery(panel, range);
    const answer = await query({ q: text, from: range.from, to: range.to,
      dataset: datasets(panel.dataset), limit: panel.type === "logs" ? LOGS_LIMIT : ROWS_LIMIT }, { signal });
    const rows = answer.rows;
    const box = h("div", { class: "chart", dataset: { points: "0" } });
    const partial = answer.stats && answer.stats.partial
      ? notice("warn", `Partial: ${num(answer.stats.blocks_missing)} blocks could not be read.`) : null;
    if (panel.type === "table") {
      replace(body, partial, rows.length ? rowsTable(rows) : h("p", { class: "muted" }, "No rows."));
    } else if (panel.type === "logs") {
      const table = logTable({ sides: ["level"] });
      table.set(rows);
      replace(body, partial, rows.length ? table.el : h("p", { class: "muted" }, "No rows."));
    } else if (panel.type === "stat") {
      const first = rows[0] || {};
      const key = Object.keys(first).find((k) => typeof first[k] === "number");
      replace(body, partial, h("div", { class: "stat", dataset: { points: key ? "1" : "0" } },
        key ? num(first[key]) : "–"), key ? h("div", { class: "muted" }, key) : null);
    } else if (panel.type === "timechart") {
      replace(body, partial, box);
      const { xs, series } = pivotTime(rows.filter((r) => "_time" in r), fillFor(text, range));
      timeChart(box, xs, series, { height: 200, signal, label: `${panel.title || "Panel"}: time chart` });
    } else {
      replace(body, partial, box);
      const { labels, series } = categories(rows);
      barChart(box, labels.slice(0, 50), series.map((s) => ({ ...s, values: s.values.slice(0, 50) })),
        { height: 200, signal, label: `${panel.title || "Panel"}: bar chart`,
          emptyText: rows.length ? "No numeric result to draw (use stats … by (field) or top N field)." : undefined });
    }
    body.dataset.rows = String(rows.length);
  } catch (error) {
    if (error.name === "AbortError") return;
    replace(body, notice("error", show(error.message)));
  } finally {
    body.removeAttribute("aria-busy");
  }
}
