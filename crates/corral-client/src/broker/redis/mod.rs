//! The Redis broker: tasks in Redis (standalone or Cluster), at-least-once,
//! never losing a task a worker had taken.
//!
//! [`RedisBroker`] implements [`Broker`] with the same semantics as the
//! embedded broker (both pass `tests/all/conformance.rs`). What lives where:
//!
//! - [`keys`]: every key, from functions. All keys of a tenant share the
//!   hash tag `{q:tenant}`, e.g. `corral:{q:acme}:emails:pending`, so a
//!   script can keep a tenant's own counts (its queue names, its queued
//!   tasks) in the same atomic step as the queue it changes.
//! - `scripts` and `lua/*.lua`: one Lua script per operation, each naming
//!   every key it touches in `KEYS[]` (all in one slot, except that on a
//!   standalone server the enqueue script also pushes the wake-up onto the
//!   `{wake}` list, saving a round trip; a single server does not mind
//!   slots, and on a Cluster the wake-up is sent apart), with a header
//!   documenting `KEYS[]`, `ARGV[]` and return codes. "Now" always comes from
//!   the broker's [`Clock`] as an argument, so scripts are deterministic and
//!   tests move time instead of sleeping.
//! - `reply`: reading what a script answered, written once for all of
//!   them.
//! - one module per operation, in the order a task meets them: `enqueue`
//!   (`enqueue.lua`), `acquire` (`acquire.lua`; `fairness` shares one
//!   acquire between tenants), `ack` (`update.lua`, `ack.lua`,
//!   `heartbeat.lua`: what a lease's holder reports), `maintain`
//!   (`maintain.lua`, and `purge.lua` for the operator) and `listing`
//!   (`read.lua`, `stats.lua`, `dead.lua`: reading tasks back); then
//!   `schedules` (`put_schedule.lua`, `fire.lua`) and `workflows`
//!   (`flow_submit.lua`, `flow_advance.lua`, and the workflow step of
//!   `ack.lua`). This module
//!   keeps what they share: the configuration, connections, keys, wake-ups,
//!   and the [`Broker`] impl that hands each call to its module.
//! - `record`: how a task is stored (JSON as enqueued, plus metadata,
//!   checkpoint and error fields) and read back.
//! - [`conn`]: connections, reconnects, error mapping; the Redis catalog
//!   (`corral-registry`) shares it.
//!
//! # Leases and fencing
//!
//! `acquire.lua` pops ids from the queue's `prio` set (tasks of priority
//! 1-9, highest first) and then its `pending` list and, in the same
//! atomic step, records the lease: state `active`, attempt + 1, the task's
//! fencing token + 1, and a score in the `active` zset equal to the lease
//! expiry. Nothing is ever popped without being leased, so a worker killed at
//! any moment loses nothing: its leases run out and [`Broker::maintain`]
//! (`maintain.lua`, run by every worker) puts the tasks back in `pending`, or
//! in the dead set on their last attempt. Heartbeats move the expiry forward.
//! `update` and `ack` carry the token they were given; a token that is no
//! longer current (the lease expired and the task was taken again) gets
//! [`BrokerError::LeaseLost`] and changes nothing. An ack that is retried
//! after its reply was lost finds its own outcome already applied under the
//! same token and answers success again, so the worker's ack retry loop is
//! safe.
//!
//! # Maintenance costs what is due
//!
//! Each tenant keeps a due index (`P:{q:T}:due`): its queue names, each
//! scored by the earliest time the queue may need maintenance (a delayed or
//! retrying task falling due, a lease running out, a finished record
//! reaching its retention time). Every script that gives a queue such work
//! brings its entry forward in the same atomic step (`ZADD LT`), so the
//! index is never late; it may be early (a lease extended by a heartbeat),
//! and then the pass finds nothing yet. [`Broker::maintain`] reads, per
//! tenant, the entries due by now (one command per tenant, sent
//! concurrently) and runs `maintain.lua` only for those queues, several per
//! call since they share the tenant's slot; the script stores each queue's
//! exact next time, or drops the entry when the queue needs nothing. So a
//! fleet with thousands of idle queues does no per-queue work, and
//! `acquire` only ever touches the queue names its worker asks for.
//!
//! # Blocking
//!
//! Idle workers block in Redis, they never sleep-poll: an `acquire` that
//! finds nothing waits with `BLPOP` on the wake lists of the queue names it
//! serves (`P:{wake}:<queue>`, one slot for all names). Every enqueue,
//! release, promotion and recovery that makes tasks ready pushes a token
//! naming the tenant's queue onto that list (trimmed to a few dozen, so it is
//! bounded); a worker woken with a full batch while more is pending passes a
//! token on. A token pushed between a worker's look and its `BLPOP` waits in
//! the list, so no wake-up is lost. The wait is also cut short when the next
//! delayed task falls due. Blocking waits use connections of their own, so
//! they never hold up other commands.
//!
//! # Fairness
//!
//! A worker asking for `max` tasks splits `max` between the tenants that have
//! its queues, starting at the next tenant in turn on every call, and gives
//! what one tenant could not use to the others; so one tenant's flood cannot
//! starve another. Within a tenant, queues are served in the order asked.
//!
//! # Tenant quotas
//!
//! [`Broker::enqueue_within`] is checked inside `enqueue.lua`, atomically
//! with the store: each tenant keeps a set of its queue names
//! (`P:{q:T}:queues`, the queues holding any of its records, bounded by
//! `max_queues`) and a count of its queued tasks (`P:{q:T}:queued`: pending,
//! scheduled and retrying, bounded by `max_queued`). Every script that moves
//! a task into or out of those states adjusts the count in the same step
//! (enqueue, acquire, a retry or release in ack, a recovery in maintain,
//! purge), so the count is exact, and a queue leaves the set when
//! maintenance finds it without records.
//!
//! # Finding a task without its queue
//!
//! [`Broker::task`] gets a tenant and an id but no queue. Rather than a
//! per-task key (growing with every task), the broker reads the tenant's
//! queue set and looks for the id in each of those queues (at most the
//! tenant's `max_queues`, read concurrently). Which tenants exist is the
//! set `P:tenants`, written before a tenant's first task is stored and only
//! read outside scripts.
//!
//! # Raw pushes
//!
//! A producer without this library may `LPUSH` task JSON (the seed's format
//! works; Corral's own fields are optional) onto a queue's pending list, e.g.
//! `LPUSH 'corral:{q:default}:default:pending' '{"task_id": ..., ...}'`; names
//! in keys are percent-encoded as [`keys::encode`] says. Workers notice the
//! entry within their `block_for` (or at once if the producer also pushes
//! the `tenant:queue` pair onto `corral:{wake}:<queue>`); workers always
//! serve the default tenant's queues, another tenant's queue must appear
//! in the tenant set and the tenant's queue set (`SADD corral:tenants acme`
//! and `SADD corral:{q:acme}:queues emails`, done by any ordinary enqueue).
//! Raw entries are not counted as queued tasks (they are not tasks until a
//! worker takes them). When a worker takes the entry it is stored under its own
//! `task_id` and parsed ([`parse_raw_task`](crate::broker::parse_raw_task)):
//! a task runs like any other; JSON that does not parse, a missing field, a
//! `task_id` that is taken or not a lowercase hyphenated UUID, or a task
//! naming another tenant or queue goes to the dead set as a
//! [`malformed_task`](crate::broker::malformed_task) with the reason, and
//! the worker carries on. An unknown job is dead-lettered by the worker, as
//! for any task.
//!
//! # Reconnecting
//!
//! A dropped connection or restarted server is survived: the connection is
//! re-established in the background with exponential backoff (logged, at
//! most once a second), the failed call returns
//! [`BrokerError::Unavailable`] and the worker retries it with its own
//! backoff. Scripts are reloaded on `NOSCRIPT`. A task taken by an `acquire`
//! whose reply was lost is not dropped: its lease runs out and it is
//! recovered.
//!
//! This module never panics on anything Redis returns and never exposes a
//! Redis type through [`Broker`].

