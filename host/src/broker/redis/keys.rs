//! Every Redis key the Redis broker uses, built in one place.
//!
//! Layout, with `P` the configured prefix (`corral` by default) and `T` a
//! queue's hash tag `{tenant:queue}` (both names percent-encoded, see
//! [`encode`]):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{T}:pending` | list | ids waiting for a worker (`LPUSH` at the back, taken from the right); raw task JSON pushed by hand is accepted here too |
//! | `P:{T}:active` | zset | leased ids, scored by lease expiry (µs since the epoch) |
//! | `P:{T}:scheduled` | zset | delayed and retrying ids, scored by due time (µs) |
//! | `P:{T}:completed` | zset | completed ids, scored by finish time (µs) |
//! | `P:{T}:dead` | zset | dead ids, scored by the time they died (µs) |
//! | `P:{T}:task` | hash | id → the task's JSON as enqueued (or as pushed raw) |
//! | `P:{T}:meta` | hash | id → packed metadata: state, attempt, max_attempts, fencing token, times, handler index, worker (layout in `lua/common.lua`) |
//! | `P:{T}:progress` | hash | id → the last checkpoint's JSON |
//! | `P:{T}:error` | hash | id → the last failure's JSON |
//! | `P:{wake}:<queue>` | list | wake-up tokens for idle workers of that queue name (bounded) |
//! | `P:{wake}:worker:<id>` | list | one worker's interrupt token: ends its wait early (one entry, expires) |
//! | `P:queues` | set | every `tenant:queue` pair that ever had a task (the index) |
//!
//! Every key of a queue carries the queue's hash tag, so one Lua script can
//! touch all of them in Redis Cluster. Task records live in per-queue hashes
//! rather than a key per task: that way a script names every key it touches
//! in `KEYS[]` up front, as Redis Cluster requires, even when it handles
//! tasks it only discovers while running (the ids it pops from `pending`).
//!
//! The wake lists of all queue names, and each worker's interrupt list, share
//! the `{wake}` tag so one `BLPOP` can wait on all of them in a cluster.
//! (Encoded queue names hold no `:`, so no queue's list is a worker's.) The index is the one key not
//! tied to a queue: it is read outside scripts (by workers looking for queues
//! and by `task(tenant, id)`, which has no queue), never inside one.
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

/// A tenant's queue, as the index stores it: `enc(tenant):enc(queue)`.
pub fn pair(tenant: &str, queue: &str) -> String {
    format!("{}:{}", encode(tenant), encode(queue))
}

/// Splits an index member made by [`pair`] back into tenant and queue.
pub fn parse_pair(member: &str) -> Option<(String, String)> {
    let (t, q) = member.split_once(':')?;
    Some((decode(t)?, decode(q)?))
}

/// The keys of one tenant's queue, all under one hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// Ids waiting for a worker (list).
    pub pending: String,
    /// Leased ids by lease expiry (zset).
    pub active: String,
    /// Delayed and retrying ids by due time (zset).
    pub scheduled: String,
    /// Completed ids by finish time (zset).
    pub completed: String,
    /// Dead ids by time of death (zset).
    pub dead: String,
    /// id → task JSON (hash).
    pub task: String,
    /// id → lease and state metadata (hash).
    pub meta: String,
    /// id → last checkpoint JSON (hash).
    pub progress: String,
    /// id → last error JSON (hash).
    pub error: String,
}

impl QueueKeys {
    /// The keys of `tenant`'s queue `queue` under `prefix`.
    pub fn new(prefix: &str, tenant: &str, queue: &str) -> Self {
        let base = format!("{prefix}:{{{}}}", pair(tenant, queue));
        let key = |suffix: &str| format!("{base}:{suffix}");
        Self {
            pending: key("pending"),
            active: key("active"),
            scheduled: key("scheduled"),
            completed: key("completed"),
            dead: key("dead"),
            task: key("task"),
            meta: key("meta"),
            progress: key("progress"),
            error: key("error"),
        }
    }

    /// Every key, for clean-up tools and tests.
    pub fn all(&self) -> [&str; 9] {
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

/// The index of every `tenant:queue` pair that has had a task.
pub fn index(prefix: &str) -> String {
    format!("{prefix}:queues")
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

    #[test]
    fn queue_keys_share_one_hash_tag() {
        let keys = QueueKeys::new("corral", "acme", "emails");
        for key in keys.all() {
            assert!(key.starts_with("corral:{acme:emails}:"), "{key}");
        }
        let odd = QueueKeys::new("p", "t{1}", "q}");
        let tag = |k: &str| {
            let open = k.find('{').unwrap();
            let close = open + k[open..].find('}').unwrap();
            k[open + 1..close].to_owned()
        };
        for key in odd.all() {
            assert_eq!(tag(key), "t%7B1%7D:q%7D");
        }
        assert_eq!(wake("corral", "a b"), "corral:{wake}:a%20b");
    }
}
