//! What a lease's holder reports back: [`Broker::update`](crate::broker::Broker::update) (a checkpoint,
//! `lua/update.lua`), [`Broker::ack`](crate::broker::Broker::ack) (completed, retry, dead or released,
//! `lua/ack.lua`) and [`Broker::heartbeat`](crate::broker::Broker::heartbeat) (`lua/heartbeat.lua`).
//!
//! Every call presents the lease's fencing token; a token that is no longer
//! current gets [`BrokerError::LeaseLost`](crate::broker::BrokerError::LeaseLost) and changes nothing. Outcomes and
//! leases are grouped by queue and sent in chunks, concurrently; a released
//! task wakes a worker of its queue.
//!
//! Nothing here leases a task or reads one back.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;

use super::keys::QueueKeys;
use super::record::micros;
use super::scripts::{self, AckItem, Billing};
use super::workflows::Ready;
use super::{RedisBroker, group_by_queue};
use crate::broker::{BrokerError, Checkpoint, Lease, Outcome};
use chrono::{DateTime, Utc};
use corral_core::clock;
use corral_core::metering::USAGE_KEPT_DAYS;
use corral_core::task::TaskId;

/// Where the scripts bill `keys`' tenant for work stored at `now`.
pub(super) fn billing(keys: &QueueKeys, now: DateTime<Utc>) -> Billing {
    Billing {
        key: keys.tenant.usage(now.date_naive()),
        ttl_secs: u64::from(USAGE_KEPT_DAYS) * 24 * 3600,
    }
}

/// Outcomes applied per ack script call.
const ACK_CHUNK: usize = 500;
/// Leases extended per heartbeat script call.
const HEARTBEAT_CHUNK: usize = 1000;

impl RedisBroker {
    /// [`Broker::update`](crate::broker::Broker::update) on Redis.
    pub(super) async fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<(), BrokerError> {
        const OP: &str = "update";
        let json = serde_json::to_vec(checkpoint).map_err(|e| BrokerError::Invalid {
            op: OP,
            reason: format!("checkpoint does not serialize: {e}"),
        })?;
        let keys = self.keys(&lease.tenant, &lease.queue);
        let now = self.now();
        let held = scripts::update(
            &mut self.conn(),
            &keys,
            &billing(&keys, now),
            lease.task_id,
            lease.token,
            micros(now),
            checkpoint.current_handler_index,
            &json,
            &checkpoint.metering.unbilled,
        )
        .await?;
        if held {
            Ok(())
        } else {
            Err(BrokerError::LeaseLost {
                op: OP,
                task_id: lease.task_id,
                token: lease.token,
            })
        }
    }

