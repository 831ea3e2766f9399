//! The Lua scripts, loaded in one place, and their Rust wrappers.
//!
//! Each script lives in `lua/<name>.lua` with a header documenting its
//! `KEYS[]`, `ARGV[]` and return codes; `lua/common.lua` (metadata helpers)
//! is prepended to each. Every script names every key it touches in
//! `KEYS[]`, and all of them belong to one tenant (one hash tag), so each
//! script runs on one Redis Cluster node. The wrappers below build the
//! invocation, turn the reply into Rust types (read with
//! [`reply`](super::reply), the one place replies are parsed) and the
//! return codes into [`BrokerError`] variants; a reply of the wrong shape is
//! [`BrokerError::Corrupt`], never a panic.
//!
//! `EVALSHA` is used, falling back to loading the script when the server
//! does not know it (first use, or a restarted server).

use std::sync::LazyLock;

use redis::{Script, Value};

use super::conn::{Conn, reachable, unavailable};
use super::keys::{QueueKeys, TenantKeys};
use super::record::RawRecord;
use super::reply::{self, Reply};
use crate::broker::{BrokerError, QueueStats, RateLimit, TenantQuota};
use corral_core::metering::MeteringTotal;
use corral_core::task::{TaskId, WorkflowStep};

macro_rules! lua {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

struct Scripts {
    enqueue: Script,
    acquire: Script,
    update: Script,
    ack: Script,
    heartbeat: Script,
    maintain: Script,
    read: Script,
    stats: Script,
    dead: Script,
    purge: Script,
    purge_state: Script,
    cancel: Script,
    delete: Script,
    requeue: Script,
    pause: Script,
    list: Script,
    put_schedule: Script,
    fire: Script,
    flow_submit: Script,
    flow_advance: Script,
    flow_fail: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: lua!("enqueue.lua"),
    acquire: lua!("acquire.lua"),
    update: lua!("update.lua"),
    ack: lua!("ack.lua"),
    heartbeat: lua!("heartbeat.lua"),
    maintain: lua!("maintain.lua"),
    read: lua!("read.lua"),
    stats: lua!("stats.lua"),
    dead: lua!("dead.lua"),
    purge: lua!("purge.lua"),
    purge_state: lua!("purge_state.lua"),
    cancel: lua!("cancel.lua"),
    delete: lua!("delete.lua"),
    requeue: lua!("requeue.lua"),
    pause: lua!("pause.lua"),
    list: lua!("list.lua"),
    put_schedule: lua!("put_schedule.lua"),
    fire: lua!("fire.lua"),
    flow_submit: lua!("flow_submit.lua"),
    flow_advance: lua!("flow_advance.lua"),
    flow_fail: lua!("flow_fail.lua"),
});

/// Fails ready step `step` (task `id`) of workflow `flow_id` with `error`
/// (JSON) before it is enqueued; false when it was not ready any more.
pub async fn flow_fail(
    conn: &mut Conn,
    tenant: &TenantKeys,
    flow_id: &str,
    step: u32,
    id: &str,
    error: &[u8],
    now_us: i64,
) -> Result<bool, BrokerError> {
    const OP: &str = "advance_workflow";
    let mut inv = SCRIPTS.flow_fail.prepare_invoke();
    inv.key(&tenant.flow_ready)
        .key(tenant.flow(&flow_id))
        .key(&tenant.flows)
        .arg(flow_id)
        .arg(step)
        .arg(id)
        .arg(error)
        .arg(now_us);
    Ok(reply::int(OP, &run(OP, conn, &inv).await?)? == 1)
}

/// How [`flow_submit`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSubmitted {
    /// Stored, first steps ready.
    Stored,
    /// Refused: the tenant has this many workflows already.
    Full(usize),
    /// A workflow of this id exists.
    Exists,
}

/// Stores a workflow's record (`pairs`: field, value) and makes `first`
/// ready, within `max_workflows`.
pub async fn flow_submit(
    conn: &mut Conn,
    tenant: &TenantKeys,
    id: &str,
    max_workflows: u32,
    now_us: i64,
    pairs: &[(String, Vec<u8>)],
    first: &[u32],
) -> Result<FlowSubmitted, BrokerError> {
    const OP: &str = "submit_workflow";
    let mut inv = SCRIPTS.flow_submit.prepare_invoke();
    inv.key(&tenant.flows)
        .key(tenant.flow(&id))
        .key(&tenant.flow_ready)
        .arg(id)
        .arg(max_workflows)
        .arg(now_us)
        .arg(pairs.len());
    for (field, value) in pairs {
        inv.arg(field).arg(&value[..]);
    }
    for i in first {
        inv.arg(*i);
    }
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    match reply.int()? {
        0 => Ok(FlowSubmitted::Stored),
        1 => Ok(FlowSubmitted::Full(reply.count()?)),
        2 => Ok(FlowSubmitted::Exists),
        other => Err(reply.corrupt(format!("unknown code {other}"))),
    }
}

