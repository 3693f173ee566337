// A time-range control: presets (15m, 1h, 24h, 7d) or a custom UTC range, kept in the address.

import { field, h, notice, replace, select } from "./dom.js";
import { PRESETS, customRange, display, parseTime, rangeOf, rangeParams } from "./time.js";

/**
 * rangePicker(ctx, onChange) → {el, current()}: current() re-resolves a preset against now.
 * onChange(range) runs after the user picks a range; the address is updated first.
 */
export function rangePicker(ctx, onChange, fallback) {
  let range = rangeOf(ctx.query, fallback);
  const presetBox = select(PRESETS, range.preset, { id: "range" });
  const fromBox = h("input", { id: "range-from", placeholder: "YYYY-MM-DD HH:MM:SS", value: display(range.fromMs) });
  const toBox = h("input", { id: "range-to", placeholder: "YYYY-MM-DD HH:MM:SS", value: display(range.toMs) });
  const message = h("div");
  const custom = h("div", { class: "custom-range", hidden: range.preset !== "custom" },
    field("From (UTC)", fromBox), field("To (UTC)", toBox));
  const el = h("div", { class: "inline" }, field("Time range", presetBox), custom, message);

  function set(next) {
    range = next;
    ctx.setQuery(rangeParams(range));
    onChange(range);
  }
  presetBox.addEventListener("change", () => {
    if (presetBox.value === "custom") {
      custom.hidden = false;
      range = customRange(range.fromMs, range.toMs);
      ctx.setQuery(rangeParams(range));
      fromBox.focus();
    } else {
      custom.hidden = true;
      set(rangeOf(new URLSearchParams({ range: presetBox.value })));
    }
  });
  const changed = () => {
    const fromMs = parseTime(fromBox.value);
    const toMs = parseTime(toBox.value);
    const ok = Number.isFinite(fromMs) && Number.isFinite(toMs) && fromMs < toMs;
    fromBox.setAttribute("aria-invalid", String(!ok));
    toBox.setAttribute("aria-invalid", String(!ok));
    replace(message, ok ? null : notice("error", "Enter From before To, as YYYY-MM-DD HH:MM:SS (UTC) or RFC 3339."));
    if (ok) set(customRange(fromMs, toMs));
  };
  fromBox.addEventListener("change", changed);
  toBox.addEventListener("change", changed);

  return {
    el,
    current() {
      if (range.preset !== "custom") range = rangeOf(new URLSearchParams({ range: range.preset }));
      return range;
    },
  };
}
