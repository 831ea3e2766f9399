//! A tenant's schedules: tasks its jobs get on a timetable.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /v1/schedules` | stores a schedule (replacing one of the same name): 201 with it and its next tick |
//! | `GET /v1/schedules` | the tenant's schedules by name, each with its next tick |
//! | `DELETE /v1/schedules/{name}` | removes one (its tasks already enqueued stay): 204, or 404 `schedule_not_found` |
//!
//! The body of a `POST`: `{name, cron?, tz?, every_secs?, missed?, job,
//! args?, queue?, max_attempts?, timeout_ms?}` with exactly one of `cron`
//! (five fields, or six with seconds; read in `tz`, an IANA zone, UTC by
//! default) and `every_secs`. `missed` is `skip` (the default) or `once`:
//! what a run of ticks missed while no worker was up becomes. The job must
//! be the tenant's (404 `job_not_found` otherwise); each tick runs its
//! version current at the time. A tenant has at most its `max_schedules`
//! (429 `too_many_schedules`, checked atomically with the store); each
//! tick's task is enqueued within its `max_queued` and `max_queues`, as the
//! tenant's own enqueues are (a refused tick passes and is logged).
//!
//! Everything is the caller's tenant's; another tenant's schedule of the
//! same name is another schedule. The broker fires the ticks
//! ([`corral_client::schedule`]); this module only checks and maps.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use axum::body::Body;

use super::body::read_json;
use super::errors::ApiError;
use super::extract::Path;
use super::{ApiState, Scope};
use corral_client::broker::{Broker, BrokerError, StoredSchedule};
use corral_client::schedule::{Missed, Schedule, Timing};
use corral_core::task::{ArgsMap, DEFAULT_QUEUE};
use corral_core::text::Inert;
use corral_registry::submit::{MAX_ATTEMPTS, find_job, valid_queue};

/// The body of `POST /v1/schedules`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Its name: 1 to 128 of letters, digits, `-`, `_`, `.`, `:`.
    pub name: String,
    /// A cron expression.
    pub cron: Option<String>,
    /// The zone `cron` is read in (an IANA name; UTC when none).
    pub tz: Option<String>,
    /// Or: every this many seconds.
    pub every_secs: Option<u64>,
    /// What missed ticks become (`skip` or `once`).
    #[serde(default)]
    pub missed: Missed,
    /// The job each tick runs.
    pub job: String,
    /// The args each task starts with.
    #[serde(default)]
    pub args: ArgsMap,
    /// The queue its tasks wait in (default `default`).
    pub queue: Option<String>,
    /// Attempts per task (default 3, at most 100).
    pub max_attempts: Option<u32>,
    /// Priority of its tasks in their queue, 0 (the default) to 9.
    pub priority: Option<u8>,
    /// Wall-clock budget per handler call, narrowing the job's own.
    pub timeout_ms: Option<u64>,
}

/// The answer of `GET /v1/schedules`.
#[derive(Debug, Serialize)]
pub struct ScheduleList {
    /// The schedules, by name.
    pub schedules: Vec<StoredSchedule>,
}

impl NewSchedule {
    /// The schedule `tenant` asked for, or why it cannot be one.
    fn into_schedule(self, tenant: &str) -> Result<Schedule, ApiError> {
        let timing = match (self.cron, self.every_secs) {
            (Some(expr), None) => Timing::Cron { expr, tz: self.tz },
            (None, Some(secs)) if self.tz.is_none() => Timing::Every { secs },
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "`tz` applies to `cron` only".to_owned(),
                ));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `cron` and `every_secs`".to_owned(),
                ));
            }
        };
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        if !valid_queue(&queue) {
            return Err(ApiError::bad_request(format!(
                "invalid queue name `{}`",
                Inert(&queue)
            )));
        }
        if self
            .max_attempts
            .is_some_and(|n| !(1..=MAX_ATTEMPTS).contains(&n))
        {
            return Err(ApiError::bad_request(format!(
                "`max_attempts` must be 1 to {MAX_ATTEMPTS}"
            )));
        }
        let schedule = Schedule {
            name: self.name,
            tenant: tenant.to_owned(),
            timing,
            missed: self.missed,
            job: self.job,
            args: self.args,
            queue,
            max_attempts: self.max_attempts,
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            created_at: chrono::Utc::now(),
        };
        schedule.check().map_err(ApiError::bad_request)?;
        Ok(schedule)
    }
}

/// `POST /v1/schedules`.
pub async fn put<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<StoredSchedule>), ApiError> {
    let req: NewSchedule = read_json(&state.config, scope.name(), &headers, body).await?;
    let schedule = req.into_schedule(scope.name())?;
    let catalog = state.registry.catalog();
    find_job(catalog.as_ref(), scope.name(), &schedule.job, None).await?;
    let limits = &scope.tenant.limits;
    let stored = state
        .broker
        .put_schedule(&schedule, &limits.queue_quota(), limits.max_schedules)
        .await
        .map_err(|e| match e {
            BrokerError::Full { reason, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_schedules", reason)
            }
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET /v1/schedules`.
pub async fn list<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = state.broker.schedules(scope.name()).await?;
    Ok(Json(ScheduleList { schedules }))
}

/// `DELETE /v1/schedules/{name}`.
pub async fn remove<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.broker.remove_schedule(scope.name(), &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "schedule_not_found",
            format!("schedule `{}` not found", Inert(&name)),
        ))
    }
}
