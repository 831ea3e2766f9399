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
//! - `record`: how a task is stored (JSON as enqueued, plus metadata,
//!   checkpoint and error fields) and read back.
//! - `conn`: connections, reconnects, error mapping.
//!
//! # Leases and fencing
//!
//! `acquire.lua` pops ids from the queue's `pending` list and, in the same
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

pub mod conn;
pub mod keys;
mod listing;
pub(crate) mod record;
mod scripts;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use futures_util::{StreamExt, TryStreamExt};

use super::{
    AcquireRequest, Broker, BrokerError, Checkpoint, Lease, Leased, MALFORMED, Maintenance,
    Outcome, QueueStats, Retention, TaskQuery, TenantQuota, WorkerId, parse_raw_task,
};
use conn::{BlockingPool, Conn, Target, reachable, unavailable};
use corral_core::clock::{self, Clock, SystemClock};
use corral_core::task::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DEFAULT_TENANT, Task, TaskError, TaskId, TaskState,
};
use corral_core::text::Inert;
use keys::QueueKeys;
use record::{Assembled, RawRecord, assemble, from_micros, micros};
use scripts::{AckItem, AcquireArgs, EnqueueBounds, EnqueueItem, Keep, MaintainArgs};

/// Tasks stored per enqueue script call.
const ENQUEUE_CHUNK: usize = 1000;
/// Enqueue script calls in flight at once (pipelined on the connection).
const ENQUEUE_IN_FLIGHT: usize = 8;
/// Chunks of a bulk enqueue being serialized at once (on blocking threads).
const SERIALIZE_IN_FLIGHT: usize = 4;
/// Outcomes applied per ack script call.
const ACK_CHUNK: usize = 500;
/// Leases extended per heartbeat script call.
const HEARTBEAT_CHUNK: usize = 1000;
/// Tasks handled per step per queue of one maintenance script call.
const MAINTAIN_LIMIT: usize = 1000;
/// Due queues one maintenance script call handles (all of one tenant).
const QUEUES_PER_MAINTAIN: usize = 32;
/// Most maintenance calls per tenant in one pass.
const MAINTAIN_ROUNDS: usize = 100;
/// The longest retention time scripts are told (µs, about 35 years): a
/// longer one is as good as forever, and every time stays a whole number a
/// Lua number (a double) holds exactly.
const TTL_CAP_US: i64 = 1 << 50;
/// Due tasks one acquire promotes before leasing.
const PROMOTE_ON_ACQUIRE: usize = 1000;
/// Raw entries one acquire script call takes at most.
const RAW_PER_CALL: usize = 2;
/// Wake tokens kept per queue name.
const WAKE_KEEP: isize = 64;
/// How long an interrupt token waits for its worker's next wait.
const INTERRUPT_TTL: Duration = Duration::from_secs(60);
/// How long a worker trusts its cached list of tenants serving its queues.
const INDEX_TTL: Duration = Duration::from_secs(2);
/// How long an enqueue trusts that its tenant is in the tenant set.
const REGISTERED_TTL: Duration = Duration::from_secs(10);

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
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("max_queued", &self.max_queued)
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

/// Which tenants have which of the queue names a worker asks for: what
/// `acquire` serves, refreshed every [`INDEX_TTL`].
#[derive(Default)]
struct ServedCache {
    /// The queue names the entry answers for.
    asked: Vec<String>,
    /// Each tenant with those of the names it has.
    by_tenant: BTreeMap<String, BTreeSet<String>>,
    fetched: Option<Instant>,
}

/// What one take from a queue learned besides its tasks.
#[derive(Debug, Default, Clone, Copy)]
struct Hints {
    /// Some queue that filled its share still has entries.
    more: bool,
    /// The earliest due delayed task seen (µs), when nothing was taken.
    next_due_us: Option<i64>,
}

