//! The producer API: build tasks and put them into a broker.
//!
//! A [`Client`] wraps any [`Broker`]. [`Client::task`] starts a
//! [`TaskBuilder`] (args, queue, tenant, delay, attempts, timeout);
//! [`Client::enqueue`] and [`Client::enqueue_many`] store tasks (the latter
//! in one broker call); [`Client::status`] and [`Client::wait`] read them
//! back. [`Client::schedule`] starts a [`ScheduleBuilder`] (cron or
//! interval, args, queue, tenant) and [`Client::put_schedule`] stores it;
//! the workers fire it. [`Client::submit_workflow`] stores a
//! [`Workflow`] of chained, grouped and chorded tasks, and
//! [`Client::wait_workflow`] waits for its result. The client never runs
//! handlers.

use std::time::Duration;

use serde::Serialize;

use crate::broker::{Broker, BrokerError, StoredSchedule, TenantQuota};
use crate::schedule::{Missed, Schedule, Timing};
use crate::workflow::{Flow, OnFailure, Plan, Workflow, WorkflowId, WorkflowStatus};
use corral_core::clock;
use corral_core::task::{ArgsMap, Task, TaskId, TaskParseError};

/// Puts tasks into a broker and reads them back.
///
/// ```
/// use corral_client::{Client, EmbeddedBroker};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let client = Client::new(EmbeddedBroker::new());
/// let task = client.task("text-stats").arg("text", "Hello hello world")?.max_attempts(5).build();
/// let id = client.enqueue(task).await?;
/// let stored = client.status("default", id).await?.expect("just enqueued");
/// assert_eq!(stored.original_args_map["text"], "Hello hello world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Client<B> {
    broker: B,
}

/// Why [`Client::wait`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The task is not known (never enqueued, or trimmed after retention).
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// It did not finish in time; the last state seen is given.
    #[error("task {id} still {state} after {waited:?}")]
    Timeout {
        /// The task.
        id: TaskId,
        /// Its last state.
        state: corral_core::task::TaskState,
        /// How long we waited.
        waited: Duration,
    },
}

impl<B: Broker> Client<B> {
    /// A client of `broker`.
    pub fn new(broker: B) -> Self {
        Self { broker }
    }

    /// The broker behind the client.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// Starts building a task for `job`.
    pub fn task(&self, job: impl Into<String>) -> TaskBuilder {
        TaskBuilder {
            task: Task::new(job, ArgsMap::new()),
        }
    }

