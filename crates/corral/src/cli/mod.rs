//! The `corral` command line: subcommands over the library's public API.
//!
//! Each subcommand is a thin layer: parse arguments, build the pieces
//! (sandbox, registry, broker, worker, client), print results. Nothing here
//! is needed to embed Corral in an application.

/// `println!` for what a command prints: when the reader of stdout has
/// gone (`corral jobs list | head -1`), the command ends quietly with
/// status 141 (128 + SIGPIPE, what a shell shows for other tools) instead
/// of panicking. SIGPIPE itself stays ignored: a compile child that dies
/// while its module is being written to it must not kill this process.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

mod admin;
mod bench_all;
mod bench_cluster;
mod bench_e2e;
pub mod bench_sandbox;
mod broker_cmds;
mod build;
mod bulk;
mod completions;
mod config;
mod confirm;
mod fleet;
mod jobs;
mod metrics_port;
mod new;
#[cfg(feature = "otlp")]
mod otlp;
mod progress;
mod queues;
mod replay;
pub mod sandbox_args;
mod schedules;
mod secret;
mod serve;
mod stats;
mod tasks;
mod tenants;
mod toolchain;
mod units;
mod usage;
mod workers;
mod workflows;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::broker::EmbeddedBroker;
use crate::client::Client;
use crate::registry::Registry;
use crate::sandbox::{Limits, Sandbox};
use crate::task::{DEFAULT_TENANT, Task, TaskState, parse_arg_pairs};
use crate::worker::{Worker, WorkerConfig};

pub use config::parse;
pub use units::parse_duration;
use units::{parse_mib, parse_millis};

