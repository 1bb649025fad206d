// Strata's dashboard: one snapshot over Server-Sent Events, then small batches of changes
// applied in place; pages are drawn from the local copy (docs/ui.md). No dependencies.
"use strict";

const TERMINAL = new Set(["TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST",
  "TASK_ERROR", "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"]);
const MAX_EVENTS = 500;       // events kept for the feed
const MAX_ROWS = 500;         // task rows drawn at once
const HISTORY = 180;          // points kept per chart and sparkline
const SAMPLE_MS = 2000;       // how often the overview samples utilisation and usage is read

const S = {
  seq: 0, principal: null, viewTasks: false, version: "", started: 0,
  agents: new Map(), frameworks: new Map(), tasks: new Map(), workloads: new Map(),
  events: [], roles: null, util: [], usage: new Map(), live: false,
};
// Timings the browser tests read (ms): the last snapshot's parse and draw, the last batch's.
const timings = { snapshotMs: 0, applyMs: 0, snapshots: 0, batches: 0, lastSeq: 0 };
window.strataUi = { state: S, timings };

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const key = (fw, id) => fw + "\u0000" + id;
const num = (x) => (typeof x === "number" ? x : 0);
const fmt = (x, d = 2) => (Math.round(x * 10 ** d) / 10 ** d).toString();
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return fmt(n, 1) + " " + u[i];
}
function mem(mib) { return bytes(num(mib) * 1024 * 1024); }
function ago(t) {
  if (!t) return "";
  const s = Date.now() / 1000 - t;
  if (s < 60) return Math.max(0, Math.round(s)) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}
function toast(text, bad) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "toast" + (bad ? " bad" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

// ---- resources ----
function addRes(into, res, sign) {
  for (const [k, v] of Object.entries(res || {})) {
    if (typeof v !== "number") continue;
    into[k] = Math.round((num(into[k]) + sign * v) * 1000) / 1000;
  }
}

// ---- applying the stream ----
function applySnapshot(snap) {
  S.seq = snap.seq; S.principal = snap.principal; S.viewTasks = snap.view_tasks;
  S.version = snap.version; S.started = snap.started;
  S.agents = new Map(snap.agents.map((a) => [a.id, a]));
  S.frameworks = new Map(snap.frameworks.map((f) => [f.id, f]));
  S.tasks = new Map(snap.tasks.map((t) => [key(t.fw, t.id), t]));
  S.workloads = new Map(Object.entries(snap.workloads || {}).filter(([, l]) => l.length));
}

function event(text, kind) {
  S.events.push({ time: Date.now() / 1000, text, kind });
  if (S.events.length > MAX_EVENTS) S.events.splice(0, S.events.length - MAX_EVENTS);
}

function applyChange(c) {
  S.seq = Math.max(S.seq, c.seq);
  switch (c.k) {
    case "agent_added":
    case "agent_updated":
      S.agents.set(c.agent.id, c.agent);
      event(`agent ${c.agent.host} (${c.agent.id}) ${c.k === "agent_added" ? "registered" : "is now " + c.agent.mode}`, "agent");
      break;
    case "agent_removed": {
      const a = S.agents.get(c.id);
      if (a) a.state = "unreachable";
      event(`agent ${c.id} unreachable`, "agent");
      break;
    }
    case "framework_added":
    case "framework_updated":
      S.frameworks.set(c.framework.id, c.framework);
      event(`framework ${c.framework.name} (${c.framework.id}) ${c.k === "framework_added" ? "subscribed" : (c.framework.connected ? "updated" : "disconnected")}`, "framework");
      break;
    case "framework_removed":
      S.frameworks.delete(c.id);
      S.workloads.delete(c.id);
      event(`framework ${c.id} removed`, "framework");
      break;
    case "workloads":
      if (c.workloads.length) S.workloads.set(c.fw, c.workloads); else S.workloads.delete(c.fw);
      break;
    case "task_added": {
      const t = c.task;
      S.tasks.set(key(t.fw, t.id), t);
      if (!TERMINAL.has(t.state)) moveRes(t, +1);
      event(`task ${t.name || t.id} launched on ${t.agent}`, "task");
      break;
    }
    case "task_updated": {
      const t = S.tasks.get(key(c.fw, c.id));
      if (t) {
        if (!TERMINAL.has(t.state) && TERMINAL.has(c.state)) moveRes(t, -1);
        t.state = c.state; t.updated = c.time;
        if (c.msg) t.msg = c.msg;
      }
      event(`task ${c.id} ${c.state}${c.msg ? ": " + c.msg : ""}`, "task");
      break;
    }
  }
}

// A task's resources join (or leave) its agent's and framework's allocation.
function moveRes(t, sign) {
  const a = S.agents.get(t.agent);
  if (a) { addRes(a.alloc, t.res, sign); a.tasks = Math.max(0, num(a.tasks) + sign); }
  const f = S.frameworks.get(t.fw);
  if (f) { addRes(f.alloc, t.res, sign); f.tasks = Math.max(0, num(f.tasks) + sign); }
}

let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource("/ui/api/stream");
  source.addEventListener("snapshot", (e) => {
    const t0 = performance.now();
    applySnapshot(JSON.parse(e.data));
    setLive(true);
    render();
    timings.snapshotMs = performance.now() - t0;
    timings.snapshots++;
    timings.lastSeq = S.seq;
  });
  source.addEventListener("changes", (e) => {
    const t0 = performance.now();
    for (const c of JSON.parse(e.data)) applyChange(c);
    scheduleRender();
    timings.applyMs = performance.now() - t0;
    timings.batches++;
    timings.lastSeq = S.seq;
  });
  source.addEventListener("reset", () => { source.close(); setLive(false); setTimeout(connect, 500); });
  source.onerror = () => {
    setLive(false);
    // The browser retries by itself unless the answer was an error status: then start over.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
}

function setLive(on) {
  S.live = on;
  const c = $("#conn");
  c.textContent = on ? "live" : "reconnecting";
  c.className = "conn " + (on ? "live" : "down");
  $("#who").textContent = S.principal ? "as " + S.principal : "";
}

let pending = null;
function scheduleRender() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; render(); }, 100);
}

