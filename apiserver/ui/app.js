// mube's dashboard: one page, no dependencies. Each kind shown is a
// Collection that lists, then watches from the list's resourceVersion,
// resumes a dropped watch from the last resourceVersion it saw, and lists
// again when the server answers 410 Gone, as client-go's reflector does.
// Objects are kept by name, so a relist or a replayed event can never make
// a row appear twice. The table draws only the rows in view, so 10,000
// nodes cost what 40 do.
"use strict";

const ROW_HEIGHT = 30;
const OVERSCAN = 10;
const TOKEN_KEY = "mube-token";

let token = sessionStorage.getItem(TOKEN_KEY) || "";

/** fetch() with the pasted token, if any. */
function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  return fetch(path, { ...options, headers });
}

class Unauthorized extends Error {}
class Forbidden extends Error {}

/** 401 asks for a token; 403 says who may not read what; else an Error. */
async function refused(r, what) {
  if (r.status === 401) return new Unauthorized(await message(r));
  if (r.status === 403) return new Forbidden(await message(r));
  return new Error(`${what}: ${r.status} ${await message(r)}`);
}

/** A kind's objects by namespace/name, listed and then watched. */
class Collection {
  constructor(path, onChange) {
    this.path = path;
    this.onChange = onChange;
    this.items = new Map();
    this.resourceVersion = "";
    this.generation = 0; // only grows: a stale follower can tell it is one
    this.running = false;
    this.abort = null; // cancels the current follower's requests
    this.listed = false;
    this.lists = 0; // how many times it has listed (the tests read it)
  }

  static key(o) {
    const m = o.metadata || {};
    return m.namespace ? m.namespace + "/" + m.name : m.name;
  }

  /** Starts following the kind; with `again`, a new follower replaces any
   *  earlier one (after signing in). */
  start(again = false) {
    if (this.running && !again) return;
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    this.generation += 1;
    this.running = true;
    this.run(this.generation, this.abort.signal);
  }

  async list(signal) {
    const r = await api(this.path, { signal });
    if (!r.ok) throw await refused(r, this.path);
    const body = await r.json();
    const items = new Map();
    for (const o of body.items || []) items.set(Collection.key(o), o);
    this.items = items;
    this.resourceVersion = body.metadata.resourceVersion;
    this.listed = true;
    this.lists += 1;
    this.onChange(true);
  }

  async run(generation, signal) {
    let backoff = 250;
    let needList = true;
    const current = () => generation === this.generation;
    while (current()) {
      try {
        if (needList) {
          await this.list(signal);
          needList = false;
        }
        const began = Date.now();
        needList = await this.watch(signal);
        // A watch that ends at once (a proxy closing streams) must not
        // become a tight loop of requests.
        if (Date.now() - began < 1000) await sleep(backoff);
        backoff = Math.min(backoff * 2, 2000);
        if (Date.now() - began >= 1000) backoff = 250;
      } catch (e) {
        if (!current()) return; // replaced (after signing in): quietly
        if (e instanceof Unauthorized || e instanceof Forbidden) {
          // Stopped until something starts it again (signing in, a tab).
          this.running = false;
          if (e instanceof Unauthorized) {
            askForToken(e.message);
          } else {
            const problem = document.getElementById("problem");
            problem.textContent = e.message;
            problem.hidden = false;
          }
          return;
        }
        connection("reconnecting");
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  /** Follows the watch until it ends; true when a relist is needed. */
  async watch(signal) {
    const query = `watch=true&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(this.resourceVersion)}`;
    const r = await api(`${this.path}?${query}`, { signal });
    if (r.status === 410) return true;
    if (!r.ok) throw await refused(r, "watch " + this.path);
    connection("live");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim() && this.apply(JSON.parse(line))) {
          reader.cancel().catch(() => {});
          return true;
        }
      }
    }
  }

  /** One watch event; true when it says to list again (410). */
  apply(event) {
    const o = event.object || {};
    if (event.type === "ERROR") {
      if (o.code === 410) return true;
      throw new Error(o.message || "watch error");
    }
    if (o.metadata && o.metadata.resourceVersion) {
      this.resourceVersion = o.metadata.resourceVersion;
    }
    if (event.type === "BOOKMARK") return false;
    const key = Collection.key(o);
    const membership = event.type === "DELETED" || !this.items.has(key);
    if (event.type === "DELETED") this.items.delete(key);
    else this.items.set(key, o);
    this.onChange(membership);
    return false;
  }
}

async function message(r) {
  try {
    const body = await r.json();
    return body.message || r.statusText;
  } catch (_) {
    return r.statusText;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function connection(state) {
  const el = document.getElementById("conn");
  if (el.dataset.state !== state) {
    el.dataset.state = state;
    el.textContent = state;
  }
}

function askForToken(why) {
  const form = document.getElementById("login");
  document.getElementById("login-why").textContent =
    (why ? why + ": " : "") + "paste a bearer token (kept in this browser tab only).";
  form.hidden = false;
  connection("signed out");
}

// --- what each tab shows -------------------------------------------------

function age(time) {
  if (!time) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(time)) / 1000));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.round(s / 60) + "m";
  if (s < 172800) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}