mod ack;
mod acquire;
pub mod conn;
mod enqueue;
mod fairness;
pub mod keys;
mod listing;
mod maintain;
mod operate;
pub(crate) mod record;
mod reply;
mod schedules;
mod scripts;
mod usage;
mod workflows;

use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};

use super::{
    AcquireRequest, Broker, BrokerError, Checkpoint, Lease, Leased, Maintenance, Outcome,
    QueueStats, Retention, TaskQuery, TenantQuota, WorkerId,
};
use conn::{BlockingPool, Conn, Target, reachable, unavailable};
pub use conn::{RedisTls, redact};
use corral_core::clock::{Clock, SystemClock};
use corral_core::metering::DailyUsage;
use corral_core::task::{DEFAULT_TENANT, Task, TaskId};
use fairness::ServedCache;
use keys::QueueKeys;
use scripts::Keep;

/// The longest retention time scripts are told (µs, about 35 years): a
/// longer one is as good as forever, and every time stays a whole number a
/// Lua number (a double) holds exactly.
const TTL_CAP_US: i64 = 1 << 50;
/// Wake tokens kept per queue name.
const WAKE_KEEP: isize = 64;

/// How to reach Redis and how to keep tasks there.
///
/// ```no_run
/// use corral_client::broker::{RedisBroker, RedisConfig};
///
/// # async fn demo() -> Result<(), corral_client::broker::BrokerError> {
/// let broker = RedisBroker::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let cluster = RedisBroker::connect(RedisConfig::cluster([
///     "redis://127.0.0.1:7000",
///     "redis://127.0.0.1:7001",
/// ]))
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    nodes: Vec<String>,
    cluster: bool,
    prefix: String,
    retention: Retention,
    max_queued: usize,
    clock: Arc<dyn Clock>,
    tls: Option<RedisTls>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("max_queued", &self.max_queued)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// A standalone server at `url` (`redis://host:port/db`), or a cluster
    /// when `url` lists several comma-separated seed nodes.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let nodes: Vec<String> = url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let cluster = nodes.len() > 1;
        Self::with_nodes(nodes, cluster)
    }

    /// A Redis Cluster reached through any of `nodes`.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_nodes(nodes.into_iter().map(Into::into).collect(), true)
    }

    fn with_nodes(nodes: Vec<String>, cluster: bool) -> Self {
        Self {
            nodes,
            cluster,
            prefix: "corral".to_owned(),
            retention: Retention::default(),
            max_queued: 10_000_000,
            clock: Arc::new(SystemClock),
            tls: None,
        }
    }

    /// Treats a single URL as a cluster seed node.
    pub fn as_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster || self.nodes.len() > 1;
        self
    }

    /// The first part of every key (default `corral`); brokers with
    /// different prefixes share nothing.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long and how many finished tasks are kept.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Most tasks one queue may hold waiting, scheduled or active; enqueues
    /// past it fail with [`BrokerError::Full`]. A bound on the broker as a
    /// whole, whoever enqueues; tenants' own bounds are the
    /// [`TenantQuota`] the API passes to [`Broker::enqueue_within`].
    pub fn max_queued(mut self, max: usize) -> Self {
        self.max_queued = max;
        self
    }

    /// Where "now" comes from (tests pass a `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// Certificates for `rediss://` URLs: a CA to trust instead of the
    /// system's roots, a client certificate. Without them a `rediss://`
    /// server must present a certificate the system trusts.
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Where these settings point; the Redis catalog connects through it
    /// too, so both reach the same servers the same way.
    pub fn target(&self) -> Result<Target, BrokerError> {
        Target::with_tls(&self.nodes, self.cluster, self.tls.as_ref())
    }
}

