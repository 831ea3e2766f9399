//! Enqueueing a tenant's tasks as the catalog allows: the one path both
//! `POST /v1/tasks` and `corral enqueue` take.
//!
//! A [`NewTask`] (what a producer asks for) is checked ([`NewTask::check`]:
//! queue name, attempts, delay, timeout), its job looked up in the catalog
//! for the tenant ([`find_job`]: an unknown job, or another tenant's, is
//! [`SubmitError::JobNotFound`]) and the task pinned to that job's version
//! ([`NewTask::into_task`]), so a later `replace` does not change what a
//! queued task runs. It is then stored within the tenant's
//! [`TenantLimits::queue_quota`] by [`Broker::enqueue_within`], which checks
//! and counts `max_queued` and `max_queues` in the same atomic step as the
//! store. [`submit`] does all of it for one task; a bulk producer calls the
//! steps itself to look each job up once.
//!
//! The tenant [`DEFAULT_TENANT`] is never in the catalog (the name is
//! reserved); its jobs are those workers register for it (`corral worker
//! --jobs-dir`), and it has [`TenantLimits::default`], as the catalog's own
//! quotas give it ([`find_tenant`]).
//!
//! This module never compiles or runs anything, and never reads a task back.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError};
use crate::job::JobDefinition;
use crate::tenant::{Tenant, TenantLimits};
use corral_client::broker::{Broker, BrokerError, RateLimit, TenantQuota};
use corral_client::workflow::{Plan, Workflow, WorkflowId};
use corral_core::clock;
use corral_core::task::{
    ArgsMap, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DEFAULT_TENANT, MAX_PRIORITY, MAX_UNIQUE_KEY,
    MAX_UNIQUE_TTL_MS, Task, TaskId, TaskState, Unique,
};

/// How long a `unique_key` holds when the request names no `unique_ttl_ms`.
pub const DEFAULT_UNIQUE_TTL_MS: u64 = 3600 * 1000;

/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest delay a task may ask for (30 days).
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;

/// A task a producer asks for: the body of `POST /v1/tasks`, and a line of
/// `corral enqueue --from`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The job to run.
    pub job: String,
    /// The args handler 0 receives (a JSON object).
    #[serde(default)]
    pub args: ArgsMap,
    /// The queue to wait in (default `default`).
    pub queue: Option<String>,
    /// Run no earlier than this many ms from now.
    pub delay_ms: Option<u64>,
    /// Attempts before the dead set (default 3, at most [`MAX_ATTEMPTS`]).
    pub max_attempts: Option<u32>,
    /// Where it waits in its queue: 0 (the default) to 9, the highest
    /// taken first.
    pub priority: Option<u8>,
    /// Wall-clock budget per handler call, narrowing the job's own.
    pub timeout_ms: Option<u64>,
    /// The whole task's deadline, this many ms from now: over every
    /// attempt and retry, the task fails for good (`deadline_exceeded`)
    /// once it passes. At most [`MAX_DELAY_MS`].
    pub deadline_ms: Option<u64>,
    /// Enqueue at most one task with this key (within the tenant) per
    /// `unique_ttl_ms`: while the key holds, the answer is the task that
    /// holds it, and nothing is stored.
    pub unique_key: Option<String>,
    /// How long `unique_key` holds, ms (default 1 hour, at most 30 days).
    pub unique_ttl_ms: Option<u64>,
    /// Run this version of the job instead of the current one.
    pub version: Option<u32>,
}

/// What an accepted task is: the answer of `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The new task's id.
    pub task_id: TaskId,
    /// The job.
    pub job: String,
    /// The job version the task will run, whatever is registered later.
    pub job_version: u32,
    /// The queue it waits in.
    pub queue: String,
    /// `pending`, or `scheduled` when delayed; for a deduplicated
    /// request, the state of the task that holds the key.
    pub state: TaskState,
    /// True when nothing was stored because `unique_key` is held by the
    /// task this names.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deduplicated: bool,
}

