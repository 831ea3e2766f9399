//! The registry: which handlers make up each job, and their limits.
//!
//! A [`JobDefinition`] maps a tenant's job name to an ordered chain of module
//! hashes plus [`Limits`]. Modules are stored by content hash in a
//! [`Catalog`] after the sandbox validated them (a component, of the handler
//! world, importing only what the host provides, under the size cap).
//! Registering a name that exists is an error unless the caller asks to
//! replace it, which makes a new version; tasks carry the version they were
//! enqueued with and keep running it.
//!
//! Workers resolve jobs here: module bytes are fetched from the catalog by
//! hash on first use and compiled once (the sandbox caches by hash); a
//! resolved version is cached until it is among the least recently used of
//! [`RESOLVED_CACHED`], and "newest version" lookups are cached for
//! [`LATEST_TTL`] to keep the store off the per-task path. A stored version
//! never changes, but a job can be removed ([`Registry::remove_job`]) and
//! its name registered again from version 1: so a cached version is used
//! as is for [`LATEST_TTL`], then confirmed against the store (one small
//! read) before it is used again, and a removal reaches every worker within
//! that time. Both caches are bounded: their size follows the jobs that
//! run, not every version tenants ever registered.
//!
//! The registry never runs a handler and never touches the broker.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CatalogError, MemoryCatalog, Quota};
use crate::tenant::TenantLimits;
use corral_core::lru::Lru;
use corral_sandbox::{Limits, LoadError, LoadedHandler, ModuleHash, Sandbox};

/// The definitions the registry takes and answers with; they live in
/// [`crate::job`], which the catalog shares.
pub use crate::job::{HandlerSpec, JobDefinition};

/// How long a "newest version of job X" answer is reused.
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// Resolved job versions (and newest-version lookups) kept in memory.
pub const RESOLVED_CACHED: usize = 4096;

/// A job ready to run: its definition and its compiled handlers.
pub struct ResolvedJob {
    /// The definition.
    pub definition: JobDefinition,
    /// The compiled handlers, in chain order.
    pub handlers: Vec<Arc<LoadedHandler>>,
}

/// What the registry refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The tenant already has a job of this name.
    #[error("job `{name}` is already registered (version {version}); replace it explicitly")]
    AlreadyRegistered {
        /// The job.
        name: String,
        /// Its current version.
        version: u32,
    },
    /// No such job for this tenant.
    #[error("unknown job `{name}`")]
    UnknownJob {
        /// The job asked for.
        name: String,
    },
    /// The job exists but not at that version.
    #[error("job `{name}` has no version {version}")]
    UnknownVersion {
        /// The job.
        name: String,
        /// The version asked for.
        version: u32,
    },
    /// A chain names a module the tenant never uploaded.
    #[error("unknown module {0}")]
    UnknownModule(ModuleHash),
    /// The module is over the tenant's size cap.
    #[error("module is {size} bytes, over the tenant's cap of {limit}")]
    ModuleTooLarge {
        /// The module's size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The job's limits exceed the tenant's ceilings.
    #[error("{0}")]
    OverTenantLimits(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(CatalogError),
    /// A chain with no handlers.
    #[error("job `{0}` has no handlers")]
    EmptyChain(String),
    /// A name that is empty or too long.
    #[error(
        "invalid job name `{0}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`"
    )]
    InvalidName(String),
    /// Limits that cannot work.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// The module was refused.
    #[error("module refused: {0}")]
    Module(#[from] LoadError),
    /// A module file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

type JobKey = (String, String);
/// A resolved job's (tenant, name, version).
type ResolvedKey = (String, String, u32);

/// Job definitions and module bytes, shared by clients and workers.
#[derive(Clone)]
pub struct Registry {
    sandbox: Sandbox,
    catalog: Arc<dyn Catalog>,
    /// Resolved versions, kept while recently used, each with when the
    /// store last confirmed it.
    resolved: Arc<Lru<ResolvedKey, (Arc<ResolvedJob>, Instant)>>,
    /// Newest version per job, and when it was read.
    latest: Arc<Lru<JobKey, (u32, Instant)>>,
}

pub(crate) use corral_core::text::valid_name;

impl From<CatalogError> for RegistryError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::JobExists { name, version } => {
                RegistryError::AlreadyRegistered { name, version }
            }
            other => RegistryError::Catalog(other),
        }
    }
}

impl Registry {
    /// A registry over an in-memory catalog, compiling through `sandbox`.
    pub fn new(sandbox: Sandbox) -> Self {
        Self::with_catalog(sandbox, Arc::new(MemoryCatalog::new()))
    }

    /// A registry over `catalog`.
    pub fn with_catalog(sandbox: Sandbox, catalog: Arc<dyn Catalog>) -> Self {
        Self {
            sandbox,
            catalog,
            resolved: Arc::new(Lru::new(RESOLVED_CACHED, u64::MAX)),
            latest: Arc::new(Lru::new(RESOLVED_CACHED, u64::MAX)),
        }
    }

