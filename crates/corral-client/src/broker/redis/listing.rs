//! Reading a tenant's tasks across its queues: counts for the API's
//! `max_queued` check and `/v1/stats`, and lists for `/v1/tasks` and the
//! dashboard.
//!
//! A tenant's queues come from its queue set (at most its `max_queues`);
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

use super::conn::unavailable;
use super::{RedisBroker, record, scripts};
use crate::broker::{BrokerError, QueueStats, TaskQuery};
use corral_core::task::{Task, TaskId, TaskState};
use corral_core::text::Inert;

impl RedisBroker {
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
        let counts =
            join_all(queues.iter().map(|q| async move {
                scripts::stats(&mut self.conn(), &self.keys(tenant, q)).await
            }))
            .await;
        let mut total = QueueStats::default();
        for c in counts {
            let c = c?;
            total.pending += c.pending;
            total.scheduled += c.scheduled;
            total.active += c.active;
            total.completed += c.completed;
            total.dead += c.dead;
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
        }
        for (set, states) in [
            (
                &keys.scheduled,
                &[TaskState::Scheduled, TaskState::Retrying][..],
            ),
            (&keys.active, &[TaskState::Active][..]),
            (&keys.completed, &[TaskState::Completed][..]),
            (&keys.dead, &[TaskState::Dead][..]),
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
