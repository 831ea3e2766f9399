//! The in-memory catalog: the embedded setup's storage, gone with the process.
//!
//! One lock guards everything, so each quota is checked and the write it
//! bounds made in one critical section.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Catalog, CatalogError, Quota, check_handlers};
use crate::job::JobDefinition;
use crate::tenant::{
    Principal, Tenant, TenantInfo, TenantLimits, TokenHash, TokenId, TokenInfo,
    check_new_tenant_name, check_token_name,
};
use corral_sandbox::ModuleHash;

/// One tenant's modules.
#[derive(Default)]
struct Modules {
    by_hash: HashMap<ModuleHash, Vec<u8>>,
    /// The sum of their sizes.
    bytes: u64,
}

/// Whom a stored token names.
#[derive(Clone, PartialEq, Eq)]
enum Owner {
    Tenant(String),
    Admin,
}

#[derive(Default)]
struct State {
    /// By name, sorted: the listing pages through it.
    tenants: BTreeMap<String, Tenant>,
    created: HashMap<String, DateTime<Utc>>,
    tokens: HashMap<TokenHash, Owner>,
    /// Admin token id → (hash, listing).
    admin_ids: BTreeMap<TokenId, (TokenHash, TokenInfo)>,
    /// tenant → token id → (hash, listing).
    token_ids: HashMap<String, BTreeMap<TokenId, (TokenHash, TokenInfo)>>,
    modules: HashMap<String, Modules>,
    /// tenant → job → versions, oldest first.
    jobs: HashMap<String, BTreeMap<String, Vec<JobDefinition>>>,
}

impl State {
    /// The limits quotas are checked against: the stored tenant's, the
    /// defaults for a tenant not in the catalog.
    fn limits(&self, tenant: &str) -> TenantLimits {
        self.tenants
            .get(tenant)
            .map(|t| t.limits)
            .unwrap_or_default()
    }

    /// Whether `token` is free for `tenant`: unknown, or already its own.
    fn free_for(&self, tenant: &str, token: &TokenHash) -> bool {
        self.tokens
            .get(token)
            .is_none_or(|owner| *owner == Owner::Tenant(tenant.to_owned()))
    }

