// Time ranges of searches and dashboards, shown and entered in UTC.
//
// In the address a range is either a preset (?range=15m|1h|24h|7d, relative to now when the
// page draws) or custom (?from=…&to=…, RFC 3339: what the node's monitor links carry).

const UNIT_MS = { s: 1e3, m: 6e4, h: 36e5, d: 864e5 };
export const PRESETS = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
  ["custom", "Custom range"],
];
export const DEFAULT_PRESET = "1h";
// Histogram steps: the smallest one giving at most MAX_BUCKETS buckets is used.
const STEPS = ["1s", "2s", "5s", "10s", "15s", "30s", "1m", "2m", "5m", "10m", "15m", "30m", "1h", "2h", "3h",
  "6h", "12h", "1d", "2d", "7d", "30d", "365d"];
const MAX_BUCKETS = 120;

/** "15m" → 900000; null when not a duration. */
export function durationMs(text) {
  const match = /^(\d+(?:\.\d+)?)([smhd])$/.exec(String(text || "").trim());
  return match ? Number(match[1]) * UNIT_MS[match[2]] : null;
}

/** RFC 3339 (any number of fraction digits) or "YYYY-MM-DD[ HH:MM[:SS]]" (UTC) → ms; NaN if neither. */
export function parseTime(text) {
  let value = String(text || "").trim();
  if (!value) return NaN;
  if (/^\d+$/.test(value)) return Number(value.length > 13 ? BigInt(value) / 1000000n : BigInt(value));
  value = value.replace(" ", "T");
  if (/^\d{4}-\d\d-\d\d$/.test(value)) value += "T00:00";
  value = value.replace(/(\.\d{3})\d+/, "$1");
  if (!/(Z|[+-]\d\d:?\d\d)$/i.test(value)) value += "Z";
  return Date.parse(value);
}

/** ms → "2023-11-14T22:13:20.000Z". */
export function iso(ms) {
  return new Date(ms).toISOString();
}

/**
 * ms or RFC 3339 text → "2023-11-14 22:13:20" (UTC). Fractions of a second are kept when the
 * text has them (log rows), unless seconds is true (times of events: last pull, updated at).
 */
export function display(value, seconds = false) {
  if (typeof value === "number") return iso(value).replace("T", " ").replace(/\.\d+Z$|Z$/, "");
  const text = String(value || "").replace("T", " ").replace(/Z$/, "");
  return seconds ? text.replace(/\.\d+$/, "") : text.replace(/\.0+$/, "");
}

/** The range a page's address names: {preset, fromMs, toMs, from, to} (from/to RFC 3339). */
export function rangeOf(params, fallback = DEFAULT_PRESET) {
  const from = params.get("from");
  const to = params.get("to");
  const preset = params.get("range");
  if (!preset && from) {
    const fromMs = parseTime(from);
    const toMs = to ? parseTime(to) : Date.now();
    if (Number.isFinite(fromMs) && Number.isFinite(toMs) && fromMs < toMs) {
      return { preset: "custom", fromMs, toMs, from: iso(fromMs), to: iso(toMs) };
    }
  }
  const chosen = durationMs(preset) ? preset : fallback;
  const toMs = Date.now();
  const fromMs = toMs - durationMs(chosen);
  return { preset: chosen, fromMs, toMs, from: iso(fromMs), to: iso(toMs) };
}

/** The address parameters of a range: {range} for a preset, {from, to} for a custom one. */
export function rangeParams(range) {
  return range.preset === "custom" ? { range: null, from: iso(range.fromMs), to: iso(range.toMs) }
    : { range: range.preset, from: null, to: null };
}

/** A custom range (ms) → the same shape as rangeOf. */
export function customRange(fromMs, toMs) {
  return { preset: "custom", fromMs, toMs, from: iso(fromMs), to: iso(toMs) };
}

/** The histogram step for a span: {step: "5m", stepMs}. */
export function stepFor(spanMs) {
  for (const step of STEPS) {
    if (spanMs / durationMs(step) <= MAX_BUCKETS) return { step, stepMs: durationMs(step) };
  }
  const last = STEPS[STEPS.length - 1];
  return { step: last, stepMs: durationMs(last) };
}
