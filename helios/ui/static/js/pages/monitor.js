// One monitor (/monitors/:id): definition, live state, history of transitions; editors may
// edit (?edit=1), send a test notification and delete. /monitors/new creates one.

import { api } from "../api.js";
import { button, confirmButton, h, notice, num, replace, show, table } from "../dom.js";
import { monitorForm } from "../monitor_form.js";
import { display } from "../time.js";
import { conditionText, stateBadge } from "./monitors.js";

export async function render(main, ctx) {
  const canEdit = ctx.session.can("monitors.write");
  if (ctx.params.id === "new" || ctx.query.get("edit") === "1") {
    if (!canEdit) {
      replace(main, h("h1", null, "Monitor"), notice("error", `The ${ctx.session.role} role may not change monitors.`));
      return;
    }
    const monitor = ctx.params.id === "new" ? null
      : await api("GET", `/api/v1/monitors/${encodeURIComponent(ctx.params.id)}`, undefined, { signal: ctx.signal });
    ctx.title(monitor ? `Edit ${monitor.name}` : "New monitor");
    monitorForm(main, ctx, monitor);
    return;
  }
  const path = `/api/v1/monitors/${encodeURIComponent(ctx.params.id)}`;
  const [monitor, history] = await Promise.all([
    api("GET", path, undefined, { signal: ctx.signal }),
    api("GET", `${path}/history`, undefined, { signal: ctx.signal }),
  ]);
  ctx.title(monitor.name);
  const message = h("div");
  const actions = h("div", { class: "actions" });
  if (canEdit) {
    actions.append(button("Edit", () => ctx.navigate(`${location.pathname}?edit=1`)));
    if (monitor.webhook) {
      actions.append(button("Send a test notification", async () => {
        replace(message, notice("info", "Sending…"));
        try {
          const sent = await api("POST", `${path}/test`);
          replace(message, notice(sent.delivered ? "info" : "error", sent.delivered
            ? `Delivered (HTTP ${sent.status}).` : `Not delivered: ${show(sent.error) || `HTTP ${sent.status}`}`));
        } catch (error) {
          replace(message, notice("error", error.message));
        }
      }));
    }
    actions.append(confirmButton("Delete", "Delete this monitor", async () => {
      try {
        await api("DELETE", `${path}?version=${monitor.version}`);
        ctx.navigate("/monitors");
      } catch (error) {
        replace(message, notice("error", error.message));
      }
    }));
  }
  const facts = [
    ["State", stateBadge(monitor.state)],
    ["Query", h("code", null, monitor.query)],
    ["Datasets", Array.isArray(monitor.dataset) ? monitor.dataset.join(", ") : monitor.dataset || "all"],
    ["Condition", h("code", null, conditionText(monitor))],
    ["Window", monitor.window],
    ["Evaluated every", monitor.schedule],
    ["Must hold for", monitor.for || "—"],
    ["Repeat while firing", monitor.repeat || "—"],
    ["Webhook", monitor.webhook || "none"],
    ["Enabled", monitor.enabled ? "yes" : "no"],
    ["Last evaluated (UTC)", monitor.last_evaluated_at ? display(monitor.last_evaluated_at, true) : "not yet"],
    ["Last value", num(monitor.last_value)],
    ["Last error", monitor.last_error || "—"],
    ["Changed", `${display(monitor.updated_at, true)} by ${monitor.updated_by} (version ${monitor.version})`],
  ];
  replace(main, h("h1", null, monitor.name), actions, message,
    h("div", { class: "card" }, h("dl", { class: "kv" }, facts.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]))),
    h("h2", null, "History"),
    history.length ? table(["At (UTC)", "State", "Value", "Condition", "Window (UTC)", "Delivery", "Attempts", "Error"],
      history.map((t) => [display(t.at, true), stateBadge(t.state), num(t.value), `${t.op} ${t.threshold}`,
        `${display(t.window.from, true)} – ${display(t.window.to, true)}`, stateBadge(t.delivery), String(t.attempts),
        show(t.error)]), { "aria-label": "History" })
      : h("p", { class: "muted" }, "No transitions yet."),
    h("p", null, h("a", { href: "/monitors" }, "All monitors")));
}
