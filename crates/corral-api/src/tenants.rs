//! `GET /v1/tenants`: the tenants, by name, for an admin token only (403
//! `admin_required` for a tenant's token).
//!
//! It pages as `GET /v1/jobs` does: `?limit=` (default 100, at most the
//! API's `max_list`) tenants after `?after=`, the answer's `next` naming
//! where the next page starts, and it stops at `max_list_bytes` too. Each
//! row is a tenant's name, limits, creation time and token count, never a
//! token. The catalog reads only the page ([`Catalog::tenants_page`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::errors::ApiError;
use super::extract::Query;
use super::page::BoundedList;
use super::{ApiState, Caller};
use corral_client::broker::Broker;
#[cfg(doc)]
use corral_registry::catalog::Catalog;

/// The query of `GET /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTenants {
    /// Only tenants named after this (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (default 100, at most the API's `max_list`).
    pub limit: Option<usize>,
}

/// `GET /v1/tenants`: `{"tenants": [{name, limits, created_at, tokens}…],
/// "truncated": bool, "next": name or null}`.
pub async fn list<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    caller: Caller,
    Query(query): Query<ListTenants>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let max = state.config.max_list;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!("`limit` must be 1 to {max}")));
    }
    // One more than asked: whether another page follows.
    let tenants = state
        .registry
        .catalog()
        .tenants_page(query.after.as_deref(), limit + 1)
        .await?;
    let mut list = BoundedList::new("tenants", state.config.max_list_bytes)?;
    let mut last = None;
    for tenant in tenants.iter().take(limit) {
        if !list.push(tenant)? {
            break;
        }
        last = Some(tenant.tenant.name.as_str());
    }
    let more = list.truncated() || tenants.len() > limit;
    let next = match (more, last) {
        (true, Some(name)) => serde_json::Value::from(name),
        _ => serde_json::Value::Null,
    };
    list.finish(&[("next", next)])
}
