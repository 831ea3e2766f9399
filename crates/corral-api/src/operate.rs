//! Operator routes: a tenant runs its own tasks and queues again, stops,
//! deletes, pauses and purges them, and sees the workers serving it.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /v1/tasks/{id}/retry` | a dead or cancelled task runs again (within the tenant's `max_queued`) |
//! | `POST /v1/tasks/{id}/cancel` | a waiting task is cancelled now, a running one its worker is told to stop |
//! | `DELETE /v1/tasks/{id}` | the task and its record are gone (not while active: cancel it first) |
//! | `GET /v1/queues` | the tenant's queues with their counts and whether paused |
//! | `GET /v1/queues/{queue}/stats` | one queue's counts |
//! | `POST /v1/queues/{queue}/pause`, `/resume` | workers skip the queue, or take from it again |
//! | `POST /v1/queues/{queue}/retry-dead` | every dead task of the queue runs again |
//! | `DELETE /v1/queues/{queue}/tasks?state=S` | every task of the queue in state `S` is deleted (`active` refused) |
//! | `GET /v1/workers` | the live workers that serve the tenant's queue names |
//!
//! Everything is scoped to the caller's tenant (the token decides it,
//! never the request): a task id or queue name of another tenant answers
//! exactly as one that was never used, 404 `task_not_found` or
//! `queue_not_found`. A queue exists for a tenant while it holds any of
//! its task records ([`Broker::queue_names`]). A verb that does not apply
//! to the task's state (retrying a pending task, deleting an active one,
//! cancelling a finished one, purging `active`) is 409 `wrong_state`; a
//! retry past the tenant's `max_queued` is 429 `queue_full`, as an enqueue
//! would be ([`TenantLimits::queue_quota`]).
//!
//! Workers are fleet-wide and belong to the operator. A tenant is shown
//! only the workers that serve at least one queue name it has tasks in,
//! each with only those of its queue names, and never the ids of the tasks
//! a worker runs (they may be another tenant's): `tasks` is always empty.
//!
//! This module only scopes and maps; what each verb does to the tasks is
//! the broker's ([`Broker::retry`] and the verbs after it).
//!
//! [`TenantLimits::queue_quota`]: corral_registry::tenant::TenantLimits

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, TenantParam};
use super::errors::ApiError;
use super::extract::{Path, Query};
use super::page::{BoundedList, clip};
use super::tasks::{parse_id, task_not_found};
use super::{ApiState, Scope};
use corral_client::broker::{Broker, BrokerError, Cancelled, QueueStats};
use corral_core::task::{TaskId, TaskState};
use corral_core::text::Inert;
use corral_registry::submit::valid_queue;

/// A broker error about task `id`: its `NotFound` is the API's
/// `task_not_found`, as `GET /v1/tasks/{id}` answers.
fn task_error(id: TaskId) -> impl FnOnce(BrokerError) -> ApiError {
    move |e| match e {
        BrokerError::NotFound { .. } => task_not_found(id),
        other => other.into(),
    }
}

fn queue_not_found(queue: &str) -> ApiError {
    ApiError::not_found("queue_not_found", format!("queue `{queue}` not found"))
}

/// `queue` from the path, checked to be a name and one of the caller's
/// queues; another tenant's queue is not found, as a name never used.
async fn own_queue<B: Broker>(broker: &B, caller: &Scope, queue: &str) -> Result<(), ApiError> {
    if !valid_queue(queue) {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a queue name: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`",
            Inert(clip(queue, 128))
        )));
    }
    if broker
        .queue_names(caller.name())
        .await?
        .iter()
        .any(|q| q == queue)
    {
        Ok(())
    } else {
        Err(queue_not_found(queue))
    }
}

/// The answer of a verb on one task.
#[derive(Debug, Serialize)]
pub struct TaskDone {
    task_id: TaskId,
    /// The task's state now (`pending` after a retry), or `deleted`.
    state: &'static str,
}

/// `POST /v1/tasks/{id}/retry`: 200 `{task_id, state: "pending"}`.
pub async fn retry<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(id): Path<String>,
) -> Result<Json<TaskDone>, ApiError> {
    let id = parse_id(&id)?;
    let quota = caller.tenant.limits.queue_quota();
    state
        .broker
        .retry(caller.name(), id, &quota)
        .await
        .map_err(task_error(id))?;
    Ok(Json(TaskDone {
        task_id: id,
        state: "pending",
    }))
}

/// `DELETE /v1/tasks/{id}`: 200 `{task_id, state: "deleted"}`.
pub async fn delete_task<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(id): Path<String>,
) -> Result<Json<TaskDone>, ApiError> {
    let id = parse_id(&id)?;
    state
        .broker
        .delete(caller.name(), id)
        .await
        .map_err(task_error(id))?;
    Ok(Json(TaskDone {
        task_id: id,
        state: "deleted",
    }))
}

/// The answer of a cancel: the task and what happened.
#[derive(Debug, Serialize)]
pub struct CancelDone {
    task_id: TaskId,
    /// `{"result": "now"}`, or `{"result": "requested", "worker": id}`.
    #[serde(flatten)]
    cancelled: Cancelled,
}

/// `POST /v1/tasks/{id}/cancel`: 200 `{task_id, result: "now"}` for a
/// waiting task (it is `cancelled`), `{task_id, result: "requested",
/// worker}` for a running one (it becomes `cancelled` when its worker has
/// stopped it).
pub async fn cancel<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(id): Path<String>,
) -> Result<Json<CancelDone>, ApiError> {
    let id = parse_id(&id)?;
    let cancelled = state
        .broker
        .cancel(caller.name(), id)
        .await
        .map_err(task_error(id))?;
    Ok(Json(CancelDone {
        task_id: id,
        cancelled,
    }))
}

/// `GET /v1/queues`: `{"queues": [{tenant, queue, stats}…], "truncated"}`,
/// by name. A tenant has at most its `max_queues`.
pub async fn queues<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
) -> Result<Response, ApiError> {
    let queues = state.broker.queues(caller.name()).await?;
    let mut list = BoundedList::new("queues", state.config.max_list_bytes)?;
    for queue in &queues {
        if !list.push(queue)? {
            break;
        }
    }
    list.finish(&[])
}

/// `GET /v1/queues/{queue}/stats`: the queue's counts.
pub async fn queue_stats<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(queue): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    own_queue(&state.broker, &caller, &queue).await?;
    Ok(Json(state.broker.stats(caller.name(), &queue).await?))
}

