//! Reading request bodies under a byte cap, and parsing JSON ones.
//!
//! Bodies are read here rather than through axum's `Bytes`/`Json`
//! extractors so that every refusal is an [`ApiError`] in the API's JSON
//! shape, and so the cap can depend on the caller (a module upload is capped
//! by the tenant's `max_module_bytes`). A body over its cap is refused with
//! 413; up to [`DRAIN_MAX`] bytes of it are still read and dropped, so a
//! client that writes the whole body before reading the answer sees the 413
//! instead of a reset connection. This module never interprets content
//! beyond JSON syntax.

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

/// The most bytes of an over-limit body read (and dropped) before the 413.
pub const DRAIN_MAX: u64 = 16 << 20;

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

/// Reads `body` whole if it is at most `limit` bytes; otherwise refuses it
/// with a 413 of `kind` naming `what`.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    kind: &'static str,
    what: &str,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(kind, what, limit);
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit && n > DRAIN_MAX) {
        // Too much to drain: answer now; the connection closes unread.
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    // Trust a declared length for at most 1 MiB of up-front allocation: it
    // is the client's word, and the body may never come.
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(1 << 20) as usize);
    let mut seen: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the {what}: {e}")))?;
        seen += chunk.len() as u64;
        if seen > limit {
            if seen > DRAIN_MAX {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

/// Reads a JSON body of at most `limit` bytes into `T`; a body that is not
/// JSON, or not the expected shape, is a 400 saying where and why.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<T, ApiError> {
    let bytes = read_limited(headers, body, limit, "body_too_large", "JSON body").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}
