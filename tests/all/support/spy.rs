//! A broker for tests that forwards every call to a real broker and shows
//! each checkpoint (`Broker::update`) to a hook first: how tests see what a
//! worker saved, and when.

use std::sync::Arc;
use std::time::Duration;

use corral::broker::{
    AcquireRequest, Broker, BrokerError, Checkpoint, Lease, Leased, Maintenance, Outcome,
    QueueStats, TaskQuery, TenantQuota, WorkerId,
};
use corral::task::{Task, TaskId};

/// What an [`UpdateSpy`] calls with each checkpoint before forwarding it.
pub type UpdateHook = Arc<dyn Fn(&Lease, &Checkpoint) + Send + Sync>;

/// `inner`, with every `update` shown to `on_update` first.
#[derive(Clone)]
pub struct UpdateSpy<B> {
    pub inner: B,
    pub on_update: UpdateHook,
}

impl<B: Broker> Broker for UpdateSpy<B> {
    async fn enqueue_within(
        &self,
        tasks: Vec<Task>,
        quota: &TenantQuota,
    ) -> Result<(), BrokerError> {
        self.inner.enqueue_within(tasks, quota).await
    }
    async fn acquire(&self, req: &AcquireRequest) -> Result<Vec<Leased>, BrokerError> {
        self.inner.acquire(req).await
    }
    async fn interrupt(&self, worker: &WorkerId) {
        self.inner.interrupt(worker).await
    }
    async fn update(&self, lease: &Lease, cp: &Checkpoint) -> Result<(), BrokerError> {
        (self.on_update)(lease, cp);
        self.inner.update(lease, cp).await
    }
    async fn ack(
        &self,
        results: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        self.inner.ack(results).await
    }
    async fn heartbeat(&self, leases: &[Lease], d: Duration) -> Result<Vec<TaskId>, BrokerError> {
        self.inner.heartbeat(leases, d).await
    }
    async fn maintain(&self) -> Result<Maintenance, BrokerError> {
        self.inner.maintain().await
    }
    async fn task(&self, tenant: &str, id: TaskId) -> Result<Option<Task>, BrokerError> {
        self.inner.task(tenant, id).await
    }
    async fn stats(&self, tenant: &str, queue: &str) -> Result<QueueStats, BrokerError> {
        self.inner.stats(tenant, queue).await
    }
    async fn tenant_stats(&self, tenant: &str) -> Result<QueueStats, BrokerError> {
        self.inner.tenant_stats(tenant).await
    }
    async fn list_tasks(&self, tenant: &str, q: &TaskQuery) -> Result<Vec<Task>, BrokerError> {
        self.inner.list_tasks(tenant, q).await
    }
    async fn dead(
        &self,
        tenant: &str,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<Task>, BrokerError> {
        self.inner.dead(tenant, queue, limit).await
    }
    async fn usage(
        &self,
        tenant: &str,
        days: std::ops::RangeInclusive<chrono::NaiveDate>,
    ) -> Result<Vec<corral::metering::DailyUsage>, BrokerError> {
        self.inner.usage(tenant, days).await
    }
    async fn enqueue_raw(
        &self,
        tenant: &str,
        queue: &str,
        raw: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.inner.enqueue_raw(tenant, queue, raw).await
    }
}
