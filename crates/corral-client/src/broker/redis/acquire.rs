//! Leasing tasks: [`Broker::acquire`](crate::broker::Broker::acquire) and [`Broker::interrupt`](crate::broker::Broker::interrupt) on Redis
//! (`lua/acquire.lua`).
//!
//! One round of takes ([`fairness`](super::fairness) shares it between
//! tenants) leases up to the asked number of tasks, queue by queue, each
//! with the acquire script: it promotes due tasks, pops ids from `pending`
//! and leases them in the same atomic step. Raw pushes come back parsed
//! here; what is not a task is buried in the dead set with the reason (the
//! ack script). When nothing was taken, the worker blocks on the wake lists
//! of its queues (and its own interrupt list) until work arrives, the next
//! delayed task falls due, or its `block_for` ends; a wake-up it used while
//! more is left is passed on to the next idle worker.
//!
//! Nothing here finishes a task or changes one it did not lease.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::ack::billing;
use super::conn::{reachable, unavailable};
use super::fairness::Hints;
use super::keys::QueueKeys;
use super::record::{self, Assembled, RawRecord, assemble, from_micros, micros};
use super::scripts::{self, AckItem, AcquireArgs};
use super::{RedisBroker, conn, keys};
use crate::broker::{
    AcquireRequest, BrokerError, Lease, Leased, MALFORMED, WorkerId, parse_raw_task,
};
use corral_core::clock;
use corral_core::task::{DEFAULT_MAX_ATTEMPTS, Task, TaskError, TaskId};
use corral_core::text::Inert;

/// Due tasks one acquire promotes before leasing.
const PROMOTE_ON_ACQUIRE: usize = 1000;
/// Raw entries one acquire script call takes at most.
const RAW_PER_CALL: usize = 2;
/// How long an interrupt token waits for its worker's next wait.
const INTERRUPT_TTL: Duration = Duration::from_secs(60);

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

impl RedisBroker {
    /// [`Broker::acquire`](crate::broker::Broker::acquire) on Redis.
    pub(super) async fn lease_ready(
        &self,
        req: &AcquireRequest,
    ) -> Result<Vec<Leased>, BrokerError> {
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

    /// [`Broker::interrupt`](crate::broker::Broker::interrupt) on Redis.
    pub(super) async fn interrupt_wait(&self, worker: &WorkerId) {
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
    pub(super) async fn take_queue(
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
                cap: req.tenant_caps.get(tenant).copied(),
                rate: req.tenant_rates.get(tenant).copied(),
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
                            workflow: task.workflow,
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
                    calls: None,
                    flow: None,
                }
            })
            .collect();
        let now = self.now();
        let wake = scripts::ack(
            &mut self.conn(),
            keys,
            micros(now),
            &self.keep(),
            &billing(keys, now),
            &items,
        )
        .await?
        .wake;
        for queue in wake {
            self.wake(tenant, &queue).await;
        }
        Ok(())
    }
}
