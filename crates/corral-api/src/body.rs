//! Reading request bodies under a byte cap, a pace and the body budget, and
//! parsing JSON ones.
//!
//! Bodies are read here rather than through axum's `Bytes`/`Json`
//! extractors so that every refusal is an [`ApiError`] in the API's JSON
//! shape, and so the cap can depend on the caller (a module upload is capped
//! by the tenant's `max_module_bytes`). Three bounds hold for every body:
//!
//! - **size**: a body over its cap is refused with 413; up to [`DRAIN_MAX`]
//!   bytes of it are still read and dropped (never kept), so a client that
//!   writes the whole body before reading the answer sees the 413 instead of
//!   a reset connection;
//! - **memory**: the bytes kept are reserved in the API's [`BodyBudget`](crate::BodyBudget)
//!   before they are read (the declared `Content-Length` at once, or growing
//!   with the chunks), so bodies in flight never hold more than the budget;
//!   past it the answer is 503 `body_budget_full` (with `Retry-After`);
//! - **pace**: no [`ApiConfig::body_timeout`] may pass without a chunk, and
//!   once that long has passed since the body began, it must have averaged
//!   [`ApiConfig::min_body_rate`] bytes a second; a body that stalls or
//!   drips is cut with 408 `body_timeout` (and the connection closed), so a
//!   client sending a byte a second holds nothing for long.
//!
//! This module never interprets content beyond JSON syntax.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::ApiConfig;
use super::budget::{Refusal, Reservation};
use super::errors::ApiError;

/// The most bytes of an over-limit body read (and dropped) before the 413.
pub const DRAIN_MAX: u64 = 16 << 20;

/// The most bytes of a request refused before its handler ran (no valid
/// token, a malformed query) read and dropped before the answer: enough
/// for a module upload or a JSON body, and all anyone without a token can
/// make the server read.
pub const REFUSED_DRAIN_MAX: u64 = 1 << 20;

/// What a body without a declared length reserves first; it doubles from
/// there as chunks arrive.
const FIRST_STEP: u64 = 64 << 10;

/// A body read whole, with the budget it holds: keep this alive as long as
/// the bytes (or copies of them) are in use.
#[derive(Debug)]
pub struct Held {
    /// The body.
    pub bytes: Bytes,
    /// Its share of the body budget, released when the last clone drops.
    pub reservation: Arc<Reservation>,
}

/// The declared `Content-Length`, if any and readable.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The 503 for a body the budget has no room for.
fn over_budget(refusal: Refusal) -> ApiError {
    let message = match refusal {
        Refusal::Full => "the server holds its limit of request bodies in flight; retry shortly",
        Refusal::TenantShare => {
            "this tenant's other requests in flight hold its share of request bodies; retry when they are done"
        }
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "body_budget_full", message)
}

/// The time by which the next chunk must arrive: `stall` after the last
/// one, and no later than the body's average rate allows.
fn next_deadline(config: &ApiConfig, start: Instant, last: Instant, seen: u64) -> Instant {
    let stall = config.body_timeout;
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let by_stall = last.checked_add(stall).unwrap_or_else(far);
    if config.min_body_rate == 0 {
        return by_stall;
    }
    let earned = Duration::from_secs_f64(seen as f64 / config.min_body_rate as f64);
    let by_rate = start
        .checked_add(stall)
        .and_then(|t| t.checked_add(earned))
        .unwrap_or_else(far);
    by_stall.min(by_rate)
}

/// Makes room in `buf` for `need` bytes in all, never past `reserved`.
fn make_room(buf: &mut Vec<u8>, need: usize, reserved: usize) {
    if need > buf.capacity() {
        let target = need.max(reserved.min(buf.capacity().saturating_mul(2)));
        buf.reserve_exact(target - buf.len());
    }
}