impl Enqueued {
    /// The receipt of `task` (built by [`NewTask::into_task`]).
    pub fn of(task: &Task) -> Self {
        Self {
            task_id: task.task_id,
            job: task.job_name.clone(),
            job_version: task.job_version.unwrap_or_default(),
            queue: task.queue_name.clone(),
            state: if task.run_at.is_some() {
                TaskState::Scheduled
            } else {
                TaskState::Pending
            },
            deduplicated: false,
        }
    }
}

/// Why a task was not enqueued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is wrong (the text says how).
    #[error("{0}")]
    Invalid(String),
    /// No such tenant.
    #[error("no tenant `{0}`: create it with `corral tenants create`")]
    UnknownTenant(String),
    /// The tenant has no job of that name.
    #[error("unknown job `{0}`")]
    JobNotFound(String),
    /// The job has no such version.
    #[error("job `{job}` has no version {version}")]
    JobVersionNotFound {
        /// The job.
        job: String,
        /// The version asked for.
        version: u32,
    },
    /// The catalog could not answer.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The broker refused (quota: `Full`, `TooManyQueues`) or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Whether `name` may name a queue: the rule job names follow, 1 to 128
/// of letters, digits, `-`, `_`, `.`, `:`.
pub fn valid_queue(name: &str) -> bool {
    crate::registry::valid_name(name)
}

impl NewTask {
    /// Checks what needs no catalog: the queue name, attempts, delay and
    /// timeout.
    pub fn check(&self) -> Result<(), SubmitError> {
        let queue = self.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
        if !valid_queue(queue) {
            return Err(SubmitError::Invalid(format!(
                "invalid queue name `{queue}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`"
            )));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(SubmitError::Invalid(format!(
                "`max_attempts` must be 1 to {MAX_ATTEMPTS}"
            )));
        }
        if self.timeout_ms == Some(0) {
            return Err(SubmitError::Invalid(
                "`timeout_ms` must be at least 1".into(),
            ));
        }
        if self.priority.is_some_and(|p| p > MAX_PRIORITY) {
            return Err(SubmitError::Invalid(format!(
                "`priority` must be 0 to {MAX_PRIORITY}"
            )));
        }
        if self.unique_ttl_ms.is_some() && self.unique_key.is_none() {
            return Err(SubmitError::Invalid(
                "`unique_ttl_ms` needs a `unique_key`".into(),
            ));
        }
        if let Some(key) = &self.unique_key
            && (key.is_empty() || key.len() > MAX_UNIQUE_KEY)
        {
            return Err(SubmitError::Invalid(format!(
                "`unique_key` must be 1 to {MAX_UNIQUE_KEY} bytes"
            )));
        }
        if self
            .unique_ttl_ms
            .is_some_and(|t| !(1..=MAX_UNIQUE_TTL_MS).contains(&t))
        {
            return Err(SubmitError::Invalid(format!(
                "`unique_ttl_ms` must be 1 to {MAX_UNIQUE_TTL_MS} (30 days)"
            )));
        }
        if self.deadline_ms == Some(0) {
            return Err(SubmitError::Invalid(
                "`deadline_ms` must be at least 1".into(),
            ));
        }
        if self.deadline_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(SubmitError::Invalid(format!(
                "`deadline_ms` must be at most {MAX_DELAY_MS} (30 days)"
            )));
        }
        if self.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(SubmitError::Invalid(format!(
                "`delay_ms` must be at most {MAX_DELAY_MS} (30 days)"
            )));
        }
        Ok(())
    }

    /// The task for `tenant`, pinned to `job`'s version (the definition
    /// [`find_job`] gave for this request). Call [`check`](Self::check)
    /// first.
    pub fn into_task(self, tenant: &str, job: &JobDefinition) -> Task {
        let mut task = Task::new(self.job, self.args);
        task.tenant = tenant.to_owned();
        task.queue_name = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        task.max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        task.priority = self.priority.unwrap_or_default();
        task.timeout_ms = self.timeout_ms;
        task.job_version = Some(job.version);
        let now = chrono::Utc::now();
        if let Some(delay) = self.delay_ms.filter(|d| *d > 0) {
            task.run_at = Some(clock::add(now, Duration::from_millis(delay)));
        }
        if let Some(deadline) = self.deadline_ms {
            task.deadline = Some(clock::add(now, Duration::from_millis(deadline)));
        }
        if let Some(key) = self.unique_key {
            task.unique = Some(Unique {
                key,
                ttl_ms: self.unique_ttl_ms.unwrap_or(DEFAULT_UNIQUE_TTL_MS),
            });
        }
        task
    }
}