function badge(text) {
  const span = document.createElement("span");
  span.className = "state " + text;
  span.textContent = text;
  return span;
}

function nodeIP(n) {
  const a = ((n.status || {}).addresses || []).find((x) => x.type === "InternalIP");
  return a ? a.address : "";
}

/** When the node last beat: its Lease's renewal (a steady heartbeat
 *  writes only the Lease), or "" when it never has. */
function lastHeartbeat(n) {
  const lease = collections.leases.items.get("kube-node-lease/" + n.metadata.name);
  return (lease && lease.spec && lease.spec.renewTime) || "";
}

function heartbeatAge(n) {
  const t = lastHeartbeat(n);
  return t ? age(t) : "never";
}

function podsOn(name) {
  return podCounts.get(name) || 0;
}

function capacity(n) {
  const c = (n.status || {}).capacity || {};
  return ["cpu", "memory", "pods"].filter((k) => c[k] !== undefined).map((k) => `${k} ${c[k]}`).join(", ");
}

const TABS = {
  nodes: {
    path: "/api/v1/nodes",
    columns: ["Name", "State", "Last heartbeat", "Runtime", "Version", "Capacity", "IP", "Pods"],
    state: (n) => (n.status || {}).state || "Unknown",
    cells: (n) => {
      const info = (n.status || {}).nodeInfo || {};
      return [
        n.metadata.name,
        badge((n.status || {}).state || "Unknown"),
        heartbeatAge(n),
        info.containerRuntimeVersion || "",
        info.kubeletVersion || "",
        capacity(n),
        nodeIP(n),
        String(podsOn(n.metadata.name)),
      ];
    },
    text: (n) => [n.metadata.name, (n.status || {}).state || "", nodeIP(n)].join(" "),
  },
  pods: {
    path: "/api/v1/pods",
    columns: ["Namespace", "Name", "Phase", "Node", "IP", "Age"],
    state: (p) => (p.status || {}).phase || "Pending",
    cells: (p) => [
      p.metadata.namespace,
      p.metadata.name,
      badge((p.status || {}).phase || "Pending"),
      (p.spec || {}).nodeName || "",
      (p.status || {}).podIP || "",
      age(p.metadata.creationTimestamp),
    ],
    text: (p) => [p.metadata.namespace, p.metadata.name, (p.status || {}).phase, (p.spec || {}).nodeName].join(" "),
  },
  deployments: {
    path: "/apis/apps/v1/deployments",
    columns: ["Namespace", "Name", "Ready", "Up-to-date", "Available", "Age"],
    state: () => "",
    cells: (d) => {
      const s = d.status || {};
      return [
        d.metadata.namespace,
        d.metadata.name,
        `${s.readyReplicas || 0}/${(d.spec || {}).replicas ?? 1}`,
        String(s.updatedReplicas || 0),
        String(s.availableReplicas || 0),
        age(d.metadata.creationTimestamp),
      ];
    },
    text: (d) => [d.metadata.namespace, d.metadata.name].join(" "),
  },
  events: {
    path: "/api/v1/events",
    columns: ["Last seen", "Type", "Reason", "Object", "Message"],
    state: (e) => e.type || "",
    cells: (e) => [
      age(eventTime(e)),
      badge(e.type || "Normal"),
      e.reason || "",
      `${(e.involvedObject || {}).kind || ""}/${(e.involvedObject || {}).name || ""}`,
      e.message || "",
    ],
    text: (e) => [e.reason, (e.involvedObject || {}).name, e.message].join(" "),
    newestFirst: true,
  },
};

function eventTime(e) {
  return e.lastTimestamp || e.eventTime || (e.metadata || {}).creationTimestamp || "";
}

// --- the table -------------------------------------------------------------

let tab = "nodes";
let shown = []; // the active tab's keys, filtered and sorted (objects are
// looked up when drawn, so a modified object shows without a rebuild)
let stale = true; // `shown` must be rebuilt (membership or filter changed)
let drawQueued = false;
const podCounts = new Map();

function draw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    render();
  });
}

function rebuild() {
  const view = TABS[tab];
  const needle = document.getElementById("filter").value.trim().toLowerCase();
  const items = collections[tab].items;
  let all = Array.from(items.values());
  if (needle) all = all.filter((o) => view.text(o).toLowerCase().includes(needle));
  if (view.newestFirst) all.sort((a, b) => eventTime(b).localeCompare(eventTime(a)));
  else all.sort((a, b) => Collection.key(a).localeCompare(Collection.key(b)));
  shown = all.map(Collection.key);
  stale = false;
  const total = collections[tab].items.size;
  document.getElementById("count").textContent =
    (needle ? `${shown.length} of ${total}` : `${total}`) + " " + tab;
}

