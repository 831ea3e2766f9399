//! The Redis catalog: tenants, tokens, module bytes and job versions in the
//! broker's Redis, so every API and worker process sees the same registry.
//!
//! Key layout, with `P` the prefix (`corral` by default) and `T` the tenant's
//! name percent-encoded as the broker's keys are ([`encode`]):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{t:T}:tenant` | string | the [`Tenant`] as JSON (name and limits) |
//! | `P:{t:T}:tokens` | hash | token id → `{hash, created_at}` JSON (the listing) |
//! | `P:{t:T}:module:<sha256>` | string | a module's bytes, stored once |
//! | `P:{t:T}:modules` | hash | sha256 → size: the modules counted against the quota |
//! | `P:{t:T}:module_bytes` | string | the sum of those sizes |
//! | `P:{t:T}:job:<name>` | hash | version → [`JobDefinition`] JSON |
//! | `P:{t:T}:jobs` | hash | job name → newest version |
//! | `P:token:<sha256>` | string | the tenant a token belongs to, or [`ADMIN_HOLDER`] for an admin token |
//! | `P:catalog:tenants` | zset | every tenant's name, all scored 0: the listing pages through it by name (`ZRANGE … BYLEX`) |
//! | `P:catalog:admin_tokens` | hash | admin token id → `{hash, created_at, name}` JSON (the listing) |
//!
//! Every key of a tenant carries the tenant in the hash tag `{t:T}`, so a
//! tenant's keys live in one Redis Cluster slot and the scripts below can
//! name all they touch in `KEYS[]`. The `t:` inside the tag and the
//! suffixes (`tenant`, `tokens`, `module:…`, `modules`, `module_bytes`,
//! `job:…`, `jobs`) never equal the broker's queue tags and suffixes, so the
//! two share a server without colliding. Token keys are an exception to
//! "keyed by tenant": a token is looked up before its tenant is known; so
//! are the two `P:catalog:` keys, which span tenants (the broker's keys all
//! start `P:{`, so they never meet). Only the sha256 of a token is stored.
//! One token key names one holder, so a token is one tenant's or an
//! admin's, never both; [`CLAIM_TOKEN`] and `SET NX` refuse a hash that
//! already names another.
//!
//! Quotas are checked inside the script that writes ([`PUT_MODULE`],
//! [`ADD_JOB_VERSION`]), against the limits in the tenant's record read by
//! that same script (the defaults, passed in, for a tenant without a
//! record), so concurrent writers cannot overshoot them. Versions are
//! assigned by [`ADD_JOB_VERSION`] too; stored versions are never rewritten,
//! so reads need no transaction. Modules stored before the module index
//! existed are not counted. This module never validates wasm and never sees
//! tasks.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{Cmd, RedisError, Script};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, Quota};
use crate::job::JobDefinition;
use crate::tenant::{
    Principal, Tenant, TenantInfo, TenantLimits, TokenHash, TokenId, TokenInfo,
    check_new_tenant_name, check_token_name,
};
use corral_client::broker::RedisConfig;
use corral_client::broker::redis::conn::{Conn, Target};
use corral_client::broker::redis::keys::encode;
use corral_sandbox::ModuleHash;

/// The key prefix used when none is given (the broker's default too).
pub const DEFAULT_PREFIX: &str = "corral";

/// Lua shared by the quota scripts: `tenant_limit(key, field, default)` is
/// the limit `field` of the tenant whose record is at `key`, `default` when
/// there is no record or the record predates the field; `nil` when the
/// record does not parse (the scripts answer `-1` then).
const LIMITS_LUA: &str = r#"
local function tenant_limit(key, field, default)
    local record = redis.call('GET', key)
    if not record then
        return tonumber(default)
    end
    local ok, tenant = pcall(cjson.decode, record)
    if not ok or type(tenant) ~= 'table' or type(tenant.limits) ~= 'table' then
        return nil
    end
    local value = tenant.limits[field]
    if value == nil then
        return tonumber(default)
    end
    return tonumber(value)
end
"#;

