//! The Redis catalog: tenants, tokens, module bytes and job versions in the
//! broker's Redis, so every API and worker process sees the same registry.
//!
//! Key layout, with `P` the prefix (`corral` by default) and `T` the tenant's
//! name percent-encoded as the broker's keys are ([`encode`]):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{t:T}:tenant` | string | the [`Tenant`] as JSON (name and limits) |
//! | `P:{t:T}:module:<sha256>` | string | a module's bytes, stored once |
//! | `P:{t:T}:job:<name>` | hash | version → [`JobDefinition`] JSON |
//! | `P:{t:T}:jobs` | hash | job name → newest version |
//! | `P:token:<sha256>` | string | the tenant a token belongs to |
//!
//! Every key of a tenant carries the tenant in the hash tag `{t:T}`, so a
//! tenant's keys live in one Redis Cluster slot and the version script below
//! can name all it touches in `KEYS[]`. The `t:` inside the tag and the
//! suffixes (`tenant`, `module:…`, `job:…`, `jobs`) never equal the broker's
//! queue tags and suffixes, so the two share a server without colliding.
//! Token keys are the one exception to "keyed by tenant": a token is looked up
//! before its tenant is known. Only the sha256 of a token is stored.
//!
//! Versions are assigned atomically by one Lua script ([`ADD_JOB_VERSION`]);
//! stored versions are never rewritten, so reads need no transaction.
//! This module never validates wasm and never sees tasks.

use async_trait::async_trait;
use redis::{Cmd, RedisError, Script};

use super::{Catalog, CatalogError};
use crate::broker::redis::conn::{Conn, Target};
use crate::broker::redis::keys::encode;
use crate::registry::JobDefinition;
use crate::sandbox::ModuleHash;
use crate::tenant::{Tenant, TenantLimits, TokenHash};

/// The key prefix used when none is given (the broker's default too).
pub const DEFAULT_PREFIX: &str = "corral";

/// Adds the next version of a job, atomically.
///
/// - `KEYS[1]` `P:{t:T}:job:<name>` (hash version → definition JSON)
/// - `KEYS[2]` `P:{t:T}:jobs` (hash name → newest version)
/// - `ARGV[1]` the job's name
/// - `ARGV[2]` `1` to replace an existing job, `0` to refuse
/// - `ARGV[3]` the definition's JSON (its `version` field is rewritten on
///   read)
///
/// Returns `{1, version}` when stored as `version`, `{0, current}` when the
/// job exists and replace was not asked for.
pub const ADD_JOB_VERSION: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current > 0 and ARGV[2] ~= '1' then
    return {0, current}
end
local version = current + 1
redis.call('HSET', KEYS[1], tostring(version), ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], version)
return {1, version}
"#;

/// A [`Catalog`] in Redis (standalone or cluster).
#[derive(Clone)]
pub struct RedisCatalog {
    conn: Conn,
    prefix: String,
    add_version: Script,
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
        let failed = |e: crate::broker::BrokerError| CatalogError::Unavailable(e.to_string());
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

    fn new(conn: Conn, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            add_version: Script::new(ADD_JOB_VERSION),
        }
    }

    fn tenant_key(&self, tenant: &str, suffix: &str) -> String {
        tenant_key(&self.prefix, tenant, suffix)
    }

    fn token_key(&self, token: &TokenHash) -> String {
        format!("{}:token:{}", self.prefix, encode(&token.0))
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
        let record = serde_json::to_vec(tenant).map_err(|e| corrupt(op, e))?;
        let token_key = self.token_key(token);
        // The token first: until the tenant record exists it leads nowhere
        // (`tenant_for_token` needs both), and if the name turns out to be
        // taken the token is removed again. The two keys live in different
        // cluster slots, so they cannot be written in one transaction.
        self.query::<()>(op, redis::cmd("SET").arg(&token_key).arg(&tenant.name))
            .await?;
        let created: Option<String> = self
            .query(
                op,
                redis::cmd("SET")
                    .arg(self.tenant_key(&tenant.name, "tenant"))
                    .arg(record)
                    .arg("NX"),
            )
            .await?;
        if created.is_none() {
            self.query::<()>(op, redis::cmd("DEL").arg(&token_key))
                .await?;
            return Err(CatalogError::TenantExists(tenant.name.clone()));
        }
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>, CatalogError> {
        let op = "tenant";
        let record: Option<Vec<u8>> = self
            .query(op, redis::cmd("GET").arg(self.tenant_key(name, "tenant")))
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let tenant: Tenant = serde_json::from_slice(&record)
            .map_err(|e| corrupt(op, format!("tenant `{name}`: {e}")))?;
        if tenant.name != name {
            return Err(corrupt(
                op,
                format!("record of tenant `{name}` names `{}`", tenant.name),
            ));
        }
        Ok(Some(tenant))
    }

    async fn add_token(&self, tenant: &str, token: &TokenHash) -> Result<(), CatalogError> {
        if self.tenant(tenant).await?.is_none() {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        }
        self.query::<()>(
            "add_token",
            redis::cmd("SET").arg(self.token_key(token)).arg(tenant),
        )
        .await
    }

    async fn revoke_token(&self, token: &TokenHash) -> Result<Option<String>, CatalogError> {
        self.query(
            "revoke_token",
            redis::cmd("GETDEL").arg(self.token_key(token)),
        )
        .await
    }

    async fn set_limits(&self, tenant: &str, limits: &TenantLimits) -> Result<(), CatalogError> {
        let op = "set_limits";
        let Some(mut record) = self.tenant(tenant).await? else {
            return Err(CatalogError::UnknownTenant(tenant.to_owned()));
        };
        record.limits = *limits;
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
        let name: Option<String> = self
            .query(
                "tenant_for_token",
                redis::cmd("GET").arg(self.token_key(token)),
            )
            .await?;
        match name {
            Some(name) => self.tenant(&name).await,
            None => Ok(None),
        }
    }

    async fn put_module(
        &self,
        tenant: &str,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        // NX: content-addressed, so an existing value is these same bytes.
        self.query::<Option<String>>(
            "put_module",
            redis::cmd("SET")
                .arg(self.module_key(tenant, hash))
                .arg(bytes)
                .arg("NX"),
        )
        .await?;
        Ok(())
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
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self
            .add_version
            .key(self.job_key(&definition.tenant, &definition.name))
            .key(self.tenant_key(&definition.tenant, "jobs"))
            .arg(&definition.name)
            .arg(if replace { "1" } else { "0" })
            .arg(json)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(op, e))?;
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
        let op = "jobs";
        let index: std::collections::HashMap<String, u32> = self
            .query(
                op,
                redis::cmd("HGETALL").arg(self.tenant_key(tenant, "jobs")),
            )
            .await?;
        let mut latest: Vec<(String, u32)> = index.into_iter().collect();
        latest.sort();
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
