// The query text as the UI needs it: filters vs pipes, adding a field:value term, quoting.
//
// The split follows helios/query/parser.py's tokenizer: "…" and '…' are strings with \ escapes,
// and a | outside them starts a pipe. This is no second parser: the node checks every query
// and reports errors with their column; here only the top-level | and quotes matter.

const AGGREGATING = new Set(["stats", "top", "timechart"]);
const BARE = /^[^\s()|,:"'\\]+$/;
const KEYWORDS = new Set(["AND", "OR", "NOT"]);

/** "a b | stats count() | sort -n" → {filter: "a b", pipes: ["stats count()", "sort -n"]}. */
export function splitQuery(text) {
  const parts = [];
  let start = 0;
  let quote = null;
  for (let i = 0; i < text.length; i += 1) {
    const ch = text[i];
    if (quote) {
      if (ch === "\\") i += 1;
      else if (ch === quote) quote = null;
    } else if (ch === "\"" || ch === "'") {
      quote = ch;
    } else if (ch === "|") {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  const [filter, ...pipes] = parts.map((p) => p.trim());
  return { filter, pipes };
}

/** The pipe's name: "stats count() by (x)" → "stats". */
export function pipeName(pipe) {
  return (pipe.match(/^[A-Za-z_]+/) || [""])[0].toLowerCase();
}

/** Whether the query's answer is an aggregation (stats, top, timechart) rather than log rows. */
export function isAggregation(text) {
  return splitQuery(text).pipes.some((p) => AGGREGATING.has(pipeName(p)));
}

/** The filter part, "*" when empty. */
export function filterOf(text) {
  const { filter } = splitQuery(text);
  return filter || "*";
}

/** A value as a query literal: bare when the tokenizer reads it back whole, else "quoted". */
export function literal(value) {
  const text = String(value);
  if (BARE.test(text) && !KEYWORDS.has(text) && !/^[-!~<>*]/.test(text) && !text.endsWith("*")) return text;
  return quoted(text);
}

/** A "quoted string" of the query language (\\ and \" escaped). */
export function quoted(text) {
  return `"${String(text).replace(/\\/g, "\\\\").replace(/"/g, "\\\"")}"`;
}

/** Whether a field name can stand before ":" (a WORD of the tokenizer). */
export function isFieldName(name) {
  return BARE.test(name) && !name.startsWith("-") && !name.startsWith("!");
}

/** The term for a field's value: level:ERROR, -host:"web 1"; _msg becomes a "phrase". */
export function term(field, value, exclude = false) {
  const body = field === "_msg" ? quoted(value) : `${field}:${literal(value)}`;
  return `${exclude ? "-" : ""}${body}`;
}

/** The query with a term added to its filters (pipes kept): "a | stats …" + t → "a t | stats …". */
export function addTerm(text, newTerm) {
  const { filter, pipes } = splitQuery(text);
  const unquoted = (filter || "").replace(/"(\\.|[^"\\])*"|'(\\.|[^'\\])*'/g, "\"\"");
  const grouped = /(^|[\s)])OR([\s(]|$)/.test(unquoted) ? `(${filter})` : filter;
  const kept = filter && filter !== "*" ? `${grouped} ${newTerm}` : newTerm;
  return [kept, ...pipes].join(" | ");
}

/** The live-tail query of a search: its filters and its `fields` pipes (the tail takes no others). */
export function tailQuery(text) {
  const { filter, pipes } = splitQuery(text);
  const kept = pipes.filter((p) => pipeName(p) === "fields");
  return { q: [filter || "*", ...kept].join(" | "), dropped: pipes.length - kept.length };
}

/**
 * What a timechart pipe says about empty buckets: {stepText, zero}. zero is true when every
 * result counts or sums (no rows in a bucket means 0 there), false for avg/min/max/quantile
 * (no value). null when the query has no timechart.
 */
export function timechartOf(text) {
  const pipe = splitQuery(text).pipes.find((p) => pipeName(p) === "timechart");
  if (!pipe) return null;
  const stepText = (pipe.match(/^timechart\s+(\S+)/i) || [])[1] || "";
  const aggs = pipe.replace(/\bby\s*\(.*$/is, "");
  const funcs = [...aggs.matchAll(/([A-Za-z_]+)\s*\(/g)].map((m) => m[1].toLowerCase());
  return { stepText, zero: funcs.every((f) => ["count", "count_distinct", "sum"].includes(f)) };
}
