//! The broker: where tasks wait, and the leases that keep them from being lost.
//!
//! A [`Broker`] stores tasks and hands them to workers under a [`Lease`]. The
//! model is at-least-once:
//!
//! - [`Broker::acquire`] moves tasks atomically from pending to active, counts
//!   the attempt, and gives each a lease with a fencing token. Idle callers
//!   block inside `acquire` (up to `block_for`), they never sleep-poll.
//! - [`Broker::heartbeat`] extends the leases a worker holds;
//!   [`Broker::maintain`] returns tasks whose lease expired to pending (or to
//!   the dead set once out of attempts) and makes delayed tasks due. It
//!   costs what is due, not what exists: a fleet with thousands of idle
//!   queues does no per-queue work ([`Maintenance::queues_visited`]).
//! - [`Broker::update`] (a checkpoint after each handler) and [`Broker::ack`]
//!   check the token: a worker whose lease moved on gets
//!   [`BrokerError::LeaseLost`] and cannot overwrite the task.
//! - Delayed tasks and retries wait by time; failed tasks past their attempts
//!   and malformed entries go to the dead set with their reason; finished
//!   tasks are kept for a retention period; every set is bounded.
//! - [`Broker::enqueue_within`] keeps each tenant within its
//!   [`TenantQuota`] (queued tasks, queue names), checked and counted in the
//!   same atomic step as the store.
//!
//! This module owns the trait and the types that cross it. It knows nothing of
//! wasm, and no backend's types (Redis or otherwise) appear in it.

pub mod embedded;
mod paging;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use crate::workflow::{Plan, WorkflowId, WorkflowStatus, WorkflowSummary};
use corral_core::metering::{DailyUsage, TaskMetering, USAGE_KEPT_DAYS};
use corral_core::task::{ArgsMap, Task, TaskError, TaskId, TaskState, WorkflowStep};

pub use embedded::EmbeddedBroker;
pub use redis::{RedisBroker, RedisConfig, RedisTls};

/// Identifies one worker process (and its leases).
pub type WorkerId = String;

/// A worker's claim on one active task. Only the holder of the current token
/// may checkpoint or finish the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased task.
    pub task_id: TaskId,
    /// The tenant that owns the task.
    pub tenant: String,
    /// The task's queue.
    pub queue: String,
    /// The fencing token: grows on every acquire of this task.
    pub token: u64,
    /// The worker holding the lease.
    pub worker: WorkerId,
    /// The workflow step the task is, if it is one: its ack advances the
    /// workflow in the same atomic step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowStep>,
}

/// A task handed to a worker, with its lease.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The claim to present on update and ack.
    pub lease: Lease,
    /// The task as stored, with `attempt` already counted.
    pub task: Task,
}

/// What a worker asks [`Broker::acquire`] for.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// Queue names to take from, served fairly across tenants.
    pub queues: Vec<String>,
    /// The worker that will hold the leases.
    pub worker: WorkerId,
    /// Take at most this many tasks.
    pub max: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease_for: Duration,
    /// How long to wait for a task when none is ready.
    pub block_for: Duration,
    /// The most tasks of each listed tenant this call may lease: the room
    /// the worker has left under each tenant's concurrency limit. A tenant
    /// at 0 is skipped; its tasks stay queued for other workers or a later
    /// call. Tenants not listed are limited by `max` alone.
    pub tenant_room: HashMap<String, usize>,
    /// Each listed tenant's fleet-wide `max_concurrency` as the worker read
    /// it from the catalog: the broker leases a task of the tenant only
    /// while fewer than that many of its tasks are active over all workers
    /// together, checked and counted in the same atomic step as the lease.
    /// For a tenant not listed, the cap its last limited enqueue stored
    /// ([`TenantQuota::max_concurrency`]) applies, or none.
    pub tenant_caps: HashMap<String, u32>,
    /// Each listed tenant's fleet-wide rate limit as the worker read it
    /// (`None`: the tenant has none): the broker leases at most `tasks` of
    /// the tenant's tasks per window of `per_ms`, over all workers, counted
    /// in the same atomic step as the lease; tasks over it wait in their
    /// queue for the next window. For a tenant not listed, the limit its
    /// last limited enqueue stored ([`TenantQuota::rate`]) applies, or none.
    pub tenant_rates: HashMap<String, Option<RateLimit>>,
}

/// At most `tasks` tasks started per window of `per_ms` milliseconds
/// (windows aligned to the Unix epoch), over the whole fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tasks per window (at least 1).
    pub tasks: u32,
    /// The window, ms (at least 1).
    pub per_ms: u64,
}

