// The cluster page (/cluster): this node, its store, the leader of each job, sync status
// (pending uploads, lag), jobs, health, the local cache, and highlights of /metrics.
// Refreshed every REFRESH_MS while open.

import { api, apiText } from "../api.js";
import { button, bytes, field, h, notice, num, replace, show, table } from "../dom.js";
import { display } from "../time.js";

const REFRESH_MS = 5000;
const HIGHLIGHTS = [
  ["helios_ingested_rows_total", "Rows ingested"],
  ["helios_ingest_requests_total", "Ingest requests"],
  ["helios_queries_total", "Queries"],
  ["helios_queries_running", "Queries running"],
  ["helios_queries_waiting", "Queries waiting"],
  ["helios_memtable_rows", "Rows not yet in blocks"],
  ["helios_flushes_total", "Flushes"],
  ["helios_compactions_total", "Compactions"],
  ["helios_tail_streams", "Live tails open"],
  ["helios_monitors_firing", "Monitors firing"],
  ["helios_login_failures_total", "Failed logins"],
  ["helios_unhealthy_subjects", "Unhealthy subjects"],
];

/** Prometheus text → [{name, labels, value}] (comments and malformed lines skipped). */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line.trim());
    if (match) out.push({ name: match[1], labels: match[2] || "", value: Number(match[3]) });
  }
  return out;
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

function card(title, ...body) {
  return h("section", { class: "card", "aria-label": title }, h("h2", null, title), body);
}

const when = (value) => (value ? display(value, true) : "never");

/** The failing tasks and quarantined objects of helios/supervisor.py Health, if any. */
function problems(health) {
  const list = [...(health.problems || []), ...(health.quarantined || [])];
  if (!list.length) return null;
  return h("section", { "aria-label": "Problems" }, h("h2", null, "Problems"),
    table(["Task", "Subject", "Kind", "Error", "Since (UTC)", "Count", "Quarantined"], list.map((p) => [
      show(p.task), show(p.subject), show(p.kind), show(p.error), when(p.since), num(p.count), p.quarantined ? "yes" : "no"])));
}

export async function render(main, ctx) {
  ctx.title("Cluster");
  const body = h("div");
  const status = h("span", { class: "muted", role: "status" });
  const filter = h("input", { id: "metric-filter", placeholder: "e.g. tail", autocomplete: "off" });
  const all = h("div");
  let metrics = [];
  replace(main, h("h1", null, "Cluster"), h("div", { class: "actions" }, button("Refresh", () => load()), status), body,
    h("details", { class: "help" }, h("summary", null, "All metrics"), field("Filter metrics", filter), all));

  function drawAll() {
    const needle = filter.value.trim().toLowerCase();
    const rows = metrics.filter((m) => !needle || `${m.name}${m.labels}`.toLowerCase().includes(needle));
    replace(all, table(["Metric", "Value"], rows.map((m) => [h("code", null, `${m.name}${m.labels}`), num(m.value)]),
      { "aria-label": "All metrics" }));
  }
  filter.addEventListener("input", drawAll);

  async function load() {
    const [info, text] = await Promise.all([
      api("GET", "/api/v1/cluster", undefined, { signal: ctx.signal }),
      apiText("/metrics", { signal: ctx.signal }),
    ]);
    metrics = parseMetrics(text);
    const byName = new Map(metrics.filter((m) => !m.labels).map((m) => [m.name, m.value]));
    const leaders = info.leaders || {};
    const sync = info.sync;
    const health = info.health || {};
    const cache = info.cache || {};
    const jobs = info.jobs || {};
    replace(body,
      health.healthy === false ? notice("warn", h("strong", null, "This node is degraded: "),
        "some of its work is failing (see Problems below).") : null,
      h("div", { class: "cards" },
        card("This node", kv([
          ["Node id", h("code", null, info.node_id)],
          ["Shared store", info.shared_store ? h("code", null, info.shared_store) : "none (a single node)"],
          ["Control plane", `${num(info.control?.entries)} entries${info.control?.joined ? "" : " (not joined)"}`],
          ["Control pulled", when(info.control?.last_pull)],
          ["Health", health.healthy === false ? "degraded" : "healthy"],
          ["Quarantined", num((health.quarantined || []).length)],
        ])),
        card("Leaders", kv(["compaction", "retention", "monitors"].map((job) => [job,
          leaders[job] ? h("span", null, h("code", null, leaders[job]), leaders[job] === info.node_id ? " (this node)" : "")
            : "none"]))),
        card("Sync with the store", sync ? kv([
          ["Pending uploads", num(sync.pending_uploads)],
          ["Lag", sync.lag_seconds === null || sync.lag_seconds === undefined ? "—" : `${num(sync.lag_seconds, 1)} s`],
          ["Last upload", when(sync.last_upload)],
          ["Last pull", when(sync.last_pull)],
          ["Blocks uploaded", num(sync.uploaded_blocks)],
          ["Blocks pulled", num(sync.pulled_blocks)],
        ]) : h("p", { class: "muted" }, "No shared store: nothing to sync.")),
        card("Jobs", kv([
          ["Compactions", num(jobs.compactions)],
          ["Blocks compacted", num(jobs.compacted_blocks)],
          ["Last compaction", when(jobs.last_compaction)],
          ["Last retention pass", when(jobs.last_retention)],
          ["Partitions dropped", num(jobs.dropped_partitions)],
        ])),
        card("Local cache", kv([
          ["Bytes", `${bytes(cache.bytes)}${cache.capacity_bytes ? ` of ${bytes(cache.capacity_bytes)}` : ""}`],
          ["Resident blocks", num(cache.resident_blocks)],
          ["Hits / misses", `${num(cache.hits)} / ${num(cache.misses)}`],
          ["Fetched", bytes(cache.fetched_bytes)],
          ["Evicted", bytes(cache.evicted_bytes)],
        ])),
        card("Metrics", kv(HIGHLIGHTS.filter(([name]) => byName.has(name))
          .map(([name, label]) => [label, num(byName.get(name))])))),
      problems(health));
    drawAll();
    replace(status, `Updated ${new Date().toISOString().slice(11, 19)} UTC; refreshed every ${REFRESH_MS / 1000} s.`);
  }
  await load();
  const timer = setInterval(() => load().catch((error) => {
    if (error.name !== "AbortError") replace(status, `Could not refresh: ${error.message}`);
  }), REFRESH_MS);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));
}
