//! A tenant's workflows: chains, groups and chords of its jobs' tasks.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /v1/workflows` | stores a workflow and enqueues its first steps: 202 `{workflow_id, steps, state}` |
//! | `GET /v1/workflows` | the tenant's workflows, running first, then latest ended first (at most 100) |
//! | `GET /v1/workflows/{id}` | one workflow: state, each step's task id, job, queue and state, the first error, the result |
//!
//! The body of a `POST`: `{flow, on_failure?}`, `flow` a tree of
//! `{"task": {job, args?, queue?, max_attempts?, timeout_ms?, version?}}`,
//! `{"chain": [...]}`, `{"group": [...]}` and `{"chord": {"group": [...],
//! "callback": ...}}` ([`corral_client::workflow::Flow`]); `on_failure` is
//! `fail_fast` (the default) or `wait`. Every job must be the tenant's
//! (404 `job_not_found`), pinned to its current version unless the task
//! names one. A tenant has at most its `max_workflows` stored (429
//! `too_many_workflows`, checked atomically with the store); steps are
//! enqueued within its `max_queued` and `max_queues` (a step they refuse
//! waits until there is room).
//!
//! Everything is the caller's tenant's: another tenant's workflow id is
//! answered as one that does not exist. The broker advances workflows
//! ([`corral_client::workflow`]); this module only checks and maps.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::body::read_json;
use super::errors::ApiError;
use super::extract::Path;
use super::{ApiState, Scope};
use corral_client::broker::{Broker, BrokerError};
use corral_client::workflow::{
    Flow, OnFailure, Workflow, WorkflowId, WorkflowState, WorkflowStatus, WorkflowSummary,
};
use corral_registry::submit::{SubmitError, submit_workflow};

/// The body of `POST /v1/workflows`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkflow {
    /// What it runs.
    pub flow: Flow,
    /// What a failed step does to it.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// The answer of `POST /v1/workflows`.
#[derive(Debug, Serialize)]
pub struct Submitted {
    /// The new workflow's id.
    pub workflow_id: WorkflowId,
    /// Where it is (`running`).
    pub state: WorkflowState,
}

/// The answer of `GET /v1/workflows`.
#[derive(Debug, Serialize)]
pub struct WorkflowList {
    /// The workflows, running first, then latest ended first.
    pub workflows: Vec<WorkflowSummary>,
}

/// `POST /v1/workflows`.
pub async fn submit<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let req: NewWorkflow = read_json(&state.config, scope.name(), &headers, body).await?;
    let workflow = Workflow {
        id: WorkflowId::new(),
        tenant: scope.name().to_owned(),
        flow: req.flow,
        on_failure: req.on_failure,
    };
    let catalog = state.registry.catalog();
    let id = submit_workflow(catalog.as_ref(), &state.broker, &scope.tenant, workflow)
        .await
        .map_err(|e| match e {
            SubmitError::Broker(BrokerError::Full { reason, .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_workflows", reason)
            }
            other => other.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            workflow_id: id,
            state: WorkflowState::Running,
        }),
    ))
}

/// `GET /v1/workflows`.
pub async fn list<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
) -> Result<Json<WorkflowList>, ApiError> {
    let workflows = state.broker.workflows(scope.name()).await?;
    Ok(Json(WorkflowList { workflows }))
}

/// `GET /v1/workflows/{id}`.
pub async fn show<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<WorkflowStatus>, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "workflow_not_found",
            format!("workflow {} not found", corral_core::text::Inert(&id)),
        )
    };
    let parsed: WorkflowId = id.parse().map_err(|_| not_found())?;
    state
        .broker
        .workflow(scope.name(), parsed)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}
