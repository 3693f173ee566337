// Placeholder: this page is being built.
import { h, replace } from "../dom.js";

export async function render(main, ctx) {
  ctx.title("monitor");
  replace(main, h("h1", null, "monitor"), h("p", { class: "muted" }, "This page is being built."));
}
