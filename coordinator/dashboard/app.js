// Parcelo dashboard: plain JavaScript over the JSON API (/api/v1), no library, no build step.
// Views by path: "/" jobs, "/jobs/ID" one job (stats, throughput, errors, the range map),
// "/workers" the worker registry. Each view polls the API while it is shown.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "parcelo-token";
const app = document.getElementById("app");
const statusLine = document.getElementById("status-line");

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

let tokenWanted = null; // a promise resolved when the user gives a token

function askToken() {
  if (!tokenWanted) {
    const form = document.getElementById("token-form");
    form.hidden = false;
    tokenWanted = new Promise((resolve) => {
      form.onsubmit = (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
        form.hidden = true;
        tokenWanted = null;
        resolve();
      };
    });
  }
  return tokenWanted;
}

async function api(path, options = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    if (response.status === 401) {
      await askToken();
      continue;
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data.code || "UNKNOWN", data.message || response.statusText);
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    return data;
  }
}

// -- formatting ---------------------------------------------------------------------------------

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};

const statusName = (value, prefix) => String(value || "").replace(prefix, "").toLowerCase();
const jobStatus = (job) => statusName(job.status, "JOB_STATUS_");
const big = (text) => BigInt(text || "0");
const seconds = (ts) => (ts ? Date.parse(ts) / 1000 : 0);

function compact(value) {
  const units = [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]];
  for (const [suffix, scale] of units) if (Math.abs(value) >= scale) return `${(value / scale).toPrecision(3)}${suffix}`;
  return value >= 100 || Number.isInteger(value) ? String(Math.round(value)) : value.toPrecision(3);
}

function duration(s) {
  if (!isFinite(s) || s < 0) return "–";
  if (s < 60) return `${s.toFixed(0)}s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(r).padStart(2, "0")}s`;
}

// Share of the range done or skipped, from a job's stats (64-bit counters are strings).
function fraction(stats) {
  const total = big(stats.range_total);
  if (total === 0n) return 0;
  return Number(((big(stats.range_processed) + big(stats.range_skipped)) * 1000000n) / total) / 1e6;
}

// Rate (ids/s) of each job between two polls; before the second poll, the average since it started.
const samples = new Map();
function rate(job) {
  const now = Date.now() / 1000;
  const done = Number(big(job.stats.range_processed) + big(job.stats.range_skipped));
  const last = samples.get(job.id);
  samples.set(job.id, { t: now, done, rate: last ? last.rate : 0 });
  if (last && now > last.t && done >= last.done) {
    const current = (done - last.done) / (now - last.t);
    const smoothed = last.rate ? 0.7 * last.rate + 0.3 * current : current;
    samples.get(job.id).rate = smoothed;
    return smoothed;
  }
  const started = seconds(job.started_at);
  return started && now > started ? done / (now - started) : 0;
}

function eta(job, perSecond) {
  if (jobStatus(job) !== "running" || perSecond <= 0) return "–";
  const left = Number(big(job.stats.range_total) - big(job.stats.range_processed) - big(job.stats.range_skipped));
  return duration(left / perSecond);
}

const progressBar = (share) =>
  el("span", { class: "progress-cell" },
    el("span", { class: "bar" }, el("span", { style: `width:${(share * 100).toFixed(2)}%` })),
    ` ${(share * 100).toFixed(1)}%`);

function fail(error) {
  app.replaceChildren(el("p", { class: "card" }, `${error.code || "error"}: ${error.message}`));
}

// -- jobs ---------------------------------------------------------------------------------------

const STATUSES = ["pending", "running", "paused", "completed", "failed", "cancelled"];

