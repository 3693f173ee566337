// Admin: API tokens (for shippers and scripts). A new token is shown once, here; the node keeps
// only its hash. Revoking takes effect on every node at once.

import { api } from "../api.js";
import { button, confirmButton, field, h, notice, replace, select, table } from "../dom.js";
import { display } from "../time.js";

const ROLES = ["ingest", "viewer", "editor", "admin"];

export async function render(box, ctx) {
  const message = h("div");
  const list = h("div");
  const name = h("input", { required: true, maxlength: "128", placeholder: "e.g. vector on web-1" });
  const role = select(ROLES, "ingest");
  const days = h("input", { type: "number", min: "1", max: "3650", placeholder: "never", size: "6" });
  const form = h("form", { class: "card", "aria-label": "New API token" }, h("h2", null, "New API token"),
    h("div", { class: "inline" }, field("Token name", name), field("Role", role),
      field("Expires in (days)", days, "empty: no expiry")),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create token")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), role: role.value };
    if (days.value) body.expires_days = Number(days.value);
    try {
      const made = await api("POST", "/api/v1/tokens", body);
      const secret = h("div", { class: "secret", "aria-label": "The new token" }, made.token);
      replace(message, notice("info", h("strong", null, `Token ${made.name} created. `),
        "Copy it now: it is shown this once and cannot be read again.", secret,
        h("div", { class: "actions" }, button("Copy", async () => {
          try { await navigator.clipboard.writeText(made.token); } catch { /* the text is selectable */ }
        }))));
      name.value = "";
      days.value = "";
      await load();
    } catch (error) {
      replace(message, notice("error", error.message));
    }
  });
  replace(box, message, list, form);

  async function load() {
    const tokens = await api("GET", "/api/v1/tokens", undefined, { signal: ctx.signal });
    tokens.sort((a, b) => a.name.localeCompare(b.name));
    replace(list, tokens.length ? table(["Name", "Id", "Role", "Created (UTC)", "Expires (UTC)", "Actions"],
      tokens.map((t) => [t.name, h("code", null, t.id), t.role, `${display(t.created_at, true)} by ${t.created_by}`,
        t.expires_at ? display(t.expires_at, true) : "never",
        confirmButton("Revoke", `Revoke ${t.name}`, async () => {
          try {
            await api("DELETE", `/api/v1/tokens/${encodeURIComponent(t.id)}`);
            replace(message, notice("info", `Token ${t.name} revoked.`));
          } catch (error) {
            replace(message, notice("error", error.message));
          }
          await load();
        })]), { "aria-label": "API tokens" }) : h("p", { class: "muted" }, "No API tokens yet."));
  }
  await load();
}
