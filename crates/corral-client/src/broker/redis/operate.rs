//! The operator's verbs on Redis: list a queue's tasks page by page, retry,
//! delete, cancel, purge, pause and resume, and the workers registry.
//!
//! Each verb on tasks is one script (`lua/list.lua`, `requeue.lua`,
//! `delete.lua`, `cancel.lua`, `purge_state.lua`, `pause.lua`) on the
//! tenant's keys, so it is atomic in Redis Cluster too; verbs on many tasks
//! (retry every dead task, purge a state) run in batches, each batch one
//! atomic script call, so Redis is never held for long. A retry is read,
//! rewritten in Rust (the scripts never re-encode task JSON) and applied
//! only if the record is still the one read. Cancelling a running task
//! marks it in its record and then tells the worker through its cancel
//! list (`P:{wake}:cancel:<id>`), which the worker waits on; the mark, not
//! the message, is what makes the task end cancelled, so a lost message
//! only delays the stop until the lease runs out. This module never runs a
//! guest and never decides who may call it: the API scopes the tenant.

use std::time::Duration;

use super::RedisBroker;
use super::conn::{reachable, unavailable};
use super::keys;
use super::record::{self, assemble, micros};
use super::scripts::{self, CancelReply, Requeue};
use crate::broker::{
    BrokerError, Cancelled, MAX_WORKERS_LISTED, QueueInfo, TenantQuota, WorkerId, WorkerInfo,
};
use corral_core::task::{Task, TaskId, TaskState};
use corral_core::text::Inert;

/// Tasks per batch of the verbs that work on many.
const BATCH: usize = 500;

/// Most entries one listing step looks at (with the paging's bound on
/// steps, at most 64,000 entries read per page).
const SCAN: usize = 1000;

/// How many undelivered cancels a worker's list keeps, and for how long.
const CANCELS_KEPT: isize = 1000;
const CANCELS_TTL: Duration = Duration::from_secs(600);

impl RedisBroker {
    /// [`Broker::queue_names`](crate::broker::Broker::queue_names) on Redis.
    pub(super) async fn names(&self, tenant: &str) -> Result<Vec<String>, BrokerError> {
        Ok(self
            .tenant_queue_names("queues", tenant)
            .await?
            .into_iter()
            .collect())
    }

    /// [`Broker::queues`](crate::broker::Broker::queues) on Redis.
    pub(super) async fn queue_infos(&self, tenant: &str) -> Result<Vec<QueueInfo>, BrokerError> {
        let names = self.names(tenant).await?;
        let now_us = micros(self.now());
        let stats = futures_util::future::join_all(names.iter().map(|q| async move {
            scripts::stats(&mut self.conn(), &self.keys(tenant, q), now_us).await
        }))
        .await;
        names
            .into_iter()
            .zip(stats)
            .map(|(queue, stats)| {
                Ok(QueueInfo {
                    tenant: tenant.to_owned(),
                    queue,
                    stats: stats?,
                })
            })
            .collect()
    }

    /// [`Broker::tasks_in`](crate::broker::Broker::tasks_in) on Redis.
    pub(super) async fn page_of(
        &self,
        tenant: &str,
        queue: &str,
        state: TaskState,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<usize>), BrokerError> {
        let keys = self.keys(tenant, queue);
        let limit = limit.clamp(1, SCAN);
        let (records, next) =
            scripts::list(&mut self.conn(), &keys, state, offset, limit, SCAN).await?;
        let mut out = Vec::with_capacity(records.len());
        for (id, raw) in records {
            let Ok(task_id) = id.parse::<TaskId>() else {
                continue;
            };
            match assemble(task_id, tenant, queue, &raw) {
                Ok(a) => out.push(a.task),
                Err(record::AssembleError::Corrupt(reason)) => {
                    tracing::warn!(tenant = %Inert(tenant), queue = %Inert(queue), task = %task_id, reason = %Inert(&reason), "unreadable task record");
                }
            }
        }
        Ok((out, next))
    }

    /// [`Broker::retry`](crate::broker::Broker::retry) on Redis.
    pub(super) async fn retry_one(
        &self,
        tenant: &str,
        id: TaskId,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        const OP: &str = "retry";
        let Some((queue, keys, raw)) = self.find(tenant, id).await? else {
            return Err(not_found(OP, id));
        };
        let a = assemble(id, tenant, &queue, &raw).map_err(
            |record::AssembleError::Corrupt(reason)| BrokerError::Corrupt { op: OP, reason },
        )?;
        if !matches!(a.task.state, TaskState::Dead | TaskState::Cancelled) {
            return Err(BrokerError::Conflict {
                op: OP,
                reason: format!(
                    "task {id} is {}; only dead or cancelled tasks are retried",
                    a.task.state
                ),
            });
        }
        let item = requeue_item(a.task, a.meta.updated_us)?;
        match scripts::requeue(
            &mut self.conn(),
            &keys,
            micros(self.now()),
            quota.max_queued,
            &[item],
        )
        .await?
        {
            Ok(0) => Err(BrokerError::Conflict {
                op: OP,
                reason: format!("task {id} changed while it was retried; look again"),
            }),
            Ok(_) => {
                self.wake(tenant, &queue).await;
                Ok(())
            }
            Err(queued) => Err(BrokerError::Full {
                op: OP,
                reason: crate::broker::quota_full(tenant, queued, 1, quota.max_queued),
            }),
        }
    }

