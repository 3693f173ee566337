// Query answers on the page: log rows (a table whose rows expand to every field) and
// aggregations (a table and a chart). Used by the search page, live tail and dashboards.

import { barChart, timeChart } from "./chart.js";
import { h, num, replace, show, table } from "./dom.js";
import { isFieldName, timechartOf } from "./querytext.js";
import { display, durationMs, parseTime } from "./time.js";

const SIDE_FIELDS = ["level", "service", "host"];

/** Column names of rows, in first-seen order. */
export function columnsOf(rows) {
  const seen = new Set();
  for (const row of rows) for (const key of Object.keys(row)) seen.add(key);
  return [...seen];
}

function isNumeric(rows, column) {
  let any = false;
  for (const row of rows) {
    const v = row[column];
    if (v === null || v === undefined) continue;
    if (typeof v !== "number") return false;
    any = true;
  }
  return any;
}

/**
 * Aggregation rows with _time → {xs (s), series [{label, values}]}: one series per group and result.
 * fill {fromMs, toMs, stepMs, zero}: every step of the range gets a point; a bucket without rows
 * is 0 when zero (counts, sums), a gap otherwise.
 */
export function pivotTime(rows, fill) {
  const columns = columnsOf(rows).filter((c) => c !== "_time");
  const values = columns.filter((c) => isNumeric(rows, c));
  const groups = columns.filter((c) => !values.includes(c));
  let xs = [...new Set(rows.map((r) => parseTime(r._time) / 1000))].filter(Number.isFinite);
  if (fill && fill.stepMs > 0 && (fill.toMs - fill.fromMs) / fill.stepMs <= 2000) {
    for (let t = Math.floor(fill.fromMs / fill.stepMs) * fill.stepMs; t < fill.toMs; t += fill.stepMs) xs.push(t / 1000);
    xs = [...new Set(xs)];
  }
  xs.sort((a, b) => a - b);
  const empty = fill && fill.zero ? 0 : null;
  const index = new Map(xs.map((x, i) => [x, i]));
  const series = new Map();
  for (const row of rows) {
    const i = index.get(parseTime(row._time) / 1000);
    if (i === undefined) continue;
    const group = groups.map((g) => show(row[g]) || "(none)").join(" / ");
    for (const column of values) {
      const label = group ? (values.length > 1 ? `${group} · ${column}` : group) : column;
      if (!series.has(label)) series.set(label, { label, values: new Array(xs.length).fill(empty) });
      series.get(label).values[i] = row[column];
    }
  }
  return { xs, series: [...series.values()] };
}

/** The pivotTime fill of a query's timechart over a range (undefined without a timechart). */
export function fillFor(text, range) {
  const chart = timechartOf(text);
  if (!chart || !durationMs(chart.stepText)) return undefined;
  return { fromMs: range.fromMs, toMs: range.toMs, stepMs: durationMs(chart.stepText), zero: chart.zero };
}

/** Aggregation rows without _time → {labels, series}: categories from the text columns. */
export function categories(rows) {
  const columns = columnsOf(rows);
  const values = columns.filter((c) => isNumeric(rows, c));
  const groups = columns.filter((c) => !values.includes(c));
  const labels = rows.map((r) => groups.map((g) => show(r[g]) || "(none)").join(" / ") || "all");
  return { labels, series: values.map((c) => ({ label: c, values: rows.map((r) => r[c] ?? null) })) };
}

/**
 * Fill a box with an aggregation's chart (time, categories, or one big number) and its table.
 * options: height, signal, label, fill (see pivotTime), table (false: chart only), stat (false: no big number).
 */
export function aggregation(box, rows, options = {}) {
  const chartBox = h("div", { class: "chart", dataset: { points: "0" } });
  const parts = [chartBox];
  if (options.table !== false) parts.push(rowsTable(rows));
  replace(box, parts);
  if (!rows.length) {
    replace(chartBox, h("div", { class: "empty" }, "No rows."));
    return;
  }
  if (rows.some((r) => "_time" in r)) {
    const { xs, series } = pivotTime(rows, options.fill);
    timeChart(chartBox, xs, series, { height: options.height, signal: options.signal, label: options.label });
  } else {
    const { labels, series } = categories(rows);
    if (labels.length === 1 && series.length === 1 && options.stat !== false) {
      chartBox.dataset.points = "1";
      replace(chartBox, h("div", { class: "stat", "aria-label": `${series[0].label}: ${show(series[0].values[0])}` },
        num(series[0].values[0])));
      return;
    }
    barChart(chartBox, labels.slice(0, 50), series.map((s) => ({ ...s, values: s.values.slice(0, 50) })),
      { height: options.height, signal: options.signal, label: options.label });
  }
}