/// Reads `body` whole if it is at most `limit` bytes, for `tenant`, under
/// `config`'s budget and pace; otherwise refuses it with a 413 of `kind`
/// naming `what`.
pub async fn read_limited(
    config: &ApiConfig,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    kind: &'static str,
    what: &str,
) -> Result<Held, ApiError> {
    let too_large = || ApiError::too_large(kind, what, limit);
    let declared = declared_length(headers);
    let declared_over = declared.is_some_and(|n| n > limit);
    if declared.is_some_and(|n| n > limit && n > DRAIN_MAX) {
        // Too much to drain: answer now; the connection closes unread.
        return Err(too_large());
    }
    // A body declared over its cap is only drained: it reserves nothing.
    let first = match declared {
        _ if declared_over => 0,
        Some(n) => n,
        None => FIRST_STEP.min(limit),
    };
    let mut reservation = config
        .body_budget
        .reserve(tenant, first)
        .map_err(over_budget)?;
    let mut stream = body.into_data_stream();
    // Memory follows the bytes that arrive, not the declared length: the
    // declared length is the client's word, and the body may never come.
    let mut buf: Vec<u8> = Vec::new();
    let mut seen: u64 = 0;
    let start = Instant::now();
    let mut last = start;
    loop {
        let deadline = next_deadline(config, start, last, seen);
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            return Err(body_timeout(config));
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the {what}: {e}")))?;
        last = Instant::now();
        seen += chunk.len() as u64;
        if declared_over || seen > limit {
            if seen > DRAIN_MAX {
                break;
            }
            continue;
        }
        if seen > reservation.bytes() {
            // No declared length: double the reservation, or take just
            // what is needed when doubling does not fit.
            let doubled = reservation.bytes().saturating_mul(2).min(limit).max(seen);
            if reservation.grow_to(doubled).is_err() {
                reservation.grow_to(seen).map_err(over_budget)?;
            }
        }
        // Both fit in usize: they are at most `limit`, which was reserved.
        let reserved = usize::try_from(reservation.bytes()).unwrap_or(usize::MAX);
        let need = buf.len() + chunk.len();
        make_room(&mut buf, need, reserved);
        buf.extend_from_slice(&chunk);
    }
    if declared_over || seen > limit {
        return Err(too_large());
    }
    Ok(Held {
        bytes: Bytes::from(buf),
        reservation: Arc::new(reservation),
    })
}

/// Reads what is left of a refused request's `body` and drops it, up to
/// `max` bytes and at `config`'s pace, so that a client that writes its
/// whole body before reading the answer gets the answer: a server that
/// closes with unread bytes makes the kernel reset the connection, and the
/// reset can discard the answer the client had not read yet. A body
/// declared longer than `max` is not read at all (its connection closes
/// unread), and a longer undeclared one only up to `max`. Keeps nothing.
pub async fn drain(config: &ApiConfig, headers: &HeaderMap, body: Body, max: u64) {
    if declared_length(headers).is_some_and(|n| n > max) {
        return;
    }
    let mut stream = body.into_data_stream();
    let mut seen: u64 = 0;
    let start = Instant::now();
    let mut last = start;
    while seen <= max {
        let deadline = next_deadline(config, start, last, seen);
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                last = Instant::now();
                seen += chunk.len() as u64;
            }
            // Ended, broken, stalled or dripping: nothing more to wait for.
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

/// The 408 for a body that stalled or dripped.
fn body_timeout(config: &ApiConfig) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body stalled for {} ms or arrived slower than {} bytes/s",
            config.body_timeout.as_millis(),
            config.min_body_rate
        ),
    )
}

/// Reads a JSON body of at most [`ApiConfig::max_json_bytes`] for `tenant`
/// into `T`; a body that is not JSON, or not the expected shape, is a 400
/// saying where and why.
pub async fn read_json<T: DeserializeOwned>(
    config: &ApiConfig,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let held = read_limited(
        config,
        tenant,
        headers,
        body,
        config.max_json_bytes,
        "body_too_large",
        "JSON body",
    )
    .await?;
    let bytes = &held.bytes;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}