/// Stores a module's bytes unless that takes the tenant past its quotas.
///
/// - `KEYS[1]` `P:{t:T}:module:<sha256>` (the bytes)
/// - `KEYS[2]` `P:{t:T}:modules` (hash sha256 → size)
/// - `KEYS[3]` `P:{t:T}:module_bytes` (the sizes' sum)
/// - `KEYS[4]` `P:{t:T}:tenant` (the tenant's record, for its limits)
/// - `ARGV[1]` the bytes, `ARGV[2]` the sha256
/// - `ARGV[3]`, `ARGV[4]` the default `max_modules` and
///   `max_module_storage_bytes`
///
/// Returns `1` stored, `0` already stored (nothing changes), `2` over
/// `max_modules`, `3` over `max_module_storage_bytes`, `-1` an unreadable
/// tenant record.
pub const PUT_MODULE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
local max_modules = tenant_limit(KEYS[4], 'max_modules', ARGV[3])
local max_bytes = tenant_limit(KEYS[4], 'max_module_storage_bytes', ARGV[4])
if not max_modules or not max_bytes then
    return -1
end
if redis.call('HLEN', KEYS[2]) >= max_modules then
    return 2
end
local size = string.len(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used + size > max_bytes then
    return 3
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], size)
redis.call('INCRBY', KEYS[3], size)
return 1
"#;

/// Adds the next version of a job, atomically, within the tenant's quotas.
///
/// - `KEYS[1]` `P:{t:T}:job:<name>` (hash version → definition JSON)
/// - `KEYS[2]` `P:{t:T}:jobs` (hash name → newest version)
/// - `KEYS[3]` `P:{t:T}:tenant` (the tenant's record, for its limits)
/// - `ARGV[1]` the job's name
/// - `ARGV[2]` `1` to replace an existing job, `0` to refuse
/// - `ARGV[3]` the definition's JSON (its `version` field is rewritten on
///   read)
/// - `ARGV[4]` the number of handlers in the chain
/// - `ARGV[5..7]` the default `max_handlers_per_job`, `max_jobs`,
///   `max_job_versions`
///
/// Returns `{1, version}` when stored as `version`, `{0, current}` when the
/// job exists and replace was not asked for, `{2, 0}` over
/// `max_handlers_per_job`, `{3, 0}` over `max_jobs`, `{4, current}` over
/// `max_job_versions`, `{-1, 0}` for an unreadable tenant record.
pub const ADD_JOB_VERSION: &str = r#"
local max_handlers = tenant_limit(KEYS[3], 'max_handlers_per_job', ARGV[5])
local max_jobs = tenant_limit(KEYS[3], 'max_jobs', ARGV[6])
local max_versions = tenant_limit(KEYS[3], 'max_job_versions', ARGV[7])
if not max_handlers or not max_jobs or not max_versions then
    return {-1, 0}
end
if tonumber(ARGV[4]) > max_handlers then
    return {2, 0}
end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current > 0 then
    if ARGV[2] ~= '1' then
        return {0, current}
    end
    -- Versions are numbered from 1 without gaps: the newest's number is
    -- how many there are.
    if current >= max_versions then
        return {4, current}
    end
elseif redis.call('HLEN', KEYS[2]) >= max_jobs then
    return {3, 0}
end
local version = current + 1
redis.call('HSET', KEYS[1], tostring(version), ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], version)
return {1, version}
"#;

/// Creates a tenant's record and lists its first token, unless the name is
/// taken.
///
/// - `KEYS[1]` `P:{t:T}:tenant`, `KEYS[2]` `P:{t:T}:tokens`
/// - `ARGV[1]` the record, `ARGV[2]` the token's id, `ARGV[3]` its listing
///
/// Returns `1` created, `0` the name is taken (nothing changes).
pub const CREATE_TENANT: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
    return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

/// Lists a token of an existing tenant.
///
/// - `KEYS[1]` `P:{t:T}:tenant`, `KEYS[2]` `P:{t:T}:tokens`
/// - `ARGV[1]` the token's id, `ARGV[2]` its listing
///
/// Returns `1` listed, `0` no such tenant (nothing changes).
pub const LIST_TOKEN: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

/// Points `KEYS[1]` (a token key) at tenant `ARGV[1]` unless it already
/// names another holder (a tenant or [`ADMIN_HOLDER`]). Returns `1` set,
/// `0` in use (nothing changes).
pub const CLAIM_TOKEN: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

