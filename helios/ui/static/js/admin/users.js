// Admin: users (list, create, change role, set a password, delete). Passwords: 12 characters or more.

import { api } from "../api.js";
import { button, confirmButton, field, h, notice, replace, select, table } from "../dom.js";
import { display } from "../time.js";

const ROLES = ["viewer", "editor", "admin", "ingest"];

export async function render(box, ctx) {
  const message = h("div");
  const list = h("div");
  const username = h("input", { autocomplete: "off", required: true });
  const password = h("input", { type: "password", autocomplete: "new-password", required: true });
  const role = select(ROLES, "viewer");
  const form = h("form", { class: "card", "aria-label": "New user" }, h("h2", null, "New user"),
    h("div", { class: "inline" }, field("Username", username), field("Password", password, "12 characters or more"),
      field("Role", role)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create user")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/api/v1/users", { username: username.value.trim(), password: password.value, role: role.value });
      replace(message, notice("info", `User ${username.value.trim()} created.`));
      username.value = "";
      password.value = "";
      await load();
    } catch (error) {
      replace(message, notice("error", error.message));
    }
  });
  replace(box, message, list, form);

  async function change(user, body, done) {
    try {
      await api("PUT", `/api/v1/users/${encodeURIComponent(user.username)}`, { ...body, version: user.version });
      replace(message, notice("info", done));
    } catch (error) {
      replace(message, notice("error", error.message));
    }
    await load();
  }

  function passwordCell(user) {
    const holder = h("span", { class: "confirm" });
    const open = () => {
      const input = h("input", { type: "password", autocomplete: "new-password", "aria-label": `New password for ${user.username}` });
      replace(holder, input, button("Set", () => change(user, { password: input.value }, `Password of ${user.username} changed; their sessions have ended.`)),
        button("Cancel", () => replace(holder, first)));
      input.focus();
    };
    const first = button("Set password", open);
    return replace(holder, first);
  }

  async function load() {
    const users = await api("GET", "/api/v1/users", undefined, { signal: ctx.signal });
    users.sort((a, b) => a.username.localeCompare(b.username));
    replace(list, table(["Username", "Role", "Updated (UTC)", "Actions"], users.map((user) => {
      const roleBox = select(ROLES, user.role, { "aria-label": `Role of ${user.username}` });
      roleBox.addEventListener("change", () => change(user, { role: roleBox.value }, `${user.username} is now ${roleBox.value}.`));
      return [user.username, roleBox, `${display(user.updated_at, true)} by ${user.updated_by}`,
        h("span", { class: "actions" }, passwordCell(user), user.username === ctx.session.name ? null
          : confirmButton("Delete", `Delete ${user.username}`, async () => {
            try {
              await api("DELETE", `/api/v1/users/${encodeURIComponent(user.username)}?version=${user.version}`);
              replace(message, notice("info", `User ${user.username} deleted.`));
            } catch (error) {
              replace(message, notice("error", error.message));
            }
            await load();
          }))];
    }), { "aria-label": "Users" }));
  }
  await load();
}