    /// The sandbox handlers run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The catalog behind the registry.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The tenant's limits as the catalog holds them (what workers read
    /// its concurrency cap and rate limit from), or `None` for a tenant not
    /// in the catalog: such tasks come only from trusted producers (the
    /// client library, the CLI, raw pushes; the HTTP API serves registered
    /// tenants only), as in a single-tenant setup, where the workers' own
    /// concurrency is the only bound.
    pub async fn catalog_limits(
        &self,
        tenant: &str,
    ) -> Result<Option<TenantLimits>, RegistryError> {
        Ok(self.catalog.tenant(tenant).await?.map(|t| t.limits))
    }

    /// The tenant's limits; a tenant not in the catalog (the embedded
    /// setup's `default`) gets the defaults.
    pub async fn tenant_limits(&self, tenant: &str) -> Result<TenantLimits, RegistryError> {
        Ok(self
            .catalog
            .tenant(tenant)
            .await?
            .map(|t| t.limits)
            .unwrap_or_default())
    }

    /// Validates and stores a module for `tenant`; returns its hash. Adding
    /// the same bytes twice is harmless.
    ///
    /// This is the path of bytes a tenant sent: the answer takes as long as
    /// compiling them took, even when they were compiled before (for
    /// another tenant, or cached on disk), so its timing tells the tenant
    /// nothing about other tenants' modules.
    pub async fn add_module(
        &self,
        tenant: &str,
        bytes: &[u8],
    ) -> Result<ModuleHash, RegistryError> {
        self.store_module(tenant, bytes, true).await
    }