// ---- charts ----
function sparkline(values, w = 80, h = 18, max) {
  if (!values || values.length < 2) return `<svg class="spark" width="${w}" height="${h}"></svg>`;
  const top = max || Math.max(...values, 1e-9);
  const step = w / (values.length - 1);
  const pts = values.map((v, i) => `${fmt(i * step, 1)},${fmt(h - 1 - (v / top) * (h - 2), 1)}`).join(" ");
  return `<svg class="spark" width="${w}" height="${h}"><polyline fill="none" stroke="#2a64d6" stroke-width="1.2" points="${pts}"/></svg>`;
}
function bar(used, total, w = 120) {
  const f = total > 0 ? Math.min(1, used / total) : 0;
  return `<svg class="bar" width="${w}" height="10"><rect width="${w}" height="10" fill="#e6e9ef"/><rect width="${fmt(f * w, 1)}" height="10" fill="${f > 0.9 ? "#c0392b" : "#2a64d6"}"/></svg>`;
}
function chart(series, w = 640, h = 140) {
  const colors = ["#2a64d6", "#1f8a4c", "#b7791f", "#8e44ad"];
  let body = `<line x1="0" y1="${h - 1}" x2="${w}" y2="${h - 1}" stroke="#dde1e8"/>`;
  let legend = "";
  series.forEach((s, n) => {
    legend += `<text x="${8 + n * 110}" y="14" font-size="11" fill="${colors[n]}">${esc(s.name)} ${fmt(100 * (s.values[s.values.length - 1] || 0), 0)}%</text>`;
    if (s.values.length < 2) return;
    const step = w / (HISTORY - 1);
    const off = HISTORY - s.values.length;
    const pts = s.values.map((v, i) => `${fmt((off + i) * step, 1)},${fmt(h - 2 - v * (h - 24), 1)}`).join(" ");
    body += `<polyline fill="none" stroke="${colors[n]}" stroke-width="1.5" points="${pts}"/>`;
  });
  return `<svg class="chart" width="${w}" height="${h}">${body}${legend}</svg>`;
}

