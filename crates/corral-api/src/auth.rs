//! Token authentication: every API route but the dashboard shell needs
//! `Authorization: Bearer <token>`.
//!
//! The presented token is hashed (sha256) and looked up in the catalog,
//! which stores only hashes; the tenant it maps to is the [`Caller`] every
//! handler works for. A missing, malformed or unknown token is a 401 with the
//! same answer whatever the reason for unknown tokens, so a caller cannot
//! probe which tokens once existed. This module never decides what a tenant
//! may do: handlers scope every read and write to [`Caller::tenant`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::ApiState;
use super::errors::ApiError;
use corral_client::broker::Broker;
use corral_registry::tenant::{Tenant, Token};

/// The authenticated tenant of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the token belongs to, with its limits.
    pub tenant: Tenant,
}

impl Caller {
    /// The tenant's name: the scope of everything the request touches.
    pub fn name(&self) -> &str {
        &self.tenant.name
    }
}

/// The token in an `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Result<Token, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    let text = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "expected `Authorization: Bearer <token>`",
        ));
    }
    Ok(Token::from_presented(token))
}

impl<B: Broker + Clone> FromRequestParts<Arc<ApiState<B>>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState<B>>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        match state
            .registry
            .catalog()
            .tenant_for_token(&token.hash())
            .await?
        {
            Some(tenant) => Ok(Caller { tenant }),
            None => Err(ApiError::unauthorized("invalid token")),
        }
    }
}
