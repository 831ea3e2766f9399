//! Workflows on Redis: [`Broker::submit_workflow`](crate::broker::Broker::submit_workflow),
//! `workflow`, `workflows`, and enqueueing ready steps
//! (`lua/flow_submit.lua`, `lua/flow_advance.lua`; `ack.lua` and
//! `flow_step_ended` in `lua/common.lua` advance a workflow as its steps
//! end).
//!
//! A workflow's record is one hash in its tenant's slot (fields in
//! [`keys`](super::keys)): the plan's steps, what each waits for, each
//! step's state and output. The ack that ends a step's task updates the
//! record in the same atomic step, and a successor that waits for nothing
//! more gets an entry in the tenant's ready set. Whoever sees the entry
//! (the acking worker at once; maintenance after [`READY_GRACE_US`] should
//! that worker die first) builds the step's task from its predecessors'
//! outputs and stores it with `flow_advance.lua`, which stores it only
//! while the entry is there and removes the entry in the same step. So each
//! step is enqueued once, whoever races for it.
//!
//! Nothing here leases a task or runs one.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::RedisBroker;
use super::conn::unavailable;
use super::enqueue::stored_items;
use super::keys::TenantKeys;
use super::record::{from_micros, micros};
use super::schedules::StoredQuota;
use super::scripts::{self, Advanced, FlowSubmitted, StepTask};
use crate::broker::{BrokerError, MAX_WORKFLOWS_LISTED, TenantQuota};
use crate::workflow::{
    MAX_INPUT_BYTES, Plan, PlanHead, Step, StepError, StepState, StepStatus, WorkflowId,
    WorkflowState, WorkflowStatus, WorkflowSummary, input_too_large,
};
use corral_core::task::ArgsMap;
use corral_core::text::Inert;

/// Ready entries one round of [`RedisBroker::advance_flows`] reads.
const READY_PER_ROUND: usize = 1000;
/// Rounds of one [`RedisBroker::advance_flows`] call.
const ADVANCE_ROUNDS: usize = 20;
/// Steps one `flow_advance.lua` call stores.
const STEPS_PER_CALL: usize = 500;
/// Fields one `HMGET` of a record reads.
const FIELDS_PER_READ: usize = 10_000;
/// How long a ready step is left to the worker that made it ready before
/// maintenance enqueues it (µs).
pub(super) const READY_GRACE_US: i64 = 1_000_000;
/// Ended workflows past retention one maintenance pass drops per tenant.
pub(super) const ENDED_PER_PASS: isize = 100;

/// Which ready steps [`RedisBroker::advance_flows`] enqueues.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ready {
    /// Those made ready at or after this time (µs): what the ack or the
    /// submission that made them ready enqueues at once. Older ones (a
    /// crashed worker's, or steps the tenant's quota held back) are
    /// maintenance's, so an ack never pays for a backlog it did not make.
    Since(i64),
    /// Those ready for longer than [`READY_GRACE_US`]: maintenance's.
    Overdue,
}

fn corrupt(op: &'static str, what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Corrupt {
        op,
        reason: what.to_string(),
    }
}

fn json<T: Serialize>(op: &'static str, value: &T) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(value).map_err(|e| BrokerError::Invalid {
        op,
        reason: format!("the workflow does not serialize: {e}"),
    })
}

