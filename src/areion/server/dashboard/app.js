// Areion's dashboard: one script, no framework, no build step. Every page view makes at
// most 3 API calls (usually one); everything shown is built with DOM nodes and text,
// never HTML from data, so a tool's result or a tenant's label cannot inject markup.
"use strict";

const KEY = "areion.dashboard.key";
const RANGES = [["1h", "Last hour"], ["24h", "Last day"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]];
const REFRESH_MS = 30000;
const state = { range: "24h", auto: true, timer: null, view: 0, calls: 0, by: "model" };

// -- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function usd(x) {
  if (x === null || x === undefined) return "—";
  const a = Math.abs(x);
  return "$" + x.toFixed(a >= 100 ? 2 : a >= 1 ? 4 : 6);
}
function num(x) { return x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US"); }
function compact(x) { return x === null || x === undefined ? "—" : Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(x); }
function pct(x) { return x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%"; }
function secs(x) { return x === null || x === undefined ? "—" : x < 1 ? (1000 * x).toFixed(0) + " ms" : x.toFixed(2) + " s"; }
function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—"; }
function bucketLabel(t, bucket) {
  const s = new Date(t * 1000).toISOString();
  return bucket === "day" ? s.slice(5, 10) : s.slice(5, 10) + " " + s.slice(11, 16);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  state.calls += 1;
  const key = sessionStorage.getItem(KEY) || "";
  const init = Object.assign({ headers: {} }, options || {});
  if (key) init.headers.authorization = "Bearer " + key;
  if (init.body) init.headers["content-type"] = "application/json";
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

function table(columns, rows, caption, empty) {
  const head = h("tr", {}, columns.map(([label, , cls]) => h("th", { scope: "col", class: cls }, label)));
  const body = rows.length
    ? rows.map((row) => h("tr", {}, columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row)))))
    : [h("tr", {}, h("td", { colspan: String(columns.length), class: "empty" }, empty || "nothing in this range"))];
  return h("table", {}, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body));
}

function card(label, value, id, detail) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: "value", id }, value), detail ? h("div", { class: "detail" }, detail) : null);
}

// Change the current view's parameters (in the hash, so a view can be linked to).
function setParams(changes) {
  const [path, search] = (location.hash.slice(1) || "/overview").split("?");
  const params = new URLSearchParams(search || "");
  for (const [k, v] of Object.entries(changes)) { if (v) params.set(k, v); else params.delete(k); }
  const query = params.toString();
  location.hash = "#" + path + (query ? "?" + query : "");
}

// `longest`: the last range offered (a view that reads the ledger itself offers a day).
function rangePicker(longest) {
  const last = RANGES.findIndex(([value]) => value === longest);
  const select = h("select", { id: "range", "aria-label": "Time range" },
    RANGES.map(([value, label], i) => h("option", { value, selected: value === state.range, disabled: last >= 0 && i > last }, label)));
  select.addEventListener("change", () => setParams({ range: select.value }));
  return h("label", { class: "control" }, "Range ", select);
}

function autoRefresh() {
  const box = h("input", { type: "checkbox", id: "autorefresh", checked: state.auto });
  box.addEventListener("change", () => { state.auto = box.checked; schedule(); });
  return h("label", { class: "control" }, box, " Auto-refresh (30 s)");
}

function swatch(color) {
  const node = h("span", { class: "swatch" });
  node.style.background = color; // CSSOM, which the page's CSP allows (a style attribute it would not)
  return node;
}

