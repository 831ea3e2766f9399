//! `corral worker`, `corral enqueue`, `corral status`, `corral wait`: the
//! commands that talk to a broker shared between processes.
//!
//! The shared broker is Redis (`--redis URL`, or `CORRAL_REDIS_URL`; several
//! comma-separated URLs or `--cluster` for a Redis Cluster; `rediss://` for
//! TLS, with `--redis-ca-cert` and a client certificate when the server's
//! CA or checks call for them). Without a Redis
//! URL there is nothing these commands could share: the embedded broker
//! lives inside one process (it is what `corral demo` and `corral run` use),
//! so they stop with an error that says so instead of enqueueing into a
//! broker that dies with the command.
//!
//! Jobs for `corral worker` live in the catalog on the same Redis
//! ([`RedisCatalog`]): whatever tenants uploaded (`corral jobs register`, the
//! HTTP API of `corral serve`) runs, modules fetched by hash on first use.
//! A worker may also bring jobs at start, from `--job NAME=a.wasm,b.wasm`
//! (the chain in order; repeat the option for more jobs) and from
//! `--jobs-dir DIR`, which registers the example jobs `jobs/build.sh` builds:
//! `text-stats` (normalize → count_words → top_k), `noop`,
//! `always-fails` and `tally` (the workflow examples' step); these are synced into the catalog under `--tenant`
//! (registered, or replaced by a new version when they differ).
//!
//! `corral enqueue` takes the API's path ([`crate::submit`]): the tenant and
//! job must be in that catalog, the task is pinned to the job's version and
//! stored within the tenant's queue quota; `--from FILE` is [`super::bulk`].
//!
//! This module only parses arguments and wires library pieces together.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::metrics_port::MetricsArgs;
use super::sandbox_args::sandbox_config;
use super::{SandboxArgs, parse_duration, print_task};
use crate::broker::redis::redact;
use crate::broker::{Broker, BrokerError, RedisBroker, RedisConfig, RedisTls};
use crate::catalog::{CatalogError, RedisCatalog};
use crate::client::{Client, WaitError};
use crate::registry::{Registry, RegistryError};
use crate::sandbox::Sandbox;
use crate::submit::{SubmitError, find_tenant, submit};
use crate::task::{DEFAULT_QUEUE, DEFAULT_TENANT, TaskId, TaskState, parse_arg_pairs};
use crate::worker::{Worker, WorkerConfig, shutdown_signal};

/// Where the shared broker is.
#[derive(Debug, Clone, Args)]
pub(super) struct RedisArgs {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`; several comma-separated
    /// URLs mean a Redis Cluster. Without it the embedded broker is used,
    /// which lives only inside one process.
    #[arg(long, env = "CORRAL_REDIS_URL")]
    pub redis: Option<String>,
    /// Treat a single `--redis` URL as a Redis Cluster seed node.
    #[arg(long, env = "CORRAL_REDIS_CLUSTER")]
    pub cluster: bool,
    /// First part of every Redis key; brokers with different prefixes share
    /// nothing.
    #[arg(long, env = "CORRAL_REDIS_PREFIX", default_value = "corral")]
    pub prefix: String,
    /// For `rediss://` URLs: a PEM file of the CA certificates to trust,
    /// instead of the system's roots.
    #[arg(long, env = "CORRAL_REDIS_CA_CERT", value_name = "FILE")]
    pub redis_ca_cert: Option<PathBuf>,
    /// For `rediss://` servers that check clients: a PEM file of this
    /// client's certificate chain (with `--redis-client-key`).
    #[arg(long, env = "CORRAL_REDIS_CLIENT_CERT", value_name = "FILE")]
    pub redis_client_cert: Option<PathBuf>,
    /// The PEM private key of `--redis-client-cert`.
    #[arg(long, env = "CORRAL_REDIS_CLIENT_KEY", value_name = "FILE")]
    pub redis_client_key: Option<PathBuf>,
}

