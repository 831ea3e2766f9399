// Corral's dashboard: reads and acts through the authenticated /v1 routes.
//
// Safety rules of this file (the page's CSP backs them: no inline script,
// Trusted Types required, so no string reaches an HTML sink):
// - data reaches the page through textContent, value and dataset only,
//   never as markup handed to an HTML parser;
// - the token lives in this tab's sessionStorage and travels only in the
//   Authorization header, never in a URL; a `#token=` fragment is imported
//   and cleared from the address bar at once;
// - every destructive action asks window.confirm first.
"use strict";

const TOKEN_KEY = "corral-token";
const TENANT_KEY = "corral-tenant";
const STATES = ["pending", "scheduled", "active", "retrying", "completed", "dead", "cancelled"];
// A purge deletes every task of one state; `active` is refused by the API.
const PURGEABLE = ["pending", "scheduled", "retrying", "completed", "dead", "cancelled"];
const REFRESH_MS = 2000;
// How long one API call may take: past it the call fails (and with it its
// refresh, which says so), so one answer that never comes cannot hold
// every later refresh back.
const REQUEST_MS = 15000;
const PAGE_SIZE = 50;
const TASK_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const $ = (id) => document.getElementById(id);

// What the page shows: filters, the cursor of the page shown and the
// cursors of the pages before it, the tenant an admin acts on.
const view = {
  state: "",
  queue: "",
  job: "",
  cursor: null,
  earlier: [],
  next: null,
  admin: false,
  tenant: null,
  busy: false,
  // The purge state picked per queue, kept across re-renders.
  purge: new Map(),
  // Job definitions by `name@version`, for the handler names.
  jobs: new Map(),
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, cls) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else {
      tr.appendChild(el("td", c == null ? "" : c));
    }
  }
  if (cls) tr.className = cls;
  return tr;
}

function button(label, cls, onClick) {
  const b = el("button", label, cls);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

// The status line: what an action did, or what went wrong. A failed
// refresh's message goes once a refresh succeeds again.
function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "err" : "";
  view.refreshFailed = false;
}

const ms = (us) => (us / 1e3).toFixed(2);
const mib = (bytes) => (bytes / 1048576).toFixed(2);
const json = (v) => JSON.stringify(v, null, 2);

// One API call. `scoped`: add the admin's `?tenant=` (every route but the
// tenant list). Throws an Error whose message names the route and the
// API's error kind and message.
async function api(method, path, params, scoped = true) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v != null && v !== "") url.searchParams.set(k, v);
  }
  if (scoped && view.tenant) url.searchParams.set("tenant", view.tenant);
  const r = await fetch(url, {
    method,
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
    signal: AbortSignal.timeout(REQUEST_MS),
  });
  const text = await r.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!r.ok) {
    const e = body && body.error;
    const what = e ? e.kind + ": " + e.message : "HTTP " + r.status;
    const err = new Error(method + " " + url.pathname + ": " + what);
    err.status = r.status;
    throw err;
  }
  return body;
}

// Runs an action the user asked for, then shows the result or the API's
// error in the status line and refreshes.
async function act(question, method, path, params, done) {
  if (question && !window.confirm(question)) return;
  try {
    const answer = await api(method, path, params);
    status(done(answer || {}));
  } catch (e) {
    status(String(e.message || e), true);
    return;
  }
  await refresh(true);
}

function taskPath(id) {
  return "/v1/tasks/" + encodeURIComponent(id);
}

function queuePath(queue, verb) {
  return "/v1/queues/" + encodeURIComponent(queue) + "/" + verb;
}

// The buttons a task in `state` offers.
function taskButtons(t) {
  const id = t.task_id;
  const out = [];
  if (t.state === "dead" || t.state === "cancelled") {
    out.push(button("Retry", "retry", () =>
      act(null, "POST", taskPath(id) + "/retry", null, () => "Task " + id + " queued again.")));
  }
  if (["pending", "scheduled", "retrying", "active"].includes(t.state)) {
    out.push(button("Cancel", "cancel", () =>
      act("Cancel task " + id + "?", "POST", taskPath(id) + "/cancel", null, (a) =>
        a.result === "requested"
          ? "Task " + id + ": its worker was told to stop it."
          : "Task " + id + " cancelled.")));
  }
  if (t.state !== "active") {
    out.push(button("Delete", "delete", () =>
      act("Delete task " + id + " and its record?", "DELETE", taskPath(id), null, () => {
        if (location.hash === "#task=" + id) history.replaceState(null, "", location.pathname);
        return "Task " + id + " deleted.";
      })));
  }
  return out;
}

