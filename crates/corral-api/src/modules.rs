//! Module routes: upload a component, ask whether the tenant has one.
//!
//! An upload is read under the tenant's `max_module_bytes` (413 past it),
//! validated by the sandbox off the async threads (compiling is CPU work:
//! a component, the handler world, only imports the host provides; each
//! refusal a 422 with its own kind), then stored under its sha256 in the
//! tenant's space. The same bytes uploaded by two tenants are two entries;
//! a tenant can only ever name its own.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::body::read_limited;
use super::errors::ApiError;
use super::extract::Path;
use super::{ApiState, Scope};
use corral_client::broker::Broker;
use corral_sandbox::ModuleHash;

/// What the module routes answer.
#[derive(Debug, Serialize)]
pub struct ModuleInfo {
    /// The module's sha256, lowercase hex: what job definitions name.
    pub hash: ModuleHash,
    /// Its size in bytes.
    pub size: u64,
}

/// Content types an upload may declare (or none at all).
const WASM_TYPES: [&str; 2] = ["application/wasm", "application/octet-stream"];

/// `POST /v1/modules`: validates and stores the body; answers its hash.
pub async fn upload<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ModuleInfo>), ApiError> {
    if let Some(declared) = headers.get(CONTENT_TYPE) {
        let declared = declared.to_str().unwrap_or_default();
        let essence = declared.split(';').next().unwrap_or_default().trim();
        if !WASM_TYPES.iter().any(|t| essence.eq_ignore_ascii_case(t)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("upload the module's bytes as `application/wasm`, not `{declared}`"),
            ));
        }
    }
    let cap = scope
        .tenant
        .limits
        .max_module_bytes
        .min(state.registry.sandbox().config().max_module_bytes);
    let held = read_limited(
        &state.config,
        scope.name(),
        &headers,
        body,
        cap,
        "module_too_large",
        "module",
    )
    .await?;
    let size = held.bytes.len() as u64;
    // The body's share of the budget lasts until the module is stored,
    // compile included: `add_module` validates it (bounded, off the async
    // threads, answering as slowly for bytes another tenant uploaded as for
    // new ones) before storing it.
    let _budget = held.reservation.clone();
    let hash = state.registry.add_module(scope.name(), &held.bytes).await?;
    tracing::info!(tenant = scope.name(), by = %scope.caller.actor(), %hash, size, "module uploaded");
    Ok((StatusCode::CREATED, Json(ModuleInfo { hash, size })))
}

/// `GET /v1/modules/{hash}`: the module if this tenant uploaded it.
pub async fn show<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Path(hash): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    let not_found = || ApiError::not_found("module_not_found", format!("unknown module {hash}"));
    let parsed = ModuleHash::parse(&hash).ok_or_else(not_found)?;
    let bytes = state
        .registry
        .catalog()
        .module(scope.name(), &parsed)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ModuleInfo {
        hash: parsed,
        size: bytes.len() as u64,
    }))
}