    /// [`Broker::retry_dead`](crate::broker::Broker::retry_dead) on Redis:
    /// batches of the oldest dead tasks until none is left (or none of a
    /// batch could be applied).
    pub(super) async fn retry_all_dead(
        &self,
        tenant: &str,
        queue: &str,
        quota: &TenantQuota,
    ) -> Result<usize, BrokerError> {
        const OP: &str = "retry_dead";
        let keys = self.keys(tenant, queue);
        let mut total = 0;
        loop {
            let (records, _) =
                scripts::list(&mut self.conn(), &keys, TaskState::Dead, 0, BATCH, BATCH).await?;
            if records.is_empty() {
                break;
            }
            let mut items = Vec::with_capacity(records.len());
            for (id, raw) in records {
                let Ok(task_id) = id.parse::<TaskId>() else {
                    continue;
                };
                match assemble(task_id, tenant, queue, &raw) {
                    Ok(a) => items.push(requeue_item(a.task, a.meta.updated_us)?),
                    Err(record::AssembleError::Corrupt(reason)) => {
                        tracing::warn!(tenant = %Inert(tenant), queue = %Inert(queue), task = %task_id, reason = %Inert(&reason), "unreadable dead record; not retried");
                    }
                }
            }
            let applied = match scripts::requeue(
                &mut self.conn(),
                &keys,
                micros(self.now()),
                quota.max_queued,
                &items,
            )
            .await?
            {
                Ok(n) => n,
                Err(queued) => {
                    return Err(BrokerError::Full {
                        op: OP,
                        reason: crate::broker::quota_full(
                            tenant,
                            queued,
                            items.len() as u64,
                            quota.max_queued,
                        ),
                    });
                }
            };
            total += applied;
            if applied == 0 {
                break;
            }
        }
        if total > 0 {
            self.wake(tenant, queue).await;
        }
        Ok(total)
    }

    /// [`Broker::delete`](crate::broker::Broker::delete) on Redis.
    pub(super) async fn delete_one(&self, tenant: &str, id: TaskId) -> Result<(), BrokerError> {
        let Some((_, keys, _)) = self.find(tenant, id).await? else {
            return Err(not_found("delete", id));
        };
        if scripts::delete(&mut self.conn(), &keys, id, &self.keep()).await? {
            Ok(())
        } else {
            // Gone between the look and the delete.
            Err(not_found("delete", id))
        }
    }

    /// [`Broker::purge`](crate::broker::Broker::purge) on Redis.
    pub(super) async fn purge_in_state(
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
        let keys = self.keys(tenant, queue);
        let keep = self.keep();
        let (mut total, mut offset) = (0, 0);
        loop {
            let (deleted, next) =
                scripts::purge_state(&mut self.conn(), &keys, state, BATCH, offset, &keep).await?;
            total += deleted;
            match next {
                Some(at) => offset = at,
                None => return Ok(total),
            }
        }
    }

    /// [`Broker::pause`](crate::broker::Broker::pause) on Redis.
    pub(super) async fn set_paused(
        &self,
        tenant: &str,
        queue: &str,
        paused: bool,
    ) -> Result<(), BrokerError> {
        let keys = self.keys(tenant, queue);
        if !scripts::pause(&mut self.conn(), &keys, paused).await? {
            return Err(BrokerError::NotFound {
                op: "pause",
                what: format!("queue `{}`", Inert(queue)),
            });
        }
        if !paused {
            self.wake(tenant, queue).await;
        }
        Ok(())
    }

