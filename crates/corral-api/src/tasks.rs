//! Task routes: enqueue, show, wait, list, and the tenant's counts.
//!
//! Every route acts on the request's [`Scope`]: the token's tenant, or the
//! `?tenant=` an admin token names.
//!
//! Enqueue checks the job exists for that tenant (404 `job_not_found`
//! otherwise, the same for another tenant's job), pins the task to the job's
//! current version (or to the `version` asked for), and stores it under the
//! scope's tenant, whatever the body says, within the tenant's quota: the
//! broker checks and counts `max_queued` (429 `queue_full`) and
//! `max_queues` (429 `too_many_queues`) in the same atomic step as the
//! store ([`Broker::enqueue_within`]), so concurrent requests cannot pass
//! them. Reads go
//! through [`Broker::task`] with the scope's tenant, so another tenant's
//! task id answers 404 exactly like an unknown one.
//!
//! A list shows [`TaskSummary`] rows: a task's args, result log and log can
//! be megabytes each, so a list names each task, its state and the sizes of
//! what it holds, with only the first bytes of its error and result; the
//! whole record is `GET /v1/tasks/{id}`. It pages ([`Broker::list_page`]):
//! by queue in name order, then by state, newest first within each, `next`
//! naming where the following page starts (`?cursor=`). The answer also
//! stops at the API's `max_list_bytes` (`truncated: true`, and `next` then
//! starts at the first row left out).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use axum::response::Response;
use chrono::{DateTime, Utc};

use super::body::read_json;
use super::errors::ApiError;
use super::extract::{Path, Query};
use super::page::{BoundedList, clip};
use super::{ApiState, Scope};
use corral_client::broker::{Broker, MAX_PAGE, PageQuery, QueueStats};
use corral_core::metering::MeteringTotal;
use corral_core::task::{Task, TaskError, TaskId, TaskState};
use corral_core::text::Inert;
use corral_registry::submit::{submit, valid_queue};

pub use corral_registry::submit::{Enqueued, NewTask as EnqueueTask};

/// `POST /v1/tasks`: the body is a [`EnqueueTask`]; checking it, finding
/// the job, pinning its version and storing within the tenant's quota are
/// [`corral_registry::submit::submit`]'s, which `corral enqueue` shares.
pub async fn enqueue<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    let req: EnqueueTask = read_json(&state.config, scope.name(), &headers, body).await?;
    let catalog = state.registry.catalog();
    let answer = submit(&state.broker, catalog.as_ref(), &scope.tenant, req).await?;
    // A deduplicated request stored nothing: the task it names exists.
    let status = if answer.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(answer)))
}

pub(crate) fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a task id (a UUID)")))
}

pub(crate) fn task_not_found(id: TaskId) -> ApiError {
    ApiError::not_found("task_not_found", format!("task {id} not found"))
}

/// `GET /v1/tasks/{id}`.
pub async fn show<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.broker.task(scope.name(), id).await?;
    task.map(Json).ok_or_else(|| task_not_found(id))
}