/// When and where a task's current or last attempt started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// The fencing token of the latest lease (0 before the first).
    pub token: u64,
    /// When the latest attempt started, if one did.
    pub started_at: Option<DateTime<Utc>>,
    /// The worker that took it (empty before the first attempt).
    pub worker: String,
}

/// A [`Broker`] on Redis or Redis Cluster. Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    conn: Conn,
    blocking: BlockingPool,
    config: RedisConfig,
    served: Mutex<ServedCache>,
    registered: Mutex<HashMap<String, Instant>>,
    next_tenant: AtomicUsize,
}

impl RedisBroker {
    /// Connects (checking the server answers) and returns the broker.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        let target = config.target()?;
        let mut conn = target.connect().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable("connect", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                conn,
                blocking: BlockingPool::new(),
                config,
                served: Mutex::new(ServedCache::default()),
                registered: Mutex::new(HashMap::new()),
                next_tenant: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration the broker was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The keys of `tenant`'s queue `queue`.
    pub fn queue_keys(&self, tenant: &str, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.inner.config.prefix, tenant, queue)
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.config.clock.now()
    }

    fn keys(&self, tenant: &str, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.inner.config.prefix, tenant, queue)
    }

    /// What is kept of finished tasks, as the scripts are told.
    fn keep(&self) -> Keep {
        let r = &self.inner.config.retention;
        Keep {
            max_completed: r.max_completed,
            max_dead: r.max_dead,
            completed_ttl_us: ttl_us(r.completed_ttl),
            dead_ttl_us: ttl_us(r.dead_ttl),
        }
    }

    /// Every tenant that has had a task, the default tenant always among
    /// them (raw pushes into its queues need no registration).
    async fn tenants(&self, op: &'static str) -> Result<BTreeSet<String>, BrokerError> {
        let mut tenants: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(keys::tenants(&self.inner.config.prefix))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(op, e))?;
        reachable();
        tenants.insert(DEFAULT_TENANT.to_owned());
        Ok(tenants)
    }

    /// Every tenant that has had a task on this broker (and `default`),
    /// sorted: whose usage `corral usage` shows when no tenant is named.
    pub async fn tenants_with_tasks(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.tenants("tenants").await?.into_iter().collect())
    }

    /// `tenant`'s queue names: those holding any of its records.
    async fn tenant_queue_names(
        &self,
        op: &'static str,
        tenant: &str,
    ) -> Result<BTreeSet<String>, BrokerError> {
        let keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
        redis::cmd("SMEMBERS")
            .arg(&keys.queues)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(op, e))
    }

    /// Wakes one idle worker of `queue` for `tenant`'s queue. A failure is
    /// only logged: workers also look again when their wait ends.
    async fn wake(&self, tenant: &str, queue: &str) {
        let key = keys::wake(&self.inner.config.prefix, queue);
        let result = redis::pipe()
            .lpush(&key, keys::pair(tenant, queue))
            .ignore()
            .ltrim(&key, 0, WAKE_KEEP - 1)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, queue, "could not wake workers; they look again within block_for");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps are caches; a panic elsewhere cannot leave them in a
    // state later calls would misread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A retention time as the scripts take it: µs, at most [`TTL_CAP_US`].