/// Corral: run sandboxed, metered WebAssembly job handlers from a task queue.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about)]
pub struct Cli {
    /// More log output: -v Corral's info, -vv Corral's debug, -vvv
    /// everything at trace (the libraries' too); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// How log lines are written to stderr: `text`, one line per event
    /// (coloured only on a terminal, and never with NO_COLOR set), or
    /// `json`, one object per line.
    #[arg(
        long,
        global = true,
        env = "CORRAL_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Settings from this TOML file: top-level keys for the global options
    /// and the Redis connection, `[worker]` and `[serve]` tables for those
    /// commands' flags (see corral.example.toml). A flag beats its
    /// environment variable, which beats the file.
    #[arg(long, global = true, env = "CORRAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the settings this command would run with, as TOML that
    /// `--config` reads back, each marked flag, env, file or default; then
    /// exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Compiled-component caches and compile bounds.
    #[command(flatten)]
    pub sandbox: sandbox_args::SandboxOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register the example jobs, enqueue tasks, run a worker on the embedded
    /// broker, and print every task's result.
    Demo(DemoArgs),
    /// Run one job, given as its handler files in chain order, on the given
    /// args, and print the result.
    Run(RunArgs),
    /// Create a guest project (a handler in Rust, Python or JavaScript, its
    /// build file and a test input) in a new folder.
    New(new::NewArgs),
    /// Build guest projects (Rust, Python or JavaScript) into handler
    /// components, installing the language's componentizer when missing.
    Build(build::BuildArgs),
    /// Measure Corral and print the figures, one per line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a worker on a shared (Redis) broker until SIGINT/SIGTERM.
    Worker(broker_cmds::WorkerArgs),
    /// Put a task into a shared (Redis) broker and print its id; with
    /// `--from FILE`, one task per JSON line, printing their ids.
    Enqueue(broker_cmds::EnqueueArgs),
    /// Show a task stored in a shared (Redis) broker.
    Status(broker_cmds::StatusArgs),
    /// Wait until a task completes or dies, then show it; exits 0 if it
    /// completed, 1 if it died (or cannot be read), 3 if `--timeout` passed
    /// first.
    Wait(broker_cmds::WaitArgs),
    /// Serve the HTTP API (with in-process workers); see `cli/serve.rs`.
    Serve(serve::ServeArgs),
    /// Manage tenants in the Redis catalog.
    Tenants(tenants::TenantsArgs),
    /// Register, list and remove a tenant's jobs in the Redis catalog.
    Jobs(jobs::JobsArgs),
    /// The operator's admin tokens (they act on every tenant through the
    /// API), in the Redis catalog.
    Admin(admin::AdminArgs),
    /// What tenants' tasks cost (calls, fuel, time, memory, tasks), by
    /// day, from the shared (Redis) broker.
    Usage(usage::UsageArgs),
    /// List tasks on the shared (Redis) broker, and retry, cancel or
    /// delete them.
    Tasks(tasks::TasksArgs),
    /// List queues on the shared (Redis) broker, pause and resume them,
    /// purge their tasks by state.
    Queues(queues::QueuesArgs),
    /// Counts of tasks by state per queue, with totals, from the shared
    /// (Redis) broker.
    Stats(stats::StatsArgs),
    /// The live workers on the shared (Redis) broker.
    Workers(workers::WorkersArgs),
    /// Add, list and remove schedules (tasks enqueued on a cron timetable
    /// or every so often) on the shared (Redis) broker.
    Schedules(schedules::SchedulesArgs),
    /// Submit workflows (chains, groups and chords of tasks) and follow
    /// them on the shared (Redis) broker.
    #[command(alias = "workflows")]
    Workflow(workflows::WorkflowArgs),
    /// Run a finished task again, locally and outside the broker, and
    /// compare the run with the stored one; exits 0 if they match, 1 if
    /// they differ, 2 if the task cannot be replayed.
    Replay(replay::ReplayArgs),
    /// Print a shell completion script: `corral completions bash > /etc/bash_completion.d/corral`.
    Completions(completions::CompletionsArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The sandbox: per-task overhead, native baseline, compile and cached
    /// load times, fuel metering cost, resident memory over many tasks.
    Sandbox(bench_sandbox::SandboxBenchArgs),
    /// End to end through Redis with one worker process: throughput, single
    /// and bulk enqueue rates, enqueue-to-start latency, worker memory.
    E2e(bench_e2e::E2eArgs),
    /// Every figure in one place: the sandbox, end to end, and the drain
    /// at a shallow and a deep backlog, one figure per line.
    All(bench_all::AllArgs),
    /// End to end on a Redis Cluster the bench starts (3 masters by
    /// default, `redis-server` and `redis-cli` from the PATH), the tasks
    /// spread over several tenants, with one and with two workers.
    Cluster(bench_cluster::ClusterArgs),
}

#[derive(Debug, Args)]
struct SandboxArgs {
    /// Fuel per handler call.
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory per handler instance, in MiB.
    #[arg(long = "memory-mib", value_name = "MIB", value_parser = parse_mib)]
    memory_bytes: Option<u64>,
    /// Wall-clock time per handler call, e.g. `500ms`, `10s`.
    #[arg(long = "timeout", value_name = "DURATION", value_parser = parse_millis)]
    timeout_ms: Option<u64>,
}

impl SandboxArgs {
    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        if let Some(fuel) = self.fuel {
            limits.fuel = fuel;
        }
        if let Some(bytes) = self.memory_bytes {
            limits.memory_bytes = bytes;
        }
        if let Some(ms) = self.timeout_ms {
            limits.timeout_ms = ms;
        }
        limits
    }
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where the built example jobs are (`jobs/build.sh` puts them there).
    #[arg(long, env = "CORRAL_JOBS_DIR", default_value = "jobs/dist")]
    jobs_dir: PathBuf,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Handler components, in chain order.
    #[arg(required = true)]
    handlers: Vec<PathBuf>,
    /// An arg as `key=value`; the value is always a string (`n=5` is "5").
    #[arg(short, long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// An arg as `key=JSON`; the value is parsed as JSON (`n=5` is the
    /// number 5).
    #[arg(long = "json-arg", value_name = "KEY=JSON")]
    json_args: Vec<String>,
    /// Args from a file holding one JSON object (`--arg` and `--json-arg`
    /// add to it and override it).
    #[arg(long, value_name = "FILE")]
    args_file: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// Ends the process after a failed write to stdout (see `say!`).
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, every field value inert.
    Text,
    /// One JSON object per event (JSON-escaped), with the span it is in.
    Json,
}