impl RateLimit {
    /// How the Redis scripts carry it: `"tasks per_ms"`.
    pub(crate) fn encode(&self) -> String {
        format!("{} {}", self.tasks.max(1), self.per_ms.max(1))
    }
}

impl AcquireRequest {
    /// How many more of `tenant`'s tasks this call may lease.
    pub fn room_for(&self, tenant: &str) -> usize {
        self.tenant_room.get(tenant).copied().unwrap_or(usize::MAX)
    }
}

/// Which of a tenant's tasks [`Broker::list_tasks`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks in this state (`None`: any state).
    pub state: Option<TaskState>,
    /// Only tasks of this queue (`None`: every queue of the tenant).
    pub queue: Option<String>,
    /// At most this many tasks, newest first (by id, which is time-ordered).
    pub limit: usize,
}

impl Default for TaskQuery {
    fn default() -> Self {
        Self {
            state: None,
            queue: None,
            limit: 100,
        }
    }
}

/// Progress through a handler chain, saved after each handler so a recovered
/// task resumes where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next handler to run.
    pub current_handler_index: u32,
    /// The args for that handler.
    pub args_map: ArgsMap,
    /// The result log so far.
    pub result_log: String,
    /// The handlers' captured output so far.
    pub log: String,
    /// What the handler calls cost so far.
    #[serde(default, skip_serializing_if = "TaskMetering::is_empty")]
    pub metering: TaskMetering,
}

impl Checkpoint {
    /// The task's current progress.
    pub fn of(task: &Task) -> Self {
        Self {
            current_handler_index: task.current_handler_index,
            args_map: task.args_map.clone(),
            result_log: task.result_log.clone(),
            log: task.log.clone(),
            metering: task.metering.clone(),
        }
    }

    /// Writes this progress into `task`.
    pub fn apply(self, task: &mut Task) {
        task.current_handler_index = self.current_handler_index;
        task.args_map = self.args_map;
        task.result_log = self.result_log;
        task.log = self.log;
        task.metering = self.metering;
    }
}

/// How a worker finishes with a leased task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every handler ran; the final progress is stored.
    Completed(Checkpoint),
    /// A retryable failure: run again at `at`, from the last checkpoint.
    Retry {
        /// What went wrong.
        error: TaskError,
        /// When to run again.
        at: DateTime<Utc>,
    },
    /// Failed for good: goes to the dead set.
    Dead(TaskError),
    /// Handed back untouched (a worker shutting down): back to pending, and the
    /// attempt is not counted.
    Release,
    /// Stopped because [`Broker::cancel`] asked for it: final, never
    /// retried. The error (kind `cancelled`) names the handler that was
    /// running.
    Cancelled(TaskError),
}

impl Outcome {
    /// The state the task is in once this outcome is applied.
    pub fn state(&self) -> TaskState {
        match self {
            Outcome::Completed(_) => TaskState::Completed,
            Outcome::Retry { .. } => TaskState::Retrying,
            Outcome::Dead(_) => TaskState::Dead,
            Outcome::Release => TaskState::Pending,
            Outcome::Cancelled(_) => TaskState::Cancelled,
        }
    }
}

/// Per-tenant bounds that [`Broker::enqueue_within`] checks and counts in
/// the same atomic step as it stores the tasks, so that no number of
/// concurrent enqueues (through any number of API processes) can pass them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuota {
    /// Most tasks of the tenant waiting at once: pending, delayed or
    /// retrying. Active tasks do not count (they are bounded by the
    /// tenant's concurrency), nor do finished ones.
    pub max_queued: u64,
    /// Most distinct queue names the tenant may have tasks in. A queue
    /// counts while it holds any task of the tenant, finished ones
    /// included, until retention drops its last record.
    pub max_queues: u32,
    /// Most of the tenant's tasks active at once over all workers:
    /// stored with the tasks, so workers that have not read the tenant's
    /// limits yet still hold it to this (`u32::MAX`: leave the stored cap
    /// as it is).
    pub max_concurrency: u32,
    /// The tenant's fleet-wide rate limit, stored with the tasks as
    /// `max_concurrency` is (`None`: leave the stored one as it is).
    pub rate: Option<RateLimit>,
    /// Most unique keys ([`Unique`](corral_core::task::Unique)) the
    /// tenant holds at once: each holds for up to 30 days after its task
    /// is gone, so without a bound a tenant's keys would grow with every
    /// enqueue.
    pub max_unique_keys: u64,
}