// ---- totals ----
function totals() {
  const total = {}, alloc = {};
  let connected = 0;
  for (const a of S.agents.values()) {
    if (a.state !== "connected") continue;
    connected++;
    addRes(total, a.total, 1);
    addRes(alloc, a.alloc, 1);
  }
  return { total, alloc, connected };
}

function sample() {
  const { total, alloc } = totals();
  const p = (k) => (num(total[k]) > 0 ? num(alloc[k]) / total[k] : 0);
  S.util.push({ cpus: p("cpus"), mem: p("mem"), gpus: p("gpus") });
  if (S.util.length > HISTORY) S.util.shift();
  if (page().name === "overview") render();
}

// ---- pages ----
function page() {
  const h = location.hash.replace(/^#\/?/, "");
  const parts = h.split("/").map(decodeURIComponent);
  if (parts[0] === "task" && parts.length >= 3) return { name: "task", fw: parts[1], id: parts.slice(2).join("/") };
  return { name: parts[0] || "overview" };
}

function render() {
  const p = page();
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.page === p.name || (p.name === "task" && a.dataset.page === "tasks"));
  }
  const view = $("#view");
  const draw = { overview, agents, frameworks, apps, tasks, events, task: taskPage }[p.name] || overview;
  draw(view, p);
}

function overview(view) {
  const { total, alloc, connected } = totals();
  let running = 0;
  for (const t of S.tasks.values()) if (!TERMINAL.has(t.state)) running++;
  const names = Object.keys(total).filter((k) => typeof total[k] === "number").sort();
  const rows = names.map((k) => {
    const fmtv = k === "mem" || k === "disk" ? mem : (x) => fmt(x);
    return `<tr><td>${esc(k)}</td><td>${fmtv(num(alloc[k]))}</td><td>${fmtv(num(total[k]))}</td><td>${bar(num(alloc[k]), num(total[k]))} ${fmt(100 * (total[k] ? num(alloc[k]) / total[k] : 0), 0)}%</td></tr>`;
  }).join("");
  const roles = new Set();
  for (const f of S.frameworks.values()) for (const r of f.roles || []) roles.add(r);
  view.innerHTML = `<h1>Cluster</h1>
  <div class="cards">
    <div class="card"><div class="n" id="n-agents">${connected}</div><div class="l">agents connected (${S.agents.size} known)</div></div>
    <div class="card"><div class="n" id="n-frameworks">${S.frameworks.size}</div><div class="l">frameworks</div></div>
    <div class="card"><div class="n">${roles.size}</div><div class="l">roles in use</div></div>
    <div class="card"><div class="n" id="n-tasks">${S.viewTasks ? running : "–"}</div><div class="l">tasks active${S.viewTasks ? "" : " (not allowed to view tasks)"}</div></div>
  </div>
  <h2>Allocated / total</h2>
  <table id="resources"><thead><tr><th>resource</th><th>allocated</th><th>total</th><th></th></tr></thead><tbody>${rows || `<tr><td colspan="4" class="muted">no agents</td></tr>`}</tbody></table>
  <h2>Utilisation over time (allocated share, sampled every ${SAMPLE_MS / 1000} s in this page)</h2>
  ${chart([{ name: "cpus", values: S.util.map((u) => u.cpus) }, { name: "mem", values: S.util.map((u) => u.mem) }, { name: "gpus", values: S.util.map((u) => u.gpus) }])}
  <p class="muted">Allocator ${esc(S.version)}, started ${ago(S.started)}; change ${S.seq}.</p>`;
}

function resCell(alloc, total, k) {
  const f = k === "mem" || k === "disk" ? mem : (x) => fmt(x);
  return `${f(num((alloc || {})[k]))} / ${f(num((total || {})[k]))}`;
}

