// The dashboards list (/dashboards): open, create (editors), delete (editors).

import { api } from "../api.js";
import { confirmButton, h, notice, replace, table } from "../dom.js";
import { display } from "../time.js";

export async function render(main, ctx) {
  ctx.title("Dashboards");
  const canEdit = ctx.session.can("dashboards.write");
  const list = h("div");
  replace(main, h("h1", null, "Dashboards"),
    canEdit ? h("div", { class: "actions" }, h("a", { href: "/dashboards/new", class: "button-link" }, "New dashboard")) : null,
    list);

  async function load() {
    const dashboards = await api("GET", "/api/v1/dashboards", undefined, { signal: ctx.signal });
    if (!dashboards.length) {
      replace(list, h("p", { class: "muted" }, canEdit ? "No dashboards yet: make one with New dashboard."
        : "No dashboards yet."));
      return;
    }
    dashboards.sort((a, b) => a.title.localeCompare(b.title));
    const columns = ["Title", "Panels", "Updated (UTC)", "By"];
    if (canEdit) columns.push("Actions");
    replace(list, table(columns, dashboards.map((d) => {
      const cells = [h("a", { href: `/dashboards/${encodeURIComponent(d.id)}` }, d.title), String(d.panels.length),
        display(d.updated_at, true), d.updated_by];
      if (canEdit) {
        cells.push(confirmButton("Delete", `Delete ${d.title}`, async () => {
          try {
            await api("DELETE", `/api/v1/dashboards/${encodeURIComponent(d.id)}?version=${d.version}`);
          } catch (error) {
            list.prepend(notice("error", error.message));
          }
          await load();
        }));
      }
      return cells;
    }), { "aria-label": "Dashboards" }));
  }
  await load();
}