impl TenantQuota {
    /// No bound: what [`Broker::enqueue`] applies (library producers the
    /// operator trusts; the API always passes the tenant's limits).
    pub const UNLIMITED: Self = Self {
        max_queued: u64::MAX,
        max_queues: u32::MAX,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
}

/// What one [`Broker::maintain`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Delayed or retrying tasks made pending.
    pub promoted: usize,
    /// Tasks whose lease expired, returned to pending.
    pub recovered: usize,
    /// Tasks whose lease expired on their last attempt, sent to the dead set.
    pub expired_dead: usize,
    /// Finished records dropped past retention or bounds.
    pub trimmed: usize,
    /// Queue visits the pass made: only queues that had something due (a
    /// task to promote, a lease to recover, a record to drop) or might
    /// have; idle queues cost nothing, however many there are.
    pub queues_visited: usize,
    /// Tasks enqueued by due schedule ticks.
    pub ticks_enqueued: usize,
    /// Schedule ticks passed without a task: missed ones skipped, and
    /// ticks whose task the tenant's quota refused.
    pub ticks_skipped: usize,
}

/// A stored schedule with its next tick: what [`Broker::schedules`] lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSchedule {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// When it fires next (`None`: its timetable has no more ticks).
    pub next_tick: Option<DateTime<Utc>>,
}

/// Most schedules [`Broker::schedules`] lists for one tenant.
pub const MAX_SCHEDULES_LISTED: usize = 10_000;

/// Counts of tasks by state, for status pages and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Waiting for a worker. On Redis this counts the queue's pending list,
    /// raw entries not yet parsed included.
    pub pending: usize,
    /// Waiting for their time (delayed or retrying): `retrying` of them
    /// wait to run again after a failure.
    pub scheduled: usize,
    /// Of `scheduled`, those waiting after a retryable failure.
    #[serde(default)]
    pub retrying: usize,
    /// Under a lease.
    pub active: usize,
    /// Completed and still retained.
    pub completed: usize,
    /// In the dead set.
    pub dead: usize,
    /// Cancelled and still retained.
    #[serde(default)]
    pub cancelled: usize,
    /// Whether workers skip the queue ([`Broker::pause`]).
    #[serde(default)]
    pub paused: bool,
    /// Retained tasks that completed in the last minute.
    #[serde(default)]
    pub completed_last_minute: usize,
    /// Retained tasks that died (failed for good) in the last minute.
    #[serde(default)]
    pub failed_last_minute: usize,
}

impl QueueStats {
    /// Whether the queue holds no task in any state.
    pub fn is_empty(&self) -> bool {
        self.pending + self.scheduled + self.active + self.completed + self.dead + self.cancelled
            == 0
    }

    /// Adds `other`'s counts to these (a tenant's total over its queues);
    /// `paused` becomes true if either is.
    pub fn add(&mut self, other: &QueueStats) {
        self.pending += other.pending;
        self.scheduled += other.scheduled;
        self.retrying += other.retrying;
        self.active += other.active;
        self.completed += other.completed;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
        self.paused |= other.paused;
        self.completed_last_minute += other.completed_last_minute;
        self.failed_last_minute += other.failed_last_minute;
    }
}

/// One queue of a tenant with its counts: what [`Broker::queues`] lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The tenant that owns the queue.
    pub tenant: String,
    /// The queue's name.
    pub queue: String,
    /// Its counts by state, and whether it is paused.
    pub stats: QueueStats,
}

/// One page of a tenant's tasks: what [`Broker::list_page`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPage {
    /// The tasks, grouped by queue (in name order) and state (in
    /// [`TaskState::ALL`] order), newest first within each.
    pub tasks: Vec<Task>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// Which tasks [`Broker::list_page`] pages through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only tasks in this state (`None`: every state).
    pub state: Option<TaskState>,
    /// Only this queue (`None`: every queue of the tenant).
    pub queue: Option<String>,
    /// At most this many tasks (at least 1, at most [`MAX_PAGE`]).
    pub limit: usize,
    /// A page's [`TaskPage::next`], to go on from there.
    pub cursor: Option<String>,
}

/// Most tasks one page may hold.
pub const MAX_PAGE: usize = 1000;

/// What [`Broker::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Cancelled {
    /// The task was waiting (pending, scheduled or retrying): it is
    /// `cancelled` now and will never run.
    Now,
    /// The task is running: its worker has been told and stops the guest;
    /// the task becomes `cancelled` when the worker reports back (or when
    /// its lease runs out, if the worker died).
    Requested {
        /// The worker holding the lease.
        worker: WorkerId,
    },
}

/// A worker as it describes itself in the registry ([`Broker::register_worker`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's id (the one its leases carry).
    pub id: WorkerId,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Corral's version.
    pub version: String,
    /// The queue names it serves.
    pub queues: Vec<String>,
    /// How many tasks it runs at once.
    pub concurrency: usize,
    /// The tasks it runs now.
    pub tasks: Vec<TaskId>,
    /// When it last refreshed this entry.
    #[serde(default = "Utc::now")]
    pub seen_at: DateTime<Utc>,
}