/// Deletes `KEYS[1]` (a token key) unless it is an admin token's (its value
/// `ARGV[1]`, [`ADMIN_HOLDER`]); returns the tenant it named, or nil when
/// there was none (or it is an admin's, left as it is).
pub const REVOKE_TENANT_TOKEN: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
    return false
end
redis.call('DEL', KEYS[1])
return holder
"#;

/// Removes a job, every version.
///
/// - `KEYS[1]` `P:{t:T}:job:<name>`, `KEYS[2]` `P:{t:T}:jobs`
/// - `ARGV[1]` the job's name
///
/// Returns `1` removed, `0` there was no such job.
pub const DELETE_JOB: &str = r#"
local indexed = redis.call('HDEL', KEYS[2], ARGV[1])
local stored = redis.call('DEL', KEYS[1])
if indexed + stored > 0 then
    return 1
end
return 0
"#;

/// What a token key holds for an admin token: not a tenant name (those are
/// letters, digits, `-`, `_`, `.`), so no tenant can be called that.
pub const ADMIN_HOLDER: &str = "!admin";

/// Deletes `KEYS[1]` (a token key) only if it still names tenant `ARGV[1]`.
/// Returns `1` deleted, `0` not.
pub const DELETE_IF: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A token's listing as stored in `P:{t:T}:tokens` and
/// `P:catalog:admin_tokens`.
#[derive(Serialize, Deserialize)]
struct TokenEntry {
    hash: TokenHash,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// A tenant's record as stored at `P:{t:T}:tenant`: the [`Tenant`] and
/// when it was created (records written before the time was kept have
/// none). The scripts read only its `limits`.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    tenant: Tenant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
}

/// A [`Catalog`] in Redis (standalone or cluster).
#[derive(Clone)]
pub struct RedisCatalog {
    conn: Conn,
    prefix: String,
    scripts: Arc<Scripts>,
}

struct Scripts {
    put_module: Script,
    add_version: Script,
    create_tenant: Script,
    list_token: Script,
    delete_if: Script,
    claim_token: Script,
    revoke_tenant_token: Script,
    delete_job: Script,
}

/// `P:{t:T}:suffix`: a key of `tenant`, in the tenant's hash tag.
fn tenant_key(prefix: &str, tenant: &str, suffix: &str) -> String {
    format!("{prefix}:{{t:{}}}:{suffix}", encode(tenant))
}

fn unavailable(op: &'static str, e: RedisError) -> CatalogError {
    CatalogError::Unavailable(format!("{op}: {e}"))
}

fn corrupt(op: &'static str, what: impl std::fmt::Display) -> CatalogError {
    CatalogError::Corrupt(format!("{op}: {what}"))
}

/// A token's id and its listing's JSON, as stored in `P:{t:T}:tokens`.
fn listing(op: &'static str, token: &TokenHash) -> Result<(TokenId, Vec<u8>), CatalogError> {
    let entry = TokenEntry {
        hash: token.clone(),
        created_at: Utc::now(),
        name: None,
    };
    let json = serde_json::to_vec(&entry).map_err(|e| corrupt(op, e))?;
    Ok((token.id(), json))
}

impl RedisCatalog {
    /// Connects to the server at `url` (`redis://host:port/db`; several
    /// comma-separated URLs are a Redis Cluster's seed nodes, as for the
    /// broker), keys under [`DEFAULT_PREFIX`]. The connection is the
    /// broker's kind: it reconnects by itself with backoff.
    pub async fn connect(url: &str) -> Result<Self, CatalogError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Like [`connect`](Self::connect), with keys under `prefix`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, CatalogError> {
        let nodes: Vec<String> = url
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let cluster = nodes.len() > 1;
        Self::connect_nodes(&nodes, cluster, prefix).await
    }

    /// Connects to a Redis Cluster through its seed `nodes` (or, with
    /// `cluster` false and one node, to a standalone server).
    pub async fn connect_nodes(
        nodes: &[String],
        cluster: bool,
        prefix: &str,
    ) -> Result<Self, CatalogError> {
        let failed =
            |e: corral_client::broker::BrokerError| CatalogError::Unavailable(e.to_string());
        let conn = Target::new(nodes, cluster)
            .map_err(failed)?
            .connect()
            .await
            .map_err(failed)?;
        let this = Self::new(conn, prefix);
        this.query::<()>("catalog connect", &redis::cmd("PING"))
            .await?;
        Ok(this)
    }

