//! The Lua scripts, loaded in one place, and their Rust wrappers.
//!
//! Each script lives in `lua/<name>.lua` with a header documenting its
//! `KEYS[]`, `ARGV[]` and return codes; `lua/common.lua` (metadata helpers)
//! is prepended to each. Every script names every key it touches in
//! `KEYS[]`, and all of them belong to one tenant (one hash tag), so each
//! script runs on one Redis Cluster node. The wrappers below build the
//! invocation, turn the reply into Rust types and the return codes into
//! [`BrokerError`] variants; a reply of the wrong shape is
//! [`BrokerError::Corrupt`], never a panic.
//!
//! `EVALSHA` is used, falling back to loading the script when the server
//! does not know it (first use, or a restarted server).

use std::sync::LazyLock;

use redis::{Script, Value};

use super::conn::{Conn, reachable, unavailable};
use super::keys::{QueueKeys, TenantKeys};
use super::record::RawRecord;
use crate::broker::{BrokerError, QueueStats, TenantQuota};
use corral_core::task::TaskId;

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
});

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

fn corrupt(op: &'static str, what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Corrupt {
        op,
        reason: format!("unexpected reply from Redis: {what}"),
    }
}

fn array(op: &'static str, v: Value) -> Result<Vec<Value>, BrokerError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(corrupt(op, format!("expected an array, got {other:?}"))),
    }
}

fn int(op: &'static str, v: &Value) -> Result<i64, BrokerError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| corrupt(op, "expected an integer")),
        Value::SimpleString(s) => s.parse().map_err(|_| corrupt(op, "expected an integer")),
        other => Err(corrupt(op, format!("expected an integer, got {other:?}"))),
    }
}

fn opt_bytes(op: &'static str, v: Value) -> Result<Option<Vec<u8>>, BrokerError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(corrupt(op, format!("expected a string, got {other:?}"))),
    }
}

fn bytes(op: &'static str, v: Value) -> Result<Vec<u8>, BrokerError> {
    opt_bytes(op, v)?.ok_or_else(|| corrupt(op, "expected a string, got nil"))
}

fn string(op: &'static str, v: Value) -> Result<String, BrokerError> {
    String::from_utf8(bytes(op, v)?).map_err(|_| corrupt(op, "expected UTF-8 text"))
}

fn count(op: &'static str, v: &Value) -> Result<usize, BrokerError> {
    usize::try_from(int(op, v)?).map_err(|_| corrupt(op, "expected a count"))
}

