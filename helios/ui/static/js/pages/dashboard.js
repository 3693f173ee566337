// One dashboard (/dashboards/:id): its panels drawn over a time range, refreshed on an
// interval; editors may edit (js/dashboard_editor.js) and delete. /dashboards/new creates one.

import { api } from "../api.js";
import { button, confirmButton, field, h, notice, replace, select } from "../dom.js";
import { drawPanel, searchLink } from "../panels.js";
import { rangePicker } from "../rangepicker.js";
import { durationMs } from "../time.js";
import { editDashboard } from "../dashboard_editor.js";

const REFRESH = [["", "Off"], ["10s", "10 s"], ["30s", "30 s"], ["1m", "1 min"], ["5m", "5 min"], ["15m", "15 min"]];

export async function render(main, ctx) {
  const canEdit = ctx.session.can("dashboards.write");
  if (ctx.params.id === "new") {
    if (!canEdit) {
      replace(main, h("h1", null, "New dashboard"), notice("error", `The ${ctx.session.role} role may not make dashboards.`));
      return;
    }
    ctx.title("New dashboard");
    editDashboard(main, ctx, null);
    return;
  }
  const path = `/api/v1/dashboards/${encodeURIComponent(ctx.params.id)}`;
  const dashboard = await api("GET", path, undefined, { signal: ctx.signal });
  if (ctx.query.get("edit") === "1" && canEdit) {
    ctx.title(`Edit ${dashboard.title}`);
    editDashboard(main, ctx, dashboard);
    return;
  }
  view(main, ctx, dashboard, canEdit, path);
}

function view(main, ctx, dashboard, canEdit, path) {
  ctx.title(dashboard.title);
  const grid = h("div", { class: "panels" });
  let cycle = null;
  let timer = null;
  const picker = rangePicker(ctx, () => drawAll());
  const refreshBox = select(REFRESH, ctx.query.get("refresh") || "", { id: "refresh" });
  const status = h("span", { class: "muted", role: "status" });
  const actions = h("div", { class: "actions" }, button("Refresh now", () => drawAll()), status);
  if (canEdit) {
    actions.append(button("Edit", () => ctx.navigate(`/dashboards/${encodeURIComponent(dashboard.id)}?edit=1`)),
      confirmButton("Delete", "Delete this dashboard", async () => {
        try {
          await api("DELETE", `${path}?version=${dashboard.version}`);
          ctx.navigate("/dashboards");
        } catch (error) {
          main.append(notice("error", error.message));
        }
      }));
  }
  const bodies = dashboard.panels.map(() => h("div", { class: "panel-body" }));
  replace(grid, dashboard.panels.length ? dashboard.panels.map((panel, i) => h("section", {
    class: "panel", "aria-label": panel.title || `Panel ${i + 1}`, dataset: { type: panel.type } },
  h("h2", null, panel.title || `Panel ${i + 1}`), bodies[i],
  h("a", { class: "muted", href: searchLink(panel, picker.current()), dataset: { search: "1" } }, "Open in search")))
    : [h("p", { class: "muted" }, canEdit ? "No panels yet: Edit to add some." : "No panels.")]);
  replace(main, h("h1", null, dashboard.title),
    dashboard.description ? h("p", { class: "muted" }, dashboard.description) : null,
    h("div", { class: "controls" }, picker.el, field("Refresh every", refreshBox), actions), grid);

  function drawAll() {
    if (cycle) cycle.abort();
    cycle = new AbortController();
    const signal = AbortSignal.any([ctx.signal, cycle.signal]);
    const range = picker.current();
    grid.querySelectorAll("a[data-search]").forEach((a, i) => a.setAttribute("href", searchLink(dashboard.panels[i], range)));
    replace(status, "Loading…");
    Promise.all(dashboard.panels.map((panel, i) => drawPanel(bodies[i], panel, range, signal))).then(() => {
      if (!signal.aborted) replace(status, `Updated ${new Date().toISOString().slice(11, 19)} UTC`);
    });
  }
  function schedule() {
    if (timer) clearInterval(timer);
    timer = null;
    const every = durationMs(refreshBox.value);
    ctx.setQuery({ refresh: refreshBox.value || null });
    if (every) timer = setInterval(drawAll, every);
  }
  refreshBox.addEventListener("change", schedule);
  ctx.signal.addEventListener("abort", () => { if (timer) clearInterval(timer); if (cycle) cycle.abort(); });
  schedule();
  drawAll();
}
