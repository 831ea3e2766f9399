//! Schedules on Redis: [`Broker::put_schedule`](crate::broker::Broker::put_schedule),
//! `remove_schedule`, `schedules`, and firing the due ticks in maintenance
//! (`lua/put_schedule.lua`, `lua/fire.lua`).
//!
//! A tenant's schedules live in its slot: a hash of records and a zset of
//! next ticks. Every worker's maintenance pass reads the tenant's due ticks
//! (with the same round trip as its due queues), plans each due schedule's
//! steps ([`Schedule::plan`]) and fires them one by one with the fire
//! script, which applies a step only while the stored tick is the one
//! planned from: the first worker to fire a tick moves it, the others find
//! it moved and stop. Cron arithmetic stays in Rust; the script compares
//! and stores.
//!
//! Nothing here leases or finishes a task.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RedisBroker;
use super::conn::unavailable;
use super::enqueue::stored_items;
use super::keys::TenantKeys;
use super::record::{from_micros, micros};
use super::scripts::{self, Fired, TickTask};
use crate::broker::{
    BrokerError, MAX_SCHEDULES_LISTED, Maintenance, RateLimit, StoredSchedule, TenantQuota,
};
use crate::schedule::Schedule;
use corral_core::text::Inert;

/// Due schedules one maintenance pass reads per tenant.
const DUE_PER_PASS: isize = 64;

/// A schedule as stored: with the quota its tasks are enqueued within.
#[derive(Serialize, Deserialize)]
struct Record {
    schedule: Schedule,
    #[serde(flatten)]
    quota: StoredQuota,
}

/// The quota tasks enqueued later (a schedule's ticks, a workflow's steps)
/// are stored within, as the record that holds them keeps it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredQuota {
    max_queued: u64,
    max_queues: u32,
    max_concurrency: u32,
    #[serde(default)]
    rate: Option<RateLimit>,
}

impl StoredQuota {
    /// What `quota` keeps (unique keys are checked when a producer
    /// enqueues, not here).
    pub(super) fn of(quota: &TenantQuota) -> Self {
        Self {
            max_queued: quota.max_queued,
            max_queues: quota.max_queues,
            max_concurrency: quota.max_concurrency,
            rate: quota.rate,
        }
    }

    /// The quota kept.
    pub(super) fn quota(&self) -> TenantQuota {
        TenantQuota {
            max_queued: self.max_queued,
            max_queues: self.max_queues,
            max_concurrency: self.max_concurrency,
            rate: self.rate,
            max_unique_keys: u64::MAX,
        }
    }
}

impl RedisBroker {
    /// [`Broker::put_schedule`](crate::broker::Broker::put_schedule) on Redis.
    pub(super) async fn store_schedule(
        &self,
        schedule: &Schedule,
        quota: &TenantQuota,
        max_schedules: u32,
    ) -> Result<StoredSchedule, BrokerError> {
        const OP: &str = "put_schedule";
        schedule
            .check()
            .map_err(|reason| BrokerError::Invalid { op: OP, reason })?;
        // Maintenance visits the tenants in the tenant set.
        self.register(&schedule.tenant).await?;
        let next = schedule.timing.next_after(self.now());
        let record = serde_json::to_vec(&Record {
            schedule: schedule.clone(),
            quota: StoredQuota::of(quota),
        })
        .map_err(|e| BrokerError::Invalid {
            op: OP,
            reason: format!("the schedule does not serialize: {e}"),
        })?;
        let tenant = TenantKeys::new(&self.inner.config.prefix, &schedule.tenant);
        let stored = scripts::put_schedule(
            &mut self.conn(),
            &tenant,
            &schedule.name,
            &record,
            next.map(micros),
            max_schedules,
        )
        .await?;
        match stored {
            Ok(()) => Ok(StoredSchedule {
                schedule: schedule.clone(),
                next_tick: next,
            }),
            Err(have) => Err(BrokerError::Full {
                op: OP,
                reason: crate::broker::too_many_schedules(&schedule.tenant, have, max_schedules),
            }),
        }
    }