/// A ready workflow step's task, as [`flow_advance`] stores it.
pub struct StepTask {
    /// The step's index.
    pub step: u32,
    /// The task's id.
    pub id: String,
    /// Its first record: metadata (state pending) and JSON, packed by
    /// [`Meta::record`](super::record::Meta::record).
    pub record: Vec<u8>,
}

/// How [`flow_advance`] went for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// Not ready any more: another caller enqueued it, or the workflow ended.
    NotOurs,
    /// Enqueued.
    Stored,
    /// Refused by the tenant's max_queued or max_queues: still ready.
    Refused,
}

/// Enqueues ready `steps` of workflow `flow_id` into `queue`, each only
/// while its ready entry is there.
pub async fn flow_advance(
    conn: &mut Conn,
    queue: &QueueKeys,
    flow_id: &str,
    quota: &TenantQuota,
    steps: &[StepTask],
) -> Result<Vec<Advanced>, BrokerError> {
    const OP: &str = "advance_workflow";
    let mut inv = SCRIPTS.flow_advance.prepare_invoke();
    inv.key(&queue.tenant.flow_ready)
        .key(queue.tenant.flow(&flow_id))
        .key(&queue.pending)
        .key(&queue.task)
        .key(&queue.tenant.queues)
        .key(&queue.tenant.queued)
        .key(&queue.tenant.cap)
        .key(&queue.meta)
        .arg(flow_id)
        .arg(quota.max_queued.min(LUA_MAX))
        .arg(quota.max_queues)
        .arg(&queue.name);
    match quota.max_concurrency {
        u32::MAX => inv.arg(""),
        cap => inv.arg(cap),
    };
    inv.arg(steps.len());
    for step in steps {
        inv.arg(step.step).arg(&step.id).arg(&step.record[..]);
    }
    let mut reply = Reply::of_len(OP, run(OP, conn, &inv).await?, steps.len())?;
    (0..steps.len())
        .map(|_| match reply.int()? {
            0 => Ok(Advanced::NotOurs),
            1 => Ok(Advanced::Stored),
            3 | 4 => Ok(Advanced::Refused),
            other => Err(reply.corrupt(format!("unknown code {other}"))),
        })
        .collect()
}

/// Stores one schedule's record and next tick within `max_schedules`;
/// `Err(have)` when a new name would pass it.
pub async fn put_schedule(
    conn: &mut Conn,
    tenant: &TenantKeys,
    name: &str,
    record: &[u8],
    next_us: Option<i64>,
    max_schedules: u32,
) -> Result<Result<(), usize>, BrokerError> {
    const OP: &str = "put_schedule";
    let mut inv = SCRIPTS.put_schedule.prepare_invoke();
    inv.key(&tenant.schedules)
        .key(&tenant.sched_next)
        .arg(name)
        .arg(record);
    match next_us {
        Some(at) => inv.arg(at),
        None => inv.arg(""),
    };
    inv.arg(max_schedules);
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    match reply.int()? {
        0 => Ok(Ok(())),
        1 => Ok(Err(reply.count()?)),
        other => Err(reply.corrupt(format!("unknown code {other}"))),
    }
}

/// A task a schedule's tick stores (see [`fire`]).
pub struct TickTask<'a> {
    /// Its id.
    pub id: String,
    /// Its first record: metadata (state pending) and JSON, packed by
    /// [`Meta::record`](super::record::Meta::record).
    pub record: Vec<u8>,
    /// The quota it is stored within.
    pub quota: &'a TenantQuota,
}

/// How [`fire`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// The tick had moved on already (another worker fired it).
    NotOurs,
    /// Moved on, and the task stored.
    Stored,
    /// Moved on, no task asked for.
    Passed,
    /// Moved on; the task refused by the tenant's max_queued.
    QueueFull,
    /// Moved on; the task refused by the tenant's max_queues.
    TooManyQueues,
}

/// Moves schedule `name`'s tick from `tick_us` to `next_us` if it is still
/// `tick_us`, storing `task` (into `queue`) in the same step.
pub async fn fire(
    conn: &mut Conn,
    queue: &QueueKeys,
    name: &str,
    tick_us: i64,
    next_us: Option<i64>,
    task: Option<&TickTask<'_>>,
) -> Result<Fired, BrokerError> {
    const OP: &str = "maintain";
    let mut inv = SCRIPTS.fire.prepare_invoke();
    inv.key(&queue.tenant.sched_next)
        .key(&queue.pending)
        .key(&queue.task)
        .key(&queue.tenant.queues)
        .key(&queue.tenant.queued)
        .key(&queue.tenant.cap)
        .key(&queue.meta)
        .arg(name)
        .arg(tick_us);
    match next_us {
        Some(at) => inv.arg(at),
        None => inv.arg(""),
    };
    match task {
        Some(t) => {
            inv.arg(&t.id)
                .arg(&t.record[..])
                .arg(t.quota.max_queued.min(LUA_MAX))
                .arg(t.quota.max_queues)
                .arg(&queue.name);
            match t.quota.max_concurrency {
                u32::MAX => inv.arg(""),
                cap => inv.arg(cap),
            };
        }
        None => {
            inv.arg("").arg("").arg("").arg("").arg(&queue.name).arg("");
        }
    }
    match reply::int(OP, &run(OP, conn, &inv).await?)? {
        0 => Ok(Fired::NotOurs),
        1 => Ok(Fired::Stored),
        2 => Ok(Fired::Passed),
        3 => Ok(Fired::QueueFull),
        4 => Ok(Fired::TooManyQueues),
        other => Err(reply::corrupt(OP, format!("unknown code {other}"))),
    }
}