function actions(buttons) {
  const span = el("span", null, "actions");
  span.append(...buttons);
  return span;
}

// What each row was built from, to keep rows whose data did not change.
const builtFrom = new WeakMap();

// Sets `tbody`'s rows to one per item, building only the rows whose data
// changed since the last refresh: a row (and the button under the user's
// pointer) stays the same element while its data does.
function sync(tbody, items, keyOf, build) {
  const old = new Map();
  for (const tr of tbody.children) old.set(tr.dataset.key, tr);
  const rows = items.map((item) => {
    const key = String(keyOf(item));
    const data = JSON.stringify(item);
    const have = old.get(key);
    if (have && builtFrom.get(have) === data) return have;
    const tr = build(item);
    tr.dataset.key = key;
    builtFrom.set(tr, data);
    return tr;
  });
  const same = rows.length === tbody.children.length && rows.every((tr, i) => tbody.children[i] === tr);
  if (!same) tbody.replaceChildren(...rows);
}

// Sets a select's options to `values` (after a first `any` option) when
// they changed, keeping its choice.
function options(select, values) {
  const data = JSON.stringify(values);
  if (builtFrom.get(select) === data) return;
  const keep = select.value;
  select.replaceChildren(new Option("any", ""), ...values.map((v) => new Option(v, v)));
  select.value = keep;
  builtFrom.set(select, data);
}

function renderQueues(queues) {
  sync($("queues"), queues, (q) => q.queue, (q) => {
    const s = q.stats;
    const name = q.queue;
    const pick = document.createElement("select");
    pick.className = "purge-state";
    for (const st of PURGEABLE) pick.appendChild(new Option(st, st));
    pick.value = view.purge.get(name) || "completed";
    pick.addEventListener("change", () => view.purge.set(name, pick.value));
    const buttons = [
      s.paused
        ? button("Resume", "resume", () =>
            act(null, "POST", queuePath(name, "resume"), null, () => "Queue " + name + " resumed."))
        : button("Pause", "pause", () =>
            act(null, "POST", queuePath(name, "pause"), null, () => "Queue " + name + " paused.")),
      button("Retry dead", "retry-dead", () =>
        act("Run every dead task of queue " + name + " again?", "POST", queuePath(name, "retry-dead"), null,
          (a) => a.retried + " dead task(s) of queue " + name + " queued again.")),
      pick,
      button("Purge", "purge", () =>
        act("Delete every " + pick.value + " task of queue " + name + "?", "DELETE", queuePath(name, "tasks"),
          { state: pick.value }, (a) => a.purged + " " + a.state + " task(s) of queue " + name + " deleted.")),
    ];
    const tr = row([name, s.pending, s.scheduled, s.retrying, s.active, s.completed, s.dead, s.cancelled,
      s.paused ? "paused" : "no", s.completed_last_minute, s.failed_last_minute, actions(buttons)]);
    tr.dataset.queue = name;
    tr.children[8].className = s.paused ? "paused" : "";
    return tr;
  });
  // The queue filter offers the queues there are (and keeps its choice).
  const names = queues.map((q) => q.queue);
  if (view.queue && !names.includes(view.queue)) names.push(view.queue);
  options($("f-queue"), names);
}

