// Facets of the search page: the top values of level, service, host and one field the user picks,
// each from `<filters> | top 10 <field>` over the same range and datasets.

import { query } from "./api.js";
import { field, h, num, replace, show } from "./dom.js";
import { filterOf, isFieldName } from "./querytext.js";

export const FACET_FIELDS = ["level", "service", "host"];
const TOP = 10;

/** Draw the facets into box. request: {q, from, to, dataset}; onTerm(field, value) adds a filter. */
export async function drawFacets(box, request, { picked, onPick, onTerm, fields, signal }) {
  const chosen = [...FACET_FIELDS, ...(picked && !FACET_FIELDS.includes(picked) ? [picked] : [])];
  const input = h("input", { value: picked || "", list: "facet-fields", placeholder: "e.g. dataset",
    autocomplete: "off" });
  const datalist = h("datalist", { id: "facet-fields" }, fields.map((f) => h("option", { value: f })));
  const form = h("form", { class: "facet" }, field("Facet field", input), datalist,
    h("button", { type: "submit" }, "Show top values"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!name || isFieldName(name)) onPick(name);
    else input.setAttribute("aria-invalid", "true");
  });
  const boxes = chosen.map((name) => h("section", { class: "facet", "aria-label": `Top values of ${name}` },
    h("h3", null, name), h("p", { class: "muted" }, "…")));
  replace(box, h("h2", { class: "skip" }, "Facets"), boxes, form);
  const filter = filterOf(request.q);
  await Promise.all(chosen.map(async (name, i) => {
    try {
      const answer = await query({ ...request, q: `${filter} | top ${TOP} ${name}`, limit: TOP }, { signal });
      const rows = answer.rows.filter((r) => r[name] !== null && r[name] !== undefined);
      replace(boxes[i], h("h3", null, name), rows.length ? h("ul", null, rows.map((r) => h("li", null,
        h("button", { type: "button", title: `Add ${name}:${show(r[name])} to the query`,
          on: { click: () => onTerm(name, show(r[name])) } }, show(r[name])),
        h("span", { class: "count" }, num(r.count))))) : h("p", { class: "muted" }, "No values."));
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(boxes[i], h("h3", null, name), h("p", { class: "muted" }, error.message));
    }
  }));
}