/// One task for [`enqueue`].
pub struct EnqueueItem {
    /// The task id.
    pub id: String,
    /// The task JSON.
    pub json: Vec<u8>,
    /// Its first metadata, packed (state pending or scheduled).
    pub meta: Vec<u8>,
    /// When it is due (µs), if later than now.
    pub due_us: Option<i64>,
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
        .key(&keys.meta)
        .key(&keys.tenant.queues)
        .key(&keys.tenant.queued)
        .key(&keys.tenant.due)
        .arg(now_us)
        .arg(max_queued_in_queue)
        .arg(quota.max_queued.min(LUA_MAX))
        .arg(quota.max_queues)
        .arg(&keys.name)
        .arg(items.len());
    for item in items {
        inv.arg(&item.id).arg(&item.json[..]).arg(&item.meta[..]);
        match item.due_us {
            Some(due) => inv.arg(due),
            None => inv.arg(""),
        };
    }
    if let Some(wake) = wake {
        inv.key(wake.key).arg(wake.token).arg(wake.keep);
    }
    let reply = array(OP, run(OP, conn, &inv).await?)?;
    let mut it = reply.into_iter();
    let (Some(code), Some(detail)) = (it.next(), it.next()) else {
        return Err(corrupt(OP, "short reply"));
    };
    match int(OP, &code)? {
        0 => count(OP, &detail),
        1 => {
            let id = string(OP, detail)?;
            let task_id = id.parse().map_err(|_| corrupt(OP, "bad duplicate id"))?;
            Err(BrokerError::Duplicate { op: OP, task_id })
        }
        2 => Err(BrokerError::Full {
            op: OP,
            reason: format!(
                "queue `{}` holds {} tasks; {} more would pass its bound of {max_queued_in_queue}",
                keys.name,
                count(OP, &detail)?,
                items.len()
            ),
        }),
        3 => Err(BrokerError::Full {
            op: OP,
            reason: crate::broker::quota_full(
                bounds.tenant,
                count(OP, &detail)? as u64,
                items.len() as u64,
                quota.max_queued,
            ),
        }),
        4 => Err(BrokerError::TooManyQueues {
            op: OP,
            reason: crate::broker::too_many_queues(
                bounds.tenant,
                count(OP, &detail)?,
                &keys.name,
                quota.max_queues,
            ),
        }),
        other => Err(corrupt(OP, format!("unknown code {other}"))),
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
        .arg(args.now_us)
        .arg(args.expires_us)
        .arg(args.worker)
        .arg(args.max)
        .arg(args.promote_max)
        .arg(args.default_max_attempts)
        .arg(&keys.name);
    for id in args.fresh {
        inv.arg(id);
    }
    let reply = array(OP, run(OP, conn, &inv).await?)?;
    if reply.len() < 4 {
        return Err(corrupt(OP, "short reply"));
    }
    let mut it = reply.into_iter();
    let mut next = || it.next().ok_or_else(|| corrupt(OP, "short reply"));
    let promoted = count(OP, &next()?)?;
    let pending_left = count(OP, &next()?)?;
    let next_due_us = match next()? {
        Value::Nil => None,
        v => {
            let text = string(OP, v)?;
            // Scores come back as decimal text; an integral score may carry
            // an exponent or a fraction, so parse as a float.
            let due: f64 = text.parse().map_err(|_| corrupt(OP, "bad due time"))?;
            Some(due as i64)
        }
    };
    let n = count(OP, &next()?)?;
    let mut leased = Vec::with_capacity(n);
    for _ in 0..n {
        let id = string(OP, next()?)?;
        let meta = bytes(OP, next()?)?;
        let task = opt_bytes(OP, next()?)?;
        let progress = opt_bytes(OP, next()?)?;
        let error = opt_bytes(OP, next()?)?;
        let code = int(OP, &next()?)?;
        leased.push(Acquired {
            id,
            record: RawRecord {
                task,
                meta,
                progress,
                error,
            },
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
pub async fn update(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: TaskId,
    token: u64,
    now_us: i64,
    handler: u32,
    checkpoint_json: &[u8],
) -> Result<bool, BrokerError> {
    const OP: &str = "update";
    let mut inv = SCRIPTS.update.prepare_invoke();
    inv.key(&keys.meta)
        .key(&keys.progress)
        .arg(id.to_string())
        .arg(token)
        .arg(now_us)
        .arg(handler)
        .arg(checkpoint_json);
    match int(OP, &run(OP, conn, &inv).await?)? {
        0 => Ok(true),
        1 => Ok(false),
        other => Err(corrupt(OP, format!("unknown code {other}"))),
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
/// was lost.
pub async fn ack(
    conn: &mut Conn,
    keys: &QueueKeys,
    now_us: i64,
    keep: &Keep,
    items: &[AckItem],
) -> Result<Vec<bool>, BrokerError> {
    const OP: &str = "ack";
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
        .arg(now_us)
        .arg(keep.max_completed)
        .arg(keep.max_dead)
        .arg(keep.completed_ttl_us)
        .arg(keep.dead_ttl_us)
        .arg(&keys.name)
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
    }
    let codes = array(OP, run(OP, conn, &inv).await?)?;
    if codes.len() != items.len() {
        return Err(corrupt(
            OP,
            format!("{} codes for {} outcomes", codes.len(), items.len()),
        ));
    }
    codes
        .iter()
        .map(|c| match int(OP, c)? {
            0 => Ok(true),
            1 => Ok(false),
            other => Err(corrupt(OP, format!("unknown code {other}"))),
        })
        .collect()
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
        .key(&keys.meta)
        .arg(expires_us)
        .arg(leases.len());
    for (id, token) in leases {
        inv.arg(id.to_string()).arg(*token);
    }
    array(OP, run(OP, conn, &inv).await?)?
        .into_iter()
        .map(|v| {
            string(OP, v)?
                .parse()
                .map_err(|_| corrupt(OP, "bad task id"))
        })
        .collect()
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
    inv.key(&tenant.queues).key(&tenant.queued).key(&tenant.due);
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
    let reply = array(OP, run(OP, conn, &inv).await?)?;
    if reply.len() != 1 + 4 * queues.len() {
        return Err(corrupt(OP, "reply of the wrong length"));
    }
    let more = int(OP, &reply[0])? != 0;
    let per_queue = reply[1..]
        .chunks(4)
        .map(|c| {
            Ok(Maintained {
                promoted: count(OP, &c[0])?,
                recovered: count(OP, &c[1])?,
                expired_dead: count(OP, &c[2])?,
                trimmed: count(OP, &c[3])?,
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
    let reply = match run(OP, conn, &inv).await? {
        Value::Nil => return Ok(None),
        v => array(OP, v)?,
    };
    let mut it = reply.into_iter();
    let mut next = || it.next().ok_or_else(|| corrupt(OP, "short reply"));
    Ok(Some(RawRecord {
        task: opt_bytes(OP, next()?)?,
        meta: bytes(OP, next()?)?,
        progress: opt_bytes(OP, next()?)?,
        error: opt_bytes(OP, next()?)?,
    }))
}

/// Counts of one queue's tasks by state.
pub async fn stats(conn: &mut Conn, keys: &QueueKeys) -> Result<QueueStats, BrokerError> {
    const OP: &str = "stats";
    let mut inv = SCRIPTS.stats.prepare_invoke();
    inv.key(&keys.pending)
        .key(&keys.scheduled)
        .key(&keys.active)
        .key(&keys.completed)
        .key(&keys.dead);
    let reply = array(OP, run(OP, conn, &inv).await?)?;
    let [pending, scheduled, active, completed, dead] = reply.as_slice() else {
        return Err(corrupt(OP, "reply of the wrong length"));
    };
    Ok(QueueStats {
        pending: count(OP, pending)?,
        scheduled: count(OP, scheduled)?,
        active: count(OP, active)?,
        completed: count(OP, completed)?,
        dead: count(OP, dead)?,
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
    let reply = array(OP, run(OP, conn, &inv).await?)?;
    if reply.len() % 5 != 0 {
        return Err(corrupt(OP, "reply of the wrong length"));
    }
    let mut out = Vec::with_capacity(reply.len() / 5);
    let mut it = reply.into_iter();
    while let Some(id) = it.next() {
        let mut next = || it.next().ok_or_else(|| corrupt(OP, "short reply"));
        let id = string(OP, id)?;
        let task = opt_bytes(OP, next()?)?;
        let meta = opt_bytes(OP, next()?)?;
        let progress = opt_bytes(OP, next()?)?;
        let error = opt_bytes(OP, next()?)?;
        // A dead id without metadata is a record damaged by hand; there is
        // nothing to show for it.
        if let Some(meta) = meta {
            out.push((
                id,
                RawRecord {
                    task,
                    meta,
                    progress,
                    error,
                },
            ));
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
        .arg(&keys.name);
    count(OP, &run(OP, conn, &inv).await?)
}
