//! Tenants: who owns jobs, modules and tasks, and what each may use.
//!
//! A [`Tenant`] has a name, [`TenantLimits`] and API tokens. Tokens are shown
//! once when created and stored only as their sha256 ([`TokenHash`]), so a
//! leaked store does not leak credentials. This module owns the model and the
//! limit checks; storage is the catalog's, enforcement points call
//! [`TenantLimits`]'s checks.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sandbox::Limits;

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
    /// Tasks of this tenant running at once on one worker. (A tenant not
    /// in the catalog has no such cap: see `Registry::concurrency_cap`.)
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
            ..*limits
        }
    }

    /// Refuses job limits above the tenant's ceilings, naming the first.
    pub fn check_job_limits(&self, limits: &Limits) -> Result<(), String> {
        for (name, asked, max) in [
            ("fuel", limits.fuel, self.max_fuel),
            ("memory_bytes", limits.memory_bytes, self.max_memory_bytes),
            ("timeout_ms", limits.timeout_ms, self.max_timeout_ms),
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
}
