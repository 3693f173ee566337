// Creating and editing a dashboard: title, description, panels (type, query, datasets), each
// previewed over the chosen range. A change carries the version it was made from; when someone
// else saved first, the node answers 409 with the current version, shown here with the choice
// to load it (dropping these edits) or to save over it.

import { api } from "./api.js";
import { button, field, h, notice, replace, select } from "./dom.js";
import { PANEL_TYPES, drawPanel } from "./panels.js";
import { rangePicker } from "./rangepicker.js";

function datasetValue(text) {
  const names = text.split(",").map((s) => s.trim()).filter(Boolean);
  return names.length === 0 ? null : names.length === 1 ? names[0] : names;
}

/** Draw the editor into main; dashboard is null for a new one. */
export function editDashboard(main, ctx, dashboard) {
  const isNew = dashboard === null;
  let version = isNew ? null : dashboard.version;
  const titleBox = h("input", { id: "dash-title", value: isNew ? "" : dashboard.title, required: true, maxlength: "200" });
  const descBox = h("textarea", { id: "dash-desc", rows: "2", maxlength: "4096" });
  descBox.value = isNew ? "" : dashboard.description || "";
  const list = h("div", { class: "panel-list" });
  const message = h("div");
  const picker = rangePicker(ctx, () => editors.forEach((e) => e.preview()));
  const editors = [];

  function panelEditor(panel) {
    const titleInput = h("input", { value: panel.title || "", maxlength: "200" });
    const typeBox = select(PANEL_TYPES, panel.type || "timechart");
    const queryBox = h("textarea", { rows: "2", spellcheck: "false", maxlength: "4096" });
    queryBox.value = panel.query || "*";
    const datasetBox = h("input", { value: Array.isArray(panel.dataset) ? panel.dataset.join(", ") : panel.dataset || "",
      placeholder: "all datasets" });
    const previewBox = h("div", { class: "panel-body" });
    const legend = h("legend");
    const editor = {
      options: panel.options || {},
      el: null,
      doc: () => ({ title: titleInput.value, type: typeBox.value, query: queryBox.value.trim() || "*",
        dataset: datasetValue(datasetBox.value), options: editor.options }),
      preview: () => drawPanel(previewBox, editor.doc(), picker.current(), ctx.signal),
      number: (n) => replace(legend, `Panel ${n}`),
    };
    const move = (step) => {
      const i = editors.indexOf(editor);
      const j = i + step;
      if (j < 0 || j >= editors.length) return;
      [editors[i], editors[j]] = [editors[j], editors[i]];
      redraw();
    };
    editor.el = h("fieldset", { class: "panel-editor" }, legend,
      h("div", { class: "inline" }, field("Panel title", titleInput), field("Type", typeBox),
        field("Dataset", datasetBox, "comma-separated; empty: all")),
      h("div", { class: "inline" }, h("div", { class: "grow" }, field("Query", queryBox))),
      h("div", { class: "actions" }, button("Preview", () => editor.preview()),
        button("Move up", () => move(-1)), button("Move down", () => move(1)),
        button("Remove panel", () => { editors.splice(editors.indexOf(editor), 1); redraw(); }, "danger")),
      previewBox);
    return editor;
  }

  function redraw() {
    editors.forEach((e, i) => e.number(i + 1));
    replace(list, editors.map((e) => e.el));
  }

  const initial = isNew ? [{ title: "Rows over time", type: "timechart", query: "*" }] : dashboard.panels;
  initial.forEach((p) => editors.push(panelEditor(p)));
  redraw();

  async function save(overVersion) {
    replace(message);
    if (!titleBox.value.trim()) {
      titleBox.setAttribute("aria-invalid", "true");
      replace(message, notice("error", "A dashboard needs a title."));
      titleBox.focus();
      return;
    }
    titleBox.removeAttribute("aria-invalid");
    const body = { title: titleBox.value.trim(), description: descBox.value, panels: editors.map((e) => e.doc()) };
    try {
      const saved = isNew
        ? await api("POST", "/api/v1/dashboards", body)
        : await api("PUT", `/api/v1/dashboards/${encodeURIComponent(dashboard.id)}`,
          { ...body, version: overVersion ?? version });
      const range = new URLSearchParams(location.search);
      range.delete("edit");
      const rest = range.toString();
      ctx.navigate(`/dashboards/${encodeURIComponent(saved.id)}${rest ? `?${rest}` : ""}`, { replace: !isNew });
    } catch (error) {
      if (error.status === 409 && error.body.version !== undefined) {
        const current = error.body.version;
        replace(message, notice("error", h("strong", null, "Someone else saved this dashboard first. "),
          `You edited version ${version}; the dashboard is now at version ${current}. `,
          h("div", { class: "actions" },
            button(`Save over version ${current}`, () => save(current), "danger"),
            button(`Load version ${current} (drop my edits)`, () => ctx.navigate(location.pathname + location.search)))));
      } else {
        replace(message, notice("error", error.message));
      }
    }
  }

  const form = h("form", { class: "dashboard-editor" },
    h("h1", null, isNew ? "New dashboard" : `Edit ${dashboard.title}`),
    field("Title", titleBox), field("Description", descBox),
    picker.el,
    h("h2", null, "Panels"), list,
    h("div", { class: "actions" }, button("Add panel", () => {
      editors.push(panelEditor({ type: "timechart", query: "*" }));
      redraw();
      editors[editors.length - 1].el.querySelector("input").focus();
    })),
    message,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, isNew ? "Create dashboard" : "Save"),
      button("Cancel", () => ctx.navigate(isNew ? "/dashboards" : location.pathname))));
  form.addEventListener("submit", (event) => { event.preventDefault(); save(); });
  replace(main, form);
  titleBox.focus();
  editors.forEach((e) => e.preview());
}