impl Hints {
    fn merge(&mut self, other: Hints) {
        self.more |= other.more;
        self.next_due_us = match (self.next_due_us, other.next_due_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl RedisBroker {
    /// Connects (checking the server answers) and returns the broker.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        let target = Target::new(&config.nodes, config.cluster)?;
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

    /// When and by whom the task's latest attempt started; `None` if the
    /// task is not known. (For latency measurements and status pages.)
    pub async fn attempt_info(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Option<AttemptInfo>, BrokerError> {
        let Some((_, _, record)) = self.find(tenant, id).await? else {
            return Ok(None);
        };
        let meta = record::Meta::parse(&record.meta).map_err(|reason| BrokerError::Corrupt {
            op: "attempt_info",
            reason,
        })?;
        Ok(Some(AttemptInfo {
            token: meta.token,
            started_at: meta.started_us.map(from_micros),
            worker: meta.worker,
        }))
    }

    /// CPU seconds (user + system) the Redis server has used since it
    /// started, from `INFO cpu`; `None` on a cluster (one figure would not
    /// cover all nodes) or when the server does not say. For benchmarks.
    pub async fn server_cpu_seconds(&self) -> Result<Option<f64>, BrokerError> {
        if matches!(self.inner.conn, Conn::Cluster(_)) {
            return Ok(None);
        }
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("server_cpu_seconds", e))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Ok(field("used_cpu_user:")
            .zip(field("used_cpu_sys:"))
            .map(|(u, s)| u + s))
    }

    /// Deletes every key of `tenant`'s queue `queue` and takes it out of
    /// the tenant's queue set and queued count, in one atomic step: all its
    /// tasks, whatever their state, are gone. Costs in proportion to the
    /// queue's size (an operator's tool, not a hot path).
    pub async fn purge_queue(&self, tenant: &str, queue: &str) -> Result<(), BrokerError> {
        scripts::purge(&mut self.conn(), &self.keys(tenant, queue)).await?;
        let mut served = lock(&self.inner.served);
        if let Some(queues) = served.by_tenant.get_mut(tenant) {
            queues.remove(queue);
        }
        Ok(())
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
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

    /// One maintenance pass over the queues of `tenant` that its due index
    /// names as due: one read of the index, then one script call per
    /// [`QUEUES_PER_MAINTAIN`] due queues (they share the tenant's slot),
    /// again while some are left. A tenant with nothing due costs the one
    /// read, however many queues it has.
    async fn maintain_tenant(
        &self,
        tenant: &str,
        args: &MaintainArgs,
    ) -> Result<Maintenance, BrokerError> {
        const OP: &str = "maintain";
        let tenant_keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
        let mut total = Maintenance::default();
        for _ in 0..MAINTAIN_ROUNDS {
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&tenant_keys.due)
                .arg("-inf")
                .arg(args.now_us)
                .arg("LIMIT")
                .arg(0)
                .arg(QUEUES_PER_MAINTAIN)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| unavailable(OP, e))?;
            if due.is_empty() {
                break;
            }
            let queues: Vec<QueueKeys> = due.iter().map(|q| self.keys(tenant, q)).collect();
            let (done, more) =
                scripts::maintain(&mut self.conn(), &tenant_keys, &queues, args).await?;
            total.queues_visited += queues.len();
            for (keys, m) in queues.iter().zip(done) {
                total.promoted += m.promoted;
                total.recovered += m.recovered;
                total.expired_dead += m.expired_dead;
                total.trimmed += m.trimmed;
                if m.promoted + m.recovered > 0 {
                    self.wake(tenant, &keys.name).await;
                }
            }
            if !more && queues.len() < QUEUES_PER_MAINTAIN {
                break;
            }
        }
        Ok(total)
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.config.clock.now()
    }

    fn keys(&self, tenant: &str, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.inner.config.prefix, tenant, queue)
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

    /// Adds a queue learned from a wake token to the cached list of what
    /// this worker serves, so new work is taken before the next refresh.
    fn learn(&self, member: &str) {
        if let Some((tenant, queue)) = keys::parse_pair(member) {
            let mut served = lock(&self.inner.served);
            if served.asked.contains(&queue) {
                served.by_tenant.entry(tenant).or_default().insert(queue);
            }
        }
    }

    /// The tenants serving any of `queues`, each with those of its queues
    /// that exist, in the order asked. The default tenant always serves
    /// every queue asked for, so raw pushes into a new queue are found.
    /// Refreshing costs one command per tenant (a membership test of the
    /// names asked), whatever the number of queues tenants have.
    async fn tenants_for(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        let cached = {
            let served = lock(&self.inner.served);
            (served.asked == queues && served.fetched.is_some_and(|at| at.elapsed() < INDEX_TTL))
                .then(|| served.by_tenant.clone())
        };
        let by_tenant = match cached {
            Some(by_tenant) => by_tenant,
            None => {
                let tenants = self.tenants("acquire").await?;
                let others: Vec<&String> =
                    tenants.iter().filter(|t| *t != DEFAULT_TENANT).collect();
                let found = join_all(others.iter().map(|tenant| async move {
                    let keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
                    let has: Vec<bool> = redis::cmd("SMISMEMBER")
                        .arg(&keys.queues)
                        .arg(queues)
                        .query_async(&mut self.conn())
                        .await
                        .map_err(|e| unavailable("acquire", e))?;
                    Ok::<_, BrokerError>(
                        queues
                            .iter()
                            .zip(has)
                            .filter(|(_, has)| *has)
                            .map(|(q, _)| q.clone())
                            .collect::<BTreeSet<String>>(),
                    )
                }))
                .await;
                let mut by_tenant = BTreeMap::new();
                by_tenant.insert(
                    DEFAULT_TENANT.to_owned(),
                    queues.iter().cloned().collect::<BTreeSet<String>>(),
                );
                for (tenant, has) in others.into_iter().zip(found) {
                    let has = has?;
                    if !has.is_empty() {
                        by_tenant.insert(tenant.clone(), has);
                    }
                }
                let mut served = lock(&self.inner.served);
                served.asked = queues.to_vec();
                served.by_tenant = by_tenant.clone();
                served.fetched = Some(Instant::now());
                by_tenant
            }
        };
        Ok(by_tenant
            .into_iter()
            .map(|(tenant, has)| {
                // In the order asked: a worker lists its queues by priority.
                let mut seen = BTreeSet::new();
                let qs: Vec<String> = queues
                    .iter()
                    .filter(|q| has.contains(*q) && seen.insert(q.as_str()))
                    .cloned()
                    .collect();
                (tenant, qs)
            })
            .collect())
    }

    /// Makes sure `tenant` is in the tenant set before its tasks are
    /// stored, so workers and maintenance find them.
    async fn register(&self, tenant: &str) -> Result<(), BrokerError> {
        let fresh = lock(&self.inner.registered)
            .get(tenant)
            .is_some_and(|at| at.elapsed() < REGISTERED_TTL);
        if fresh {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(keys::tenants(&self.inner.config.prefix))
            .arg(tenant)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("enqueue", e))?;
        lock(&self.inner.registered).insert(tenant.to_owned(), Instant::now());
        Ok(())
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

    /// Waits for a wake token on any of `req.queues`, or for an interrupt
    /// of `req.worker`, up to `wait`.
    async fn wait_for_wake(
        &self,
        req: &AcquireRequest,
        wait: Duration,
    ) -> Result<Wake, BrokerError> {
        let wait = wait.clamp(Duration::from_millis(1), conn::MAX_BLOCK);
        let prefix = &self.inner.config.prefix;
        let interrupt = keys::worker_wake(prefix, &req.worker);
        // The interrupt first: BLPOP pops the first non-empty list it names,
        // and a stream of wake-ups must not hide the interrupt.
        let mut keys = vec![interrupt.clone()];
        keys.extend(req.queues.iter().map(|q| keys::wake(prefix, q)));
        let mut conn = self.inner.blocking.take(&self.inner.target).await?;
        let reply: Result<Option<(String, String)>, _> = redis::cmd("BLPOP")
            .arg(&keys)
            .arg(format!("{:.3}", wait.as_secs_f64()))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(token) => {
                reachable();
                self.inner.blocking.give_back(conn);
                Ok(match token {
                    None => Wake::TimedOut,
                    Some((key, _)) if key == interrupt => Wake::Interrupted,
                    Some((_, member)) => Wake::Work(member),
                })
            }
            Err(e) => Err(unavailable("acquire", e)),
        }
    }

    /// Leases up to `max` tasks of one queue; buries malformed entries.
    async fn take_queue(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        req: &AcquireRequest,
    ) -> Result<(Vec<Leased>, Hints), BrokerError> {
        let keys = self.keys(tenant, queue);
        let mut leased = Vec::new();
        let mut hints = Hints::default();
        // A call takes at most RAW_PER_CALL raw entries; while raw entries
        // keep turning up, call again (a bounded number of times) so a run
        // of them does not hide the tasks behind it.
        for _ in 0..64 {
            let want = max - leased.len();
            let now = self.now();
            let fresh: Vec<String> = (0..RAW_PER_CALL)
                .map(|_| TaskId::new().to_string())
                .collect();
            let args = AcquireArgs {
                now_us: micros(now),
                expires_us: micros(clock::add(now, req.lease_for)),
                worker: &req.worker,
                max: want,
                promote_max: PROMOTE_ON_ACQUIRE,
                default_max_attempts: DEFAULT_MAX_ATTEMPTS,
                fresh: &fresh,
            };
            let reply = scripts::acquire(&mut self.conn(), &keys, &args).await?;
            if reply.promoted > 0 {
                tracing::debug!(
                    tenant,
                    queue,
                    promoted = reply.promoted,
                    "made due tasks pending"
                );
            }
            let mut raw_seen = 0;
            let mut burials: Vec<(TaskId, u64, String)> = Vec::new();
            for got in reply.leased {
                if got.code != 0 {
                    raw_seen += 1;
                }
                let Ok(id) = got.id.parse::<TaskId>() else {
                    // Only ids the script checked or we made get here; if one
                    // is still not a UUID, no ack could name it: leave it to
                    // expire and be dead-lettered by maintenance.
                    tracing::error!(queue, id = %Inert(&got.id), "leased a record whose id is not a task id");
                    continue;
                };
                match self.admit(id, tenant, queue, &got.record, got.code) {
                    Ok(Admitted::Task(task, token)) => leased.push(Leased {
                        lease: Lease {
                            task_id: id,
                            tenant: tenant.to_owned(),
                            queue: queue.to_owned(),
                            token,
                            worker: req.worker.clone(),
                        },
                        task: *task,
                    }),
                    Ok(Admitted::Bury(token, reason)) => burials.push((id, token, reason)),
                    Err(reason) => {
                        // The metadata itself is damaged: nothing to present
                        // a token from; maintenance finds the lease expired.
                        tracing::error!(queue, task = %id, reason = %Inert(&reason), "leased a damaged record");
                    }
                }
            }
            if !burials.is_empty() {
                self.bury(tenant, queue, &keys, burials).await?;
            }
            hints = Hints {
                more: reply.pending_left > 0,
                next_due_us: reply.next_due_us,
            };
            if raw_seen == 0 || leased.len() >= max || reply.pending_left == 0 {
                break;
            }
        }
        Ok((leased, hints))
    }

    /// Decides what a freshly leased record is: a task to run, or an entry
    /// to bury with a reason.
    fn admit(
        &self,
        id: TaskId,
        tenant: &str,
        queue: &str,
        record: &RawRecord,
        code: i64,
    ) -> Result<Admitted, String> {
        let token_of = |record: &RawRecord| record::Meta::parse(&record.meta).map(|m| m.token);
        if code != 0 {
            let token = token_of(record)?;
            let raw = record.task.as_deref().unwrap_or_default();
            let parsed = match parse_raw_task(raw, tenant, queue) {
                Ok(task) => task,
                Err(reason) => return Ok(Admitted::Bury(token, reason)),
            };
            match code {
                10 => {}
                12 => {
                    return Ok(Admitted::Bury(
                        token,
                        format!("task_id {} already exists", parsed.task_id),
                    ));
                }
                _ => {
                    return Ok(Admitted::Bury(
                        token,
                        format!(
                            "task_id must be written as a lowercase hyphenated UUID ({})",
                            parsed.task_id
                        ),
                    ));
                }
            }
        }
        match assemble(id, tenant, queue, record) {
            Ok(Assembled {
                malformed: Some(reason),
                meta,
                ..
            }) => Ok(Admitted::Bury(meta.token, reason)),
            Ok(Assembled { task, meta, .. }) => Ok(Admitted::Task(Box::new(task), meta.token)),
            Err(record::AssembleError::Corrupt(reason)) => match token_of(record) {
                Ok(token) => Ok(Admitted::Bury(token, format!("corrupt record: {reason}"))),
                Err(e) => Err(e),
            },
        }
    }

    /// Sends leased entries that are not tasks to the dead set.
    async fn bury(
        &self,
        tenant: &str,
        queue: &str,
        keys: &QueueKeys,
        burials: Vec<(TaskId, u64, String)>,
    ) -> Result<(), BrokerError> {
        let items: Vec<AckItem> = burials
            .iter()
            .map(|(id, token, reason)| {
                tracing::warn!(tenant, queue, task = %id, reason = %Inert(reason), "malformed entry sent to the dead set");
                let error = TaskError {
                    kind: MALFORMED.to_owned(),
                    message: format!("malformed task: {reason}"),
                    retryable: false,
                    handler_index: None,
                };
                AckItem {
                    id: *id,
                    token: *token,
                    kind: "d",
                    json: serde_json::to_vec(&error).unwrap_or_default(),
                    due_us: None,
                    handler: None,
                }
            })
            .collect();
        scripts::ack(
            &mut self.conn(),
            keys,
            micros(self.now()),
            &self.keep(),
            &items,
        )
        .await?;
        Ok(())
    }

    /// One fair round of takes across tenants.
    async fn take(&self, req: &AcquireRequest) -> Result<(Vec<Leased>, Hints), BrokerError> {
        let mut tenants = self.tenants_for(&req.queues).await?;
        // Tenants at their concurrency cap on the asking worker wait.
        tenants.retain(|(tenant, _)| req.room_for(tenant) > 0);
        let n = tenants.len();
        let mut out = Vec::new();
        let mut hints = Hints::default();
        if n == 0 {
            return Ok((out, hints));
        }
        let start = self.inner.next_tenant.load(Ordering::Relaxed) % n;
        let order: Vec<&(String, Vec<String>)> =
            tenants[start..].iter().chain(&tenants[..start]).collect();
        // How many more of each tenant's tasks this call may take.
        let mut room: Vec<usize> = order.iter().map(|(t, _)| req.room_for(t)).collect();
        // Positions in `order` of tenants that may still have tasks; a tenant
        // leaves once it gave fewer than it was offered, or used its room.
        let mut open: Vec<usize> = (0..n).collect();
        let mut remaining = req.max;
        let mut first_error = None;
        let mut last_served = None;
        for _round in 0..n + 2 {
            if remaining == 0 || open.is_empty() {
                break;
            }
            let k = open.len();
            let offers: Vec<(usize, usize)> = open
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let share = remaining / k + usize::from(i < remaining % k);
                    (t, share.min(room[t]))
                })
                .collect();
            let results = join_all(
                offers
                    .iter()
                    .filter(|(_, share)| *share > 0)
                    .map(|&(t, share)| self.take_tenant(order[t], share, req)),
            )
            .await;
            let mut results = results.into_iter();
            // Tenants offered nothing this round come first in the next one,
            // then those that used their whole share.
            let mut skipped = Vec::new();
            let mut filled = Vec::new();
            for &(t, share) in &offers {
                if share == 0 {
                    if room[t] > 0 {
                        skipped.push(t);
                    }
                    continue;
                }
                match results.next() {
                    Some(Ok((leased, h))) => {
                        room[t] -= leased.len().min(room[t]);
                        if leased.len() == share && room[t] > 0 {
                            filled.push(t);
                        }
                        if !leased.is_empty() {
                            last_served = last_served.max(Some(t));
                        }
                        remaining -= leased.len().min(remaining);
                        hints.merge(h);
                        out.extend(leased);
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    None => {}
                }
            }
            skipped.extend(filled);
            open = skipped;
        }
        // The next call starts after the last tenant served, as the embedded
        // broker's round robin does.
        let next = match last_served {
            Some(pos) => (start + pos + 1) % n,
            None => (start + 1) % n,
        };
        self.inner.next_tenant.store(next, Ordering::Relaxed);
        match first_error {
            // Tasks already leased are returned; the error shows up on the
            // next call if it persists.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok((out, hints)),
        }
    }

    async fn take_tenant(
        &self,
        (tenant, queues): &(String, Vec<String>),
        share: usize,
        req: &AcquireRequest,
    ) -> Result<(Vec<Leased>, Hints), BrokerError> {
        let mut out = Vec::new();
        let mut hints = Hints::default();
        for queue in queues {
            let want = share - out.len();
            if want == 0 {
                break;
            }
            let (leased, h) = self.take_queue(tenant, queue, want, req).await?;
            hints.merge(Hints {
                more: h.more && leased.len() == want,
                ..h
            });
            out.extend(leased);
        }
        Ok((out, hints))
    }

    /// Finds the record of `id` among `tenant`'s queues (those in its queue
    /// set, and the default queue, where raw pushes need no registration).
    async fn find(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Option<(String, QueueKeys, RawRecord)>, BrokerError> {
        let mut queues = self.tenant_queue_names("task", tenant).await?;
        queues.insert(DEFAULT_QUEUE.to_owned());
        let reads = join_all(queues.iter().map(|q| async move {
            let keys = self.keys(tenant, q);
            let record = scripts::read(&mut self.conn(), &keys, id).await?;
            Ok::<_, BrokerError>(record.map(|r| (q.clone(), keys, r)))
        }))
        .await;
        for read in reads {
            if let Some(found) = read? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// How a wait in `acquire` ended.
enum Wake {
    /// A wake token: work arrived in `tenant:queue` (the member).
    Work(String),
    /// `Broker::interrupt` asked this worker to look again.
    Interrupted,
    /// Nothing came in time.
    TimedOut,
}

enum Admitted {
    Task(Box<Task>, u64),
    Bury(u64, String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps are caches; a panic elsewhere cannot leave them in a
    // state later calls would misread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The records of new tasks as the enqueue script stores them: the task
/// JSON (state pending, or scheduled when due later) and first metadata.
fn stored_items(tasks: Vec<Task>, now: DateTime<Utc>) -> Result<Vec<EnqueueItem>, BrokerError> {
    let now_us = micros(now);
    tasks
        .into_iter()
        .map(|mut task| {
            task.updated_at = now;
            let due = task.run_at.filter(|at| *at > now);
            task.state = if due.is_some() {
                TaskState::Scheduled
            } else {
                TaskState::Pending
            };
            let meta = record::Meta {
                state: task.state,
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                token: 0,
                updated_us: now_us,
                run_at_us: None,
                handler: task.current_handler_index,
                started_us: None,
                worker: String::new(),
            };
            // Sized up front: growing the buffer was a good part of the cost.
            let mut json = Vec::with_capacity(512);
            serde_json::to_writer(&mut json, &task).map_err(|e| BrokerError::Invalid {
                op: "enqueue",
                reason: format!("task {} does not serialize: {e}", task.task_id),
            })?;
            Ok(EnqueueItem {
                id: task.task_id.to_string(),
                json,
                meta: meta.encode(),
                due_us: due.map(micros),
            })
        })
        .collect()
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

impl Broker for RedisBroker {
    async fn enqueue_within(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        for task in &tasks {
            task.validate().map_err(|e| BrokerError::Invalid {
                op: "enqueue",
                reason: e.reason,
            })?;
        }
        let now = self.now();
        let now_us = micros(now);
        let max_queued = self.inner.config.max_queued;
        let standalone = matches!(self.inner.conn, Conn::Single(_));
        let groups = group_by_queue(
            tasks
                .into_iter()
                .map(|t| (t.tenant.clone(), t.queue_name.clone(), t)),
        );
        for ((tenant, queue), tasks) in groups {
            self.register(&tenant).await?;
            let keys = self.keys(&tenant, &queue);
            let bounds = EnqueueBounds {
                tenant: &tenant,
                max_queued_in_queue: max_queued,
                quota,
            };
            let tasks: Vec<Task> = tasks.into_iter().map(|(_, t)| t).collect();
            if tasks.len() <= ENQUEUE_CHUNK {
                let items = stored_items(tasks, now)?;
                if standalone {
                    // One server holds the queue and the wake list: the
                    // script pushes the wake-up itself, in the same call.
                    let key = keys::wake(&self.inner.config.prefix, &queue);
                    let token = keys::pair(&tenant, &queue);
                    let wake = scripts::WakeUp {
                        key: &key,
                        token: &token,
                        keep: WAKE_KEEP,
                    };
                    scripts::enqueue(
                        &mut self.conn(),
                        &keys,
                        now_us,
                        &bounds,
                        &items,
                        Some(&wake),
                    )
                    .await?;
                } else if scripts::enqueue(&mut self.conn(), &keys, now_us, &bounds, &items, None)
                    .await?
                    > 0
                {
                    self.wake(&tenant, &queue).await;
                }
                continue;
            }
            // A bulk enqueue: chunks are serialized on blocking threads, in
            // parallel, while earlier chunks are being stored; the scripts
            // are sent in chunk order (so the queue keeps the tasks' order),
            // several in flight at once, pipelined on the connection. Each
            // chunk is stored whole or not at all.
            let mut chunks = Vec::with_capacity(tasks.len().div_ceil(ENQUEUE_CHUNK));
            let mut rest = tasks.into_iter();
            loop {
                let chunk: Vec<Task> = rest.by_ref().take(ENQUEUE_CHUNK).collect();
                if chunk.is_empty() {
                    break;
                }
                chunks.push(chunk);
            }
            let (keys, bounds) = (&keys, &bounds);
            let mut serialized = futures_util::stream::iter(chunks)
                .map(move |chunk| async move {
                    tokio::task::spawn_blocking(move || stored_items(chunk, now))
                        .await
                        .map_err(|e| BrokerError::Invalid {
                            op: "enqueue",
                            reason: format!("serializing tasks failed: {e}"),
                        })?
                })
                .buffered(SERIALIZE_IN_FLIGHT);
            // The first chunk alone: it loads the script if the server does
            // not know it, so that no NOSCRIPT retry can reorder the
            // pipelined chunks after it.
            let mut ready = 0;
            if let Some(items) = serialized.next().await {
                ready +=
                    scripts::enqueue(&mut self.conn(), keys, now_us, bounds, &items?, None).await?;
            }
            ready += serialized
                .map_ok(move |items| async move {
                    scripts::enqueue(&mut self.conn(), keys, now_us, bounds, &items, None).await
                })
                .try_buffered(ENQUEUE_IN_FLIGHT)
                .try_fold(0, |sum, ready| async move { Ok(sum + ready) })
                .await?;
            if ready > 0 {
                self.wake(&tenant, &queue).await;
            }
        }
        Ok(())
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Vec<Leased>, BrokerError> {
        if req.max == 0 || req.queues.is_empty() {
            return Ok(Vec::new());
        }
        let give_up = Instant::now() + req.block_for;
        let mut woken = false;
        // Wake-ups for tenants this call may not take (at their cap on this
        // worker), already passed on to other workers once.
        let mut passed_on: BTreeSet<String> = BTreeSet::new();
        loop {
            let (got, hints) = self.take(req).await?;
            if !got.is_empty() {
                if woken && hints.more {
                    // We used the wake-up and work is left: pass it on to
                    // the next idle worker.
                    let mut seen = BTreeSet::new();
                    for l in &got {
                        if seen.insert((l.lease.tenant.as_str(), l.lease.queue.as_str())) {
                            self.wake(&l.lease.tenant, &l.lease.queue).await;
                        }
                    }
                }
                return Ok(got);
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let mut wait = give_up - now;
            if let Some(due) = hints.next_due_us {
                let until = (from_micros(due) - self.now()).to_std().unwrap_or_default();
                wait = wait.min(until.max(Duration::from_millis(1)));
            }
            match self.wait_for_wake(req, wait).await? {
                Wake::Work(member) => {
                    self.learn(&member);
                    woken = true;
                    // Work of a tenant this worker has no room for: hand the
                    // wake-up on (once) to an idle worker that may, instead
                    // of leaving it to wait out its block_for. Popped again
                    // here, nobody else was waiting: it is dropped.
                    if let Some((tenant, queue)) = keys::parse_pair(&member)
                        && req.room_for(&tenant) == 0
                        && passed_on.insert(member)
                    {
                        self.wake(&tenant, &queue).await;
                    }
                }
                Wake::Interrupted => return Ok(Vec::new()),
                Wake::TimedOut => {}
            }
        }
    }

    async fn interrupt(&self, worker: &WorkerId) {
        // One token is enough (LTRIM); it expires so a worker that died
        // leaves no key behind.
        let key = keys::worker_wake(&self.inner.config.prefix, worker);
        let result = redis::pipe()
            .lpush(&key, "interrupt")
            .ignore()
            .ltrim(&key, 0, 0)
            .ignore()
            .pexpire(&key, INTERRUPT_TTL.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, worker, "could not interrupt the worker's wait; it ends within block_for");
        }
    }

    async fn update(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), BrokerError> {
        const OP: &str = "update";
        let json = serde_json::to_vec(checkpoint).map_err(|e| BrokerError::Invalid {
            op: OP,
            reason: format!("checkpoint does not serialize: {e}"),
        })?;
        let keys = self.keys(&lease.tenant, &lease.queue);
        let held = scripts::update(
            &mut self.conn(),
            &keys,
            lease.task_id,
            lease.token,
            micros(self.now()),
            checkpoint.current_handler_index,
            &json,
        )
        .await?;
        if held {
            Ok(())
        } else {
            Err(BrokerError::LeaseLost {
                op: OP,
                task_id: lease.task_id,
                token: lease.token,
            })
        }
    }

    async fn ack(
        &self,
        results: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        const OP: &str = "ack";
        let now_us = micros(self.now());
        let total = results.len();
        let mut released: BTreeSet<(String, String)> = BTreeSet::new();
        let groups = group_by_queue(results.iter().map(|(lease, outcome)| {
            let (kind, json, due_us, handler) = match outcome {
                Outcome::Completed(cp) => (
                    "c",
                    serde_json::to_vec(cp).unwrap_or_default(),
                    None,
                    Some(cp.current_handler_index),
                ),
                Outcome::Retry { error, at } => (
                    "r",
                    serde_json::to_vec(error).unwrap_or_default(),
                    Some(micros(*at)),
                    None,
                ),
                Outcome::Dead(error) => (
                    "d",
                    serde_json::to_vec(error).unwrap_or_default(),
                    None,
                    None,
                ),
                Outcome::Release => ("l", Vec::new(), None, None),
            };
            if matches!(outcome, Outcome::Release) {
                released.insert((lease.tenant.clone(), lease.queue.clone()));
            }
            let item = AckItem {
                id: lease.task_id,
                token: lease.token,
                kind,
                json,
                due_us,
                handler,
            };
            (lease.tenant.clone(), lease.queue.clone(), item)
        }));
        let keep = &self.keep();
        let batches: Vec<(QueueKeys, Vec<usize>, Vec<AckItem>)> = groups
            .into_iter()
            .map(|((tenant, queue), items)| {
                let (positions, items): (Vec<usize>, Vec<AckItem>) = items.into_iter().unzip();
                (self.keys(&tenant, &queue), positions, items)
            })
            .collect();
        let mut calls = Vec::new();
        for (keys, positions, items) in &batches {
            for (at, chunk) in positions.chunks(ACK_CHUNK).zip(items.chunks(ACK_CHUNK)) {
                calls.push(async move {
                    let held = scripts::ack(&mut self.conn(), keys, now_us, keep, chunk).await?;
                    let answers: Vec<(usize, Result<(), BrokerError>)> = at
                        .iter()
                        .zip(chunk)
                        .zip(held)
                        .map(|((&i, item), held)| {
                            let result = if held {
                                Ok(())
                            } else {
                                Err(BrokerError::LeaseLost {
                                    op: OP,
                                    task_id: item.id,
                                    token: item.token,
                                })
                            };
                            (i, result)
                        })
                        .collect();
                    Ok::<_, BrokerError>(answers)
                });
            }
        }
        let mut out: Vec<Option<Result<(), BrokerError>>> = (0..total).map(|_| None).collect();
        for answer in join_all(calls).await {
            for (i, result) in answer? {
                out[i] = Some(result);
            }
        }
        let out = out
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(BrokerError::Unavailable {
                    op: OP,
                    reason: "no answer for this outcome".into(),
                }))
            })
            .collect();
        for (tenant, queue) in released {
            self.wake(&tenant, &queue).await;
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        let expires_us = micros(clock::add(self.now(), lease_for));
        let groups = group_by_queue(
            leases
                .iter()
                .map(|l| (l.tenant.clone(), l.queue.clone(), (l.task_id, l.token))),
        );
        let calls = groups.iter().flat_map(|((tenant, queue), items)| {
            let keys = self.keys(tenant, queue);
            items.chunks(HEARTBEAT_CHUNK).map(move |chunk| {
                let keys = keys.clone();
                async move {
                    let pairs: Vec<(TaskId, u64)> = chunk.iter().map(|(_, p)| *p).collect();
                    scripts::heartbeat(&mut self.conn(), &keys, expires_us, &pairs).await
                }
            })
        });
        let mut lost = Vec::new();
        for answer in join_all(calls).await {
            lost.extend(answer?);
        }
        Ok(lost)
    }

    async fn maintain(&self) -> Result<Maintenance, BrokerError> {
        let tenants = self.tenants("maintain").await?;
        let args = MaintainArgs {
            now_us: micros(self.now()),
            keep: self.keep(),
            limit: MAINTAIN_LIMIT,
        };
        let passes = join_all(tenants.iter().map(|t| self.maintain_tenant(t, &args))).await;
        let mut report = Maintenance::default();
        let mut first_error = None;
        for pass in passes {
            match pass {
                Ok(m) => {
                    report.promoted += m.promoted;
                    report.recovered += m.recovered;
                    report.expired_dead += m.expired_dead;
                    report.trimmed += m.trimmed;
                    report.queues_visited += m.queues_visited;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn task(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, BrokerError> {
        let Some((queue, _, record)) = self.find(tenant, id).await? else {
            return Ok(None);
        };
        match assemble(id, tenant, &queue, &record) {
            Ok(a) => Ok(Some(a.task)),
            Err(record::AssembleError::Corrupt(reason)) => {
                Err(BrokerError::Corrupt { op: "task", reason })
            }
        }
    }

    async fn stats(&self, tenant: &str, queue: &str) -> Result<QueueStats, BrokerError> {
        scripts::stats(&mut self.conn(), &self.keys(tenant, queue)).await
    }

    async fn dead(
        &self,
        tenant: &str,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<Task>, BrokerError> {
        let records = scripts::dead(&mut self.conn(), &self.keys(tenant, queue), limit).await?;
        let mut out = Vec::with_capacity(records.len());
        for (id, record) in records {
            let Ok(task_id) = id.parse::<TaskId>() else {
                tracing::warn!(tenant, queue, id = %Inert(&id), "dead set holds an id that is not a task id");
                continue;
            };
            match assemble(task_id, tenant, queue, &record) {
                Ok(a) => out.push(a.task),
                Err(record::AssembleError::Corrupt(reason)) => {
                    tracing::warn!(tenant, queue, task = %task_id, reason = %Inert(&reason), "unreadable dead record")
                }
            }
        }
        Ok(out)
    }

    async fn tenant_stats(&self, tenant: &str) -> Result<QueueStats, BrokerError> {
        self.tenant_counts(tenant).await
    }

    async fn list_tasks(&self, tenant: &str, query: &TaskQuery) -> Result<Vec<Task>, BrokerError> {
        self.tenant_tasks(tenant, query).await
    }

    async fn enqueue_raw(
        &self,
        tenant: &str,
        queue: &str,
        raw: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.register(tenant).await?;
        let keys = self.keys(tenant, queue);
        // As a producer with Redis access would: the queue joins the
        // tenant's queue set (past max_queues if need be: raw pushes are
        // the operator's, not a tenant's), then the entry is pushed.
        redis::pipe()
            .sadd(&keys.tenant.queues, queue)
            .ignore()
            .lpush(&keys.pending, raw)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("enqueue_raw", e))?;
        self.wake(tenant, queue).await;
        Ok(())
    }
}
