//! Keeps the worker's leases alive.
//!
//! Every `every`, extends the lease of each task in flight. A lease the broker
//! says is no longer held (it expired and another worker took the task) is
//! dropped here, its task aborted and counted as lost: continuing would
//! only produce a checkpoint the broker refuses. Broker errors are logged
//! and retried on the next beat; they never stop the worker.
//!
//! Each beat also refreshes the worker's entry in the workers registry
//! (with the tasks it runs now), so an entry outlives its worker by at most
//! one lease; at shutdown the entry is removed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{InFlight, WorkerStats};
use corral_client::broker::{Broker, WorkerInfo};

/// What the heartbeat keeps alive.
pub(crate) struct Beat {
    /// How long each extension lasts.
    pub lease_for: Duration,
    /// How often it beats.
    pub every: Duration,
    /// The worker's registry entry (its `tasks` filled on each beat).
    pub entry: WorkerInfo,
}

pub(crate) async fn run<B: Broker>(
    broker: Arc<B>,
    in_flight: InFlight,
    beat: Beat,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let Beat {
        lease_for,
        every,
        mut entry,
    } = beat;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {
                if let Err(e) = broker.deregister_worker(&entry.id).await {
                    tracing::warn!(error = %e, "could not leave the workers registry; the entry expires");
                }
                return;
            }
        }
        let leases: Vec<_> = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(lease, _)| lease.clone())
            .collect();
        entry.tasks = leases.iter().map(|l| l.task_id).collect();
        // The entry lives a lease past the last beat (at least two beats).
        let ttl = lease_for.max(every * 2);
        if let Err(e) = broker.register_worker(&entry, ttl).await {
            tracing::warn!(error = %e, "could not refresh the workers registry entry; will retry");
        }
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