    /// Connects where the broker's `config` points (its nodes, TLS
    /// certificates and key prefix).
    pub async fn connect_config(config: &RedisConfig) -> Result<Self, CatalogError> {
        let failed =
            |e: corral_client::broker::BrokerError| CatalogError::Unavailable(e.to_string());
        let conn = config
            .target()
            .map_err(failed)?
            .connect()
            .await
            .map_err(failed)?;
        let this = Self::new(conn, config.key_prefix());
        this.query::<()>("catalog connect", &redis::cmd("PING"))
            .await?;
        Ok(this)
    }

    fn new(conn: Conn, prefix: &str) -> Self {
        let with_limits = |body: &str| Script::new(&format!("{LIMITS_LUA}{body}"));
        Self {
            conn,
            prefix: prefix.to_owned(),
            scripts: Arc::new(Scripts {
                put_module: with_limits(PUT_MODULE),
                add_version: with_limits(ADD_JOB_VERSION),
                create_tenant: Script::new(CREATE_TENANT),
                list_token: Script::new(LIST_TOKEN),
                delete_if: Script::new(DELETE_IF),
                claim_token: Script::new(CLAIM_TOKEN),
                revoke_tenant_token: Script::new(REVOKE_TENANT_TOKEN),
                delete_job: Script::new(DELETE_JOB),
            }),
        }
    }

    fn tenant_key(&self, tenant: &str, suffix: &str) -> String {
        tenant_key(&self.prefix, tenant, suffix)
    }

    fn token_key(&self, token: &TokenHash) -> String {
        format!("{}:token:{}", self.prefix, encode(&token.0))
    }

    /// `P:catalog:tenants`: every tenant's name, for the listing.
    fn tenant_index_key(&self) -> String {
        format!("{}:catalog:tenants", self.prefix)
    }

    /// `P:catalog:admin_tokens`: the admin tokens' listing.
    fn admin_tokens_key(&self) -> String {
        format!("{}:catalog:admin_tokens", self.prefix)
    }

    /// Points `token` at `tenant`, unless it names another holder.
    async fn claim_token(
        &self,
        op: &'static str,
        tenant: &str,
        token: &TokenHash,
    ) -> Result<(), CatalogError> {
        let claimed: i64 = self
            .invoke(
                op,
                self.scripts
                    .claim_token
                    .key(self.token_key(token))
                    .arg(tenant),
            )
            .await?;
        match claimed {
            1 => Ok(()),
            _ => Err(CatalogError::TokenInUse),
        }
    }

