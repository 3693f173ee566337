// The monitors list (/monitors): state (ok / firing / disabled / error), last evaluation and
// value, refreshed every REFRESH_MS; editors get New monitor.

import { api } from "../api.js";
import { h, num, replace, show, table } from "../dom.js";
import { display } from "../time.js";

const REFRESH_MS = 15000;

export function stateBadge(state) {
  return h("span", { class: ["badge", show(state)] }, show(state) || "unknown");
}

export function conditionText(monitor) {
  const c = monitor.condition || {};
  return `value ${c.op} ${c.threshold}`;
}

export async function render(main, ctx) {
  ctx.title("Monitors");
  const list = h("div");
  const status = h("p", { class: "muted", role: "status" });
  replace(main, h("h1", null, "Monitors"),
    ctx.session.can("monitors.write")
      ? h("div", { class: "actions" }, h("a", { href: "/monitors/new", class: "button-link" }, "New monitor")) : null,
    list, status);

  async function load() {
    const monitors = await api("GET", "/api/v1/monitors", undefined, { signal: ctx.signal });
    monitors.sort((a, b) => a.name.localeCompare(b.name));
    replace(list, monitors.length ? table(["Name", "State", "Condition", "Window / every", "Last evaluated (UTC)",
      "Last value"], monitors.map((m) => [
      h("a", { href: `/monitors/${encodeURIComponent(m.id)}` }, m.name),
      stateBadge(m.state),
      h("code", null, conditionText(m)),
      `${m.window} / ${m.schedule}`,
      m.last_evaluated_at ? display(m.last_evaluated_at, true) : "not yet",
      m.last_error ? h("span", { class: "muted", title: m.last_error }, "error") : num(m.last_value),
    ]), { "aria-label": "Monitors" }) : h("p", { class: "muted" }, "No monitors yet."));
    replace(status, `Updated ${new Date().toISOString().slice(11, 19)} UTC; refreshed every ${REFRESH_MS / 1000} s.`);
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
}
