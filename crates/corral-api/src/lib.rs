//! The HTTP API: tenants upload modules, register jobs, enqueue tasks and
//! read them back, each seeing only its own.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /v1/modules` | upload a module (raw body, `application/wasm`) | 201 `{hash, size}` |
//! | `GET /v1/modules/{hash}` | whether the tenant has that module | 200 `{hash, size}` |
//! | `POST /v1/jobs` | register a job (or a new version with `replace`) | 201 the definition |
//! | `GET /v1/jobs` | the newest version of each job, by name (`?after=&limit=`) | 200 `{jobs: [...], truncated, next}` |
//! | `GET /v1/jobs/{name}` | one job (`?version=N` for an older one) | 200 the definition |
//! | `DELETE /v1/jobs/{name}` | remove a job, every version (its queued tasks then fail `unknown_job`) | 204 |
//! | `PUT /v1/jobs/{name}/rate-limit` | `{tasks, per_ms}`: at most that many of the job's tasks start per window, over every worker (the rest wait) | 200 `{job, rate_limit}` |
//! | `DELETE /v1/jobs/{name}/rate-limit` | the job has no rate limit any more | 204 |
//! | `POST /v1/tasks` | enqueue a task of a job | 202 `{task_id, job, job_version, queue, state}`; 200 with `deduplicated: true` when its `unique_key` is held |
//! | `GET /v1/tasks` | task summaries (`?state=&queue=&limit=&cursor=`) by queue, state, newest first | 200 `{tasks: [...], truncated, next}` |
//! | `GET /v1/tasks/{id}` | one task | 200 the task |
//! | `POST /v1/tasks/{id}/retry` | run a dead or cancelled task again | 200 `{task_id, state}` |
//! | `POST /v1/tasks/{id}/cancel` | cancel a waiting or running task | 200 `{task_id, result[, worker]}` |
//! | `DELETE /v1/tasks/{id}` | delete a task that is not active | 200 `{task_id, state: "deleted"}` |
//! | `GET /v1/queues` | the tenant's queues with counts, paused or not | 200 `{queues: [...], truncated}` |
//! | `GET /v1/queues/{queue}/stats` | one queue's counts | 200 counts |
//! | `POST /v1/queues/{queue}/pause`, `.../resume` | workers skip the queue, or take from it again | 200 `{queue, paused}` |
//! | `POST /v1/queues/{queue}/retry-dead` | run every dead task of the queue again | 200 `{queue, retried}` |
//! | `DELETE /v1/queues/{queue}/tasks?state=S` | delete the queue's tasks in state `S` (not `active`) | 200 `{queue, state, purged}` |
//! | `GET /v1/workers` | the live workers serving the tenant's queue names, without task ids | 200 `{workers: [...], truncated}` |
//! | `POST /v1/schedules` | store a schedule (`cron` or `every_secs`) of a job | 201 the schedule with `next_tick` |
//! | `GET /v1/schedules` | the tenant's schedules by name | 200 `{schedules: [...]}` |
//! | `DELETE /v1/schedules/{name}` | remove a schedule | 204 |
//! | `POST /v1/workflows` | store a workflow (`{flow, on_failure?}`: chains, groups, chords of the tenant's jobs) | 202 `{workflow_id, state}` |
//! | `GET /v1/workflows` | the tenant's workflows, running first | 200 `{workflows: [...]}` |
//! | `GET /v1/workflows/{id}` | one workflow: state, steps, error, result | 200 the status |
//! | `GET /v1/tasks/{id}/wait` | long-poll until final or `?timeout_ms=` | 200 the task (check `state`) |
//! | `GET /v1/stats` | the tenant's task counts by state | 200 counts |
//! | `GET /v1/usage` | what the tenant's tasks cost per UTC day (`?since=&until=`, `YYYY-MM-DD`, default the last 30 days) | 200 `{tenant, since, until, days: [...], total}` |
//! | `GET /v1/tenants` | admin token only: the tenants by name (`?after=&limit=`) | 200 `{tenants: [...], truncated, next}` |
//! | `GET /` | the dashboard page (a static shell; it holds no data and asks for a token) | 200 HTML |
//! | `GET /dashboard.js`, `GET /dashboard.css` | the dashboard's script and style (static, no token) | 200 |
//! | `GET /healthz` | the process serves (no token) | 200 `{status}` |
//! | `GET /readyz` | the broker and the catalog answer within 2 s (no token) | 200 or 503 `{status, broker, catalog}` |
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` ([`auth`]); a
//! tenant's token decides the tenant, and every read and write is scoped to
//! it: what belongs to another tenant answers exactly as what does not
//! exist (404), so a tenant cannot even learn that it exists. An admin
//! token (`corral admin token`) acts on any tenant: the routes above over
//! one tenant's things take it with `?tenant=NAME` ([`auth::Scope`]), and
//! only it may use the routes over every tenant. Errors are JSON
//! ([`errors`]), whoever raises them ([`extract`], [`guard`]). Bodies are
//! capped: JSON at [`ApiConfig::max_json_bytes`], modules at the tenant's
//! `max_module_bytes`, and all of them together by the [`BodyBudget`]
//! ([`body`], [`budget`]); list answers at
//! [`ApiConfig::max_list_bytes`] as well as in rows ([`page`]).
//!
//! No client can hold the server: connections are limited and their heads,
//! bodies and idle time are timed ([`server`]), and every request is
//! answered or cut within [`ApiConfig::request_timeout`] ([`guard`]).
//!
//! Enqueue pins the task to the job's current version, so a later replace
//! does not change what an already queued task runs, and enforces the
//! tenant's `max_queued` and `max_queues` through
//! [`Broker::enqueue_within`], which checks and counts them atomically with
//! the store: no number of concurrent enqueues, through any number of API
//! processes, passes them.
//!
//! The API never runs handlers; a worker (in the same process under
//! `corral serve`, or elsewhere on the same Redis) does.

pub mod auth;
pub mod body;
pub mod budget;
mod dashboard;
pub mod errors;
pub mod extract;
pub mod guard;
pub mod health;
mod jobs;
pub mod metrics;
mod modules;
mod operate;
pub mod page;
mod schedules;
pub mod server;
mod tasks;
mod tenants;
mod usage;
mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, map_response};
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;

use corral_client::broker::Broker;
use corral_registry::registry::Registry;

pub use auth::{Caller, Scope, TenantParam};
pub use budget::BodyBudget;
pub use errors::ApiError;
pub use server::{SHUTDOWN_GRACE, raise_fd_limit, serve_with};

/// API settings: what a request may send, and how long and how many at once.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: u64,
    /// Longest a `wait` request may hold the connection.
    pub max_wait: Duration,
    /// Most rows (tasks, jobs) one list request returns.
    pub max_list: usize,
    /// Connections served at once (default 1024); more wait in the listen
    /// backlog. Lowered to fit the open-file limit ([`server`]).
    pub max_connections: usize,
    /// Time a connection has to send a complete request head after it is
    /// accepted or after its previous response; also the idle timeout of
    /// keep-alive connections (default 10 s).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), bytes (default
    /// 64 KiB; 431 past it).
    pub max_header_bytes: usize,
    /// Longest a request body may go without a byte, and a response write
    /// stay blocked, before the connection is dropped; also the grace before
    /// [`min_body_rate`](Self::min_body_rate) applies (default 10 s).
    pub body_timeout: Duration,
    /// Slowest average rate, bytes a second, at which a request body may
    /// arrive (after the grace) and a blocked response drain; 0 turns the
    /// rate off, leaving the stall bound (default 64 KiB/s).
    pub min_body_rate: u64,
    /// Longest any request may take, body included, before it is cut with
    /// 503 `request_timeout`; `wait` gets [`max_wait`](Self::max_wait) more
    /// (default 120 s).
    pub request_timeout: Duration,
    /// The budget every request body in flight is held in (default 256 MiB,
    /// 64 MiB per tenant). Clones of a config share one budget.
    pub body_budget: BodyBudget,
    /// Largest list answer, in bytes: rows past it are left for another
    /// request (`truncated: true`).
    pub max_list_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_json_bytes: 1 << 20,
            max_wait: Duration::from_secs(60),
            max_list: 1000,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            body_timeout: Duration::from_secs(10),
            min_body_rate: 64 << 10,
            request_timeout: Duration::from_secs(120),
            body_budget: BodyBudget::default(),
            max_list_bytes: 1 << 20,
        }
    }
}

/// What the handlers share: the broker tasks go to, the registry (and its
/// catalog) jobs and tenants live in, and the settings.
pub struct ApiState<B> {
    /// Where enqueued tasks go and are read back from.
    pub broker: B,
    /// Modules, job definitions, tenants and tokens.
    pub registry: Registry,
    /// Limits of the API itself.
    pub config: ApiConfig,
}

/// The API's routes over `state`.
pub fn router<B: Broker + Clone>(state: ApiState<B>) -> Router {
    let request_timeout = state.config.request_timeout;
    let wait_timeout = request_timeout.saturating_add(state.config.max_wait);
    let pace = Arc::new(state.config.clone());
    let state = Arc::new(state);
    // Every `/v1` route authenticates first (inside the time limit: the
    // lookup reads the catalog).
    let authenticated = from_fn_with_state(state.clone(), auth::authenticate::<B>);
    // The long-poll `wait` holds a request for up to `max_wait` by design;
    // every other route answers within `request_timeout`.
    let waits = Router::new()
        .route("/v1/tasks/{id}/wait", get(tasks::wait::<B>))
        .route_layer(authenticated.clone())
        .route_layer(from_fn_with_state(wait_timeout, guard::limit_time));
    let v1 = Router::new()
        .route("/v1/modules", post(modules::upload::<B>))
        .route("/v1/modules/{hash}", get(modules::show::<B>))
        .route("/v1/jobs", get(jobs::list::<B>).post(jobs::register::<B>))
        .route(
            "/v1/jobs/{name}",
            get(jobs::show::<B>).delete(jobs::remove::<B>),
        )
        .route(
            "/v1/jobs/{name}/rate-limit",
            put(jobs::set_rate::<B>).delete(jobs::remove_rate::<B>),
        )
        .route("/v1/tasks", get(tasks::list::<B>).post(tasks::enqueue::<B>))
        .route(
            "/v1/tasks/{id}",
            get(tasks::show::<B>).delete(operate::delete_task::<B>),
        )
        .route("/v1/tasks/{id}/retry", post(operate::retry::<B>))
        .route("/v1/tasks/{id}/cancel", post(operate::cancel::<B>))
        .route("/v1/queues", get(operate::queues::<B>))
        .route("/v1/queues/{queue}/stats", get(operate::queue_stats::<B>))
        .route("/v1/queues/{queue}/pause", post(operate::pause::<B>))
        .route("/v1/queues/{queue}/resume", post(operate::resume::<B>))
        .route(
            "/v1/queues/{queue}/retry-dead",
            post(operate::retry_dead::<B>),
        )
        .route("/v1/queues/{queue}/tasks", delete(operate::purge::<B>))
        .route("/v1/workers", get(operate::workers::<B>))
        .route(
            "/v1/schedules",
            get(schedules::list::<B>).post(schedules::put::<B>),
        )
        .route("/v1/schedules/{name}", delete(schedules::remove::<B>))
        .route(
            "/v1/workflows",
            get(workflows::list::<B>).post(workflows::submit::<B>),
        )
        .route("/v1/workflows/{id}", get(workflows::show::<B>))
        .route("/v1/stats", get(tasks::stats::<B>))
        .route("/v1/usage", get(usage::show::<B>))
        .route("/v1/tenants", get(tenants::list::<B>))
        .route_layer(authenticated)
        .route_layer(from_fn_with_state(request_timeout, guard::limit_time));
    let ready = Arc::new(health::ReadyCache::default());
    let open = Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/healthz", get(health::healthz))
        .route(
            "/readyz",
            get(move |State(state): State<Arc<ApiState<B>>>| async move {
                health::readyz(&state.broker, &state.registry, &ready).await
            }),
        )
        .route_layer(from_fn_with_state(request_timeout, guard::limit_time));
    waits
        .merge(v1)
        .merge(open)
        .fallback(|| async {
            ApiError::not_found("route_not_found", "no such route; see the API docs")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(map_response(guard::json_errors))
        // Outermost: whatever any route or refusal leaves of a body is read
        // before the answer goes out.
        .layer(from_fn_with_state(pace, body::drain_unread))
        .with_state(state)
}

/// Serves `router` on `listener` with the default [`ApiConfig`]'s
/// connection bounds until `shutdown` resolves; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, &ApiConfig::default(), shutdown).await
}
