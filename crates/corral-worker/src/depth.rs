//! Samples the depth of the worker's queues for [`WorkerMetrics`], so a
//! scrape reads the last sample and never the broker.
//!
//! Every `every`, one [`Broker::queue_depths`] call for the queue names the
//! worker serves. A failed sample is logged and the previous one stays.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::WorkerMetrics;
use corral_client::broker::Broker;

pub(crate) async fn run<B: Broker>(
    broker: Arc<B>,
    queues: Vec<String>,
    every: Duration,
    metrics: Arc<WorkerMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        match broker.queue_depths(&queues).await {
            Ok(sample) => metrics.queue_depths(&sample),
            Err(e) => tracing::debug!(error = %e, "queue depth not sampled; will retry"),
        }
    }
}
