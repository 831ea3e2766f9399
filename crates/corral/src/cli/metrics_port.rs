//! `--metrics-listen ADDR` of `corral worker` and `corral serve`: the
//! operator's port with `/metrics`, `/healthz` and `/readyz`
//! ([`crate::api::metrics`]).
//!
//! The address is bound before anything waits for Redis, so a wrong or
//! taken address fails the command at once; it serves once the broker and
//! the catalog are connected. It prints `metrics listening on
//! http://ADDR` (scripts and tests read the port from it when the address
//! asks for port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::registry::Registry;
use crate::worker::WorkerMetrics;

/// Where metrics and probes are served, and how many label values they
/// may take.
#[derive(Debug, Clone, Args)]
pub(super) struct MetricsArgs {
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this
    /// address (port 0 picks a free one); keep it on the operator's
    /// network: labels name tenants and jobs.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Most distinct tenants, and most distinct jobs, in metric labels;
    /// the rest are counted under `other`.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub metrics_max_labels: usize,
}

/// A bound metrics port, not serving yet.
pub(super) struct MetricsPort {
    listener: TcpListener,
    /// The worker's metrics, to hand to the worker.
    pub metrics: Arc<WorkerMetrics>,
}

impl MetricsArgs {
    /// Binds the port, if one was asked for.
    pub async fn bind(&self) -> anyhow::Result<Option<MetricsPort>> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        Ok(Some(MetricsPort {
            listener,
            metrics: Arc::new(WorkerMetrics::new(self.metrics_max_labels)),
        }))
    }
}

impl MetricsPort {
    /// Serves metrics and probes for `broker` and `registry` in the
    /// background, until the process ends.
    pub fn serve<B: Broker + Clone>(self, broker: B, registry: Registry) -> anyhow::Result<()> {
        let mut metrics = MetricsRegistry::default();
        self.metrics.register(&mut metrics, registry.sandbox());
        let router = crate::api::metrics::router(broker, registry, Arc::new(metrics));
        let addr = self.listener.local_addr()?;
        eprintln!("metrics listening on http://{addr}");
        let listener = self.listener;
        tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            if let Err(e) = crate::api::serve(listener, router, stop).await {
                tracing::warn!(error = %e, "the metrics port stopped");
            }
        });
        Ok(())
    }
}