impl RedisArgs {
    /// The Redis config, or the error explaining why `command` needs one.
    pub fn config(&self, command: &str) -> anyhow::Result<RedisConfig> {
        let Some(url) = &self.redis else {
            bail!(
                "`corral {command}` needs a shared broker: give --redis URL (or set \
                 CORRAL_REDIS_URL). Without one Corral uses the embedded broker, which lives \
                 only inside one process, so nothing {command} did could reach another process. \
                 To try Corral without Redis, use `corral demo` or `corral run`."
            );
        };
        let config = RedisConfig::new(url.clone())
            .as_cluster(self.cluster)
            .prefix(self.prefix.clone());
        Ok(match self.tls()? {
            Some(tls) => config.tls(tls),
            None => config,
        })
    }

    /// The certificates the `--redis-*` TLS options name, read now.
    fn tls(&self) -> anyhow::Result<Option<RedisTls>> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let client = match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => bail!("--redis-client-cert and --redis-client-key go together: give both"),
        };
        let ca_cert = self.redis_ca_cert.as_ref().map(read).transpose()?;
        Ok((ca_cert.is_some() || client.is_some()).then_some(RedisTls { ca_cert, client }))
    }

    /// The catalog on the same Redis (same nodes, TLS and prefix).
    pub async fn catalog(&self, command: &str) -> anyhow::Result<RedisCatalog> {
        let config = self.config(command)?;
        let url = redact(self.redis.as_deref().unwrap_or_default());
        RedisCatalog::connect_config(&config)
            .await
            .with_context(|| format!("connecting to the catalog at {url}"))
    }

    /// Connects once for a one-shot command; a clear error naming the URL
    /// when Redis is not there within [`CONNECT_PATIENCE`] (a worker waits
    /// for Redis instead, see [`worker`]).
    pub async fn connect(&self, command: &str) -> anyhow::Result<RedisBroker> {
        let config = self.config(command)?;
        let url = redact(self.redis.as_deref().unwrap_or(""));
        within_patience(&url, RedisBroker::connect(config)).await
    }
}

/// How long a one-shot command (enqueue, status, wait, tenants, jobs)
/// waits for Redis to answer before saying it is unreachable: the
/// connection's own retries would take about ten seconds.
pub(super) const CONNECT_PATIENCE: Duration = Duration::from_secs(2);