// A bar chart in SVG: one bar per point, stacked by series. No library, nothing fetched.
const COLORS = ["#2f6fdf", "#e07b00", "#1a9c5b", "#c2185b", "#6a4fb3", "#00838f", "#8d6e00", "#5d6d7e", "#999999"];
function barChart(points, names, title, format) {
  const width = 1200, height = 200, pad = 60;
  const totals = points.map((p) => names.reduce((s, n) => s + (p.values[n] || 0), 0));
  const max = Math.max(1e-12, ...totals);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const barW = points.length ? (width - pad) / points.length : 0;
  points.forEach((p, i) => {
    let y = height;
    names.forEach((n, k) => {
      const v = p.values[n] || 0;
      if (!v) return;
      const bh = (v / max) * (height - 10);
      y -= bh;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(pad + i * barW + 1));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(Math.max(1, barW - 2)));
      rect.setAttribute("height", String(bh));
      rect.setAttribute("fill", COLORS[k % COLORS.length]);
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${p.label} ${n}: ${format(v)}`;
      rect.append(tip);
      svg.append(rect);
    });
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", "0");
  axis.setAttribute("y", "12");
  axis.setAttribute("class", "axis");
  axis.textContent = format(max);
  svg.append(axis);
  if (points.length) {
    const ends = points.length > 1 ? [[0, "start"], [points.length - 1, "end"]] : [[0, "start"]];
    for (const [i, anchor] of ends) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", String(i === 0 ? pad : width));
      t.setAttribute("y", String(height + 16));
      t.setAttribute("text-anchor", anchor);
      t.setAttribute("class", "axis");
      t.textContent = points[i].label;
      svg.append(t);
    }
  }
  const legend = names.length > 1
    ? h("ul", { class: "legend" }, names.map((n, k) => h("li", {},
        swatch(COLORS[k % COLORS.length]), n || "(none)")))
    : null;
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend);
}

// -- pages ---------------------------------------------------------------------------

async function overview(page) {
  const data = await api(`/v1/dashboard/overview?range=${state.range}`);
  who(data.scope);
  const t = data.totals;
  const lat = t.latency_s;
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Overview"), rangePicker(), autoRefresh(),
      h("span", { class: "muted", id: "updated" }, "updated " + new Date().toISOString().slice(11, 19) + "Z")),
    h("section", { class: "cards", "aria-label": "Totals" },
      card("Spend in range", usd(t.cost_usd), "spend-range"),
      card("Calls", num(t.calls), "calls", `${t.requests_per_s.toFixed(4)} requests/s`),
      card("Latency p50/p95/p99", `${secs(lat.p50)} / ${secs(lat.p95)} / ${secs(lat.p99)}`, "latency"),
      card("Exact cache hits", pct(data.cache.exact.hit_rate), "cache-exact",
        `${num(data.cache.exact.hits)} hits, ${usd(data.cache.exact.saved_usd)} saved`),
      card("Semantic cache hits", pct(data.cache.semantic.hit_rate), "cache-semantic",
        `${num(data.cache.semantic.hits)} hits, ${usd(data.cache.semantic.saved_usd)} saved`),
      card("Solver answers", num(data.solver_answers), "solver"),
      card("Tokens in / out", `${compact(t.input_tokens)} / ${compact(t.output_tokens)}`, "tokens",
        `${num(t.input_tokens)} / ${num(t.output_tokens)}`)),
    barChart(data.series.map((p) => ({ label: bucketLabel(p.start, data.bucket), values: { cost: p.cost_usd } })),
      ["cost"], `Spend per ${data.bucket}`, usd),
    table([
      ["Tenant", (r) => r.tenant],
      ["Today", (r) => usd(r.day_usd), "n"],
      ["Day budget", (r) => r.day_budget_usd === null ? "none" : usd(r.day_budget_usd), "n"],
      ["Used", (r) => r.day_budget_usd ? pct(r.day_usd / r.day_budget_usd) : "—", "n"],
      ["This month", (r) => usd(r.month_usd), "n"],
      ["Month budget", (r) => r.month_budget_usd === null ? "none" : usd(r.month_budget_usd), "n"],
      ["Used", (r) => r.month_budget_usd ? pct(r.month_usd / r.month_budget_usd) : "—", "n"],
    ], data.budgets, "Spend today and this month (UTC) against budgets"),
    table([["Route", (r) => r.route], ["Model chosen", (r) => r.model], ["Calls", (r) => num(r.calls), "n"]],
      data.routes, "Route decisions"),
  );
  const p = data.process;
  if (p) {
    const errors = Object.entries(p.errors).map(([kind, e]) => ({ kind, ...e }));
    page.append(h("h2", {}, "This process since " + when(p.since)),
      h("section", { class: "cards" },
        card("TTFT p50 / p95 / p99", `${secs(p.ttft_s.p50)} / ${secs(p.ttft_s.p95)} / ${secs(p.ttft_s.p99)}`, "ttft"),
        card("Call duration p50 / p95 / p99", `${secs(p.duration_s.p50)} / ${secs(p.duration_s.p95)} / ${secs(p.duration_s.p99)}`),
        card("Cache seconds saved", Object.entries(p.cache_saved_s).map(([k, v]) => `${k}: ${v.toFixed(1)} s`).join(", ") || "0 s")),
      table([["Error kind", (r) => r.kind], ["Count", (r) => num(r.count), "n"], ["Rate", (r) => pct(r.rate), "n"]],
        errors, "Errors by kind", "none"),
      table([["Refusal", (r) => r[0]], ["Count", (r) => num(r[1]), "n"]], Object.entries(p.refusals), "Refusals", "none"),
      table([["Route reason", (r) => r[0]], ["Decisions", (r) => num(r[1]), "n"]], Object.entries(p.route_reasons),
        "Route decisions by reason"));
  } else {
    page.append(h("p", { class: "muted" }, "Errors, TTFT and route reasons are counted per process, not per tenant: an admin key sees them."));
  }
}

function csv(rows, columns) {
  const quote = (v) => { const s = v === null || v === undefined ? "" : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
  return [columns.join(","), ...rows.map((r) => columns.map((c) => quote(r[c])).join(","))].join("\n") + "\n";
}

// Dimensions the rollups do not keep: the spend page reads them from the ledger, over a day at most.
const LEDGER_ONLY = ["user"];

async function spend(page) {
  if (LEDGER_ONLY.includes(state.by) && !["1h", "24h"].includes(state.range)) state.range = "24h";
  const data = await api(`/v1/dashboard/spend?range=${state.range}&by=${state.by}`);
  const by = h("select", { id: "by", "aria-label": "Group by" },
    ["model", "tenant", "key", "route", "agent", "user"].map((v) => h("option", { value: v, selected: v === state.by }, v)));
  by.addEventListener("change", () => setParams(
    LEDGER_ONLY.includes(by.value) && !["1h", "24h"].includes(state.range) ? { by: by.value, range: "24h" } : { by: by.value }));
  const columns = [data.by, "calls", "input_tokens", "output_tokens", "cost_usd", "cache_hits", "saved_usd", "latency_p50_s", "latency_p95_s"];
  const download = h("button", { type: "button", id: "csv" }, "Download CSV");
  download.addEventListener("click", () => {
    const blob = new Blob([csv(data.data, columns)], { type: "text/csv" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `areion-spend-${data.by}-${data.range}.csv` });
    document.body.append(a); a.click(); a.remove();
  });
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Spend"), rangePicker(LEDGER_ONLY.includes(data.by) ? "24h" : null),
      h("label", { class: "control" }, "By ", by), download),
    h("section", { class: "cards" }, card("Spend in range", usd(data.total.cost_usd), "spend-total"),
      card("Calls", num(data.total.calls)), card("Saved by caches", usd(data.total.saved_usd))),
    barChart(data.series.map((p) => ({ label: bucketLabel(p.start, data.bucket), values: p.cost_usd })),
      data.series_names, data.series_names.join() === "all" ? `Spend per ${data.bucket}` : `Spend per ${data.bucket} by ${data.by}`, usd),
    table([
      [data.by, (r) => r[data.by] || "(none)"],
      ["Calls", (r) => num(r.calls), "n"],
      ["Input tokens", (r) => num(r.input_tokens), "n"],
      ["Output tokens", (r) => num(r.output_tokens), "n"],
      ["Cost", (r) => usd(r.cost_usd), "n"],
      ["Cache hits", (r) => num(r.cache_hits), "n"],
      ["Saved", (r) => usd(r.saved_usd), "n"],
      ["p50", (r) => secs(r.latency_p50_s), "n"],
      ["p95", (r) => secs(r.latency_p95_s), "n"],
    ], data.data, `Spend by ${data.by}`));
}

function runLink(r) {
  const tenant = r.tenant ? `?tenant=${encodeURIComponent(r.tenant)}` : "";
  return h("a", { href: `#/runs/${encodeURIComponent(r.id)}${tenant}` }, r.id);
}

async function tasks(page) {
  const data = await api(`/v1/dashboard/tasks?range=${state.range}`);
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Cost per task"), rangePicker()),
    table([
      ["Agent", (r) => r.agent],
      ["Finished", (r) => num(r.runs.finished), "n"],
      ["Failed", (r) => num(r.runs.failed), "n"],
      ["Paused", (r) => num(r.runs.paused), "n"],
      ["Running", (r) => num(r.runs.running), "n"],
      ["Success rate", (r) => { const d = r.runs.finished + r.runs.failed; return d ? pct(r.runs.finished / d) : "—"; }, "n"],
      ["Cost p50", (r) => usd(r.cost_usd.p50), "n"],
      ["Cost p95", (r) => usd(r.cost_usd.p95), "n"],
      ["Steps p50", (r) => num(r.steps.p50), "n"],
      ["Steps p95", (r) => num(r.steps.p95), "n"],
    ], data.data, "Per agent: finished runs' cost and steps"),
    table([
      ["Run", runLink], ...(data.costliest.some((r) => r.tenant) ? [["Tenant", (r) => r.tenant]] : []),
      ["Agent", (r) => r.agent], ["Status", (r) => r.status],
      ["Cost", (r) => usd(r.cost_usd), "n"], ["Steps", (r) => num(r.steps), "n"], ["Started", (r) => when(r.created)],
    ], data.costliest, "Most expensive runs"));
}

async function runs(page, params) {
  const query = new URLSearchParams();
  for (const name of ["status", "agent", "cursor", "limit"]) if (params.get(name)) query.set(name, params.get(name));
  const data = await api(`/v1/dashboard/runs?${query}`);
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) { if (v) next.set(k, v); else next.delete(k); }
    location.hash = `#/runs?${next}`;
  };
  const status = h("select", { id: "status", "aria-label": "Status" },
    ["", "running", "paused", "finished", "failed"].map((v) => h("option", { value: v, selected: v === (params.get("status") || "") }, v || "any status")));
  status.addEventListener("change", () => go({ status: status.value, cursor: "" }));
  const agents = new Set(data.agents);
  if (params.get("agent")) agents.add(params.get("agent"));
  const agent = h("select", { id: "agent", "aria-label": "Agent" },
    ["", ...agents].map((v) => h("option", { value: v, selected: v === (params.get("agent") || "") }, v || "any agent")));
  agent.addEventListener("change", () => go({ agent: agent.value, cursor: "" }));
  const showTenant = data.data.some((r) => r.tenant);
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Runs"), status, agent),
    table([
      ["Run", runLink], ...(showTenant ? [["Tenant", (r) => r.tenant]] : []),
      ["Status", (r) => h("span", { class: `status ${r.status}` }, r.status)], ["Agent", (r) => r.agent],
      ["Cost", (r) => usd(r.cost_usd), "n"], ["Steps", (r) => num(r.steps), "n"], ["Started", (r) => when(r.created)],
    ], data.data, "Newest first"),
    h("div", { class: "pager" },
      params.get("cursor") ? h("a", { href: "#/runs?" + new URLSearchParams([...params].filter(([k]) => k !== "cursor")), id: "first" }, "First page") : null,
      data.next_cursor ? h("a", { href: "#", id: "next", onclick: (e) => { e.preventDefault(); go({ cursor: data.next_cursor }); } }, "Next page") : null));
}