function render() {
  if (stale) rebuild();
  const view = TABS[tab];
  const scroller = document.getElementById("scroller");
  document.getElementById("spacer").style.height = (shown.length + 1) * ROW_HEIGHT + "px";
  const first = Math.max(0, Math.floor(scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
  const visible = Math.ceil(scroller.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
  const last = Math.min(shown.length, first + visible);
  const table = document.getElementById("table");
  table.style.top = first * ROW_HEIGHT + "px";
  const head = document.getElementById("head");
  if (head.dataset.tab !== tab) {
    head.dataset.tab = tab;
    head.replaceChildren(...view.columns.map((c) => {
      const th = document.createElement("th");
      th.textContent = c;
      return th;
    }));
  }
  const rows = [];
  const items = collections[tab].items;
  for (let i = first; i < last; i++) {
    const o = items.get(shown[i]);
    if (!o) continue;
    const tr = document.createElement("tr");
    tr.dataset.name = Collection.key(o);
    tr.dataset.state = view.state(o);
    for (const cell of view.cells(o)) {
      const td = document.createElement("td");
      if (typeof cell === "string") td.textContent = cell;
      else td.appendChild(cell);
      tr.appendChild(td);
    }
    rows.push(tr);
  }
  document.getElementById("rows").replaceChildren(...rows);
  document.body.dataset.synced = collections[tab].listed ? "true" : "false";
  // When the first listed rows were drawn (mube-bench dashboard reads it).
  if (rows.length > 0 && collections[tab].listed && performance.getEntriesByName("mube-first-rows").length === 0) {
    performance.mark("mube-first-rows");
  }
  if (selected) showDetails(selected);
}

// --- node details ----------------------------------------------------------

let selected = null;

function showDetails(name) {
  const n = collections.nodes.items.get(name);
  const aside = document.getElementById("details");
  if (tab !== "nodes" || !n) {
    aside.hidden = true;
    return;
  }
  selected = name;
  aside.hidden = false;
  document.getElementById("details-name").textContent = name;
  const info = (n.status || {}).nodeInfo || {};
  const facts = [
    ["State", (n.status || {}).state || "Unknown"],
    ["Last heartbeat", lastHeartbeat(n) ? age(lastHeartbeat(n)) + " ago" : "never"],
    ["Runtime", info.containerRuntimeVersion || ""],
    ["Version", info.kubeletVersion || ""],
    ["Capacity", capacity(n)],
    ["IP", nodeIP(n)],
    ["Pods", String(podsOn(name))],
    ["Created", n.metadata.creationTimestamp || ""],
  ];
  document.getElementById("details-facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
  const transitions = Array.from(collections.events.items.values())
    .filter((e) => (e.involvedObject || {}).kind === "Node" && (e.involvedObject || {}).name === name)
    .sort((a, b) => eventTime(b).localeCompare(eventTime(a)))
    .slice(0, 20);
  document.getElementById("details-events").replaceChildren(...transitions.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${age(eventTime(e))} ago: ${e.reason || ""} ${e.message || ""}`;
    return li;
  }));
}

// --- wiring ----------------------------------------------------------------

function changed(kind) {
  return (membership) => {
    if (kind === "pods") countPods();
    if (kind === tab) {
      // A change can move a row in or out of a filter, or in newest-first order.
      const filtered = document.getElementById("filter").value.trim() !== "";
      if (membership || filtered || TABS[tab].newestFirst) stale = true;
      draw();
    } else if (kind === "events" && selected) {
      draw();
    }
  };
}

function countPods() {
  podCounts.clear();
  for (const p of collections.pods.items.values()) {
    const node = (p.spec || {}).nodeName;
    if (node) podCounts.set(node, (podCounts.get(node) || 0) + 1);
  }
  if (tab === "nodes") draw();
}

const collections = {
  nodes: new Collection(TABS.nodes.path, changed("nodes")),
  leases: new Collection("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", () => {}),
  pods: new Collection(TABS.pods.path, changed("pods")),
  deployments: new Collection(TABS.deployments.path, changed("deployments")),
  events: new Collection(TABS.events.path, changed("events")),
};

function selectTab(name) {
  tab = name;
  selected = null;
  document.getElementById("details").hidden = true;
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  collections[name].start();
  stale = true;
  document.getElementById("scroller").scrollTop = 0;
  draw();
}

function startAll() {
  document.getElementById("login").hidden = true;
  document.getElementById("problem").hidden = true;
  for (const name of new Set(["nodes", "leases", "pods", tab])) {
    collections[name].start(true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("scroller").addEventListener("scroll", draw, { passive: true });
  document.getElementById("filter").addEventListener("input", () => {
    stale = true;
    draw();
  });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => selectTab(b.dataset.tab));
  }
  document.getElementById("rows").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr && tab === "nodes") {
      collections.events.start();
      showDetails(tr.dataset.name);
    }
  });
  document.getElementById("close").addEventListener("click", () => {
    selected = null;
    document.getElementById("details").hidden = true;
  });
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    startAll();
  });
  window.addEventListener("resize", draw);
  // Ages move on their own: redraw the rows in view once a second.
  setInterval(draw, 1000);
  startAll();
});