/// The query of `GET /v1/tasks/{id}/wait`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// How long to wait at most, ms (default and cap: the API's `max_wait`).
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/tasks/{id}/wait`: answers as soon as the task is completed or
/// dead, or with its current state when the timeout passes first.
pub async fn wait<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Task>, ApiError> {
    let id = parse_id(&id)?;
    let max = state.config.max_wait;
    let timeout = query
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(max)
        .min(max);
    let give_up = tokio::time::Instant::now() + timeout;
    // The broker has no change feed; poll it, backing off from 5 ms to
    // 200 ms so a short task answers fast and a long one costs little.
    let mut pause = Duration::from_millis(5);
    loop {
        let task = state
            .broker
            .task(scope.name(), id)
            .await?
            .ok_or_else(|| task_not_found(id))?;
        let now = tokio::time::Instant::now();
        if task.state.is_final() || now >= give_up {
            return Ok(Json(task));
        }
        tokio::time::sleep(pause.min(give_up - now)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
    /// Where to go on from: a previous answer's `next`.
    pub cursor: Option<String>,
}

/// Most bytes of a name (job, queue) in a list row; names the API accepts
/// are at most 128.
const ROW_NAME_BYTES: usize = 128;
/// Most bytes of an error's kind in a list row.
const ROW_KIND_BYTES: usize = 64;
/// Most bytes of an error's message in a list row.
const ROW_MESSAGE_BYTES: usize = 512;
/// Most bytes of the result log in a list row.
const ROW_RESULT_BYTES: usize = 256;

/// One row of `GET /v1/tasks`: a task without its args, result log and
/// log, its text clipped so that a row stays small whatever the task holds.
#[derive(Debug, Serialize)]
pub struct TaskSummary<'a> {
    /// The task's id: `GET /v1/tasks/{id}` has the whole record.
    pub task_id: TaskId,
    /// The job (at most 128 bytes shown).
    pub job_name: &'a str,
    /// The job version it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_version: Option<u32>,
    /// The queue (at most 128 bytes shown).
    pub queue_name: &'a str,
    /// Where it is in its life.
    pub state: TaskState,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts it gets.
    pub max_attempts: u32,
    /// The handler to run next.
    pub current_handler_index: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Not before then (delayed and retrying tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// The last failure, its message clipped to 512 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorSummary<'a>>,
    /// The first bytes (at most 256) of the result log.
    pub result_preview: &'a str,
    /// The whole result log's size, in bytes.
    pub result_log_bytes: usize,
    /// The captured log's size, in bytes.
    pub log_bytes: usize,
    /// What all its handler calls cost so far.
    pub metering: MeteringTotal,
}

/// A task's error as a list row shows it.
#[derive(Debug, Serialize)]
pub struct ErrorSummary<'a> {
    /// Its kind (at most 64 bytes shown).
    pub kind: &'a str,
    /// The start of its message.
    pub message: &'a str,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The handler that failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler_index: Option<u32>,
}

impl<'a> TaskSummary<'a> {
    /// The row of `task`.
    pub fn of(task: &'a Task) -> Self {
        Self {
            task_id: task.task_id,
            job_name: clip(&task.job_name, ROW_NAME_BYTES),
            job_version: task.job_version,
            queue_name: clip(&task.queue_name, ROW_NAME_BYTES),
            state: task.state,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            current_handler_index: task.current_handler_index,
            created_at: task.created_at,
            updated_at: task.updated_at,
            run_at: task.run_at,
            error: task.error.as_ref().map(|e: &'a TaskError| ErrorSummary {
                kind: clip(&e.kind, ROW_KIND_BYTES),
                message: clip(&e.message, ROW_MESSAGE_BYTES),
                retryable: e.retryable,
                handler_index: e.handler_index,
            }),
            result_preview: clip(&task.result_log, ROW_RESULT_BYTES),
            result_log_bytes: task.result_log.len(),
            log_bytes: task.log.len(),
            metering: task.metering.total,
        }
    }
}

/// `GET /v1/tasks`: `{"tasks": [TaskSummary…], "truncated": bool, "next":
/// cursor or null}`, by queue name, then state, newest first within each.
pub async fn list<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let max = state.config.max_list.min(MAX_PAGE);
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!("`limit` must be 1 to {max}")));
    }
    if let Some(queue) = &query.queue
        && !valid_queue(queue)
    {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a queue name",
            Inert(clip(queue, ROW_NAME_BYTES))
        )));
    }
    let mut page_query = PageQuery {
        state: query.state,
        queue: query.queue,
        limit,
        cursor: query.cursor,
    };
    let page = state.broker.list_page(scope.name(), &page_query).await?;
    let mut list = BoundedList::new("tasks", state.config.max_list_bytes)?;
    for task in &page.tasks {
        if !list.push(&TaskSummary::of(task))? {
            break;
        }
    }
    let next = if list.truncated() {
        // The page's cursor would skip the rows left out: ask again for
        // just the rows sent, whose cursor starts at the first left out.
        page_query.limit = list.rows();
        state
            .broker
            .list_page(scope.name(), &page_query)
            .await?
            .next
    } else {
        page.next
    };
    list.finish(&[("next", serde_json::json!(next))])
}

/// `GET /v1/stats`: the tenant's task counts over all its queues.
pub async fn stats<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
) -> Result<Json<QueueStats>, ApiError> {
    Ok(Json(state.broker.tenant_stats(scope.name()).await?))
}