function pretty(text) {
  if (text === null || text === undefined) return "";
  try { return JSON.stringify(JSON.parse(text), null, 1); } catch (e) { return String(text); }
}

function content(message) {
  if (typeof message.content === "string") return message.content;
  if (message.tool_calls) return message.tool_calls.map((c) => `${c.function ? c.function.name : c.name}(${c.function ? c.function.arguments : ""})`).join("\n");
  return JSON.stringify(message.content);
}

// Every tool call of the run, from its transcript (a result is the tool message that
// answers it), with the store's record where there is one (approvals, side effects).
function toolCalls(data) {
  const records = new Map(data.tool_calls.map((c) => [c.call_id, c]));
  const results = new Map();
  for (const m of data.messages) {
    if (m.role === "tool") results.set(m.tool_call_id, typeof m.content === "string" ? m.content : JSON.stringify(m.content));
  }
  const out = [];
  for (const m of data.messages) {
    for (const c of m.tool_calls || []) {
      const record = records.get(c.id);
      const fn = c.function || c;
      out.push({
        call_id: c.id, name: fn.name, arguments: fn.arguments,
        result: results.has(c.id) ? results.get(c.id) : record ? record.result : null,
        reason: record ? record.reason : null,
        status: record ? record.status : results.has(c.id) ? "done" : "waiting",
      });
      records.delete(c.id);
    }
  }
  return out.concat([...records.values()]);
}

