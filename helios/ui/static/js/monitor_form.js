// Creating and editing a monitor, with its query previewed: the value the evaluator would
// compare (the first number of the first row; a plain search counts its rows) over the last
// window, and whether the condition would hold. A new monitor's webhook secret is shown once.

import { api, query } from "./api.js";
import { button, field, h, notice, num, replace, select } from "./dom.js";
import { isAggregation } from "./querytext.js";
import { durationMs, iso } from "./time.js";

const OPS = [">", ">=", "<", "<=", "==", "!="];
const HOLDS = {
  ">": (a, b) => a > b, ">=": (a, b) => a >= b, "<": (a, b) => a < b, "<=": (a, b) => a <= b,
  "==": (a, b) => a === b, "!=": (a, b) => a !== b,
};

function firstNumber(rows) {
  if (!rows.length) return null;
  return Object.values(rows[0]).find((v) => typeof v === "number") ?? null;
}

function datasetValue(text) {
  const names = text.split(",").map((s) => s.trim()).filter(Boolean);
  return names.length === 0 ? null : names.length === 1 ? names[0] : names;
}

/** Draw the form into main; monitor is null for a new one. */
export function monitorForm(main, ctx, monitor) {
  const m = monitor || { name: "", query: "level:ERROR", window: "5m", schedule: "1m",
    condition: { op: ">", threshold: 0 }, enabled: true };
  const name = h("input", { value: m.name, required: true, maxlength: "200" });
  const text = h("textarea", { rows: "2", spellcheck: "false", maxlength: "4096" });
  text.value = m.query;
  const dataset = h("input", { value: Array.isArray(m.dataset) ? m.dataset.join(", ") : m.dataset || "",
    placeholder: "all datasets" });
  const windowBox = h("input", { value: m.window, size: "6" });
  const schedule = h("input", { value: m.schedule, size: "6" });
  const op = select(OPS, m.condition.op);
  const threshold = h("input", { type: "number", step: "any", value: String(m.condition.threshold), size: "8" });
  const webhook = h("input", { type: "url", value: m.webhook || "", placeholder: "https://…" });
  const enabled = h("input", { type: "checkbox", checked: m.enabled !== false });
  const holdFor = h("input", { value: m.for || "", size: "6", placeholder: "at once" });
  const repeat = h("input", { value: m.repeat || "", size: "6", placeholder: "never" });
  const preview = h("div", { class: "card", "aria-label": "Preview", role: "region" }, h("p", { class: "muted" }, "…"));
  const message = h("div");

  async function runPreview() {
    const windowMs = durationMs(windowBox.value) || 5 * 60000;
    const to = Date.now();
    const q = text.value.trim() || "*";
    const counted = isAggregation(q) ? q : `${q} | stats count() as count`;
    replace(preview, h("p", { class: "muted" }, "Running…"));
    try {
      const answer = await query({ q: counted, from: iso(to - windowMs), to: iso(to), limit: 10,
        dataset: datasetValue(dataset.value) ?? undefined }, { signal: ctx.signal });
      const value = firstNumber(answer.rows);
      const limit = Number(threshold.value);
      const hold = value !== null && HOLDS[op.value](value, limit);
      replace(preview, h("h2", null, "Preview"),
        h("p", null, `Value over the last ${windowBox.value || "5m"}: `, h("strong", { class: "preview-value" },
          value === null ? "no number" : num(value)), ` — the condition (value ${op.value} ${limit}) `,
        h("strong", null, hold ? "would fire" : "would not fire"), "."),
        h("p", { class: "muted" }, `The query as evaluated: ${counted}`));
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(preview, h("h2", null, "Preview"), notice("error", error.message));
    }
  }

  async function save() {
    replace(message);
    const body = {
      name: name.value.trim(), query: text.value.trim(), dataset: datasetValue(dataset.value),
      window: windowBox.value.trim(), schedule: schedule.value.trim(),
      condition: { op: op.value, threshold: Number(threshold.value) },
      webhook: webhook.value.trim() || null, enabled: enabled.checked,
      for: holdFor.value.trim() || null, repeat: repeat.value.trim() || null,
    };
    try {
      if (!monitor) {
        const made = await api("POST", "/api/v1/monitors", body);
        replace(main, h("h1", null, "Monitor created"),
          notice("info", `${made.name} is saved and will be evaluated every ${made.schedule}.`),
          h("h2", null, "Webhook secret"),
          h("p", null, "Notifications are signed with this secret. It is shown this once: keep it now."),
          h("div", { class: "secret", "aria-label": "Webhook secret" }, made.secret),
          h("p", null, h("a", { href: `/monitors/${encodeURIComponent(made.id)}` }, "Open the monitor"), " · ",
            h("a", { href: "/monitors" }, "All monitors")));
        return;
      }
      await api("PUT", `/api/v1/monitors/${encodeURIComponent(monitor.id)}`, { ...body, version: monitor.version });
      ctx.navigate(`/monitors/${encodeURIComponent(monitor.id)}`);
    } catch (error) {
      const current = error.status === 409 && error.body.version !== undefined
        ? ` It is now at version ${error.body.version}: ` : "";
      replace(message, notice("error", error.message, current
        ? h("span", null, current, button("Load it (drop my edits)", () => ctx.navigate(location.pathname + location.search))) : null));
    }
  }

  const form = h("form", null,
    h("h1", null, monitor ? `Edit ${monitor.name}` : "New monitor"),
    field("Name", name),
    field("Query", text, "a plain search counts its rows; stats/top give their first number"),
    h("div", { class: "inline" },
      field("Dataset", dataset, "comma-separated; empty: all"),
      field("Window", windowBox, "e.g. 5m"), field("Evaluate every", schedule, "at least 10s"),
      field("Condition", op), field("Threshold", threshold)),
    h("div", { class: "inline" },
      field("Webhook URL", webhook, "optional"), field("Must hold for", holdFor, "optional, e.g. 2m"),
      field("Repeat while firing", repeat, "optional, e.g. 1h"),
      h("div", { class: "field" }, h("label", { for: "mon-enabled" }, "Enabled"), enabled)),
    h("div", { class: "actions" }, button("Preview", runPreview)),
    preview, message,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, monitor ? "Save" : "Create monitor"),
      button("Cancel", () => ctx.navigate(monitor ? location.pathname : "/monitors"))));
  enabled.id = "mon-enabled";
  form.addEventListener("submit", (event) => { event.preventDefault(); save(); });
  replace(main, form);
  name.focus();
  runPreview();
}