/// Most workers [`Broker::workers`] lists.
pub const MAX_WORKERS_LISTED: usize = 10_000;

/// How long finished tasks are kept, and how many.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Completed tasks are dropped this long after they finish.
    pub completed_ttl: Duration,
    /// Dead tasks are dropped this long after they die.
    pub dead_ttl: Duration,
    /// At most this many completed tasks are kept (oldest dropped first).
    pub max_completed: usize,
    /// At most this many dead tasks are kept (oldest dropped first).
    pub max_dead: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed_ttl: Duration::from_secs(24 * 3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            max_completed: 100_000,
            max_dead: 100_000,
        }
    }
}

/// What can go wrong talking to a broker. Each variant names the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The lease was taken over (expired and re-acquired, or the task moved
    /// on): the caller must stop working on the task.
    #[error("{op}: lease on task {task_id} is no longer held (token {token})")]
    LeaseLost {
        /// The operation refused.
        op: &'static str,
        /// The task concerned.
        task_id: TaskId,
        /// The token presented.
        token: u64,
    },
    /// A task with this id already exists.
    #[error("{op}: task {task_id} already exists")]
    Duplicate {
        /// The operation refused.
        op: &'static str,
        /// The id that exists.
        task_id: TaskId,
    },
    /// A task with the same [`Unique`](corral_core::task::Unique) key was
    /// enqueued while the key holds: nothing was stored; `existing` is
    /// that task (a producer treats it as the answer to its enqueue).
    #[error("{op}: a task with the same unique key was enqueued within its ttl: task {existing}")]
    Deduplicated {
        /// The operation refused.
        op: &'static str,
        /// The task that holds the key.
        existing: TaskId,
    },
    /// The task was refused as it stands (empty names, zero attempts, ...).
    #[error("{op}: invalid task: {reason}")]
    Invalid {
        /// The operation refused.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A bound was reached (queue full, or the tenant's `max_queued`).
    #[error("{op}: {reason}")]
    Full {
        /// The operation refused.
        op: &'static str,
        /// Which bound.
        reason: String,
    },
    /// The tenant already has tasks in its `max_queues` distinct queue
    /// names; a task for a new name is refused.
    #[error("{op}: {reason}")]
    TooManyQueues {
        /// The operation refused.
        op: &'static str,
        /// The bound and the count.
        reason: String,
    },
    /// The backend could not be reached or answered with an error; the
    /// operation may be retried.
    #[error("{op}: broker unavailable: {reason}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// The backend's words.
        reason: String,
    },
    /// No such task or queue for this tenant (another tenant's answers the
    /// same).
    #[error("{op}: {what} not found")]
    NotFound {
        /// The operation refused.
        op: &'static str,
        /// What was looked for.
        what: String,
    },
    /// The task is in a state the operation does not apply to (deleting
    /// an active task, retrying a pending one).
    #[error("{op}: {reason}")]
    Conflict {
        /// The operation refused.
        op: &'static str,
        /// The state found and what the operation needs.
        reason: String,
    },
    /// Stored data that should be ours did not parse.
    #[error("{op}: corrupt record: {reason}")]
    Corrupt {
        /// The operation that failed.
        op: &'static str,
        /// What did not parse.
        reason: String,
    },
}

