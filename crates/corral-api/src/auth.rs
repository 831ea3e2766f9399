//! Token authentication and the tenant a request acts on: every API route
//! but the dashboard shell and the probes needs
//! `Authorization: Bearer <token>`.
//!
//! [`authenticate`] runs before every `/v1` handler: the presented token is
//! hashed (sha256) and looked up in the catalog, which stores only hashes,
//! and becomes the request's [`Caller`]: a tenant's token, or an admin
//! token (`corral admin token`). A missing, malformed or unknown token is a
//! 401 with the same answer whatever the reason for unknown tokens, so a
//! caller cannot probe which tokens once existed. It also takes the
//! `tenant` query parameter out of the request (handlers' own query
//! parsers never see it) and keeps it for [`Scope`].
//!
//! Every handler that works on one tenant's things takes a [`Scope`], the
//! one place that decides which tenant that is ([`Caller::tenant_for`]):
//!
//! - a tenant's token acts on its own tenant. A `?tenant=` naming it is
//!   accepted; naming any other is 404 `tenant_not_found`, the very answer
//!   an admin gets for a tenant that does not exist, whether or not the
//!   named one does: a tenant learns nothing of the others;
//! - an admin token acts on the tenant `?tenant=NAME` names: 400
//!   `tenant_required` without one, 404 `tenant_not_found` for a name that
//!   is not a tenant (`default`, where tasks enqueued without a tenant land,
//!   is one, with the default limits).
//!
//! Routes over every tenant take the [`Caller`] and call
//! [`Caller::require_admin`] (403 `admin_required` for a tenant's token:
//! such a route's existence is no secret; what it would show is).
//!
//! This module never decides what a tenant may do beyond which tenant it
//! is: handlers scope every read and write to [`Scope::name`].

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::errors::ApiError;
use corral_client::broker::Broker;
use corral_registry::catalog::Catalog;
use corral_registry::submit::{SubmitError, find_tenant};
use corral_registry::tenant::{Principal, Tenant, Token, TokenId, valid_tenant_name};

/// The query parameter naming the tenant a request acts on.
pub const TENANT_PARAM: &str = "tenant";

/// Who a request's token is.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A tenant's token: it acts on that tenant (as stored, with its
    /// limits) and nothing else.
    Tenant(Tenant),
    /// An admin token, by its public id: it acts on any tenant, named per
    /// request.
    Admin(TokenId),
}

/// The `tenant` query parameter of a request, as [`authenticate`] took it
/// out (`None` when not given). Admin routes over every tenant read it as
/// an optional filter.
#[derive(Debug, Clone, Default)]
pub struct TenantParam(pub Option<String>);

impl Caller {
    /// Whether this is an admin token.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin(_))
    }

    /// Who acted, for logs: the tenant's name, or `admin:tok_…`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Tenant(tenant) => tenant.name.clone(),
            Caller::Admin(id) => format!("admin:{id}"),
        }
    }

    /// Refuses a tenant's token: 403 `admin_required`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin(_) => Ok(()),
            Caller::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_required",
                "this route needs an admin token (`corral admin token`)",
            )),
        }
    }

    /// The tenant a request acts on, `asked` being its `?tenant=` (see the
    /// module docs for the rules).
    pub async fn tenant_for(
        &self,
        catalog: &dyn Catalog,
        asked: Option<&str>,
    ) -> Result<Tenant, ApiError> {
        match (self, asked) {
            (Caller::Tenant(own), None) => Ok(own.clone()),
            (Caller::Tenant(own), Some(name)) if name == own.name => Ok(own.clone()),
            // Another tenant, or no tenant at all: the same answer.
            (Caller::Tenant(_), Some(name)) => Err(unknown_tenant(name)),
            (Caller::Admin(_), None) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "tenant_required",
                "an admin token acts on one tenant here: name it with `?tenant=NAME`",
            )),
            (Caller::Admin(_), Some(name)) => {
                if !valid_tenant_name(name) {
                    return Err(unknown_tenant(name));
                }
                match find_tenant(catalog, name).await {
                    Ok(tenant) => Ok(tenant),
                    Err(SubmitError::UnknownTenant(_)) => Err(unknown_tenant(name)),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// 404 `tenant_not_found`, worded as the catalog words it.
fn unknown_tenant(name: &str) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    ApiError::from(corral_registry::catalog::CatalogError::UnknownTenant(shown))
}

/// The tenant a request acts on, and who asked: what every handler over
/// one tenant's things takes.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The tenant, as stored (its limits apply to the request).
    pub tenant: Tenant,
    /// Who asked.
    pub caller: Caller,
}

