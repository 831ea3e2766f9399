//! Keeps the worker's leases alive.
//!
//! Every `every`, extends the lease of each task in flight. A lease the broker
//! says is no longer held (it expired and another worker took the task) is
//! dropped here, its task aborted and counted as lost: continuing would
//! only produce a checkpoint the broker refuses. Broker errors are logged
//! and retried on the next beat; they never stop the worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{InFlight, WorkerStats};
use corral_client::broker::Broker;

pub(crate) async fn run<B: Broker>(
    broker: Arc<B>,
    in_flight: InFlight,
    lease_for: Duration,
    every: Duration,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let leases: Vec<_> = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(lease, _)| lease.clone())
            .collect();
        if leases.is_empty() {
            continue;
        }
        match broker.heartbeat(&leases, lease_for).await {
            Ok(lost) => {
                let mut map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                for id in lost {
                    if let Some((_, abort)) = map.remove(&id) {
                        tracing::warn!(task = %id, "lease lost; abandoning the task");
                        abort.abort();
                        stats.lose();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}