impl RedisBroker {
    /// [`Broker::submit_workflow`](crate::broker::Broker::submit_workflow) on Redis.
    pub(super) async fn store_workflow(
        &self,
        plan: &Plan,
        quota: &TenantQuota,
        max_workflows: u32,
    ) -> Result<(), BrokerError> {
        const OP: &str = "submit_workflow";
        let tenant = &plan.head.tenant;
        // Maintenance visits the tenants in the tenant set.
        self.register(tenant).await?;
        let stored_quota = StoredQuota::of(quota);
        let n = plan.steps.len();
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(5 + 3 * n);
        pairs.push(("head".into(), json(OP, &plan.head)?));
        pairs.push(("quota".into(), json(OP, &stored_quota)?));
        pairs.push(("st".into(), b"r".to_vec()));
        pairs.push(("left".into(), n.to_string().into_bytes()));
        pairs.push(("mode".into(), plan.on_failure_code().as_bytes().to_vec()));
        for (i, step) in plan.steps.iter().enumerate() {
            pairs.push((format!("n:{i}"), json(OP, step)?));
            let next = &plan.next[i];
            if !next.is_empty() {
                let list: Vec<String> = next.iter().map(u32::to_string).collect();
                pairs.push((format!("s:{i}"), list.join(",").into_bytes()));
            }
            let waits = step.waits_for().len();
            if waits > 0 {
                pairs.push((format!("w:{i}"), waits.to_string().into_bytes()));
            }
        }
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let id = plan.head.id.to_string();
        let now_us = micros(self.now());
        let submitted = scripts::flow_submit(
            &mut self.conn(),
            &keys,
            &id,
            max_workflows,
            now_us,
            &pairs,
            &plan.first_steps(),
        )
        .await?;
        match submitted {
            FlowSubmitted::Stored => {}
            FlowSubmitted::Full(have) => {
                return Err(BrokerError::Full {
                    op: OP,
                    reason: crate::broker::too_many_workflows(tenant, have, max_workflows),
                });
            }
            FlowSubmitted::Exists => {
                return Err(BrokerError::Conflict {
                    op: OP,
                    reason: format!("workflow {id} exists already"),
                });
            }
        }
        // Stored: its first steps are ready, and maintenance enqueues them
        // if this fails.
        if let Err(e) = self.advance_flows(tenant, Ready::Since(now_us)).await {
            tracing::warn!(tenant = %Inert(tenant), workflow = %id, error = %e, "could not enqueue a new workflow's first steps; maintenance will");
        }
        Ok(())
    }

