//! The in-memory catalog: the embedded setup's storage, gone with the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Catalog, CatalogError};
use crate::registry::JobDefinition;
use crate::sandbox::ModuleHash;
use crate::tenant::{Tenant, TenantLimits, TokenHash};

#[derive(Default)]
struct State {
    tenants: HashMap<String, Tenant>,
    tokens: HashMap<TokenHash, String>,
    modules: HashMap<(String, ModuleHash), Vec<u8>>,
    /// (tenant, job) → versions, oldest first.
    jobs: HashMap<(String, String), Vec<JobDefinition>>,
}

/// A [`Catalog`] in this process's memory.
#[derive(Default)]
pub struct MemoryCatalog {
    state: Mutex<State>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Catalog for MemoryCatalog {
    async fn create_tenant(&self, tenant: &Tenant, token: &TokenHash) -> Result<(), CatalogError> {
        let mut st = self.lock();
        if st.tenants.contains_key(&tenant.name) {
            return Err(CatalogError::TenantExists(tenant.name.clone()));
        }
        st.tenants.insert(tenant.name.clone(), tenant.clone());
        st.tokens.insert(token.clone(), tenant.name.clone());
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, CatalogError> {
        Ok(self.lock().tenants.get(name).cloned())
    }

    async fn add_token(&self, tenant: &str, token: &TokenHash) -> Result<(), CatalogError> {
        let mut st = self.lock();
        if !st.tenants.contains_key(tenant) {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        }
        st.tokens.insert(token.clone(), tenant.to_owned());
        Ok(())
    }

    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError> {
        Ok(self.lock().tokens.remove(token))
    }

    async fn set_limits(&self, tenant: &str, limits: &TenantLimits) -> Result<(), CatalogError> {
        match self.lock().tenants.get_mut(tenant) {
            Some(t) => {
                t.limits = *limits;
                Ok(())
            }
            None => Err(CatalogError::UnknownTenant(tenant.to_owned())),
        }
    }

    async fn tenant_for_token(&self, token: &TokenHash) -> Result<Option<Tenant>, CatalogError> {
        let st = self.lock();
        Ok(st
            .tokens
            .get(token)
            .and_then(|name| st.tenants.get(name))
            .cloned())
    }

    async fn put_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        self.lock()
            .modules
            .entry((tenant.to_owned(), hash.clone()))
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    async fn module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self
            .lock()
            .modules
            .get(&(tenant.to_owned(), hash.clone()))
            .cloned())
    }

    async fn add_job_version(
        &self,
        mut definition: JobDefinition,
        replace: bool,
    ) -> Result<JobDefinition, CatalogError> {
        let mut st = self.lock();
        let versions = st
            .jobs
            .entry((definition.tenant.clone(), definition.name.clone()))
            .or_default();
        if let Some(current) = versions.last() {
            if !replace {
                return Err(CatalogError::JobExists {
                    name: definition.name,
                    version: current.version,
                });
            }
            definition.version = current.version + 1;
        } else {
            definition.version = 1;
        }
        versions.push(definition.clone());
        Ok(definition)
    }

    async fn job(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<JobDefinition>, CatalogError> {
        let st = self.lock();
        let Some(versions) = st.jobs.get(&(tenant.to_owned(), name.to_owned())) else {
            return Ok(None);
        };
        Ok(match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|d| d.version == v).cloned(),
        })
    }

    async fn jobs(&self, tenant: &str) -> Result<Vec<JobDefinition>, CatalogError> {
        let st = self.lock();
        let mut out: Vec<JobDefinition> = st
            .jobs
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .filter_map(|(_, versions)| versions.last().cloned())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
