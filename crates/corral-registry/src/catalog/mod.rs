//! The catalog: where tenants, module bytes and job definitions are stored.
//!
//! A [`Catalog`] is plain storage with the few atomic operations the registry
//! needs (create a tenant once, add a job version without racing another
//! writer). Every record is scoped by tenant: no call returns another
//! tenant's data, whatever it is asked; the operator's calls are the only
//! ones over every tenant ([`Catalog::tenants_page`], the admin tokens),
//! and callers give them to admin tokens and operators only. The in-memory
//! catalog backs the embedded setup; the Redis one shares the broker's
//! server.
//!
//! It also enforces the tenant's storage quotas ([`Quota`]): the count is
//! checked in the same atomic step as the write it bounds (under the memory
//! catalog's lock, inside the Redis catalog's scripts), against the limits
//! stored with the tenant at that moment ([`TenantLimits::default`] for a
//! tenant not in the catalog, such as the embedded setup's `default`), so no
//! number of concurrent requests stores one more than the limit.
//!
//! It never compiles or validates wasm (the registry does, through the
//! sandbox) and never sees tasks.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::job::JobDefinition;
use crate::tenant::{Principal, Tenant, TenantInfo, TenantLimits, TokenHash, TokenId, TokenInfo};
use corral_sandbox::ModuleHash;

pub use memory::MemoryCatalog;
pub use redis::RedisCatalog;

/// A per-tenant storage bound the catalog enforces, each a field of
/// [`TenantLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Modules stored (`max_modules`).
    Modules,
    /// Bytes of modules stored, all together (`max_module_storage_bytes`).
    ModuleStorage,
    /// Jobs (names) registered (`max_jobs`).
    Jobs,
    /// Versions of one job (`max_job_versions`).
    JobVersions,
    /// Handlers in one job's chain (`max_handlers_per_job`).
    HandlersPerJob,
}

impl Quota {
    /// The [`TenantLimits`] field that sets it.
    pub fn field(self) -> &'static str {
        match self {
            Quota::Modules => "max_modules",
            Quota::ModuleStorage => "max_module_storage_bytes",
            Quota::Jobs => "max_jobs",
            Quota::JobVersions => "max_job_versions",
            Quota::HandlersPerJob => "max_handlers_per_job",
        }
    }

    /// A stable machine-readable name for the refusal (the API's error
    /// kind).
    pub fn kind(self) -> &'static str {
        match self {
            Quota::Modules => "too_many_modules",
            Quota::ModuleStorage => "module_storage_full",
            Quota::Jobs => "too_many_jobs",
            Quota::JobVersions => "too_many_job_versions",
            Quota::HandlersPerJob => "too_many_handlers",
        }
    }

    /// The value of this quota in `limits`.
    pub fn limit(self, limits: &TenantLimits) -> u64 {
        match self {
            Quota::Modules => u64::from(limits.max_modules),
            Quota::ModuleStorage => limits.max_module_storage_bytes,
            Quota::Jobs => u64::from(limits.max_jobs),
            Quota::JobVersions => u64::from(limits.max_job_versions),
            Quota::HandlersPerJob => u64::from(limits.max_handlers_per_job),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Quota::Modules => "modules stored",
            Quota::ModuleStorage => "bytes of modules stored",
            Quota::Jobs => "jobs",
            Quota::JobVersions => "versions of this job",
            Quota::HandlersPerJob => "handlers in one job",
        }
    }
}

/// Refuses a definition whose chain is longer than the tenant may have; the
/// catalogs call it where they store versions.
pub fn check_handlers(
    definition: &JobDefinition,
    limits: &TenantLimits,
) -> Result<(), CatalogError> {
    let limit = Quota::HandlersPerJob.limit(limits);
    if definition.handlers.len() as u64 > limit {
        return Err(CatalogError::OverQuota {
            quota: Quota::HandlersPerJob,
            limit,
        });
    }
    Ok(())
}

/// What storage can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A tenant of that name exists.
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    /// A tenant may not be created with that name (malformed or reserved);
    /// the text says why.
    #[error("{0}")]
    InvalidTenantName(String),
    /// Storing would take the tenant past one of its quotas.
    #[error(
        "over the tenant's limit of {limit} {} (`{}`); ask the operator to raise it",
        .quota.what(),
        .quota.field()
    )]
    OverQuota {
        /// Which quota.
        quota: Quota,
        /// Its value for the tenant.
        limit: u64,
    },
    /// No tenant of that name exists.
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
    /// The token already names a tenant or the operator: a token is one
    /// tenant's or an admin's, never both (generated tokens never collide;
    /// this guards the rule, not chance).
    #[error("that token is already in use")]
    TokenInUse,
    /// An admin token's name is not acceptable; the text says why.
    #[error("{0}")]
    InvalidTokenName(String),
    /// The job exists and replace was not asked for.
    #[error("job `{name}` is already registered (version {version}); replace it explicitly")]
    JobExists {
        /// The job.
        name: String,
        /// Its current version.
        version: u32,
    },
    /// The store is unreachable or failed.
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    /// A stored record did not parse.
    #[error("corrupt catalog record: {0}")]
    Corrupt(String),
}

