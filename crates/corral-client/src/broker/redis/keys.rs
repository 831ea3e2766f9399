//! Every Redis key the Redis broker uses, built in one place.
//!
//! Layout, with `P` the configured prefix (`corral` by default), `T` a
//! tenant's name and `Q` a queue's name, both percent-encoded (see
//! [`encode`]), so neither can hold `:`, `{` or `}`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{q:T}:Q:pending` | list | ids waiting for a worker (`LPUSH` at the back, taken from the right); raw task JSON pushed by hand is accepted here too |
//! | `P:{q:T}:Q:prio` | zset | pending ids of priority 1-9, scored so the highest priority comes first and each priority is first in, first out (see `pend` in `lua/common.lua`); taken before `pending`. Scripts name it after `pending` rather than take it as a key of its own: same queue, same slot |
//! | `P:{q:T}:Q:active` | zset | leased ids, scored by lease expiry (µs since the epoch) |
//! | `P:{q:T}:Q:scheduled` | zset | delayed and retrying ids, scored by due time (µs) |
//! | `P:{q:T}:Q:completed` | zset | completed ids, scored by finish time (µs) |
//! | `P:{q:T}:Q:dead` | zset | dead ids, scored by the time they died (µs) |
//! | `P:{q:T}:Q:cancelled` | zset | cancelled ids, scored by the time they were cancelled (µs) |
//! | `P:{q:T}:Q:retrying` | string | how many of the ids in `scheduled` wait after a failure (state `r`) |
//! | `P:{q:T}:Q:task` | hash | id → the task's record: packed metadata (state, attempt, max_attempts, fencing token, times, handler index, worker), then the task's JSON as enqueued or as pushed raw; for a JSON of more than 512 bytes, the JSON alone (layouts in `lua/common.lua`) |
//! | `P:{q:T}:Q:meta` | hash | id → packed metadata of a task whose JSON is kept alone in `task` (a JSON of more than 512 bytes, or any record of a version before one-field records) |
//! | `P:{q:T}:Q:progress` | hash | id → the last checkpoint's JSON |
//! | `P:{q:T}:Q:error` | hash | id → the last failure's JSON |
//! | `P:{q:T}:queues` | set | the tenant's queue names (plain, not encoded) that hold any task record; bounded by the tenant's `max_queues` |
//! | `P:{q:T}:queued` | string | how many of the tenant's tasks are pending, scheduled or retrying; checked against its `max_queued` |
//! | `P:{q:T}:paused` | set | the tenant's queue names (plain) that workers skip |
//! | `P:{q:T}:running` | zset | the ids of the tenant's active tasks across all its queues and all workers, scored by lease expiry (µs): what its fleet-wide `max_concurrency` is checked against |
//! | `P:{q:T}:capped` | set | the tenant's queue names (plain) that had tasks waiting when an acquire found the tenant at its cap: the next ack that frees a slot wakes workers for them |
//! | `P:{q:T}:unique` | hash | unique key (plain) → the id of the task that holds it |
//! | `P:{q:T}:unique-ttl` | zset | unique keys (plain) by when they stop holding (µs); expired ones are dropped by the next enqueue of a unique task (a bounded number each), and both keys expire with their last entry |
//! | `P:{q:T}:schedules` | hash | schedule name (plain) → the schedule and the quota its tasks are enqueued within (JSON); at most the tenant's `max_schedules` |
//! | `P:{q:T}:sched-next` | zset | schedule names (plain) by their next tick (µs): what maintenance fires |
//! | `P:{q:T}:job-rates` | hash | job name (plain) → the job's fleet-wide rate limit, `tasks per_ms` ([`Broker::set_job_rate`](crate::broker::Broker::set_job_rate)); at most one per job of the tenant |
//! | `P:{q:T}:job-rate` | hash | job name (plain) → its current rate window's index and count, `w n` |
//! | `P:{q:T}:flow-W` | hash | workflow `W` (see [`crate::workflow`]): `head` (id, tenant, policy, output), `quota` (what its steps are enqueued within), `st` (`r` running, `c` completed, `f` failed), `left` (steps not final), `fin` (when it ended, µs), `err` (the first failure and its task); per step `i`: `n:i` (the step's JSON), `s:i` (the steps that wait for it, `a,b,...`), `w:i` (how many it still waits for), `x:i` (`q` ready, `e<task id>` enqueued, `c`, `d`, `k` skipped; none while waiting), `r:i` (its output) |
//! | `P:{q:T}:flows` | zset | the tenant's workflow ids, by when each ended (µs; `+inf` while running): what `max_workflows` counts and retention drops |
//! | `P:{q:T}:flow-ready` | zset | `W:i` for each workflow step ready to enqueue, by when it became ready (µs): enqueued at once by whoever made it ready, by maintenance when that one crashed first |
//! | `P:{q:T}:rate-limit` | string | the tenant's fleet-wide rate limit, `tasks per_ms`, stored as the cap is |
//! | `P:{q:T}:rate` | hash | the tenant's current rate window: `w` its index since the epoch, `n` the tasks leased in it |
//! | `P:{q:T}:cap` | string | the tenant's fleet-wide `max_concurrency`, written by enqueues that carry the tenant's limits (the API's); a worker's fresher reading from the catalog takes precedence |
//! | `P:{q:T}:due` | zset | the tenant's queue names, each scored by the earliest time (µs) it may need maintenance: a delayed or retrying task falling due, a lease running out, a finished record reaching its retention time; never later than that, possibly earlier |
//! | `P:{q:T}:usage-D` | hash | what the tenant's tasks cost on day `D` (`YYYY-MM-DD`, UTC): calls, fuel, wall_us, instantiate_us, peak_memory_bytes, completed, retried, dead; expires after the days usage is kept |
//! | `P:tenants` | set | every tenant (plain name) that has had a task |
//! | `P:{workers}:seen` | zset | worker ids, scored by when their registry entry expires (µs) |
//! | `P:{workers}:info` | hash | worker id → the worker's JSON description |
//! | `P:{wake}:cancel:<id>` | list | ids of tasks a worker holds whose cancel was asked for (bounded, expires) |
//! | `P:{wake}:<queue>` | list | wake-up tokens for idle workers of that queue name (bounded) |
//! | `P:{wake}:worker:<id>` | list | one worker's interrupt token: ends its wait early (one entry, expires) |
//!
//! Every key of a tenant carries the tenant's hash tag `{q:T}`, so one Lua
//! script can touch all of a tenant's keys, in Redis Cluster too: that is
//! how the tenant's queue set, queued count and due index are checked and
//! kept exact in the same atomic step as the tasks they describe. (The `q:` keeps a tenant's
//! tag apart from `{wake}` whatever the tenant is called, and from the
//! catalog's `{t:T}`.) A queue's keys have four parts after the prefix and a
//! tenant's own keys three, so no queue name can make a queue key equal a
//! tenant key. The price: one tenant's queues live on one Cluster node.
//!
//! Task records live in per-queue hashes rather than a key per task: that
//! way a script names every key it touches in `KEYS[]` up front, as Redis
//! Cluster requires, even when it handles tasks it only discovers while
//! running (the ids it pops from `pending`).
//!
//! The wake lists of all queue names, and each worker's interrupt list, share
//! the `{wake}` tag so one `BLPOP` can wait on all of them in a cluster.
//! (Encoded queue names hold no `:`, so no queue's list is a worker's.)
//! `P:tenants` is the one key that is neither a tenant's nor a wake list: it
//! is written before a tenant's first task is stored and read outside
//! scripts (by workers looking for queues, and by maintenance), never inside
//! one.
//!
//! This module only builds names. It never talks to Redis.

