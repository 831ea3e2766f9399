//! Request-level guards around every route: the whole-request time limit,
//! and the JSON shape of every error, whoever produced it.
//!
//! [`limit_time`] cuts a request that is not answered within its bound (the
//! API's `request_timeout`; `max_wait` more for the long-poll `wait`) with
//! 503 `request_timeout`, so a stalled store or a slow client holds a
//! connection for a bounded time. [`json_errors`] is the outermost layer: an
//! error answer that is not already the API's JSON shape (axum's own
//! rejections, a layer's bare status) is rewritten into it, keeping its
//! status and headers and, as the message, up to [`MESSAGE_MAX`] bytes of
//! its text. A 408 also closes the connection: the request body it cut is
//! half read. This module decides no policy beyond those two.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;

/// The most bytes of a non-JSON error's text kept as the JSON message.
pub const MESSAGE_MAX: usize = 1024;

/// Answers 503 `request_timeout` if the rest of the stack takes longer than
/// `limit`.
pub async fn limit_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request was not done within {} ms; retry later",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

/// The stable kind for an error status no handler named.
fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "route_not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "bad_request",
    }
}

fn is_api_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites an error answer that is not the API's JSON into it.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let mut response = if is_api_json(&response) {
        response
    } else {
        let (mut parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, MESSAGE_MAX * 4)
            .await
            .ok()
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        let mut cut = MESSAGE_MAX.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let json = ApiError::new(status, kind_of(status), &text[..cut]).into_response();
        let (json_parts, json_body) = json.into_parts();
        parts.headers.remove(CONTENT_LENGTH);
        for (name, value) in &json_parts.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        Response::from_parts(parts, json_body)
    };
    if status == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::header::{ALLOW, CONTENT_TYPE};

    use super::*;

    #[tokio::test]
    async fn a_bare_error_becomes_the_json_shape_and_keeps_its_headers() {
        for (status, text) in [
            (
                StatusCode::BAD_REQUEST,
                "Invalid URL: Cannot parse `\u{fffd}`",
            ),
            (StatusCode::METHOD_NOT_ALLOWED, ""),
            (StatusCode::PAYLOAD_TOO_LARGE, "too big"),
            (StatusCode::REQUEST_TIMEOUT, "slow"),
            (StatusCode::INTERNAL_SERVER_ERROR, "boom"),
        ] {
            let bare = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(ALLOW, "GET")
                .body(Body::from(text.repeat(1 + MESSAGE_MAX / text.len().max(1))))
                .unwrap();
            let json = json_errors(bare).await;
            assert_eq!(json.status(), status);
            assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(json.headers()[ALLOW], "GET");
            assert_eq!(
                json.headers().get(CONNECTION).is_some(),
                status == StatusCode::REQUEST_TIMEOUT
            );
            let bytes = axum::body::to_bytes(json.into_body(), 1 << 20)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"]["kind"], kind_of(status));
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.is_empty() && message.len() <= MESSAGE_MAX);
        }
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_through() {
        let api = ApiError::bad_request("nope").into_response();
        let passed = json_errors(api).await;
        let bytes = axum::body::to_bytes(passed.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("nope"));
        let ok = Response::new(Body::from("plain"));
        let passed = json_errors(ok).await;
        assert_eq!(passed.status(), StatusCode::OK);
    }
}
