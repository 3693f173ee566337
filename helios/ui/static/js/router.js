// The router: one table of pages, the header's navigation, login redirects, page lifetimes.
//
// HOW TO WRITE AND REGISTER A PAGE
//
//   1. Write js/pages/<name>.js exporting one function:
//
//        export async function render(main, ctx) { … }
//
//      `main` is the empty <main> element to fill (use h() from js/dom.js: text only, never
//      HTML strings). `ctx` holds:
//        ctx.params    the route's :parameters, e.g. {id: "…"} for /dashboards/:id
//        ctx.query     URLSearchParams of the address (the page's state: keep it there so a
//                      link reproduces the view)
//        ctx.setQuery(obj)   rewrite the address's parameters (history.replaceState; no redraw);
//                      a value of null/"" removes the parameter
//        ctx.navigate(path)  go to another page (pushState and draw it)
//        ctx.session   {name, role, can(permission)}: leave out what the role may not do
//        ctx.signal    an AbortSignal aborted when the user leaves the page: pass it to api()
//                      calls and stop timers/streams on its "abort" event
//        ctx.title(text)     the document title ("… · HeliosLogs")
//      Throwing from render() shows the error in the page (an ApiError shows its message).
//      Begin the page with an <h1>: the router moves focus to it (screen readers, keyboard).
//
//   2. Add a row to ROUTES below: {path, load, permission, nav}. `path` segments starting
//      with ":" are parameters; `load` is () => import("./pages/<name>.js") (modules load on
//      first visit); `permission` is a name of js/session.js PERMISSIONS the role must hold
//      (others see a "not allowed" page and no link); `nav` is the header link's label, if any.
//
//   3. If the path is new to the server, add it to PAGES in helios/api/ui.py (so a reload of
//      that address answers index.html), and give the page a test in tests/test_ui.py.

import { clearToken, token } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { loadSession } from "./session.js";

export const ROUTES = [
  { path: "/login", load: () => import("./pages/login.js"), public: true },
  { path: "/", load: () => import("./pages/search.js"), permission: "query", nav: "Search" },
  { path: "/dashboards", load: () => import("./pages/dashboards.js"), permission: "dashboards.read", nav: "Dashboards" },
  { path: "/dashboards/:id", load: () => import("./pages/dashboard.js"), permission: "dashboards.read" },
  { path: "/monitors", load: () => import("./pages/monitors.js"), permission: "monitors.read", nav: "Monitors" },
  { path: "/monitors/:id", load: () => import("./pages/monitor.js"), permission: "monitors.read" },
  { path: "/cluster", load: () => import("./pages/cluster.js"), permission: "cluster.read", nav: "Cluster" },
  { path: "/admin", load: () => import("./pages/admin.js"), permission: "users.admin", nav: "Admin" },
  { path: "/admin/:section", load: () => import("./pages/admin.js"), permission: "users.admin" },
];

let session = null;
let current = null; // {route, controller}
let drawing = 0;

function match(pathname) {
  const parts = pathname.replace(/\/+$/, "").split("/").slice(1);
  for (const route of ROUTES) {
    const want = route.path === "/" ? [] : route.path.split("/").slice(1);
    if (want.length !== parts.length && !(route.path === "/" && parts.length === 1 && parts[0] === "")) continue;
    const params = {};
    let ok = true;
    want.forEach((seg, i) => {
      if (seg.startsWith(":")) params[seg.slice(1)] = decodeURIComponent(parts[i]);
      else if (seg !== parts[i]) ok = false;
    });
    if (ok) return { route, params };
  }
  return null;
}

function header(route) {
  const top = document.getElementById("top");
  const links = session
    ? ROUTES.filter((r) => r.nav && session.can(r.permission)).map((r) => h("a", {
        href: r.path,
        "aria-current": route === r || (route && r.path !== "/" && route.path.startsWith(`${r.path}/`)) ? "page" : false,
      }, r.nav))
    : [];
  replace(top,
    h("a", { class: "brand", href: "/" }, "HeliosLogs"),
    h("nav", { "aria-label": "Main" }, links),
    session ? h("div", { class: "who" },
      h("span", { class: "muted" }, `${session.name} (${session.role})`), " ",
      h("button", { type: "button", class: "link", on: { click: logout } }, "Log out")) : null);
}

