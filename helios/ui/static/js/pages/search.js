// The search page (/): query, time range, datasets, histogram, results or aggregation, facets,
// stats, live tail. Its state is the address: ?q=&range= | &from=&to=, &dataset=, &facet=.

import { api, query } from "../api.js";
import { timeChart } from "../chart.js";
import { field, h, notice, num, replace, select } from "../dom.js";
import { addTerm, filterOf, isAggregation, term } from "../querytext.js";
import { aggregation, columnsOf, fillFor, logTable } from "../results.js";
import { drawFacets } from "../search_facets.js";
import { follow } from "../search_tail.js";
import { PRESETS, customRange, display, parseTime, rangeOf, rangeParams, stepFor } from "../time.js";

const LOG_LIMIT = 500;
const AGG_LIMIT = 5000;
const HELP = [
  ["error", "a whole word in the message (any case)"],
  ["\"connection reset\"", "a phrase in the message"],
  ["level:ERROR", "a field equals a value"],
  ["host:web-*", "prefix; also word*"],
  ["-host:web-3  NOT x", "leave out"],
  ["a OR b, ( … )", "either; grouping (AND is implied)"],
  ["size:>100", "compare numbers: > >= < <="],
  ["msg:~\"time(out)?\"", "regular expression"],
  ["| stats count() as n by (host)", "count, count_distinct, sum, avg, min, max, quantile"],
  ["| timechart 5m count() by (level)", "counts over time"],
  ["| top 5 service", "most frequent values"],
  ["| fields _time, _msg | sort -_time | limit 10", "shape the rows"],
  ["| where n > 10", "filter results"],
];