function agents(view) {
  const list = [...S.agents.values()].sort((a, b) => a.host.localeCompare(b.host) || a.id.localeCompare(b.id));
  const rows = list.slice(0, 2000).map((a) => {
    const attrs = Object.entries(a.attrs || {}).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ");
    const id = esc(a.id);
    const actions = a.mode === "active"
      ? `<button data-act="drain" data-agent="${id}" class="danger">drain</button> <button data-act="deactivate" data-agent="${id}">deactivate</button>`
      : `<button data-act="reactivate" data-agent="${id}">reactivate</button>`;
    return `<tr data-agent-row="${id}"><td>${esc(a.host)}<div class="muted">${id}</div></td>
      <td><span class="state ${esc(a.state)}">${esc(a.state)}</span> <span class="state ${esc(a.mode)}">${esc(a.mode)}</span></td>
      <td>${resCell(a.alloc, a.total, "cpus")}</td><td>${resCell(a.alloc, a.total, "mem")}</td>
      <td>${resCell(a.alloc, a.total, "gpus")}</td><td>${num(a.tasks)}</td>
      <td class="wrap">${attrs}</td><td class="muted">${esc(a.version)}</td><td>${actions}</td></tr>`;
  }).join("");
  view.innerHTML = `<h1>Agents (${list.length})</h1>
  <table id="agents"><thead><tr><th>host</th><th>state</th><th>cpus</th><th>mem</th><th>gpus</th><th>tasks</th><th>attributes</th><th>version</th><th></th></tr></thead>
  <tbody>${rows || `<tr><td colspan="9" class="muted">no agents</td></tr>`}</tbody></table>
  ${list.length > 2000 ? `<p class="muted">the first 2000 of ${list.length} shown</p>` : ""}`;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "X-Strata-UI": "1", "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : "",
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${r.status}: ${text}`);
  return text;
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-act]");
  if (!b) return;
  const act = b.dataset.act;
  if (b.dataset.agent) {
    const id = b.dataset.agent;
    const what = { drain: "Drain agent " + id + "? Its tasks are killed and it gets no new offers.",
      deactivate: "Deactivate agent " + id + "? It gets no new offers; its tasks keep running.",
      reactivate: "Reactivate agent " + id + "?" }[act];
    if (!confirm(what)) return;
    try {
      await post(`/ui/api/agents/${encodeURIComponent(id)}/${act}`);
      toast(`agent ${id}: ${act} done`);
    } catch (err) { toast(`agent ${id}: ${act} refused: ${err.message}`, true); }
  } else if (act === "kill") {
    const { fw, id } = b.dataset;
    if (!confirm(`Kill task ${id}?`)) return;
    try {
      await post(`/ui/api/tasks/${encodeURIComponent(fw)}/${encodeURIComponent(id)}/kill`);
      toast(`task ${id}: kill sent`);
    } catch (err) { toast(`task ${id}: kill refused: ${err.message}`, true); }
  } else if (act === "profile") {
    profile(b.dataset.fw, b.dataset.id);
  }
});

async function loadRoles() {
  try {
    const r = await fetch("/ui/api/roles", { credentials: "same-origin" });
    if (r.ok) S.roles = (await r.json()).roles;
  } catch (_) { /* shown as not loaded */ }
}

function frameworks(view) {
  if (!frameworks.loaded) { frameworks.loaded = true; loadRoles().then(() => { if (page().name === "frameworks") render(); }); }
  const list = [...S.frameworks.values()].sort((a, b) => a.name.localeCompare(b.name));
  const rows = list.map((f) => `<tr><td>${webui(f)}<div class="muted">${esc(f.id)}</div></td>
    <td>${esc((f.roles || []).join(", "))}</td><td><span class="state ${f.connected ? "connected" : "unreachable"}">${f.connected ? "connected" : "disconnected"}</span></td>
    <td>${fmt(100 * num(f.share), 1)}%</td><td>${fmt(num((f.alloc || {}).cpus))}</td><td>${mem((f.alloc || {}).mem)}</td>
    <td>${num(f.tasks)}</td><td>${esc(f.principal)}</td><td>${esc(f.user)}</td></tr>`).join("");
  const roleRows = (S.roles || []).map((r) => {
    const q = (o) => Object.entries(o || {}).map(([k, v]) => `${esc(k)}=${esc(typeof v === "number" ? fmt(v) : v)}`).join(" ") || "–";
    return `<tr><td>${esc(r.name)}</td><td>${fmt(r.weight)}</td><td>${q(r.guarantee)}</td><td>${q(r.limit)}</td>
      <td>${q(r.alloc)}</td><td>${q(r.reserved)}</td><td>${(r.frameworks || []).length}</td></tr>`;
  }).join("");
  view.innerHTML = `<h1>Frameworks (${list.length})</h1>
  <table id="frameworks"><thead><tr><th>name</th><th>roles</th><th>state</th><th>dominant share</th><th>cpus</th><th>mem</th><th>tasks</th><th>principal</th><th>user</th></tr></thead>
  <tbody>${rows || `<tr><td colspan="9" class="muted">no frameworks</td></tr>`}</tbody></table>
  <h2>Roles</h2>
  <table id="roles"><thead><tr><th>role</th><th>weight</th><th>quota guarantee</th><th>quota limit</th><th>allocated</th><th>reserved</th><th>frameworks</th></tr></thead>
  <tbody>${S.roles ? (roleRows || `<tr><td colspan="7" class="muted">no roles</td></tr>`) : `<tr><td colspan="7" class="muted">loading…</td></tr>`}</tbody></table>`;
}

// A framework's name, linked to its own web UI when it gave one (http(s) only: the allocator
// keeps no other scheme, and the page checks again).
function webui(f) {
  const url = f.webui || "";
  if (!/^https?:\/\//.test(url)) return esc(f.name);
  return `<a href="${esc(url)}" target="_blank" rel="noopener noreferrer" class="webui">${esc(f.name)}</a>`;
}

// ---- apps and jobs, as their frameworks report them ----
function apps(view) {
  const groups = [...S.workloads.entries()]
    .map(([fw, list]) => ({ fw, f: S.frameworks.get(fw), list }))
    .sort((a, b) => ((a.f || {}).name || a.fw).localeCompare((b.f || {}).name || b.fw));
  const section = ({ fw, f, list }) => {
    const appRows = list.filter((w) => w.kind === "app").map((w) => `<tr data-workload="${esc(w.id)}" data-kind="app">
      <td>${esc(w.id)}</td><td><span class="state ${esc(w.state)}">${esc(w.state)}</span></td>
      <td class="instances">${num(w.running)} / ${num(w.wanted)}</td><td class="muted">${esc(w.version)}</td><td class="wrap">${esc(w.msg)}</td></tr>`).join("");
    const jobRows = list.filter((w) => w.kind === "job").map((w) => `<tr data-workload="${esc(w.id)}" data-kind="job">
      <td>${esc(w.id)}</td><td><span class="state ${esc(w.state)}">${esc(w.state)}</span></td>
      <td>${esc(w.schedule)}</td><td>${esc(w.last_run)}</td><td>${esc(w.next_run)}</td><td class="wrap">${esc(w.msg)}</td></tr>`).join("");
    return `<section class="workloads" data-fw="${esc(fw)}"><h2>${f ? webui(f) : esc(fw)} <span class="muted">${esc(fw)}</span>
      ${f ? `<span class="state ${f.connected ? "connected" : "unreachable"}">${f.connected ? "connected" : "disconnected"}</span>` : ""}</h2>
      ${appRows ? `<table class="apps"><thead><tr><th>app</th><th>state</th><th>instances (running / wanted)</th><th>version</th><th>message</th></tr></thead><tbody>${appRows}</tbody></table>` : ""}
      ${jobRows ? `<table class="jobs"><thead><tr><th>job</th><th>state</th><th>schedule</th><th>last run</th><th>next run</th><th>message</th></tr></thead><tbody>${jobRows}</tbody></table>` : ""}
      ${!appRows && !jobRows ? `<p class="muted">nothing reported</p>` : ""}</section>`;
  };
  view.innerHTML = `<h1>Apps &amp; jobs</h1>
  <p class="muted">What the frameworks run, as they report it (strata-services its apps, strata-jobs its jobs).</p>
  <div id="apps">${groups.map(section).join("") || `<p class="muted">No framework reports any app or job.</p>`}</div>`;
}

// ---- usage ----
const taskFilter = { text: "", state: "active" };

function shownTasks() {
  const text = taskFilter.text.toLowerCase();
  const out = [];
  for (const t of S.tasks.values()) {
    const term = TERMINAL.has(t.state);
    if (taskFilter.state === "active" && term) continue;
    if (taskFilter.state === "terminal" && !term) continue;
    if (text && !(`${t.id} ${t.name} ${t.state} ${t.agent} ${t.fw}`.toLowerCase().includes(text))) continue;
    out.push(t);
  }
  out.sort((a, b) => num(b.launched) - num(a.launched) || (a.id < b.id ? 1 : -1));
  return { rows: out.slice(0, MAX_ROWS), matched: out.length };
}

async function pollUsage() {
  const p = page();
  let ids = [];
  if (p.name === "tasks") ids = shownTasks().rows.filter((t) => !TERMINAL.has(t.state)).map((t) => t.id);
  else if (p.name === "task") ids = [p.id];
  if (!S.viewTasks || ids.length === 0) return;
  ids = [...new Set(ids)].slice(0, 500);
  try {
    const r = await fetch("/ui/api/usage?" + ids.map((i) => "task=" + encodeURIComponent(i)).join("&"), { credentials: "same-origin" });
    if (!r.ok) return;
    for (const u of (await r.json()).tasks) {
      const k = key(u.fw, u.id);
      const h = S.usage.get(k) || { prev: null, cpu: [], mem: [], net: [], rq: [], gpu: [] };
      if (h.prev && u.time > h.prev.time) {
        const dt = u.time - h.prev.time;
        h.net.push(Math.max(0, (u.rx + u.tx - h.prev.rx - h.prev.tx) / dt));
      } else if (!h.prev) h.net.push(0);
      if (!h.prev || u.time !== h.prev.time) {
        h.cpu.push(u.cpu); h.mem.push(u.mem); h.rq.push(num(u.rq_p99));
        if (u.gpu != null) h.gpu.push(u.gpu);
      }
      for (const s of [h.cpu, h.mem, h.net, h.rq, h.gpu]) if (s.length > HISTORY) s.shift();
      h.prev = u; h.last = u;
      S.usage.set(k, h);
    }
    if (p.name === "tasks" || p.name === "task") render();
  } catch (_) { /* next round */ }
}

function usageCells(t) {
  const h = S.usage.get(key(t.fw, t.id));
  if (!h || !h.last) return `<td colspan="5" class="muted">${TERMINAL.has(t.state) ? "" : "no usage yet"}</td>`;
  const u = h.last;
  const last = (s) => (s.length ? s[s.length - 1] : 0);
  return `<td>${sparkline(h.cpu)} ${fmt(u.cpu)}</td><td>${sparkline(h.mem)} ${bytes(u.mem)}</td>
    <td>${sparkline(h.net)} ${bytes(last(h.net))}/s</td><td>${sparkline(h.rq)} ${fmt(1000 * num(u.rq_p99), 2)} ms</td>
    <td>${u.gpu != null ? sparkline(h.gpu, 80, 18, 100) + " " + fmt(u.gpu, 0) + "%" : "–"}</td>`;
}

function tasks(view) {
  if (!S.viewTasks) { view.innerHTML = `<h1>Tasks</h1><p class="muted">Your principal may not view tasks (view_tasks).</p>`; return; }
  const focused = document.activeElement && document.activeElement.id === "task-filter";
  const { rows, matched } = shownTasks();
  const body = rows.map((t) => {
    const fwName = (S.frameworks.get(t.fw) || {}).name || t.fw;
    const agent = S.agents.get(t.agent);
    return `<tr data-task="${esc(t.id)}"><td><a href="#/task/${encodeURIComponent(t.fw)}/${encodeURIComponent(t.id)}">${esc(t.name || t.id)}</a><div class="muted">${esc(t.id)}</div></td>
      <td><span class="state ${esc(t.state)}">${esc(t.state)}</span></td><td>${esc(fwName)}</td><td>${esc(agent ? agent.host : t.agent)}</td>
      <td>${fmt(num(t.res.cpus))} cpus, ${mem(t.res.mem)}${t.res.gpus ? ", " + t.res.gpus + " gpus" : ""}</td>${usageCells(t)}</tr>`;
  }).join("");
  view.innerHTML = `<h1>Tasks</h1>
  <div class="toolbar"><input id="task-filter" placeholder="filter: id, name, state, agent" value="${esc(taskFilter.text)}">
  <select id="task-state"><option value="active">active</option><option value="all">all</option><option value="terminal">terminal</option></select>
  <span class="muted">${matched} match${matched > rows.length ? `, the newest ${rows.length} shown` : ""}</span></div>
  <table id="tasks"><thead><tr><th>task</th><th>state</th><th>framework</th><th>agent</th><th>resources</th><th>cpu (cores)</th><th>memory</th><th>network</th><th>run-queue p99</th><th>gpu</th></tr></thead>
  <tbody>${body || `<tr><td colspan="10" class="muted">no tasks</td></tr>`}</tbody></table>`;
  const f = $("#task-filter");
  f.addEventListener("input", () => { taskFilter.text = f.value; scheduleRender(); });
  if (focused) { f.focus(); f.setSelectionRange(f.value.length, f.value.length); }
  const s = $("#task-state");
  s.value = taskFilter.state;
  s.addEventListener("change", () => { taskFilter.state = s.value; render(); });
}

function events(view) {
  const list = S.events.slice().reverse().map((e) =>
    `<div class="ev-${esc(e.kind)}"><span class="muted">${new Date(e.time * 1000).toLocaleTimeString()}</span> ${esc(e.text)}</div>`).join("");
  view.innerHTML = `<h1>Events</h1><p class="muted">What happened since this page connected (the newest first, the last ${MAX_EVENTS} kept).</p>
  <div class="feed" id="feed">${list || `<div class="muted">nothing yet</div>`}</div>`;
}

// ---- a task's page ----
const logView = { key: null, text: "", ctrl: null, stderr: false };
const flame = { key: null, svg: "", busy: false, error: "" };

function taskPage(view, p) {
  const k = key(p.fw, p.id);
  const t = S.tasks.get(k);
  if (!t) { view.innerHTML = `<h1>Task ${esc(p.id)}</h1><p class="muted">Unknown task (or not allowed to view tasks).</p>`; return; }
  if (logView.key !== k) followLog(p.fw, p.id);
  const agent = S.agents.get(t.agent);
  const running = !TERMINAL.has(t.state);
  const scroll = $("#log");
  const atBottom = !scroll || scroll.scrollTop + scroll.clientHeight >= scroll.scrollHeight - 4;
  view.innerHTML = `<h1>Task ${esc(t.name || t.id)} <span class="state ${esc(t.state)}" id="task-state-badge">${esc(t.state)}</span></h1>
  <table><tbody>
   <tr><th>id</th><td>${esc(t.id)}</td></tr>
   <tr><th>framework</th><td>${esc((S.frameworks.get(t.fw) || {}).name || "")} <span class="muted">${esc(t.fw)}</span></td></tr>
   <tr><th>agent</th><td>${esc(agent ? agent.host : "")} <span class="muted">${esc(t.agent)}</span></td></tr>
   <tr><th>resources</th><td>${esc(Object.entries(t.res).map(([k2, v]) => k2 + "=" + v).join(" "))}</td></tr>
   <tr><th>launched</th><td>${ago(t.launched)}</td></tr>
   ${t.msg ? `<tr><th>message</th><td class="wrap">${esc(t.msg)}</td></tr>` : ""}
   ${t.exit != null ? `<tr><th>exit code</th><td>${t.exit}</td></tr>` : ""}
  </tbody></table>
  <div class="toolbar">
    ${running ? `<button data-act="kill" data-fw="${esc(t.fw)}" data-id="${esc(t.id)}" class="danger" id="kill">Kill</button>
    <button data-act="profile" data-fw="${esc(t.fw)}" data-id="${esc(t.id)}" id="profile" ${flame.busy ? "disabled" : ""}>${flame.busy ? "Recording…" : "Record CPU profile (5 s)"}</button>` : ""}
  </div>
  <table><thead><tr><th>cpu (cores)</th><th>memory</th><th>network</th><th>run-queue p99</th><th>gpu</th></tr></thead><tbody><tr>${usageCells(t)}</tr></tbody></table>
  <h2>Output (${logView.stderr ? "stderr" : "stdout"}) <button id="log-switch">show ${logView.stderr ? "stdout" : "stderr"}</button></h2>
  <pre class="log" id="log">${esc(logView.text)}</pre>
  ${flame.key === k && (flame.svg || flame.error) ? `<h2>CPU profile</h2><div class="flame" id="flame">${flame.error ? `<p class="muted">${esc(flame.error)}</p>` : `<img alt="flame graph" id="flame-img" src="data:image/svg+xml;base64,${flame.svg}">`}</div>` : ""}`;
  const log = $("#log");
  if (atBottom) log.scrollTop = log.scrollHeight;
  $("#log-switch").addEventListener("click", () => { logView.stderr = !logView.stderr; followLog(p.fw, p.id); });
}

// Follows the task's output through the allocator, which proxies the agent's /files/follow.
async function followLog(fw, id) {
  if (logView.ctrl) logView.ctrl.abort();
  const ctrl = new AbortController();
  logView.ctrl = ctrl; logView.key = key(fw, id); logView.text = "";
  const path = `/ui/api/tasks/${encodeURIComponent(fw)}/${encodeURIComponent(id)}/log?stream=${logView.stderr ? "stderr" : "stdout"}`;
  try {
    const r = await fetch(path, { credentials: "same-origin", signal: ctrl.signal });
    if (!r.ok) { logView.text = `(${r.status}: ${await r.text()})`; scheduleRender(); return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      logView.text += dec.decode(value, { stream: true });
      if (logView.text.length > 1 << 20) logView.text = logView.text.slice(-(1 << 19));
      scheduleRender();
    }
  } catch (e) {
    if (!ctrl.signal.aborted) { logView.text += `\n(log ended: ${e.message})`; scheduleRender(); }
  }
}

async function profile(fw, id) {
  flame.key = key(fw, id); flame.busy = true; flame.svg = ""; flame.error = "";
  render();
  try {
    const text = await post(`/ui/api/tasks/${encodeURIComponent(fw)}/${encodeURIComponent(id)}/profile`, { seconds: 5 });
    flame.svg = btoa(unescape(encodeURIComponent(text)));
  } catch (e) { flame.error = "profile refused: " + e.message; }
  flame.busy = false;
  render();
}

window.addEventListener("hashchange", () => {
  const p = page();
  if (p.name !== "task" && logView.ctrl) { logView.ctrl.abort(); logView.ctrl = null; logView.key = null; }
  if (p.name === "frameworks") frameworks.loaded = false;
  render();
  pollUsage();
});
document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(sample, SAMPLE_MS);
  setInterval(pollUsage, SAMPLE_MS);
  setInterval(() => { if (page().name === "frameworks") loadRoles().then(render); }, 5000);
});
