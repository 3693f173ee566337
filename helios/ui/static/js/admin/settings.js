// Admin: cluster settings (the default retention) and each dataset's own retention, with the
// datasets' size as this node sees them. Empty retention: keep data forever.

import { api } from "../api.js";
import { bytes, field, h, notice, num, replace, table } from "../dom.js";

function days(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

export async function render(box, ctx) {
  const message = h("div");
  const defaults = h("div");
  const list = h("div");
  replace(box, message, defaults, h("h2", null, "Datasets"), list);

  async function load() {
    const [settings, datasets] = await Promise.all([
      api("GET", "/api/v1/settings", undefined, { signal: ctx.signal }),
      api("GET", "/api/v1/datasets", undefined, { signal: ctx.signal }),
    ]);
    const retention = h("input", { type: "number", min: "1", max: "36500", placeholder: "forever", size: "8",
      value: settings.default_retention_days ?? "" });
    const form = h("form", { class: "card", "aria-label": "Settings" }, h("h2", null, "Cluster settings"),
      h("div", { class: "inline" }, field("Default retention (days)", retention, "for datasets without their own; empty: forever")),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save settings"),
        h("span", { class: "muted" }, `version ${settings.version}`)));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("PUT", "/api/v1/settings", { default_retention_days: days(retention), version: settings.version });
        replace(message, notice("info", "Settings saved."));
      } catch (error) {
        replace(message, notice("error", error.message));
      }
      await load();
    });
    replace(defaults, form);
    replace(list, datasets.length ? table(["Dataset", "Rows", "Size", "Partitions", "Blocks", "Retention (days)"],
      datasets.map((d) => {
        const own = (settings.datasets || {})[d.name];
        const input = h("input", { type: "number", min: "1", max: "36500", size: "6", placeholder: "default",
          value: own && own.retention_days !== null ? String(own.retention_days) : "",
          "aria-label": `Retention of ${d.name} (days)` });
        const save = h("button", { type: "submit" }, "Save");
        const cell = h("form", { class: "confirm" }, input, save);
        cell.addEventListener("submit", async (event) => {
          event.preventDefault();
          try {
            const body = { retention_days: days(input) };
            if (own) body.version = own.version;
            await api("PUT", `/api/v1/datasets/${encodeURIComponent(d.name)}`, body);
            replace(message, notice("info", `Retention of ${d.name} saved.`));
          } catch (error) {
            replace(message, notice("error", error.message));
          }
          await load();
        });
        return [d.name, num(d.rows), bytes(d.bytes), num(d.partitions), num(d.blocks),
          h("div", null, cell, h("small", { class: "muted" }, `in effect: ${d.retention_days ?? "forever"}`))];
      }), { "aria-label": "Datasets" }) : h("p", { class: "muted" }, "No datasets yet."));
  }
  await load();
}
