// The login page: Username and Password → a JWT kept for this tab (js/api.js).
import { login } from "../api.js";
import { field, h, notice, replace } from "../dom.js";
import { loggedIn } from "../router.js";

export async function render(main, ctx) {
  ctx.title("Log in");
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const status = h("div", { class: "status" });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "login card", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in to HeliosLogs"),
    field("Username", username),
    field("Password", password),
    status,
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(status);
    try {
      await login(username.value, password.value);
      loggedIn(ctx.query.get("next"));
    } catch (error) {
      replace(status, notice("error", error.status === 401 ? "Wrong username or password." : error.message));
      password.select();
      submit.disabled = false;
    }
  });
  replace(main, form);
  username.focus();
}
