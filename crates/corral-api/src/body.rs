//! Reading request bodies under a byte cap, a pace and the body budget, and
//! parsing JSON ones.
//!
//! Bodies are read here rather than through axum's `Bytes`/`Json`
//! extractors so that every refusal is an [`ApiError`] in the API's JSON
//! shape, and so the cap can depend on the caller (a module upload is capped
//! by the tenant's `max_module_bytes`). Three bounds hold for every body:
//!
//! - **size**: a body over its cap is refused with 413, and nothing more of
//!   it is kept or reserved;
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
//! And whatever a handler leaves unread (a refusal before the body, a 413
//! part way) is read and dropped after the answer is made and before it is
//! sent ([`drain_unread`], a layer over every route): up to [`DRAIN_MAX`]
//! bytes, at the same pace, for at most one [`ApiConfig::body_timeout`].
//! A server that closes with unread bytes makes the kernel reset the
//! connection, and the reset can discard the answer a client that writes
//! its whole body before reading has not read yet.
//!
//! This module never interprets content beyond JSON syntax.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, EXPECT};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ApiConfig;
use super::budget::{Refusal, Reservation};
use super::errors::ApiError;

/// The most bytes of a request's body read and dropped after its handler
/// left them unread (see [`drain_unread`]).
pub const DRAIN_MAX: u64 = 16 << 20;

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
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let first = declared.unwrap_or(FIRST_STEP.min(limit));
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
        if seen > limit {
            // What is kept and reserved goes at once; the rest is drained
            // after the answer.
            return Err(too_large());
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
    Ok(Held {
        bytes: Bytes::from(buf),
        reservation: Arc::new(reservation),
    })
}

/// Layer over every route: runs the handler with a body that hands back
/// whatever it leaves unread, then reads that and drops it (see the module
/// docs) before the answer goes out. A body declared longer than
/// [`DRAIN_MAX`] is not read at all: its connection closes unread. Nor is
/// the body of a client that waits for `100 Continue` and was never told
/// to send it: reading would ask for the body the refusal is about.
pub async fn drain_unread(
    State(config): State<Arc<ApiConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let too_long = declared_length(&parts.headers).is_some_and(|n| n > DRAIN_MAX);
    let (back, mut unread) = oneshot::channel();
    let body = Body::new(HandsBack {
        inner: Some(body),
        back: (!too_long).then_some(back),
        waits_to_send: parts.headers.contains_key(EXPECT),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    // The handler has returned, so the body it was given is dropped: what
    // it left unread is in the channel or nowhere.
    if let Ok(rest) = unread.try_recv() {
        let _ = tokio::time::timeout(config.body_timeout, drop_all(&config, rest)).await;
    }
    response
}

/// Reads `body` and drops it, up to [`DRAIN_MAX`] bytes, at `config`'s
/// pace; stops early when it breaks, stalls or drips.
async fn drop_all(config: &ApiConfig, body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen: u64 = 0;
    let start = Instant::now();
    let mut last = start;
    while seen <= DRAIN_MAX {
        let deadline = next_deadline(config, start, last, seen);
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                last = Instant::now();
                seen += chunk.len() as u64;
            }
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

/// A request body that, dropped before its end, sends itself back to
/// [`drain_unread`].
struct HandsBack {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
    /// The client sends the body only once told to (`Expect: 100-continue`),
    /// which the first read of it does.
    waits_to_send: bool,
}

impl HttpBody for HandsBack {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.waits_to_send = false;
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for HandsBack {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take())
            && !inner.is_end_stream()
            && !self.waits_to_send
        {
            let _ = back.send(inner);
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
