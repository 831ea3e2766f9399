//! Job routes: register a job (or a new version of one), list, show and
//! remove.
//!
//! A registration names an ordered chain of module hashes the tenant has
//! uploaded, and optional limits; limits left out take the defaults narrowed
//! to the tenant's ceilings, limits given above a ceiling are refused (422
//! `over_tenant_limit`). An existing name needs `"replace": true` (else 409
//! `job_exists`) and becomes a new version; tasks queued earlier keep theirs.
//! A module the tenant does not have (never uploaded, or another tenant's)
//! is 404 `module_not_found` either way. A registration past the tenant's
//! quotas (jobs, versions per job, handlers per job) is 422 with the
//! quota's kind; output and log limits above the tenant's ceilings are
//! `over_tenant_limit` like fuel, memory and time.
//!
//! `DELETE /v1/jobs/{name}` removes a job, every version of it (204): tasks
//! already queued for it fail when they run (`unknown_job`), and the name is
//! free again (a new registration starts at version 1). Another tenant's
//! job answers 404 `job_not_found` exactly like a job that does not exist.
//!
//! The list pages by name: `?limit=` (default 100) jobs after `?after=`,
//! the answer's `next` naming where the next page starts; it also stops
//! at the API's `max_list_bytes` (`truncated: true`, `next` set).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use axum::response::Response;

use super::body::read_json;
use super::errors::ApiError;
use super::extract::{Path, Query};
use super::page::BoundedList;
use super::{ApiState, Scope};
use corral_client::broker::{Broker, RateLimit};
use corral_core::text::{Inert, needs_escape};
use corral_registry::registry::{HandlerSpec, JobDefinition};
use corral_registry::submit::set_job_rate;
use corral_sandbox::{Limits, ModuleHash};

/// One link of the chain: a module hash, or a hash with a display name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HandlerRef {
    /// Just the module's sha256; the handler is named after its first 12
    /// hex digits.
    Hash(String),
    /// A named handler.
    Named(NamedHandler),
}

/// A handler with a display name (used in task errors and logs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedHandler {
    /// The display name.
    pub name: String,
    /// The module's sha256.
    pub module: String,
}

/// Limits as a registration gives them: any left out take the default,
/// narrowed to the tenant's ceiling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Fuel per handler call.
    pub fuel: Option<u64>,
    /// Memory per handler instance, bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock time per handler call, ms.
    pub timeout_ms: Option<u64>,
    /// Output bytes per call.
    pub max_output_bytes: Option<u64>,
    /// Log bytes kept per call.
    pub max_log_bytes: Option<u64>,
}

impl LimitsPatch {
    fn over(self, base: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(base.timeout_ms),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            max_log_bytes: self.max_log_bytes.unwrap_or(base.max_log_bytes),
        }
    }
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterJob {
    /// The job's name.
    pub name: String,
    /// The chain, in order.
    pub handlers: Vec<HandlerRef>,
    /// Limits for every handler call.
    #[serde(default)]
    pub limits: LimitsPatch,
    /// Make a new version if the job exists.
    #[serde(default)]
    pub replace: bool,
}

/// `POST /v1/jobs`.
pub async fn register<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<JobDefinition>), ApiError> {
    let req: RegisterJob = read_json(&state.config, scope.name(), &headers, body).await?;
    let mut handlers = Vec::with_capacity(req.handlers.len());
    for (i, link) in req.handlers.into_iter().enumerate() {
        let (name, hash) = match link {
            HandlerRef::Hash(hash) => (None, hash),
            HandlerRef::Named(named) => (Some(named.name), named.module),
        };
        let module = ModuleHash::parse(&hash).ok_or_else(|| {
            ApiError::bad_request(format!(
                "handler {i}: `{hash}` is not a module hash (64 lowercase hex digits)"
            ))
        })?;
        let name = name.unwrap_or_else(|| module.as_str()[..12].to_owned());
        // A display name, shown in task logs and errors: anything printable,
        // nothing that could break or restyle a line there.
        if name.is_empty() || name.len() > 128 || name.chars().any(needs_escape) {
            return Err(ApiError::bad_request(format!(
                "handler {i}: its name must be 1 to 128 characters, none of them control, line-separator or bidirectional-text characters"
            )));
        }
        handlers.push(HandlerSpec { name, module });
    }
    let base = scope.tenant.limits.cap(&Limits::default());
    let limits = req.limits.over(base);
    let registry = &state.registry;
    let definition = if req.replace {
        registry
            .replace(scope.name(), &req.name, handlers, limits)
            .await?
    } else {
        registry
            .register(scope.name(), &req.name, handlers, limits)
            .await?
    };
    tracing::info!(tenant = scope.name(), by = %scope.caller.actor(), job = %Inert(&definition.name), version = definition.version, "job registered");
    Ok((StatusCode::CREATED, Json(definition)))
}

