//! API errors: one type, one JSON shape, one status per kind.
//!
//! Every failure answers `{"error": {"kind": "...", "message": "..."}}` with
//! a status that follows from the kind: 400 for a malformed request (an
//! admin token without the `?tenant=` a route needs: `tenant_required`),
//! 401 for a missing or unknown token, 403 `admin_required` for a route
//! over every tenant asked with a tenant's token (the route is no secret,
//! what it shows is), 404 for anything the caller cannot see
//! (whether it does not exist or belongs to another tenant: the two are
//! never told apart), 409 for a name already taken or for a verb that does
//! not apply to a task's state (`wrong_state`), 413 for a body over its
//! cap, 422 for a module or job the registry refuses (a catalog quota too:
//! `too_many_modules`, `module_storage_full`, `too_many_jobs`,
//! `too_many_job_versions`, `too_many_handlers`), 429 for a full queue
//! or a tenant at its `max_queued` or `max_queues`,
//! 503 when the store or broker is unreachable or the server is busy (with
//! `Retry-After`). `kind` is stable and
//! machine-readable; module refusals use the sandbox's
//! [`LoadError::kind`](corral_sandbox::LoadError::kind).
//!
//! This module maps errors; it never decides policy. Internal failures are
//! logged here and answered without their details.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use corral_client::broker::BrokerError;
use corral_registry::catalog::CatalogError;
use corral_registry::registry::RegistryError;
use corral_registry::submit::SubmitError;
use corral_sandbox::LoadError;

/// A failed request: its status, a stable kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable kind (`job_not_found`, `core_module`, ...).
    pub kind: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    kind: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error of `kind` with `status`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is malformed; `message` says how.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 of `kind`: what was asked for does not exist for this caller.
    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(kind: &'static str, what: &str, limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            kind,
            format!("{what} is over its limit of {limit} bytes"),
        )
    }

    /// 401: no usable credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 500, logged with its cause; the caller learns only that it happened.
    pub fn internal(op: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(op, error = %cause, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{op} failed on the server; see its log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                kind: self.kind,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is a passing state (a store away, a budget full).
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        let status = match e {
            LoadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            LoadError::CompilerUnavailable(_) => {
                tracing::warn!(error = %e, "compiler unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, e.kind(), e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::TenantExists(_) => {
                Self::new(StatusCode::CONFLICT, "tenant_exists", e.to_string())
            }
            CatalogError::JobExists { .. } => {
                Self::new(StatusCode::CONFLICT, "job_exists", e.to_string())
            }
            CatalogError::OverQuota { quota, .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                quota.kind(),
                e.to_string(),
            ),
            CatalogError::InvalidTenantName(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            // A tenant the request was authenticated as no longer exists,
            // or an admin named one that does not.
            CatalogError::UnknownTenant(_) => Self::not_found("tenant_not_found", e.to_string()),
            CatalogError::TokenInUse => {
                Self::new(StatusCode::CONFLICT, "token_in_use", e.to_string())
            }
            CatalogError::InvalidTokenName(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            CatalogError::Unavailable(_) => {
                tracing::warn!(error = %e, "catalog unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the catalog store is unreachable; retry later",
                )
            }
            CatalogError::Corrupt(_) => Self::internal("catalog read", e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::Invalid(_) => Self::bad_request(message),
            SubmitError::UnknownTenant(_) => Self::not_found("tenant_not_found", message),
            SubmitError::JobNotFound(_) => Self::not_found("job_not_found", message),
            SubmitError::JobVersionNotFound { .. } => {
                Self::not_found("job_version_not_found", message)
            }
            SubmitError::Catalog(e) => e.into(),
            SubmitError::Broker(e) => e.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::AlreadyRegistered { .. } => {
                Self::new(StatusCode::CONFLICT, "job_exists", message)
            }
            RegistryError::UnknownJob { .. } => Self::not_found("job_not_found", message),
            RegistryError::UnknownVersion { .. } => {
                Self::not_found("job_version_not_found", message)
            }
            RegistryError::UnknownModule(_) => Self::not_found("module_not_found", message),
            RegistryError::ModuleTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "module_too_large", message)
            }
            RegistryError::OverTenantLimits(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "over_tenant_limit",
                message,
            ),
            RegistryError::Catalog(e) => e.into(),
            RegistryError::EmptyChain(_) => {
                Self::new(StatusCode::BAD_REQUEST, "empty_chain", message)
            }
            RegistryError::InvalidName(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_name", message)
            }
            RegistryError::InvalidLimits(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_limits", message)
            }
            RegistryError::Module(e) => e.into(),
            RegistryError::Io { .. } => Self::internal("reading a module", message),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::Unavailable { .. } => {
                tracing::warn!(error = %message, "broker unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "the broker is unreachable; retry later",
                )
            }
            BrokerError::Full { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
            }
            BrokerError::TooManyQueues { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_queues", message)
            }
            BrokerError::Invalid { .. } => Self::bad_request(message),
            BrokerError::Duplicate { .. } => {
                Self::new(StatusCode::CONFLICT, "duplicate_task", message)
            }
            BrokerError::Deduplicated { .. } => {
                Self::new(StatusCode::CONFLICT, "deduplicated", message)
            }
            BrokerError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            BrokerError::Conflict { .. } => Self::new(StatusCode::CONFLICT, "wrong_state", message),
            BrokerError::LeaseLost { .. } | BrokerError::Corrupt { .. } => {
                Self::internal("broker call", message)
            }
        }
    }
}