function renderTasks(page) {
  // The API filters by state and queue; the job filter applies to the rows
  // of each page here (the route has no job parameter).
  const tasks = view.job ? page.tasks.filter((t) => t.job_name === view.job) : page.tasks;
  sync($("tasks"), tasks, (t) => t.task_id, (t) => {
    const link = el("a", t.task_id);
    link.href = "#task=" + encodeURIComponent(t.task_id);
    const state = el("span", t.state, "state " + t.state);
    const tr = row([link, t.job_name, t.job_version, t.queue_name, state, t.attempt + "/" + t.max_attempts,
      t.updated_at, t.metering.fuel, ms(t.metering.wall_us),
      t.error ? t.error.kind + ": " + t.error.message : t.result_preview, actions(taskButtons(t))]);
    tr.dataset.task = t.task_id;
    return tr;
  });
  $("p-next").disabled = !page.next;
  $("p-prev").disabled = view.earlier.length === 0;
  $("p-first").disabled = view.earlier.length === 0;
  view.next = page.next || null;
  let note = "Page " + (view.earlier.length + 1) + ", " + page.tasks.length + " task(s)";
  if (view.job) note += ", " + tasks.length + " of job " + view.job + " (filtered on this page)";
  $("p-note").textContent = note + ".";
}

function renderWorkers(workers) {
  sync($("workers"), workers, (w) => w.id, (w) => {
    const tr = row([w.id, w.host, w.pid, w.version, w.queues.join(", "), w.concurrency,
      w.tasks.length ? w.tasks.join(" ") : "", w.started_at, w.seen_at]);
    tr.dataset.worker = w.id;
    return tr;
  });
}

function renderJobs(jobs) {
  sync($("jobs"), jobs, (j) => j.name, (j) => row([j.name, j.version, j.handlers.map((h) => h.name).join(" \u2192 "),
    j.limits.fuel, j.limits.memory_bytes, j.limits.timeout_ms]));
}

function renderSchedules(schedules) {
  const when = (t) => t.cron ? "cron " + t.cron.expr + (t.cron.tz ? " (" + t.cron.tz + ")" : "")
    : "every " + t.every.secs + "s";
  sync($("schedules"), schedules, (s) => s.name, (s) => {
    const tr = row([s.name, when(s.timing), s.missed, s.job, s.queue, s.next_tick || "\u2014"]);
    tr.dataset.schedule = s.name;
    return tr;
  });
}

function renderWorkflows(workflows) {
  sync($("workflows"), workflows, (w) => w.id, (w) => {
    const tr = row([w.id, w.state, w.steps, w.created_at, w.finished_at || "\u2014"]);
    tr.dataset.workflow = w.id;
    return tr;
  });
}

function renderUsage(usage) {
  const use = (day, u) => row([day, u.calls, u.fuel, (u.wall_us / 1e6).toFixed(3), (u.instantiate_us / 1e6).toFixed(3),
    mib(u.peak_memory_bytes), u.completed, u.retried, u.dead]);
  const days = usage.days.concat([Object.assign({}, usage.total, { day: "total" })]);
  sync($("usage"), days, (d) => d.day, (d) => use(d.day, d));
}