async function jobsView() {
  document.getElementById("nav-jobs").classList.add("active");
  const params = new URLSearchParams(location.search);
  const status = el("select", { id: "filter-status" }, el("option", { value: "", text: "any status" }),
    ...STATUSES.map((s) => el("option", { value: s, text: s })));
  status.value = params.get("status") || "";
  const queue = el("input", { id: "filter-queue", placeholder: "queue", value: params.get("queue") || "" });
  const apply = () => {
    const query = new URLSearchParams();
    if (status.value) query.set("status", status.value);
    if (queue.value.trim()) query.set("queue", queue.value.trim());
    history.replaceState(null, "", query.toString() ? `/?${query}` : "/");
    refresh();
  };
  status.onchange = apply;
  queue.onchange = apply;
  const body = el("tbody");
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ...["Job", "Status", "Queue", "Priority", "Progress", "Rate (ids/s)", "ETA",
      "Failed attempts"].map((h, i) => el("th", { class: i >= 3 && i !== 4 ? "num" : "", text: h })))),
    body);
  const empty = el("p", { class: "muted", text: "No jobs." });
  app.replaceChildren(el("h1", { text: "Jobs" }), el("div", { class: "filters" }, status, queue),
    el("div", { class: "scroll" }, table), empty);

  async function refresh() {
    const query = new URLSearchParams({ page_size: "200" });
    if (status.value) query.set("status", status.value);
    if (queue.value.trim()) query.set("queue", queue.value.trim());
    const data = await api(`/api/v1/jobs?${query}`);
    empty.hidden = data.jobs.length > 0;
    body.replaceChildren(...data.jobs.map((job) => {
      const share = fraction(job.stats);
      const perSecond = rate(job);
      return el("tr", { dataset: { jobId: job.id, status: jobStatus(job), progress: share.toFixed(6) } },
        el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: job.id })),
        el("td", {}, el("span", { class: "badge", dataset: { status: jobStatus(job) }, text: jobStatus(job) })),
        el("td", { text: job.spec.queue }),
        el("td", { class: "num", text: String(job.spec.priority || 0) }),
        el("td", { class: "progress" }, progressBar(share)),
        el("td", { class: "num", text: jobStatus(job) === "running" ? compact(perSecond) : "–" }),
        el("td", { class: "num", text: eta(job, perSecond) }),
        el("td", { class: "num", text: job.stats.failed_attempts }));
    }));
  }
  return refresh;
}

// -- one job ------------------------------------------------------------------------------------

const MIN_SEGMENT_PX = 3;

// The segments of the map: the snapshot's nodes that are drawn whole (no children shown, or at the
// deepest level wanted) inside the focused range.
function segments(node, maxDepth, focus) {
  const start = big(node.range.start), end = big(node.range.end);
  if (end <= focus.start || start >= focus.end) return [];
  const shown = node.children && node.children.length && node.depth < maxDepth;
  if (!shown) {
    const from = start > focus.start ? start : focus.start;
    const to = end < focus.end ? end : focus.end;
    return [{ node, start: from, end: to }];
  }
  return node.children.flatMap((child) => segments(child, maxDepth, focus));
}

function findNode(node, start, end) {
  if (big(node.range.start) === start && big(node.range.end) === end) return node;
  for (const child of node.children || []) {
    if (big(child.range.start) <= start && big(child.range.end) >= end) return findNode(child, start, end);
  }
  return node; // the focus was collapsed into this node
}

function drawChart(canvas, points) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  if (points.length < 2) {
    g.fillText("throughput appears after a few seconds of work", 8, 16);
    return;
  }
  // A step per interval between two samples, at the rate of that interval.
  const steps = points.slice(1).map((p, i) => ({
    from: points[i].t, to: p.t, r: Math.max(0, (p.done - points[i].done) / Math.max(1e-9, p.t - points[i].t)),
  }));
  const top = Math.max(...steps.map((s) => s.r), 1);
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1e-3);
  const x = (t) => 4 + ((t - t0) / (t1 - t0)) * (width - 8);
  const y = (r) => height - 14 - (r / top) * (height - 30);
  g.fillText(`${compact(top)} ids/s`, 6, 12);
  g.fillText(`last ${duration(t1 - t0)}`, width - 70, height - 4);
  g.strokeStyle = "#3b82f6";
  g.lineWidth = 2;
  g.beginPath();
  steps.forEach((s, i) => {
    if (i === 0) g.moveTo(x(s.from), y(s.r)); else g.lineTo(x(s.from), y(s.r));
    g.lineTo(x(s.to), y(s.r));
  });
  g.stroke();
}

