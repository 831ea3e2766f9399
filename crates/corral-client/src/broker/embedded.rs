//! The embedded broker: the whole broker in this process's memory.
//!
//! The default when no Redis URL is given: one process enqueues and works,
//! with the same lease, retry, dead-set and retention semantics as the Redis
//! broker (both pass `tests/all/conformance.rs`). Tasks do not outlive the
//! process. Everything sits behind one mutex, held only for map operations,
//! never across an await; idle `acquire` calls wait on a [`Notify`].
//!
//! Queues are keyed by tenant and queue name; `acquire` starts each call at
//! the next tenant in turn, so one tenant's flood cannot starve another.
//!
//! A tenant's concurrency cap ([`AcquireRequest::tenant_caps`], or the one
//! its last limited enqueue stored) is checked against its count of active
//! tasks, kept by every step that leases a task or ends a lease.
//!
//! Tenant quotas ([`TenantQuota`]) are checked and counted under the same
//! lock that stores the tasks: each tenant's count of queued tasks (pending,
//! scheduled, retrying) is kept exact by every step that moves a task in or
//! out of those states, and its queue names are the queues that hold any of
//! its task records. No operation walks queues: due tasks, leases and
//! finished records sit in sets ordered by time, so maintenance and acquire
//! cost what is due, however many queues tenants have made.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::Notify;

use crate::schedule::Schedule;
use crate::workflow::{Plan, Progress, WorkflowId, WorkflowState, WorkflowStatus, WorkflowSummary};

use super::{
    AcquireRequest, Broker, BrokerError, Cancelled, Checkpoint, Lease, Leased, Maintenance,
    Outcome, QueueInfo, QueueStats, RateLimit, Retention, StoredSchedule, TaskQuery, TenantQuota,
    WorkerId, WorkerInfo, check_usage_days, malformed_task, parse_raw_task,
};
use corral_core::clock::{self, Clock, SystemClock};
use corral_core::metering::{DailyUsage, USAGE_KEPT_DAYS, Usage};
use corral_core::task::{MAX_PRIORITY, Task, TaskError, TaskId, TaskState};
use corral_core::text::Inert;

type QueueKey = (String, String);

/// A stored schedule: the quota its tasks are enqueued within, and its
/// next tick.
type StoredTimetable = (Schedule, TenantQuota, Option<DateTime<Utc>>);

/// How long an interrupt waits for its worker's next wait (as on Redis).
const INTERRUPT_TTL: Duration = Duration::from_secs(60);

struct Entry {
    task: Task,
    token: u64,
    /// Set while active: when the lease runs out.
    lease_expires: Option<DateTime<Utc>>,
    /// Set once final: when the task finished.
    finished_at: Option<DateTime<Utc>>,
    /// Set while active once [`Broker::cancel`] asked for it.
    cancel_requested: bool,
    /// The worker holding, or last holding, the lease.
    worker: WorkerId,
}

impl Entry {
    fn new(task: Task) -> Self {
        Self {
            task,
            token: 0,
            lease_expires: None,
            finished_at: None,
            cancel_requested: false,
            worker: WorkerId::new(),
        }
    }
}

/// One queue's pending ids: a first-in, first-out line per priority, taken
/// highest priority first. May hold stale ids (of tasks no longer pending),
/// which whoever takes them passes over.
#[derive(Default)]
struct Line {
    levels: [VecDeque<TaskId>; MAX_PRIORITY as usize + 1],
}

impl Line {
    fn level(&mut self, priority: u8) -> &mut VecDeque<TaskId> {
        &mut self.levels[usize::from(priority.min(MAX_PRIORITY))]
    }

    fn pop_front(&mut self) -> Option<TaskId> {
        self.levels.iter_mut().rev().find_map(VecDeque::pop_front)
    }
}

/// One tenant's per-job rate limits.
#[derive(Default)]
struct JobRates {
    /// Job → its fleet-wide rate limit.
    limits: HashMap<String, RateLimit>,
    /// Job → its current window's index and the tasks leased in it.
    windows: HashMap<String, (i64, u32)>,
}

/// Most tasks one take defers for their job's rate limit before it gives
/// up on the queue for this call, so a backlog of one limited job is moved
/// a bounded slice at a time (as the Redis script does, `max` per call),
/// never all at once under the lock.
const MAX_DEFERRED_PER_TAKE: usize = 1000;

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, Entry>,
    pending: HashMap<QueueKey, Line>,
    /// Delayed and retrying tasks by due time.
    scheduled: BTreeSet<(DateTime<Utc>, TaskId)>,
    /// Active tasks by lease expiry.
    active: BTreeSet<(DateTime<Utc>, TaskId)>,
    completed: VecDeque<TaskId>,
    dead: VecDeque<TaskId>,
    cancelled: VecDeque<TaskId>,
    /// Per tenant and queue, the ids of its task records (any state), in
    /// id (creation) order: what listing and counting walk, so neither
    /// costs more than the one queue.
    by_queue: HashMap<QueueKey, BTreeSet<TaskId>>,
    /// Queues workers skip.
    paused: HashSet<QueueKey>,
    /// The workers registry: each worker's entry and when it goes.
    workers: BTreeMap<WorkerId, (WorkerInfo, DateTime<Utc>)>,
    /// Cancels not yet delivered, per worker.
    cancels: HashMap<WorkerId, Vec<TaskId>>,
    /// Per tenant, its queue names, each with how many task records (in
    /// any state) it holds; a queue is gone with its last record.
    queues: HashMap<String, HashMap<String, usize>>,
    /// Per tenant, how many of its tasks are pending, scheduled or retrying.
    queued: HashMap<String, u64>,
    /// Per tenant, its active tasks by lease expiry: those whose lease has
    /// not run out count against its cap.
    running: HashMap<String, BTreeSet<(DateTime<Utc>, TaskId)>>,
    /// Per tenant and name, each schedule with the quota its tasks are
    /// enqueued within and its next tick.
    schedules: BTreeMap<(String, String), StoredTimetable>,
    /// The schedules' next ticks, earliest first.
    ticks: BTreeSet<(DateTime<Utc>, String, String)>,
    /// Per tenant and unique key, the task holding it and until when.
    unique: HashMap<(String, String), (TaskId, DateTime<Utc>)>,
    /// Per tenant and id, each workflow's progress and the quota its
    /// steps are enqueued within.
    workflows: HashMap<(String, WorkflowId), (Progress, TenantQuota)>,
    /// Per tenant, its stored workflows' ids (what its limit counts).
    workflow_ids: HashMap<String, BTreeSet<WorkflowId>>,
    /// Ended workflows by when they ended: what retention drops.
    workflows_ended: BTreeSet<(DateTime<Utc>, String, WorkflowId)>,
    /// Workflows with steps ready to enqueue.
    workflows_ready: BTreeSet<(String, WorkflowId)>,
    /// Of those, the ones a step ending (or a submission) made ready since
    /// the last advance: all an ack enqueues. Steps held back by a quota
    /// are maintenance's, so an ack never pays for another's backlog.
    workflows_fresh: BTreeSet<(String, WorkflowId)>,
    /// Per tenant, how many unique keys it holds.
    unique_held: HashMap<String, u64>,
    /// The same keys by expiry, so expired ones are dropped in order.
    unique_expiry: BTreeSet<(DateTime<Utc>, String, String)>,
    /// Per tenant, its rate limit as last given (by a limited enqueue, or
    /// a worker's acquire).
    rates: HashMap<String, RateLimit>,
    /// Per tenant, its current rate window (index since the epoch) and
    /// the tasks leased in it.
    rate_windows: HashMap<String, (i64, u32)>,
    /// When a rate window that held tasks back ends: a waiting acquire
    /// looks again then.
    rate_wake: Option<DateTime<Utc>>,
    /// Per tenant that set any, its jobs' rate limits and windows.
    job_rates: HashMap<String, JobRates>,
    /// Per tenant, its concurrency cap as last given (by a limited enqueue,
    /// or a worker's acquire).
    caps: HashMap<String, u32>,
    /// Tenants in the order `acquire` serves them.
    tenants: Vec<String>,
    next_tenant: usize,
    /// Workers whose next (or current) wait in `acquire` ends at once, with
    /// when they were interrupted: entries of workers that never wait again
    /// (stopped ones) are dropped after [`INTERRUPT_TTL`].
    interrupted: HashMap<WorkerId, std::time::Instant>,
    /// Per tenant and day (UTC), what its tasks cost; days older than
    /// [`USAGE_KEPT_DAYS`] are dropped by `maintain`.
    usage: BTreeMap<(String, NaiveDate), Usage>,
    /// The day `usage` was last cut to [`USAGE_KEPT_DAYS`]: once a day.
    usage_cut: Option<NaiveDate>,
}