    /// Starts building schedule `name` of `job`: every minute until
    /// [`ScheduleBuilder::cron`] or [`ScheduleBuilder::every`] says
    /// otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral_client::{Broker, Client, EmbeddedBroker};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let client = Client::new(EmbeddedBroker::new());
    /// let nightly = client
    ///     .schedule("nightly-report", "report")
    ///     .cron("0 3 * * *", Some("Europe/Paris"))
    ///     .arg("format", "pdf")?
    ///     .build();
    /// let stored = client.put_schedule(&nightly).await?;
    /// assert!(stored.next_tick.is_some());
    /// let every = client.schedule("heartbeat", "noop").every(Duration::from_secs(30)).build();
    /// client.put_schedule(&every).await?;
    /// assert_eq!(client.broker().schedules("default").await?.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn schedule(&self, name: impl Into<String>, job: impl Into<String>) -> ScheduleBuilder {
        ScheduleBuilder {
            schedule: Schedule {
                name: name.into(),
                tenant: corral_core::task::DEFAULT_TENANT.to_owned(),
                timing: Timing::Cron {
                    expr: "* * * * *".into(),
                    tz: None,
                },
                missed: Missed::Skip,
                job: job.into(),
                args: ArgsMap::new(),
                queue: corral_core::task::DEFAULT_QUEUE.to_owned(),
                max_attempts: None,
                priority: None,
                timeout_ms: None,
                created_at: chrono::Utc::now(),
            },
        }
    }

    /// Stores `schedule` (replacing one of the same tenant and name), with
    /// no tenant bound: the library's producers are the operator's (the
    /// API applies the tenant's `max_schedules` and quotas).
    pub async fn put_schedule(&self, schedule: &Schedule) -> Result<StoredSchedule, BrokerError> {
        self.broker
            .put_schedule(schedule, &TenantQuota::UNLIMITED, u32::MAX)
            .await
    }

    /// A workflow running `flow` in the default tenant, failing fast
    /// (set the fields to change either); store it with
    /// [`submit_workflow`](Self::submit_workflow).
    ///
    /// ```
    /// use corral_client::{Client, EmbeddedBroker};
    /// use corral_client::workflow::{Flow, StepState, WorkflowState};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let client = Client::new(EmbeddedBroker::new());
    /// // Three squares in parallel, then a sum of their results.
    /// let flow = Flow::chord((1..=3).map(|n| Flow::task("square").arg("n", n)), Flow::task("sum"));
    /// let id = client.submit_workflow(client.workflow(flow)).await?;
    /// let status = client.workflow_status("default", id).await?.expect("just stored");
    /// assert_eq!(status.state, WorkflowState::Running);
    /// // The squares are queued; the sum waits for them.
    /// assert_eq!(status.count(StepState::Enqueued), 3);
    /// assert_eq!(status.count(StepState::Waiting), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn workflow(&self, flow: impl Into<Flow>) -> Workflow {
        Workflow {
            id: WorkflowId::new(),
            tenant: corral_core::task::DEFAULT_TENANT.to_owned(),
            flow: flow.into(),
            on_failure: OnFailure::FailFast,
        }
    }

    /// Compiles and stores `workflow`, enqueueing its first steps; returns
    /// its id. No tenant bound applies (the API applies the tenant's
    /// `max_workflows` and quotas); a flow that does not compile (an empty
    /// group, a bad name, too many steps) is [`BrokerError::Invalid`].
    pub async fn submit_workflow(&self, workflow: Workflow) -> Result<WorkflowId, BrokerError> {
        let plan = Plan::compile(&workflow, chrono::Utc::now()).map_err(|reason| {
            BrokerError::Invalid {
                op: "submit_workflow",
                reason,
            }
        })?;
        self.broker
            .submit_workflow(&plan, &TenantQuota::UNLIMITED, u32::MAX)
            .await?;
        Ok(workflow.id)
    }

    /// `tenant`'s workflow `id`, if stored.
    pub async fn workflow_status(
        &self,
        tenant: &str,
        id: WorkflowId,
    ) -> Result<Option<WorkflowStatus>, BrokerError> {
        self.broker.workflow(tenant, id).await
    }

    /// Waits until `tenant`'s workflow `id` completes or fails, up to
    /// `timeout`; the last status seen either way (`None`: not stored).
    pub async fn wait_workflow(
        &self,
        tenant: &str,
        id: WorkflowId,
        timeout: Duration,
    ) -> Result<Option<WorkflowStatus>, BrokerError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let status = self.broker.workflow(tenant, id).await?;
            let waited = started.elapsed();
            match &status {
                Some(s)
                    if s.state == crate::workflow::WorkflowState::Running && waited < timeout => {}
                _ => return Ok(status),
            }
            tokio::time::sleep(pause.min(timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Stores one task; returns its id. A task whose unique key is held
    /// by an earlier task is not stored: the earlier task's id is returned.
    pub async fn enqueue(&self, task: Task) -> Result<TaskId, BrokerError> {
        let id = task.task_id;
        match self.broker.enqueue(vec![task]).await {
            Ok(()) => Ok(id),
            Err(BrokerError::Deduplicated { existing, .. }) => Ok(existing),
            Err(e) => Err(e),
        }
    }

    /// Stores many tasks in one broker call; returns their ids in order.
    pub async fn enqueue_many(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, BrokerError> {
        let ids = tasks.iter().map(|t| t.task_id).collect();
        self.broker.enqueue(tasks).await?;
        Ok(ids)
    }

    /// Parses a task written as JSON (the seed's format works) and stores it.
    /// Malformed JSON is refused here, before it reaches a queue.
    pub async fn enqueue_json(&self, json: &[u8]) -> Result<TaskId, EnqueueJsonError> {
        let task = Task::from_json(json)?;
        Ok(self.enqueue(task).await?)
    }

    /// The stored task, if known.
    pub async fn status(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, BrokerError> {
        self.broker.task(tenant, id).await
    }

    /// Waits until the task completes or dies, up to `timeout`.
    pub async fn wait(
        &self,
        tenant: &str,
        id: TaskId,
        timeout: Duration,
    ) -> Result<Task, WaitError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let task = self
                .broker
                .task(tenant, id)
                .await?
                .ok_or(WaitError::NotFound(id))?;
            if task.state.is_final() {
                return Ok(task);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(WaitError::Timeout {
                    id,
                    state: task.state,
                    waited,
                });
            }
            tokio::time::sleep(pause.min(timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Why [`Client::enqueue_json`] refused a task.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueJsonError {
    /// The JSON is not a valid task.
    #[error(transparent)]
    Parse(#[from] TaskParseError),
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Builds a [`Schedule`]; see [`Client::schedule`].
#[derive(Debug, Clone)]
pub struct ScheduleBuilder {
    schedule: Schedule,
}

impl ScheduleBuilder {
    /// Fires on cron expression `expr` (five fields, or six with seconds
    /// first), read in time zone `tz` (an IANA name; UTC when `None`).
    pub fn cron(mut self, expr: impl Into<String>, tz: Option<&str>) -> Self {
        self.schedule.timing = Timing::Cron {
            expr: expr.into(),
            tz: tz.map(str::to_owned),
        };
        self
    }

    /// Fires every `every` (whole seconds, at least one), on multiples of
    /// it since the Unix epoch.
    pub fn every(mut self, every: Duration) -> Self {
        self.schedule.timing = Timing::Every {
            secs: every.as_secs().max(1),
        };
        self
    }

    /// Sets arg `name` of every task to `value`.
    pub fn arg<T: Serialize + ?Sized>(
        mut self,
        name: &str,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        self.schedule
            .args
            .insert(name.to_owned(), serde_json::to_value(value)?);
        Ok(self)
    }

    /// The queue its tasks wait in.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.schedule.queue = queue.into();
        self
    }

    /// The owning tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.schedule.tenant = tenant.into();
        self
    }

    /// What a run of missed ticks becomes (skipped by default).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.schedule.missed = missed;
        self
    }

    /// Attempts per task.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.schedule.max_attempts = Some(n.max(1));
        self
    }

    /// Priority of its tasks in their queue (0 to 9, clamped).
    pub fn priority(mut self, priority: u8) -> Self {
        self.schedule.priority = Some(priority.min(corral_core::task::MAX_PRIORITY));
        self
    }

    /// The schedule.
    pub fn build(self) -> Schedule {
        self.schedule
    }
}

/// Builds a [`Task`]; see [`Client::task`].
#[derive(Debug, Clone)]
pub struct TaskBuilder {
    task: Task,
}

impl TaskBuilder {
    /// Sets arg `name` to `value` (any serde-serializable value).
    pub fn arg<T: Serialize + ?Sized>(
        mut self,
        name: &str,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        let value = serde_json::to_value(value)?;
        self.task.args_map.insert(name.to_owned(), value.clone());
        self.task.original_args_map.insert(name.to_owned(), value);
        Ok(self)
    }

    /// Replaces all args.
    pub fn args(mut self, args: ArgsMap) -> Self {
        self.task.args_map = args.clone();
        self.task.original_args_map = args;
        self
    }

    /// The queue to wait in.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.task.queue_name = queue.into();
        self
    }

    /// The owning tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.task.tenant = tenant.into();
        self
    }

    /// Runs no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.task.run_at = Some(clock::add(chrono::Utc::now(), delay));
        self
    }

    /// Attempts before the dead set (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.task.max_attempts = n.max(1);
        self
    }

    /// Where it waits in its queue: 0 (the default) to 9, clamped. A
    /// queue gives its higher priorities to workers first, each priority
    /// in the order enqueued.
    pub fn priority(mut self, priority: u8) -> Self {
        self.task.priority = priority.min(corral_core::task::MAX_PRIORITY);
        self
    }

    /// Wall-clock budget per attempt, narrowing the job's own.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.task.timeout_ms = Some(timeout.as_millis().max(1) as u64);
        self
    }

    /// The whole task's deadline, `within` from now: over every attempt
    /// and retry, the task fails for good (`deadline_exceeded`) once it
    /// passes, and no handler runs past it.
    pub fn deadline(mut self, within: Duration) -> Self {
        self.task.deadline = Some(clock::add(chrono::Utc::now(), within));
        self
    }

    /// Enqueues the task only if no task of the same tenant with the same
    /// `key` was enqueued in the last `ttl`; otherwise
    /// [`Client::enqueue`] answers that task's id and stores nothing.
    pub fn unique(mut self, key: impl Into<String>, ttl: Duration) -> Self {
        self.task.unique = Some(corral_core::task::Unique {
            key: key.into(),
            ttl_ms: ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
        });
        self
    }

    /// Pins the job version to run.
    pub fn job_version(mut self, version: u32) -> Self {
        self.task.job_version = Some(version);
        self
    }

    /// The task.
    pub fn build(self) -> Task {
        self.task
    }
}