/// `connect`, failing after [`CONNECT_PATIENCE`] with an error naming `url`.
pub(super) async fn within_patience<T, E>(
    url: &str,
    connect: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CONNECT_PATIENCE, connect).await {
        Ok(connected) => connected.with_context(|| format!("connecting to Redis at {url}")),
        Err(_) => bail!(
            "Redis at {url} did not answer within {} s (is it running, and is the URL right?)",
            CONNECT_PATIENCE.as_secs()
        ),
    }
}

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// A queue to take tasks from; repeat for several (earlier ones first).
    /// `NAME=WEIGHT` (e.g. `--queue critical=6 --queue default=3 --queue
    /// low=1`) weighs them instead: each acquire asks them in a random order
    /// drawn by weight, so no queue starves.
    #[arg(long = "queue", default_value = DEFAULT_QUEUE, value_name = "NAME[=WEIGHT]")]
    queues: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// A job as `NAME=handler.wasm[,handler.wasm...]`, the handler chain in
    /// order; repeat for more jobs.
    #[arg(long = "job", value_name = "NAME=FILES")]
    jobs: Vec<String>,
    /// Register the example jobs that `jobs/build.sh` builds into this
    /// folder: `text-stats` (normalize, count_words, top_k), `noop`,
    /// `always-fails`.
    #[arg(long)]
    jobs_dir: Option<PathBuf>,
    /// The tenant the `--job` and `--jobs-dir` jobs belong to; repeat to
    /// register them for several tenants.
    #[arg(long = "tenant", default_value = DEFAULT_TENANT)]
    tenants: Vec<String>,
    /// How long a lease lasts without a heartbeat; heartbeats go every third
    /// of it. A killed worker's tasks are taken again after about this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// How long tasks in flight may finish after SIGINT/SIGTERM before they
    /// are handed back.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// How often the maintenance pass runs: due delayed tasks and expired
    /// leases, finished records past retention, and due schedule ticks.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    maintain_every: Duration,
    /// This worker's id on its leases (default: host-pid-random).
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub(super) struct EnqueueArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The job to run (with `--from`, the job of lines that name none). It
    /// must be registered for the tenant; the task runs its current
    /// version.
    #[arg(required_unless_present = "from")]
    job: Option<String>,
    /// An arg as `key=value`; the value is always a string (`n=5` is "5").
    #[arg(short, long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// An arg as `key=JSON`; the value is parsed as JSON (`n=5` is the
    /// number 5, `tags=["a"]` a list).
    #[arg(long = "json-arg", value_name = "KEY=JSON")]
    json_args: Vec<String>,
    /// Run no earlier than this from now, e.g. `10s`, `5m`.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Attempts before the task goes to the dead set.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Where it waits in its queue, 0 (the default) to 9: workers take a
    /// queue's higher priorities first, each priority in order.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// The whole task's deadline, this long from now (e.g. `30s`, `2h`):
    /// over every attempt and retry, the task fails for good
    /// (`deadline_exceeded`) once it passes.
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Enqueue only if no task of the tenant with this key was enqueued
    /// within `--unique-ttl`; otherwise print that task's id (and say so
    /// on stderr) and store nothing.
    #[arg(long, value_name = "KEY")]
    unique: Option<String>,
    /// How long `--unique` holds.
    #[arg(long, default_value = "1h", value_parser = parse_duration, requires = "unique")]
    unique_ttl: Duration,
    /// The queue to put it in.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    queue: String,
    /// The owning tenant; its `max_queued` and `max_queues` apply.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Enqueue one task per line of this JSON Lines file (`-`: standard
    /// input): `{"job": …, "args": {…}, "queue": …, "delay_ms": …,
    /// "deadline_ms": …, "max_attempts": …, "priority": …}`, the flags filling in what a
    /// line leaves out.
    /// Prints the ids, one per line.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// With `--from`: print only how many tasks were enqueued.
    #[arg(long, requires = "from")]
    quiet: bool,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The task id `corral enqueue` printed.
    id: TaskId,
    /// The owning tenant.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Print the stored task as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct WaitArgs {
    #[command(flatten)]
    status: StatusArgs,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Parses `NAME=a.wasm,b.wasm`.
fn parse_job(spec: &str) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let Some((name, files)) = spec.split_once('=') else {
        bail!("--job `{spec}`: expected NAME=handler.wasm[,handler.wasm...]");
    };
    let files: Vec<PathBuf> = files
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .collect();
    if name.trim().is_empty() || files.is_empty() {
        bail!("--job `{spec}`: expected NAME=handler.wasm[,handler.wasm...]");
    }
    Ok((name.trim().to_owned(), files))
}

/// The example jobs of `jobs/build.sh` found in `dir`.
fn example_jobs(dir: &Path) -> anyhow::Result<Vec<(String, Vec<PathBuf>)>> {
    let chains: [(&str, &[&str]); 4] = [
        ("text-stats", &["normalize", "count_words", "top_k"]),
        ("noop", &["noop"]),
        ("always-fails", &["fail"]),
        ("tally", &["tally"]),
    ];
    let mut found = Vec::new();
    for (name, handlers) in chains {
        let files: Vec<PathBuf> = handlers
            .iter()
            .map(|h| dir.join(format!("{h}.wasm")))
            .collect();
        if files.iter().all(|f| f.exists()) {
            found.push((name.to_owned(), files));
        }
    }
    if found.is_empty() {
        bail!(
            "no example jobs in {}: build them first with `jobs/build.sh`",
            dir.display()
        );
    }
    Ok(found)
}