/// An in-process [`Broker`].
///
/// ```
/// use corral_client::broker::{Broker, EmbeddedBroker};
/// use corral_client::task::{Task, ArgsMap};
///
/// # tokio_test_block_on(async {
/// let broker = EmbeddedBroker::new();
/// let task = Task::new("pipeline", ArgsMap::new());
/// let id = task.task_id;
/// broker.enqueue(vec![task]).await.unwrap();
/// assert!(broker.task("default", id).await.unwrap().is_some());
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    ready: Notify,
    /// Wakes workers waiting in `cancel_requests`.
    cancels: Notify,
    /// `acquire` calls waiting for work now.
    waiting: AtomicUsize,
    clock: Arc<dyn Clock>,
    retention: Retention,
    max_pending: usize,
}

/// Counts one waiting `acquire` while it lives, however the wait ends
/// (the caller may drop the future).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedBroker {
    /// A broker on the system clock with default retention.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock), Retention::default())
    }

    /// A broker reading time from `clock` and keeping finished tasks per
    /// `retention`.
    pub fn with_clock(clock: Arc<dyn Clock>, retention: Retention) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                cancels: Notify::new(),
                waiting: AtomicUsize::new(0),
                clock,
                retention,
                max_pending: 10_000_000,
            }),
        }
    }

    /// How many `acquire` calls are waiting for work at this moment (found
    /// nothing ready and sleep until an enqueue, a due task, an interrupt or
    /// their `block_for`).
    pub fn waiting_acquires(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way later calls would misread, so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_ready(&self, req: &AcquireRequest) -> Vec<Leased> {
        let now = self.inner.clock.now();
        let mut st = self.lock();
        st.promote_due(now, &mut HashSet::new());
        let mut out = Vec::new();
        let tenants = st.tenants.len();
        if tenants == 0 {
            return out;
        }
        // Round-robin over tenants, one task per tenant per turn, each up to
        // the room the request leaves it.
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut idle_turns = 0;
        let mut turn = st.next_tenant % tenants;
        while out.len() < req.max && idle_turns < tenants {
            let tenant = st.tenants[turn].clone();
            turn = (turn + 1) % tenants;
            let had = taken.get(&tenant).copied().unwrap_or(0);
            if let Some(&cap) = req.tenant_caps.get(&tenant) {
                st.caps.insert(tenant.clone(), cap);
            }
            let fleet_room = match st.caps.get(&tenant) {
                Some(&cap) => {
                    let live = st
                        .running
                        .get(&tenant)
                        .map_or(0, |r| r.iter().filter(|(at, _)| *at >= now).count());
                    (cap as usize).saturating_sub(live)
                }
                None => usize::MAX,
            };
            match req.tenant_rates.get(&tenant) {
                Some(Some(rate)) => {
                    st.rates.insert(tenant.clone(), *rate);
                }
                Some(None) => {
                    st.rates.remove(&tenant);
                }
                None => {}
            }
            let rate_window = st.rates.get(&tenant).map(|rate| {
                let per = i64::try_from(rate.per_ms.max(1))
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000);
                let window = now.timestamp_micros().div_euclid(per);
                let used = match st.rate_windows.get(&tenant) {
                    Some((w, n)) if *w == window => *n,
                    _ => 0,
                };
                (window, per, used, rate.tasks.max(1))
            });
            if let Some((window, per, used, tasks)) = rate_window
                && used >= tasks
            {
                let next = DateTime::from_timestamp_micros((window + 1).saturating_mul(per));
                st.rate_wake = match (st.rate_wake, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                idle_turns += 1;
                continue;
            }
            if fleet_room == 0 || had >= req.room_for(&tenant) {
                idle_turns += 1;
                continue;
            }
            let mut took = false;
            for queue in &req.queues {
                let key = (tenant.clone(), queue.clone());
                if st.paused.contains(&key) {
                    continue;
                }
                let Some(id) = st.take_within_job_rates(&key, now) else {
                    continue;
                };
                let expires = clock::add(now, req.lease_for);
                let Some(entry) = st.tasks.get_mut(&id) else {
                    continue;
                };
                if entry.task.state != TaskState::Pending {
                    // A stale entry: the task is accounted for elsewhere.
                    continue;
                }
                entry.token += 1;
                entry.cancel_requested = false;
                entry.worker.clone_from(&req.worker);
                entry.lease_expires = Some(expires);
                entry.task.state = TaskState::Active;
                entry.task.attempt += 1;
                entry.task.updated_at = now;
                let leased = Leased {
                    lease: Lease {
                        task_id: id,
                        tenant: entry.task.tenant.clone(),
                        queue: entry.task.queue_name.clone(),
                        token: entry.token,
                        worker: req.worker.clone(),
                        workflow: entry.task.workflow,
                    },
                    task: entry.task.clone(),
                };
                st.active.insert((expires, id));
                st.running
                    .entry(tenant.clone())
                    .or_default()
                    .insert((expires, id));
                if let Some((window, _, used, _)) = rate_window {
                    st.rate_windows.insert(tenant.clone(), (window, used + 1));
                }
                st.unqueue(&leased.lease.tenant);
                out.push(leased);
                took = true;
                break;
            }
            if took {
                taken.insert(tenant, had + 1);
                idle_turns = 0;
            } else {
                idle_turns += 1;
            }
        }
        st.next_tenant = turn;
        out
    }

    /// When a waiting acquire should look again by itself: the first
    /// delayed task's time, or the end of a rate window that held tasks
    /// back.
    fn earliest_due(&self) -> Option<DateTime<Utc>> {
        let mut st = self.lock();
        let now = self.inner.clock.now();
        if st.rate_wake.is_some_and(|at| at <= now) {
            st.rate_wake = None;
        }
        let due = st.scheduled.first().map(|(t, _)| *t);
        match (due, st.rate_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts by state of one tenant's queue, walking only that queue.
    fn count(&self, tenant: &str, queue: &str) -> QueueStats {
        let now = self.inner.clock.now();
        self.lock().count(tenant, queue, now)
    }
}

impl State {
    /// Counts by state of one tenant's queue, walking only that queue.
    fn count(&self, tenant: &str, queue: &str, now: DateTime<Utc>) -> QueueStats {
        let key = (tenant.to_owned(), queue.to_owned());
        let minute_ago = now - chrono::Duration::minutes(1);
        let mut stats = QueueStats {
            paused: self.paused.contains(&key),
            ..QueueStats::default()
        };
        for id in self.by_queue.get(&key).into_iter().flatten() {
            let Some(entry) = self.tasks.get(id) else {
                continue;
            };
            let recent = entry.finished_at.is_some_and(|at| at > minute_ago);
            match entry.task.state {
                TaskState::Pending => stats.pending += 1,
                TaskState::Scheduled => stats.scheduled += 1,
                TaskState::Retrying => {
                    stats.scheduled += 1;
                    stats.retrying += 1;
                }
                TaskState::Active => stats.active += 1,
                TaskState::Completed => {
                    stats.completed += 1;
                    stats.completed_last_minute += usize::from(recent);
                }
                TaskState::Dead => {
                    stats.dead += 1;
                    stats.failed_last_minute += usize::from(recent);
                }
                TaskState::Cancelled => stats.cancelled += 1,
            }
        }
        stats
    }

    /// The stored entry of `tenant`'s task `id` (another tenant's is as
    /// good as missing).
    fn owned(
        &mut self,
        op: &'static str,
        tenant: &str,
        id: TaskId,
    ) -> Result<&mut Entry, BrokerError> {
        self.tasks
            .get_mut(&id)
            .filter(|e| e.task.tenant == tenant)
            .ok_or_else(|| BrokerError::NotFound {
                op,
                what: format!("task {id}"),
            })
    }

    /// Takes a waiting task out of its tenant's count of queued tasks and
    /// out of the scheduled set (a pending id is left in its line, stale).
    fn unwait(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        let task = &entry.task;
        let tenant = task.tenant.clone();
        match task.state {
            // Its id stays in the pending line, stale: `acquire` drops ids
            // of tasks no longer pending (or gone), so nothing walks the
            // line here.
            TaskState::Pending => {}
            // A waiting task's due time is its run_at (enqueue and retry
            // both file it so).
            TaskState::Scheduled | TaskState::Retrying => {
                if let Some(at) = task.run_at {
                    self.scheduled.remove(&(at, id));
                }
            }
            _ => return,
        }
        self.unqueue(&tenant);
    }

    /// Takes a finished task out of its finished list.
    fn unfinish(&mut self, id: TaskId) {
        let Some(state) = self.tasks.get(&id).map(|e| e.task.state) else {
            return;
        };
        let list = match state {
            TaskState::Completed => &mut self.completed,
            TaskState::Dead => &mut self.dead,
            TaskState::Cancelled => &mut self.cancelled,
            _ => return,
        };
        list.retain(|x| *x != id);
    }

    /// Puts a dead or cancelled task back in line: attempts reset, error
    /// archived. The caller checked the state and the quota.
    fn requeue_finished(&mut self, id: TaskId, now: DateTime<Utc>) {
        self.unfinish(id);
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.finished_at = None;
        entry.task.archive_error();
        entry.task.state = TaskState::Pending;
        entry.task.attempt = 0;
        entry.task.run_at = None;
        entry.task.updated_at = now;
        let task = entry.task.clone();
        self.enqueued(&task.tenant);
        self.push_pending(&task);
    }

    /// Stores a new task record, counting it in its queue.
    fn insert(&mut self, entry: Entry) {
        self.by_queue
            .entry((entry.task.tenant.clone(), entry.task.queue_name.clone()))
            .or_default()
            .insert(entry.task.task_id);
        *self
            .queues
            .entry(entry.task.tenant.clone())
            .or_default()
            .entry(entry.task.queue_name.clone())
            .or_default() += 1;
        self.tasks.insert(entry.task.task_id, entry);
    }

    /// Drops a task record; its queue goes with its last record.
    fn remove(&mut self, id: &TaskId) {
        let Some(entry) = self.tasks.remove(id) else {
            return;
        };
        let (tenant, queue) = (&entry.task.tenant, &entry.task.queue_name);
        let key = (tenant.clone(), queue.clone());
        if let Some(ids) = self.by_queue.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_queue.remove(&key);
            }
        }
        let Some(queues) = self.queues.get_mut(tenant) else {
            return;
        };
        if let Some(records) = queues.get_mut(queue) {
            *records = records.saturating_sub(1);
            if *records == 0 {
                queues.remove(queue);
                self.pending.remove(&(tenant.clone(), queue.clone()));
            }
        }
        if queues.is_empty() {
            self.queues.remove(tenant);
        }
    }

    /// One more of `tenant`'s tasks is pending, scheduled or retrying.
    fn enqueued(&mut self, tenant: &str) {
        *self.queued.entry(tenant.to_owned()).or_default() += 1;
    }

    /// One fewer of `tenant`'s tasks is pending, scheduled or retrying.
    fn unqueue(&mut self, tenant: &str) {
        if let Some(n) = self.queued.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.queued.remove(tenant);
            }
        }
    }

    /// Stores new tasks (what [`Broker::enqueue_within`] does under the
    /// lock): all or none, within `quota`. Returns whether one is ready.
    fn store(
        &mut self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
        now: DateTime<Utc>,
        max_pending: usize,
    ) -> Result<bool, BrokerError> {
        if self.tasks.len() + tasks.len() > max_pending {
            return Err(BrokerError::Full {
                op: "enqueue",
                reason: format!("the broker holds {} tasks already", self.tasks.len()),
            });
        }
        for task in &tasks {
            task.validate_new().map_err(|e| BrokerError::Invalid {
                op: "enqueue",
                reason: e.reason,
            })?;
            if self.tasks.contains_key(&task.task_id) {
                return Err(BrokerError::Duplicate {
                    op: "enqueue",
                    task_id: task.task_id,
                });
            }
        }
        let mut ids = HashSet::with_capacity(tasks.len());
        if let Some(twice) = tasks.iter().find(|t| !ids.insert(t.task_id)) {
            return Err(BrokerError::Duplicate {
                op: "enqueue",
                task_id: twice.task_id,
            });
        }
        self.check_quota(&tasks, quota)?;
        self.check_unique(&tasks, now, quota.max_unique_keys)?;
        if quota.max_concurrency != u32::MAX {
            for task in &tasks {
                self.caps.insert(task.tenant.clone(), quota.max_concurrency);
                match quota.rate {
                    Some(rate) => self.rates.insert(task.tenant.clone(), rate),
                    None => self.rates.remove(&task.tenant),
                };
            }
        }
        let mut any_ready = false;
        for mut task in tasks {
            task.updated_at = now;
            let id = task.task_id;
            match task.run_at.filter(|at| *at > now) {
                Some(at) => {
                    task.state = TaskState::Scheduled;
                    self.scheduled.insert((at, id));
                }
                None => {
                    task.state = TaskState::Pending;
                    self.push_pending(&task);
                    any_ready = true;
                }
            }
            self.enqueued(&task.tenant);
            self.hold_unique(&task, now);
            self.insert(Entry::new(task));
        }
        Ok(any_ready)
    }

    /// Fires the schedule ticks due at `now` (see [`crate::schedule`]);
    /// returns whether a task became ready.
    fn fire_due(
        &mut self,
        now: DateTime<Utc>,
        max_pending: usize,
        report: &mut Maintenance,
    ) -> bool {
        let mut any_ready = false;
        while let Some((tick, tenant, name)) = self.ticks.first().cloned() {
            if tick > now {
                break;
            }
            self.ticks.pop_first();
            let key = (tenant, name);
            let Some((schedule, quota, _)) = self.schedules.get(&key).cloned() else {
                continue;
            };
            let mut next = Some(tick);
            for fire in schedule.plan(tick, now) {
                next = fire.next;
                if !fire.enqueue {
                    report.ticks_skipped += 1;
                    continue;
                }
                match self.store(vec![schedule.task_at(fire.stamp)], &quota, now, max_pending) {
                    Ok(ready) => {
                        any_ready |= ready;
                        report.ticks_enqueued += 1;
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %Inert(&key.0), schedule = %Inert(&key.1), error = %e, "a schedule tick's task was refused");
                        report.ticks_skipped += 1;
                    }
                }
            }
            if let Some(entry) = self.schedules.get_mut(&key) {
                entry.2 = next;
            }
            if let Some(next) = next {
                self.ticks.insert((next, key.0, key.1));
            }
        }
        any_ready
    }

    /// Refuses `tasks` if one's unique key is held (by a task enqueued
    /// within the key's ttl), or if two of them share a key; drops expired
    /// keys first.
    fn check_unique(
        &mut self,
        tasks: &[Task],
        now: DateTime<Utc>,
        max_unique_keys: u64,
    ) -> Result<(), BrokerError> {
        while let Some((at, tenant, key)) = self.unique_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.unique_expiry.pop_first();
            let slot = (tenant, key);
            if self
                .unique
                .get(&slot)
                .is_some_and(|(_, until)| *until == at)
            {
                self.unique.remove(&slot);
                if let Some(n) = self.unique_held.get_mut(&slot.0) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.unique_held.remove(&slot.0);
                    }
                }
            }
        }
        let mut asked = HashSet::new();
        let mut new_keys: HashMap<&str, u64> = HashMap::new();
        for task in tasks {
            let Some(unique) = &task.unique else {
                continue;
            };
            *new_keys.entry(task.tenant.as_str()).or_default() += 1;
            let slot = (task.tenant.clone(), unique.key.clone());
            if let Some((existing, _)) = self.unique.get(&slot) {
                return Err(BrokerError::Deduplicated {
                    op: "enqueue",
                    existing: *existing,
                });
            }
            if !asked.insert(slot) {
                return Err(BrokerError::Invalid {
                    op: "enqueue",
                    reason: "two tasks of one enqueue share a unique key".into(),
                });
            }
        }
        for (tenant, asked) in new_keys {
            let held = self.unique_held.get(tenant).copied().unwrap_or(0);
            if held.saturating_add(asked) > max_unique_keys {
                return Err(BrokerError::Full {
                    op: "enqueue",
                    reason: super::too_many_unique_keys(tenant, held as usize, max_unique_keys),
                });
            }
        }
        Ok(())
    }

    /// Takes the unique key of `task`, if it has one.
    fn hold_unique(&mut self, task: &Task, now: DateTime<Utc>) {
        if let Some(unique) = &task.unique {
            let until = clock::add(now, Duration::from_millis(unique.ttl_ms));
            let slot = (task.tenant.clone(), unique.key.clone());
            self.unique_expiry
                .insert((until, slot.0.clone(), slot.1.clone()));
            if self.unique.insert(slot, (task.task_id, until)).is_none() {
                *self.unique_held.entry(task.tenant.clone()).or_default() += 1;
            }
        }
    }

    /// Refuses `tasks` (already validated) if storing them would take a
    /// tenant past `quota`.
    fn check_quota(&self, tasks: &[Task], quota: &TenantQuota) -> Result<(), BrokerError> {
        let mut asked: HashMap<&str, (u64, BTreeSet<&str>)> = HashMap::new();
        for task in tasks {
            let (n, names) = asked.entry(task.tenant.as_str()).or_default();
            *n += 1;
            names.insert(task.queue_name.as_str());
        }
        for (tenant, (n, names)) in asked {
            let queued = self.queued.get(tenant).copied().unwrap_or(0);
            if queued.saturating_add(n) > quota.max_queued {
                return Err(BrokerError::Full {
                    op: "enqueue",
                    reason: super::quota_full(tenant, queued, n, quota.max_queued),
                });
            }
            let have = self.queues.get(tenant);
            let count = have.map_or(0, HashMap::len);
            if let Some(new) = names
                .iter()
                .filter(|q| have.is_none_or(|h| !h.contains_key(**q)))
                .nth((quota.max_queues as usize).saturating_sub(count))
            {
                return Err(BrokerError::TooManyQueues {
                    op: "enqueue",
                    reason: super::too_many_queues(tenant, count, new, quota.max_queues),
                });
            }
        }
        Ok(())
    }

    /// Puts `task` at the back of its priority's line.
    fn push_pending(&mut self, task: &Task) {
        self.line(task).push_back(task.task_id);
    }

    /// Puts `task` at the front of its priority's line.
    fn push_pending_front(&mut self, task: &Task) {
        self.line(task).push_front(task.task_id);
    }

    fn line(&mut self, task: &Task) -> &mut VecDeque<TaskId> {
        if !self.tenants.iter().any(|t| t == &task.tenant) {
            self.tenants.push(task.tenant.clone());
        }
        self.pending
            .entry((task.tenant.clone(), task.queue_name.clone()))
            .or_default()
            .level(task.priority)
    }

    /// Makes due delayed and retrying tasks pending; notes their queues in
    /// `touched`.
    fn promote_due(&mut self, now: DateTime<Utc>, touched: &mut HashSet<QueueKey>) -> usize {
        let mut promoted = 0;
        while let Some(&(at, id)) = self.scheduled.first() {
            if at > now {
                break;
            }
            self.scheduled.pop_first();
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            entry.task.state = TaskState::Pending;
            entry.task.updated_at = now;
            let task = entry.task.clone();
            touched.insert((task.tenant.clone(), task.queue_name.clone()));
            self.push_pending(&task);
            promoted += 1;
        }
        promoted
    }

    /// Checks `lease` against the stored token and returns the entry.
    fn leased_entry(&mut self, op: &'static str, lease: &Lease) -> Result<&mut Entry, BrokerError> {
        let lost = || BrokerError::LeaseLost {
            op,
            task_id: lease.task_id,
            token: lease.token,
        };
        let entry = self.tasks.get_mut(&lease.task_id).ok_or_else(lost)?;
        if entry.token != lease.token || entry.task.state != TaskState::Active {
            return Err(lost());
        }
        Ok(entry)
    }

    fn finish(&mut self, id: TaskId, now: DateTime<Utc>, retention: &Retention) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.finished_at = Some(now);
        entry.lease_expires = None;
        entry.task.updated_at = now;
        if let Some(step) = entry.task.workflow {
            let result = match (&entry.task.state, &entry.task.error) {
                (TaskState::Completed, _) => Ok(entry.task.args_map.clone()),
                (_, Some(error)) => Err(error.clone()),
                (state, None) => Err(TaskError {
                    kind: state.to_string(),
                    message: format!("the task is {state}"),
                    retryable: false,
                    handler_index: None,
                }),
            };
            let key = (entry.task.tenant.clone(), WorkflowId(step.id));
            self.step_ended(key, step.step, id, result, now);
        }
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let (list, max) = match entry.task.state {
            TaskState::Dead => (&mut self.dead, retention.max_dead),
            TaskState::Cancelled => (&mut self.cancelled, retention.max_dead),
            _ => (&mut self.completed, retention.max_completed),
        };
        list.push_back(id);
        let mut over = Vec::new();
        while list.len() > max {
            if let Some(old) = list.pop_front() {
                over.push(old);
            }
        }
        for old in over {
            self.remove(&old);
        }
    }

    /// The next task of queue `key` whose job is within its rate limit;
    /// tasks over theirs wait, scheduled for their job's next window (and
    /// the next rate wake-up is noted), at most [`MAX_DEFERRED_PER_TAKE`]
    /// of them per call. Stale entries are passed over.
    fn take_within_job_rates(&mut self, key: &QueueKey, now: DateTime<Utc>) -> Option<TaskId> {
        for _ in 0..=MAX_DEFERRED_PER_TAKE {
            let id = self.pending.get_mut(key).and_then(Line::pop_front)?;
            let Some(rates) = self.job_rates.get_mut(&key.0) else {
                // A tenant with no job limits costs no lookup.
                return Some(id);
            };
            let Some(entry) = self.tasks.get(&id) else {
                continue;
            };
            if entry.task.state != TaskState::Pending {
                // A stale entry: the task is accounted for elsewhere.
                continue;
            }
            let job = entry.task.job_name.as_str();
            let Some(rate) = rates.limits.get(job).copied() else {
                return Some(id);
            };
            let per = i64::try_from(rate.per_ms.max(1))
                .unwrap_or(i64::MAX)
                .saturating_mul(1000);
            let window = now.timestamp_micros().div_euclid(per);
            let used = match rates.windows.get(job) {
                Some((w, n)) if *w == window => *n,
                _ => 0,
            };
            if used < rate.tasks.max(1) {
                match rates.windows.get_mut(job) {
                    Some(w) => *w = (window, used + 1),
                    None => {
                        rates.windows.insert(job.to_owned(), (window, used + 1));
                    }
                }
                return Some(id);
            }
            let Some(at) = DateTime::from_timestamp_micros((window + 1).saturating_mul(per)) else {
                return Some(id);
            };
            if let Some(entry) = self.tasks.get_mut(&id) {
                entry.task.state = TaskState::Scheduled;
                entry.task.run_at = Some(at);
                entry.task.updated_at = now;
            }
            self.scheduled.insert((at, id));
            self.rate_wake = Some(self.rate_wake.map_or(at, |w| w.min(at)));
        }
        // Enough deferred for one call; the rest waits for the next take.
        None
    }

    /// Workflow `key`'s step `step` (task `id`) ended with `result`.
    fn step_ended(
        &mut self,
        key: (String, WorkflowId),
        step: u32,
        id: TaskId,
        result: Result<corral_core::task::ArgsMap, TaskError>,
        now: DateTime<Utc>,
    ) {
        let Some((progress, _)) = self.workflows.get_mut(&key) else {
            return;
        };
        let was = progress.state;
        let readied = progress.ready.len();
        progress.finish(step, id, result, now);
        let grew = progress.ready.len() > readied;
        self.note_ended(&key, was, now);
        if grew {
            self.workflows_ready.insert(key.clone());
            self.workflows_fresh.insert(key);
        }
    }

    /// Records workflow `key`'s end, if it was `was` (running) and is not
    /// any more.
    fn note_ended(&mut self, key: &(String, WorkflowId), was: WorkflowState, now: DateTime<Utc>) {
        let ended = self
            .workflows
            .get(key)
            .is_some_and(|(p, _)| p.state != WorkflowState::Running);
        if was == WorkflowState::Running && ended {
            self.workflows_ended.insert((now, key.0.clone(), key.1));
        }
    }

    /// Enqueues the ready steps of the workflows `all` or only the fresh
    /// ones name, each within its workflow's quota (a refused step stays
    /// ready for maintenance). Returns whether a task became ready.
    fn advance_workflows(&mut self, now: DateTime<Utc>, max_pending: usize, all: bool) -> bool {
        let mut any = false;
        let fresh = std::mem::take(&mut self.workflows_fresh);
        let keys: Vec<(String, WorkflowId)> = if all {
            self.workflows_ready.iter().cloned().collect()
        } else {
            fresh.into_iter().collect()
        };
        for key in keys {
            let Some((progress, quota)) = self.workflows.get(&key) else {
                self.workflows_ready.remove(&key);
                continue;
            };
            let quota = *quota;
            let ready: Vec<u32> = progress.ready.iter().copied().collect();
            let mut blocked = false;
            for i in ready {
                // No room under the quota: nothing is built for it.
                let queued = self.queued.get(&key.0).copied().unwrap_or(0);
                if queued >= quota.max_queued {
                    blocked = true;
                    break;
                }
                let bytes = self
                    .workflows
                    .get(&key)
                    .map_or(0, |(p, _)| p.input_bytes(i));
                if bytes > crate::workflow::MAX_INPUT_BYTES {
                    if let Some((progress, _)) = self.workflows.get_mut(&key) {
                        let was = progress.state;
                        progress.fail_ready(i, crate::workflow::input_too_large(bytes), now);
                        self.note_ended(&key, was, now);
                    }
                    continue;
                }
                let task = self.workflows.get(&key).and_then(|(p, _)| p.task(i));
                let Some(task) = task else {
                    tracing::error!(tenant = %Inert(&key.0), workflow = %key.1, step = i, "a ready workflow step lacks an input; it is not enqueued");
                    continue;
                };
                match self.store(vec![task], &quota, now, max_pending) {
                    Ok(ready) => {
                        any |= ready;
                        if let Some((progress, _)) = self.workflows.get_mut(&key) {
                            progress.enqueued(i);
                        }
                    }
                    Err(BrokerError::Duplicate { .. }) => {
                        if let Some((progress, _)) = self.workflows.get_mut(&key) {
                            progress.enqueued(i);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(tenant = %Inert(&key.0), workflow = %key.1, error = %e, "a workflow step waits for room under its tenant's quota");
                        blocked = true;
                        break;
                    }
                }
            }
            let done = self
                .workflows
                .get(&key)
                .is_none_or(|(p, _)| p.ready.is_empty());
            if done && !blocked {
                self.workflows_ready.remove(&key);
            }
        }
        any
    }

    /// Drops ended workflows past `ttl`.
    fn trim_workflows(&mut self, now: DateTime<Utc>, ttl: Duration) {
        while let Some((at, tenant, id)) = self.workflows_ended.first().cloned() {
            if clock::add(at, ttl) > now {
                break;
            }
            self.workflows_ended.pop_first();
            let key = (tenant, id);
            self.workflows.remove(&key);
            self.workflows_ready.remove(&key);
            self.workflows_fresh.remove(&key);
            if let Some(ids) = self.workflow_ids.get_mut(&key.0) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.workflow_ids.remove(&key.0);
                }
            }
        }
    }

    /// Drops finished records past retention; notes their queues in
    /// `touched`.
    fn trim(
        &mut self,
        now: DateTime<Utc>,
        retention: &Retention,
        touched: &mut HashSet<QueueKey>,
    ) -> usize {
        let mut gone = Vec::new();
        for (list, ttl) in [
            (&mut self.completed, retention.completed_ttl),
            (&mut self.dead, retention.dead_ttl),
            (&mut self.cancelled, retention.dead_ttl),
        ] {
            while let Some(id) = list.front() {
                let expired = self
                    .tasks
                    .get(id)
                    .and_then(|e| e.finished_at)
                    .is_none_or(|at| clock::add(at, ttl) <= now);
                if !expired {
                    break;
                }
                if let Some(id) = list.pop_front() {
                    gone.push(id);
                }
            }
        }
        for id in &gone {
            if let Some(e) = self.tasks.get(id) {
                touched.insert((e.task.tenant.clone(), e.task.queue_name.clone()));
            }
            self.remove(id);
        }
        gone.len()
    }

    /// Adds to `tenant`'s usage of the day `now` falls on.
    fn bill(&mut self, tenant: &str, now: DateTime<Utc>, add: impl FnOnce(&mut Usage)) {
        add(self
            .usage
            .entry((tenant.to_owned(), now.date_naive()))
            .or_default());
    }

    /// Ends the lease of active task `id` (its entry stays as it is).
    fn release_active(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        if let Some(at) = entry.lease_expires {
            let tenant = entry.task.tenant.clone();
            self.active.remove(&(at, id));
            self.unrun(&tenant, at, id);
        }
    }

    /// `tenant`'s task `id`, leased until `at`, is no longer active.
    fn unrun(&mut self, tenant: &str, at: DateTime<Utc>, id: TaskId) {
        if let Some(r) = self.running.get_mut(tenant) {
            r.remove(&(at, id));
            if r.is_empty() {
                self.running.remove(tenant);
            }
        }
    }
}

