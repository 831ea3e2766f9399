//! Reading tasks back: [`Broker::task`](crate::broker::Broker::task), [`Broker::stats`](crate::broker::Broker::stats) and
//! [`Broker::dead`](crate::broker::Broker::dead) on Redis (`lua/read.lua`, `lua/stats.lua`,
//! `lua/dead.lua`), and a tenant's tasks across its queues: counts for the
//! API's `max_queued` check and `/v1/stats`, and lists for `/v1/tasks` and
//! the dashboard.
//!
//! [`Broker::task`](crate::broker::Broker::task) gets a tenant and an id but no queue: the record is
//! looked for in each of the tenant's queues, read concurrently (see the
//! parent module). A tenant's queues come from its queue set (at most its `max_queues`);
//! each queue is read on its own and concurrently. Lists take, from each
//! state's set, its `limit` most recent ids (pending: the newest end of the
//! list; the sorted sets: highest score), read those records with the same
//! script as [`Broker::task`](crate::broker::Broker::task), and return the
//! newest `limit` by id. A task that moves between sets while it is read is
//! shown once, in the state its record holds. Raw entries not yet taken by a
//! worker are not tasks yet and are not listed (they are counted as pending).
//! Read-only: nothing here changes a key.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use futures_util::future::join_all;

use super::conn::{Conn, unavailable};
use super::keys::QueueKeys;
use super::record::{self, RawRecord, assemble, from_micros, micros};
use super::{AttemptInfo, RedisBroker, scripts};
use crate::broker::{BrokerError, QueueStats, TaskQuery};
use corral_core::task::{DEFAULT_QUEUE, Task, TaskId, TaskState};
use corral_core::text::Inert;

impl RedisBroker {
    /// [`Broker::queue_depths`](crate::broker::Broker::queue_depths) on
    /// Redis: which tenants have the names (the acquire's cached index),
    /// then one stats script per tenant queue, concurrently.
    pub(super) async fn depths(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, String, QueueStats)>, BrokerError> {
        let pairs: Vec<(String, String)> = self
            .tenants_for(queues)
            .await?
            .into_iter()
            .flat_map(|(tenant, qs)| qs.into_iter().map(move |q| (tenant.clone(), q)))
            .collect();
        let counts = join_all(pairs.iter().map(|(tenant, queue)| async move {
            scripts::stats(
                &mut self.conn(),
                &self.keys(tenant, queue),
                micros(self.now()),
            )
            .await
        }))
        .await;
        let mut out = Vec::new();
        for ((tenant, queue), stats) in pairs.into_iter().zip(counts) {
            let stats = stats?;
            if !stats.is_empty() {
                out.push((tenant, queue, stats));
            }
        }
        Ok(out)
    }

    /// `tenant`'s queues, optionally only `only`.
    async fn tenant_queues(
        &self,
        tenant: &str,
        only: Option<&String>,
    ) -> Result<Vec<String>, BrokerError> {
        Ok(self
            .tenant_queue_names("list_tasks", tenant)
            .await?
            .into_iter()
            .filter(|q| only.is_none_or(|want| want == q))
            .collect())
    }

    /// Counts by state summed over `tenant`'s queues.
    pub(super) async fn tenant_counts(&self, tenant: &str) -> Result<QueueStats, BrokerError> {
        let queues = self.tenant_queues(tenant, None).await?;
        let counts = join_all(queues.iter().map(|q| async move {
            scripts::stats(&mut self.conn(), &self.keys(tenant, q), micros(self.now())).await
        }))
        .await;
        let mut total = QueueStats::default();
        for c in counts {
            total.add(&c?);
        }
        Ok(total)
    }

