//! The HTTP API: tenants upload modules, register jobs, enqueue tasks and
//! read them back, each seeing only its own.
//!
//! | method and path | does | answers |
//! | --- | --- | --- |
//! | `POST /v1/modules` | upload a module (raw body, `application/wasm`) | 201 `{hash, size}` |
//! | `GET /v1/modules/{hash}` | whether the tenant has that module | 200 `{hash, size}` |
//! | `POST /v1/jobs` | register a job (or a new version with `replace`) | 201 the definition |
//! | `GET /v1/jobs` | the newest version of each job | 200 `{jobs: [...]}` |
//! | `GET /v1/jobs/{name}` | one job (`?version=N` for an older one) | 200 the definition |
//! | `POST /v1/tasks` | enqueue a task of a job | 202 `{task_id, job, job_version, queue, state}` |
//! | `GET /v1/tasks` | list tasks (`?state=&queue=&limit=`) newest first | 200 `{tasks: [...]}` |
//! | `GET /v1/tasks/{id}` | one task | 200 the task |
//! | `GET /v1/tasks/{id}/wait` | long-poll until final or `?timeout_ms=` | 200 the task (check `state`) |
//! | `GET /v1/stats` | the tenant's task counts by state | 200 counts |
//! | `GET /` | the dashboard page (a static shell; it holds no data and asks for a token) | 200 HTML |
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` ([`auth`]); the
//! token decides the tenant, and every read and write is scoped to it: what
//! belongs to another tenant answers exactly as what does not exist (404),
//! so a tenant cannot even learn that it exists. Errors are JSON
//! ([`errors`]). Bodies are capped: JSON at [`ApiConfig::max_json_bytes`],
//! modules at the tenant's `max_module_bytes` ([`body`]).
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
mod dashboard;
pub mod errors;
mod jobs;
mod modules;
mod tasks;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::registry::Registry;

pub use auth::Caller;
pub use errors::ApiError;

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest JSON request body, in bytes.
    pub max_json_bytes: u64,
    /// Longest a `wait` request may hold the connection.
    pub max_wait: Duration,
    /// Most tasks one list request returns.
    pub max_list: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_json_bytes: 1 << 20,
            max_wait: Duration::from_secs(60),
            max_list: 1000,
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
    Router::new()
        .route("/", get(dashboard::page))
        .route("/v1/modules", axum::routing::post(modules::upload::<B>))
        .route("/v1/modules/{hash}", get(modules::show::<B>))
        .route("/v1/jobs", get(jobs::list::<B>).post(jobs::register::<B>))
        .route("/v1/jobs/{name}", get(jobs::show::<B>))
        .route("/v1/tasks", get(tasks::list::<B>).post(tasks::enqueue::<B>))
        .route("/v1/tasks/{id}", get(tasks::show::<B>))
        .route("/v1/tasks/{id}/wait", get(tasks::wait::<B>))
        .route("/v1/stats", get(tasks::stats::<B>))
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
        .with_state(Arc::new(state))
}

/// How long requests in flight (a long-poll `wait`, say) may go on once
/// shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` resolves; then no new
/// connection is taken, and requests in flight get [`SHUTDOWN_GRACE`] to
/// finish before their connections are dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (asked_tx, mut asked) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = asked_tx.send(true);
    });
    let grace_over = async move {
        if asked.wait_for(|a| *a).await.is_err() {
            // The server ended without being asked to: nothing to cut short.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server.into_future() => served,
        () = grace_over => {
            tracing::info!("requests still in flight after the shutdown grace; dropping them");
            Ok(())
        }
    }
}