async fn run(
    op: &'static str,
    conn: &mut Conn,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<Value, BrokerError> {
    match invocation.invoke_async::<Value>(conn).await {
        Ok(v) => {
            reachable();
            Ok(v)
        }
        Err(e) => Err(unavailable(op, e)),
    }
}

/// One task for [`enqueue`].
pub struct EnqueueItem {
    /// The task id.
    pub id: String,
    /// Its first record: metadata (state pending or scheduled) and JSON,
    /// packed by [`Meta::record`](super::record::Meta::record).
    pub record: Vec<u8>,
    /// When it is due (µs), if later than now.
    pub due_us: Option<i64>,
    /// Its unique key and until when the key holds (µs).
    pub unique: Option<(String, i64)>,
}

/// A wake-up the enqueue script pushes itself once it stored ready tasks:
/// the wake list's key, the token, and how many tokens the list keeps.
pub struct WakeUp<'a> {
    pub key: &'a str,
    pub token: &'a str,
    pub keep: isize,
}

/// The largest integer a Lua number (a double) holds exactly: bounds past
/// it are sent as it, which no count reaches.
const LUA_MAX: u64 = 1 << 53;

/// What [`enqueue`] checks the tasks against.
pub struct EnqueueBounds<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Most tasks the queue may hold pending, scheduled or active.
    pub max_queued_in_queue: usize,
    /// The tenant's quota.
    pub quota: &'a TenantQuota,
}

/// Stores `items` in one queue, all or none, within `bounds`, and pushes
/// `wake` when given and a task went straight to pending. Returns how many
/// did.
pub async fn enqueue(
    conn: &mut Conn,
    keys: &QueueKeys,
    now_us: i64,
    bounds: &EnqueueBounds<'_>,
    items: &[EnqueueItem],
    wake: Option<&WakeUp<'_>>,
) -> Result<usize, BrokerError> {
    const OP: &str = "enqueue";
    let max_queued_in_queue = bounds.max_queued_in_queue;
    let quota = bounds.quota;
    let mut inv = SCRIPTS.enqueue.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.scheduled)
        .key(&keys.active)
        .key(&keys.task)
        .key(&keys.tenant.queues)
        .key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.cap)
        .key(&keys.tenant.unique)
        .key(&keys.tenant.unique_ttl)
        .key(&keys.tenant.rate_limit)
        .key(&keys.meta)
        .arg(now_us)
        .arg(max_queued_in_queue)
        .arg(quota.max_queued.min(LUA_MAX))
        .arg(quota.max_queues)
        .arg(&keys.name);
    match quota.max_concurrency {
        u32::MAX => inv.arg(""),
        cap => inv.arg(cap),
    };
    // A limited enqueue (one with a cap) says the tenant's rate limit,
    // none included; an unlimited one leaves it alone.
    match (quota.max_concurrency, quota.rate) {
        (u32::MAX, _) => inv.arg(""),
        (_, Some(rate)) => inv.arg(rate.encode()),
        (_, None) => inv.arg("0"),
    };
    inv.arg(quota.max_unique_keys.min(LUA_MAX));
    inv.arg(items.len());
    for item in items {
        inv.arg(&item.id).arg(&item.record[..]);
        match item.due_us {
            Some(due) => inv.arg(due),
            None => inv.arg(""),
        };
        match &item.unique {
            Some((key, until)) => inv.arg(key).arg(until),
            None => inv.arg("").arg(""),
        };
    }
    if let Some(wake) = wake {
        inv.key(wake.key).arg(wake.token).arg(wake.keep);
    }
    // {code, detail}: what the detail is depends on the code.
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    match reply.int()? {
        0 => reply.count(),
        1 => Err(BrokerError::Duplicate {
            op: OP,
            task_id: reply.task_id()?,
        }),
        2 => Err(BrokerError::Full {
            op: OP,
            reason: format!(
                "queue `{}` holds {} tasks; {} more would pass its bound of {max_queued_in_queue}",
                keys.name,
                reply.count()?,
                items.len()
            ),
        }),
        3 => Err(BrokerError::Full {
            op: OP,
            reason: crate::broker::quota_full(
                bounds.tenant,
                reply.count()? as u64,
                items.len() as u64,
                quota.max_queued,
            ),
        }),
        4 => Err(BrokerError::TooManyQueues {
            op: OP,
            reason: crate::broker::too_many_queues(
                bounds.tenant,
                reply.count()?,
                &keys.name,
                quota.max_queues,
            ),
        }),
        5 => Err(BrokerError::Deduplicated {
            op: OP,
            existing: reply.task_id()?,
        }),
        6 => Err(BrokerError::Invalid {
            op: OP,
            reason: "two tasks of one enqueue share a unique key".into(),
        }),
        7 => Err(BrokerError::Full {
            op: OP,
            reason: crate::broker::too_many_unique_keys(
                bounds.tenant,
                reply.count()?,
                quota.max_unique_keys,
            ),
        }),
        other => Err(reply.corrupt(format!("unknown code {other}"))),
    }
}

