//! The dashboard: one self-contained page (no external assets) over the
//! tenant's queues, tasks, workers, jobs and usage, with the operator's
//! verbs (pause, resume, purge, retry dead; retry, cancel, delete a task)
//! and, for an admin token, a tenant switcher.
//!
//! Three static files, none of them holding any data: the page
//! (`GET /`), its script (`GET /dashboard.js`) and its style
//! (`GET /dashboard.css`), the only routes served without a token. The
//! script asks for the token (or takes it from a `#token=…` fragment,
//! which browsers never send to the server, and then clears it from the
//! address bar at once), keeps it in the tab's `sessionStorage` only,
//! sends it only in the `Authorization` header, never in a URL, and reads
//! and acts through the same authenticated `/v1` routes as any client.
//!
//! It must never render data as markup: it writes text with `textContent`
//! only, so a job name or a task's log cannot inject any. The page's
//! Content-Security-Policy enforces what it can of that: scripts and
//! styles from this origin only (no inline script or style at all), fetches
//! to this origin only, and Trusted Types required, so the browser itself
//! refuses a string handed to `innerHTML` or any other HTML sink.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::IntoResponse;

/// The page: markup only; its script and style are the two routes below.
const PAGE: &str = include_str!("dashboard/index.html");
/// The page's script.
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
/// The page's style.
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The page's policy: nothing but this origin's script and style, fetches
/// to this origin, no plugin, frame, form target or base change, never
/// framed, and no string into an HTML sink (Trusted Types with no policy).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// One of the dashboard's static files, as `content_type`, with headers
/// that keep it from being sniffed, framed, cached or leaking a referrer.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `GET /`: the dashboard page.
pub async fn page() -> impl IntoResponse {
    file("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard.js`: the page's script.
pub async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard.css`: the page's style.
pub async fn style() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE)
}