/// Sets up tracing to stderr, one line per event. In text, every field
/// value and message is written inert ([`crate::sandbox::InertFields`]),
/// whatever text a guest or tenant put in it; in JSON, strings are escaped
/// by the encoder. `verbose` raises Corral's own targets (`corral*`, the
/// guests' `corral::guest` among them) to info or debug; only the third
/// level lets the libraries (wasmtime, cranelift, hyper) speak.
///
/// Built with the `otlp` feature, spans (one per task, one per handler
/// call) are also exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set (`cli/otlp.rs`). Keep
/// the returned guard until the process ends: dropping it sends what is
/// left (call it outside the async runtime).
pub fn init_tracing(verbose: u8, format: LogFormat) -> TracingGuard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default = match verbose {
        0 => "warn",
        1 => "warn,corral=info",
        2 => "warn,corral=debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let stderr: Boxed = match format {
        LogFormat::Text => {
            // Colour is for a person at a terminal: a file or a pipe gets
            // plain text.
            let ansi = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .fmt_fields(crate::sandbox::InertFields)
                .with_ansi(ansi)
                .with_filter(filter)
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    #[cfg(feature = "otlp")]
    {
        let (layer, guard) = otlp::layer();
        let layers: Vec<Boxed> = std::iter::once(stderr).chain(layer).collect();
        let _ = tracing_subscriber::registry().with(layers).try_init();
        guard
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = tracing_subscriber::registry().with(stderr).try_init();
        TracingGuard::default()
    }
}

/// Keeps trace export alive; dropping it flushes what is left.
#[derive(Default)]
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    _otlp: Option<otlp::Exporting>,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    cli.sandbox.install();
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Run(args) => run_job(args).await,
        Command::New(args) => new::run(args),
        Command::Build(args) => build::run(args),
        Command::Bench(BenchCommand::Sandbox(args)) => bench_sandbox::run(args).await,
        Command::Bench(BenchCommand::E2e(args)) => bench_e2e::run(args).await,
        Command::Bench(BenchCommand::All(args)) => bench_all::run(args),
        Command::Bench(BenchCommand::Cluster(args)) => bench_cluster::run(args).await,
        Command::Worker(args) => broker_cmds::worker(args).await,
        Command::Enqueue(args) => broker_cmds::enqueue(args).await,
        Command::Status(args) => broker_cmds::status(args).await,
        Command::Wait(args) => broker_cmds::wait(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Tenants(args) => tenants::run(args).await,
        Command::Jobs(args) => jobs::run(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Tasks(args) => tasks::run(args).await,
        Command::Queues(args) => queues::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Workers(args) => workers::run(args).await,
        Command::Schedules(args) => schedules::run(args).await,
        Command::Workflow(args) => workflows::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Completions(args) => completions::run(args),
    }
}

fn job_file(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.wasm"));
    if !path.exists() {
        bail!(
            "{} is missing: build the example jobs first with `scripts/demo.sh` (or `jobs/build.sh`, then `corral build jobs/python/*/ jobs/js/*/ --out-dir jobs/dist`)",
            path.display()
        );
    }
    Ok(path)
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.jobs_dir;
    let registry = Registry::new(Sandbox::new(sandbox_args::sandbox_config())?);
    let tenant = DEFAULT_TENANT;
    let quick = Limits {
        timeout_ms: 2_000,
        ..Limits::default()
    };
    let chains: [(&str, &[&str], Limits); 4] = [
        (
            "text-stats",
            &["normalize", "count_words", "top_k"],
            Limits::default(),
        ),
        // The same pipeline in three languages: Rust, then Python, then
        // JavaScript (jobs/python, jobs/js).
        (
            "text-stats-polyglot",
            &["normalize", "count_words_py", "top_k_js"],
            Limits::default(),
        ),
        ("always-fails", &["fail"], Limits::default()),
        (
            "runaway",
            &["spin"],
            Limits {
                fuel: 50_000_000,
                ..quick
            },
        ),
    ];
    for (name, handlers, limits) in chains {
        let files = handlers
            .iter()
            .map(|h| job_file(dir, h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let def = registry
            .register_files(tenant, name, &files, limits)
            .await
            .with_context(|| format!("registering job `{name}`"))?;
        say!(
            "registered job {name} v{}: {}",
            def.version,
            handlers.join(" -> ")
        );
    }

    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let texts = [
        "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!",
        "To be, or not to be, that is the question.",
        "Corral runs every handler in a fresh WebAssembly sandbox: fuel, memory and time, metered.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
    ];
    let mut tasks: Vec<Task> = Vec::new();
    for text in texts {
        tasks.push(
            client
                .task("text-stats")
                .arg("text", text)?
                .arg("k", &3)?
                .build(),
        );
    }
    tasks.push(
        client
            .task("text-stats-polyglot")
            .arg("text", texts[0])?
            .arg("k", &3)?
            .build(),
    );
    tasks.push(
        client
            .task("always-fails")
            .arg("kind", "retryable")?
            .arg("message", "upstream unavailable")?
            .max_attempts(2)
            .build(),
    );
    tasks.push(client.task("runaway").max_attempts(1).build());
    tasks.push(client.task("no-such-job").build());
    let ids = client.enqueue_many(tasks).await?;
    say!("enqueued {} tasks\n", ids.len());

    let config = WorkerConfig {
        concurrency: args.concurrency,
        retry: crate::worker::RetryPolicy {
            base: Duration::from_millis(200),
            ..Default::default()
        },
        ..WorkerConfig::default()
    };
    let worker = Worker::new(broker, registry, config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let mut failures = 0;
    for id in &ids {
        let task = client.wait(tenant, *id, Duration::from_secs(60)).await?;
        print_task(&task);
        if task.state != TaskState::Completed && task.job_name.starts_with("text-stats") {
            failures += 1;
        }
    }
    let _ = stop_tx.send(());
    running.await??;
    if failures > 0 {
        bail!("{failures} text-stats or text-stats-polyglot task(s) did not complete");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_task(task: &Task) {
    say!(
        "task {} job={} state={} attempts={}/{}",
        task.task_id,
        task.job_name,
        task.state,
        task.attempt,
        task.max_attempts
    );
    if !task.result_log.is_empty() {
        say!("  result log:");
        for line in task.result_log.lines() {
            say!("    {line}");
        }
    }
    if let Some(error) = &task.error {
        say!("  error: {error}");
    }
    let args = serde_json::to_string(&task.args_map).unwrap_or_default();
    say!("  final args: {args}");
    if !task.metering.is_empty() {
        let t = &task.metering.total;
        say!(
            "  metering: {} call(s), fuel {}, peak memory {}, wall {} (instantiating {})",
            t.calls,
            t.fuel,
            units::mib(t.peak_memory_bytes),
            units::ms(Duration::from_micros(t.wall_us)),
            units::ms(Duration::from_micros(t.instantiate_us))
        );
        for h in &task.metering.handlers {
            say!(
                "    handler {} (attempt {}): fuel {}, peak memory {}, wall {} (instantiating {})",
                h.handler_index,
                h.attempt,
                h.cost.fuel,
                units::mib(h.cost.peak_memory_bytes),
                units::ms(Duration::from_micros(h.cost.wall_us)),
                units::ms(Duration::from_micros(h.cost.instantiate_us))
            );
        }
    }
    if !task.log.is_empty() {
        say!("  guest output:");
        for line in task.log.lines() {
            say!("    {line}");
        }
    }
    say!();
}

/// A task's args from a file holding one JSON object.
fn read_args_file(path: &Path) -> anyhow::Result<crate::task::ArgsMap> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON object of args", path.display()))
}

async fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let registry = Registry::new(Sandbox::new(sandbox_args::sandbox_config())?);
    let limits = args.sandbox.limits();
    registry
        .register_files(DEFAULT_TENANT, "local", &args.handlers, limits)
        .await?;
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let mut task_args = match &args.args_file {
        Some(path) => read_args_file(path)?,
        None => Default::default(),
    };
    task_args.extend(parse_arg_pairs(
        args.args.iter().map(String::as_str),
        args.json_args.iter().map(String::as_str),
    )?);
    let task = client.task("local").args(task_args).max_attempts(1).build();
    let id = client.enqueue(task).await?;
    let worker = Worker::new(
        broker,
        registry,
        WorkerConfig {
            concurrency: 1,
            ..Default::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let wait_for =
        Duration::from_millis(limits.timeout_ms.saturating_mul(args.handlers.len() as u64))
            + Duration::from_secs(30);
    let task = client.wait(DEFAULT_TENANT, id, wait_for).await?;
    let _ = stop_tx.send(());
    running.await??;
    print_task(&task);
    Ok(if task.state == TaskState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
