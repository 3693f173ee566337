// Building the page: every element through h(), every piece of text through a text node.
//
// The rule this module makes structural: user data (log lines, field values, names, error
// messages) is only ever rendered as text. h() turns strings into text nodes and refuses
// attributes that could run code or style inline (on*, style, srcdoc, the HTML properties); the page's
// CSP (Trusted Types required, no inline script or style) makes any other path throw.

const REFUSED = /^(on|style$|srcdoc$|innerhtml$|outerhtml$)/i;

/**
 * h("button", {class: "primary", type: "button", on: {click}}, "Save") → <button>
 * props: class (string or array), text, on {event: fn}, dataset {k: v}, aria- and data- and other
 * attributes (strings; false/null/undefined leave them out, true sets them empty),
 * value/checked/selected/disabled/htmlFor as properties. Children: nodes, strings (→ text),
 * numbers, arrays (flattened), null/undefined/false (skipped).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === "class") {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (["value", "checked", "selected", "disabled", "htmlFor", "multiple", "required"].includes(key)) {
      el[key] = value;
    } else if (key === "for") {
      el.htmlFor = value;
    } else if (REFUSED.test(key)) {
      throw new Error(`h(): the attribute ${key} is not allowed`);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append children (see h()) to el; returns el. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Remove every child of el, then append the given ones. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let unique = 0;
/** A fresh id for label/input pairs. */
export function uid(prefix = "f") {
  unique += 1;
  return `${prefix}-${unique}`;
}

/** A labelled control: <div class=field><label for=id>Label</label>control</div>. */
export function field(label, control, hint) {
  if (!control.id) control.id = uid();
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = uid("hint");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "muted" }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** <select> from [[value, label], …] or [value, …]. */
export function select(options, value, props = {}) {
  return h("select", props, options.map((o) => {
    const [v, l] = Array.isArray(o) ? o : [o, o];
    return h("option", { value: v, selected: String(v) === String(value) }, l);
  }));
}

/** A table from column names and row arrays of cells (strings or nodes). */
export function table(columns, rows, props = {}) {
  return h("div", { class: "table-wrap" },
    h("table", props,
      h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", null, rows.map((cells) => h("tr", null, cells.map((c) => h("td", null, c)))))));
}

/** A message box: kind is "error", "warn" or "info"; errors and warnings are announced. */
export function notice(kind, ...children) {
  const role = kind === "info" ? "status" : "alert";
  return h("div", { class: ["notice", kind], role }, children);
}

/** Any value as display text: null → "", objects → JSON. */
export function show(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** A number with thousands separators (or the value as text if it is not a number). */
export function num(value, digits = 2) {
  if (typeof value !== "number" || !Number.isFinite(value)) return show(value);
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}

/** Bytes as B/KiB/MiB/GiB. */
export function bytes(value) {
  if (typeof value !== "number") return show(value);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${num(v, i ? 1 : 0)} ${units[i]}`;
}

/** A button; kind adds a class ("primary", "danger", "link"). */
export function button(label, onClick, kind, props = {}) {
  return h("button", { type: "button", class: kind, on: { click: onClick }, ...props }, label);
}

/** Two-step delete: the first click asks, the second (on "Confirm") acts. Returns the holder. */
export function confirmButton(label, confirmLabel, action) {
  const holder = h("span", { class: "confirm" });
  const ask = () => {
    const yes = button(confirmLabel, async () => { replace(holder, "…"); await action(); }, "danger");
    const no = button("Cancel", () => { replace(holder, first); first.focus(); });
    replace(holder, yes, " ", no);
    yes.focus();
  };
  const first = button(label, ask, "danger");
  return append(holder, [first]);
}
