//! `corral tenants …`: tenants in the Redis catalog.
//!
//! - `create NAME` adds a tenant and prints its API token, once;
//! - `token NAME` prints one more token for it (to rotate: add a token, move
//!   the clients to it, revoke the old one);
//! - `revoke TOKEN` makes a token stop working at once;
//! - `limits NAME` changes the limits given and prints them all (job
//!   versions already registered keep their own fuel, memory and time).
//!
//! Tokens go to stdout alone (so `TOKEN=$(corral tenants create acme)`
//! works) and only their sha256 is stored: a lost token cannot be shown
//! again. Limits not given at creation take [`TenantLimits::default`]. A
//! tenant needs a shared store to outlive this command, so `--redis` is
//! required; `corral serve` without Redis creates its tenants itself
//! (`--tenant`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::parse_duration;
use crate::catalog::{Catalog, RedisCatalog};
use crate::tenant::{Tenant, TenantLimits, Token, valid_tenant_name};

/// `corral tenants …`.
#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant and print its API token (shown once).
    Create(LimitsArgs),
    /// Print one more API token for a tenant (shown once).
    Token(TokenArgs),
    /// Revoke an API token: it stops working at once.
    Revoke(RevokeArgs),
    /// Change a tenant's limits (only those given) and print them all.
    Limits(LimitsArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The tenant.
    name: String,
    /// Redis URL of the catalog.
    #[arg(long, env = "CORRAL_REDIS_URL")]
    redis: Option<String>,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The token to revoke (`crl_…`).
    token: String,
    /// Redis URL of the catalog.
    #[arg(long, env = "CORRAL_REDIS_URL")]
    redis: Option<String>,
}

/// A tenant and limits: what `create` and `limits` take.
#[derive(Debug, Args)]
struct LimitsArgs {
    /// The tenant's name: 1 to 64 of letters, digits, `-`, `_`, `.`.
    name: String,
    /// Redis URL of the catalog.
    #[arg(long, env = "CORRAL_REDIS_URL")]
    redis: Option<String>,
    #[command(flatten)]
    limits: LimitFlags,
}

/// A tenant's limits as flags; each one not given is left as it was.
#[derive(Debug, Args)]
struct LimitFlags {
    /// Highest fuel a job of the tenant may set per handler call.
    #[arg(long)]
    max_fuel: Option<u64>,
    /// Highest memory a job may set per handler instance, in MiB.
    #[arg(long)]
    max_memory_mib: Option<u64>,
    /// Longest wall-clock time a job may set per handler call (`30s`, `5m`).
    #[arg(long, value_parser = parse_duration)]
    max_timeout: Option<Duration>,
    /// Tasks of the tenant running at once on one worker.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Tasks of the tenant waiting at once.
    #[arg(long)]
    max_queued: Option<u64>,
    /// Distinct queue names the tenant may have tasks in.
    #[arg(long)]
    max_queues: Option<u32>,
    /// Largest module the tenant may upload, in KiB.
    #[arg(long)]
    max_module_kib: Option<u64>,
}

impl LimitFlags {
    /// `limits` with the flags given applied.
    fn apply(&self, mut limits: TenantLimits) -> TenantLimits {
        if let Some(v) = self.max_fuel {
            limits.max_fuel = v;
        }
        if let Some(v) = self.max_memory_mib {
            limits.max_memory_bytes = v << 20;
        }
        if let Some(v) = self.max_timeout {
            limits.max_timeout_ms = v.as_millis().max(1) as u64;
        }
        if let Some(v) = self.max_concurrency {
            limits.max_concurrency = v.max(1);
        }
        if let Some(v) = self.max_queued {
            limits.max_queued = v;
        }
        if let Some(v) = self.max_queues {
            limits.max_queues = v;
        }
        if let Some(v) = self.max_module_kib {
            limits.max_module_bytes = v << 10;
        }
        limits
    }
}

/// Connects to the Redis catalog named by `--redis`, or says why it cannot.
pub(super) async fn catalog(redis: Option<&str>) -> anyhow::Result<RedisCatalog> {
    let Some(url) = redis else {
        bail!(
            "this command needs the shared catalog: pass --redis URL (or set CORRAL_REDIS_URL); \
             without Redis, `corral serve` keeps tenants and jobs in its own memory"
        );
    };
    RedisCatalog::connect(url)
        .await
        .with_context(|| format!("connecting to the catalog at {url}"))
}

/// Runs `corral tenants …`.
pub async fn run(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TenantsCommand::Create(args) => create(args).await,
        TenantsCommand::Token(args) => add_token(args).await,
        TenantsCommand::Revoke(args) => revoke(args).await,
        TenantsCommand::Limits(args) => set_limits(args).await,
    }
}

async fn create(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    if !valid_tenant_name(&args.name) {
        bail!(
            "invalid tenant name `{}`: use 1 to 64 of letters, digits, `-`, `_`, `.`",
            args.name
        );
    }
    let catalog = catalog(args.redis.as_deref()).await?;
    let token = Token::generate();
    let tenant = Tenant {
        name: args.name.clone(),
        limits: args.limits.apply(TenantLimits::default()),
    };
    catalog
        .create_tenant(&tenant, &token.hash())
        .await
        .with_context(|| format!("creating tenant `{}`", args.name))?;
    show_once(
        &format!("created tenant {}; its API token", args.name),
        &token,
    )
}

/// Prints a new token alone on stdout (so `$(…)` captures it) after saying
/// on stderr what it is.
fn show_once(what: &str, token: &Token) -> anyhow::Result<ExitCode> {
    eprintln!("{what} follows, shown this once");
    println!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

async fn add_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(args.redis.as_deref()).await?;
    let token = Token::generate();
    catalog
        .add_token(&args.name, &token.hash())
        .await
        .with_context(|| format!("adding a token to tenant `{}`", args.name))?;
    show_once(
        &format!("added a token to tenant {}; it", args.name),
        &token,
    )
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(args.redis.as_deref()).await?;
    let hash = Token::from_presented(&args.token).hash();
    match catalog
        .revoke_token(&hash)
        .await
        .context("revoking the token")?
    {
        Some(tenant) => {
            eprintln!("revoked a token of tenant {tenant}");
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("no tenant has that token (revoked already, or mistyped)"),
    }
}

async fn set_limits(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(args.redis.as_deref()).await?;
    let Some(tenant) = catalog
        .tenant(&args.name)
        .await
        .with_context(|| format!("reading tenant `{}`", args.name))?
    else {
        bail!("no tenant `{}`", args.name);
    };
    let limits = args.limits.apply(tenant.limits);
    catalog
        .set_limits(&args.name, &limits)
        .await
        .with_context(|| format!("changing the limits of tenant `{}`", args.name))?;
    println!("{}", serde_json::to_string_pretty(&limits)?);
    Ok(ExitCode::SUCCESS)
}
