//! The registry: which handlers make up each job, and their limits.
//!
//! A [`JobDefinition`] maps a tenant's job name to an ordered chain of module
//! hashes plus [`Limits`]. Modules are stored by content hash and validated
//! (through the sandbox) when added. Registering a name that exists is an
//! error unless the caller asks to replace it, which makes a new version;
//! tasks carry the version they were enqueued with and keep running it.
//!
//! The registry owns definitions and module bytes. It never runs a handler and
//! never touches the broker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::sandbox::{LoadError, LoadedHandler, Limits, ModuleHash, Sandbox};

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
    /// A chain names a module that was never added.
    #[error("unknown module {0}")]
    UnknownModule(ModuleHash),
    /// A chain with no handlers.
    #[error("job `{0}` has no handlers")]
    EmptyChain(String),
    /// A name that is empty or too long.
    #[error("invalid job name `{0}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`")]
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

#[derive(Default)]
struct State {
    modules: HashMap<ModuleHash, Arc<[u8]>>,
    /// (tenant, name) → every version, oldest first.
    jobs: HashMap<(String, String), Vec<Arc<ResolvedJob>>>,
}

/// Job definitions and module bytes, shared by clients and workers.
#[derive(Clone)]
pub struct Registry {
    sandbox: Sandbox,
    state: Arc<RwLock<State>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl Registry {
    /// An empty registry compiling through `sandbox`.
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox,
            state: Arc::new(RwLock::new(State::default())),
        }
    }

    /// The sandbox handlers run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and stores a module; returns its hash. Adding the same bytes
    /// twice is harmless.
    pub fn add_module(&self, bytes: &[u8]) -> Result<ModuleHash, RegistryError> {
        let hash = self.sandbox.validate(bytes)?;
        self.write()
            .modules
            .entry(hash.clone())
            .or_insert_with(|| bytes.into());
        Ok(hash)
    }

    /// Reads, validates and stores a module file.
    pub fn add_module_file(&self, path: &Path) -> Result<ModuleHash, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.add_module(&bytes)
    }

    /// Registers a new job; an existing name is an error.
    pub fn register(
        &self,
        tenant: &str,
        name: &str,
        handlers: Vec<HandlerSpec>,
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        self.define(tenant, name, handlers, limits, false)
    }

    /// Registers a job, or a new version of it when it exists. Tasks enqueued
    /// against an older version keep running that version.
    pub fn replace(
        &self,
        tenant: &str,
        name: &str,
        handlers: Vec<HandlerSpec>,
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        self.define(tenant, name, handlers, limits, true)
    }

    /// Adds each file as a module and registers the chain of them under
    /// `name`, handler names taken from the file stems.
    pub fn register_files<P: AsRef<Path>>(
        &self,
        tenant: &str,
        name: &str,
        files: &[P],
        limits: Limits,
    ) -> Result<JobDefinition, RegistryError> {
        let mut handlers = Vec::with_capacity(files.len());
        for file in files {
            let path = file.as_ref();
            handlers.push(HandlerSpec {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                module: self.add_module_file(path)?,
            });
        }
        self.register(tenant, name, handlers, limits)
    }

    fn define(
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
        let mut compiled = Vec::with_capacity(handlers.len());
        {
            let st = self.read();
            for spec in &handlers {
                let bytes = st
                    .modules
                    .get(&spec.module)
                    .ok_or_else(|| RegistryError::UnknownModule(spec.module.clone()))?;
                compiled.push(self.sandbox.load(bytes)?);
            }
        }
        let mut st = self.write();
        let versions = st
            .jobs
            .entry((tenant.to_owned(), name.to_owned()))
            .or_default();
        if let Some(current) = versions.last()
            && !replace
        {
            return Err(RegistryError::AlreadyRegistered {
                name: name.to_owned(),
                version: current.definition.version,
            });
        }
        let definition = JobDefinition {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            version: versions.last().map_or(1, |j| j.definition.version + 1),
            handlers,
            limits,
        };
        versions.push(Arc::new(ResolvedJob {
            definition: definition.clone(),
            handlers: compiled,
        }));
        Ok(definition)
    }

    /// The job to run: `version`, or the newest when `None`.
    pub fn resolve(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<ResolvedJob>, RegistryError> {
        let st = self.read();
        let versions = st
            .jobs
            .get(&(tenant.to_owned(), name.to_owned()))
            .ok_or_else(|| RegistryError::UnknownJob {
                name: name.to_owned(),
            })?;
        match version {
            None => versions.last().cloned().ok_or_else(|| RegistryError::UnknownJob {
                name: name.to_owned(),
            }),
            Some(v) => versions
                .iter()
                .find(|j| j.definition.version == v)
                .cloned()
                .ok_or(RegistryError::UnknownVersion {
                    name: name.to_owned(),
                    version: v,
                }),
        }
    }

    /// The newest version of each of `tenant`'s jobs, by name.
    pub fn jobs(&self, tenant: &str) -> Vec<JobDefinition> {
        let st = self.read();
        let mut out: Vec<JobDefinition> = st
            .jobs
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .filter_map(|(_, versions)| versions.last().map(|j| j.definition.clone()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