    /// Enqueues `tenant`'s ready workflow steps, those `which` names;
    /// returns how many this call stored.
    pub(super) async fn advance_flows(
        &self,
        tenant: &str,
        which: Ready,
    ) -> Result<usize, BrokerError> {
        const OP: &str = "advance_workflow";
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let mut stored = 0;
        for _ in 0..ADVANCE_ROUNDS {
            let (min, max) = match which {
                Ready::Overdue => (
                    "-inf".to_owned(),
                    (micros(self.now()) - READY_GRACE_US).to_string(),
                ),
                Ready::Since(at) => (at.to_string(), "+inf".to_owned()),
            };
            let entries: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&keys.flow_ready)
                .arg(min)
                .arg(max)
                .arg("LIMIT")
                .arg(0)
                .arg(READY_PER_ROUND)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| unavailable(OP, e))?;
            let mut by_flow: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for entry in &entries {
                match entry
                    .split_once(':')
                    .and_then(|(f, i)| Some((f, i.parse::<u32>().ok()?)))
                {
                    Some((flow, step)) => by_flow.entry(flow.to_owned()).or_default().push(step),
                    None => {
                        tracing::error!(tenant = %Inert(tenant), entry = %Inert(entry), "a ready workflow entry does not parse; dropped");
                        let _: Result<(), _> = redis::cmd("ZREM")
                            .arg(&keys.flow_ready)
                            .arg(entry)
                            .query_async(&mut self.conn())
                            .await;
                    }
                }
            }
            let mut blocked = 0;
            let flows = by_flow.len();
            for (flow, steps) in by_flow {
                let (n, all) = self.advance_flow(&keys, &flow, &steps).await?;
                stored += n;
                if !all {
                    blocked += 1;
                }
            }
            // Every workflow read is held back by the quota: later rounds
            // would read the same entries.
            if entries.len() < READY_PER_ROUND || blocked == flows {
                break;
            }
        }
        Ok(stored)
    }

    /// Enqueues ready `steps` of workflow `flow`; returns how many were
    /// stored and whether none was refused by the quota.
    async fn advance_flow(
        &self,
        keys: &TenantKeys,
        flow: &str,
        steps: &[u32],
    ) -> Result<(usize, bool), BrokerError> {
        const OP: &str = "advance_workflow";
        let record = keys.flow(&flow);
        let Ok(workflow) = flow.parse::<WorkflowId>() else {
            return Err(corrupt(OP, format!("workflow id `{}`", Inert(flow))));
        };
        // The workflow's state and quota, and the tenant's queued count:
        // steps the quota has no room for are not even read.
        type Head = (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>);
        let (state, quota, queued): Head = redis::pipe()
            .cmd("HMGET")
            .arg(&record)
            .arg("st")
            .arg("quota")
            .cmd("GET")
            .arg(&keys.queued)
            .query_async::<((Option<Vec<u8>>, Option<Vec<u8>>), Option<u64>)>(&mut self.conn())
            .await
            .map(|((st, q), n)| (st, q, n))
            .map_err(|e| unavailable(OP, e))?;
        if state.as_deref() != Some(b"r") {
            // Ended (or dropped): its ready entries go, nothing is enqueued.
            let members: Vec<String> = steps.iter().map(|i| format!("{flow}:{i}")).collect();
            redis::cmd("ZREM")
                .arg(&keys.flow_ready)
                .arg(&members)
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(|e| unavailable(OP, e))?;
            return Ok((0, true));
        }
        let quota: StoredQuota = quota
            .as_deref()
            .and_then(|q| serde_json::from_slice(q).ok())
            .ok_or_else(|| corrupt(OP, format!("workflow {flow}: its quota does not parse")))?;
        let quota = quota.quota();
        let room = quota.max_queued.saturating_sub(queued.unwrap_or(0));
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(steps.len());
        if fits == 0 {
            return Ok((0, false));
        }
        let cut = fits < steps.len();
        let steps = &steps[..fits];
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&record);
        for i in steps {
            cmd.arg(format!("n:{i}"));
        }
        let values: Vec<Option<Vec<u8>>> = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let mut defs: Vec<(u32, Step)> = Vec::with_capacity(steps.len());
        for (&i, def) in steps.iter().zip(values) {
            match def.as_deref().map(serde_json::from_slice::<Step>) {
                Some(Ok(step)) => defs.push((i, step)),
                _ => {
                    tracing::error!(tenant = %Inert(&keys.name), workflow = flow, step = i, "a workflow step's definition is missing or does not parse; it is not enqueued");
                }
            }
        }
        // A step whose input would pass MAX_INPUT_BYTES fails instead of
        // being assembled: sizes first (HSTRLEN), outputs after.
        let mut all_reads: Vec<u32> = defs
            .iter()
            .flat_map(|(_, s)| s.waits_for())
            .collect::<HashSet<u32>>()
            .into_iter()
            .collect();
        all_reads.sort_unstable();
        let sizes = self.output_sizes(&record, &all_reads, OP).await?;
        let mut kept = Vec::with_capacity(defs.len());
        for (i, step) in defs {
            let bytes: usize = step
                .waits_for()
                .iter()
                .map(|j| sizes.get(j).copied().unwrap_or(0))
                .sum();
            if bytes > MAX_INPUT_BYTES {
                let error = json(OP, &input_too_large(bytes))?;
                let now_us = micros(self.now());
                let id = step.id.to_string();
                scripts::flow_fail(&mut self.conn(), keys, flow, i, &id, &error, now_us).await?;
                tracing::warn!(tenant = %Inert(&keys.name), workflow = flow, step = i, bytes, "a workflow step's input is too large; the step fails");
            } else {
                kept.push((i, step));
            }
        }
        let defs = kept;
        // The outputs the ready steps read.
        let mut reads: Vec<u32> = defs
            .iter()
            .flat_map(|(_, s)| s.waits_for())
            .collect::<HashSet<u32>>()
            .into_iter()
            .collect();
        reads.sort_unstable();
        let outputs = self.step_outputs(&record, &reads, OP).await?;
        let output = |j: u32| outputs.get(&j);
        let mut by_queue: BTreeMap<String, Vec<(u32, corral_core::task::Task)>> = BTreeMap::new();
        for (i, step) in &defs {
            match step.task(workflow, &keys.name, *i, &output) {
                Some(task) => by_queue
                    .entry(step.queue.clone())
                    .or_default()
                    .push((*i, task)),
                None => {
                    tracing::error!(tenant = %Inert(&keys.name), workflow = flow, step = i, "a ready workflow step lacks a predecessor's output; it is not enqueued");
                }
            }
        }
        let now = self.now();
        let mut stored = 0;
        let mut all = !cut;
        for (queue, tasks) in by_queue {
            let queue_keys = self.keys(&keys.name, &queue);
            let mut woke = false;
            for chunk in tasks.chunks(STEPS_PER_CALL) {
                let (indexes, tasks): (Vec<u32>, Vec<_>) = chunk.iter().cloned().unzip();
                let items = stored_items(tasks, now)?;
                let step_tasks: Vec<StepTask> = indexes
                    .into_iter()
                    .zip(items)
                    .map(|(step, item)| StepTask {
                        step,
                        id: item.id,
                        record: item.record,
                    })
                    .collect();
                let codes =
                    scripts::flow_advance(&mut self.conn(), &queue_keys, flow, &quota, &step_tasks)
                        .await?;
                let n = codes.iter().filter(|c| **c == Advanced::Stored).count();
                stored += n;
                woke |= n > 0;
                if codes.contains(&Advanced::Refused) {
                    tracing::debug!(tenant = %Inert(&keys.name), workflow = flow, "workflow steps wait for room under the tenant's quota");
                    all = false;
                    break;
                }
            }
            if woke {
                self.wake(&keys.name, &queue).await;
            }
        }
        Ok((stored, all))
    }

    /// The sizes of the outputs (`r:i`) of `steps` in workflow record
    /// `record`, as stored (JSON bytes).
    async fn output_sizes(
        &self,
        record: &str,
        steps: &[u32],
        op: &'static str,
    ) -> Result<HashMap<u32, usize>, BrokerError> {
        let mut out = HashMap::with_capacity(steps.len());
        for chunk in steps.chunks(FIELDS_PER_READ) {
            let mut pipe = redis::pipe();
            for j in chunk {
                pipe.cmd("HSTRLEN").arg(record).arg(format!("r:{j}"));
            }
            let sizes: Vec<usize> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(|e| unavailable(op, e))?;
            out.extend(chunk.iter().copied().zip(sizes));
        }
        Ok(out)
    }

    /// The outputs (`r:i`) of `steps` in workflow record `record`; steps
    /// without one are left out.
    async fn step_outputs(
        &self,
        record: &str,
        steps: &[u32],
        op: &'static str,
    ) -> Result<HashMap<u32, ArgsMap>, BrokerError> {
        let mut out = HashMap::with_capacity(steps.len());
        for chunk in steps.chunks(FIELDS_PER_READ) {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(record);
            for j in chunk {
                cmd.arg(format!("r:{j}"));
            }
            let values: Vec<Option<Vec<u8>>> = cmd
                .query_async(&mut self.conn())
                .await
                .map_err(|e| unavailable(op, e))?;
            for (&j, value) in chunk.iter().zip(values) {
                if let Some(bytes) = value {
                    let map: ArgsMap = serde_json::from_slice(&bytes)
                        .map_err(|e| corrupt(op, format!("{record}: output of step {j}: {e}")))?;
                    out.insert(j, map);
                }
            }
        }
        Ok(out)
    }

    /// [`Broker::workflow`](crate::broker::Broker::workflow) on Redis.
    pub(super) async fn read_workflow(
        &self,
        tenant: &str,
        id: WorkflowId,
    ) -> Result<Option<WorkflowStatus>, BrokerError> {
        const OP: &str = "workflow";
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let record = keys.flow(&id);
        type Head = (
            Option<Vec<u8>>,
            Option<String>,
            Option<i64>,
            Option<Vec<u8>>,
        );
        let (head, state, fin, err): Head = redis::cmd("HMGET")
            .arg(&record)
            .arg("head")
            .arg("st")
            .arg("fin")
            .arg("err")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let Some(head) = head else {
            return Ok(None);
        };
        let head: PlanHead = serde_json::from_slice(&head)
            .map_err(|e| corrupt(OP, format!("workflow {id}: head: {e}")))?;
        let state = parse_state(state.as_deref());
        let n = head.steps as usize;
        let mut steps = Vec::with_capacity(n);
        let indexes: Vec<usize> = (0..n).collect();
        for chunk in indexes.chunks(FIELDS_PER_READ / 2) {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&record);
            for i in chunk {
                cmd.arg(format!("n:{i}")).arg(format!("x:{i}"));
            }
            let values: Vec<Option<Vec<u8>>> = cmd
                .query_async(&mut self.conn())
                .await
                .map_err(|e| unavailable(OP, e))?;
            for (i, pair) in chunk.iter().zip(values.chunks(2)) {
                let def: Step = pair
                    .first()
                    .and_then(|d| d.as_deref())
                    .and_then(|d| serde_json::from_slice(d).ok())
                    .ok_or_else(|| corrupt(OP, format!("workflow {id}: step {i}")))?;
                let code = pair
                    .get(1)
                    .and_then(|c| c.as_deref())
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                steps.push(StepStatus {
                    task_id: def.id,
                    job: def.job,
                    queue: def.queue,
                    state: StepState::from_code(&code),
                });
            }
        }
        let result = if state == WorkflowState::Completed {
            let outputs = self.step_outputs(&record, &head.output.steps(), OP).await?;
            head.output.args(&|j: u32| outputs.get(&j))
        } else {
            None
        };
        let error = match err {
            Some(bytes) => Some(
                serde_json::from_slice::<StepError>(&bytes)
                    .map_err(|e| corrupt(OP, format!("workflow {id}: error: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(WorkflowStatus {
            id,
            tenant: head.tenant,
            state,
            on_failure: head.on_failure,
            created_at: head.created_at,
            finished_at: fin.map(from_micros),
            error,
            result,
            steps,
        }))
    }

    /// [`Broker::workflows`](crate::broker::Broker::workflows) on Redis:
    /// running ones first, then by when they ended, latest first.
    pub(super) async fn list_workflows(
        &self,
        tenant: &str,
    ) -> Result<Vec<WorkflowSummary>, BrokerError> {
        const OP: &str = "workflows";
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&keys.flows)
            .arg("+inf")
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_WORKFLOWS_LISTED)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(keys.flow(id))
                .arg("head")
                .arg("st")
                .arg("fin");
        }
        type Row = (Option<Vec<u8>>, Option<String>, Option<i64>);
        let rows: Vec<Row> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (head, state, fin) in rows {
            let Some(head) = head.and_then(|h| serde_json::from_slice::<PlanHead>(&h).ok()) else {
                continue;
            };
            out.push(WorkflowSummary {
                id: head.id,
                state: parse_state(state.as_deref()),
                created_at: head.created_at,
                finished_at: fin.map(from_micros),
                steps: head.steps,
            });
        }
        Ok(out)
    }

    /// Maintenance's share: enqueues ready steps a crashed worker left
    /// (when `overdue` says there are some), and drops `ended` workflows
    /// (past retention).
    pub(super) async fn maintain_flows(
        &self,
        tenant: &str,
        overdue: bool,
        ended: Vec<String>,
    ) -> Result<(), BrokerError> {
        const OP: &str = "maintain";
        if overdue {
            self.advance_flows(tenant, Ready::Overdue).await?;
        }
        if ended.is_empty() {
            return Ok(());
        }
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in &ended {
            pipe.cmd("UNLINK").arg(keys.flow(id)).ignore();
        }
        pipe.cmd("ZREM").arg(&keys.flows).arg(&ended).ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))
    }
}

fn parse_state(code: Option<&str>) -> WorkflowState {
    match code {
        Some("c") => WorkflowState::Completed,
        Some("f") => WorkflowState::Failed,
        _ => WorkflowState::Running,
    }
}
