//! `corral jobs register|list|rm`: a tenant's job definitions in the Redis
//! catalog, from the command line.
//!
//! `register NAME a.wasm b.wasm …` validates each file with this machine's
//! sandbox (the same checks as an API upload), stores the modules under the
//! tenant and registers the chain; `--replace` makes a new version of an
//! existing job. The tenant is given by `--tenant NAME` (an operator with
//! access to Redis) or found from the tenant's own API token, read from
//! `CORRAL_TOKEN` or `--token-file PATH` (`-`: stdin), never from the
//! command line ([`super::secret`]). Workers on the same Redis fetch the
//! modules by hash when a task needs them. Over HTTP, the same is
//! `POST /v1/modules` then `POST /v1/jobs`.
//!
//! `rm NAME` removes a job, every version of it (`DELETE /v1/jobs/NAME`
//! over HTTP): tasks already queued for it fail when they run
//! (`unknown_job`; workers notice within a second). It asks first on a
//! terminal, and needs `--yes` anywhere else ([`super::confirm`]).
//!
//! The catalog is the one `--redis`, `--prefix`, `--cluster` and the TLS
//! options name, as for every command on Redis.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::broker_cmds::RedisArgs;
use super::confirm::confirm;
use super::sandbox_args::sandbox_config;
use super::secret::TokenInput;
use super::tenants::catalog;
use super::units::{parse_kib, parse_mib, parse_millis};
use crate::catalog::Catalog;
use crate::registry::{HandlerSpec, Registry};
use crate::sandbox::{Limits, Sandbox};
use crate::tenant::Tenant;

/// `corral jobs …`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Upload handler components and register them as a job's chain.
    Register(RegisterArgs),
    /// List a tenant's jobs (newest version of each).
    List(ListArgs),
    /// Remove a job, every version; tasks queued for it then fail.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Limit how many of a job's tasks start per window, over every worker
    /// (`N/DURATION`, e.g. `100/1s`; `none` removes the limit). Tasks over
    /// it wait for the next window; other jobs' tasks go on.
    RateLimit(RateLimitArgs),
}

#[derive(Debug, Args)]
struct RateLimitArgs {
    /// The job's name.
    name: String,
    /// `N/DURATION` (`100/1s`, `5000/1m`), or `none`.
    #[arg(value_parser = super::tenants::parse_rate)]
    rate: super::tenants::RateArg,
    #[command(flatten)]
    who: Who,
}

/// Which tenant, and where its catalog is.
#[derive(Debug, Args)]
struct Who {
    #[command(flatten)]
    redis: RedisArgs,
    /// The tenant, by name (operator access); without it, the tenant is the
    /// one the API token belongs to.
    #[arg(long, conflicts_with = "token_file")]
    tenant: Option<String>,
    #[command(flatten)]
    token: TokenInput,
}

impl Who {
    async fn resolve(&self) -> anyhow::Result<(Arc<dyn Catalog>, Tenant)> {
        // Read (and refuse an argv token) before connecting anywhere.
        let token = match &self.tenant {
            Some(_) => None,
            None => Some(self.token.read(true)?.with_context(|| {
                "name the tenant with --tenant NAME, or give its API token in CORRAL_TOKEN \
                 or --token-file PATH"
            })?),
        };
        let catalog = catalog(&self.redis).await?;
        let tenant = match (&self.tenant, token) {
            (Some(name), _) => catalog.tenant(name).await?.with_context(|| {
                format!("no tenant `{name}`: create it with `corral tenants create`")
            })?,
            (None, Some(token)) => catalog
                .tenant_for_token(&token.hash())
                .await?
                .context("invalid token")?,
            (None, None) => bail!("name the tenant with --tenant NAME or its API token"),
        };
        Ok((Arc::new(catalog), tenant))
    }
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// The job's name.
    name: String,
    /// Handler components, in chain order.
    #[arg(required = true)]
    handlers: Vec<PathBuf>,
    #[command(flatten)]
    who: Who,
    /// Make a new version if the job exists (tasks already queued keep
    /// theirs).
    #[arg(long)]
    replace: bool,
    /// Fuel per handler call (default: the default, within the tenant's cap).
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory per handler instance, in MiB.
    #[arg(long = "memory-mib", value_name = "MIB", value_parser = parse_mib)]
    memory_bytes: Option<u64>,
    /// Wall-clock time per handler call, e.g. `500ms`, `10s`.
    #[arg(long = "timeout", value_name = "DURATION", value_parser = parse_millis)]
    timeout_ms: Option<u64>,
    /// Output (args and result text) one handler call may return, in KiB.
    #[arg(long = "max-output-kib", value_name = "KIB", value_parser = parse_kib)]
    max_output_bytes: Option<u64>,
    /// Log kept per handler call, in KiB.
    #[arg(long = "max-log-kib", value_name = "KIB", value_parser = parse_kib)]
    max_log_bytes: Option<u64>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    who: Who,
}

