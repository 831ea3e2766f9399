//! Storing tasks: [`Broker::enqueue_within`](crate::broker::Broker::enqueue_within) and [`Broker::enqueue_raw`](crate::broker::Broker::enqueue_raw)
//! on Redis (`lua/enqueue.lua`).
//!
//! Tasks are grouped by tenant and queue; each group is stored by the
//! enqueue script, all or none, with the tenant's quotas checked and
//! counted in the same atomic step. A bulk enqueue is cut into chunks that
//! are serialized on blocking threads while earlier chunks are being
//! stored, and sent in order, several in flight. On a standalone server the
//! script also pushes the wake-up; on a Cluster it is sent apart. Before a
//! tenant's first task is stored, the tenant joins the tenant set.
//!
//! Nothing here leases, finishes or reads a task.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};

use super::conn::{Conn, unavailable};
use super::record::{self, StoredTask, micros};
use super::scripts::{self, EnqueueBounds, EnqueueItem};
use super::{RedisBroker, WAKE_KEEP, group_by_queue, keys, lock};
use crate::broker::{BrokerError, TenantQuota};
use corral_core::task::{Task, TaskState};

/// Tasks stored per enqueue script call.
const ENQUEUE_CHUNK: usize = 1000;
/// Enqueue script calls in flight at once (pipelined on the connection).
const ENQUEUE_IN_FLIGHT: usize = 8;
/// Chunks of a bulk enqueue being serialized at once (on blocking threads).
const SERIALIZE_IN_FLIGHT: usize = 4;
/// How long an enqueue trusts that its tenant is in the tenant set.
const REGISTERED_TTL: Duration = Duration::from_secs(10);

impl RedisBroker {
    /// [`Broker::enqueue_within`](crate::broker::Broker::enqueue_within) on Redis.
    pub(super) async fn store_tasks(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        for task in &tasks {
            task.validate_new().map_err(|e| BrokerError::Invalid {
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

    /// [`Broker::enqueue_raw`](crate::broker::Broker::enqueue_raw) on Redis.
    pub(super) async fn push_raw(
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

    /// Makes sure `tenant` is in the tenant set before its tasks are
    /// stored, so workers and maintenance find them.
    pub(super) async fn register(&self, tenant: &str) -> Result<(), BrokerError> {
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
}

/// The records of new tasks as the enqueue script stores them: first
/// metadata (state pending, or scheduled when due later), then the task JSON.
pub(super) fn stored_items(
    tasks: Vec<Task>,
    now: DateTime<Utc>,
) -> Result<Vec<EnqueueItem>, BrokerError> {
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
                priority: task.priority,
                handler: task.current_handler_index,
                started_us: None,
                worker: String::new(),
                cancel_requested: false,
            };
            // The record is the metadata, then the JSON written after it.
            // Sized up front: growing the buffer was a good part of the cost.
            let mut record = meta.encode();
            record.reserve(256);
            serde_json::to_writer(&mut record, &StoredTask::of(&task)).map_err(|e| {
                BrokerError::Invalid {
                    op: "enqueue",
                    reason: format!("task {} does not serialize: {e}", task.task_id),
                }
            })?;
            let unique = task.unique.as_ref().map(|u| {
                let until =
                    corral_core::clock::add(now, std::time::Duration::from_millis(u.ttl_ms));
                (u.key.clone(), micros(until))
            });
            Ok(EnqueueItem {
                id: task.task_id.to_string(),
                record,
                due_us: due.map(micros),
                unique,
            })
        })
        .collect()
}