fn ttl_us(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros())
        .unwrap_or(i64::MAX)
        .min(TTL_CAP_US)
}

/// Items of one `(tenant, queue)`, each with its position in the input.
type QueueGroup<T> = ((String, String), Vec<(usize, T)>);

/// Groups items by `(tenant, queue)`, keeping each item's position.
fn group_by_queue<T>(items: impl IntoIterator<Item = (String, String, T)>) -> Vec<QueueGroup<T>> {
    let mut groups: Vec<QueueGroup<T>> = Vec::new();
    let mut at: HashMap<(String, String), usize> = HashMap::new();
    for (i, (tenant, queue, item)) in items.into_iter().enumerate() {
        let key = (tenant, queue);
        let g = *at.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push((i, item));
    }
    groups
}

// Each operation lives in the module of its script (`enqueue`, `acquire`
// with `fairness`, `ack`, `maintain`, `listing`); this impl only hands the
// call over.
impl Broker for RedisBroker {
    async fn enqueue_within(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        self.store_tasks(tasks, quota).await
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Vec<Leased>, BrokerError> {
        self.lease_ready(req).await
    }

    async fn interrupt(&self, worker: &WorkerId) {
        self.interrupt_wait(worker).await
    }

    async fn update(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), BrokerError> {
        self.checkpoint(lease, checkpoint).await
    }

    async fn ack(
        &self,
        results: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        self.finish(results).await
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        self.extend(leases, lease_for).await
    }

    async fn maintain(&self) -> Result<Maintenance, BrokerError> {
        self.maintain_all().await
    }

    async fn task(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, BrokerError> {
        self.read_task(tenant, id).await
    }

    async fn stats(&self, tenant: &str, queue: &str) -> Result<QueueStats, BrokerError> {
        self.queue_stats(tenant, queue).await
    }

    async fn dead(
        &self,
        tenant: &str,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<Task>, BrokerError> {
        self.dead_tasks(tenant, queue, limit).await
    }

    async fn usage(
        &self,
        tenant: &str,
        days: RangeInclusive<NaiveDate>,
    ) -> Result<Vec<DailyUsage>, BrokerError> {
        self.daily_usage(tenant, days).await
    }

    async fn tenant_stats(&self, tenant: &str) -> Result<QueueStats, BrokerError> {
        self.tenant_counts(tenant).await
    }

    async fn list_tasks(&self, tenant: &str, query: &TaskQuery) -> Result<Vec<Task>, BrokerError> {
        self.tenant_tasks(tenant, query).await
    }

    async fn queue_depths(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, String, QueueStats)>, BrokerError> {
        self.depths(queues).await
    }

    async fn enqueue_raw(
        &self,
        tenant: &str,
        queue: &str,
        raw: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.push_raw(tenant, queue, raw).await
    }

    async fn queue_names(&self, tenant: &str) -> Result<Vec<String>, BrokerError> {
        self.names(tenant).await
    }

    async fn queues(&self, tenant: &str) -> Result<Vec<crate::broker::QueueInfo>, BrokerError> {
        self.queue_infos(tenant).await
    }

    async fn tasks_in(
        &self,
        tenant: &str,
        queue: &str,
        state: corral_core::task::TaskState,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<usize>), BrokerError> {
        self.page_of(tenant, queue, state, offset, limit).await
    }

    async fn retry(
        &self,
        tenant: &str,
        id: TaskId,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        self.retry_one(tenant, id, quota).await
    }

    async fn retry_dead(
        &self,
        tenant: &str,
        queue: &str,
        quota: &TenantQuota,
    ) -> Result<usize, BrokerError> {
        self.retry_all_dead(tenant, queue, quota).await
    }

    async fn delete(&self, tenant: &str, id: TaskId) -> Result<(), BrokerError> {
        self.delete_one(tenant, id).await
    }

    async fn purge(
        &self,
        tenant: &str,
        queue: &str,
        state: corral_core::task::TaskState,
    ) -> Result<usize, BrokerError> {
        self.purge_in_state(tenant, queue, state).await
    }

    async fn pause(&self, tenant: &str, queue: &str, paused: bool) -> Result<(), BrokerError> {
        self.set_paused(tenant, queue, paused).await
    }

    async fn cancel(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<crate::broker::Cancelled, BrokerError> {
        self.cancel_one(tenant, id).await
    }

    async fn cancel_requests(
        &self,
        worker: &WorkerId,
        wait: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        self.wait_cancels(worker, wait).await
    }

    async fn register_worker(
        &self,
        info: &crate::broker::WorkerInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.register_entry(info, ttl).await
    }

    async fn deregister_worker(&self, worker: &WorkerId) -> Result<(), BrokerError> {
        self.deregister(worker).await
    }

    async fn workers(&self) -> Result<Vec<crate::broker::WorkerInfo>, BrokerError> {
        self.live_workers().await
    }

    async fn put_schedule(
        &self,
        schedule: &crate::schedule::Schedule,
        quota: &TenantQuota,
        max_schedules: u32,
    ) -> Result<crate::broker::StoredSchedule, BrokerError> {
        self.store_schedule(schedule, quota, max_schedules).await
    }

    async fn remove_schedule(&self, tenant: &str, name: &str) -> Result<bool, BrokerError> {
        self.drop_schedule(tenant, name).await
    }

    async fn schedules(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::broker::StoredSchedule>, BrokerError> {
        self.list_schedules(tenant).await
    }

    async fn set_job_rate(
        &self,
        tenant: &str,
        job: &str,
        rate: Option<crate::broker::RateLimit>,
    ) -> Result<(), BrokerError> {
        let keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match rate {
            Some(rate) => pipe.hset(&keys.job_rates, job, rate.encode()).ignore(),
            None => pipe
                .hdel(&keys.job_rates, job)
                .ignore()
                .hdel(&keys.job_rate, job)
                .ignore(),
        };
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("set_job_rate", e))
    }

    async fn job_rates(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, crate::broker::RateLimit)>, BrokerError> {
        let keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&keys.job_rates)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("job_rates", e))?;
        let mut out: Vec<(String, crate::broker::RateLimit)> = all
            .into_iter()
            .filter_map(|(job, rate)| {
                let (tasks, per) = rate.split_once(' ')?;
                Some((
                    job,
                    crate::broker::RateLimit {
                        tasks: tasks.parse().ok()?,
                        per_ms: per.parse().ok()?,
                    },
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn submit_workflow(
        &self,
        plan: &crate::workflow::Plan,
        quota: &TenantQuota,
        max_workflows: u32,
    ) -> Result<(), BrokerError> {
        self.store_workflow(plan, quota, max_workflows).await
    }

    async fn workflow(
        &self,
        tenant: &str,
        id: crate::workflow::WorkflowId,
    ) -> Result<Option<crate::workflow::WorkflowStatus>, BrokerError> {
        self.read_workflow(tenant, id).await
    }

    async fn workflows(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::workflow::WorkflowSummary>, BrokerError> {
        self.list_workflows(tenant).await
    }
}