async function run(page, params, id) {
  const tenant = params.get("tenant");
  const suffix = tenant ? `?tenant=${encodeURIComponent(tenant)}` : "";
  const data = await api(`/v1/dashboard/runs/${encodeURIComponent(id)}${suffix}`);
  const view = state.view;
  const decide = async (call, approve) => {
    const reason = approve ? undefined : "rejected in the dashboard";
    const decided = await api(`/v1/dashboard/runs/${encodeURIComponent(id)}/decision${suffix}`,
      { method: "POST", body: JSON.stringify({ call_id: call.call_id, approve, ...(reason ? { reason } : {}) }) });
    // Follow the resumed run until it has moved on from the decision and stopped
    // running (or the page changes).
    for (let i = 0; decided.resumed && i < 240 && view === state.view; i++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      const now = await api(`/v1/dashboard/runs/${encodeURIComponent(id)}${suffix}`);
      if (now.status !== "running" && now.updated > decided.updated) break;
    }
    if (view === state.view) render();
  };
  const pending = data.pending_calls;
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Run ", h("code", {}, data.id)), h("a", { href: "#/runs" }, "All runs")),
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "run-status" }, h("span", { class: `status ${data.status}` }, data.status)),
      h("dt", {}, "Agent"), h("dd", {}, data.agent),
      h("dt", {}, "Cost"), h("dd", { id: "run-cost" }, usd(data.cost_usd)),
      h("dt", {}, "Steps"), h("dd", {}, num(data.steps)),
      h("dt", {}, "Tokens"), h("dd", {}, `${num(data.usage.prompt_tokens)} in / ${num(data.usage.completion_tokens)} out`),
      h("dt", {}, "Started"), h("dd", {}, when(data.created)),
      h("dt", {}, "Input"), h("dd", {}, data.input),
      data.output !== null ? [h("dt", {}, "Output"), h("dd", { id: "run-output" }, data.output)] : null,
      data.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, data.error)] : null,
      data.pause_reason ? [h("dt", {}, "Paused"), h("dd", {}, data.pause_reason)] : null),
    pending.length ? h("section", { class: "approvals", "aria-label": "Pending approvals" }, h("h2", {}, "Pending approvals"),
      pending.map((call) => h("div", { class: "approval" },
        h("code", {}, `${call.name}(${call.arguments})`),
        h("button", { type: "button", class: "approve", onclick: (e) => { e.target.disabled = true; decide(call, true).catch(fail); } }, "Approve"),
        h("button", { type: "button", class: "reject", onclick: (e) => { e.target.disabled = true; decide(call, false).catch(fail); } }, "Reject")))) : "",
    table([
      ["Tool", (r) => r.name], ["Arguments", (r) => h("pre", {}, pretty(r.arguments))],
      ["Result", (r) => h("pre", {}, r.result === null ? (r.reason || "") : pretty(r.result))], ["Status", (r) => r.status],
    ], toolCalls(data), "Tool calls"),
    table([
      ["Time", (r) => when(r.created)], ["Kind", (r) => r.kind], ["Model", (r) => r.model], ["Deployment", (r) => r.deployment],
      ["Tokens in", (r) => num(r.prompt_tokens), "n"], ["Tokens out", (r) => num(r.completion_tokens), "n"],
      ["Cost", (r) => usd(r.cost_usd), "n"], ["Latency", (r) => secs(r.latency_s), "n"], ["Cache", (r) => r.cache || "—"],
    ], data.model_calls, "Model calls and their cost"),
    h("h2", {}, "Steps"),
    h("ol", { class: "messages" }, data.messages.map((m) => h("li", {}, h("span", { class: "role" }, m.role), h("pre", {}, content(m))))),
    h("h2", {}, "Events"),
    h("ol", { class: "events" }, data.events.map((e) => h("li", {}, h("code", {}, e.kind), " ", JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => k !== "kind" && k !== "seq")))))));
}

