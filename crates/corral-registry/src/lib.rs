//! Corral's job registry: which handlers make up each tenant's jobs, who
//! the tenants are, and where both are stored.
//!
//! | module | owns |
//! | --- | --- |
//! | [`job`] | a job definition: name → ordered handler modules + limits |
//! | [`tenant`] | tenants, their limits and API tokens |
//! | [`catalog`] | storage of tenants, tokens, modules and job definitions (memory, Redis) |
//! | [`registry`] | registering jobs and resolving them into compiled handlers |
//! | [`submit`] | enqueueing a tenant's task as the catalog allows: its job known, its version pinned, within the tenant's queue quota |
//!
//! Imports go one way: `registry`, `submit` → `catalog` → `job`, `tenant`. The
//! registry compiles modules through the sandbox (`corral-sandbox`) and the
//! Redis catalog shares the broker's connection layer (`corral-client`);
//! nothing here runs a handler; only `submit` touches a queue, to store new
//! tasks through the broker's quota-checked enqueue.

pub mod catalog;
pub mod job;
pub mod registry;
pub mod submit;
pub mod tenant;

pub use catalog::{Catalog, CatalogError, MemoryCatalog, RedisCatalog};
pub use job::{HandlerSpec, JobDefinition};
pub use registry::{Registry, RegistryError};
pub use submit::{NewTask, SubmitError};
pub use tenant::{Principal, Tenant, TenantInfo, TenantLimits, Token};