/// What [`acquire`] sends.
pub struct AcquireArgs<'a> {
    /// Now (µs).
    pub now_us: i64,
    /// Lease expiry (µs).
    pub expires_us: i64,
    /// The worker taking the leases.
    pub worker: &'a str,
    /// Most tasks to lease.
    pub max: usize,
    /// Most due tasks to promote first.
    pub promote_max: usize,
    /// max_attempts for raw entries that name none.
    pub default_max_attempts: u32,
    /// The tenant's fleet-wide concurrency cap as the worker knows it.
    pub cap: Option<u32>,
    /// The tenant's rate limit as the worker knows it (`Some(None)`: it
    /// has none; `None`: not known).
    pub rate: Option<Option<RateLimit>>,
    /// Fresh ids for raw entries.
    pub fresh: &'a [String],
}

/// A record leased by [`acquire`].
pub struct Acquired {
    /// The id the record is stored under.
    pub id: String,
    /// The record, metadata already showing the new lease.
    pub record: RawRecord,
    /// 0 a stored task; 10, 11, 12 a raw entry (see `lua/acquire.lua`).
    pub code: i64,
}

/// What [`acquire`] answers.
pub struct AcquireReply {
    /// Due tasks made pending first.
    pub promoted: usize,
    /// Entries still in pending afterwards.
    pub pending_left: usize,
    /// When nothing was leased: the earliest due time in scheduled (µs).
    pub next_due_us: Option<i64>,
    /// The leased records.
    pub leased: Vec<Acquired>,
}

/// Leases up to `args.max` ready tasks of one queue.
pub async fn acquire(
    conn: &mut Conn,
    keys: &QueueKeys,
    args: &AcquireArgs<'_>,
) -> Result<AcquireReply, BrokerError> {
    const OP: &str = "acquire";
    let mut inv = SCRIPTS.acquire.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.active)
        .key(&keys.scheduled)
        .key(&keys.task)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.error)
        .key(&keys.tenant.queues)
        .key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.paused)
        .key(&keys.retrying)
        .key(&keys.tenant.running)
        .key(&keys.tenant.cap)
        .key(&keys.tenant.capped)
        .key(&keys.tenant.rate_limit)
        .key(&keys.tenant.rate)
        .key(&keys.tenant.job_rates)
        .key(&keys.tenant.job_rate)
        .arg(args.now_us)
        .arg(args.expires_us)
        .arg(args.worker)
        .arg(args.max)
        .arg(args.promote_max)
        .arg(args.default_max_attempts)
        .arg(&keys.name);
    match args.cap {
        Some(cap) => inv.arg(cap),
        None => inv.arg(""),
    };
    match args.rate {
        Some(Some(rate)) => inv.arg(rate.encode()),
        Some(None) => inv.arg("0"),
        None => inv.arg(""),
    };
    for id in args.fresh {
        inv.arg(id);
    }
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    let promoted = reply.count()?;
    let pending_left = reply.count()?;
    let next_due_us = reply.opt_score()?;
    let n = reply.count()?;
    // Five values per task: never reserve more than the reply holds.
    let mut leased = Vec::with_capacity(n.min(reply.remaining() / 5));
    for _ in 0..n {
        let id = reply.string()?;
        let task = reply.bytes()?;
        let progress = reply.opt_bytes()?;
        let error = reply.opt_bytes()?;
        let code = reply.int()?;
        leased.push(Acquired {
            id,
            record: RawRecord::from_fields(task, progress, error),
            code,
        });
    }
    Ok(AcquireReply {
        promoted,
        pending_left,
        next_due_us,
        leased,
    })
}