/// The query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    /// Only jobs named after this (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (default 100, at most the API's `max_list`).
    pub limit: Option<usize>,
}

/// `GET /v1/jobs`: `{"jobs": [definition…], "truncated": bool, "next":
/// name or null}`, by name.
pub async fn list<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Query(query): Query<ListJobs>,
) -> Result<Response, ApiError> {
    let max = state.config.max_list;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!("`limit` must be 1 to {max}")));
    }
    // One more than asked: whether another page follows.
    let jobs = state
        .registry
        .catalog()
        .jobs_page(scope.name(), query.after.as_deref(), limit + 1)
        .await?;
    let mut list = BoundedList::new("jobs", state.config.max_list_bytes)?;
    let mut last = None;
    for job in jobs.iter().take(limit) {
        if !list.push(job)? {
            break;
        }
        last = Some(job.name.as_str());
    }
    let more = list.truncated() || jobs.len() > limit;
    let next = match (more, last) {
        (true, Some(name)) => serde_json::Value::from(name),
        _ => serde_json::Value::Null,
    };
    list.finish(&[("next", next)])
}

/// The query of `GET /v1/jobs/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowJob {
    /// A version other than the newest.
    pub version: Option<u32>,
}

/// `GET /v1/jobs/{name}`.
pub async fn show<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(name): Path<String>,
    Query(query): Query<ShowJob>,
) -> Result<Json<JobDefinition>, ApiError> {
    let found = state
        .registry
        .catalog()
        .job(scope.name(), &name, query.version)
        .await?;
    found.map(Json).ok_or_else(|| match query.version {
        Some(v) => ApiError::not_found(
            "job_version_not_found",
            format!("job `{name}` has no version {v}"),
        ),
        None => ApiError::not_found("job_not_found", format!("unknown job `{name}`")),
    })
}

/// `DELETE /v1/jobs/{name}`: 204 once removed.
pub async fn remove<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.registry.remove_job(scope.name(), &name).await? {
        return Err(ApiError::not_found(
            "job_not_found",
            format!("unknown job `{name}`"),
        ));
    }
    // Its rate limit goes with it (a job registered again under the name
    // starts without one).
    state.broker.set_job_rate(scope.name(), &name, None).await?;
    tracing::info!(tenant = scope.name(), by = %scope.caller.actor(), job = %Inert(&name), "job removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of `PUT /v1/jobs/{name}/rate-limit`.
#[derive(Debug, serde::Serialize)]
pub struct JobRate {
    /// The job.
    pub job: String,
    /// Its fleet-wide rate limit.
    pub rate_limit: RateLimit,
}

/// `PUT /v1/jobs/{name}/rate-limit`: `{tasks, per_ms}`, at most `tasks`
/// of the job's tasks start per window of `per_ms` over every worker;
/// tasks over it wait for the next window.
pub async fn set_rate<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<JobRate>, ApiError> {
    let rate: RateLimit = read_json(&state.config, scope.name(), &headers, body).await?;
    if rate.tasks == 0 || rate.per_ms == 0 {
        return Err(ApiError::bad_request(
            "`tasks` and `per_ms` must be at least 1",
        ));
    }
    let catalog = state.registry.catalog();
    set_job_rate(
        catalog.as_ref(),
        &state.broker,
        scope.name(),
        &name,
        Some(rate),
    )
    .await?;
    tracing::info!(tenant = scope.name(), by = %scope.caller.actor(), job = %Inert(&name), tasks = rate.tasks, per_ms = rate.per_ms, "job rate limit set");
    Ok(Json(JobRate {
        job: name,
        rate_limit: rate,
    }))
}

/// `DELETE /v1/jobs/{name}/rate-limit`: the job has no rate limit any more.
pub async fn remove_rate<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let catalog = state.registry.catalog();
    set_job_rate(catalog.as_ref(), &state.broker, scope.name(), &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