/// The answer of a verb on a queue.
#[derive(Debug, Serialize)]
pub struct QueueDone {
    queue: String,
    /// After pause and resume: whether the queue is paused now.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    /// After retry-dead: how many dead tasks run again.
    #[serde(skip_serializing_if = "Option::is_none")]
    retried: Option<usize>,
    /// After a purge: the state purged and how many tasks went.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<TaskState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purged: Option<usize>,
}

impl QueueDone {
    fn of(queue: String) -> Self {
        Self {
            queue,
            paused: None,
            retried: None,
            state: None,
            purged: None,
        }
    }
}

async fn set_paused<B: Broker + Clone>(
    state: &ApiState<B>,
    caller: &Scope,
    queue: String,
    paused: bool,
) -> Result<Json<QueueDone>, ApiError> {
    own_queue(&state.broker, caller, &queue).await?;
    state
        .broker
        .pause(caller.name(), &queue, paused)
        .await
        .map_err(|e| match e {
            // The queue's last task went since the look.
            BrokerError::NotFound { .. } => queue_not_found(&queue),
            other => other.into(),
        })?;
    Ok(Json(QueueDone {
        paused: Some(paused),
        ..QueueDone::of(queue)
    }))
}

/// `POST /v1/queues/{queue}/pause`: 200 `{queue, paused: true}`. Workers
/// skip the queue until it is resumed; it still takes enqueues.
pub async fn pause<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(queue): Path<String>,
) -> Result<Json<QueueDone>, ApiError> {
    set_paused(&state, &caller, queue, true).await
}

/// `POST /v1/queues/{queue}/resume`: 200 `{queue, paused: false}`.
pub async fn resume<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(queue): Path<String>,
) -> Result<Json<QueueDone>, ApiError> {
    set_paused(&state, &caller, queue, false).await
}

/// `POST /v1/queues/{queue}/retry-dead`: 200 `{queue, retried: n}`.
pub async fn retry_dead<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(queue): Path<String>,
) -> Result<Json<QueueDone>, ApiError> {
    own_queue(&state.broker, &caller, &queue).await?;
    let quota = caller.tenant.limits.queue_quota();
    let retried = state
        .broker
        .retry_dead(caller.name(), &queue, &quota)
        .await?;
    Ok(Json(QueueDone {
        retried: Some(retried),
        ..QueueDone::of(queue)
    }))
}

/// The query of a purge: the state is required, so that no request empties
/// a queue by accident.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    state: Option<TaskState>,
}

/// `DELETE /v1/queues/{queue}/tasks?state=S`: 200 `{queue, state,
/// purged: n}`; `active` is 409 `wrong_state` (cancel those tasks).
pub async fn purge<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Scope,
    Path(queue): Path<String>,
    Query(query): Query<PurgeQuery>,
) -> Result<Json<QueueDone>, ApiError> {
    let Some(task_state) = query.state else {
        return Err(ApiError::bad_request(
            "`state` is required: the state whose tasks are deleted (pending, scheduled, retrying, completed, dead, cancelled)",
        ));
    };
    own_queue(&state.broker, &caller, &queue).await?;
    let purged = state
        .broker
        .purge(caller.name(), &queue, task_state)
        .await?;
    Ok(Json(QueueDone {
        state: Some(task_state),
        purged: Some(purged),
        ..QueueDone::of(queue)
    }))
}

/// `GET /v1/workers`: `{"workers": [WorkerInfo…], "truncated"}`, the live
/// workers serving any of the caller's queue names, each showing only
/// those names and no task ids (see the module docs). An admin token
/// without `?tenant=` sees every worker whole, the ids of the tasks each
/// runs included.
pub async fn workers<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    who: Caller,
    TenantParam(asked): TenantParam,
) -> Result<Response, ApiError> {
    let mut list = BoundedList::new("workers", state.config.max_list_bytes)?;
    if who.is_admin() && asked.is_none() {
        for worker in state.broker.workers().await? {
            if !list.push(&worker)? {
                break;
            }
        }
        return list.finish(&[]);
    }
    let catalog = state.registry.catalog();
    let tenant = who.tenant_for(catalog.as_ref(), asked.as_deref()).await?;
    let mine: BTreeSet<String> = state
        .broker
        .queue_names(&tenant.name)
        .await?
        .into_iter()
        .collect();
    if mine.is_empty() {
        return list.finish(&[]);
    }
    for mut worker in state.broker.workers().await? {
        worker.queues.retain(|q| mine.contains(q));
        if worker.queues.is_empty() {
            continue;
        }
        worker.tasks.clear();
        if !list.push(&worker)? {
            break;
        }
    }
    list.finish(&[])
}