async function limits(page) {
  const data = await api("/v1/dashboard/limits");
  const headroom = (limit, used) => (limit ? `${num(Math.max(0, limit - used))} of ${num(limit)}` : "unlimited");
  page.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Limits and lanes")),
    table([
      ["Tenant", (r) => r.tenant],
      ["Today", (r) => usd(r.day_usd), "n"], ["Day budget", (r) => r.day_budget_usd === null ? "none" : usd(r.day_budget_usd), "n"],
      ["This month", (r) => usd(r.month_usd), "n"], ["Month budget", (r) => r.month_budget_usd === null ? "none" : usd(r.month_budget_usd), "n"],
    ], data.budgets, "Budget windows (UTC day and month)"),
    table([
      ["Tenant", (r) => r.tenant],
      ["Requests, last minute", (r) => num(r.rpm_used), "n"], ["RPM headroom", (r) => headroom(r.rpm, r.rpm_used), "n"],
      ["Tokens, last minute", (r) => num(r.tpm_used), "n"], ["TPM headroom", (r) => headroom(r.tpm, r.tpm_used), "n"],
      ["Lane weight", (r) => r.weight, "n"],
    ], data.rates, "Rate limits (from the ledger's last minute)", "no tenant configured"));
  if (data.deployments) {
    page.append(
      table([
        ["Model group", (r) => r.group], ["Capacity", (r) => r.capacity === null ? "uncapped" : num(r.capacity), "n"],
        ["In flight", (r) => num(r.in_flight), "n"], ["Queued interactive", (r) => num(r.queued_interactive), "n"],
        ["Queued batch", (r) => num(r.queued_batch), "n"],
        ["Shed", (r) => Object.entries(r.shed).map(([k, v]) => `${k}: ${v}`).join(", ") || "0"],
      ], data.lanes, "Lanes: queue depth and shed calls"),
      table([
        ["Deployment", (r) => r.id], ["Group", (r) => r.group],
        ["Breaker", (r) => h("span", { class: `breaker ${r.breaker}` }, r.breaker)],
        ["In flight", (r) => num(r.in_flight), "n"], ["Max concurrency", (r) => r.max_concurrency === null ? "—" : num(r.max_concurrency), "n"],
      ], data.deployments, "Circuit breakers per deployment"),
      table([["Model", (r) => r.model], ["RPM", (r) => r.rpm ?? "—", "n"], ["TPM", (r) => r.tpm ?? "—", "n"]],
        data.model_limits, "Model-wide rate limits", "none configured"));
    const sc = data.scaling;
    page.append(sc
      ? h("section", { class: "cards", "aria-label": "Scaling" },
          card("Desired replicas", num(sc.desired_replicas), "desired-replicas", "areion_desired_replicas"),
          card("Forecast arrivals", `${sc.forecast_rate.toFixed(2)}/s`, null,
            `recent ${sc.recent_rate.toFixed(2)}/s, level ${sc.level.toFixed(2)}, ${sc.history_days} days of history`),
          card("Service time p95", secs(sc.service_time_p95_s)),
          card("In flight", num(sc.in_flight)))
      : h("p", { class: "muted" }, "Scaling signal off (scaling.enabled in the config)."));
  } else {
    page.append(h("p", { class: "muted" }, "Lanes and breakers are shared by every tenant: an admin key sees them."));
  }
}