    /// `tenant`'s tasks matching `query`, newest first.
    pub(super) async fn tenant_tasks(
        &self,
        tenant: &str,
        query: &TaskQuery,
    ) -> Result<Vec<Task>, BrokerError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let queues = self.tenant_queues(tenant, query.queue.as_ref()).await?;
        let per_queue = join_all(
            queues
                .iter()
                .map(|q| self.queue_tasks(tenant, q, query.state, query.limit)),
        )
        .await;
        let mut all = Vec::new();
        for tasks in per_queue {
            all.extend(tasks?);
        }
        all.sort_unstable_by_key(|t| Reverse(t.task_id));
        all.truncate(query.limit);
        Ok(all)
    }

    /// Up to `limit` of the newest tasks of one queue in `state` (any when
    /// `None`).
    async fn queue_tasks(
        &self,
        tenant: &str,
        queue: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<Task>, BrokerError> {
        const OP: &str = "list_tasks";
        let keys = self.keys(tenant, queue);
        let last = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let wants = |states: &[TaskState]| state.is_none_or(|s| states.contains(&s));
        let mut pipe = redis::pipe();
        if wants(&[TaskState::Pending]) {
            pipe.cmd("LRANGE").arg(&keys.pending).arg(0).arg(last);
            pipe.cmd("ZREVRANGE").arg(&keys.prio).arg(0).arg(last);
        }
        for (set, states) in [
            (
                &keys.scheduled,
                &[TaskState::Scheduled, TaskState::Retrying][..],
            ),
            (&keys.active, &[TaskState::Active][..]),
            (&keys.completed, &[TaskState::Completed][..]),
            (&keys.dead, &[TaskState::Dead][..]),
            (&keys.cancelled, &[TaskState::Cancelled][..]),
        ] {
            if wants(states) {
                pipe.cmd("ZREVRANGE").arg(set).arg(0).arg(last);
            }
        }
        let lists: Vec<Vec<String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        // Raw pushes waiting in `pending` are not ids; they are skipped.
        let ids: BTreeSet<TaskId> = lists
            .iter()
            .flatten()
            .filter_map(|entry| entry.parse().ok())
            .collect();
        let ids: Vec<TaskId> = ids.into_iter().rev().take(limit).collect();
        let keys = &keys;
        let reads = join_all(
            ids.iter()
                .map(|id| async move { scripts::read(&mut self.conn(), keys, *id).await }),
        )
        .await;
        let mut out = Vec::with_capacity(ids.len());
        for (id, read) in ids.iter().zip(reads) {
            // Trimmed since the ids were read: nothing to show.
            let Some(raw) = read? else {
                continue;
            };
            match record::assemble(*id, tenant, queue, &raw) {
                Ok(a) if state.is_none_or(|s| a.task.state == s) => out.push(a.task),
                Ok(_) => {}
                Err(record::AssembleError::Corrupt(reason)) => {
                    tracing::warn!(tenant, queue, task = %id, reason = %Inert(&reason), "unreadable task record");
                }
            }
        }
        Ok(out)
    }
}

impl RedisBroker {
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

    /// The server's `used_memory` in bytes (`INFO memory`), for benchmarks;
    /// `None` on a Cluster (one node's figure would mislead).
    pub async fn server_memory_bytes(&self) -> Result<Option<u64>, BrokerError> {
        if matches!(self.inner.conn, Conn::Cluster(_)) {
            return Ok(None);
        }
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable("server_memory_bytes", e))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok()))
    }

    /// [`Broker::task`](crate::broker::Broker::task) on Redis.
    pub(super) async fn read_task(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<Option<Task>, BrokerError> {
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

    /// [`Broker::stats`](crate::broker::Broker::stats) on Redis.
    pub(super) async fn queue_stats(
        &self,
        tenant: &str,
        queue: &str,
    ) -> Result<QueueStats, BrokerError> {
        scripts::stats(
            &mut self.conn(),
            &self.keys(tenant, queue),
            micros(self.now()),
        )
        .await
    }

    /// [`Broker::dead`](crate::broker::Broker::dead) on Redis.
    pub(super) async fn dead_tasks(
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

    /// Finds the record of `id` among `tenant`'s queues (those in its queue
    /// set, and the default queue, where raw pushes need no registration).
    pub(super) async fn find(
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