impl TenantLimits {
    /// The bounds the broker applies to this tenant's enqueues.
    pub fn queue_quota(&self) -> TenantQuota {
        TenantQuota {
            max_queued: self.max_queued,
            max_queues: self.max_queues,
            max_concurrency: self.max_concurrency.max(1),
            rate: self.rate_limit,
            max_unique_keys: self.max_unique_keys,
        }
    }
}

/// Most distinct jobs (with versions) one workflow may name: each is
/// looked up in the catalog once per submission.
pub const MAX_WORKFLOW_JOBS: usize = 64;

/// Stores `workflow` for `tenant`: each task's job must be the tenant's
/// ([`SubmitError::JobNotFound`] otherwise) and is pinned to its current
/// version unless the task names one, attempts are bounded as for tasks,
/// the tree must compile ([`Plan::compile`]: names, sizes, nesting), and
/// its steps may use no more queues than the tenant's `max_queues`.
/// The broker stores it within the tenant's `max_workflows` and enqueues
/// its steps within its queue quota. Returns the workflow's id.
pub async fn submit_workflow<B: Broker>(
    catalog: &dyn Catalog,
    broker: &B,
    tenant: &Tenant,
    mut workflow: Workflow,
) -> Result<WorkflowId, SubmitError> {
    workflow.tenant = tenant.name.clone();
    // The shape first: a tree past the bounds costs no catalog lookup.
    Plan::compile(&workflow, chrono::Utc::now()).map_err(SubmitError::Invalid)?;
    let mut versions: HashMap<(String, Option<u32>), u32> = HashMap::new();
    let mut queues = std::collections::HashSet::new();
    for task in workflow.flow.tasks_mut() {
        queues.insert(
            task.queue
                .clone()
                .unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
        );
        if queues.len() > tenant.limits.max_queues as usize {
            // Steps in more queues than the tenant may have could never
            // all be enqueued: refused here rather than left waiting.
            return Err(SubmitError::Invalid(format!(
                "the workflow's steps use more than the tenant's {} queues",
                tenant.limits.max_queues
            )));
        }
        if task
            .max_attempts
            .is_some_and(|n| !(1..=MAX_ATTEMPTS).contains(&n))
        {
            return Err(SubmitError::Invalid(format!(
                "`max_attempts` must be 1 to {MAX_ATTEMPTS}"
            )));
        }
        let key = (task.job.clone(), task.version);
        let version = match versions.get(&key) {
            Some(v) => *v,
            None => {
                if versions.len() >= MAX_WORKFLOW_JOBS {
                    return Err(SubmitError::Invalid(format!(
                        "a workflow may name at most {MAX_WORKFLOW_JOBS} distinct jobs"
                    )));
                }
                let def = find_job(catalog, &tenant.name, &task.job, task.version).await?;
                versions.insert(key, def.version);
                def.version
            }
        };
        task.version = Some(version);
    }
    let plan = Plan::compile(&workflow, chrono::Utc::now()).map_err(SubmitError::Invalid)?;
    let limits = &tenant.limits;
    broker
        .submit_workflow(&plan, &limits.queue_quota(), limits.max_workflows)
        .await?;
    Ok(workflow.id)
}