    /// [`Broker::ack`](crate::broker::Broker::ack) on Redis.
    pub(super) async fn finish(
        &self,
        results: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        const OP: &str = "ack";
        let now = self.now();
        let now_us = micros(now);
        let total = results.len();
        let mut released: BTreeSet<(String, String)> = BTreeSet::new();
        let groups = group_by_queue(results.iter().map(|(lease, outcome)| {
            let mut calls = None;
            let (kind, json, due_us, handler) = match outcome {
                Outcome::Completed(cp) => {
                    calls = Some(cp.metering.unbilled);
                    (
                        "c",
                        serde_json::to_vec(cp).unwrap_or_default(),
                        None,
                        Some(cp.current_handler_index),
                    )
                }
                Outcome::Retry { error, at } => (
                    "r",
                    serde_json::to_vec(error).unwrap_or_default(),
                    Some(micros(*at)),
                    None,
                ),
                Outcome::Dead(error) => (
                    "d",
                    serde_json::to_vec(error).unwrap_or_default(),
                    None,
                    None,
                ),
                Outcome::Release => ("l", Vec::new(), None, None),
                Outcome::Cancelled(error) => (
                    "x",
                    serde_json::to_vec(error).unwrap_or_default(),
                    None,
                    None,
                ),
            };
            if matches!(outcome, Outcome::Release) {
                released.insert((lease.tenant.clone(), lease.queue.clone()));
            }
            // A workflow step's output is its final args.
            let flow = lease.workflow.map(|step| {
                let output = match outcome {
                    Outcome::Completed(cp) => serde_json::to_vec(&cp.args_map).unwrap_or_default(),
                    _ => Vec::new(),
                };
                (step, output)
            });
            let item = AckItem {
                flow,
                id: lease.task_id,
                token: lease.token,
                kind,
                json,
                due_us,
                handler,
                calls,
            };
            (lease.tenant.clone(), lease.queue.clone(), item)
        }));
        let keep = &self.keep();
        let batches: Vec<(QueueKeys, Billing, Vec<usize>, Vec<AckItem>)> = groups
            .into_iter()
            .map(|((tenant, queue), items)| {
                let (positions, items): (Vec<usize>, Vec<AckItem>) = items.into_iter().unzip();
                let keys = self.keys(&tenant, &queue);
                let usage = billing(&keys, now);
                (keys, usage, positions, items)
            })
            .collect();
        let mut calls = Vec::new();
        for (keys, usage, positions, items) in &batches {
            for (at, chunk) in positions.chunks(ACK_CHUNK).zip(items.chunks(ACK_CHUNK)) {
                calls.push(async move {
                    let acked =
                        scripts::ack(&mut self.conn(), keys, now_us, keep, usage, chunk).await?;
                    let held = acked.held;
                    // A slot under the tenant's cap is free: wake the
                    // workers of the queues that were held back by it.
                    for queue in acked.wake {
                        self.wake(&keys.tenant.name, &queue).await;
                    }
                    // The ack made a workflow step ready: enqueue it now
                    // (maintenance does, should this process die first).
                    if acked.flow_ready
                        && let Err(e) = self
                            .advance_flows(&keys.tenant.name, Ready::Since(now_us))
                            .await
                    {
                        tracing::warn!(tenant = %keys.tenant.name, error = %e, "could not enqueue ready workflow steps; maintenance will");
                    }
                    let answers: Vec<(usize, Result<(), BrokerError>)> = at
                        .iter()
                        .zip(chunk)
                        .zip(held)
                        .map(|((&i, item), held)| {
                            let result = if held {
                                Ok(())
                            } else {
                                Err(BrokerError::LeaseLost {
                                    op: OP,
                                    task_id: item.id,
                                    token: item.token,
                                })
                            };
                            (i, result)
                        })
                        .collect();
                    Ok::<_, BrokerError>(answers)
                });
            }
        }
        let mut out: Vec<Option<Result<(), BrokerError>>> = (0..total).map(|_| None).collect();
        for answer in join_all(calls).await {
            for (i, result) in answer? {
                out[i] = Some(result);
            }
        }
        let out = out
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(BrokerError::Unavailable {
                    op: OP,
                    reason: "no answer for this outcome".into(),
                }))
            })
            .collect();
        for (tenant, queue) in released {
            self.wake(&tenant, &queue).await;
        }
        Ok(out)
    }

    /// [`Broker::heartbeat`](crate::broker::Broker::heartbeat) on Redis.
    pub(super) async fn extend(
        &self,
        leases: &[Lease],
        lease_for: Duration,
    ) -> Result<Vec<TaskId>, BrokerError> {
        let expires_us = micros(clock::add(self.now(), lease_for));
        let groups = group_by_queue(
            leases
                .iter()
                .map(|l| (l.tenant.clone(), l.queue.clone(), (l.task_id, l.token))),
        );
        let calls = groups.iter().flat_map(|((tenant, queue), items)| {
            let keys = self.keys(tenant, queue);
            items.chunks(HEARTBEAT_CHUNK).map(move |chunk| {
                let keys = keys.clone();
                async move {
                    let pairs: Vec<(TaskId, u64)> = chunk.iter().map(|(_, p)| *p).collect();
                    scripts::heartbeat(&mut self.conn(), &keys, expires_us, &pairs).await
                }
            })
        });
        let mut lost = Vec::new();
        for answer in join_all(calls).await {
            lost.extend(answer?);
        }
        Ok(lost)
    }
}
