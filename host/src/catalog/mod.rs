//! The catalog: where tenants, module bytes and job definitions are stored.
//!
//! A [`Catalog`] is plain storage with the few atomic operations the registry
//! needs (create a tenant once, add a job version without racing another
//! writer). Every record is scoped by tenant: no call returns another
//! tenant's data, whatever it is asked. The in-memory catalog backs the
//! embedded setup; the Redis one shares the broker's server.
//!
//! It never compiles or validates wasm (the registry does, through the
//! sandbox) and never sees tasks.

pub mod memory;
pub mod redis;

use async_trait::async_trait;

use crate::registry::JobDefinition;
use crate::sandbox::ModuleHash;
use crate::tenant::{Tenant, TenantLimits, TokenHash};

pub use memory::MemoryCatalog;
pub use redis::RedisCatalog;

/// What storage can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A tenant of that name exists.
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    /// No tenant of that name exists.
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
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
    /// Creates a tenant with its first token; fails if the name is taken.
    async fn create_tenant(&self, tenant: &Tenant, token: &TokenHash) -> Result<(), CatalogError>;

    /// The tenant of that name.
    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, CatalogError>;

    /// The tenant a token belongs to.
    async fn tenant_for_token(&self, token: &TokenHash) -> Result<Option<Tenant>, CatalogError>;

    /// Gives an existing tenant one more token. Rotating a token is: add a
    /// new one, move the clients to it, revoke the old one.
    async fn add_token(&self, tenant: &str, token: &TokenHash) -> Result<(), CatalogError>;

    /// Revokes a token: from now on it names no tenant. Returns the tenant
    /// it belonged to, `None` if it belonged to none.
    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError>;

    /// Replaces an existing tenant's limits. From then on, uploads and new
    /// job versions are checked against them, and enqueues against the new
    /// `max_queued`; workers take a new concurrency cap within seconds (they
    /// cache it briefly). Job versions already registered keep the fuel,
    /// memory and time they were registered with.
    async fn set_limits(&self, tenant: &str, limits: &TenantLimits) -> Result<(), CatalogError>;

    /// Stores module bytes for a tenant; storing the same bytes twice is a
    /// no-op.
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
    /// existing job is [`CatalogError::JobExists`].
    async fn add_job_version(
        &self,
        definition: JobDefinition,
        replace: bool,
    ) -> Result<JobDefinition, CatalogError>;

    /// A job at `version`, or its newest version when `None`.
    async fn job(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<JobDefinition>, CatalogError>;

    /// The newest version of each of a tenant's jobs, sorted by name.
    async fn jobs(&self, tenant: &str) -> Result<Vec<JobDefinition>, CatalogError>;
}