    /// [`Broker::remove_schedule`](crate::broker::Broker::remove_schedule) on Redis.
    pub(super) async fn drop_schedule(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<bool, BrokerError> {
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let (removed, _): (usize, usize) = redis::pipe()
            .atomic()
            .hdel(&keys.schedules, name)
            .zrem(&keys.sched_next, name)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("remove_schedule", e))?;
        Ok(removed > 0)
    }

    /// [`Broker::schedules`](crate::broker::Broker::schedules) on Redis.
    pub(super) async fn list_schedules(
        &self,
        tenant: &str,
    ) -> Result<Vec<StoredSchedule>, BrokerError> {
        const OP: &str = "schedules";
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        type Records = Vec<(String, Vec<u8>)>;
        type Ticks = Vec<(String, i64)>;
        let (records, ticks): (Records, Ticks) = redis::pipe()
            .atomic()
            .hgetall(&keys.schedules)
            .zrange_withscores(&keys.sched_next, 0, -1)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let ticks: std::collections::HashMap<String, i64> = ticks.into_iter().collect();
        let mut out = Vec::with_capacity(records.len().min(MAX_SCHEDULES_LISTED));
        for (name, bytes) in records.into_iter().take(MAX_SCHEDULES_LISTED) {
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|e| BrokerError::Corrupt {
                    op: OP,
                    reason: format!("schedule `{}`: {e}", Inert(&name)),
                })?;
            out.push(StoredSchedule {
                next_tick: ticks.get(&name).map(|us| from_micros(*us)),
                schedule: record.schedule,
            });
        }
        out.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
        Ok(out)
    }

    /// The names of `tenant`'s schedules due at `now_us` (at most
    /// [`DUE_PER_PASS`]), with their stored ticks.
    pub(super) fn due_schedules_cmd(tenant: &TenantKeys, now_us: i64) -> redis::Cmd {
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(&tenant.sched_next)
            .arg("-inf")
            .arg(now_us)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(DUE_PER_PASS);
        cmd
    }

    /// Fires `tenant`'s due schedules (`due`: names and stored ticks, as
    /// [`Self::due_schedules_cmd`] read them) up to `now`, counting into
    /// `report`.
    pub(super) async fn fire_schedules(
        &self,
        tenant: &str,
        due: Vec<(String, i64)>,
        now: DateTime<Utc>,
        report: &mut Maintenance,
    ) -> Result<(), BrokerError> {
        const OP: &str = "maintain";
        if due.is_empty() {
            return Ok(());
        }
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let names: Vec<&str> = due.iter().map(|(n, _)| n.as_str()).collect();
        let records: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&keys.schedules)
            .arg(&names)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        for ((name, tick_us), bytes) in due.iter().zip(records) {
            // Removed between the two reads: its tick went with it.
            let Some(bytes) = bytes else { continue };
            let record: Record = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(tenant, schedule = %Inert(name), error = %e, "a stored schedule does not parse; it is not fired");
                    continue;
                }
            };
            let quota = record.quota.quota();
            let queue = self.keys(tenant, &record.schedule.queue);
            let mut woke = false;
            for step in record.schedule.plan(from_micros(*tick_us), now) {
                let task = if step.enqueue {
                    let task = record.schedule.task_at(step.stamp);
                    let id = task.task_id.to_string();
                    let mut items = stored_items(vec![task], now)?;
                    let item = items.pop().ok_or_else(|| BrokerError::Corrupt {
                        op: OP,
                        reason: "no record built for a schedule's task".into(),
                    })?;
                    Some(TickTask {
                        id,
                        record: item.record,
                        quota: &quota,
                    })
                } else {
                    None
                };
                let fired = scripts::fire(
                    &mut self.conn(),
                    &queue,
                    name,
                    micros(step.tick),
                    step.next.map(micros),
                    task.as_ref(),
                )
                .await?;
                match fired {
                    Fired::NotOurs => break,
                    Fired::Stored => {
                        report.ticks_enqueued += 1;
                        woke = true;
                    }
                    Fired::Passed => report.ticks_skipped += 1,
                    Fired::QueueFull | Fired::TooManyQueues => {
                        tracing::warn!(tenant, schedule = %Inert(name), refused = ?fired, "a schedule tick's task was refused by the tenant's quota");
                        report.ticks_skipped += 1;
                    }
                }
            }
            if woke {
                self.wake(tenant, &record.schedule.queue).await;
            }
        }
        Ok(())
    }
}