function logout() {
  clearToken();
  session = null;
  navigate("/login");
}

/** Go to path (with its ?query): pushState, then draw. */
export function navigate(path, { replace: replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  draw();
}

function setQuery(values) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(values)) {
    if (value === null || value === undefined || value === "") params.delete(key);
    else params.set(key, value);
  }
  const search = params.toString();
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}`);
}

function loginAddress() {
  const here = `${location.pathname}${location.search}`;
  return here === "/" || here.startsWith("/login") ? "/login" : `/login?next=${encodeURIComponent(here)}`;
}

/** Draw the page of the current address. */
export async function draw() {
  drawing += 1;
  const mine = drawing;
  const main = document.getElementById("main");
  // Busy until the page's first load is drawn: people with screen readers (and tests) can tell
  // a page still loading from a drawn one. A newer draw takes the attribute over.
  main.setAttribute("aria-busy", "true");
  try {
    await drawPage(main, mine);
  } finally {
    if (mine === drawing) main.removeAttribute("aria-busy");
  }
}

async function drawPage(main, mine) {
  if (current) current.controller.abort();
  const found = match(location.pathname);
  const controller = new AbortController();
  current = { route: found && found.route, controller };
  if (found && !found.route.public && !token()) {
    navigate(loginAddress(), { replace: true });
    return;
  }
  try {
    if (found && !found.route.public && !session) session = await loadSession();
  } catch (error) {
    if (mine !== drawing) return;
    if (!token()) { navigate(loginAddress(), { replace: true }); return; }
    header(null);
    replace(main, h("h1", null, "HeliosLogs"), notice("error", `Could not reach the node: ${error.message}`));
    return;
  }
  if (mine !== drawing) return;
  header(found && found.route);
  replace(main);
  if (!found) {
    replace(main, h("h1", { tabindex: "-1" }, "Not found"), h("p", null, "No page at this address. ",
      h("a", { href: "/" }, "Search")));
    return focusHeading(main);
  }
  const { route, params } = found;
  if (route.permission && !session.can(route.permission)) {
    replace(main, h("h1", { tabindex: "-1" }, "Not allowed"),
      notice("error", `The ${session.role} role may not see this page.`));
    document.title = "Not allowed · HeliosLogs";
    return focusHeading(main);
  }
  const ctx = {
    params,
    query: new URLSearchParams(location.search),
    setQuery,
    navigate,
    session,
    signal: controller.signal,
    title: (text) => { document.title = `${text} · HeliosLogs`; },
  };
  try {
    const module = await route.load();
    if (mine !== drawing) return;
    await module.render(main, ctx);
  } catch (error) {
    if (error.name === "AbortError" || mine !== drawing) return;
    if (error.status === 401) return; // the unauthorized handler has taken over
    main.append(notice("error", error.message));
    console.warn(error); // eslint-disable-line no-console
  }
  if (mine === drawing) focusHeading(main);
}

function focusHeading(main) {
  const heading = main.querySelector("h1");
  if (heading && !main.contains(document.activeElement)) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

/** Start: links inside the app navigate without reloading; back/forward redraw; 401 → login. */
export function start() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[href]");
    if (!link || link.target || link.hasAttribute("download") || event.defaultPrevented) return;
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const url = new URL(link.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/ui/")) return;
    event.preventDefault();
    navigate(`${url.pathname}${url.search}`);
  });
  window.addEventListener("popstate", draw);
  window.addEventListener("helios:unauthorized", () => {
    session = null;
    if (!location.pathname.startsWith("/login")) navigate(loginAddress(), { replace: true });
  });
  draw();
}

/** After a login: forget the old session and go on. */
export function loggedIn(next) {
  session = null;
  navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/", { replace: true });
}