/** Any rows as a plain table (numbers right-aligned). */
export function rowsTable(rows) {
  const columns = columnsOf(rows);
  const numeric = new Set(columns.filter((c) => isNumeric(rows, c)));
  const el = table(columns, []);
  const body = el.querySelector("tbody");
  for (const row of rows) {
    body.append(h("tr", null, columns.map((c) => h("td", { class: numeric.has(c) ? "num" : null },
      c === "_time" ? display(row[c]) : numeric.has(c) ? num(row[c], 4) : show(row[c])))));
  }
  numeric.forEach((c) => el.querySelectorAll("th")[columns.indexOf(c)].classList.add("num"));
  return el;
}

/**
 * A table of log rows, newest first. onTerm(field, value, exclude) is called when a value is
 * clicked (to add field:value, or -field:value, to the query); without it values are text.
 * sides: the field columns shown between time and message (default: those of level, service,
 * host that the rows have). Returns {el, set(rows), prepend(rows, cap), size()}.
 */
export function logTable({ onTerm, sides: fixed } = {}) {
  const body = h("tbody");
  const head = h("tr");
  const el = h("div", { class: "table-wrap scroller" }, h("table", { class: "results" }, h("thead", null, head), body));
  let sides = [];

  function valueButton(field, value, extra) {
    if (!onTerm || value === null || value === undefined || !isFieldName(field) || field === "_time") {
      return h("span", { class: extra }, show(value));
    }
    return h("button", { type: "button", class: ["value", extra], title: `Add ${field}:${show(value)} to the query`,
      on: { click: () => onTerm(field, show(value), false) } }, show(value));
  }

  function details(row) {
    return h("dl", null, Object.keys(row).flatMap((field) => [
      h("dt", null, field),
      h("dd", null, valueButton(field, row[field]),
        onTerm && isFieldName(field) && field !== "_time" && row[field] !== null
          ? h("button", { type: "button", class: "exclude", "aria-label": `Exclude ${field}:${show(row[field])}`,
            title: `Add -${field}:… to the query`, on: { click: () => onTerm(field, show(row[field]), true) } }, "−")
          : null),
    ]));
  }

  function rowsFor(row) {
    const expand = h("button", { type: "button", class: "expand", "aria-expanded": "false",
      "aria-label": `Show all fields of the row at ${display(row._time)}` }, "▸");
    const more = h("tr", { class: "details", hidden: true }, h("td", { colspan: String(sides.length + 3) }));
    const toggle = () => {
      const open = more.hidden;
      more.hidden = !open;
      expand.setAttribute("aria-expanded", String(open));
      expand.textContent = open ? "▾" : "▸";
      if (open && !more.firstChild.firstChild) more.firstChild.append(details(row));
    };
    expand.addEventListener("click", toggle);
    const msg = h("td", { class: "msg" }, show(row._msg));
    msg.addEventListener("dblclick", toggle);
    const line = h("tr", null, h("td", null, expand), h("td", { class: "time" }, display(row._time)),
      sides.map((f) => h("td", { class: `side-${f}` },
        valueButton(f, row[f], f === "level" && /^\w+$/.test(show(row[f])) ? `level-${show(row[f])}` : null))), msg);
    return [line, more];
  }

  function header(rows) {
    sides = fixed || SIDE_FIELDS.filter((f) => rows.some((r) => r[f] !== null && r[f] !== undefined));
    replace(head, h("th", { scope: "col" }, h("span", { class: "skip" }, "Details")),
      h("th", { scope: "col" }, "Time (UTC)"), sides.map((f) => h("th", { scope: "col", class: `side-${f}` }, f)),
      h("th", { scope: "col" }, "Message"));
  }

  return {
    el,
    set(rows) {
      header(rows);
      replace(body, rows.map(rowsFor));
    },
    /** Rows in arrival order (oldest first) go on top, newest first; at most cap rows are kept. */
    prepend(rows, cap) {
      if (!head.firstChild) header(rows);
      const fragment = document.createDocumentFragment();
      for (const row of [...rows].reverse()) fragment.append(...rowsFor(row));
      body.prepend(fragment);
      while (body.children.length > cap * 2) body.lastChild.remove();
    },
    size() {
      return body.children.length / 2;
    },
  };
}