    /// Reads, validates and stores a module file. Files are the operator's
    /// (a worker's `--job`, `corral run`, `corral jobs register`), not a
    /// tenant's upload: a module compiled before (on disk, from an earlier
    /// start) loads at once instead of waiting out its compile time as an
    /// upload would, so a worker restarts in milliseconds even for a 20 MB
    /// interpreter.
    pub async fn add_module_file(
        &self,
        tenant: &str,
        path: &Path,
    ) -> Result<ModuleHash, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.store_module(tenant, &bytes, false).await
    }

    async fn store_module(
        &self,
        tenant: &str,
        bytes: &[u8],
        as_upload: bool,
    ) -> Result<ModuleHash, RegistryError> {
        let limits = self.tenant_limits(tenant).await?;
        if bytes.len() as u64 > limits.max_module_bytes {
            return Err(RegistryError::ModuleTooLarge {
                size: bytes.len() as u64,
                limit: limits.max_module_bytes,
            });
        }
        // Compiling can take seconds: bounded, off the runtime's threads.
        let hash = if as_upload {
            self.sandbox.validate_async(tenant, bytes.to_vec()).await?
        } else {
            let (handler, _) = self.sandbox.load_async(tenant, bytes.to_vec()).await?;
            handler.hash().clone()
        };
        self.catalog.put_module(tenant, &hash, bytes).await?;
        Ok(hash)
    }

    /// Registers a new job; an existing name is an error.
    pub async fn register(
        &self,
        tenant: &str,
        name: &str,
        handlers: Vec<HandlerSpec>,
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        self.define(tenant, name, handlers, limits, false).await
    }

    /// Registers a job, or a new version of it when it exists. Tasks enqueued
    /// against an older version keep running that version.
    pub async fn replace(
        &self,
        tenant: &str,
        name: &str,
        handlers: Vec<HandlerSpec>,
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        self.define(tenant, name, handlers, limits, true).await
    }

    /// Adds each file as a module and registers the chain of them under
    /// `name`, handler names taken from the file stems.
    pub async fn register_files<P: AsRef<Path>>(
        &self,
        tenant: &str,
        name: &str,
        files: &[P],
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        let handlers = self.add_module_files(tenant, files).await?;
        self.register(tenant, name, handlers, limits).await
    }

    /// Like [`register_files`](Self::register_files), but an existing job is
    /// left as it is when its newest version is exactly this chain with these
    /// limits, and replaced by a new version otherwise. This is how workers
    /// started with the same job files agree on one definition in a shared
    /// catalog instead of each refusing the others' or adding a version.
    pub async fn sync_files<P: AsRef<Path>>(
        &self,
        tenant: &str,
        name: &str,
        files: &[P],
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        let handlers = self.add_module_files(tenant, files).await?;
        if let Some(current) = self.catalog.job(tenant, name, None).await?
            && current.handlers == handlers
            && current.limits == limits
        {
            return Ok(current);
        }
        self.replace(tenant, name, handlers, limits).await
    }

    /// Adds each file as a module; handler names are the file stems.
    async fn add_module_files<P: AsRef<Path>>(
        &self,
        tenant: &str,
        files: &[P],
    ) -> Result<Vec<HandlerSpec>, RegistryError> {
        let mut handlers = Vec::with_capacity(files.len());
        for file in files {
            let path = file.as_ref();
            handlers.push(HandlerSpec {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                module: self.add_module_file(tenant, path).await?,
            });
        }
        Ok(handlers)
    }

    async fn define(
        &self,
        tenant: &str,
        name: &str,
        handlers: Vec<HandlerSpec>,
        limits: Limits,
        replace: bool,
    ) -> Result<JobDefinition, RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::InvalidName(name.to_owned()));
        }
        if handlers.is_empty() {
            return Err(RegistryError::EmptyChain(name.to_owned()));
        }
        limits.validate().map_err(RegistryError::InvalidLimits)?;
        let tenant_limits = self.tenant_limits(tenant).await?;
        // Checked here before a store lookup per handler (and again by the
        // catalog as it writes): a chain is as long as its body allows.
        let max_handlers = Quota::HandlersPerJob.limit(&tenant_limits);
        if handlers.len() as u64 > max_handlers {
            return Err(RegistryError::Catalog(CatalogError::OverQuota {
                quota: Quota::HandlersPerJob,
                limit: max_handlers,
            }));
        }
        tenant_limits
            .check_job_limits(&limits)
            .map_err(RegistryError::OverTenantLimits)?;
        let mut checked = std::collections::HashSet::new();
        for spec in &handlers {
            if checked.insert(&spec.module)
                && !self.catalog.has_module(tenant, &spec.module).await?
            {
                return Err(RegistryError::UnknownModule(spec.module.clone()));
            }
        }
        let definition = JobDefinition {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            version: 0,
            handlers,
            limits,
        };
        let stored = self.catalog.add_job_version(definition, replace).await?;
        self.latest.put(
            (tenant.to_owned(), name.to_owned()),
            (stored.version, Instant::now()),
            0,
        );
        Ok(stored)
    }

    /// The job to run: `version`, or the newest when `None`; its modules are
    /// fetched and compiled on first use.
    pub async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<ResolvedJob>, RegistryError> {
        let unknown = || RegistryError::UnknownJob {
            name: name.to_owned(),
        };
        let version = match version {
            Some(v) => Some(v),
            None => self
                .latest
                .get(&(tenant.to_owned(), name.to_owned()))
                .filter(|(_, at)| at.elapsed() < LATEST_TTL)
                .map(|(v, _)| v),
        };
        // A definition already read from the store for this call, if any.
        let mut read = None;
        if let Some(v) = version {
            let key = (tenant.to_owned(), name.to_owned(), v);
            if let Some((job, confirmed)) = self.resolved.get(&key) {
                if confirmed.elapsed() < LATEST_TTL {
                    return Ok(job);
                }
                // Still stored as cached? (It may have been removed, and the
                // name registered again.)
                let stored = self.catalog.job(tenant, name, Some(v)).await?;
                if stored.as_ref() == Some(&job.definition) {
                    self.resolved.put(key, (job.clone(), Instant::now()), 0);
                    return Ok(job);
                }
                self.resolved.remove_where(|k| *k == key);
                read = Some(stored);
            }
        }
        let stored = match read {
            Some(stored) => stored,
            None => self.catalog.job(tenant, name, version).await?,
        };
        let definition = match stored {
            Some(d) => d,
            None => {
                return Err(match version {
                    Some(v) if self.catalog.job(tenant, name, None).await?.is_some() => {
                        RegistryError::UnknownVersion {
                            name: name.to_owned(),
                            version: v,
                        }
                    }
                    _ => unknown(),
                });
            }
        };
        if version.is_none() {
            self.latest.put(
                (tenant.to_owned(), name.to_owned()),
                (definition.version, Instant::now()),
                0,
            );
        }
        let mut handlers = Vec::with_capacity(definition.handlers.len());
        for spec in &definition.handlers {
            let loaded = match self.sandbox.cached(&spec.module) {
                Some(h) => h,
                None => {
                    let bytes = self
                        .catalog
                        .module(tenant, &spec.module)
                        .await?
                        .ok_or_else(|| RegistryError::UnknownModule(spec.module.clone()))?;
                    self.sandbox.load_async(tenant, bytes).await?.0
                }
            };
            handlers.push(loaded);
        }
        let key = (tenant.to_owned(), name.to_owned(), definition.version);
        let job = Arc::new(ResolvedJob {
            definition,
            handlers,
        });
        Ok(self.resolved.insert(key, (job, Instant::now()), 0).0)
    }

    /// Removes `tenant`'s job `name`, every version ([`Catalog::delete_job`]);
    /// returns whether there was one. This process forgets it at once;
    /// other processes within [`LATEST_TTL`], after which their tasks of it
    /// fail with `unknown_job`.
    pub async fn remove_job(&self, tenant: &str, name: &str) -> Result<bool, RegistryError> {
        let removed = self.catalog.delete_job(tenant, name).await?;
        self.latest.remove_where(|(t, n)| t == tenant && n == name);
        self.resolved
            .remove_where(|(t, n, _)| t == tenant && n == name);
        Ok(removed)
    }

    /// The newest version of each of `tenant`'s jobs, by name.
    pub async fn jobs(&self, tenant: &str) -> Result<Vec<JobDefinition>, RegistryError> {
        Ok(self.catalog.jobs(tenant).await?)
    }
}