    /// The tenant's record, parsed and checked to be `name`'s.
    async fn record(&self, op: &'static str, name: &str) -> Result<Option<Record>, CatalogError> {
        let record: Option<Vec<u8>> = self
            .query(op, redis::cmd("GET").arg(self.tenant_key(name, "tenant")))
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&record)
            .map_err(|e| corrupt(op, format!("tenant `{name}`: {e}")))?;
        if record.tenant.name != name {
            return Err(corrupt(
                op,
                format!("record of tenant `{name}` names `{}`", record.tenant.name),
            ));
        }
        Ok(Some(record))
    }

    /// The listing of one tenant's tokens, or of the admin tokens, at `key`.
    async fn listed_tokens(
        &self,
        op: &'static str,
        key: String,
        whose: &str,
    ) -> Result<Vec<TokenInfo>, CatalogError> {
        let entries: Vec<(String, Vec<u8>)> =
            self.query(op, redis::cmd("HGETALL").arg(key)).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let id = TokenId::parse(&id)
                .ok_or_else(|| corrupt(op, format!("token id `{id}` of {whose}")))?;
            let entry: TokenEntry = serde_json::from_slice(&entry)
                .map_err(|e| corrupt(op, format!("token {id} of {whose}: {e}")))?;
            out.push(TokenInfo {
                id,
                created_at: entry.created_at,
                name: entry.name,
            });
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn module_key(&self, tenant: &str, hash: &ModuleHash) -> String {
        self.tenant_key(tenant, &format!("module:{}", encode(hash.as_str())))
    }

    fn job_key(&self, tenant: &str, name: &str) -> String {
        self.tenant_key(tenant, &format!("job:{}", encode(name)))
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, CatalogError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| unavailable(op, e))
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T, CatalogError> {
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(op, e))
    }

    /// The refusal for `quota`, naming the tenant's limit as it is now (the
    /// script decided against the same record, read a moment earlier).
    async fn over_quota(&self, tenant: &str, quota: Quota) -> CatalogError {
        match self.tenant(tenant).await {
            Ok(found) => CatalogError::OverQuota {
                quota,
                limit: quota.limit(&found.map(|t| t.limits).unwrap_or_default()),
            },
            Err(e) => e,
        }
    }

    /// Parses a stored definition and checks it is the one asked for.
    fn definition(
        op: &'static str,
        tenant: &str,
        name: &str,
        version: u32,
        json: &[u8],
    ) -> Result<JobDefinition, CatalogError> {
        let mut def: JobDefinition = serde_json::from_slice(json)
            .map_err(|e| corrupt(op, format!("job `{name}` v{version}: {e}")))?;
        if def.tenant != tenant || def.name != name {
            return Err(corrupt(
                op,
                format!(
                    "record of job `{name}` names `{}`/`{}`",
                    def.tenant, def.name
                ),
            ));
        }
        def.version = version;
        Ok(def)
    }
}