/// A store of tasks with leases. See the module docs for the semantics every
/// implementation keeps; `tests/all/conformance.rs` checks them.
pub trait Broker: Send + Sync + 'static {
    /// Stores new tasks: pending, or scheduled when `run_at` is in the
    /// future. All or nothing is not promised across tasks, but each task is
    /// stored whole or not at all. No tenant bound applies (see
    /// [`Broker::enqueue_within`]).
    fn enqueue(&self, tasks: Vec<Task>) -> impl Future<Output = Result<(), BrokerError>> + Send {
        async move { self.enqueue_within(tasks, &TenantQuota::UNLIMITED).await }
    }

    /// Stores new tasks like [`Broker::enqueue`], each tenant's within
    /// `quota` (the API passes the tenant's limits): tasks of one tenant and
    /// queue are checked against the tenant's count of queued tasks and of
    /// queue names, and counted, in the same atomic step that stores them.
    /// Tasks that would pass `max_queued` are refused whole with
    /// [`BrokerError::Full`], tasks that would add a queue name past
    /// `max_queues` with [`BrokerError::TooManyQueues`]; nothing of a
    /// refused group is stored. A task whose unique key is held by an
    /// earlier task (within that key's ttl, in the same tenant) refuses its
    /// group with [`BrokerError::Deduplicated`] naming the earlier task;
    /// the key is checked and taken in the same atomic step as the store.
    fn enqueue_within(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Leases up to `req.max` ready tasks, waiting up to `req.block_for` for
    /// the first. Returns an empty list when none came in time, or when
    /// [`Broker::interrupt`] ended the wait.
    fn acquire(
        &self,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<Vec<Leased>, BrokerError>> + Send;

    /// Ends `worker`'s waiting acquire early: it returns (empty) so the
    /// worker can ask again, with more room for a tenant whose task just
    /// finished. A waiting acquire is never cancelled instead, because it
    /// may already have leased tasks. When `worker` is not waiting, its next
    /// wait ends at once; that costs one empty acquire, nothing else.
    /// Best effort: a broker that cannot deliver the interrupt logs it, and
    /// the acquire ends at its `block_for` as usual.
    fn interrupt(&self, worker: &WorkerId) -> impl Future<Output = ()> + Send;

    /// Saves progress of a leased task.
    fn update(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Finishes with leased tasks, each with its outcome. Each outcome gets
    /// its own answer: [`BrokerError::LeaseLost`] if the token is no longer
    /// current. The same outcome sent again under the same token after it
    /// was applied (a retry after a lost reply) is answered `Ok` again and
    /// changes nothing, so a failed ack call can always be retried whole.
    fn ack(
        &self,
        results: &[(Lease, Outcome)],
    ) -> impl Future<Output = Result<Vec<Result<(), BrokerError>>, BrokerError>> + Send;

    /// Extends the given leases by `lease_for`; returns the ids of those no
    /// longer held (the worker must abandon them).
    fn heartbeat(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> impl Future<Output = Result<Vec<TaskId>, BrokerError>> + Send;

    /// One maintenance pass: promote due tasks, recover expired leases, trim
    /// finished records, fire due schedule ticks.
    fn maintain(&self) -> impl Future<Output = Result<Maintenance, BrokerError>> + Send;

    /// The stored task, if it is still known.
    fn task(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<Task>, BrokerError>> + Send;

    /// Counts by state for one tenant's queue.
    fn stats(
        &self,
        tenant: &str,
        queue: &str,
    ) -> impl Future<Output = Result<QueueStats, BrokerError>> + Send;

    /// What `tenant`'s tasks cost on each day (UTC) of `days` that had
    /// any, oldest first: handler calls with their fuel, time and peak
    /// memory, counted when the progress that includes them was stored
    /// (atomically with it), and tasks completed, retried and died (a
    /// worker's verdict, or an entry that was not a task; a lease that
    /// expired on the last attempt is not the tenant's failure and is not
    /// counted). Counters are kept for
    /// [`USAGE_KEPT_DAYS`] days; a longer range is refused with
    /// [`BrokerError::Invalid`], as is one that ends before it starts.
    fn usage(
        &self,
        tenant: &str,
        days: RangeInclusive<NaiveDate>,
    ) -> impl Future<Output = Result<Vec<DailyUsage>, BrokerError>> + Send;

    /// The newest dead tasks of one tenant's queue (at most `limit`), newest
    /// first, each with its error. Malformed entries appear as
    /// [`malformed_task`] stand-ins.
    fn dead(
        &self,
        tenant: &str,
        queue: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Task>, BrokerError>> + Send;

    /// Puts raw bytes into a queue the way a hand-written producer does (on
    /// Redis: `LPUSH` of task JSON onto the queue's pending list). Nothing is
    /// checked on the way in; the broker parses the entry with
    /// [`parse_raw_task`] at the latest when a worker takes it: a task that
    /// parses runs now (its `run_at` is not honoured, its `state` and
    /// `attempt` start afresh), anything else goes to the dead set as a
    /// [`malformed_task`] with the reason, and `acquire` carries on with the
    /// next entry.
    fn enqueue_raw(
        &self,
        tenant: &str,
        queue: &str,
        raw: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Counts by state over every queue of one tenant (what `/v1/stats`
    /// shows). Brokers that cannot count across
    /// queues answer [`BrokerError::Unavailable`].
    fn tenant_stats(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<QueueStats, BrokerError>> + Send {
        let _ = tenant;
        async {
            Err(BrokerError::Unavailable {
                op: "tenant_stats",
                reason: "this broker cannot count a tenant's tasks across queues".into(),
            })
        }
    }

    /// Counts by state of every tenant's queue among `queues` that holds
    /// any task: what a worker samples for its queue-depth metrics. The
    /// cost grows with the tenants that use those names (one small read
    /// each), so callers sample it, never per request. Brokers that cannot
    /// answer return [`BrokerError::Unavailable`].
    fn queue_depths(
        &self,
        queues: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String, QueueStats)>, BrokerError>> + Send {
        let _ = queues;
        async {
            Err(BrokerError::Unavailable {
                op: "queue_depths",
                reason: "this broker cannot sample queue depths".into(),
            })
        }
    }

    /// One tenant's tasks matching `query`, newest first: what the API and
    /// the dashboard list. Never returns another tenant's task. Brokers that
    /// cannot list answer [`BrokerError::Unavailable`].
    fn list_tasks(
        &self,
        tenant: &str,
        query: &TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, BrokerError>> + Send {
        let _ = (tenant, query);
        async {
            Err(BrokerError::Unavailable {
                op: "list_tasks",
                reason: "this broker cannot list tasks".into(),
            })
        }
    }
    /// The names of `tenant`'s queues (those that hold any task record), in
    /// name order: at most the tenant's `max_queues`.
    fn queue_names(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<String>, BrokerError>> + Send {
        async move {
            Ok(self
                .queues(tenant)
                .await?
                .into_iter()
                .map(|q| q.queue)
                .collect())
        }
    }

    /// `tenant`'s queues (every name that holds a task record), in name
    /// order, each with its counts by state and whether it is paused.
    /// Costs one small read per queue (at most the tenant's `max_queues`).
    fn queues(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<QueueInfo>, BrokerError>> + Send {
        let _ = tenant;
        unsupported("queues")
    }

    /// Up to `limit` of `tenant`'s tasks in `queue` that are in `state`,
    /// newest first, starting at `offset` (0, or an offset this returned):
    /// one step of [`Broker::list_page`]. Returns the tasks and the offset
    /// to go on from, `None` when there are no more. Reads a bounded
    /// number of entries per call (it may return fewer than `limit` and an
    /// offset to go on from). Tasks that change state while read show as
    /// they are now and may be missed or shown twice, as with any offset
    /// paging.
    fn tasks_in(
        &self,
        tenant: &str,
        queue: &str,
        state: TaskState,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Task>, Option<usize>), BrokerError>> + Send {
        let _ = (tenant, queue, state, offset, limit);
        unsupported("tasks_in")
    }

    /// One page of `tenant`'s tasks: by queue in name order, then by state,
    /// newest first within each. Work per page is bounded by the page and
    /// the tenant's queue count, never by how many tasks exist.
    fn list_page(
        &self,
        tenant: &str,
        query: &PageQuery,
    ) -> impl Future<Output = Result<TaskPage, BrokerError>> + Send {
        async move { paging::list_page(self, tenant, query).await }
    }

    /// Runs a dead or cancelled task again: back to pending with its
    /// attempts reset, its error moved to its error history, from its last
    /// checkpoint. Counted against `quota` like an enqueue.
    /// [`BrokerError::NotFound`] for an unknown id,
    /// [`BrokerError::Conflict`] for a task in another state.
    fn retry(
        &self,
        tenant: &str,
        id: TaskId,
        quota: &TenantQuota,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (tenant, id, quota);
        unsupported("retry")
    }

    /// Runs every dead task of `tenant`'s `queue` again, as
    /// [`Broker::retry`] does one; returns how many. On Redis, atomic per
    /// batch of tasks (a queue's whole dead set could be large).
    fn retry_dead(
        &self,
        tenant: &str,
        queue: &str,
        quota: &TenantQuota,
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send {
        let _ = (tenant, queue, quota);
        unsupported("retry_dead")
    }

    /// Deletes a task and its record, in any state but active (cancel it
    /// first). [`BrokerError::NotFound`] for an unknown id,
    /// [`BrokerError::Conflict`] for an active task.
    fn delete(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (tenant, id);
        unsupported("delete")
    }

    /// Deletes every task of `tenant`'s `queue` that is in `state` (not
    /// active: [`BrokerError::Conflict`]); returns how many. On Redis,
    /// atomic per batch.
    fn purge(
        &self,
        tenant: &str,
        queue: &str,
        state: TaskState,
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send {
        let _ = (tenant, queue, state);
        unsupported("purge")
    }

    /// Pauses (`true`) or resumes `tenant`'s `queue`. Workers skip a
    /// paused queue; it still takes enqueues; the pause is stored with the
    /// queues, so it survives worker and broker restarts.
    fn pause(
        &self,
        tenant: &str,
        queue: &str,
        paused: bool,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (tenant, queue, paused);
        unsupported("pause")
    }

    /// Cancels a task: a waiting one at once, a running one by telling its
    /// worker (which stops the guest and acks [`Outcome::Cancelled`]).
    /// [`BrokerError::NotFound`] for an unknown id,
    /// [`BrokerError::Conflict`] for a task already final.
    fn cancel(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> impl Future<Output = Result<Cancelled, BrokerError>> + Send {
        let _ = (tenant, id);
        unsupported("cancel")
    }

    /// Waits up to `wait` for cancels of tasks `worker` holds, and returns
    /// their ids (empty when none came). A worker keeps one such wait
    /// running; each cancel is delivered once.
    fn cancel_requests(
        &self,
        worker: &WorkerId,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<TaskId>, BrokerError>> + Send {
        let _ = worker;
        async move {
            tokio::time::sleep(wait).await;
            Ok(Vec::new())
        }
    }

    /// Adds or refreshes `info` in the workers registry; the entry goes
    /// away `ttl` after its last refresh.
    fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (info, ttl);
        async { Ok(()) }
    }

    /// Takes a stopping worker out of the registry.
    fn deregister_worker(
        &self,
        worker: &WorkerId,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = worker;
        async { Ok(()) }
    }

    /// The workers registered and refreshed within their ttl, by id (at
    /// most [`MAX_WORKERS_LISTED`]).
    fn workers(&self) -> impl Future<Output = Result<Vec<WorkerInfo>, BrokerError>> + Send {
        unsupported("workers")
    }

    /// Stores `schedule` (replacing one of the same tenant and name), its
    /// next tick the first after now. Its tasks are enqueued within
    /// `quota`, as the tenant's own enqueues are. A tenant that has
    /// `max_schedules` already gets [`BrokerError::Full`] for a new name,
    /// checked in the same atomic step as the store; a timing that does
    /// not parse is [`BrokerError::Invalid`]. Ticks are fired by
    /// [`Broker::maintain`], each exactly once (see [`crate::schedule`]).
    fn put_schedule(
        &self,
        schedule: &Schedule,
        quota: &TenantQuota,
        max_schedules: u32,
    ) -> impl Future<Output = Result<StoredSchedule, BrokerError>> + Send {
        let _ = (schedule, quota, max_schedules);
        unsupported("put_schedule")
    }

    /// Removes `tenant`'s schedule `name`; false when there was none.
    /// Tasks it already enqueued stay.
    fn remove_schedule(
        &self,
        tenant: &str,
        name: &str,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send {
        let _ = (tenant, name);
        unsupported("remove_schedule")
    }

    /// `tenant`'s schedules in name order, each with its next tick.
    fn schedules(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<StoredSchedule>, BrokerError>> + Send {
        let _ = tenant;
        unsupported("schedules")
    }

    /// Sets (or, with `None`, removes) the fleet-wide rate limit of
    /// `tenant`'s job `job`: at most `tasks` of its tasks start per window
    /// of `per_ms` (aligned to the epoch), over all workers, counted in the
    /// same atomic step as the leases. A task over it is not failed: it
    /// waits, scheduled for the job's next window, while tasks of other
    /// jobs behind it go on.
    fn set_job_rate(
        &self,
        tenant: &str,
        job: &str,
        rate: Option<RateLimit>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (tenant, job, rate);
        unsupported("set_job_rate")
    }

    /// `tenant`'s per-job rate limits, by job name.
    fn job_rates(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<(String, RateLimit)>, BrokerError>> + Send {
        let _ = tenant;
        unsupported("job_rates")
    }

    /// Stores workflow `plan` and enqueues its first steps; later steps are
    /// enqueued as the steps they wait for complete, each exactly once
    /// (see [`crate::workflow`]), within `quota` (a step the quota refuses
    /// waits, ready, until there is room). A tenant that has
    /// `max_workflows` stored already (running, or ended and not yet past
    /// retention) gets [`BrokerError::Full`], checked in the same atomic
    /// step as the store.
    fn submit_workflow(
        &self,
        plan: &Plan,
        quota: &TenantQuota,
        max_workflows: u32,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (plan, quota, max_workflows);
        unsupported("submit_workflow")
    }

    /// `tenant`'s workflow `id`: its state, steps, error and result.
    fn workflow(
        &self,
        tenant: &str,
        id: WorkflowId,
    ) -> impl Future<Output = Result<Option<WorkflowStatus>, BrokerError>> + Send {
        let _ = (tenant, id);
        unsupported("workflow")
    }

    /// `tenant`'s stored workflows, newest first (at most
    /// [`MAX_WORKFLOWS_LISTED`]).
    fn workflows(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<WorkflowSummary>, BrokerError>> + Send {
        let _ = tenant;
        unsupported("workflows")
    }
}

/// What a broker answers for an operation it does not have.
async fn unsupported<T>(op: &'static str) -> Result<T, BrokerError> {
    Err(BrokerError::Unavailable {
        op,
        reason: "this broker does not support it".into(),
    })
}

/// Refuses a usage range that is empty or longer than the counters are
/// kept (what every broker answers the same way).
fn check_usage_days(days: &RangeInclusive<NaiveDate>) -> Result<(), BrokerError> {
    let span = (*days.end() - *days.start()).num_days();
    if span < 0 {
        return Err(BrokerError::Invalid {
            op: "usage",
            reason: format!(
                "the range ends ({}) before it starts ({})",
                days.end(),
                days.start()
            ),
        });
    }
    if span >= i64::from(USAGE_KEPT_DAYS) {
        return Err(BrokerError::Invalid {
            op: "usage",
            reason: format!(
                "{} days asked; usage is kept for {USAGE_KEPT_DAYS} days",
                span + 1
            ),
        });
    }
    Ok(())
}

/// Why [`TenantQuota::max_queued`] refused an enqueue (the same words from
/// every broker).
fn quota_full(tenant: &str, queued: u64, asked: u64, max: u64) -> String {
    format!(
        "tenant `{tenant}` has {queued} tasks queued; {asked} more would pass its limit of {max}; retry when some have run"
    )
}

/// Why [`TenantQuota::max_unique_keys`] refused an enqueue.
fn too_many_unique_keys(tenant: &str, held: usize, max: u64) -> String {
    format!(
        "tenant `{tenant}` holds {held} unique keys, its limit being {max}; retry when some expire"
    )
}

/// Why `max_workflows` refused a new workflow.
fn too_many_workflows(tenant: &str, have: usize, max: u32) -> String {
    format!(
        "tenant `{tenant}` has {have} workflows stored, its limit being {max}; ended ones are dropped after the retention of completed tasks"
    )
}

/// Most workflows [`Broker::workflows`] lists.
pub const MAX_WORKFLOWS_LISTED: usize = 100;

/// Why `max_schedules` refused a new schedule.
fn too_many_schedules(tenant: &str, have: usize, max: u32) -> String {
    format!("tenant `{tenant}` has {have} schedules, its limit being {max}")
}

/// Why [`TenantQuota::max_queues`] refused an enqueue.
fn too_many_queues(tenant: &str, have: usize, queue: &str, max: u32) -> String {
    format!(
        "tenant `{tenant}` has tasks in {have} queues, its limit being {max}; queue `{queue}` would be one more"
    )
}

/// The error kind of tasks that did not parse.
pub const MALFORMED: &str = "malformed";

/// Most bytes of a malformed entry kept in its stand-in's `raw` arg.
pub const MALFORMED_KEEP: usize = 16 * 1024;

/// Parses an entry pushed by hand into `tenant`'s queue `queue`: the task
/// JSON must parse and validate ([`Task::from_json`]) and must name that same
/// tenant and queue (so a push cannot run a task as another tenant). The
/// error is the reason stored with the dead entry.
pub fn parse_raw_task(raw: &[u8], tenant: &str, queue: &str) -> Result<Task, String> {
    let task = Task::from_json(raw).map_err(|e| e.reason)?;
    if task.tenant != tenant || task.queue_name != queue {
        return Err(format!(
            "the task names tenant `{}` and queue `{}` but was pushed into tenant `{tenant}`'s queue `{queue}`",
            task.tenant, task.queue_name
        ));
    }
    Ok(task)
}

/// The stand-in stored in the dead set for an entry that is not a task: job
/// `(malformed)`, the entry's text (lossy UTF-8, at most [`MALFORMED_KEEP`]
/// bytes) as arg `raw`, and a [`MALFORMED`] error with `reason`.
pub fn malformed_task(
    id: TaskId,
    tenant: &str,
    queue: &str,
    raw: &[u8],
    reason: &str,
    at: DateTime<Utc>,
) -> Task {
    let kept = &raw[..raw.len().min(MALFORMED_KEEP)];
    let mut args = ArgsMap::new();
    args.insert(
        "raw".to_owned(),
        serde_json::Value::String(String::from_utf8_lossy(kept).into_owned()),
    );
    let mut task = Task::new("(malformed)", args);
    task.task_id = id;
    task.tenant = tenant.to_owned();
    task.queue_name = queue.to_owned();
    task.created_at = at;
    task.updated_at = at;
    task.state = TaskState::Dead;
    task.max_attempts = 1;
    task.error = Some(TaskError {
        kind: MALFORMED.to_owned(),
        message: format!("malformed task: {reason}"),
        retryable: false,
        handler_index: None,
    });
    task
}
