//! `GET /v1/usage`: what the tenant's tasks cost, day by day (the token's
//! tenant, or the one an admin token names with `?tenant=`).
//!
//! The counters are the broker's ([`Broker::usage`]), kept per tenant and
//! day atomically with each stored checkpoint and ack. A tenant sees only
//! its own. The range is bounded (at most the days usage is kept), so a
//! request costs a bounded number of reads however long the tenant has
//! been running.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::extract::Query;
use super::{ApiState, Scope};
use corral_client::broker::Broker;
use corral_core::metering::{DailyUsage, Usage, usage_default_since};

/// `?since=YYYY-MM-DD&until=YYYY-MM-DD` (UTC days, both included).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
}

/// The answer: each day that had any usage, and their sum.
#[derive(Debug, Serialize)]
pub struct UsageReport {
    tenant: String,
    since: NaiveDate,
    until: NaiveDate,
    days: Vec<DailyUsage>,
    total: Usage,
}

/// `GET /v1/usage`.
pub async fn show<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    scope: Scope,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let until = query.until.unwrap_or_else(|| Utc::now().date_naive());
    let since = query.since.unwrap_or_else(|| usage_default_since(until));
    let days = state.broker.usage(scope.name(), since..=until).await?;
    let mut total = Usage::default();
    for d in &days {
        total.merge(&d.usage);
    }
    Ok(Json(UsageReport {
        tenant: scope.name().to_owned(),
        since,
        until,
        days,
        total,
    }))
}
