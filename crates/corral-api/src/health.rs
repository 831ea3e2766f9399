//! Probes for whatever runs the server: `/healthz` answers while the
//! process serves at all; `/readyz` answers 200 only when the broker and the
//! catalog both answer a small read within [`PROBE_TIMEOUT`].
//!
//! Neither needs a token (a load balancer or an orchestrator calls them),
//! so neither says more than "ok", "unreachable" or "timeout" per store:
//! never an address, an error text or a tenant's name. And since anyone
//! may call `/readyz`, its reads are shared: one probe at a time, its
//! answer reused for [`READY_FRESH`], so a flood of probes costs the stores
//! no more than one caller would.

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use serde_json::{Value, json};

use corral_client::broker::Broker;
use corral_core::task::{DEFAULT_QUEUE, DEFAULT_TENANT};
use corral_registry::registry::Registry;

/// How long each readiness check may take: a store that takes longer is
/// as good as away for a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long a readiness answer is reused.
pub const READY_FRESH: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was probed; the lock is held
/// while probing, so concurrent callers wait for that probe's answer.
#[derive(Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(Instant, StatusCode, Value)>>);

/// `GET /readyz`: 200 when the broker and the catalog answer, else 503
/// naming which did not; a probe younger than [`READY_FRESH`] is reused.
pub async fn readyz<B: Broker>(
    broker: &B,
    registry: &Registry,
    cache: &ReadyCache,
) -> (StatusCode, Json<Value>) {
    let mut last = cache.0.lock().await;
    if let Some((at, status, body)) = last.as_ref()
        && at.elapsed() < READY_FRESH
    {
        return (*status, Json(body.clone()));
    }
    let (status, body) = probe_stores(broker, registry).await;
    *last = Some((Instant::now(), status, body.clone()));
    (status, Json(body))
}

async fn probe_stores<B: Broker>(broker: &B, registry: &Registry) -> (StatusCode, Value) {
    let broker = probe(broker.stats(DEFAULT_TENANT, DEFAULT_QUEUE));
    let catalog = probe(registry.catalog().tenant(DEFAULT_TENANT));
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
    (status, body)
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