/// Saves a checkpoint; `Ok(false)` when the lease is no longer held.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    conn: &mut Conn,
    keys: &QueueKeys,
    usage: &Billing,
    id: TaskId,
    token: u64,
    now_us: i64,
    handler: u32,
    checkpoint_json: &[u8],
    calls: &MeteringTotal,
) -> Result<bool, BrokerError> {
    const OP: &str = "update";
    let mut inv = SCRIPTS.update.prepare_invoke();
    inv.key(&keys.task)
        .key(&keys.progress)
        .key(&usage.key)
        .key(&keys.meta)
        .arg(id.to_string())
        .arg(token)
        .arg(now_us)
        .arg(handler)
        .arg(checkpoint_json)
        .arg(usage.ttl_secs);
    calls_args(&mut inv, Some(calls));
    reply::held(OP, &run(OP, conn, &inv).await?)
}

/// Where a script adds to a tenant's usage: the day's key, and how long
/// it is kept.
pub struct Billing {
    /// The tenant's usage key of the day ([`TenantKeys::usage`]).
    pub key: String,
    /// Seconds the key lives after its first write.
    pub ttl_secs: u64,
}

/// The five metering values the scripts read with `add_calls`; empty
/// when there is nothing to bill.
fn calls_args(inv: &mut redis::ScriptInvocation<'_>, calls: Option<&MeteringTotal>) {
    match calls.filter(|c| !c.is_empty()) {
        Some(c) => {
            inv.arg(c.calls)
                .arg(c.fuel)
                .arg(c.wall_us)
                .arg(c.instantiate_us)
                .arg(c.peak_memory_bytes);
        }
        None => {
            inv.arg("").arg("").arg("").arg("").arg("");
        }
    }
}

/// How one leased task finishes, as [`ack`] sends it.
pub struct AckItem {
    /// The task id.
    pub id: TaskId,
    /// The token presented.
    pub token: u64,
    /// `c` completed, `r` retry, `d` dead, `l` release.
    pub kind: &'static str,
    /// Checkpoint JSON (`c`) or error JSON (`r`, `d`); empty for `l`.
    pub json: Vec<u8>,
    /// When a retry is due (µs).
    pub due_us: Option<i64>,
    /// The final handler index (`c`).
    pub handler: Option<u32>,
    /// The calls the final checkpoint adds (`c`), billed with it.
    pub calls: Option<MeteringTotal>,
    /// The workflow step the task is, with its output (`c`).
    pub flow: Option<(WorkflowStep, Vec<u8>)>,
}

/// What [`ack`] answers: per outcome whether the lease held, the queues to
/// wake, and whether a workflow step became ready.
pub struct Acked {
    /// Per outcome, whether its lease held.
    pub held: Vec<bool>,
    /// The tenant's queues a freed slot wakes.
    pub wake: Vec<String>,
    /// Whether a workflow step became ready.
    pub flow_ready: bool,
}

/// How long finished tasks are kept, as the scripts are told.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Most completed tasks kept per queue.
    pub max_completed: usize,
    /// Most dead tasks kept per queue.
    pub max_dead: usize,
    /// How long a completed task is kept (µs).
    pub completed_ttl_us: i64,
    /// How long a dead task is kept (µs).
    pub dead_ttl_us: i64,
}

/// Finishes tasks of one queue; one flag per item, `false` where the lease
/// was lost, and the tenant's queues a slot under its cap was freed for
/// (their workers are to be woken).
pub async fn ack(
    conn: &mut Conn,
    keys: &QueueKeys,
    now_us: i64,
    keep: &Keep,
    usage: &Billing,
    items: &[AckItem],
) -> Result<Acked, BrokerError> {
    const OP: &str = "ack";
    // The records of the workflows the tasks are steps of: KEYS[20...].
    let mut flows: Vec<String> = Vec::new();
    for item in items {
        if let Some((step, _)) = &item.flow {
            let id = step.id.hyphenated().to_string();
            if !flows.contains(&id) {
                flows.push(id);
            }
        }
    }
    let mut inv = SCRIPTS.ack.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.active)
        .key(&keys.scheduled)
        .key(&keys.completed)
        .key(&keys.dead)
        .key(&keys.task)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.error)
        .key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.queues)
        .key(&usage.key)
        .key(&keys.cancelled)
        .key(&keys.retrying)
        .key(&keys.tenant.running)
        .key(&keys.tenant.capped)
        .key(&keys.tenant.flow_ready)
        .key(&keys.tenant.flows);
    for id in &flows {
        inv.key(keys.tenant.flow(id));
    }
    inv.arg(now_us)
        .arg(keep.max_completed)
        .arg(keep.max_dead)
        .arg(keep.completed_ttl_us)
        .arg(keep.dead_ttl_us)
        .arg(&keys.name)
        .arg(usage.ttl_secs)
        .arg(items.len());
    for item in items {
        inv.arg(item.id.to_string())
            .arg(item.token)
            .arg(item.kind)
            .arg(&item.json[..]);
        match item.due_us {
            Some(due) => inv.arg(due),
            None => inv.arg(""),
        };
        match item.handler {
            Some(h) => inv.arg(h),
            None => inv.arg(""),
        };
        calls_args(&mut inv, item.calls.as_ref());
    }
    let steps = items.iter().filter(|i| i.flow.is_some()).count();
    inv.arg(steps);
    for (at, item) in items.iter().enumerate() {
        if let Some((step, output)) = &item.flow {
            let id = step.id.hyphenated().to_string();
            let key = flows.iter().position(|f| *f == id).unwrap_or_default() + 20;
            inv.arg(at + 1)
                .arg(step.step)
                .arg(key)
                .arg(id)
                .arg(&output[..]);
        }
    }
    // One code per outcome, then the queue names to wake.
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    if reply.remaining() < items.len() {
        return Err(reply.corrupt(format!(
            "{} codes for {} outcomes",
            reply.remaining(),
            items.len()
        )));
    }
    let held = items
        .iter()
        .map(|_| reply.held())
        .collect::<Result<Vec<bool>, _>>()?;
    let mut wake = Vec::with_capacity(reply.remaining());
    let mut flow_ready = false;
    while reply.remaining() > 0 {
        let name = reply.string()?;
        if name == "/" {
            flow_ready = true;
        } else {
            wake.push(name);
        }
    }
    Ok(Acked {
        held,
        wake,
        flow_ready,
    })
}