impl Broker for EmbeddedBroker {
    async fn enqueue_within(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        let now = self.inner.clock.now();
        let any_ready = self
            .lock()
            .store(tasks, quota, now, self.inner.max_pending)?;
        if any_ready {
            self.inner.ready.notify_waiters();
            self.inner.ready.notify_one();
        }
        Ok(())
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Vec<Leased>, BrokerError> {
        let give_up = tokio::time::Instant::now() + req.block_for;
        loop {
            // Register interest before looking, so an enqueue between the
            // look and the wait is not missed.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.take_ready(req);
            if !got.is_empty() {
                return Ok(got);
            }
            let interrupted = self.lock().interrupted.remove(&req.worker);
            if interrupted.is_some_and(|at| at.elapsed() < INTERRUPT_TTL) {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            // Wake for an enqueue, for the next delayed task, or at the end.
            let mut wake = give_up;
            if let Some(due) = self.earliest_due() {
                let wait = (due - self.inner.clock.now()).to_std().unwrap_or_default();
                wake = wake.min(now + wait);
            }
            let _waiting = Waiting::enter(&self.inner.waiting);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn interrupt(&self, worker: &WorkerId) {
        {
            let mut st = self.lock();
            st.interrupted.retain(|_, at| at.elapsed() < INTERRUPT_TTL);
            st.interrupted
                .insert(worker.clone(), std::time::Instant::now());
        }
        self.inner.ready.notify_waiters();
    }

    async fn update(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), BrokerError> {
        let now = self.inner.clock.now();
        let mut st = self.lock();
        let entry = st.leased_entry("update", lease)?;
        checkpoint.clone().apply(&mut entry.task);
        entry.task.metering.billed();
        entry.task.updated_at = now;
        st.bill(&lease.tenant, now, |u| {
            u.add_calls(&checkpoint.metering.unbilled)
        });
        Ok(())
    }

    async fn ack(
        &self,
        results: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        let now = self.inner.clock.now();
        let retention = self.inner.retention;
        let mut released = false;
        let stepped;
        let mut out = Vec::with_capacity(results.len());
        {
            let mut st = self.lock();
            for (lease, outcome) in results {
                if let Err(e) = st.leased_entry("ack", lease) {
                    // The same outcome under the same token, already applied
                    // (a retried ack): accepted again, without effect.
                    let applied = st
                        .tasks
                        .get(&lease.task_id)
                        .is_some_and(|e| e.token == lease.token && e.task.state == outcome.state());
                    out.push(if applied { Ok(()) } else { Err(e) });
                    continue;
                }
                st.release_active(lease.task_id);
                // A slot under the tenant's cap is free: waiting acquires
                // held back by it look again.
                released |= st.caps.contains_key(&lease.tenant);
                let Some(entry) = st.tasks.get_mut(&lease.task_id) else {
                    continue;
                };
                entry.lease_expires = None;
                entry.task.updated_at = now;
                // A task whose cancel was asked for never runs again: a
                // retry or a hand-back becomes the cancel.
                let asked_cancel;
                let outcome = match outcome {
                    Outcome::Retry { .. } | Outcome::Release if entry.cancel_requested => {
                        asked_cancel = Outcome::Cancelled(cancel_error(
                            "the task was cancelled while it ran",
                            Some(entry.task.current_handler_index),
                        ));
                        &asked_cancel
                    }
                    other => other,
                };
                entry.cancel_requested = false;
                match outcome {
                    Outcome::Cancelled(_) => {
                        entry.task.state = TaskState::Cancelled;
                        // The checkpoint names the handler that was running.
                        entry.task.error = Some(cancel_error(
                            "the task was cancelled while it ran",
                            Some(entry.task.current_handler_index),
                        ));
                        st.finish(lease.task_id, now, &retention);
                    }
                    Outcome::Completed(cp) => {
                        cp.clone().apply(&mut entry.task);
                        entry.task.metering.billed();
                        entry.task.state = TaskState::Completed;
                        entry.task.error = None;
                        st.finish(lease.task_id, now, &retention);
                        st.bill(&lease.tenant, now, |u| {
                            u.add_calls(&cp.metering.unbilled);
                            u.completed += 1;
                        });
                    }
                    Outcome::Retry { error, at } => {
                        entry.task.state = TaskState::Retrying;
                        entry.task.run_at = Some(*at);
                        entry.task.error = Some(error.clone());
                        st.scheduled.insert((*at, lease.task_id));
                        st.enqueued(&lease.tenant);
                        st.bill(&lease.tenant, now, |u| u.retried += 1);
                    }
                    Outcome::Dead(error) => {
                        entry.task.state = TaskState::Dead;
                        entry.task.error = Some(error.clone());
                        st.finish(lease.task_id, now, &retention);
                        st.bill(&lease.tenant, now, |u| u.dead += 1);
                    }
                    Outcome::Release => {
                        entry.task.state = TaskState::Pending;
                        entry.task.attempt = entry.task.attempt.saturating_sub(1);
                        let task = entry.task.clone();
                        // Back to the head: it was next in line already.
                        st.enqueued(&task.tenant);
                        st.push_pending_front(&task);
                        released = true;
                    }
                }
                out.push(Ok(()));
            }
            stepped = st.advance_workflows(now, self.inner.max_pending, false);
        }
        if stepped {
            self.inner.ready.notify_waiters();
        } else if released {
            self.inner.ready.notify_one();
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        let now = self.inner.clock.now();
        let expires = clock::add(now, lease_for);
        let mut st = self.lock();
        let mut lost = Vec::new();
        for lease in leases {
            let old = match st.leased_entry("heartbeat", lease) {
                Ok(entry) => entry.lease_expires.replace(expires),
                Err(_) => {
                    lost.push(lease.task_id);
                    continue;
                }
            };
            if let Some(old) = old {
                st.active.remove(&(old, lease.task_id));
                st.unrun(&lease.tenant, old, lease.task_id);
            }
            st.active.insert((expires, lease.task_id));
            st.running
                .entry(lease.tenant.clone())
                .or_default()
                .insert((expires, lease.task_id));
        }
        Ok(lost)
    }

    async fn maintain(&self) -> Result<Maintenance, BrokerError> {
        let now = self.inner.clock.now();
        let retention = self.inner.retention;
        let mut report = Maintenance::default();
        // The queues this pass had work in: it walks only what is due.
        let mut touched = HashSet::new();
        let fired_ready;
        {
            let mut st = self.lock();
            report.promoted = st.promote_due(now, &mut touched);
            while let Some(&(at, id)) = st.active.first() {
                if at > now {
                    break;
                }
                st.active.pop_first();
                let Some(entry) = st.tasks.get_mut(&id) else {
                    continue;
                };
                entry.lease_expires = None;
                entry.task.updated_at = now;
                let tenant = entry.task.tenant.clone();
                touched.insert((tenant.clone(), entry.task.queue_name.clone()));
                st.unrun(&tenant, at, id);
                let Some(entry) = st.tasks.get_mut(&id) else {
                    continue;
                };
                if entry.cancel_requested {
                    entry.cancel_requested = false;
                    entry.task.state = TaskState::Cancelled;
                    entry.task.error = Some(cancel_error(
                        "the task was cancelled while it ran; its worker's lease expired before it reported back",
                        Some(entry.task.current_handler_index),
                    ));
                    st.finish(id, now, &retention);
                    report.expired_dead += 1;
                } else if entry.task.attempt >= entry.task.max_attempts {
                    entry.task.state = TaskState::Dead;
                    entry.task.error = Some(TaskError {
                        kind: "lease_expired".into(),
                        message: format!(
                            "the worker's lease expired on attempt {} of {}",
                            entry.task.attempt, entry.task.max_attempts
                        ),
                        retryable: false,
                        handler_index: Some(entry.task.current_handler_index),
                    });
                    st.finish(id, now, &retention);
                    report.expired_dead += 1;
                } else {
                    entry.task.state = TaskState::Pending;
                    let task = entry.task.clone();
                    st.enqueued(&task.tenant);
                    st.push_pending(&task);
                    report.recovered += 1;
                }
            }
            report.trimmed = st.trim(now, &retention, &mut touched);
            fired_ready = st.fire_due(now, self.inner.max_pending, &mut report)
                | st.advance_workflows(now, self.inner.max_pending, true);
            st.trim_workflows(now, retention.completed_ttl);
            let today = now.date_naive();
            if st.usage_cut != Some(today) {
                st.usage_cut = Some(today);
                let oldest = today - chrono::Days::new(u64::from(USAGE_KEPT_DAYS));
                st.usage.retain(|(_, day), _| *day > oldest);
            }
        }
        report.queues_visited = touched.len();
        if report.promoted + report.recovered > 0 || fired_ready {
            self.inner.ready.notify_waiters();
        }
        Ok(report)
    }

    async fn task(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, BrokerError> {
        Ok(self
            .lock()
            .tasks
            .get(&id)
            .filter(|e| e.task.tenant == tenant)
            .map(|e| e.task.clone()))
    }

    async fn usage(
        &self,
        tenant: &str,
        days: RangeInclusive<NaiveDate>,
    ) -> Result<Vec<DailyUsage>, BrokerError> {
        check_usage_days(&days)?;
        let st = self.lock();
        let (from, to) = (days.start(), days.end());
        Ok(st
            .usage
            .range((tenant.to_owned(), *from)..=(tenant.to_owned(), *to))
            .map(|((_, day), usage)| DailyUsage {
                day: *day,
                usage: *usage,
            })
            .collect())
    }

    async fn dead(
        &self,
        tenant: &str,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<Task>, BrokerError> {
        let st = self.lock();
        Ok(st
            .dead
            .iter()
            .rev()
            .filter_map(|id| st.tasks.get(id))
            .filter(|e| e.task.tenant == tenant && e.task.queue_name == queue)
            .take(limit)
            .map(|e| e.task.clone())
            .collect())
    }

    async fn enqueue_raw(
        &self,
        tenant: &str,
        queue: &str,
        raw: Vec<u8>,
    ) -> Result<(), BrokerError> {
        // Parsed on the way in (the Redis broker parses when a worker takes
        // the entry); either way a worker sees only tasks that parsed.
        let now = self.inner.clock.now();
        let retention = self.inner.retention;
        let parsed = parse_raw_task(&raw, tenant, queue);
        let mut st = self.lock();
        let reason = match parsed {
            Ok(task) if st.tasks.contains_key(&task.task_id) => {
                format!("task_id {} already exists", task.task_id)
            }
            Ok(mut task) => {
                task.state = TaskState::Pending;
                task.attempt = 0;
                task.updated_at = now;
                st.push_pending(&task);
                st.enqueued(&task.tenant);
                st.insert(Entry::new(task));
                drop(st);
                self.inner.ready.notify_one();
                return Ok(());
            }
            Err(reason) => reason,
        };
        let stand_in = malformed_task(TaskId::new(), tenant, queue, &raw, &reason, now);
        let id = stand_in.task_id;
        st.insert(Entry::new(stand_in));
        st.finish(id, now, &retention);
        st.bill(tenant, now, |u| u.dead += 1);
        Ok(())
    }

    async fn stats(&self, tenant: &str, queue: &str) -> Result<QueueStats, BrokerError> {
        Ok(self.count(tenant, queue))
    }

    async fn tenant_stats(&self, tenant: &str) -> Result<QueueStats, BrokerError> {
        let now = self.inner.clock.now();
        let st = self.lock();
        let mut total = QueueStats::default();
        for queue in st.queues.get(tenant).into_iter().flat_map(HashMap::keys) {
            total.add(&st.count(tenant, queue, now));
        }
        Ok(total)
    }

    async fn queue_depths(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, String, QueueStats)>, BrokerError> {
        let now = self.inner.clock.now();
        let st = self.lock();
        let mut out = Vec::new();
        for (tenant, queue) in st.by_queue.keys() {
            if queues.contains(queue) {
                let stats = st.count(tenant, queue, now);
                if !stats.is_empty() {
                    out.push((tenant.clone(), queue.clone(), stats));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    async fn list_tasks(&self, tenant: &str, query: &TaskQuery) -> Result<Vec<Task>, BrokerError> {
        let st = self.lock();
        let mut found: Vec<&Task> = st
            .tasks
            .values()
            .map(|e| &e.task)
            .filter(|t| t.tenant == tenant)
            .filter(|t| query.state.is_none_or(|s| t.state == s))
            .filter(|t| query.queue.as_ref().is_none_or(|q| &t.queue_name == q))
            .collect();
        // Newest first: ids are UUID v7, ordered by creation time.
        found.sort_unstable_by_key(|t| std::cmp::Reverse(t.task_id));
        Ok(found.into_iter().take(query.limit).cloned().collect())
    }

    async fn queue_names(&self, tenant: &str) -> Result<Vec<String>, BrokerError> {
        let st = self.lock();
        let mut names: Vec<String> = st
            .queues
            .get(tenant)
            .map(|q| q.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    async fn queues(&self, tenant: &str) -> Result<Vec<QueueInfo>, BrokerError> {
        let now = self.inner.clock.now();
        let names = self.queue_names(tenant).await?;
        let st = self.lock();
        Ok(names
            .into_iter()
            .map(|queue| QueueInfo {
                tenant: tenant.to_owned(),
                stats: st.count(tenant, &queue, now),
                queue,
            })
            .collect())
    }

    async fn tasks_in(
        &self,
        tenant: &str,
        queue: &str,
        state: TaskState,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<usize>), BrokerError> {
        let st = self.lock();
        let key = (tenant.to_owned(), queue.to_owned());
        let mut found: Vec<Task> = st
            .by_queue
            .get(&key)
            .into_iter()
            .flat_map(|ids| ids.iter().rev())
            .filter_map(|id| st.tasks.get(id))
            .filter(|e| e.task.state == state)
            .skip(offset)
            .take(limit.saturating_add(1))
            .map(|e| e.task.clone())
            .collect();
        let next = (found.len() > limit).then_some(offset + limit);
        found.truncate(limit);
        Ok((found, next))
    }

    async fn retry(
        &self,
        tenant: &str,
        id: TaskId,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        let now = self.inner.clock.now();
        {
            let mut st = self.lock();
            let entry = st.owned("retry", tenant, id)?;
            let state = entry.task.state;
            if !matches!(state, TaskState::Dead | TaskState::Cancelled) {
                return Err(BrokerError::Conflict {
                    op: "retry",
                    reason: format!(
                        "task {id} is {state}; only dead or cancelled tasks are retried"
                    ),
                });
            }
            let queued = st.queued.get(tenant).copied().unwrap_or(0);
            if queued.saturating_add(1) > quota.max_queued {
                return Err(BrokerError::Full {
                    op: "retry",
                    reason: super::quota_full(tenant, queued, 1, quota.max_queued),
                });
            }
            st.requeue_finished(id, now);
        }
        self.inner.ready.notify_one();
        Ok(())
    }

    async fn retry_dead(
        &self,
        tenant: &str,
        queue: &str,
        quota: &TenantQuota,
    ) -> Result<usize, BrokerError> {
        let now = self.inner.clock.now();
        let n = {
            let mut st = self.lock();
            let dead: Vec<TaskId> = st
                .dead
                .iter()
                .filter(|id| {
                    st.tasks
                        .get(id)
                        .is_some_and(|e| e.task.tenant == tenant && e.task.queue_name == queue)
                })
                .copied()
                .collect();
            let queued = st.queued.get(tenant).copied().unwrap_or(0);
            let asked = dead.len() as u64;
            if queued.saturating_add(asked) > quota.max_queued {
                return Err(BrokerError::Full {
                    op: "retry_dead",
                    reason: super::quota_full(tenant, queued, asked, quota.max_queued),
                });
            }
            for id in &dead {
                st.requeue_finished(*id, now);
            }
            dead.len()
        };
        if n > 0 {
            self.inner.ready.notify_waiters();
            self.inner.ready.notify_one();
        }
        Ok(n)
    }

    async fn delete(&self, tenant: &str, id: TaskId) -> Result<(), BrokerError> {
        let mut st = self.lock();
        let state = st.owned("delete", tenant, id)?.task.state;
        if state == TaskState::Active {
            return Err(BrokerError::Conflict {
                op: "delete",
                reason: format!("task {id} is active; cancel it first"),
            });
        }
        st.unwait(id);
        st.unfinish(id);
        st.remove(&id);
        Ok(())
    }

    async fn purge(
        &self,
        tenant: &str,
        queue: &str,
        state: TaskState,
    ) -> Result<usize, BrokerError> {
        if state == TaskState::Active {
            return Err(BrokerError::Conflict {
                op: "purge",
                reason: "active tasks are not purged; cancel them".into(),
            });
        }
        let mut st = self.lock();
        let key = (tenant.to_owned(), queue.to_owned());
        let ids: Vec<TaskId> = st
            .by_queue
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|id| st.tasks.get(id).is_some_and(|e| e.task.state == state))
            .copied()
            .collect();
        for id in &ids {
            st.unwait(*id);
            st.unfinish(*id);
            st.remove(id);
        }
        Ok(ids.len())
    }

    async fn pause(&self, tenant: &str, queue: &str, paused: bool) -> Result<(), BrokerError> {
        let key = (tenant.to_owned(), queue.to_owned());
        let resumed = {
            let mut st = self.lock();
            if paused {
                if !st.queues.get(tenant).is_some_and(|q| q.contains_key(queue)) {
                    return Err(BrokerError::NotFound {
                        op: "pause",
                        what: format!("queue `{}`", Inert(queue)),
                    });
                }
                // Pauses of queues gone since go with it, as on Redis.
                let live = &st.queues;
                let keep: HashSet<QueueKey> = st
                    .paused
                    .iter()
                    .filter(|(t, q)| live.get(t).is_some_and(|names| names.contains_key(q)))
                    .cloned()
                    .collect();
                st.paused = keep;
                st.paused.insert(key);
                false
            } else {
                st.paused.remove(&key)
            }
        };
        if resumed {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }

    async fn cancel(&self, tenant: &str, id: TaskId) -> Result<Cancelled, BrokerError> {
        let now = self.inner.clock.now();
        let retention = self.inner.retention;
        let worker = {
            let mut st = self.lock();
            let entry = st.owned("cancel", tenant, id)?;
            let state = entry.task.state;
            if state.is_final() {
                return Err(BrokerError::Conflict {
                    op: "cancel",
                    reason: format!("task {id} is {state} already"),
                });
            }
            if state == TaskState::Active {
                entry.cancel_requested = true;
                let worker = entry.worker.clone();
                st.cancels.entry(worker.clone()).or_default().push(id);
                worker
            } else {
                st.unwait(id);
                if let Some(entry) = st.tasks.get_mut(&id) {
                    entry.task.state = TaskState::Cancelled;
                    entry.task.updated_at = now;
                    entry.task.error =
                        Some(cancel_error("the task was cancelled before it ran", None));
                }
                st.finish(id, now, &retention);
                if st.advance_workflows(now, self.inner.max_pending, false) {
                    drop(st);
                    self.inner.ready.notify_waiters();
                }
                return Ok(Cancelled::Now);
            }
        };
        self.inner.cancels.notify_waiters();
        Ok(Cancelled::Requested { worker })
    }

    async fn cancel_requests(
        &self,
        worker: &WorkerId,
        wait: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inner.cancels.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(ids) = self.lock().cancels.remove(worker) {
                return Ok(ids);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(give_up) => return Ok(Vec::new()),
            }
        }
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<(), BrokerError> {
        let now = self.inner.clock.now();
        let mut info = info.clone();
        info.seen_at = now;
        let gone = clock::add(now, ttl);
        let mut st = self.lock();
        st.workers.retain(|_, (_, until)| *until >= now);
        st.workers.insert(info.id.clone(), (info, gone));
        Ok(())
    }

    async fn deregister_worker(&self, worker: &WorkerId) -> Result<(), BrokerError> {
        self.lock().workers.remove(worker);
        Ok(())
    }

    async fn put_schedule(
        &self,
        schedule: &Schedule,
        quota: &TenantQuota,
        max_schedules: u32,
    ) -> Result<StoredSchedule, BrokerError> {
        schedule.check().map_err(|reason| BrokerError::Invalid {
            op: "put_schedule",
            reason,
        })?;
        let now = self.inner.clock.now();
        let next = schedule.timing.next_after(now);
        let key = (schedule.tenant.clone(), schedule.name.clone());
        let mut st = self.lock();
        let old = st.schedules.get(&key).map(|(_, _, next)| *next);
        if old.is_none() {
            let have = st
                .schedules
                .range((schedule.tenant.clone(), String::new())..)
                .take_while(|((t, _), _)| *t == schedule.tenant)
                .count();
            if have >= max_schedules as usize {
                return Err(BrokerError::Full {
                    op: "put_schedule",
                    reason: super::too_many_schedules(&schedule.tenant, have, max_schedules),
                });
            }
        }
        if let Some(Some(at)) = old {
            st.ticks.remove(&(at, key.0.clone(), key.1.clone()));
        }
        if let Some(at) = next {
            st.ticks.insert((at, key.0.clone(), key.1.clone()));
        }
        st.schedules.insert(key, (schedule.clone(), *quota, next));
        Ok(StoredSchedule {
            schedule: schedule.clone(),
            next_tick: next,
        })
    }

    async fn remove_schedule(&self, tenant: &str, name: &str) -> Result<bool, BrokerError> {
        let mut st = self.lock();
        let key = (tenant.to_owned(), name.to_owned());
        match st.schedules.remove(&key) {
            Some((_, _, next)) => {
                if let Some(at) = next {
                    st.ticks.remove(&(at, key.0, key.1));
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn schedules(&self, tenant: &str) -> Result<Vec<StoredSchedule>, BrokerError> {
        let st = self.lock();
        Ok(st
            .schedules
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .take(super::MAX_SCHEDULES_LISTED)
            .map(|(_, (schedule, _, next))| StoredSchedule {
                schedule: schedule.clone(),
                next_tick: *next,
            })
            .collect())
    }

    async fn set_job_rate(
        &self,
        tenant: &str,
        job: &str,
        rate: Option<RateLimit>,
    ) -> Result<(), BrokerError> {
        let mut st = self.lock();
        match rate {
            Some(rate) => {
                st.job_rates
                    .entry(tenant.to_owned())
                    .or_default()
                    .limits
                    .insert(job.to_owned(), rate);
            }
            None => {
                if let Some(rates) = st.job_rates.get_mut(tenant) {
                    rates.limits.remove(job);
                    rates.windows.remove(job);
                    if rates.limits.is_empty() {
                        st.job_rates.remove(tenant);
                    }
                }
            }
        }
        Ok(())
    }

    async fn job_rates(&self, tenant: &str) -> Result<Vec<(String, RateLimit)>, BrokerError> {
        let st = self.lock();
        let mut out: Vec<(String, RateLimit)> = st
            .job_rates
            .get(tenant)
            .map(|r| {
                r.limits
                    .iter()
                    .map(|(job, rate)| (job.clone(), *rate))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn submit_workflow(
        &self,
        plan: &Plan,
        quota: &TenantQuota,
        max_workflows: u32,
    ) -> Result<(), BrokerError> {
        const OP: &str = "submit_workflow";
        let now = self.inner.clock.now();
        let tenant = plan.head.tenant.clone();
        let key = (tenant.clone(), plan.head.id);
        let ready = {
            let mut st = self.lock();
            if st.workflows.contains_key(&key) {
                return Err(BrokerError::Conflict {
                    op: OP,
                    reason: format!("workflow {} exists already", plan.head.id),
                });
            }
            let have = st.workflow_ids.get(&tenant).map_or(0, BTreeSet::len);
            if have >= max_workflows as usize {
                return Err(BrokerError::Full {
                    op: OP,
                    reason: super::too_many_workflows(&tenant, have, max_workflows),
                });
            }
            st.workflow_ids
                .entry(tenant)
                .or_default()
                .insert(plan.head.id);
            st.workflows
                .insert(key.clone(), (Progress::new(plan.clone()), *quota));
            st.workflows_ready.insert(key.clone());
            st.workflows_fresh.insert(key);
            st.advance_workflows(now, self.inner.max_pending, false)
        };
        if ready {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }

    async fn workflow(
        &self,
        tenant: &str,
        id: WorkflowId,
    ) -> Result<Option<WorkflowStatus>, BrokerError> {
        let st = self.lock();
        Ok(st
            .workflows
            .get(&(tenant.to_owned(), id))
            .map(|(p, _)| p.status()))
    }

    async fn workflows(&self, tenant: &str) -> Result<Vec<WorkflowSummary>, BrokerError> {
        let st = self.lock();
        let Some(ids) = st.workflow_ids.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .rev()
            .take(super::MAX_WORKFLOWS_LISTED)
            .filter_map(|id| st.workflows.get(&(tenant.to_owned(), *id)))
            .map(|(p, _)| p.summary())
            .collect())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let now = self.inner.clock.now();
        Ok(self
            .lock()
            .workers
            .values()
            .filter(|(_, until)| *until >= now)
            .take(super::MAX_WORKERS_LISTED)
            .map(|(info, _)| info.clone())
            .collect())
    }
}

/// The error a cancelled task ends with.
fn cancel_error(message: &str, handler_index: Option<u32>) -> TaskError {
    TaskError {
        kind: "cancelled".into(),
        message: message.into(),
        retryable: false,
        handler_index,
    }
}