// The task id of a `#task=<id>` address, if it is one.
function shownTask() {
  const m = location.hash.match(/^#task=(.*)$/);
  if (!m) return null;
  const id = decodeURIComponent(m[1]);
  return TASK_ID.test(id) ? id : null;
}

// The job a task runs, for its handler names: the version it is pinned
// to (kept once found), or the job's newest for a task pinned to none.
// `null` when there is none (removed, or not registered yet).
async function jobOf(task) {
  const pinned = task.job_version != null;
  const key = task.job_name + "@" + task.job_version;
  if (pinned && view.jobs.has(key)) return view.jobs.get(key);
  try {
    const job = await api("GET", "/v1/jobs/" + encodeURIComponent(task.job_name),
      pinned ? { version: task.job_version } : null);
    if (pinned) view.jobs.set(key, job);
    return job;
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

// A handler's place in the task's life.
function handlerStatus(t, i) {
  if (i < t.current_handler_index) return "done";
  if (i > t.current_handler_index) return "waiting";
  if (t.error && t.error.handler_index === i && ["dead", "retrying", "cancelled"].includes(t.state)) {
    return t.state === "cancelled" ? "cancelled" : "failed";
  }
  if (t.state === "active") return "running";
  if (t.state === "completed") return "done";
  return "next";
}

async function renderDetail(id) {
  let t;
  try {
    t = await api("GET", taskPath(id));
  } catch (e) {
    // Gone (deleted, or never this tenant's): close the panel, say so once.
    if (e.status !== 404) throw e;
    history.replaceState(null, "", location.pathname);
    clearDetail();
    status(e.message, true);
    return;
  }
  // What the API leaves out when empty.
  const metering = t.metering || { handlers: [], total: { calls: 0, fuel: 0, wall_us: 0 } };
  const history = t.error_history || [];
  const job = await jobOf(t);
  // Unchanged since the last refresh: the panel (and its buttons) stay.
  const data = JSON.stringify([t, job]);
  if (!$("detail").hidden && builtFrom.get($("detail")) === data) return;
  builtFrom.set($("detail"), data);
  $("detail").hidden = false;
  $("detail").dataset.task = t.task_id;
  $("d-id").textContent = t.task_id;
  const fields = [
    ["state", t.state],
    ["job", t.job_name + (t.job_version != null ? " v" + t.job_version : "")],
    ["queue", t.queue_name],
    ["attempt", t.attempt + " of " + t.max_attempts],
    ["created", t.created_at],
    ["updated", t.updated_at],
    ["run at", t.run_at || ""],
    ["next handler", t.current_handler_index],
    ["cost", metering.total.calls + " call(s), fuel " + metering.total.fuel + ", wall " + ms(metering.total.wall_us) + " ms"],
  ];
  $("d-fields").replaceChildren(...fields.map(([k, v]) => {
    const tr = document.createElement("tr");
    const td = el("td", v);
    if (k === "state") td.className = "state " + t.state;
    tr.append(el("th", k), td);
    return tr;
  }));
  $("d-actions").replaceChildren(...taskButtons(t));
  const metered = new Map(metering.handlers.map((h) => [h.handler_index, h]));
  // Without the job (removed since), as many handlers as the task shows.
  const seen = t.state === "completed" ? t.current_handler_index : t.current_handler_index + 1;
  const count = job ? job.handlers.length : Math.max(seen, ...[...metered.keys()].map((i) => i + 1));
  const handlers = [];
  for (let i = 0; i < count; i++) {
    const m = metered.get(i);
    const name = job ? job.handlers[i].name : "handler " + i;
    const st = handlerStatus(t, i);
    handlers.push(row([i, name, st, m ? m.attempt : "", m ? m.fuel : "", m ? ms(m.wall_us) : "",
      m ? mib(m.peak_memory_bytes) : ""], st));
  }
  $("d-handlers").replaceChildren(...handlers);
  const e = t.error;
  $("d-error").textContent = e
    ? e.kind + (e.handler_index != null ? " (handler " + e.handler_index + ")" : "") +
      (e.retryable ? ", retryable" : "") + "\n" + e.message
    : "";
  $("d-history").replaceChildren(...history.map((h) =>
    row([h.kind, h.handler_index != null ? h.handler_index : "", h.retryable ? "yes" : "no", h.message])));
  $("d-args-in").textContent = json(t.original_args_map);
  $("d-args-out-title").textContent = t.state === "completed"
    ? "Args out (after the last handler)"
    : "Args now (in for handler " + t.current_handler_index + ")";
  $("d-args-out").textContent = json(t.args_map);
  $("d-result").textContent = t.result_log || "";
  $("d-log").textContent = t.log || "";
}

function clearDetail() {
  $("detail").hidden = true;
  builtFrom.delete($("detail"));
  delete $("detail").dataset.task;
}

// Asks whether the token is an admin's: `GET /v1/tenants` answers only
// an admin. The switcher shows only then.
async function probeAdmin() {
  view.admin = false;
  view.tenant = null;
  try {
    const list = await api("GET", "/v1/tenants", null, false);
    view.admin = true;
    const names = list.tenants.map((t) => t.name);
    const saved = sessionStorage.getItem(TENANT_KEY);
    view.tenant = names.includes(saved) ? saved : names[0] || null;
    $("tenant").replaceChildren(...names.map((n) => new Option(n, n)));
    $("tenant").value = view.tenant || "";
    $("tenant-note").textContent = list.next ? "(the first " + names.length + " tenants)" : "";
    $("tenant-box").hidden = false;
  } catch (e) {
    $("tenant-box").hidden = true;
    // 403 or 404: a tenant's token. Anything else is worth showing.
    if (e.status !== 403 && e.status !== 404) throw e;
  }
}

function clearAll() {
  for (const id of ["queues", "tasks", "workers", "jobs", "schedules", "workflows", "usage"]) $(id).replaceChildren();
  $("updated").textContent = "";
  clearDetail();
}

// Reloads everything shown. `force`: even while another refresh runs.
async function refresh(force) {
  if (!token()) {
    clearAll();
    status("Enter a token.");
    return;
  }
  if (view.busy && !force) return;
  view.busy = true;
  try {
    if (view.admin && !view.tenant) {
      clearAll();
      status("No tenants yet.");
      return;
    }
    const id = shownTask();
    const parts = await Promise.allSettled([
      api("GET", "/v1/queues").then((a) => renderQueues(a.queues)),
      api("GET", "/v1/tasks", { state: view.state, queue: view.queue, limit: PAGE_SIZE, cursor: view.cursor })
        .then(renderTasks),
      // An admin sees every worker whole (the tasks each runs included);
      // a tenant, those serving its queues.
      api("GET", "/v1/workers", null, !view.admin).then((a) => renderWorkers(a.workers)),
      api("GET", "/v1/jobs").then((a) => renderJobs(a.jobs)),
      api("GET", "/v1/schedules").then((a) => renderSchedules(a.schedules)),
      api("GET", "/v1/workflows").then((a) => renderWorkflows(a.workflows)),
      api("GET", "/v1/usage").then(renderUsage),
      id ? renderDetail(id) : Promise.resolve(clearDetail()),
    ]);
    const failed = [...new Set(parts.filter((p) => p.status === "rejected")
      .map((p) => String(p.reason.message || p.reason)))];
    if (failed.length) {
      status(failed.join("; "), true);
      view.refreshFailed = true;
    } else {
      if (view.refreshFailed) status("");
      $("updated").textContent = "Updated " + new Date().toLocaleTimeString() +
        (view.tenant ? ", tenant " + view.tenant : "") + ".";
    }
  } finally {
    view.busy = false;
  }
}

async function start() {
  if (!token()) return refresh();
  try {
    await probeAdmin();
  } catch (e) {
    status(String(e.message || e), true);
    return;
  }
  await refresh(true);
}

function resetPaging() {
  view.cursor = null;
  view.earlier = [];
}

// A token handed over in the address (`/#token=…`) is taken and cleared
// from the address bar at once, before anything else runs.
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
}

for (const st of STATES) $("f-state").appendChild(new Option(st, st));

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  sessionStorage.removeItem(TENANT_KEY);
  resetPaging();
  view.jobs.clear();
  status("");
  $("updated").textContent = "Loading\u2026";
  start();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(TENANT_KEY);
  location.reload();
});
$("tenant").addEventListener("change", () => {
  view.tenant = $("tenant").value || null;
  if (view.tenant) sessionStorage.setItem(TENANT_KEY, view.tenant);
  resetPaging();
  view.jobs.clear();
  view.queue = "";
  $("f-queue").value = "";
  if (shownTask()) history.replaceState(null, "", location.pathname);
  refresh(true);
});
$("filter").addEventListener("submit", (e) => {
  e.preventDefault();
  view.state = $("f-state").value;
  view.queue = $("f-queue").value;
  view.job = $("f-job").value.trim();
  resetPaging();
  refresh(true);
});
$("f-clear").addEventListener("click", () => {
  $("f-state").value = "";
  $("f-queue").value = "";
  $("f-job").value = "";
  view.state = view.queue = view.job = "";
  resetPaging();
  refresh(true);
});
$("p-next").addEventListener("click", () => {
  if (!view.next) return;
  view.earlier.push(view.cursor);
  view.cursor = view.next;
  refresh(true);
});
$("p-prev").addEventListener("click", () => {
  if (!view.earlier.length) return;
  view.cursor = view.earlier.pop();
  refresh(true);
});
$("p-first").addEventListener("click", () => {
  resetPaging();
  refresh(true);
});
$("d-close").addEventListener("click", (e) => {
  e.preventDefault();
  history.replaceState(null, "", location.pathname);
  clearDetail();
});
window.addEventListener("hashchange", () => refresh(true));

start();
setInterval(() => refresh(false), REFRESH_MS);
