// Placeholder: this page is being built.
import { h, replace } from "../dom.js";

export async function render(main, ctx) {
  ctx.title("search");
  replace(main, h("h1", null, "search"), h("p", { class: "muted" }, "This page is being built."));
}