impl Scope {
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

/// Decodes one `key=value` segment of a query string as the handlers'
/// parsers would.
fn decode_pair(segment: &str) -> Option<(String, String)> {
    let uri: Uri = format!("/?{segment}").parse().ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs.into_iter().next()
}

/// Takes every `tenant` parameter out of `uri`'s query; answers its value
/// (400 when given more than once) and the URI without it.
fn take_tenant(uri: &Uri) -> Result<(Option<String>, Option<Uri>), ApiError> {
    let Some(query) = uri.query() else {
        return Ok((None, None));
    };
    let mut found = None;
    let mut kept = Vec::new();
    for segment in query.split('&') {
        match decode_pair(segment) {
            Some((key, value)) if key == TENANT_PARAM => {
                if found.replace(value).is_some() {
                    return Err(ApiError::bad_request("give `tenant` once"));
                }
            }
            _ => kept.push(segment),
        }
    }
    if found.is_none() {
        return Ok((None, None));
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        rebuilt
            .parse()
            .map_err(|_| ApiError::bad_request("malformed query"))?,
    );
    let stripped = Uri::from_parts(parts).map_err(|_| ApiError::bad_request("malformed query"))?;
    Ok((found, Some(stripped)))
}

/// Authenticates a `/v1` request (401 unless its token is known) and takes
/// its `tenant` parameter out; the handler then finds the [`Caller`] and
/// the [`TenantParam`] among the request's extensions, through their
/// extractors and [`Scope`]'s.
pub async fn authenticate<B: Broker + Clone>(
    State(state): State<Arc<ApiState<B>>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match identify(&state, &parts).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let (tenant, stripped) = match take_tenant(&parts.uri) {
        Ok(taken) => taken,
        Err(e) => return e.into_response(),
    };
    if let Some(uri) = stripped {
        parts.uri = uri;
    }
    parts.extensions.insert(caller);
    parts.extensions.insert(TenantParam(tenant));
    next.run(Request::from_parts(parts, body)).await
}

async fn identify<B: Broker + Clone>(
    state: &ApiState<B>,
    parts: &Parts,
) -> Result<Caller, ApiError> {
    let token = bearer(parts)?;
    match state
        .registry
        .catalog()
        .principal_for_token(&token.hash())
        .await?
    {
        Some(Principal::Tenant(tenant)) => Ok(Caller::Tenant(tenant)),
        Some(Principal::Admin(id)) => Ok(Caller::Admin(id)),
        None => Err(ApiError::unauthorized("invalid token")),
    }
}

/// A route served without [`authenticate`]: a bug of the router, never a
/// client's; answered 401 rather than served unauthenticated.
fn unauthenticated_route() -> ApiError {
    tracing::error!("an API route that needs a token is served without authentication");
    ApiError::unauthorized("invalid token")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(unauthenticated_route)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TenantParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<TenantParam>()
            .cloned()
            .unwrap_or_default())
    }
}

impl<B: Broker + Clone> FromRequestParts<Arc<ApiState<B>>> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState<B>>,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let TenantParam(asked) = TenantParam::from_request_parts(parts, state).await?;
        let tenant = caller
            .tenant_for(state.registry.catalog().as_ref(), asked.as_deref())
            .await?;
        Ok(Scope { tenant, caller })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_parameter_is_taken_out_of_the_query() {
        let cases = [
            ("/v1/jobs", None, None),
            ("/v1/jobs?limit=5", None, None),
            ("/v1/jobs?tenant=acme", Some("acme"), Some("/v1/jobs")),
            (
                "/v1/jobs?after=a&tenant=acme&limit=5",
                Some("acme"),
                Some("/v1/jobs?after=a&limit=5"),
            ),
            // Encoded as a query parser would decode it.
            ("/v1/jobs?ten%61nt=a%63me", Some("acme"), Some("/v1/jobs")),
            ("/v1/jobs?tenant=", Some(""), Some("/v1/jobs")),
        ];
        for (uri, tenant, rest) in cases {
            let (found, stripped) = take_tenant(&uri.parse().unwrap()).unwrap();
            assert_eq!(found.as_deref(), tenant, "{uri}");
            assert_eq!(stripped.map(|u| u.to_string()).as_deref(), rest, "{uri}");
        }
        let twice = take_tenant(&"/v1/jobs?tenant=a&tenant=b".parse().unwrap());
        assert_eq!(twice.unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
