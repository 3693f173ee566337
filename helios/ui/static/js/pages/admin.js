// The admin pages (/admin, /admin/:section), admin role only: users, API tokens, settings and
// dataset retention, audit log. Each section is a module of js/admin/.

import { h, notice, replace } from "../dom.js";

const SECTIONS = [
  ["users", "Users", () => import("../admin/users.js")],
  ["tokens", "API tokens", () => import("../admin/tokens.js")],
  ["settings", "Settings and retention", () => import("../admin/settings.js")],
  ["audit", "Audit log", () => import("../admin/audit.js")],
];

export async function render(main, ctx) {
  const name = ctx.params.section || "users";
  const section = SECTIONS.find(([key]) => key === name);
  const tabs = h("nav", { class: "tabs", "aria-label": "Admin sections" }, SECTIONS.map(([key, label]) =>
    h("a", { href: `/admin/${key}`, "aria-current": key === name ? "page" : false }, label)));
  const body = h("div");
  replace(main, h("h1", null, section ? `Admin: ${section[1]}` : "Admin"), tabs, body);
  if (!section) {
    replace(body, notice("error", `No admin section ${name}.`));
    return;
  }
  ctx.title(section[1]);
  const module = await section[2]();
  await module.render(body, ctx);
}
