//! `corral tenants …`: tenants in the Redis catalog.
//!
//! - `create NAME` adds a tenant and prints its API token, once;
//! - `token NAME` prints one more token for it (to rotate: add a token, move
//!   the clients to it, revoke the old one);
//! - `tokens NAME` lists its tokens' ids and creation times (never secrets);
//! - `revoke NAME TOKEN_ID` makes a token stop working at once, by the id
//!   `tokens` lists; `revoke --token-file PATH` (`-`: stdin) or
//!   `revoke --token-from-env` does it by the secret;
//! - `limits NAME` changes the limits given and prints them all (job
//!   versions already registered keep their own limits);
//! - `ls` lists the tenants by name in an aligned table (name, creation
//!   time, token count, the main limits), or as JSON with `--json`; it
//!   reads the catalog a bounded page at a time (`--after NAME` starts
//!   after a name, `--limit N` stops after N).
//!
//! Tokens go to stdout alone (so `TOKEN=$(corral tenants create acme)`
//! works) and only their sha256 is stored: a lost token cannot be shown
//! again. A secret is never taken as an argument ([`super::secret`]).
//! Limits not given at creation take [`TenantLimits::default`]; sizes and
//! durations that do not fit are refused ([`super::units`]). The name
//! `default` is reserved (tasks enqueued without a tenant land there). A
//! tenant needs a shared store to outlive this command, so `--redis` is
//! required, with the rest of the connection as every command takes it
//! (`--prefix`, `--cluster`, TLS; the config file's top-level keys and
//! `CORRAL_REDIS_*`): the catalog's keys live under the prefix, so
//! processes with different prefixes see different tenants. `corral serve`
//! without Redis creates its tenants itself (`--tenant`).

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::broker_cmds::{RedisArgs, within_patience};
use super::secret::{TOKEN_ENV, TokenInput, refuse_on_command_line};
use super::units::{parse_kib, parse_mib, parse_millis};
use crate::broker::RateLimit;
use crate::broker::redis::redact;
use crate::catalog::{Catalog, RedisCatalog};
use crate::tenant::{Tenant, TenantInfo, TenantLimits, Token, TokenId, check_new_tenant_name};

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
    Token(TenantArgs),
    /// List a tenant's tokens: ids and creation times.
    Tokens(TenantArgs),
    /// Revoke an API token, by its id (see `tokens`) or its secret: it
    /// stops working at once.
    Revoke(RevokeArgs),
    /// Change a tenant's limits (only those given) and print them all.
    Limits(LimitsArgs),
    /// List the tenants by name: creation time, token count, main limits.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
}