function plain(x) {
  return x === null || x === undefined ? "—" : Math.abs(x) < 10 ? Number(x).toPrecision(3) : Number(x).toFixed(1);
}

// An estimate and its interval, each figure in the metric's own format.
function interval(e, format) {
  if (!e) return "—";
  const f = format || plain;
  return `${f(e.estimate)} [${f(e.low)}, ${f(e.high)}]`;
}
const whole = (x) => (x === null || x === undefined ? "—" : num(Math.round(x)));

async function experiments(page) {
  page.append(h("div", { class: "toolbar" }, h("h1", {}, "Experiments")));
  let data;
  try {
    data = await api("/v1/experiments");
  } catch (error) {
    if (error.status === 404) { page.append(h("p", { id: "no-experiments" }, "no experiments")); return; }
    if (error.status === 403) {
      page.append(h("p", { id: "no-experiments", class: "muted" }, "Experiments span every tenant: an admin key sees them."));
      return;
    }
    throw error;
  }
  if (!data.data.length) { page.append(h("p", { id: "no-experiments" }, "no experiments")); return; }
  for (const x of data.data) {
    page.append(h("section", { class: "experiment" },
      h("h2", {}, x.name, " ", h("span", { class: "verdict" }, x.verdict)),
      h("p", { class: "muted" }, `metric ${x.metric}, control ${x.control}, ${num(x.crossed_units)} crossed units`),
      table([
        ["Variant", (v) => v.name], ["Units", (v) => num(v.units), "n"], ["Tasks", (v) => num(v.tasks), "n"],
        ["Success rate", (v) => interval(v.success_rate, pct)], ["Cost / task", (v) => interval(v.cost_per_task_usd, usd)],
        ["Cost / success", (v) => interval(v.cost_per_success_usd, usd)], ["Tokens / task", (v) => interval(v.tokens_per_task, whole)],
        ["Latency p50", (v) => interval(v.latency_p50_s, secs)], ["Latency p95", (v) => interval(v.latency_p95_s, secs)],
        ["vs control", (v) => (v.vs_control || []).map((c) => `${c.metric} (${c.kind}): ${interval(c)}`).join("; ") || "—"],
        ["Stopped", (v) => v.stopped || "—"],
      ], x.variants, "Variants: estimate [95% interval]")));
  }
}