    fn list_token(&mut self, tenant: &str, token: &TokenHash) {
        let id = token.id();
        let info = TokenInfo {
            id: id.clone(),
            created_at: Utc::now(),
            name: None,
        };
        self.token_ids
            .entry(tenant.to_owned())
            .or_default()
            .insert(id, (token.clone(), info));
    }
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
        check_new_tenant_name(&tenant.name).map_err(CatalogError::InvalidTenantName)?;
        let mut st = self.lock();
        if st.tenants.contains_key(&tenant.name) {
            return Err(CatalogError::TenantExists(tenant.name.clone()));
        }
        if !st.free_for(&tenant.name, token) {
            return Err(CatalogError::TokenInUse);
        }
        st.tenants.insert(tenant.name.clone(), tenant.clone());
        st.created.insert(tenant.name.clone(), Utc::now());
        st.tokens
            .insert(token.clone(), Owner::Tenant(tenant.name.clone()));
        st.list_token(&tenant.name, token);
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
        if !st.free_for(tenant, token) {
            return Err(CatalogError::TokenInUse);
        }
        st.tokens
            .insert(token.clone(), Owner::Tenant(tenant.to_owned()));
        st.list_token(tenant, token);
        Ok(())
    }

    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError> {
        let mut st = self.lock();
        let Some(Owner::Tenant(tenant)) = st.tokens.get(token).cloned() else {
            return Ok(None);
        };
        st.tokens.remove(token);
        if let Some(ids) = st.token_ids.get_mut(&tenant) {
            ids.remove(&token.id());
        }
        Ok(Some(tenant))
    }

    async fn revoke_token_id(&self, tenant: &str, id: &TokenId) -> Result<bool, CatalogError> {
        let mut st = self.lock();
        let Some((hash, _)) = st.token_ids.get_mut(tenant).and_then(|ids| ids.remove(id)) else {
            return Ok(false);
        };
        if st.free_for(tenant, &hash) {
            st.tokens.remove(&hash);
        }
        Ok(true)
    }

    async fn tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>, CatalogError> {
        let st = self.lock();
        if !st.tenants.contains_key(tenant) {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        }
        let mut out: Vec<TokenInfo> = st
            .token_ids
            .get(tenant)
            .map(|ids| ids.values().map(|(_, info)| info.clone()).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
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
        Ok(match self.principal_for_token(token).await? {
            Some(Principal::Tenant(tenant)) => Some(tenant),
            Some(Principal::Admin(_)) | None => None,
        })
    }

    async fn principal_for_token(
        &self,
        token: &TokenHash,
    ) -> Result<Option<Principal>, CatalogError> {
        let st = self.lock();
        Ok(match st.tokens.get(token) {
            Some(Owner::Tenant(name)) => st.tenants.get(name).cloned().map(Principal::Tenant),
            Some(Owner::Admin) => Some(Principal::Admin(token.id())),
            None => None,
        })
    }

    async fn add_admin_token(
        &self,
        token: &TokenHash,
        name: Option<&str>,
    ) -> Result<TokenInfo, CatalogError> {
        if let Some(name) = name {
            check_token_name(name).map_err(CatalogError::InvalidTokenName)?;
        }
        let mut st = self.lock();
        if st.tokens.contains_key(token) {
            return Err(CatalogError::TokenInUse);
        }
        let info = TokenInfo {
            id: token.id(),
            created_at: Utc::now(),
            name: name.map(str::to_owned),
        };
        st.tokens.insert(token.clone(), Owner::Admin);
        st.admin_ids
            .insert(info.id.clone(), (token.clone(), info.clone()));
        Ok(info)
    }

    async fn admin_tokens(&self) -> Result<Vec<TokenInfo>, CatalogError> {
        let mut out: Vec<TokenInfo> = self
            .lock()
            .admin_ids
            .values()
            .map(|(_, info)| info.clone())
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn revoke_admin_token(&self, id: &TokenId) -> Result<bool, CatalogError> {
        let mut st = self.lock();
        let Some((hash, _)) = st.admin_ids.remove(id) else {
            return Ok(false);
        };
        if st.tokens.get(&hash) == Some(&Owner::Admin) {
            st.tokens.remove(&hash);
        }
        Ok(true)
    }

    async fn tenants_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TenantInfo>, CatalogError> {
        let st = self.lock();
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        Ok(st
            .tenants
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(name, tenant)| TenantInfo {
                tenant: tenant.clone(),
                created_at: st.created.get(name).copied(),
                tokens: st.token_ids.get(name).map_or(0, |ids| ids.len() as u64),
            })
            .collect())
    }

    async fn delete_job(&self, tenant: &str, name: &str) -> Result<bool, CatalogError> {
        Ok(self
            .lock()
            .jobs
            .get_mut(tenant)
            .is_some_and(|jobs| jobs.remove(name).is_some()))
    }

    async fn put_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        let mut st = self.lock();
        let limits = st.limits(tenant);
        let stored = st.modules.entry(tenant.to_owned()).or_default();
        if stored.by_hash.contains_key(hash) {
            return Ok(());
        }
        let size = bytes.len() as u64;
        let over = |quota: Quota| {
            Err(CatalogError::OverQuota {
                quota,
                limit: quota.limit(&limits),
            })
        };
        if stored.by_hash.len() as u64 >= Quota::Modules.limit(&limits) {
            return over(Quota::Modules);
        }
        if stored.bytes.saturating_add(size) > Quota::ModuleStorage.limit(&limits) {
            return over(Quota::ModuleStorage);
        }
        stored.by_hash.insert(hash.clone(), bytes.to_vec());
        stored.bytes += size;
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
            .get(tenant)
            .and_then(|m| m.by_hash.get(hash))
            .cloned())
    }

    async fn has_module(&self, tenant: &str, hash: &ModuleHash) -> Result<bool, CatalogError> {
        Ok(self
            .lock()
            .modules
            .get(tenant)
            .is_some_and(|m| m.by_hash.contains_key(hash)))
    }

    async fn add_job_version(
        &self,
        mut definition: JobDefinition,
        replace: bool,
    ) -> Result<JobDefinition, CatalogError> {
        let mut st = self.lock();
        let limits = st.limits(&definition.tenant);
        check_handlers(&definition, &limits)?;
        let jobs = st.jobs.entry(definition.tenant.clone()).or_default();
        let current = jobs
            .get(&definition.name)
            .and_then(|versions| versions.last())
            .map(|d| d.version);
        let over = |quota: Quota| {
            Err(CatalogError::OverQuota {
                quota,
                limit: quota.limit(&limits),
            })
        };
        match current {
            Some(version) if !replace => {
                return Err(CatalogError::JobExists {
                    name: definition.name,
                    version,
                });
            }
            // Versions are numbered from 1 without gaps: the newest's number
            // is how many there are.
            Some(version) if u64::from(version) >= Quota::JobVersions.limit(&limits) => {
                return over(Quota::JobVersions);
            }
            Some(version) => definition.version = version + 1,
            None if jobs.len() as u64 >= Quota::Jobs.limit(&limits) => {
                return over(Quota::Jobs);
            }
            None => definition.version = 1,
        }
        jobs.entry(definition.name.clone())
            .or_default()
            .push(definition.clone());
        Ok(definition)
    }

    async fn job(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<JobDefinition>, CatalogError> {
        let st = self.lock();
        let Some(versions) = st.jobs.get(tenant).and_then(|jobs| jobs.get(name)) else {
            return Ok(None);
        };
        Ok(match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|d| d.version == v).cloned(),
        })
    }

    async fn jobs(&self, tenant: &str) -> Result<Vec<JobDefinition>, CatalogError> {
        self.jobs_page(tenant, None, usize::MAX).await
    }

    async fn jobs_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobDefinition>, CatalogError> {
        let st = self.lock();
        let Some(jobs) = st.jobs.get(tenant) else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        Ok(jobs
            .range::<str, _>((from, Bound::Unbounded))
            .filter_map(|(_, versions)| versions.last().cloned())
            .take(limit)
            .collect())
    }
}