/// Storage for tenants, modules and job definitions.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Creates a tenant with its first token; fails if the name is taken,
    /// malformed or reserved ([`crate::tenant::check_new_tenant_name`]).
    async fn create_tenant(&self, tenant: &Tenant, token: &TokenHash) -> Result<(), CatalogError>;

    /// The tenant of that name.
    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, CatalogError>;

    /// The tenant a token belongs to; `None` for an unknown token and for
    /// an admin token (which belongs to no tenant).
    async fn tenant_for_token(&self, token: &TokenHash) -> Result<Option<Tenant>, CatalogError>;

    /// Who a token is: a tenant's (with the tenant as stored) or an admin's;
    /// `None` for a token the catalog does not know (never issued, or
    /// revoked). What authentication asks.
    async fn principal_for_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<Principal>, CatalogError>;

    /// Stores an admin token (`name`, an operator's note, checked with
    /// [`crate::tenant::check_token_name`]); answers its listing. A hash
    /// that already names a tenant or an admin is
    /// [`CatalogError::TokenInUse`].
    async fn add_admin_token(
        &self,
        token: &TokenHash,
        name: Option<&str>,
    ) -> Result<TokenInfo, CatalogError>;

    /// The admin tokens (ids, names and creation times, oldest first).
    /// Only operators make them, one at a time, so there are few.
    async fn admin_tokens(&self) -> Result<Vec<TokenInfo>, CatalogError>;

    /// Revokes an admin token by its id: it stops working at once. Returns
    /// whether there was one. Never touches a tenant's token.
    async fn revoke_admin_token(&self, id: &TokenId) -> Result<bool, CatalogError>;

    /// A page of tenants, by name: at most `limit` of them, those named
    /// after `after` when given (the previous page's last name), each with
    /// its creation time and token count. Reads only the page, however many
    /// tenants there are. Tenants created before the catalog indexed them
    /// are not listed (they work as before).
    async fn tenants_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TenantInfo>, CatalogError>;

    /// Gives an existing tenant one more token. Rotating a token is: add a
    /// new one, move the clients to it, revoke the old one.
    async fn add_token(&self, tenant: &str, token: &TokenHash) -> Result<(), CatalogError>;

    /// Revokes a tenant's token: from now on it names no tenant, and it is
    /// no longer listed. Returns the tenant it belonged to, `None` if it
    /// belonged to none (an admin token is left alone: see
    /// [`revoke_admin_token`](Self::revoke_admin_token)).
    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError>;

    /// Revokes a tenant's token by its public id, as [`tokens`](Self::tokens)
    /// lists it: the operator needs no secret. Returns whether the tenant
    /// had a token of that id.
    async fn revoke_token_id(&self, tenant: &str, id: &TokenId) -> Result<bool, CatalogError>;

    /// A tenant's tokens (ids and creation times, oldest first); an unknown
    /// tenant is [`CatalogError::UnknownTenant`]. Tokens made before tokens
    /// had ids work but are not listed.
    async fn tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>, CatalogError>;

    /// Replaces an existing tenant's limits. From then on, uploads and new
    /// job versions are checked against them, and enqueues against the new
    /// `max_queued`; workers take a new concurrency cap within seconds (they
    /// cache it briefly). Job versions already registered keep the fuel,
    /// memory and time they were registered with.
    async fn set_limits(&self, tenant: &str, limits: &TenantLimits) -> Result<(), CatalogError>;

    /// Stores module bytes for a tenant; storing the same bytes twice is a
    /// no-op (even at the quota: stored bytes count once). A new module past
    /// the tenant's `max_modules` or `max_module_storage_bytes` is
    /// [`CatalogError::OverQuota`], decided atomically with the write.
    async fn put_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(), CatalogError>;

    /// A tenant's module bytes.
    async fn module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
    ) -> Result<Option<Vec<u8>>, CatalogError>;

    /// Whether the tenant has uploaded this module. Stores that can answer
    /// without reading the bytes (which may be tens of MiB) override this.
    async fn has_module(&self, tenant: &str, hash: &ModuleHash) -> Result<bool, CatalogError> {
        Ok(self.module(tenant, hash).await?.is_some())
    }

    /// Stores `definition` as the next version of its job (its `version`
    /// field is ignored and assigned here, atomically). Without `replace`, an
    /// existing job is [`CatalogError::JobExists`]. A chain longer than the
    /// tenant's `max_handlers_per_job`, a new job past `max_jobs` and a
    /// version past `max_job_versions` are [`CatalogError::OverQuota`],
    /// decided atomically with the write.
    async fn add_job_version(
        &self,
        definition: JobDefinition,
        replace: bool,
    ) -> Result<JobDefinition, CatalogError>;

    /// Removes a job, every version of it; returns whether there was one.
    /// Tasks already queued for it fail when they run (`unknown_job`), and
    /// it no longer counts against `max_jobs`. Its modules stay (other jobs
    /// may name them). A job registered again under the name starts again
    /// at version 1.
    async fn delete_job(&self, tenant: &str, name: &str) -> Result<bool, CatalogError>;

    /// A job at `version`, or its newest version when `None`.
    async fn job(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<JobDefinition>, CatalogError>;

    /// The newest version of each of a tenant's jobs, sorted by name.
    async fn jobs(&self, tenant: &str) -> Result<Vec<JobDefinition>, CatalogError>;

    /// A page of [`jobs`](Self::jobs): at most `limit` of them, those named
    /// after `after` when given. Stores override it to read only the page.
    async fn jobs_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobDefinition>, CatalogError> {
        Ok(self
            .jobs(tenant)
            .await?
            .into_iter()
            .filter(|d| after.is_none_or(|a| d.name.as_str() > a))
            .take(limit)
            .collect())
    }
}