// -- shell -----------------------------------------------------------------------------

const PAGES = { overview, spend, tasks, runs, limits, experiments };

function who(scope) {
  if (!scope) return;
  document.getElementById("who").textContent = scope.tenant === null ? "all tenants" : `tenant ${scope.tenant}`;
}

function fail(error) {
  if (error instanceof ApiError && error.status === 401) { signOut(error.message); return; }
  const page = document.getElementById("page");
  page.append(h("p", { class: "error", role: "alert" }, String(error.message || error)));
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = null;
  const name = (location.hash.slice(2).split(/[/?]/)[0]) || "overview";
  if (state.auto && name === "overview") state.timer = setTimeout(render, REFRESH_MS);
}

async function render() {
  const view = ++state.view;
  const started = performance.now();
  state.calls = 0;
  const [path, search] = (location.hash.slice(1) || "/overview").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(search || "");
  const name = parts[0] || "overview";
  if (RANGES.some(([value]) => value === params.get("range"))) state.range = params.get("range");
  if (params.get("by")) state.by = params.get("by");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const fresh = h("div", { id: "page", "aria-live": "polite", "aria-busy": "true" });
  try {
    if (name === "runs" && parts[1]) await run(fresh, params, decodeURIComponent(parts[1]));
    else if (PAGES[name]) await PAGES[name](fresh, params);
    else fresh.append(h("p", {}, "No such page. ", h("a", { href: "#/overview" }, "Overview")));
  } catch (error) {
    if (view !== state.view) return;
    if (error instanceof ApiError && error.status === 401) { signOut(error.message); return; }
    fresh.append(h("p", { class: "error", role: "alert" }, String(error.message || error)));
  }
  if (view !== state.view) return;
  fresh.removeAttribute("aria-busy");
  document.getElementById("page").replaceWith(fresh);
  // What the bench and the tests read: how long this view took, and how many API calls.
  window.areionView = { page: name, ms: performance.now() - started, since_navigation_ms: performance.now(), calls: state.calls, seq: view };
  document.body.dataset.rendered = `${name}:${view}`;
  schedule();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearTimeout(state.timer);
  showSignIn(message || "");
}

function showSignIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("page").replaceChildren();
  const form = document.getElementById("signin");
  form.hidden = false;
  document.getElementById("signin-error").textContent = message;
  document.getElementById("key").focus();
}

function signedIn() {
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("key").value.trim();
    sessionStorage.setItem(KEY, key);
    document.getElementById("key").value = "";
    try {
      who((await api("/v1/dashboard/overview?range=1h")).scope);
    } catch (error) {
      sessionStorage.removeItem(KEY);
      document.getElementById("signin-error").textContent = error.message;
      return;
    }
    signedIn();
  });
  document.getElementById("signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", () => { if (sessionStorage.getItem(KEY) !== null) render(); });
  if (sessionStorage.getItem(KEY) !== null) signedIn();
  else showSignIn("");
});