#[derive(Debug, Args)]
struct RmArgs {
    /// The job's name.
    name: String,
    #[command(flatten)]
    who: Who,
    /// Remove without asking (needed when standard input is not a
    /// terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs `corral jobs …`.
pub async fn run(args: JobsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        JobsCommand::Register(args) => register(args).await,
        JobsCommand::List(args) => list(args).await,
        JobsCommand::Rm(args) => remove(args).await,
        JobsCommand::RateLimit(args) => rate_limit(args).await,
    }
}

async fn rate_limit(args: RateLimitArgs) -> anyhow::Result<ExitCode> {
    let (catalog, tenant) = args.who.resolve().await?;
    let name = &args.name;
    let broker = args.who.redis.connect("jobs rate-limit").await?;
    let rate = args.rate.0;
    match crate::submit::set_job_rate(catalog.as_ref(), &broker, &tenant.name, name, rate).await {
        Err(crate::submit::SubmitError::JobNotFound(_)) => {
            bail!("tenant {} has no job `{name}`", tenant.name)
        }
        other => other.with_context(|| format!("setting the rate limit of job `{name}`"))?,
    }
    match rate {
        Some(r) => say!(
            "job {name} of tenant {}: at most {} tasks per {} ms, over every worker",
            tenant.name,
            r.tasks,
            r.per_ms
        ),
        None => say!("job {name} of tenant {}: no rate limit", tenant.name),
    }
    Ok(ExitCode::SUCCESS)
}

async fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let (catalog, tenant) = args.who.resolve().await?;
    let registry = Registry::with_catalog(
        Sandbox::new(sandbox_config()).context("starting the sandbox")?,
        catalog,
    );
    let mut limits = tenant.limits.cap(&Limits::default());
    if let Some(fuel) = args.fuel {
        limits.fuel = fuel;
    }
    for (field, value) in [
        (&mut limits.memory_bytes, args.memory_bytes),
        (&mut limits.timeout_ms, args.timeout_ms),
        (&mut limits.max_output_bytes, args.max_output_bytes),
        (&mut limits.max_log_bytes, args.max_log_bytes),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    let mut handlers = Vec::with_capacity(args.handlers.len());
    for path in &args.handlers {
        let module = registry
            .add_module_file(&tenant.name, path)
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| module.as_str()[..12].to_owned());
        say!("module {name} {module}");
        handlers.push(HandlerSpec { name, module });
    }
    let chain: Vec<String> = handlers.iter().map(|h| h.name.clone()).collect();
    let definition = if args.replace {
        registry
            .replace(&tenant.name, &args.name, handlers, limits)
            .await
    } else {
        registry
            .register(&tenant.name, &args.name, handlers, limits)
            .await
    }
    .with_context(|| format!("registering job `{}`", args.name))?;
    say!(
        "registered job {} v{} for tenant {}: {}",
        definition.name,
        definition.version,
        tenant.name,
        chain.join(" -> ")
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (catalog, tenant) = args.who.resolve().await?;
    let jobs = catalog.jobs(&tenant.name).await?;
    if jobs.is_empty() {
        eprintln!("tenant {} has no jobs", tenant.name);
    }
    for job in jobs {
        let chain: Vec<&str> = job.handlers.iter().map(|h| h.name.as_str()).collect();
        say!(
            "{} v{}  {}  fuel={} memory={}MiB timeout={}ms",
            job.name,
            job.version,
            chain.join(" -> "),
            job.limits.fuel,
            job.limits.memory_bytes >> 20,
            job.limits.timeout_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(args: RmArgs) -> anyhow::Result<ExitCode> {
    let (catalog, tenant) = args.who.resolve().await?;
    let name = &args.name;
    let Some(current) = catalog
        .job(&tenant.name, name, None)
        .await
        .with_context(|| format!("reading job `{name}`"))?
    else {
        bail!("tenant {} has no job `{name}`", tenant.name);
    };
    let versions = match current.version {
        1 => "its only version".to_owned(),
        n => format!("all {n} versions"),
    };
    let prompt = format!(
        "remove job `{name}` of tenant {} ({versions}); tasks queued for it will fail",
        tenant.name
    );
    if !confirm(&prompt, args.yes)? {
        eprintln!("job `{name}` left as it was");
        return Ok(ExitCode::FAILURE);
    }
    if !catalog
        .delete_job(&tenant.name, name)
        .await
        .with_context(|| format!("removing job `{name}`"))?
    {
        bail!(
            "job `{name}` of tenant {} was removed meanwhile",
            tenant.name
        );
    }
    // Its rate limit goes with it, as through the API: a job registered
    // again under the name starts without one.
    let broker = args.who.redis.connect("jobs rm").await?;
    crate::broker::Broker::set_job_rate(&broker, &tenant.name, name, None)
        .await
        .with_context(|| format!("removing the rate limit of job `{name}`"))?;
    eprintln!("removed job `{name}` of tenant {}", tenant.name);
    Ok(ExitCode::SUCCESS)
}
