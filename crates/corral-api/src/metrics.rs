//! The operator's port: `/metrics` (Prometheus), `/healthz` and `/readyz`,
//! served by `corral worker --metrics-listen` and `corral serve
//! --metrics-listen`.
//!
//! It is a listener of its own, never the public API's: metric labels name
//! tenants and jobs, which one tenant must not learn about another, so the
//! port belongs on the operator's network. A scrape encodes what the
//! metrics hold already (counters, and gauges sampled in the background);
//! it never reads the broker, so scrapes cost the stores nothing, however
//! often they come. `/readyz` is shared and cached like the API's
//! ([`crate::health`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::health;
use corral_client::broker::Broker;
use corral_registry::registry::Registry;

/// The content type of the OpenMetrics text Prometheus scrapes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Probes<B> {
    broker: B,
    registry: Registry,
    metrics: Arc<MetricsRegistry>,
    ready: health::ReadyCache,
}

/// `/metrics`, `/healthz` and `/readyz` for a process whose broker is
/// `broker`, whose catalog is `registry`'s, and whose metrics are in
/// `metrics`.
pub fn router<B: Broker + Clone>(
    broker: B,
    registry: Registry,
    metrics: Arc<MetricsRegistry>,
) -> Router {
    Router::new()
        .route("/metrics", get(scrape::<B>))
        .route("/healthz", get(health::healthz))
        .route(
            "/readyz",
            get(|State(p): State<Arc<Probes<B>>>| async move {
                health::readyz(&p.broker, &p.registry, &p.ready).await
            }),
        )
        .with_state(Arc::new(Probes {
            broker,
            registry,
            metrics,
            ready: health::ReadyCache::default(),
        }))
}

async fn scrape<B: Broker>(State(p): State<Arc<Probes<B>>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &p.metrics) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics did not encode");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