/// Extends leases of one queue's tasks; returns the ids no longer held.
pub async fn heartbeat(
    conn: &mut Conn,
    keys: &QueueKeys,
    expires_us: i64,
    leases: &[(TaskId, u64)],
) -> Result<Vec<TaskId>, BrokerError> {
    const OP: &str = "heartbeat";
    let mut inv = SCRIPTS.heartbeat.prepare_invoke();
    inv.key(&keys.active)
        .key(&keys.task)
        .key(&keys.tenant.running)
        .key(&keys.meta)
        .arg(expires_us)
        .arg(leases.len());
    for (id, token) in leases {
        inv.arg(id.to_string()).arg(*token);
    }
    // The ids whose lease was lost.
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    (0..reply.remaining()).map(|_| reply.task_id()).collect()
}

/// What [`maintain`] sends.
pub struct MaintainArgs {
    /// Now (µs).
    pub now_us: i64,
    /// What is kept, and how long.
    pub keep: Keep,
    /// Most tasks per step per queue per call.
    pub limit: usize,
}

/// What [`maintain`] did to one queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maintained {
    /// Delayed or retrying tasks made pending.
    pub promoted: usize,
    /// Tasks whose lease expired, returned to pending.
    pub recovered: usize,
    /// Tasks whose lease expired on their last attempt, now dead.
    pub expired_dead: usize,
    /// Finished records dropped.
    pub trimmed: usize,
}

/// One bounded maintenance pass over `queues`, all of the tenant whose
/// keys are `tenant`; one answer per queue, and a flag saying more is left.
pub async fn maintain(
    conn: &mut Conn,
    tenant: &TenantKeys,
    queues: &[QueueKeys],
    args: &MaintainArgs,
) -> Result<(Vec<Maintained>, bool), BrokerError> {
    const OP: &str = "maintain";
    let keep = &args.keep;
    let mut inv = SCRIPTS.maintain.prepare_invoke();
    inv.key(&tenant.queues)
        .key(&tenant.queued)
        .key(&tenant.due)
        .key(&tenant.running);
    for keys in queues {
        for key in keys.all() {
            inv.key(key);
        }
    }
    inv.arg(args.now_us)
        .arg(args.now_us - keep.completed_ttl_us)
        .arg(args.now_us - keep.dead_ttl_us)
        .arg(keep.max_completed)
        .arg(keep.max_dead)
        .arg(args.limit)
        .arg(keep.completed_ttl_us)
        .arg(keep.dead_ttl_us);
    for keys in queues {
        inv.arg(&keys.name);
    }
    // {more, then four counts per queue}.
    let mut reply = Reply::of_len(OP, run(OP, conn, &inv).await?, 1 + 4 * queues.len())?;
    let more = reply.flag()?;
    let per_queue = queues
        .iter()
        .map(|_| {
            Ok(Maintained {
                promoted: reply.count()?,
                recovered: reply.count()?,
                expired_dead: reply.count()?,
                trimmed: reply.count()?,
            })
        })
        .collect::<Result<Vec<_>, BrokerError>>()?;
    Ok((per_queue, more))
}

/// One task's record, if this queue holds it.
pub async fn read(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: TaskId,
) -> Result<Option<RawRecord>, BrokerError> {
    const OP: &str = "task";
    let mut inv = SCRIPTS.read.prepare_invoke();
    inv.key(&keys.task)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.error)
        .arg(id.to_string());
    let Some(mut reply) = Reply::optional(OP, run(OP, conn, &inv).await?)? else {
        return Ok(None);
    };
    let task = reply.bytes()?;
    Ok(Some(RawRecord::from_fields(
        task,
        reply.opt_bytes()?,
        reply.opt_bytes()?,
    )))
}

