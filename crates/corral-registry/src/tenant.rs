//! Tenants: who owns jobs, modules and tasks, and what each may use.
//!
//! A [`Tenant`] has a name, [`TenantLimits`] and API tokens. Tokens are shown
//! once when created and stored only as their sha256 ([`TokenHash`]), so a
//! leaked store does not leak credentials; each has a short public id
//! ([`TokenId`], from the hash) by which an operator lists and revokes it
//! without ever handling the secret again. Admin tokens (an operator's, see
//! [`Principal`]) are made, hashed and listed the same way, but name no
//! tenant: a token is one tenant's or an admin's, never both. The name
//! [`DEFAULT_TENANT`] is
//! reserved: tasks enqueued without a tenant land there, so no registered
//! tenant may take it ([`check_new_tenant_name`]). This module owns the model
//! and the limit checks; storage is the catalog's, enforcement points call
//! [`TenantLimits`]'s checks. It never stores anything and never sees a
//! token's secret after hashing it.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use corral_client::broker::RateLimit;
use corral_core::task::DEFAULT_TENANT;
use corral_sandbox::Limits;

/// What one tenant may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Highest fuel a job of this tenant may set per handler call.
    pub max_fuel: u64,
    /// Highest memory a job may set per handler instance, in bytes.
    pub max_memory_bytes: u64,
    /// Longest wall-clock time a job may set per handler call, in ms.
    pub max_timeout_ms: u64,
    /// Tasks of this tenant running at once over all workers together.
    /// (A tenant not in the catalog has no such cap: see
    /// `Registry::catalog_limits`.)
    pub max_concurrency: u32,
    /// Tasks of this tenant waiting (pending, delayed or retrying) at once.
    pub max_queued: u64,
    /// Largest module this tenant may upload, in bytes.
    pub max_module_bytes: u64,
    /// Distinct queue names this tenant may have tasks in.
    pub max_queues: u32,
    /// Modules this tenant may have stored.
    pub max_modules: u32,
    /// Bytes of modules this tenant may have stored, all together.
    pub max_module_storage_bytes: u64,
    /// Jobs (names) this tenant may register.
    pub max_jobs: u32,
    /// Versions one job may have.
    pub max_job_versions: u32,
    /// Handlers one job's chain may have.
    pub max_handlers_per_job: u32,
    /// Highest `max_output_bytes` a job of this tenant may set.
    pub max_output_bytes: u64,
    /// Highest `max_log_bytes` a job of this tenant may set.
    pub max_log_bytes: u64,
    /// Schedules this tenant may have.
    pub max_schedules: u32,
    /// At most this many of the tenant's tasks start per window, over
    /// all workers together (`None`: no rate limit).
    pub rate_limit: Option<RateLimit>,
    /// Unique keys the tenant may hold at once.
    pub max_unique_keys: u64,
    /// Workflows the tenant may have stored at once: running ones, and
    /// ended ones until the retention of completed tasks drops them.
    pub max_workflows: u32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_fuel: 10_000_000_000,
            max_memory_bytes: 256 << 20,
            max_timeout_ms: 300_000,
            max_concurrency: 64,
            max_queued: 1_000_000,
            max_module_bytes: 32 << 20,
            max_queues: 100,
            max_modules: 1_000,
            max_module_storage_bytes: 1 << 30,
            max_jobs: 1_000,
            max_job_versions: 100,
            max_handlers_per_job: 32,
            max_output_bytes: 4 << 20,
            max_log_bytes: 1 << 20,
            max_schedules: 100,
            rate_limit: None,
            max_unique_keys: 100_000,
            max_workflows: 1_000,
        }
    }
}

impl TenantLimits {
    /// The job limits as the tenant may have them: each narrowed to the
    /// tenant's ceiling.
    pub fn cap(&self, limits: &Limits) -> Limits {
        Limits {
            fuel: limits.fuel.min(self.max_fuel),
            memory_bytes: limits.memory_bytes.min(self.max_memory_bytes),
            timeout_ms: limits.timeout_ms.min(self.max_timeout_ms),
            max_output_bytes: limits.max_output_bytes.min(self.max_output_bytes),
            max_log_bytes: limits.max_log_bytes.min(self.max_log_bytes),
        }
    }