    /// [`Broker::cancel`](crate::broker::Broker::cancel) on Redis.
    pub(super) async fn cancel_one(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Cancelled, BrokerError> {
        const OP: &str = "cancel";
        let Some((_, keys, _)) = self.find(tenant, id).await? else {
            return Err(not_found(OP, id));
        };
        match scripts::cancel(
            &mut self.conn(),
            &keys,
            id,
            micros(self.now()),
            &self.keep(),
        )
        .await?
        {
            CancelReply::Now => Ok(Cancelled::Now),
            CancelReply::Missing => Err(not_found(OP, id)),
            CancelReply::Final(state) => Err(BrokerError::Conflict {
                op: OP,
                reason: format!("task {id} is {} already", state_name(&state)),
            }),
            CancelReply::Running(worker) => {
                self.tell_cancel(&worker, id).await?;
                Ok(Cancelled::Requested { worker })
            }
        }
    }

    /// Pushes `id` onto `worker`'s cancel list (bounded, expiring).
    async fn tell_cancel(&self, worker: &str, id: TaskId) -> Result<(), BrokerError> {
        let key = keys::worker_cancels(&self.inner.config.prefix, worker);
        redis::pipe()
            .lpush(&key, id.to_string())
            .ignore()
            .ltrim(&key, 0, CANCELS_KEPT - 1)
            .ignore()
            .pexpire(&key, CANCELS_TTL.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("cancel", e))
    }

    /// [`Broker::cancel_requests`](crate::broker::Broker::cancel_requests)
    /// on Redis: a blocking pop on the worker's cancel list, then whatever
    /// else it holds.
    pub(super) async fn wait_cancels(
        &self,
        worker: &WorkerId,
        wait: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        const OP: &str = "cancel_requests";
        let key = keys::worker_cancels(&self.inner.config.prefix, worker);
        let wait = wait.clamp(Duration::from_millis(1), super::conn::MAX_BLOCK);
        let mut conn = self.inner.blocking.take(&self.inner.target).await?;
        let first: Option<(String, String)> = redis::cmd("BRPOP")
            .arg(&key)
            .arg(format!("{:.3}", wait.as_secs_f64()))
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(OP, e))?;
        self.inner.blocking.give_back(conn);
        reachable();
        let Some((_, first)) = first else {
            return Ok(Vec::new());
        };
        let rest: Option<Vec<String>> = redis::cmd("RPOP")
            .arg(&key)
            .arg(CANCELS_KEPT)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        Ok(std::iter::once(first)
            .chain(rest.unwrap_or_default())
            .filter_map(|id| id.parse().ok())
            .collect())
    }

    /// [`Broker::register_worker`](crate::broker::Broker::register_worker) on Redis.
    pub(super) async fn register_entry(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        const OP: &str = "register_worker";
        let (seen, all) = keys::workers(&self.inner.config.prefix);
        let now = self.now();
        let mut info = info.clone();
        info.seen_at = now;
        let json = serde_json::to_string(&info).map_err(|e| BrokerError::Invalid {
            op: OP,
            reason: e.to_string(),
        })?;
        let now_us = micros(now);
        let until = now_us.saturating_add(super::ttl_us(ttl));
        // Entries past their time go with every registration, so the
        // registry holds only live workers and those about to expire.
        let stale: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&seen)
            .arg("-inf")
            .arg(format!("({now_us}"))
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !stale.is_empty() {
            pipe.zrem(&seen, &stale)
                .ignore()
                .hdel(&all, &stale)
                .ignore();
        }
        pipe.zadd(&seen, &info.id, until)
            .ignore()
            .hset(&all, &info.id, json)
            .ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))
    }

    /// [`Broker::deregister_worker`](crate::broker::Broker::deregister_worker) on Redis.
    pub(super) async fn deregister(&self, worker: &WorkerId) -> Result<(), BrokerError> {
        let (seen, all) = keys::workers(&self.inner.config.prefix);
        redis::pipe()
            .atomic()
            .zrem(&seen, worker)
            .ignore()
            .hdel(&all, worker)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable("deregister_worker", e))
    }

    /// [`Broker::workers`](crate::broker::Broker::workers) on Redis.
    pub(super) async fn live_workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        const OP: &str = "workers";
        let (seen, all) = keys::workers(&self.inner.config.prefix);
        let now_us = micros(self.now());
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&seen)
            .arg(now_us)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_WORKERS_LISTED)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let infos: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&all)
            .arg(&ids)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let mut out: Vec<WorkerInfo> = infos
            .into_iter()
            .flatten()
            .filter_map(|json| match serde_json::from_str(&json) {
                Ok(info) => Some(info),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable workers registry entry");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// The new record of a dead or cancelled task run again.
fn requeue_item(mut task: Task, read_updated_us: i64) -> Result<Requeue, BrokerError> {
    let id = task.task_id;
    task.archive_error();
    task.state = TaskState::Pending;
    task.attempt = 0;
    task.run_at = None;
    let json =
        serde_json::to_vec(&record::StoredTask::of(&task)).map_err(|e| BrokerError::Invalid {
            op: "retry",
            reason: e.to_string(),
        })?;
    Ok(Requeue {
        id,
        read_updated_us,
        json,
    })
}

fn not_found(op: &'static str, id: TaskId) -> BrokerError {
    BrokerError::NotFound {
        op,
        what: format!("task {id}"),
    }
}

/// A state byte's name, for messages.
fn state_name(byte: &str) -> &'static str {
    match byte {
        "c" => "completed",
        "d" => "dead",
        "x" => "cancelled",
        _ => "final",
    }
}