/// Runs `op` until it succeeds, retrying with backoff while `transient`
/// says its error means Redis is away (restarting, loading its data), or
/// until `shutdown` resolves (`Ok(None)`). So a worker started while Redis
/// restarts waits for it, through every step of its start (broker, catalog,
/// its jobs), instead of exiting half way.
async fn patiently<T, E, Fut>(
    what: &'static str,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    transient: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if transient(&e) => {
                tracing::warn!(step = what, error = %e, ?backoff, "Redis is not reachable yet; retrying");
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // Check the arguments before waiting for Redis.
    let config = args.redis.config("worker")?;
    let mut jobs = Vec::new();
    for spec in &args.jobs {
        jobs.push(parse_job(spec)?);
    }
    if let Some(dir) = &args.jobs_dir {
        jobs.extend(example_jobs(dir)?);
    }
    let port = args.metrics.bind().await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let connect = || RedisBroker::connect(config.clone());
    let not_invalid = |e: &BrokerError| !matches!(e, BrokerError::Invalid { .. });
    let Some(broker) = patiently("connect", &mut shutdown, not_invalid, connect).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    // The URL already served the broker: any failure here is Redis going
    // away again in between.
    let catalog = || args.redis.catalog("worker");
    let Some(catalog) = patiently("catalog connect", &mut shutdown, |_| true, catalog).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let registry = Registry::with_catalog(Sandbox::new(sandbox_config())?, Arc::new(catalog));
    let limits = args.sandbox.limits();
    let unreachable =
        |e: &RegistryError| matches!(e, RegistryError::Catalog(CatalogError::Unavailable(_)));
    for tenant in &args.tenants {
        for (name, files) in &jobs {
            let sync = || registry.sync_files(tenant, name, files, limits);
            let synced = patiently("registering a job", &mut shutdown, unreachable, sync)
                .await
                .with_context(|| format!("registering job `{name}` for tenant `{tenant}`"))?;
            if synced.is_none() {
                return Ok(ExitCode::SUCCESS);
            }
            tracing::info!(job = %name, %tenant, handlers = files.len(), "registered job");
        }
    }
    let lease = args.lease.max(Duration::from_millis(300));
    let order = crate::worker::queues::QueueOrder::parse(&args.queues)
        .map_err(|e| anyhow::anyhow!("--queue {e}"))?;
    let mut config = WorkerConfig {
        queues: order.names(),
        queue_weights: order.weights(),
        concurrency: args.concurrency.max(1),
        lease,
        heartbeat_every: lease / 3,
        shutdown_grace: args.shutdown_grace,
        maintain_every: args.maintain_every.max(Duration::from_millis(10)),
        ..WorkerConfig::default()
    };
    if let Some(id) = &args.id {
        config.id = id.clone();
    }
    eprintln!(
        "corral worker {}: queues {:?}, concurrency {}, jobs {}",
        config.id,
        config.queues,
        config.concurrency,
        jobs.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut worker = Worker::new(broker.clone(), registry.clone(), config);
    if let Some(port) = port {
        worker = worker.with_metrics(port.metrics.clone());
        port.serve(broker, registry)?;
    }
    let stats = worker.stats();
    worker.run(shutdown_signal()).await?;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "corral worker stopped: {} completed, {} retried, {} dead, {} handed back, {} lost",
        stats.completed.load(Relaxed),
        stats.retried.load(Relaxed),
        stats.dead.load(Relaxed),
        stats.released.load(Relaxed),
        stats.lost.load(Relaxed),
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    // Everything that needs no Redis is checked first.
    let delay_ms = match args.delay {
        Some(d) => Some(u64::try_from(d.as_millis()).context("--delay is too long")?),
        None => None,
    };
    let deadline_ms = match args.deadline {
        Some(d) => Some(u64::try_from(d.as_millis()).context("--deadline is too long")?),
        None => None,
    };
    let defaults = super::bulk::Defaults {
        job: args.job.clone(),
        args: parse_arg_pairs(
            args.args.iter().map(String::as_str),
            args.json_args.iter().map(String::as_str),
        )?,
        queue: args.queue.clone(),
        delay_ms,
        deadline_ms,
        max_attempts: args.max_attempts,
        priority: args.priority,
    };
    if args.unique.is_some() && args.from.is_some() {
        bail!("--unique applies to one task; give each line of --from its own `unique_key`");
    }
    let single = match (&args.from, &args.job) {
        (None, Some(job)) => {
            let mut task = defaults.task(job.clone());
            if let Some(key) = &args.unique {
                task.unique_key = Some(key.clone());
                task.unique_ttl_ms = Some(
                    u64::try_from(args.unique_ttl.as_millis())
                        .context("--unique-ttl is too long")?,
                );
            }
            task.check()?;
            Some(task)
        }
        _ => None,
    };
    let source = args.from.as_deref().map(super::bulk::open).transpose()?;
    let broker = args.redis.connect("enqueue").await?;
    let url = args.redis.redis.as_deref().unwrap_or_default();
    let catalog = tokio::time::timeout(CONNECT_PATIENCE, args.redis.catalog("enqueue"))
        .await
        .map_err(|_| anyhow::anyhow!("the catalog at {url} did not answer within 2 s"))??;
    let tenant = find_tenant(&catalog, &args.tenant).await?;
    match (single, source) {
        (Some(task), _) => match submit(&broker, &catalog, &tenant, task).await {
            Ok(done) => {
                if done.deduplicated {
                    eprintln!(
                        "not enqueued: task {} holds the unique key (state {})",
                        done.task_id, done.state
                    );
                }
                say!("{}", done.task_id)
            }
            Err(e @ (SubmitError::JobNotFound(_) | SubmitError::JobVersionNotFound { .. })) => {
                bail!(
                    "{e} for tenant `{}`: register it first (`corral jobs register`, or a \
                     worker's --job / --jobs-dir); nothing was enqueued",
                    tenant.name
                )
            }
            Err(e) => bail!("{e}; nothing was enqueued"),
        },
        (None, Some(source)) => {
            super::bulk::run(source, defaults, &broker, &catalog, &tenant, args.quiet).await?
        }
        (None, None) => bail!("give the job to enqueue, or --from FILE"),
    }
    Ok(ExitCode::SUCCESS)
}

fn show(task: &crate::task::Task, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string_pretty(task)?);
    } else {
        print_task(task);
    }
    Ok(())
}

