//! Path and query extractors whose every refusal is an [`ApiError`].
//!
//! axum's own `Path` and `Query` answer a refusal as `text/plain` (a path
//! segment whose percent-encoding is not UTF-8, a query that does not parse);
//! these wrap them and answer the API's JSON shape instead, with the same
//! status and axum's explanation as the message. Handlers use these, never
//! axum's. This module only translates refusals; what a value means is the
//! handler's business.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

/// The path parameters, deserialized into `T`.
#[derive(Debug)]
pub struct Path<T>(pub T);

/// The query string, deserialized into `T`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) => Err(path_refused(e)),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(query_refused(e)),
        }
    }
}

/// A path that did not deserialize: the client's fault (400), unless the
/// route itself is wrong (axum says 500; logged as ours).
fn path_refused(e: PathRejection) -> ApiError {
    if e.status().is_server_error() {
        return ApiError::internal("path extraction", e.body_text());
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("malformed path: {}", e.body_text()),
    )
}

fn query_refused(e: QueryRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}