async function jobView(jobId) {
  const path = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
  const title = el("h1", { text: jobId });
  const badge = el("span", { class: "badge", id: "job-status" });
  const actions = el("div", { class: "actions" });
  const stats = el("div", { class: "stats", id: "job-stats" });
  const map = el("div", { id: "range-map", role: "img", "aria-label": "the job's range, coloured by status" });
  const crumbs = el("div", { class: "crumbs" });
  const legend = el("div", { class: "legend" }, ...["pending", "running", "done", "skipped", "error"].map((s) =>
    el("span", {}, el("i", { class: "seg", dataset: { status: s } }), s)));
  const chart = el("canvas", { id: "throughput" });
  const errorsBody = el("tbody");
  const errors = el("div", { class: "scroll" }, el("table", { id: "errors" },
    el("thead", {}, el("tr", {}, ...["Leaf", "Attempt", "When", "Error"].map((h) => el("th", { text: h })))),
    errorsBody));
  const noErrors = el("p", { class: "muted", text: "No failed attempts." });
  const retry = el("button", { id: "retry", text: "Retry failed leaves", hidden: "" });
  const result = el("pre", { class: "result", id: "job-result" });
  app.replaceChildren(
    el("p", {}, el("a", { href: "/", text: "← Jobs" })), title, badge, actions, stats,
    el("h2", { text: "Range" }), crumbs, map, legend,
    el("h2", { text: "Throughput" }), chart,
    el("h2", { text: "Result" }), result,
    el("h2", { text: "Recent errors" }), retry, errors, noErrors);

  let job = null;
  let focus = null; // { start, end, depth } of the zoomed-in node; null: the whole range
  const points = [];
  const failures = [];
  let eventsAfter = "0";

  async function act(verb, body) {
    try {
      job = await api(`${path}/${verb}`, { method: "POST", body });
      render();
    } catch (error) {
      alert(`${error.code}: ${error.message}`);
    }
  }
  retry.onclick = () => act("retry");

  function render() {
    const status = jobStatus(job);
    badge.dataset.status = status;
    badge.textContent = status;
    const s = job.stats;
    const share = fraction(s);
    const items = [
      ["Progress", `${(share * 100).toFixed(2)}%`],
      ["Range", `[${job.spec.range.start}, ${job.spec.range.end})`],
      ["Queue / priority", `${job.spec.queue} / ${job.spec.priority || 0}`],
      ["Leaf size", job.spec.max_range_size],
      ["Nodes done / total", `${s.done_nodes} / ${s.total_nodes}`],
      ["Running / pending nodes", `${s.running_nodes} / ${s.pending_nodes}`],
      ["Leases held", s.active_leases],
      ["Failed attempts", s.failed_attempts],
      ["Error leaves", s.error_nodes],
      ["Created", job.created_at ? new Date(job.created_at).toLocaleString() : "–"],
      ["Finished", job.finished_at ? new Date(job.finished_at).toLocaleString() : "–"],
    ];
    if (job.reason) items.push(["Reason", job.reason]);
    stats.replaceChildren(...items.map(([k, v]) => el("div", {}, el("b", { text: k }), el("span", { text: String(v) }))));
    const buttons = [];
    if (status === "pending" || status === "running") buttons.push(el("button", { id: "pause", text: "Pause", onclick: () => act("pause") }));
    if (status === "paused") buttons.push(el("button", { id: "resume", text: "Resume", onclick: () => act("resume") }));
    if (["pending", "running", "paused"].includes(status)) {
      buttons.push(el("button", { id: "cancel", class: "danger", text: "Cancel", onclick: () => {
        if (confirm(`Cancel job ${job.id}?`)) act("cancel", { reason: "cancelled from the dashboard" });
      } }));
    }
    actions.replaceChildren(...buttons);
    retry.hidden = !(Number(s.error_nodes) > 0) || status === "cancelled" || status === "completed";
    result.textContent = job.result_json
      ? `${job.result_json}${job.result_partial ? "\n(partial: the job has not completed)" : ""}`
      : "none (the job has no reduce, or no leaf gave a result yet)";
  }

  async function drawMap() {
    const levels = Math.max(1, Math.floor(Math.log2(Math.max(2, map.clientWidth / MIN_SEGMENT_PX))));
    const depth = Math.min(64, (focus ? focus.depth : 0) + levels);
    const tree = await api(`${path}/tree?depth=${depth}`);
    const root = tree.root;
    const range = focus || { start: big(root.range.start), end: big(root.range.end), depth: 0 };
    const top = focus ? findNode(root, focus.start, focus.end) : root;
    const total = Number(range.end - range.start) || 1;
    map.replaceChildren(...segments(top, depth, range).map(({ node, start, end }) => {
      const status = statusName(node.status, "NODE_STATUS_");
      const share = Number(end - start) / total;
      return el("div", {
        class: "seg",
        style: `flex: ${share} 0 0`,
        title: `[${start}, ${end}) ${status}${node.last_error ? ": " + node.last_error : ""}${node.worker_id ? " (" + node.worker_id + ")" : ""}`,
        dataset: { status, start: String(start), end: String(end), depth: String(node.depth) },
        onclick: () => {
          if (end - start > 1n && !(node.is_leaf && !focus)) {
            focus = { start: big(node.range.start), end: big(node.range.end), depth: node.depth };
            drawMap().catch(fail);
          }
        },
      });
    }));
    const parts = [el("a", { text: "whole range", onclick: () => { focus = null; drawMap().catch(fail); } })];
    if (focus) parts.push(` › [${focus.start}, ${focus.end})`);
    crumbs.replaceChildren(...parts);
  }

  async function readErrors() {
    for (;;) {
      const page = await api(`${path}/events?types=NODE_FAILED&after=${eventsAfter}`);
      failures.push(...page.events);
      eventsAfter = page.next_after;
      if (!page.more) break;
    }
    failures.splice(0, Math.max(0, failures.length - 20));
    noErrors.hidden = failures.length > 0;
    errors.hidden = failures.length === 0;
    errorsBody.replaceChildren(...failures.slice().reverse().map((e) => el("tr", {},
      el("td", { text: `[${e.range.start}, ${e.range.end})` }),
      el("td", { class: "num", text: String(e.attempt) }),
      el("td", { text: new Date(e.time).toLocaleTimeString() }),
      el("td", { class: "message", text: e.message }))));
  }

  async function refresh() {
    job = await api(path);
    const done = Number(big(job.stats.range_processed) + big(job.stats.range_skipped));
    if (!points.length && seconds(job.started_at)) points.push({ t: seconds(job.started_at), done: 0 });
    points.push({ t: Date.now() / 1000, done });
    if (points.length > 600) points.splice(1, points.length - 600);
    render();
    drawChart(chart, points);
    await Promise.all([drawMap(), readErrors()]);
  }
  return refresh;
}

