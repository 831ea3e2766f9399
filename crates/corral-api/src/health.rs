//! Probes for whatever runs the server: `/healthz` answers while the
//! process serves at all; `/readyz` answers 200 only when the broker and the
//! catalog both answer a small read within [`PROBE_TIMEOUT`].
//!
//! Neither needs a token (a load balancer or an orchestrator calls them),
//! so neither says more than "ok", "unreachable" or "timeout" per store:
//! never an address, an error text or a tenant's name.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use corral_client::broker::Broker;
use corral_core::task::{DEFAULT_QUEUE, DEFAULT_TENANT};

use crate::ApiState;

/// How long each readiness check may take: a store that takes longer is
/// as good as away for a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the broker and the catalog answer, else 503
/// naming which did not.
pub async fn readyz<B: Broker>(State(state): State<Arc<ApiState<B>>>) -> (StatusCode, Json<Value>) {
    let broker = probe(state.broker.stats(DEFAULT_TENANT, DEFAULT_QUEUE));
    let catalog = probe(state.registry.catalog().tenant(DEFAULT_TENANT));
    let (broker, catalog) = tokio::join!(broker, catalog);
    let ready = broker == "ok" && catalog == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "broker": broker,
        "catalog": catalog,
    });
    (status, Json(body))
}

/// "ok", "unreachable" (the read failed) or "timeout".
async fn probe<T, E: std::fmt::Display>(
    read: impl std::future::Future<Output = Result<T, E>>,
) -> &'static str {
    match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness probe: a store did not answer");
            "unreachable"
        }
        Err(_) => "timeout",
    }
}