export async function render(main, ctx) {
  ctx.title("Search");
  let range = rangeOf(ctx.query);
  let running = null; // the AbortController of the current run
  let tailing = null; // the AbortController of the live tail

  const queryBox = h("textarea", { id: "query", rows: "1", spellcheck: "false", autocomplete: "off",
    placeholder: "error service:api | stats count() by (host)" });
  queryBox.value = ctx.query.get("q") || "*";
  const runButton = h("button", { type: "submit", class: "primary" }, "Search");
  const presetBox = select(PRESETS, range.preset, { id: "range" });
  const fromBox = h("input", { id: "from", placeholder: "YYYY-MM-DD HH:MM:SS", value: display(range.fromMs) });
  const toBox = h("input", { id: "to", placeholder: "YYYY-MM-DD HH:MM:SS", value: display(range.toMs) });
  const custom = h("div", { class: "custom-range", hidden: range.preset !== "custom" },
    field("From (UTC)", fromBox), field("To (UTC)", toBox));
  const datasetBox = select([["", "All datasets"]], "", { id: "dataset" });
  const tailButton = h("button", { type: "button", "aria-pressed": "false" }, "Live tail");
  const tailStatus = h("span", { class: "muted", role: "status" });
  const errorBox = h("div");
  const statsLine = h("div", { class: "stats", role: "status" });
  const histogram = h("div", { class: "chart", id: "histogram", dataset: { points: "0" } });
  const facets = h("aside", { class: "facets", "aria-label": "Facets" });
  const results = h("section", { class: "results-box", "aria-label": "Results" });

  const form = h("form", { role: "search", class: "searchbar" },
    field("Query", queryBox), h("div", { class: "actions" }, runButton));
  replace(main,
    h("h1", null, "Search"),
    form,
    h("details", { class: "help" }, h("summary", null, "Syntax help"),
      h("dl", null, HELP.flatMap(([code, text]) => [h("dt", null, code), h("dd", null, text)]))),
    h("div", { class: "controls" }, field("Time range", presetBox), custom, field("Dataset", datasetBox),
      h("div", { class: "tailbar" }, tailButton, tailStatus)),
    errorBox, statsLine,
    h("h2", { class: "skip" }, "Matching rows over time"), histogram,
    h("div", { class: "layout" }, facets, results));

  // Datasets: the picker lists what this node sees; a list from a link (a,b) stays selectable.
  const wanted = ctx.query.get("dataset") || "";
  api("GET", "/api/v1/datasets", undefined, { signal: ctx.signal }).then((list) => {
    const names = list.map((d) => d.name);
    const options = [["", "All datasets"], ...names.map((n) => [n, n])];
    if (wanted && !names.includes(wanted)) options.push([wanted, wanted.split(",").join(", ")]);
    replace(datasetBox, [...select(options, wanted).children]);
    datasetBox.value = wanted;
  }).catch((error) => { if (error.name !== "AbortError") errorBox.append(notice("warn", error.message)); });
  if (wanted) replace(datasetBox, h("option", { value: wanted, selected: true }, wanted));

  const request = () => ({ q: queryBox.value.trim() || "*", from: range.from, to: range.to,
    dataset: datasetBox.value ? datasetBox.value.split(",") : undefined });

  function addToQuery(fieldName, value, exclude = false) {
    queryBox.value = addTerm(queryBox.value.trim(), term(fieldName, value, exclude));
    run();
  }

  function showError(error) {
    const column = error.body && error.body.column;
    const parts = [h("strong", null, "The query was not run: "), error.message];
    if (column) {
      parts.push(h("pre", { class: "caret", "aria-hidden": "true" }, `${queryBox.value}\n${" ".repeat(column - 1)}^`));
      queryBox.setAttribute("aria-invalid", "true");
      queryBox.focus();
      queryBox.setSelectionRange(column - 1, column - 1);
    }
    replace(errorBox, notice("error", parts));
  }

  function showStats(answer, shown, aggregate) {
    const s = answer.stats || {};
    const parts = [
      aggregate ? `${num(shown)} result rows` : `${num(shown)} rows shown${shown >= LOG_LIMIT ? " (the newest; more may match)" : ""}`,
      `${num(s.rows_scanned)} rows scanned`,
      `${num(s.blocks_scanned)} blocks scanned, ${num(s.blocks_pruned)} pruned`,
      `${num(s.elapsed_ms, 1)} ms`,
    ];
    replace(statsLine, parts.join(" · "));
    if (s.partial) {
      errorBox.append(notice("warn", h("strong", null, "Partial result: "),
        `${num(s.blocks_missing)} blocks could not be read (the shared store did not answer in time). `,
        "The counts and rows below leave them out."));
    }
  }

  async function drawHistogram(req, signal) {
    const { step, stepMs } = stepFor(range.toMs - range.fromMs);
    const answer = await query({ ...req, q: `${filterOf(req.q)} | timechart ${step}`, limit: 10000 }, { signal });
    const counts = new Map(answer.rows.map((r) => [parseTime(r._time), r.count]));
    const first = Math.floor(range.fromMs / stepMs) * stepMs;
    const xs = [];
    const ys = [];
    for (let t = first; t < range.toMs; t += stepMs) {
      xs.push(t / 1000);
      ys.push(counts.get(t) || 0);
    }
    timeChart(histogram, xs, [{ label: "rows", values: ys }], {
      bars: true, height: 130, signal, range: [range.fromMs / 1000, range.toMs / 1000],
      label: `Histogram of matching rows per ${step}; drag across it to choose a time range`,
      emptyText: "No rows match in this range.",
      onSelect: (fromMs, toMs) => setRange(customRange(fromMs, toMs)),
    });
  }

  function setRange(next) {
    range = next;
    presetBox.value = range.preset;
    custom.hidden = range.preset !== "custom";
    fromBox.value = display(range.fromMs);
    toBox.value = display(range.toMs);
    run();
  }

  function remember() {
    ctx.setQuery({ q: queryBox.value.trim() === "*" ? null : queryBox.value.trim(), ...rangeParams(range),
      dataset: datasetBox.value || null, facet: picked || null });
  }

  let picked = ctx.query.get("facet") || "";
  let facetFields = [];
  async function run() {
    if (running) running.abort();
    const controller = new AbortController();
    running = controller;
    const signal = AbortSignal.any([ctx.signal, controller.signal]);
    if (range.preset !== "custom") range = rangeOf(new URLSearchParams({ range: range.preset }));
    remember();
    if (tailing) { stopTail(); }
    queryBox.removeAttribute("aria-invalid");
    replace(errorBox);
    replace(statsLine, "Searching…");
    results.setAttribute("aria-busy", "true");
    const req = request();
    const aggregate = isAggregation(req.q);
    try {
      const [answer] = await Promise.all([
        query({ ...req, limit: aggregate ? AGG_LIMIT : LOG_LIMIT }, { signal }),
        drawHistogram(req, signal).catch((error) => {
          if (error.name !== "AbortError" && !error.body?.column) replace(histogram, notice("warn", error.message));
        }),
      ]);
      // Stopped while the histogram was still coming (the query's answer had come): a newer run or
      // the live tail owns the results now, and must not be drawn over.
      if (signal.aborted) return;
      if (aggregate) {
        aggregation(results, answer.rows, { signal, height: 260, fill: fillFor(req.q, range) });
      } else {
        const table = logTable({ onTerm: addToQuery });
        table.set(answer.rows);
        replace(results, answer.rows.length ? table.el : h("p", { class: "muted" }, "No rows match."));
      }
      showStats(answer, answer.rows.length, aggregate);
      results.removeAttribute("aria-busy");
      facetFields = columnsOf(answer.rows);
      drawFacets(facets, req, facetOptions(signal));
    } catch (error) {
      if (error.name === "AbortError" || signal.aborted) return;
      if (error.status === 401) return;
      results.removeAttribute("aria-busy");
      replace(statsLine);
      replace(results);
      showError(error);
    }
  }

  function facetOptions(signal) {
    return {
      picked, fields: facetFields, signal, onTerm: (f, v) => addToQuery(f, v),
      onPick: (name) => {
        picked = name;
        remember();
        drawFacets(facets, request(), facetOptions(running ? AbortSignal.any([ctx.signal, running.signal]) : ctx.signal));
      },
    };
  }

  function stopTail() {
    tailing.abort();
    tailing = null;
    tailButton.setAttribute("aria-pressed", "false");
    replace(tailStatus);
  }

  tailButton.addEventListener("click", () => {
    if (tailing) { stopTail(); run(); return; }
    if (running) running.abort();
    tailing = new AbortController();
    const signal = AbortSignal.any([ctx.signal, tailing.signal]);
    tailButton.setAttribute("aria-pressed", "true");
    replace(errorBox);
    replace(statsLine, "Live tail: the newest rows as they arrive (the time range does not apply).");
    const req = request();
    follow(results, tailStatus, { q: req.q, dataset: datasetBox.value }, { onTerm: (f, v, x) => {
      stopTail(); addToQuery(f, v, x); }, signal }).catch((error) => {
      if (error.name === "AbortError" || signal.aborted) return;
      replace(tailStatus);
      tailButton.setAttribute("aria-pressed", "false");
      tailing = null;
      showError(error);
    });
  });

  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  queryBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); run(); }
  });
  presetBox.addEventListener("change", () => {
    if (presetBox.value === "custom") {
      custom.hidden = false;
      range = customRange(range.fromMs, range.toMs);
      fromBox.focus();
      remember();
    } else {
      setRange(rangeOf(new URLSearchParams({ range: presetBox.value })));
    }
  });
  const customChanged = () => {
    const fromMs = parseTime(fromBox.value);
    const toMs = parseTime(toBox.value);
    const ok = Number.isFinite(fromMs) && Number.isFinite(toMs) && fromMs < toMs;
    fromBox.setAttribute("aria-invalid", String(!ok));
    toBox.setAttribute("aria-invalid", String(!ok));
    if (ok) setRange(customRange(fromMs, toMs));
    else replace(errorBox, notice("error", "Enter From before To, as YYYY-MM-DD HH:MM:SS (UTC) or RFC 3339."));
  };
  fromBox.addEventListener("change", customChanged);
  toBox.addEventListener("change", customChanged);
  datasetBox.addEventListener("change", () => run());
  ctx.signal.addEventListener("abort", () => { if (running) running.abort(); if (tailing) tailing.abort(); });
  if (ctx.query.get("tail") === "1") tailButton.click();
  else await run();
}