#[derive(Debug, Args)]
struct TenantArgs {
    /// The tenant.
    name: String,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print a JSON array of the tenants (name, limits, created_at,
    /// tokens) instead of the table.
    #[arg(long)]
    json: bool,
    /// Start after this tenant name (where an earlier listing stopped).
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// List at most this many tenants.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    // Both optional to clap, checked in `revoke`: the old one-argument form
    // (`revoke crl_…`) then gets a message that says what to do instead.
    /// The tenant whose token it is.
    name: Option<String>,
    /// The token's id (`tok_…`), as `corral tenants tokens NAME` lists it.
    id: Option<String>,
    /// Revoke the token whose secret is in this file (`-`: standard input)
    /// instead.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["name", "id", "token_from_env"])]
    token_file: Option<std::path::PathBuf>,
    /// Revoke the token whose secret is in CORRAL_TOKEN instead.
    #[arg(long, conflicts_with_all = ["name", "id"])]
    token_from_env: bool,
    /// Refused: a token on the command line is visible to every user.
    #[arg(long, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

/// A tenant and limits: what `create` and `limits` take.
#[derive(Debug, Args)]
struct LimitsArgs {
    /// The tenant's name: 1 to 64 of letters, digits, `-`, `_`, `.`.
    name: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    limits: LimitFlags,
}

/// A tenant's limits as flags; each one not given is left as it was. Sizes
/// and times are converted here, and refused when they do not fit.
#[derive(Debug, Args)]
struct LimitFlags {
    /// Highest fuel a job of the tenant may set per handler call.
    #[arg(long)]
    max_fuel: Option<u64>,
    /// Highest memory a job may set per handler instance, in MiB.
    #[arg(long = "max-memory-mib", value_name = "MIB", value_parser = parse_mib)]
    max_memory_bytes: Option<u64>,
    /// Longest wall-clock time a job may set per handler call (`30s`, `5m`).
    #[arg(long = "max-timeout", value_name = "DURATION", value_parser = parse_millis)]
    max_timeout_ms: Option<u64>,
    /// Tasks of the tenant running at once, over all workers together.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Schedules the tenant may have.
    #[arg(long)]
    max_schedules: Option<u32>,
    /// Unique keys the tenant may hold at once.
    #[arg(long)]
    max_unique_keys: Option<u64>,
    /// Workflows the tenant may have stored at once (running, or ended
    /// within retention).
    #[arg(long)]
    max_workflows: Option<u32>,
    /// At most this many of the tenant's tasks start per window, over all
    /// workers: `N/DURATION` (`100/1s`, `5000/1m`); `none` removes it.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate)]
    rate: Option<RateArg>,
    /// Tasks of the tenant waiting at once.
    #[arg(long)]
    max_queued: Option<u64>,
    /// Distinct queue names the tenant may have tasks in.
    #[arg(long)]
    max_queues: Option<u32>,
    /// Largest module the tenant may upload, in KiB.
    #[arg(long = "max-module-kib", value_name = "KIB", value_parser = parse_kib)]
    max_module_bytes: Option<u64>,
    /// Modules the tenant may have stored.
    #[arg(long)]
    max_modules: Option<u32>,
    /// Bytes of modules the tenant may have stored, all together, in MiB.
    #[arg(long = "max-module-storage-mib", value_name = "MIB", value_parser = parse_mib)]
    max_module_storage_bytes: Option<u64>,
    /// Jobs (names) the tenant may register.
    #[arg(long)]
    max_jobs: Option<u32>,
    /// Versions one job of the tenant may have.
    #[arg(long)]
    max_job_versions: Option<u32>,
    /// Handlers one job's chain may have.
    #[arg(long)]
    max_handlers_per_job: Option<u32>,
    /// Highest output (args and result text) a job may let one handler call
    /// return, in KiB.
    #[arg(long = "max-output-kib", value_name = "KIB", value_parser = parse_kib)]
    max_output_bytes: Option<u64>,
    /// Highest log a job may keep per handler call, in KiB.
    #[arg(long = "max-log-kib", value_name = "KIB", value_parser = parse_kib)]
    max_log_bytes: Option<u64>,
}

impl LimitFlags {
    /// `limits` with the flags given applied.
    fn apply(&self, mut limits: TenantLimits) -> TenantLimits {
        let set = |field: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut limits.max_fuel, self.max_fuel);
        set(&mut limits.max_memory_bytes, self.max_memory_bytes);
        set(&mut limits.max_timeout_ms, self.max_timeout_ms);
        set(&mut limits.max_queued, self.max_queued);
        set(&mut limits.max_module_bytes, self.max_module_bytes);
        set(
            &mut limits.max_module_storage_bytes,
            self.max_module_storage_bytes,
        );
        set(&mut limits.max_output_bytes, self.max_output_bytes);
        set(&mut limits.max_log_bytes, self.max_log_bytes);
        set(&mut limits.max_unique_keys, self.max_unique_keys);
        let set = |field: &mut u32, value: Option<u32>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut limits.max_queues, self.max_queues);
        set(&mut limits.max_modules, self.max_modules);
        set(&mut limits.max_jobs, self.max_jobs);
        set(&mut limits.max_job_versions, self.max_job_versions);
        set(&mut limits.max_handlers_per_job, self.max_handlers_per_job);
        set(&mut limits.max_schedules, self.max_schedules);
        set(&mut limits.max_workflows, self.max_workflows);
        if let Some(RateArg(rate)) = self.rate {
            limits.rate_limit = rate;
        }
        if let Some(v) = self.max_concurrency {
            limits.max_concurrency = v.max(1);
        }
        limits
    }
}