    /// Refuses job limits above the tenant's ceilings, naming the first.
    pub fn check_job_limits(&self, limits: &Limits) -> Result<(), String> {
        for (name, asked, max) in [
            ("fuel", limits.fuel, self.max_fuel),
            ("memory_bytes", limits.memory_bytes, self.max_memory_bytes),
            ("timeout_ms", limits.timeout_ms, self.max_timeout_ms),
            (
                "max_output_bytes",
                limits.max_output_bytes,
                self.max_output_bytes,
            ),
            ("max_log_bytes", limits.max_log_bytes, self.max_log_bytes),
        ] {
            if asked > max {
                return Err(format!(
                    "job limit `{name}` = {asked} is over the tenant's maximum of {max}"
                ));
            }
        }
        Ok(())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Unique name; part of every key the tenant's data lives under.
    pub name: String,
    /// What the tenant may use.
    pub limits: TenantLimits,
}

/// Checks a tenant name: 1 to 64 of `a-z A-Z 0-9 - _ .`.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks the name of a tenant about to be created: well formed, and not
/// [`DEFAULT_TENANT`], where tasks enqueued without a tenant (the client
/// library, `corral enqueue`, raw pushes) land; a registered tenant of that
/// name would see and run them. The error says why, for people.
pub fn check_new_tenant_name(name: &str) -> Result<(), String> {
    if !valid_tenant_name(name) {
        return Err(format!(
            "invalid tenant name `{name}`: use 1 to 64 of letters, digits, `-`, `_`, `.`"
        ));
    }
    if name == DEFAULT_TENANT {
        return Err(format!(
            "the tenant name `{DEFAULT_TENANT}` is reserved: tasks enqueued without a tenant \
             land there; choose another name"
        ));
    }
    Ok(())
}

/// An API token as issued: `crl_` and 64 hex digits. Shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("crl_{}", hex(&bytes)))
    }

    /// Wraps a token presented by a caller.
    pub fn from_presented(text: &str) -> Self {
        Self(text.trim().to_owned())
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored in place of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(hex(&Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The sha256 of a token, hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl TokenHash {
    /// The token's public id: `tok_` and the hash's first 12 hex digits.
    /// Derived rather than drawn, so whoever holds the secret (or its hash)
    /// finds the id without another index. 48 bits tell nothing useful about
    /// a 256-bit secret; two tokens of one tenant sharing an id would take
    /// some 16 million tokens.
    pub fn id(&self) -> TokenId {
        let prefix: String = self.0.chars().take(TokenId::HEX_DIGITS).collect();
        TokenId(format!("{}{prefix}", TokenId::PREFIX))
    }
}

/// A token's public id (`tok_` and 12 hex digits): safe to print, list and
/// put on a command line; it authenticates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(String);

impl TokenId {
    const PREFIX: &'static str = "tok_";
    const HEX_DIGITS: usize = 12;

    /// Parses an id as printed: `tok_` and 12 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix(Self::PREFIX)?;
        (hex.len() == Self::HEX_DIGITS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(text.to_owned()))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is listed of a token: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token's public id.
    pub id: TokenId,
    /// When the catalog stored it.
    pub created_at: DateTime<Utc>,
    /// The operator's note on an admin token (`corral admin token --name`);
    /// tenant tokens have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Longest note an admin token may carry, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 128;

/// Checks the note given to an admin token: 1 to [`MAX_TOKEN_NAME_BYTES`]
/// bytes of printable text, nothing that could break or restyle the line it
/// is listed on. The error says why, for people.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TOKEN_NAME_BYTES {
        return Err(format!(
            "a token's name must be 1 to {MAX_TOKEN_NAME_BYTES} bytes"
        ));
    }
    if name.chars().any(corral_core::text::needs_escape) {
        return Err(
            "a token's name may not hold control, line-separator or bidirectional-text characters"
                .into(),
        );
    }
    Ok(())
}

/// Who a presented token is: a tenant's token acts for that tenant only, an
/// admin token for the operator, over every tenant. A token is one or the
/// other, never both: the catalog refuses to store a hash that already
/// names the other kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant's token, with the tenant as stored.
    Tenant(Tenant),
    /// An admin token, by its public id.
    Admin(TokenId),
}

/// A tenant as `corral tenants ls` and `GET /v1/tenants` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// The tenant: name and limits.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// When the catalog created it; `None` for tenants created before the
    /// catalog kept the time.
    pub created_at: Option<DateTime<Utc>>,
    /// How many tokens it has listed.
    pub tokens: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("crl_") && a.expose().len() == 68);
        assert_eq!(a.hash(), Token::from_presented(a.expose()).hash());
        assert_ne!(a.hash().0, a.expose());
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
        let id = a.hash().id();
        assert_eq!(TokenId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.as_str().len(), 16);
        assert!(a.hash().0.starts_with(&id.as_str()[4..]));
        for bad in [
            "tok_",
            "tok_0123456789ab0",
            "tok_0123456789AB",
            "crl_0123456789ab",
            "",
        ] {
            assert_eq!(TokenId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_default_tenant_name_is_reserved() {
        assert!(check_new_tenant_name("acme").is_ok());
        let refused = check_new_tenant_name(DEFAULT_TENANT).unwrap_err();
        assert!(refused.contains("reserved"), "{refused}");
        assert!(
            check_new_tenant_name("a b")
                .unwrap_err()
                .contains("invalid")
        );
        // Only the exact name: its relatives are ordinary names.
        for ok in ["Default", "default2", "defaults"] {
            assert!(check_new_tenant_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn job_limits_are_checked_against_the_ceiling() {
        let t = TenantLimits {
            max_fuel: 100,
            ..TenantLimits::default()
        };
        let ok = Limits {
            fuel: 100,
            ..Limits::default()
        };
        assert!(t.check_job_limits(&ok).is_ok());
        let over = Limits {
            fuel: 101,
            ..Limits::default()
        };
        assert!(
            t.check_job_limits(&over)
                .unwrap_err()
                .contains("`fuel` = 101")
        );
        assert_eq!(t.cap(&over).fuel, 100);
    }

    #[test]
    fn output_and_log_ceilings_are_checked_and_capped() {
        let t = TenantLimits {
            max_output_bytes: 1000,
            max_log_bytes: 10,
            ..TenantLimits::default()
        };
        for (limits, name) in [
            (
                Limits {
                    max_output_bytes: u64::MAX,
                    ..Limits::default()
                },
                "max_output_bytes",
            ),
            (
                Limits {
                    max_output_bytes: 1000,
                    max_log_bytes: 11,
                    ..Limits::default()
                },
                "max_log_bytes",
            ),
        ] {
            let refused = t.check_job_limits(&limits).unwrap_err();
            assert!(refused.contains(&format!("`{name}`")), "{refused}");
        }
        let capped = t.cap(&Limits::default());
        assert_eq!((capped.max_output_bytes, capped.max_log_bytes), (1000, 10));
        assert!(t.check_job_limits(&capped).is_ok());
    }
}
