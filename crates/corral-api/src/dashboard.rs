//! The dashboard: one self-contained HTML page (no external assets) listing
//! the tenant's jobs, task counts and recent tasks.
//!
//! The page itself is a static shell that holds no tenant data, so it is the
//! one route served without a token: it asks for the token (or takes it from
//! a `#token=…` fragment, which browsers never send to the server, and then
//! clears it from the address bar), keeps it in the tab's `sessionStorage`
//! only, and reads everything through the same
//! authenticated `/v1` routes as any client. It renders with `textContent`
//! only, never HTML from data, so a job name or a task's log cannot inject
//! markup.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::response::{Html, IntoResponse};

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Corral</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
code{font-size:12px}.dead{color:#b00}.completed{color:#070}.err{color:#b00}
</style></head><body>
<h1>Corral</h1>
<form id="login"><label>API token <input id="token" type="password" size="70" autocomplete="off"></label>
<button>Show</button> <button type="button" id="forget">Forget</button></form>
<p id="status"></p>
<h2>Tasks by state</h2><table><thead><tr><th>pending</th><th>scheduled</th><th>active</th><th>completed</th><th>dead</th></tr></thead><tbody id="stats"></tbody></table>
<h2>Usage, last 30 days (UTC)</h2><table><thead><tr><th>day</th><th>calls</th><th>fuel</th><th>wall s</th><th>instantiate s</th><th>peak MiB</th><th>completed</th><th>retried</th><th>dead</th></tr></thead><tbody id="usage"></tbody></table>
<h2>Jobs</h2><table><thead><tr><th>name</th><th>version</th><th>handlers</th><th>fuel</th><th>memory</th><th>timeout ms</th></tr></thead><tbody id="jobs"></tbody></table>
<h2>Recent tasks</h2><table><thead><tr><th>id</th><th>job</th><th>v</th><th>queue</th><th>state</th><th>attempt</th><th>updated</th><th>fuel</th><th>wall ms</th><th>error / result</th></tr></thead><tbody id="tasks"></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function row(cells, cls) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c == null ? "" : String(c); tr.appendChild(td); }
  if (cls) tr.className = cls;
  return tr;
}
async function get(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem("corral-token") } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.kind + ": " + body.error.message : r.status);
  return body;
}
async function load() {
  if (!sessionStorage.getItem("corral-token")) { $("status").textContent = "Enter a token."; return; }
  try {
    const [stats, jobs, tasks, usage] = await Promise.all([get("/v1/stats"), get("/v1/jobs"), get("/v1/tasks?limit=50"), get("/v1/usage")]);
    $("stats").replaceChildren(row([stats.pending, stats.scheduled, stats.active, stats.completed, stats.dead]));
    const use = (day, u) => row([day, u.calls, u.fuel, (u.wall_us / 1e6).toFixed(3), (u.instantiate_us / 1e6).toFixed(3), (u.peak_memory_bytes / 1048576).toFixed(2), u.completed, u.retried, u.dead]);
    $("usage").replaceChildren(...usage.days.map((d) => use(d.day, d)), use("total", usage.total));
    $("jobs").replaceChildren(...jobs.jobs.map((j) => row([j.name, j.version, j.handlers.map((h) => h.name).join(" \u2192 "), j.limits.fuel, j.limits.memory_bytes, j.limits.timeout_ms])));
    $("tasks").replaceChildren(...tasks.tasks.map((t) => row([t.task_id, t.job_name, t.job_version, t.queue_name, t.state, t.attempt + "/" + t.max_attempts, t.updated_at, t.metering.fuel, (t.metering.wall_us / 1e3).toFixed(2), t.error ? t.error.kind + ": " + t.error.message : t.result_preview], t.state)));
    $("status").textContent = "Updated " + new Date().toLocaleTimeString() + " (every 5 s).";
  } catch (e) { $("status").textContent = String(e.message || e); $("status").className = "err"; }
}
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem("corral-token", decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
}
$("login").addEventListener("submit", (e) => { e.preventDefault(); sessionStorage.setItem("corral-token", $("token").value.trim()); $("token").value = ""; load(); });
$("forget").addEventListener("click", () => { sessionStorage.removeItem("corral-token"); location.reload(); });
load(); setInterval(load, 5000);
</script></body></html>
"##;

/// `GET /`: the dashboard page.
pub async fn page() -> impl IntoResponse {
    (
        [
            (CACHE_CONTROL, "no-store"),
            // Only this page's own inline script and style, and fetches to
            // this origin.
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'",
            ),
        ],
        Html(PAGE),
    )
}