#[async_trait]
impl Catalog for RedisCatalog {
    async fn create_tenant(&self, tenant: &Tenant, token: &TokenHash) -> Result<(), CatalogError> {
        let op = "create_tenant";
        check_new_tenant_name(&tenant.name).map_err(CatalogError::InvalidTenantName)?;
        let record = Record {
            tenant: tenant.clone(),
            created_at: Some(Utc::now()),
        };
        let record = serde_json::to_vec(&record).map_err(|e| corrupt(op, e))?;
        let (id, listing) = listing(op, token)?;
        // The record and the listing first, in one script (one slot); the
        // index and the token key, in other slots, after. Until the token
        // key is written the tenant exists with a listed token that does not
        // work yet; a taken name never gets a token key at all.
        let created: i64 = self
            .invoke(
                op,
                self.scripts
                    .create_tenant
                    .key(self.tenant_key(&tenant.name, "tenant"))
                    .key(self.tenant_key(&tenant.name, "tokens"))
                    .arg(record)
                    .arg(id.as_str())
                    .arg(listing),
            )
            .await?;
        if created == 0 {
            return Err(CatalogError::TenantExists(tenant.name.clone()));
        }
        self.query::<()>(
            op,
            redis::cmd("ZADD")
                .arg(self.tenant_index_key())
                .arg(0)
                .arg(&tenant.name),
        )
        .await?;
        if let Err(e) = self.claim_token(op, &tenant.name, token).await {
            // The hash names someone else: the tenant stays, without it.
            self.query::<()>(
                op,
                redis::cmd("HDEL")
                    .arg(self.tenant_key(&tenant.name, "tokens"))
                    .arg(id.as_str()),
            )
            .await?;
            return Err(e);
        }
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, CatalogError> {
        Ok(self.record("tenant", name).await?.map(|r| r.tenant))
    }

    async fn add_token(&self, tenant: &str, token: &TokenHash) -> Result<(), CatalogError> {
        let op = "add_token";
        let (id, listing) = listing(op, token)?;
        // Listed first: a token is never in use without an id to revoke it
        // by.
        let listed: i64 = self
            .invoke(
                op,
                self.scripts
                    .list_token
                    .key(self.tenant_key(tenant, "tenant"))
                    .key(self.tenant_key(tenant, "tokens"))
                    .arg(id.as_str())
                    .arg(listing),
            )
            .await?;
        if listed == 0 {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        }
        if let Err(e) = self.claim_token(op, tenant, token).await {
            self.query::<()>(
                op,
                redis::cmd("HDEL")
                    .arg(self.tenant_key(tenant, "tokens"))
                    .arg(id.as_str()),
            )
            .await?;
            return Err(e);
        }
        Ok(())
    }

    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError> {
        let op = "revoke_token";
        // The token stops working first; then its listing goes. An admin
        // token is left alone.
        let tenant: Option<String> = self
            .invoke(
                op,
                self.scripts
                    .revoke_tenant_token
                    .key(self.token_key(token))
                    .arg(ADMIN_HOLDER),
            )
            .await?;
        if let Some(tenant) = &tenant {
            self.query::<()>(
                op,
                redis::cmd("HDEL")
                    .arg(self.tenant_key(tenant, "tokens"))
                    .arg(token.id().as_str()),
            )
            .await?;
        }
        Ok(tenant)
    }

    async fn revoke_token_id(&self, tenant: &str, id: &TokenId) -> Result<bool, CatalogError> {
        let op = "revoke_token_id";
        let tokens = self.tenant_key(tenant, "tokens");
        let entry: Option<Vec<u8>> = self
            .query(op, redis::cmd("HGET").arg(&tokens).arg(id.as_str()))
            .await?;
        let Some(entry) = entry else {
            return Ok(false);
        };
        let entry: TokenEntry = serde_json::from_slice(&entry)
            .map_err(|e| corrupt(op, format!("token {id} of `{tenant}`: {e}")))?;
        // Only a token key that names this tenant is deleted: a listing
        // cannot reach another tenant's token.
        self.invoke::<i64>(
            op,
            self.scripts
                .delete_if
                .key(self.token_key(&entry.hash))
                .arg(tenant),
        )
        .await?;
        self.query::<()>(op, redis::cmd("HDEL").arg(&tokens).arg(id.as_str()))
            .await?;
        Ok(true)
    }

    async fn tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>, CatalogError> {
        let op = "tokens";
        if self.tenant(tenant).await?.is_none() {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        }
        self.listed_tokens(
            op,
            self.tenant_key(tenant, "tokens"),
            &format!("`{tenant}`"),
        )
        .await
    }

    async fn set_limits(&self, tenant: &str, limits: &TenantLimits) -> Result<(), CatalogError> {
        let op = "set_limits";
        let Some(mut record) = self.record(op, tenant).await? else {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        };
        record.tenant.limits = *limits;
        let json = serde_json::to_vec(&record).map_err(|e| corrupt(op, e))?;
        // XX: only over the existing record, never creating a tenant.
        let written: Option<String> = self
            .query(
                op,
                redis::cmd("SET")
                    .arg(self.tenant_key(tenant, "tenant"))
                    .arg(json)
                    .arg("XX"),
            )
            .await?;
        match written {
            Some(_) => Ok(()),
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
        let holder: Option<String> = self
            .query(
                "principal_for_token",
                redis::cmd("GET").arg(self.token_key(token)),
            )
            .await?;
        match holder {
            Some(holder) if holder == ADMIN_HOLDER => Ok(Some(Principal::Admin(token.id()))),
            Some(name) => Ok(self.tenant(&name).await?.map(Principal::Tenant)),
            None => Ok(None),
        }
    }

    async fn add_admin_token(
        &self,
        token: &TokenHash,
        name: Option<&str>,
    ) -> Result<TokenInfo, CatalogError> {
        let op = "add_admin_token";
        if let Some(name) = name {
            check_token_name(name).map_err(CatalogError::InvalidTokenName)?;
        }
        let entry = TokenEntry {
            hash: token.clone(),
            created_at: Utc::now(),
            name: name.map(str::to_owned),
        };
        let json = serde_json::to_vec(&entry).map_err(|e| corrupt(op, e))?;
        let id = token.id();
        // Listed first (a token is never in use without an id to revoke it
        // by), never over a listing already there (that token, made
        // before), then claimed only if the hash names no one.
        let listed: i64 = self
            .query(
                op,
                redis::cmd("HSETNX")
                    .arg(self.admin_tokens_key())
                    .arg(id.as_str())
                    .arg(json),
            )
            .await?;
        if listed == 0 {
            return Err(CatalogError::TokenInUse);
        }
        let set: Option<String> = self
            .query(
                op,
                redis::cmd("SET")
                    .arg(self.token_key(token))
                    .arg(ADMIN_HOLDER)
                    .arg("NX"),
            )
            .await?;
        if set.is_none() {
            self.query::<()>(
                op,
                redis::cmd("HDEL")
                    .arg(self.admin_tokens_key())
                    .arg(id.as_str()),
            )
            .await?;
            return Err(CatalogError::TokenInUse);
        }
        Ok(TokenInfo {
            id,
            created_at: entry.created_at,
            name: entry.name,
        })
    }

    async fn admin_tokens(&self) -> Result<Vec<TokenInfo>, CatalogError> {
        self.listed_tokens("admin_tokens", self.admin_tokens_key(), "the operator")
            .await
    }

    async fn revoke_admin_token(&self, id: &TokenId) -> Result<bool, CatalogError> {
        let op = "revoke_admin_token";
        let key = self.admin_tokens_key();
        let entry: Option<Vec<u8>> = self
            .query(op, redis::cmd("HGET").arg(&key).arg(id.as_str()))
            .await?;
        let Some(entry) = entry else {
            return Ok(false);
        };
        let entry: TokenEntry = serde_json::from_slice(&entry)
            .map_err(|e| corrupt(op, format!("admin token {id}: {e}")))?;
        // It stops working first, and only a key still holding an admin
        // token goes: a listing cannot reach a tenant's token.
        self.invoke::<i64>(
            op,
            self.scripts
                .delete_if
                .key(self.token_key(&entry.hash))
                .arg(ADMIN_HOLDER),
        )
        .await?;
        self.query::<()>(op, redis::cmd("HDEL").arg(&key).arg(id.as_str()))
            .await?;
        Ok(true)
    }

    async fn tenants_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TenantInfo>, CatalogError> {
        let op = "tenants_page";
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Names sort as bytes, as `str` does; `(name` starts after it.
        let from = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let names: Vec<String> = self
            .query(
                op,
                redis::cmd("ZRANGE")
                    .arg(self.tenant_index_key())
                    .arg(from)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let mut out = Vec::with_capacity(names.len());
        // Each tenant's keys are in its own slot: one read each, the page's
        // worth at once.
        let reads = names.iter().map(|name| async move {
            let record = self.record(op, name).await?;
            let tokens: u64 = self
                .query(op, redis::cmd("HLEN").arg(self.tenant_key(name, "tokens")))
                .await?;
            Ok::<_, CatalogError>(record.map(|r| TenantInfo {
                tenant: r.tenant,
                created_at: r.created_at,
                tokens,
            }))
        });
        for info in futures_util::future::try_join_all(reads).await? {
            // An index entry without a record is skipped (the record is
            // written first; nothing deletes one yet).
            out.extend(info);
        }
        Ok(out)
    }

    async fn delete_job(&self, tenant: &str, name: &str) -> Result<bool, CatalogError> {
        let removed: i64 = self
            .invoke(
                "delete_job",
                self.scripts
                    .delete_job
                    .key(self.job_key(tenant, name))
                    .key(self.tenant_key(tenant, "jobs"))
                    .arg(name),
            )
            .await?;
        Ok(removed == 1)
    }

    async fn put_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        let op = "put_module";
        let defaults = TenantLimits::default();
        let outcome: i64 = self
            .invoke(
                op,
                self.scripts
                    .put_module
                    .key(self.module_key(tenant, hash))
                    .key(self.tenant_key(tenant, "modules"))
                    .key(self.tenant_key(tenant, "module_bytes"))
                    .key(self.tenant_key(tenant, "tenant"))
                    .arg(bytes)
                    .arg(hash.as_str())
                    .arg(defaults.max_modules)
                    .arg(defaults.max_module_storage_bytes),
            )
            .await?;
        match outcome {
            0 | 1 => Ok(()),
            2 => Err(self.over_quota(tenant, Quota::Modules).await),
            3 => Err(self.over_quota(tenant, Quota::ModuleStorage).await),
            -1 => Err(corrupt(op, format!("the record of tenant `{tenant}`"))),
            other => Err(corrupt(op, format!("unexpected script reply {other}"))),
        }
    }

    async fn module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        self.query(
            "module",
            redis::cmd("GET").arg(self.module_key(tenant, hash)),
        )
        .await
    }

    async fn has_module(&self, tenant: &str, hash: &ModuleHash) -> Result<bool, CatalogError> {
        let n: i64 = self
            .query(
                "has_module",
                redis::cmd("EXISTS").arg(self.module_key(tenant, hash)),
            )
            .await?;
        Ok(n > 0)
    }

    async fn add_job_version(
        &self,
        mut definition: JobDefinition,
        replace: bool,
    ) -> Result<JobDefinition, CatalogError> {
        let op = "add_job_version";
        definition.version = 0;
        let json = serde_json::to_vec(&definition).map_err(|e| corrupt(op, e))?;
        let defaults = TenantLimits::default();
        let tenant = &definition.tenant;
        let reply: Vec<i64> = self
            .invoke(
                op,
                self.scripts
                    .add_version
                    .key(self.job_key(tenant, &definition.name))
                    .key(self.tenant_key(tenant, "jobs"))
                    .key(self.tenant_key(tenant, "tenant"))
                    .arg(&definition.name)
                    .arg(if replace { "1" } else { "0" })
                    .arg(json)
                    .arg(definition.handlers.len())
                    .arg(defaults.max_handlers_per_job)
                    .arg(defaults.max_jobs)
                    .arg(defaults.max_job_versions),
            )
            .await?;
        let version = |v: i64| u32::try_from(v).map_err(|_| corrupt(op, "version out of range"));
        match reply.as_slice() {
            [1, v] => {
                definition.version = version(*v)?;
                Ok(definition)
            }
            [0, current] => Err(CatalogError::JobExists {
                name: definition.name,
                version: version(*current)?,
            }),
            [2, _] => Err(self.over_quota(tenant, Quota::HandlersPerJob).await),
            [3, _] => Err(self.over_quota(tenant, Quota::Jobs).await),
            [4, _] => Err(self.over_quota(tenant, Quota::JobVersions).await),
            [-1, _] => Err(corrupt(op, format!("the record of tenant `{tenant}`"))),
            other => Err(corrupt(op, format!("unexpected script reply {other:?}"))),
        }
    }

    async fn job(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<JobDefinition>, CatalogError> {
        let op = "job";
        let version = match version {
            Some(v) => v,
            None => {
                let latest: Option<u32> = self
                    .query(
                        op,
                        redis::cmd("HGET")
                            .arg(self.tenant_key(tenant, "jobs"))
                            .arg(name),
                    )
                    .await?;
                match latest {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
        };
        let json: Option<Vec<u8>> = self
            .query(
                op,
                redis::cmd("HGET")
                    .arg(self.job_key(tenant, name))
                    .arg(version),
            )
            .await?;
        json.map(|json| Self::definition(op, tenant, name, version, &json))
            .transpose()
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
        let op = "jobs";
        // The index holds names and numbers only (at most `max_jobs` of
        // them); only the page's definitions are read.
        let index: std::collections::HashMap<String, u32> = self
            .query(
                op,
                redis::cmd("HGETALL").arg(self.tenant_key(tenant, "jobs")),
            )
            .await?;
        let mut latest: Vec<(String, u32)> = index
            .into_iter()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .collect();
        latest.sort();
        latest.truncate(limit);
        if latest.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (name, version) in &latest {
            pipe.cmd("HGET")
                .arg(self.job_key(tenant, name))
                .arg(*version);
        }
        let mut conn = self.conn.clone();
        let records: Vec<Option<Vec<u8>>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(op, e))?;
        let mut out = Vec::with_capacity(latest.len());
        for ((name, version), json) in latest.iter().zip(records) {
            let json = json.ok_or_else(|| {
                corrupt(
                    op,
                    format!("job `{name}` v{version} is indexed but not stored"),
                )
            })?;
            out.push(Self::definition(op, tenant, name, *version, &json)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_in_one_hash_tag() {
        assert_eq!(tenant_key("corral", "acme", "jobs"), "corral:{t:acme}:jobs");
        assert_eq!(tenant_key("p", "a}b{", "tenant"), "p:{t:a%7Db%7B}:tenant");
        assert_eq!(encode("job:x y"), "job%3Ax%20y");
    }
}