pub(super) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let broker = args.redis.connect("status").await?;
    match broker.task(&args.tenant, args.id).await? {
        Some(task) => {
            show(&task, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "task {} not found for tenant `{}` (never enqueued, or dropped after its retention period)",
                args.id, args.tenant
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `corral wait`'s exit status when its `--timeout` passes first.
pub const WAIT_TIMED_OUT: u8 = 3;

pub(super) async fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let s = &args.status;
    let broker = s.redis.connect("wait").await?;
    let client = Client::new(broker);
    let deadline = tokio::time::Instant::now() + args.timeout;
    // On a terminal only; cleared before anything else is printed.
    let spinner = super::progress::spinner(format!("waiting for task {}", s.id));
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let waited = client.wait(&s.tenant, s.id, left).await;
        if !matches!(waited, Err(WaitError::Broker(_)) if !left.is_zero()) {
            spinner.finish_and_clear();
        }
        match waited {
            Ok(task) => {
                show(&task, s.json)?;
                return Ok(if task.state == TaskState::Completed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            // Redis restarting is no reason to stop waiting.
            Err(WaitError::Broker(e)) if !left.is_zero() => {
                spinner.suspend(|| tracing::warn!(error = %e, "reading the task failed; retrying"));
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
            // 3, not 1: the task may still finish; a script can tell
            // "not yet" from "failed".
            Err(e @ WaitError::Timeout { .. }) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(WAIT_TIMED_OUT));
            }
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}
