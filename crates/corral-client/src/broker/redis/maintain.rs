//! Maintenance: [`Broker::maintain`](crate::broker::Broker::maintain) on Redis (`lua/maintain.lua`), and
//! the operator's [`RedisBroker::purge_queue`] (`lua/purge.lua`).
//!
//! A pass reads each tenant's due index once and runs the maintenance
//! script only for the queues that are due, several per call (they share
//! the tenant's slot): due delayed and retrying tasks become pending,
//! expired leases go back to pending (or to the dead set on their last
//! attempt), finished records past retention are dropped, and each queue's
//! next due time is stored. Queues that got ready tasks wake a worker.
//!
//! Nothing here leases a task or answers for one.

use futures_util::future::join_all;

use super::conn::unavailable;
use super::keys::{self, QueueKeys};
use super::record::{from_micros, micros};
use super::scripts::{self, MaintainArgs};
use super::workflows::{ENDED_PER_PASS, READY_GRACE_US};
use super::{RedisBroker, lock};
use crate::broker::{BrokerError, Maintenance};

/// Tasks handled per step per queue of one maintenance script call.
const MAINTAIN_LIMIT: usize = 1000;
/// Due queues one maintenance script call handles (all of one tenant).
const QUEUES_PER_MAINTAIN: usize = 32;
/// Most maintenance calls per tenant in one pass.
const MAINTAIN_ROUNDS: usize = 100;

impl RedisBroker {
    /// Deletes every key of `tenant`'s queue `queue` and takes it out of
    /// the tenant's queue set and queued count, in one atomic step: all its
    /// tasks, whatever their state, are gone. Costs in proportion to the
    /// queue's size (an operator's tool, not a hot path).
    pub async fn purge_queue(&self, tenant: &str, queue: &str) -> Result<(), BrokerError> {
        scripts::purge(&mut self.conn(), &self.keys(tenant, queue)).await?;
        let mut served = lock(&self.inner.served);
        if let Some(queues) = served.by_tenant.get_mut(tenant) {
            queues.remove(queue);
        }
        Ok(())
    }

    /// [`Broker::maintain`](crate::broker::Broker::maintain) on Redis.
    pub(super) async fn maintain_all(&self) -> Result<Maintenance, BrokerError> {
        let tenants = self.tenants("maintain").await?;
        let args = MaintainArgs {
            now_us: micros(self.now()),
            keep: self.keep(),
            limit: MAINTAIN_LIMIT,
        };
        let passes = join_all(tenants.iter().map(|t| self.maintain_tenant(t, &args))).await;
        let mut report = Maintenance::default();
        let mut first_error = None;
        for pass in passes {
            match pass {
                Ok(m) => {
                    report.promoted += m.promoted;
                    report.recovered += m.recovered;
                    report.expired_dead += m.expired_dead;
                    report.trimmed += m.trimmed;
                    report.queues_visited += m.queues_visited;
                    report.ticks_enqueued += m.ticks_enqueued;
                    report.ticks_skipped += m.ticks_skipped;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// One maintenance pass over the queues of `tenant` that its due index
    /// names as due: one read of the index, then one script call per
    /// [`QUEUES_PER_MAINTAIN`] due queues (they share the tenant's slot),
    /// again while some are left. A tenant with nothing due costs the one
    /// read, however many queues it has.
    async fn maintain_tenant(
        &self,
        tenant: &str,
        args: &MaintainArgs,
    ) -> Result<Maintenance, BrokerError> {
        const OP: &str = "maintain";
        let tenant_keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
        let mut total = Maintenance::default();
        let due_queues = |keys: &keys::TenantKeys| {
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(&keys.due)
                .arg("-inf")
                .arg(args.now_us)
                .arg("LIMIT")
                .arg(0)
                .arg(QUEUES_PER_MAINTAIN);
            cmd
        };
        // The first read also takes the due schedule ticks, whether a ready
        // workflow step was left behind, and the ended workflows past
        // retention: one round trip for a tenant with nothing due.
        type First = (Vec<String>, Vec<(String, i64)>, Vec<String>, Vec<String>);
        let (first_due, ticks, overdue, ended): First = redis::pipe()
            .add_command(due_queues(&tenant_keys))
            .add_command(Self::due_schedules_cmd(&tenant_keys, args.now_us))
            .cmd("ZRANGEBYSCORE")
            .arg(&tenant_keys.flow_ready)
            .arg("-inf")
            .arg(args.now_us - READY_GRACE_US)
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .cmd("ZRANGEBYSCORE")
            .arg(&tenant_keys.flows)
            .arg("-inf")
            .arg(args.now_us.saturating_sub(args.keep.completed_ttl_us))
            .arg("LIMIT")
            .arg(0)
            .arg(ENDED_PER_PASS)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        self.fire_schedules(tenant, ticks, from_micros(args.now_us), &mut total)
            .await?;
        self.maintain_flows(tenant, !overdue.is_empty(), ended)
            .await?;
        let mut first_due = Some(first_due);
        for _ in 0..MAINTAIN_ROUNDS {
            let due: Vec<String> = match first_due.take() {
                Some(due) => due,
                None => due_queues(&tenant_keys)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(|e| unavailable(OP, e))?,
            };
            if due.is_empty() {
                break;
            }
            let queues: Vec<QueueKeys> = due.iter().map(|q| self.keys(tenant, q)).collect();
            let (done, more) =
                scripts::maintain(&mut self.conn(), &tenant_keys, &queues, args).await?;
            total.queues_visited += queues.len();
            for (keys, m) in queues.iter().zip(done) {
                total.promoted += m.promoted;
                total.recovered += m.recovered;
                total.expired_dead += m.expired_dead;
                total.trimmed += m.trimmed;
                if m.promoted + m.recovered > 0 {
                    self.wake(tenant, &keys.name).await;
                }
            }
            if !more && queues.len() < QUEUES_PER_MAINTAIN {
                break;
            }
        }
        Ok(total)
    }
}
