//! The recoverer and scheduler: periodic [`Broker::maintain`] calls.
//!
//! Each pass makes due delayed and retrying tasks pending, returns tasks whose
//! lease expired (their worker died or stalled) to pending, and trims finished
//! records past retention. Every worker runs it; the passes are idempotent, so
//! several workers doing it at once only share the work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use corral_client::broker::Broker;

pub(crate) async fn run<B: Broker>(
    broker: Arc<B>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        match broker.maintain().await {
            Ok(report) => {
                if report.recovered + report.expired_dead > 0 {
                    tracing::info!(
                        recovered = report.recovered,
                        dead = report.expired_dead,
                        "recovered tasks with expired leases"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "maintenance pass failed; will retry"),
        }
    }
}
