//! Stops tasks this worker runs when their cancel is asked for.
//!
//! Waits on the broker ([`Broker::cancel_requests`]) for ids of cancelled
//! tasks this worker holds; for each still in flight, it takes the task out
//! of the in-flight map, aborts its runner (dropping the handler call: a
//! guest that computes is stopped at its next epoch tick, within a
//! millisecond, and one waiting in a host call at once) and acks
//! [`Outcome::Cancelled`]. The broker names the handler that was running
//! (the task's checkpoint). A cancel for a task no longer here (finished
//! meanwhile, or never ours) is ignored: the broker settles it. Broker
//! errors are logged and the wait starts again after a pause; they never
//! stop the worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Finished, InFlight};
use corral_client::broker::{Broker, Outcome, WorkerId};
use corral_core::task::TaskError;

/// One wait for cancels; the loop waits again right after.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run<B: Broker>(
    broker: Arc<B>,
    worker: WorkerId,
    in_flight: InFlight,
    ack_tx: mpsc::UnboundedSender<Finished>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ids = tokio::select! {
            _ = stop.changed() => return,
            got = broker.cancel_requests(&worker, WAIT) => got,
        };
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for cancels failed; will retry");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        for id in ids {
            let held = in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let Some((lease, abort)) = held else {
                continue;
            };
            abort.abort();
            tracing::info!(task = %id, "task cancelled; its handler was stopped");
            let error = TaskError {
                kind: "cancelled".into(),
                message: "the task was cancelled while it ran".into(),
                retryable: false,
                handler_index: None,
            };
            let _ = ack_tx.send((lease, Outcome::Cancelled(error), None));
        }
    }
}
