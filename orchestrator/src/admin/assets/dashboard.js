// The procmesh dashboard. Renders the summary the orchestrator pushes over SSE
// (/api/v1/stream), pages through hosts and queues (/api/v1/hosts, /api/v1/queues), and shows
// one action's timeline and explanation on demand. Every value from the server is written with
// textContent: labels, names and reasons come from peers and are never parsed as HTML.
"use strict";

const PAGE = 50;
const STATES = ["pending", "running", "completed", "failed", "abandoned", "cancelled"];
const lists = { hosts: { offset: 0, total: 0 }, queues: { offset: 0, total: 0 } };
const samples = []; // { t: seconds, finished }
const queueSeen = new Map(); // queue id -> { t, finished }
let lastVersion = -1;
let lastListFetch = 0;
let listTimer = null;
let pushes = 0; // summaries received over the event stream

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setNumber(id, value) {
  const node = document.getElementById(id);
  node.textContent = value.toLocaleString("en-US");
  node.dataset.value = String(value);
}

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 1) return "now";
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function finishedOf(counts) {
  return counts.completed + counts.failed + counts.abandoned + counts.cancelled;
}

function render(summary) {
  for (const state of STATES) setNumber(`count-${state}`, summary.counts[state] + (state === "running" ? summary.counts.submitting : 0));
  const t = summary.totals;
  setNumber("total-submitted", t.submitted);
  const finished = t.completed + t.failed + t.abandoned + t.cancelled;
  setNumber("total-finished", finished);
  const hostsAlive = document.getElementById("hosts-alive");
  hostsAlive.textContent = `${summary.hosts.alive} / ${summary.hosts.lost}`;
  hostsAlive.dataset.value = String(summary.hosts.alive);
  const slots = document.getElementById("slots");
  slots.textContent = `${summary.hosts.slots_used} / ${summary.hosts.slots_free}`;
  slots.dataset.used = String(summary.hosts.slots_used);
  slots.dataset.free = String(summary.hosts.slots_free);
  document.getElementById("updated").textContent = `updated ${new Date(summary.at_ms).toLocaleTimeString()}`;
  document.body.dataset.version = String(summary.version);

  samples.push({ t: summary.at_ms / 1000, finished });
  while (samples.length > 240) samples.shift();
  drawChart();
  renderRecent(summary.recent);
  if (summary.version !== lastVersion) {
    lastVersion = summary.version;
    scheduleLists();
  }
}

function rate() {
  if (samples.length < 2) return 0;
  const last = samples[samples.length - 1];
  let first = samples[0];
  for (const s of samples) if (last.t - s.t <= 5) { first = s; break; }
  const dt = last.t - first.t;
  return dt > 0 ? (last.finished - first.finished) / dt : 0;
}

function drawChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    points.push(dt > 0 ? (samples[i].finished - samples[i - 1].finished) / dt : 0);
  }
  const max = Math.max(1, ...points);
  ctx.strokeStyle = "#263040";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  ctx.fillStyle = "#8594a5";
  ctx.font = "11px sans-serif";
  ctx.fillText(`${max.toFixed(0)}/s`, 4, 12);
  if (points.length > 1) {
    ctx.strokeStyle = "#3fb950";
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = (i / (points.length - 1)) * w;
      const y = h - 4 - (p / max) * (h - 20);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const r = rate();
  const label = document.getElementById("rate");
  label.textContent = `${r.toFixed(1)} actions/s`;
  label.dataset.value = r.toFixed(3);
}

function badge(state) {
  return el("span", { class: `badge s-${state}` }, state);
}

function renderRecent(recent) {
  const body = document.querySelector("#recent tbody");
  const rows = recent.map((r) => el("tr", { "data-lsn": String(r.lsn) },
    el("td", {}, el("a", { onclick: () => openDetail(r.lsn) }, `#${r.lsn}`)),
    el("td", {}, r.queue),
    el("td", {}, r.attempt),
    el("td", {}, badge(r.state)),
    el("td", {}, ago(r.at_ms)),
    el("td", {}, r.proc || ""),
    el("td", { class: "wrap" }, r.reason || "")));
  body.replaceChildren(...rows);
}

function bar(used, total, cls) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const inner = el("i", {});
  inner.style.width = `${pct}%`;
  return el("span", { class: `bar ${cls || ""}`, title: `${used} / ${total}` }, inner);
}

function renderHosts(page) {
  lists.hosts.total = page.total;
  document.getElementById("hosts-total").textContent = `${page.total} registered`;
  const rows = page.items.map((h) => el("tr", { "data-state": h.state },
    el("td", {}, h.addr),
    el("td", {}, h.node),
    el("td", { class: `s-${h.state}` }, h.state),
    el("td", {}, h.procs.map((p) => `${p.name} ${p.used}/${p.max}`).join(", ")),
    el("td", {}, bar(h.slots_used, h.slots_used + h.slots_free, "used"), ` ${h.slots_used} / ${h.slots_free}`),
    el("td", {}, h.isolation ? `${h.isolation}${h.cgroups ? " (cgroup " + h.cgroups + ")" : ""}` : "?"),
    el("td", { class: "wrap" }, Object.entries(h.labels).map(([k, v]) => `${k}=${v}`).join(" ")),
    el("td", {}, ago(h.last_heartbeat_ms))));
  document.querySelector("#hosts tbody").replaceChildren(...rows);
  pager("hosts");
}

