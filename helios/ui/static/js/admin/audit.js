// Admin: the audit log (every control-plane change: who, when, on which node, what changed), newest first.

import { api } from "../api.js";
import { field, h, replace, select, show, table } from "../dom.js";
import { display } from "../time.js";

const KINDS = [["", "all kinds"], "users", "tokens", "dashboards", "monitors", "settings", "datasets"];
const LIMIT = 200;

export async function render(box, ctx) {
  const kind = select(KINDS, ctx.query.get("kind") || "", { id: "audit-kind" });
  const list = h("div");
  replace(box, h("div", { class: "controls" }, field("Kind", kind)), list);
  async function load() {
    ctx.setQuery({ kind: kind.value || null });
    const params = new URLSearchParams({ limit: String(LIMIT) });
    if (kind.value) params.set("kind", kind.value);
    const entries = await api("GET", `/api/v1/audit?${params}`, undefined, { signal: ctx.signal });
    replace(list, entries.length ? table(["#", "At (UTC)", "By", "Node", "Action", "Kind", "Id", "Version", "Changed"],
      entries.map((e) => [String(e.seq), display(e.at, true), show(e.by), show(e.node), show(e.action), show(e.kind),
        show(e.id), show(e.version), (e.changed || []).join(", ")]), { "aria-label": "Audit log" })
      : h("p", { class: "muted" }, "No entries."));
  }
  kind.addEventListener("change", () => load());
  await load();
}