/// Counts of one queue's tasks by state, as of `now_us`.
pub async fn stats(
    conn: &mut Conn,
    keys: &QueueKeys,
    now_us: i64,
) -> Result<QueueStats, BrokerError> {
    const OP: &str = "stats";
    let mut inv = SCRIPTS.stats.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.scheduled)
        .key(&keys.active)
        .key(&keys.completed)
        .key(&keys.dead)
        .key(&keys.cancelled)
        .key(&keys.retrying)
        .key(&keys.tenant.paused)
        .arg(now_us - 60_000_000)
        .arg(&keys.name);
    let mut reply = Reply::of_len(OP, run(OP, conn, &inv).await?, 10)?;
    Ok(QueueStats {
        pending: reply.count()?,
        scheduled: reply.count()?,
        active: reply.count()?,
        completed: reply.count()?,
        dead: reply.count()?,
        cancelled: reply.count()?,
        retrying: reply.count()?,
        paused: reply.flag()?,
        completed_last_minute: reply.count()?,
        failed_last_minute: reply.count()?,
    })
}

/// The newest dead records of one queue, newest first.
pub async fn dead(
    conn: &mut Conn,
    keys: &QueueKeys,
    limit: usize,
) -> Result<Vec<(String, RawRecord)>, BrokerError> {
    const OP: &str = "dead";
    let mut inv = SCRIPTS.dead.prepare_invoke();
    inv.key(&keys.dead)
        .key(&keys.task)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.error)
        .arg(limit);
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    records(&mut reply)
}

/// Task records in a reply, four values each: id, record (metadata and
/// task JSON) or false, checkpoint JSON or false, error JSON or false. An id
/// without a record was deleted since it was listed, or damaged by hand;
/// there is nothing to show for it, so it is left out.
fn records(reply: &mut Reply) -> Result<Vec<(String, RawRecord)>, BrokerError> {
    if !reply.remaining().is_multiple_of(4) {
        return Err(reply.corrupt("reply of the wrong length"));
    }
    let mut out = Vec::with_capacity(reply.remaining() / 4);
    while reply.remaining() > 0 {
        let id = reply.string()?;
        let task = reply.opt_bytes()?;
        let progress = reply.opt_bytes()?;
        let error = reply.opt_bytes()?;
        if let Some(task) = task {
            out.push((id, RawRecord::from_fields(task, progress, error)));
        }
    }
    Ok(out)
}

/// Deletes one queue whole and takes it out of its tenant's accounts;
/// returns how many queued tasks left the tenant's count.
pub async fn purge(conn: &mut Conn, keys: &QueueKeys) -> Result<usize, BrokerError> {
    const OP: &str = "purge_queue";
    let mut inv = SCRIPTS.purge.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.key(&keys.tenant.queues)
        .key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.paused)
        .arg(&keys.name);
    reply::count(OP, &run(OP, conn, &inv).await?)
}

/// The state byte the scripts use for `state`.
pub fn state_byte(state: corral_core::task::TaskState) -> &'static str {
    use corral_core::task::TaskState;
    match state {
        TaskState::Pending => "p",
        TaskState::Scheduled => "s",
        TaskState::Active => "a",
        TaskState::Retrying => "r",
        TaskState::Completed => "c",
        TaskState::Dead => "d",
        TaskState::Cancelled => "x",
    }
}

/// Deletes one batch of a queue's tasks in `state` (not active); returns
/// how many went and where to go on (`None`: the state is empty).
pub async fn purge_state(
    conn: &mut Conn,
    keys: &QueueKeys,
    state: corral_core::task::TaskState,
    batch: usize,
    offset: usize,
    keep: &Keep,
) -> Result<(usize, Option<usize>), BrokerError> {
    const OP: &str = "purge";
    let mut inv = SCRIPTS.purge_state.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.queues)
        .arg(state_byte(state))
        .arg(batch)
        .arg(offset)
        .arg(&keys.name)
        .arg(keep.completed_ttl_us)
        .arg(keep.dead_ttl_us);
    let mut reply = Reply::of_len(OP, run(OP, conn, &inv).await?, 2)?;
    let deleted = reply.count()?;
    let next = reply.int()?;
    Ok((deleted, usize::try_from(next).ok()))
}

/// What [`cancel`] found.
pub enum CancelReply {
    /// Cancelled at once.
    Now,
    /// No such task in this queue.
    Missing,
    /// Final already, in this state byte.
    Final(String),
    /// Running under this worker, now marked.
    Running(String),
}