/// The tenant `name` as stored; [`DEFAULT_TENANT`], never stored, with
/// [`TenantLimits::default`]. Any other unknown name is
/// [`SubmitError::UnknownTenant`].
pub async fn find_tenant(catalog: &dyn Catalog, name: &str) -> Result<Tenant, SubmitError> {
    match catalog.tenant(name).await? {
        Some(tenant) => Ok(tenant),
        None if name == DEFAULT_TENANT => Ok(Tenant {
            name: name.to_owned(),
            limits: TenantLimits::default(),
        }),
        None => Err(SubmitError::UnknownTenant(name.to_owned())),
    }
}

/// `tenant`'s job `name` at `version` (its newest without one).
pub async fn find_job(
    catalog: &dyn Catalog,
    tenant: &str,
    name: &str,
    version: Option<u32>,
) -> Result<JobDefinition, SubmitError> {
    catalog
        .job(tenant, name, version)
        .await?
        .ok_or_else(|| match version {
            Some(version) => SubmitError::JobVersionNotFound {
                job: name.to_owned(),
                version,
            },
            None => SubmitError::JobNotFound(name.to_owned()),
        })
}

/// Sets (or, with `None`, removes) the fleet-wide rate limit of `tenant`'s
/// job `name`, which must exist. The job is looked up again after the
/// limit is stored, and the limit removed if the job went meanwhile: a
/// removal racing with this call either comes before that second look, or
/// clears the limit itself afterwards (removals clear it after deleting
/// the job), so no limit outlives its job and a tenant cannot pile up
/// limits for names it no longer has.
pub async fn set_job_rate<B: Broker>(
    catalog: &dyn Catalog,
    broker: &B,
    tenant: &str,
    name: &str,
    rate: Option<RateLimit>,
) -> Result<(), SubmitError> {
    find_job(catalog, tenant, name, None).await?;
    broker.set_job_rate(tenant, name, rate).await?;
    if rate.is_some() && catalog.job(tenant, name, None).await?.is_none() {
        broker.set_job_rate(tenant, name, None).await?;
        return Err(SubmitError::JobNotFound(name.to_owned()));
    }
    Ok(())
}

/// Checks `request`, pins it to its job's version and stores it for
/// `tenant`, within the tenant's quota.
pub async fn submit<B: Broker>(
    broker: &B,
    catalog: &dyn Catalog,
    tenant: &Tenant,
    request: NewTask,
) -> Result<Enqueued, SubmitError> {
    request.check()?;
    let job = find_job(catalog, &tenant.name, &request.job, request.version).await?;
    let task = request.into_task(&tenant.name, &job);
    let receipt = Enqueued::of(&task);
    match broker
        .enqueue_within(vec![task], &tenant.limits.queue_quota())
        .await
    {
        Ok(()) => Ok(receipt),
        Err(BrokerError::Deduplicated { op, existing }) => {
            // The answer is the task holding the key, as it is now; one
            // that is gone already (deleted) leaves the refusal as it is.
            match broker.task(&tenant.name, existing).await? {
                Some(held) => Ok(Enqueued {
                    task_id: existing,
                    job: held.job_name,
                    job_version: held.job_version.unwrap_or_default(),
                    queue: held.queue_name,
                    state: held.state,
                    deduplicated: true,
                }),
                None => Err(BrokerError::Deduplicated { op, existing }.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_what_the_api_refuses() {
        let ok = NewTask {
            job: "j".into(),
            ..NewTask::default()
        };
        assert!(ok.check().is_ok());
        for bad in [
            NewTask {
                queue: Some("a b".into()),
                ..ok.clone()
            },
            NewTask {
                max_attempts: Some(0),
                ..ok.clone()
            },
            NewTask {
                max_attempts: Some(MAX_ATTEMPTS + 1),
                ..ok.clone()
            },
            NewTask {
                timeout_ms: Some(0),
                ..ok.clone()
            },
            NewTask {
                delay_ms: Some(MAX_DELAY_MS + 1),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.check(), Err(SubmitError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