/// Connects to the Redis catalog `redis` names (its nodes, `--cluster`,
/// TLS and `--prefix`), or says why it cannot.
pub(super) async fn catalog(redis: &RedisArgs) -> anyhow::Result<RedisCatalog> {
    let Some(url) = redis.redis.as_deref() else {
        bail!(
            "this command needs the shared catalog: pass --redis URL (or set CORRAL_REDIS_URL); \
             without Redis, `corral serve` keeps tenants and jobs in its own memory"
        );
    };
    let config = redis.config("tenants")?;
    within_patience(&redact(url), RedisCatalog::connect_config(&config)).await
}

/// Runs `corral tenants …`.
pub async fn run(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TenantsCommand::Create(args) => create(args).await,
        TenantsCommand::Token(args) => add_token(args).await,
        TenantsCommand::Tokens(args) => list_tokens(args).await,
        TenantsCommand::Revoke(args) => revoke(args).await,
        TenantsCommand::Limits(args) => set_limits(args).await,
        TenantsCommand::Ls(args) => list(args).await,
    }
}

async fn create(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    check_new_tenant_name(&args.name).map_err(anyhow::Error::msg)?;
    let catalog = catalog(&args.redis).await?;
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
        &format!(
            "created tenant {}; its API token (id {})",
            args.name,
            token.hash().id()
        ),
        &token,
    )
}

