// Live tail on the search page: follows GET /api/v1/tail (server-sent events) for the query's
// filters, newest rows on top.
//
// EventSource cannot send an Authorization header, so the stream is read with fetch() and the
// events are parsed here (blank-line separated; "data:" lines, "event:" names, ":" comments).
// Scrolling the rows away from the top pauses the view: new rows wait (at most MAX_WAITING)
// until the reader scrolls back up or asks for them. The page keeps at most MAX_ROWS rows.

import { openStream } from "./api.js";
import { button, h, notice, num, replace } from "./dom.js";
import { tailQuery } from "./querytext.js";
import { logTable } from "./results.js";

export const MAX_ROWS = 1000;
const MAX_WAITING = 1000;
const BACKFILL = 100;
const MAX_EVENT_CHARS = 1 << 20; // one row of the node is far below this; a longer event is an error

/** Parse SSE text: returns {events: [{event, data}], rest} (rest: an unfinished event). */
export function parseEvents(text) {
  const events = [];
  const blocks = text.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message";
    const data = [];
    let comment = false;
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) comment = true;
      else if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) events.push({ event, data: data.join("\n") });
    else if (comment) events.push({ event: "comment", data: "" });
  }
  return { events, rest };
}

/**
 * Start following. box: where the rows go; status: where the state is told.
 * request: {q, dataset}; onTerm as for logTable; signal: stops the tail. Returns a promise
 * that settles when the stream ends.
 */
export async function follow(box, status, request, { onTerm, signal }) {
  const { q, dropped: droppedPipes } = tailQuery(request.q);
  const rows = logTable({ onTerm, sides: ["level", "service", "host"] });
  const waiting = [];
  let skipped = 0;
  let dropped = 0;
  let received = 0;
  const note = h("div", { class: "tailbar", role: "status" });
  const pipesNote = droppedPipes
    ? notice("info", "Live tail follows the query's filters (and fields); its other pipes are left out.") : null;
  replace(box, pipesNote, note, rows.el);

  const paused = () => rows.el.scrollTop > 4;
  const tell = (text) => {
    const parts = [h("span", null, text)];
    if (waiting.length || skipped) {
      parts.push(button(`Show ${num(waiting.length)} new rows`, flush));
      if (skipped) parts.push(h("span", { class: "muted" }, `${num(skipped)} more skipped while paused`));
    }
    if (dropped) parts.push(h("span", { class: "muted" }, `${num(dropped)} rows dropped by the node (slow reader)`));
    replace(note, parts);
  };
  const state = () => `Following: ${num(received)} rows received${paused() ? " · paused while scrolled" : ""}`;
  function flush() {
    rows.prepend(waiting.splice(0), MAX_ROWS);
    skipped = 0;
    rows.el.scrollTop = 0;
    tell(state());
  }
  rows.el.addEventListener("scroll", () => {
    if (!paused() && waiting.length) flush();
    else tell(state());
  });

  const params = new URLSearchParams({ q, backfill: String(BACKFILL) });
  if (request.dataset) params.set("dataset", request.dataset);
  replace(status, "Connecting…");
  tell("Connecting…");
  const response = await openStream(`/api/v1/tail?${params}`, { signal });
  const reader = response.body.getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  const decoder = new TextDecoder();
  let buffer = "";
  replace(status, "Live");
  tell(state());
  box.dataset.live = "connected";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const { events, rest } = parseEvents(buffer);
      if (rest.length > MAX_EVENT_CHARS) throw new Error("the node sent an event larger than 1 MiB");
      buffer = rest;
      const batch = [];
      for (const { event, data } of events) {
        if (event === "message") batch.push(JSON.parse(data));
        else if (event === "dropped") dropped += JSON.parse(data).dropped || 0;
      }
      if (!batch.length && !events.length) continue;
      received += batch.length;
      if (paused()) {
        waiting.push(...batch);
        if (waiting.length > MAX_WAITING) skipped += waiting.splice(0, waiting.length - MAX_WAITING).length;
      } else if (batch.length) {
        rows.prepend(batch, MAX_ROWS);
      }
      tell(state());
    }
  } catch (error) {
    if (error.name === "AbortError" || signal.aborted) return;
    throw error;
  } finally {
    delete box.dataset.live;
  }
  if (!signal.aborted) tell(`The node ended the stream after ${num(received)} rows.`);
}