/// Percent-encodes a tenant or queue name for use inside a key: ASCII
/// letters, digits, `-`, `_` and `.` stay as they are, every other byte
/// becomes `%XX`. So names may hold `:`, `{` or `}` without breaking the
/// hash tag or colliding (`a:b`/`c` and `a`/`b:c` stay distinct).
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode`]; `None` if `s` is not something `encode` produced.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A tenant's queue as a wake-up token names it: `enc(tenant):enc(queue)`.
pub fn pair(tenant: &str, queue: &str) -> String {
    format!("{}:{}", encode(tenant), encode(queue))
}

/// Splits a token made by [`pair`] back into tenant and queue.
pub fn parse_pair(member: &str) -> Option<(String, String)> {
    let (t, q) = member.split_once(':')?;
    Some((decode(t)?, decode(q)?))
}

/// `P:{q:T}`: what every key of `tenant` starts with.
fn tenant_base(prefix: &str, tenant: &str) -> String {
    format!("{prefix}:{{q:{}}}", encode(tenant))
}

/// A tenant's own keys (not a queue's), in the tenant's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    /// The tenant's name (plain).
    pub name: String,
    /// The tenant's queue names that hold any task record (set).
    pub queues: String,
    /// How many of its tasks are pending, scheduled or retrying (string).
    pub queued: String,
    /// Its paused queue names (set).
    pub paused: String,
    /// Queue name → when it next needs maintenance, µs (zset).
    pub due: String,
    /// Its active task ids, across queues and workers, by lease expiry (zset).
    pub running: String,
    /// Its fleet-wide concurrency cap as the last limited enqueue gave it
    /// (string).
    pub cap: String,
    /// Its queue names with tasks held back by the cap (set).
    pub capped: String,
    /// Its rate limit, `tasks per_ms` (string).
    pub rate_limit: String,
    /// Its current rate window and count (hash).
    pub rate: String,
    /// Schedule name → its record (hash).
    pub schedules: String,
    /// Schedule names by next tick, µs (zset).
    pub sched_next: String,
    /// Unique key → the task holding it (hash).
    pub unique: String,
    /// Unique keys by expiry, µs (zset).
    pub unique_ttl: String,
    /// Job name → its fleet-wide rate limit, `tasks per_ms` (hash).
    pub job_rates: String,
    /// Job name → its current rate window and count, `w n` (hash).
    pub job_rate: String,
    /// Workflow ids by when they ended, µs (`+inf` while running) (zset).
    pub flows: String,
    /// `id:step` of workflow steps ready to enqueue, by when they became
    /// ready, µs (zset).
    pub flow_ready: String,
    /// `P:{q:T}:flow-`: a workflow's id completes its key.
    flow_base: String,
    /// `P:{q:T}:usage-`: the day's date completes a usage key.
    usage_base: String,
}

impl TenantKeys {
    /// The keys of `tenant` under `prefix`.
    pub fn new(prefix: &str, tenant: &str) -> Self {
        let base = tenant_base(prefix, tenant);
        Self {
            name: tenant.to_owned(),
            queues: format!("{base}:queues"),
            queued: format!("{base}:queued"),
            paused: format!("{base}:paused"),
            due: format!("{base}:due"),
            running: format!("{base}:running"),
            cap: format!("{base}:cap"),
            capped: format!("{base}:capped"),
            rate_limit: format!("{base}:rate-limit"),
            rate: format!("{base}:rate"),
            schedules: format!("{base}:schedules"),
            sched_next: format!("{base}:sched-next"),
            unique: format!("{base}:unique"),
            unique_ttl: format!("{base}:unique-ttl"),
            job_rates: format!("{base}:job-rates"),
            job_rate: format!("{base}:job-rate"),
            flows: format!("{base}:flows"),
            flow_ready: format!("{base}:flow-ready"),
            flow_base: format!("{base}:flow-"),
            usage_base: format!("{base}:usage-"),
        }
    }

    /// Workflow `id`'s record (hash).
    pub fn flow(&self, id: &impl std::fmt::Display) -> String {
        format!("{}{id}", self.flow_base)
    }

    /// The tenant's usage counters of `day` (hash).
    pub fn usage(&self, day: chrono::NaiveDate) -> String {
        format!("{}{}", self.usage_base, day.format("%Y-%m-%d"))
    }
}

/// The keys of one tenant's queue, and the tenant's own keys, all under
/// the tenant's hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// The queue's name (plain), as the tenant's queue set holds it.
    pub name: String,
    /// Ids waiting for a worker (list).
    pub pending: String,
    /// Pending ids of priority 1-9 (zset), taken before `pending`.
    pub prio: String,
    /// Leased ids by lease expiry (zset).
    pub active: String,
    /// Delayed and retrying ids by due time (zset).
    pub scheduled: String,
    /// Completed ids by finish time (zset).
    pub completed: String,
    /// Dead ids by time of death (zset).
    pub dead: String,
    /// Cancelled ids by time of cancel (zset).
    pub cancelled: String,
    /// How many scheduled ids are retrying (string).
    pub retrying: String,
    /// id → the task's record: metadata, then JSON; or the JSON alone,
    /// when it is large (hash).
    pub task: String,
    /// id → the metadata of a record whose JSON is alone in `task` (hash).
    pub meta: String,
    /// id → last checkpoint JSON (hash).
    pub progress: String,
    /// id → last error JSON (hash).
    pub error: String,
    /// The owning tenant's keys.
    pub tenant: TenantKeys,
}

impl QueueKeys {
    /// The keys of `tenant`'s queue `queue` under `prefix`.
    pub fn new(prefix: &str, tenant: &str, queue: &str) -> Self {
        let base = format!("{}:{}", tenant_base(prefix, tenant), encode(queue));
        let key = |suffix: &str| format!("{base}:{suffix}");
        Self {
            name: queue.to_owned(),
            pending: key("pending"),
            prio: key("prio"),
            active: key("active"),
            scheduled: key("scheduled"),
            completed: key("completed"),
            dead: key("dead"),
            cancelled: key("cancelled"),
            retrying: key("retrying"),
            task: key("task"),
            meta: key("meta"),
            progress: key("progress"),
            error: key("error"),
            tenant: TenantKeys::new(prefix, tenant),
        }
    }

    /// The queue's own keys (not the tenant's) as scripts take them, in
    /// this order; all but `prio`, which scripts name after `pending`.
    pub fn all(&self) -> [&str; 11] {
        [
            &self.pending,
            &self.active,
            &self.scheduled,
            &self.completed,
            &self.dead,
            &self.task,
            &self.meta,
            &self.progress,
            &self.error,
            &self.cancelled,
            &self.retrying,
        ]
    }
}

/// The wake-up list idle workers of queue name `queue` block on.
pub fn wake(prefix: &str, queue: &str) -> String {
    format!("{prefix}:{{wake}}:{}", encode(queue))
}

/// The list one worker's `BLPOP` also waits on, so that
/// `Broker::interrupt` can end the wait without cancelling it.
pub fn worker_wake(prefix: &str, worker: &str) -> String {
    format!("{prefix}:{{wake}}:worker:{}", encode(worker))
}

/// The list of cancelled task ids `worker` waits on.
pub fn worker_cancels(prefix: &str, worker: &str) -> String {
    format!("{prefix}:{{wake}}:cancel:{}", encode(worker))
}

/// The workers registry: ids by expiry, and their descriptions.
pub fn workers(prefix: &str) -> (String, String) {
    (
        format!("{prefix}:{{workers}}:seen"),
        format!("{prefix}:{{workers}}:info"),
    )
}

/// The set of every tenant that has had a task.
pub fn tenants(prefix: &str) -> String {
    format!("{prefix}:tenants")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_distinct() {
        for name in ["default", "a:b", "{x}", "100%", "naïve queue", ""] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name));
        }
        assert_ne!(pair("a:b", "c"), pair("a", "b:c"));
        assert_eq!(
            parse_pair(&pair("a:b", "c")),
            Some(("a:b".into(), "c".into()))
        );
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
    }

    fn tag(k: &str) -> String {
        let open = k.find('{').expect("a hash tag");
        let close = open + k[open..].find('}').expect("a closed hash tag");
        k[open + 1..close].to_owned()
    }

    #[test]
    fn a_tenants_keys_share_its_hash_tag() {
        let keys = QueueKeys::new("corral", "acme", "emails");
        for key in keys.all().into_iter().chain([keys.prio.as_str()]) {
            assert!(key.starts_with("corral:{q:acme}:emails:"), "{key}");
        }
        // What common.lua's prio_key builds from the pending list's name.
        assert_eq!(
            keys.prio,
            format!(
                "{}prio",
                &keys.pending[..keys.pending.len() - "pending".len()]
            )
        );
        assert_eq!(keys.tenant.queues, "corral:{q:acme}:queues");
        assert_eq!(keys.tenant.queued, "corral:{q:acme}:queued");
        let odd = QueueKeys::new("p", "t{1}", "q}");
        let own = [odd.tenant.queued.as_str(), odd.tenant.due.as_str()];
        for key in odd.all().into_iter().chain(own) {
            assert_eq!(tag(key), "q:t%7B1%7D");
        }
        assert_eq!(wake("corral", "a b"), "corral:{wake}:a%20b");
    }

    #[test]
    fn no_name_makes_two_kinds_of_key_meet() {
        // A tenant called `wake` is not in the wake lists' slot.
        let wake_tenant = QueueKeys::new("p", "wake", "queues");
        assert_ne!(tag(&wake_tenant.tenant.queues), tag(&wake("p", "queues")));
        // No queue name makes a queue key equal one of the tenant's keys.
        for name in [
            "queues",
            "queued",
            "due",
            "paused",
            "running",
            "cap",
            "capped",
            "unique",
            "unique-ttl",
            "schedules",
            "sched-next",
            "rate",
            "rate-limit",
            "queues:x",
            "a:queues",
        ] {
            let q = QueueKeys::new("p", "t", name);
            for key in q.all() {
                let t = &q.tenant;
                assert!(
                    key != t.queues
                        && key != t.queued
                        && key != t.due
                        && key != t.paused
                        && key != t.running
                        && key != t.cap
                        && key != t.capped
                        && key != t.unique
                        && key != t.unique_ttl
                        && key != t.schedules
                        && key != t.sched_next
                        && key != t.rate
                        && key != t.rate_limit,
                    "{key}"
                );
            }
        }
    }
}