function renderQueues(page) {
  lists.queues.total = page.total;
  document.getElementById("queues-total").textContent = `${page.total} listed`;
  const now = Date.now() / 1000;
  const rows = page.items.map((q) => {
    const c = q.counts;
    const total = c.new + c.pending + c.submitting + c.running + finishedOf(c);
    const done = finishedOf(c);
    const seen = queueSeen.get(q.id);
    let tput = "";
    if (seen && now > seen.t) tput = `${Math.max(0, (done - seen.finished) / (now - seen.t)).toFixed(1)}/s`;
    if (!seen || now - seen.t > 5) queueSeen.set(q.id, { t: now, finished: done });
    const state = q.cancelled ? "cancelled" : q.complete ? "complete" : q.draining ? "draining" : "open";
    return el("tr", { "data-queue": String(q.id), "data-done": String(done), "data-total": String(total) },
      el("td", {}, q.id),
      el("td", {}, q.name),
      el("td", {}, bar(done, total), ` ${done} / ${total}`),
      el("td", {}, c.pending + c.new),
      el("td", {}, c.running + c.submitting),
      el("td", { class: "s-completed" }, c.completed),
      el("td", { class: "s-failed" }, c.failed),
      el("td", { class: "s-abandoned" }, c.abandoned),
      el("td", {}, c.cancelled),
      el("td", {}, tput),
      el("td", {}, state));
  });
  document.querySelector("#queues tbody").replaceChildren(...rows);
  pager("queues");
}

function pager(name) {
  const list = lists[name];
  const box = document.querySelector(`.pager[data-list="${name}"]`);
  const [prev, next] = box.querySelectorAll("button");
  prev.disabled = list.offset === 0;
  next.disabled = list.offset + PAGE >= list.total;
  const last = Math.min(list.total, list.offset + PAGE);
  box.querySelector("span").textContent = list.total ? `${list.offset + 1}–${last} of ${list.total}` : "none";
}

async function getJson(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function scheduleLists() {
  if (listTimer) return;
  const wait = Math.max(0, 1500 - (Date.now() - lastListFetch));
  listTimer = setTimeout(() => { listTimer = null; fetchLists(); }, wait);
}

async function fetchLists() {
  lastListFetch = Date.now();
  try {
    const [hosts, queues] = await Promise.all([
      getJson(`/api/v1/hosts?offset=${lists.hosts.offset}&limit=${PAGE}`),
      getJson(`/api/v1/queues?offset=${lists.queues.offset}&limit=${PAGE}`),
    ]);
    renderHosts(hosts);
    renderQueues(queues);
  } catch (error) {
    console.warn("lists", error);
  }
}

async function openDetail(lsn) {
  const panel = document.getElementById("detail");
  panel.hidden = false;
  document.getElementById("detail-lsn").textContent = `#${lsn}`;
  const timeline = document.getElementById("detail-timeline");
  const explain = document.getElementById("detail-explain");
  timeline.replaceChildren("loading…");
  explain.replaceChildren();
  try {
    const [action, why] = await Promise.all([
      getJson(`/api/v1/actions/${lsn}`),
      getJson(`/api/v1/actions/${lsn}/explain`),
    ]);
    const start = action.timeline.length ? action.timeline[0].at_ms : 0;
    timeline.replaceChildren(...action.timeline.map((s) =>
      el("div", { class: `s-${s.state}` }, `${s.state} +${((s.at_ms - start) / 1000).toFixed(3)} s`)));
    explain.replaceChildren(renderExplain(why));
  } catch (error) {
    timeline.replaceChildren(String(error));
  }
}

function renderExplain(why) {
  const box = el("div", {});
  const e = why.explanation || why;
  if (e.summary) box.append(el("p", {}, e.summary));
  const reasons = e.reasons || e.waiting || [];
  if (reasons.length) {
    box.append(el("h2", {}, "Not running because"));
    box.append(el("ul", {}, ...reasons.map((r) => el("li", {}, r.summary || JSON.stringify(r)))));
  }
  const attempts = e.attempts || why.attempts || [];
  if (attempts.length) {
    box.append(el("h2", {}, "Attempts"));
    box.append(el("ul", {}, ...attempts.map((a) => el("li", {},
      `attempt ${a.attempt}: ${a.state || a.ended || ""} ${a.location || a.proc || ""} ${a.reason || ""}`))));
  }
  return box;
}

function connect() {
  const live = document.getElementById("live");
  // ?stream_s=N on the page's URL shortens each event stream (for browsers that wait on open
  // requests, such as headless Chromium dumping a page with its virtual time).
  const seconds = Number(new URLSearchParams(location.search).get("stream_s") || 0);
  const source = new EventSource(seconds > 0 ? `/api/v1/stream?max_s=${seconds}` : "/api/v1/stream");
  source.addEventListener("summary", (event) => {
    pushes += 1;
    document.body.dataset.pushes = String(pushes);
    live.textContent = "live";
    live.classList.remove("off");
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.classList.add("off");
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll(".pager")) {
    box.addEventListener("click", (event) => {
      const step = Number(event.target.dataset.step || 0);
      if (!step) return;
      const list = lists[box.dataset.list];
      list.offset = Math.max(0, list.offset + step * PAGE);
      fetchLists();
    });
  }
  document.getElementById("detail-close").addEventListener("click", () => {
    document.getElementById("detail").hidden = true;
  });
  getJson("/api/v1/summary").then(render).catch((error) => console.warn("summary", error));
  fetchLists();
  connect();
});
