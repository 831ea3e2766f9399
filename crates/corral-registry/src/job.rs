//! What a job is: a tenant's name for an ordered chain of handler modules,
//! with the limits every call of it runs under.
//!
//! Owns the [`JobDefinition`] and [`HandlerSpec`] types and their stored
//! JSON form, and nothing else: the catalog stores them, the registry
//! resolves them into compiled handlers, and both depend on this module
//! rather than on each other. It never touches storage or compiles a module.

use serde::{Deserialize, Serialize};

use corral_sandbox::{Limits, ModuleHash};

/// One version of a job: its handler chain and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDefinition {
    /// The owning tenant.
    pub tenant: String,
    /// The job's name, unique per tenant.
    pub name: String,
    /// Starts at 1; each replace adds one.
    pub version: u32,
    /// The handler chain, in order.
    pub handlers: Vec<HandlerSpec>,
    /// Limits for every handler call of this job.
    pub limits: Limits,
}

/// One link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerSpec {
    /// A human name (the module's file stem, say), used in errors.
    pub name: String,
    /// The module's content hash.
    pub module: ModuleHash,
}