// -- workers ------------------------------------------------------------------------------------

async function workersView() {
  document.getElementById("nav-workers").classList.add("active");
  const body = el("tbody");
  const empty = el("p", { class: "muted", text: "No workers connected." });
  app.replaceChildren(el("h1", { text: "Workers" }), el("div", { class: "scroll" }, el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, ...["Worker", "Address", "Queues", "SDK", "Concurrency", "Leases held", "Completed",
      "Failed", "Connected", "Last heartbeat"].map((h) => el("th", { text: h })))), body)), empty);
  return async () => {
    const data = await api("/api/v1/workers");
    empty.hidden = data.workers.length > 0;
    const now = Date.now() / 1000;
    body.replaceChildren(...data.workers.map((w) => el("tr", { dataset: { workerId: w.worker_id } },
      el("td", { text: w.worker_id }), el("td", { text: w.address }), el("td", { text: w.queues.join(", ") }),
      el("td", { text: w.sdk || "–" }), el("td", { class: "num", text: String(w.concurrency || "–") }),
      el("td", { class: "num", text: String(w.leases_held) }), el("td", { class: "num", text: w.leaves_completed }),
      el("td", { class: "num", text: w.leaves_failed }),
      el("td", { text: new Date(w.connected_at).toLocaleString() }),
      el("td", { text: w.last_heartbeat_at ? `${duration(now - seconds(w.last_heartbeat_at))} ago` : "–" }))));
  };
}

// -- main ---------------------------------------------------------------------------------------

async function main() {
  const match = location.pathname.match(/^\/jobs\/(.+)$/);
  let refresh;
  if (match) refresh = await jobView(decodeURIComponent(match[1]));
  else if (location.pathname === "/workers") refresh = await workersView();
  else refresh = await jobsView();
  // One refresh at a time; the next starts POLL_MS after the last one ended.
  const loop = async () => {
    try {
      await refresh();
    } catch (error) {
      statusLine.textContent = `${error.code || "error"}: ${error.message}`;
      if (error.status === 404) { fail(error); return; }
    }
    setTimeout(loop, POLL_MS);
  };
  loop();
}

main().catch(fail);