/// Cancels one task of a queue (see `lua/cancel.lua`).
pub async fn cancel(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: TaskId,
    now_us: i64,
    keep: &Keep,
) -> Result<CancelReply, BrokerError> {
    const OP: &str = "cancel";
    let mut inv = SCRIPTS.cancel.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.scheduled)
        .key(&keys.cancelled)
        .key(&keys.meta)
        .key(&keys.error)
        .key(&keys.tenant.queued)
        .key(&keys.retrying)
        .key(&keys.tenant.due)
        .key(&keys.task)
        .arg(id.to_string())
        .arg(now_us)
        .arg(keep.dead_ttl_us)
        .arg(&keys.name);
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    Ok(match reply.int()? {
        0 => CancelReply::Now,
        1 => CancelReply::Missing,
        2 => CancelReply::Final(reply.string()?),
        3 => CancelReply::Running(reply.string()?),
        other => return Err(reply.corrupt(format!("unknown code {other}"))),
    })
}

/// Deletes one task of a queue: `Ok(true)` deleted, `Ok(false)` not in
/// this queue, [`BrokerError::Conflict`] when active.
pub async fn delete(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: TaskId,
    keep: &Keep,
) -> Result<bool, BrokerError> {
    const OP: &str = "delete";
    let mut inv = SCRIPTS.delete.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .key(&keys.tenant.queues)
        .arg(id.to_string())
        .arg(&keys.name)
        .arg(keep.completed_ttl_us)
        .arg(keep.dead_ttl_us);
    match reply::int(OP, &run(OP, conn, &inv).await?)? {
        0 => Ok(true),
        1 => Ok(false),
        2 => Err(BrokerError::Conflict {
            op: OP,
            reason: format!("task {id} is active; cancel it first"),
        }),
        other => Err(reply::corrupt(OP, format!("unknown code {other}"))),
    }
}

/// One dead or cancelled task to run again: its id, its update time as
/// read (µs) and its new JSON.
pub struct Requeue {
    pub id: TaskId,
    pub read_updated_us: i64,
    pub json: Vec<u8>,
}

/// Runs `items` of one queue again, all or none within `max_queued`;
/// `Ok(Ok(applied))`, or `Ok(Err(queued))` when the quota refused.
pub async fn requeue(
    conn: &mut Conn,
    keys: &QueueKeys,
    now_us: i64,
    max_queued: u64,
    items: &[Requeue],
) -> Result<Result<usize, u64>, BrokerError> {
    const OP: &str = "retry";
    let mut inv = SCRIPTS.requeue.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.dead)
        .key(&keys.cancelled)
        .key(&keys.task)
        .key(&keys.meta)
        .key(&keys.error)
        .key(&keys.tenant.queued)
        .arg(now_us)
        .arg(max_queued.min(LUA_MAX))
        .arg(items.len());
    for item in items {
        inv.arg(item.id.to_string())
            .arg(item.read_updated_us)
            .arg(&item.json[..]);
    }
    let mut reply = Reply::of_len(OP, run(OP, conn, &inv).await?, 2)?;
    let code = reply.int()?;
    let n = reply.count()?;
    match code {
        0 => Ok(Ok(n)),
        1 => Ok(Err(n as u64)),
        other => Err(reply.corrupt(format!("unknown code {other}"))),
    }
}

/// Pauses or resumes one queue; `Ok(false)` when pausing a queue the
/// tenant does not have.
pub async fn pause(conn: &mut Conn, keys: &QueueKeys, paused: bool) -> Result<bool, BrokerError> {
    const OP: &str = "pause";
    let mut inv = SCRIPTS.pause.prepare_invoke();
    inv.key(&keys.tenant.queues)
        .key(&keys.tenant.paused)
        .arg(&keys.name)
        .arg(if paused { "1" } else { "0" });
    Ok(reply::int(OP, &run(OP, conn, &inv).await?)? == 0)
}

/// One step of listing a queue's tasks in `state`: records, and the offset
/// to go on from.
pub async fn list(
    conn: &mut Conn,
    keys: &QueueKeys,
    state: corral_core::task::TaskState,
    offset: usize,
    limit: usize,
    scan: usize,
) -> Result<(Vec<(String, RawRecord)>, Option<usize>), BrokerError> {
    use corral_core::task::TaskState;
    const OP: &str = "list_page";
    let line = match state {
        TaskState::Pending => &keys.pending,
        TaskState::Scheduled | TaskState::Retrying => &keys.scheduled,
        TaskState::Active => &keys.active,
        TaskState::Completed => &keys.completed,
        TaskState::Dead => &keys.dead,
        TaskState::Cancelled => &keys.cancelled,
    };
    let mut inv = SCRIPTS.list.prepare_invoke();
    inv.key(line)
        .key(&keys.task)
        .key(&keys.meta)
        .key(&keys.progress)
        .key(&keys.error)
        .arg(state_byte(state))
        .arg(offset)
        .arg(limit)
        .arg(scan);
    let mut reply = Reply::new(OP, run(OP, conn, &inv).await?)?;
    let next = usize::try_from(reply.int()?).ok();
    Ok((records(&mut reply)?, next))
}