/// Prints a new token alone on stdout (so `$(…)` captures it) after saying
/// on stderr what it is.
fn show_once(what: &str, token: &Token) -> anyhow::Result<ExitCode> {
    eprintln!("{what} follows, shown this once");
    say!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

async fn add_token(args: TenantArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(&args.redis).await?;
    let token = Token::generate();
    catalog
        .add_token(&args.name, &token.hash())
        .await
        .with_context(|| format!("adding a token to tenant `{}`", args.name))?;
    show_once(
        &format!(
            "added token {} to tenant {}; it",
            token.hash().id(),
            args.name
        ),
        &token,
    )
}

async fn list_tokens(args: TenantArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(&args.redis).await?;
    let tokens = catalog
        .tokens(&args.name)
        .await
        .with_context(|| format!("listing the tokens of tenant `{}`", args.name))?;
    if tokens.is_empty() {
        eprintln!("tenant {} has no listed tokens", args.name);
    }
    for token in tokens {
        say!(
            "{}  created {}",
            token.id,
            token
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    if args.token.is_some() {
        return Err(refuse_on_command_line("a token's secret", REVOKE_INSTEAD));
    }
    let secret = TokenInput {
        token_file: args.token_file.clone(),
        token: None,
    }
    .read(args.token_from_env)?;
    if let Some(token) = secret {
        let catalog = catalog(&args.redis).await?;
        return match catalog
            .revoke_token(&token.hash())
            .await
            .context("revoking the token")?
        {
            Some(tenant) => {
                eprintln!("revoked token {} of tenant {tenant}", token.hash().id());
                Ok(ExitCode::SUCCESS)
            }
            None => bail!("no tenant has that token (revoked already, or mistyped)"),
        };
    }
    if args.token_from_env {
        bail!("--token-from-env: {TOKEN_ENV} is not set");
    }
    let (Some(name), Some(id)) = (args.name.as_deref(), args.id.as_deref()) else {
        // The old form, `revoke crl_…`: a secret typed as the one argument.
        if args.name.as_deref().is_some_and(looks_like_secret) {
            return Err(refuse_on_command_line("a token's secret", REVOKE_INSTEAD));
        }
        bail!("name the tenant and the token's id: `corral tenants revoke NAME tok_…`");
    };
    if looks_like_secret(name) || looks_like_secret(id) {
        return Err(refuse_on_command_line("a token's secret", REVOKE_INSTEAD));
    }
    let Some(id) = TokenId::parse(id) else {
        bail!(
            "`{id}` is not a token id (`tok_` and 12 hex digits); \
             `corral tenants tokens {name}` lists them"
        );
    };
    let catalog = catalog(&args.redis).await?;
    if catalog
        .revoke_token_id(name, &id)
        .await
        .with_context(|| format!("revoking token {id} of tenant `{name}`"))?
    {
        eprintln!("revoked token {id} of tenant {name}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "tenant `{name}` has no token {id} (revoked already, or mistyped); \
             `corral tenants tokens {name}` lists them"
        )
    }
}

/// What `revoke` takes instead of a secret on the command line.
const REVOKE_INSTEAD: &str = "revoke by id (`corral tenants tokens NAME`, then `corral tenants \
     revoke NAME tok_…`), or give the secret with --token-file PATH (`-`: standard input) or \
     --token-from-env (reads CORRAL_TOKEN)";

/// Whether an argument is a token's secret (`crl_…`) given where an id or a
/// name was expected.
fn looks_like_secret(arg: &str) -> bool {
    arg.trim().starts_with("crl_")
}

async fn set_limits(args: LimitsArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(&args.redis).await?;
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
    say!("{}", serde_json::to_string_pretty(&limits)?);
    Ok(ExitCode::SUCCESS)
}

/// Tenants read from the catalog per call of `ls`.
const LIST_PAGE: usize = 500;

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(&args.redis).await?;
    let wanted = args
        .limit
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut tenants: Vec<TenantInfo> = Vec::new();
    let mut after = args.after.clone();
    // Page by page, each read bounded; one more than wanted tells whether
    // the listing stopped short.
    while tenants.len() <= wanted {
        let room = (wanted - tenants.len()).saturating_add(1).min(LIST_PAGE);
        let page = catalog
            .tenants_page(after.as_deref(), room)
            .await
            .context("listing the tenants")?;
        let full = page.len() == room;
        after = page.last().map(|t| t.tenant.name.clone());
        tenants.extend(page);
        if !full {
            break;
        }
    }
    let more = tenants.len() > wanted;
    tenants.truncate(wanted);
    if args.json {
        say!("{}", serde_json::to_string_pretty(&tenants)?);
    } else if tenants.is_empty() {
        eprintln!("no tenants");
    } else {
        for line in table(&tenants) {
            say!("{line}");
        }
    }
    if more && let Some(last) = tenants.last() {
        eprintln!(
            "more tenants follow: `corral tenants ls --after {}` lists them",
            last.tenant.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines of `ls`'s table: a header, then one row per tenant, columns
/// padded to their widest cell (names are plain ASCII).
fn table(tenants: &[TenantInfo]) -> Vec<String> {
    let mut rows = vec![[
        "NAME".to_owned(),
        "CREATED".to_owned(),
        "TOKENS".to_owned(),
        "LIMITS".to_owned(),
    ]];
    for t in tenants {
        rows.push([
            t.tenant.name.clone(),
            t.created_at.map_or_else(
                || "-".to_owned(),
                |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            t.tokens.to_string(),
            limits_summary(&t.tenant.limits),
        ]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect()
}

/// `--rate`: a limit, or `none`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateArg(pub(super) Option<RateLimit>);

/// Parses `--rate`: `N/DURATION`, or `none`.
pub(super) fn parse_rate(s: &str) -> Result<RateArg, String> {
    if s == "none" {
        return Ok(RateArg(None));
    }
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected N/DURATION, e.g. 100/1s"))?;
    let tasks: u32 = n
        .parse()
        .map_err(|_| format!("`{n}`: the count must be a whole number"))?;
    let per = super::units::parse_duration(per)?;
    let per_ms = u64::try_from(per.as_millis()).unwrap_or(u64::MAX);
    if tasks == 0 || per_ms == 0 {
        return Err(format!(
            "`{s}`: both the count and the window must be above zero"
        ));
    }
    Ok(RateArg(Some(RateLimit { tasks, per_ms })))
}

/// The limits an operator looks at first, on one line (`tenants limits
/// NAME` prints them all).
fn limits_summary(l: &TenantLimits) -> String {
    format!(
        "concurrency={} queued={} queues={} jobs={} fuel={} memory={}MiB timeout={}ms",
        l.max_concurrency,
        l.max_queued,
        l.max_queues,
        l.max_jobs,
        l.max_fuel,
        l.max_memory_bytes >> 20,
        l.max_timeout_ms,
    )
}
