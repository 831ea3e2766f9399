//! The producer and the checker of the crash test at scale
//! (`scripts/crash-at-scale.sh`), built as an example so that CI compiles it
//! but never runs it.
//!
//! Subcommands, each over the library's public API only (keys are never
//! spelled out here, so a change of the Redis key layout cannot make this
//! program read the wrong data):
//!
//! - `setup`: registers job `crash-chain` (normalize → count_words → top_k)
//!   for the default tenant in the Redis catalog.
//! - `enqueue`: enqueues N chain tasks, in batches spread over a few queues,
//!   at a bounded rate, and appends every task it was *told* was stored
//!   (`index id queue`) to an ids file. A batch whose call failed (Redis
//!   killed under it) is sent again; a `Duplicate` answer means an earlier
//!   try stored (part of) it, so each of its tasks is then read back and
//!   only the missing ones are sent again. Task `i`'s input is a pure
//!   function of the seed and `i`.
//! - `progress`: prints the task counts by state, summed over the queues
//!   (`pending scheduled active completed dead`), for the script's loop.
//! - `check`: after every process has stopped, reads each task the ids file
//!   names straight from Redis and recomputes its expected result from its
//!   index: it must be `completed`, with exactly the final args and result
//!   log the chain computes. Reports lost, dead, unfinished and wrong tasks,
//!   tasks present in Redis that the producer was never told about, the
//!   attempts tasks took, and, from the workers' `handler finished` debug
//!   events, which handlers ran more than once, which later attempts resumed
//!   mid-chain, and whether any attempt started before a handler whose
//!   checkpoint had been saved. Exits 1 on any failure.
//!
//! The expected results come from an independent statement of the three
//! handlers' documented behaviour ([`expected`]), never from running them.
//! This program never panics on what it reads from Redis or the files.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use corral::broker::{Broker, BrokerError, QueueStats, RedisBroker, RedisConfig};
use corral::catalog::RedisCatalog;
use corral::{ArgsMap, Limits, Registry, Sandbox, SandboxConfig, Task, TaskId, TaskState};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The job the test runs.
const JOB: &str = "crash-chain";
/// The tenant of every task (the one tasks enqueued without a tenant get).
const TENANT: &str = "default";
/// The chain, in order, as files in the jobs directory.
const CHAIN: [&str; 3] = ["normalize", "count_words", "top_k"];
/// How long a broker call may keep failing (Redis restarting) before the
/// producer or the checker gives up.
const PATIENCE: Duration = Duration::from_secs(180);
/// Tasks read from Redis at once by the checker.
const READS_IN_FLIGHT: usize = 64;
/// Examples of each kind of failure printed.
const SHOW: usize = 10;

#[derive(Debug, Parser)]
#[command(about = "Producer and checker of scripts/crash-at-scale.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register the chain job in the Redis catalog.
    Setup(SetupArgs),
    /// Enqueue the tasks; write what was confirmed to the ids file.
    Enqueue(EnqueueArgs),
    /// Print `pending scheduled active completed dead` over the queues.
    Progress(Common),
    /// Check every confirmed task straight from Redis; print the figures.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// The Redis server of the run.
    #[arg(long)]
    redis: String,
    /// The key prefix of the run.
    #[arg(long, default_value = "corral")]
    prefix: String,
    /// Queues `crash-0` … `crash-(Q-1)`; each holds at most the broker's
    /// retention bound of completed tasks (100,000).
    #[arg(long, default_value_t = 4)]
    queues: usize,
}

impl Common {
    fn queue_names(&self) -> Vec<String> {
        (0..self.queues.max(1))
            .map(|q| format!("crash-{q}"))
            .collect()
    }

    async fn broker(&self) -> anyhow::Result<RedisBroker> {
        let config = RedisConfig::new(self.redis.clone()).prefix(self.prefix.clone());
        patiently("connect", || RedisBroker::connect(config.clone())).await
    }

    /// Counts by state, summed over the run's queues.
    async fn stats(&self, broker: &RedisBroker) -> Result<QueueStats, BrokerError> {
        let mut sum = QueueStats::default();
        for queue in self.queue_names() {
            let s = broker.stats(TENANT, &queue).await?;
            sum.pending += s.pending;
            sum.scheduled += s.scheduled;
            sum.active += s.active;
            sum.completed += s.completed;
            sum.dead += s.dead;
        }
        Ok(sum)
    }
}

#[derive(Debug, Args)]
struct SetupArgs {
    #[command(flatten)]
    common: Common,
    /// Where normalize.wasm, count_words.wasm and top_k.wasm are.
    #[arg(long)]
    jobs_dir: PathBuf,
    /// Wall-clock limit per handler call, in ms (generous: the machine may
    /// be shared).
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// The workers' disk cache of precompiled components: validating the
    /// modules here compiles them once, so that the workers (and every
    /// restarted one) load them instead of each compiling them again.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    #[command(flatten)]
    common: Common,
    /// Tasks to enqueue.
    #[arg(long)]
    tasks: u64,
    /// Tasks per enqueue call (one queue per batch, round robin).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// At most this many tasks per second (0: as fast as Redis takes them).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Attempts each task gets before it is dead.
    #[arg(long, default_value_t = 25)]
    max_attempts: u32,
    /// Seed of the generated inputs.
    #[arg(long)]
    seed: u64,
    /// Where confirmed tasks are appended, one `index id queue` per line.
    #[arg(long)]
    ids: PathBuf,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Seed of the generated inputs (as given to `enqueue`).
    #[arg(long)]
    seed: u64,
    /// The ids file `enqueue` wrote.
    #[arg(long)]
    ids: PathBuf,
    /// How many tasks the producer was asked to enqueue.
    #[arg(long)]
    expect: u64,
    /// Folder of the workers' logs (`worker-*.log`, with the executor's
    /// debug events).
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup(args).await,
        Command::Enqueue(args) => enqueue(args).await,
        Command::Progress(args) => progress(args).await,
        Command::Check(args) => check(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crash_check: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `op` until it succeeds, retrying while Redis is unreachable (it is
/// being restarted) for at most [`PATIENCE`].
async fn patiently<T, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let give_up = Instant::now() + PATIENCE;
    let mut backoff = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(BrokerError::Unavailable { reason, .. }) if Instant::now() < give_up => {
                note_retry(what, &reason);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).with_context(|| format!("{what} failed")),
        }
    }
}

/// One line per failed try on stderr: the script's log shows when Redis was
/// away.
fn note_retry(what: &str, reason: &str) {
    eprintln!("crash_check: {what}: Redis unavailable ({reason}); retrying");
}

async fn setup(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let catalog = RedisCatalog::connect_with_prefix(&args.common.redis, &args.common.prefix)
        .await
        .context("connecting to the catalog")?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache_dir.clone(),
        ..SandboxConfig::default()
    })?;
    let registry = Registry::with_catalog(sandbox, Arc::new(catalog));
    let files: Vec<PathBuf> = CHAIN
        .iter()
        .map(|h| args.jobs_dir.join(format!("{h}.wasm")))
        .collect();
    let limits = Limits {
        timeout_ms: args.timeout_ms,
        ..Limits::default()
    };
    let def = registry
        .sync_files(TENANT, JOB, &files, limits)
        .await
        .with_context(|| format!("registering job `{JOB}`"))?;
    println!(
        "registered job {JOB} v{}: {}",
        def.version,
        CHAIN.join(" -> ")
    );
    Ok(ExitCode::SUCCESS)
}

// ---- the inputs and the expected results ----

/// Words of the generated texts: mixed case, digits, non-ASCII letters
/// (whose case mapping changes length, as `ß`), so normalization has work.
const WORDS: &[&str] = &[
    "the",
    "The",
    "THE",
    "quick",
    "brown",
    "Fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "Été",
    "straße",
    "STRASSE",
    "naïve",
    "déjà",
    "vu",
    "x1",
    "42",
    "2024",
    "wasm",
    "Corral",
    "lease",
    "token",
    "ÅNGSTRÖM",
    "a",
    "A",
    "is",
    "rose",
    "buffalo",
    "Buffalo",
    "İstanbul",
    "ǅemal",
];
/// What goes between words: nothing alphanumeric, so each is a word break.
const SEPARATORS: &[&str] = &[
    " ", "  ", ", ", "; ", "!\n", "\t", " - ", "... ", " (", ") ", "—", "/", "'", "\"", "?  ",
];

/// Task `i`'s original args: `i`, a text of 0 to 40 generated words plus a
/// word naming the task (so no two tasks share a result), and `k`.
fn input(seed: u64, i: u64) -> ArgsMap {
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let words = rng.random_range(0..=40usize);
    let mut text = String::new();
    for w in 0..words {
        if w > 0 || rng.random_bool(0.3) {
            text.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text.push_str(&format!(" Task-{i}"));
    if rng.random_bool(0.5) {
        text.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
    }
    let k = rng.random_range(1..=5u64);
    let mut args = ArgsMap::new();
    args.insert("i".into(), json!(i));
    args.insert("text".into(), json!(text));
    args.insert("k".into(), json!(k));
    args
}

/// What the chain returns for `args`: the final args map and the result
/// log, as the handlers' docs specify them.
fn expected(args: &ArgsMap) -> Option<(ArgsMap, String)> {
    let text = args.get("text")?.as_str()?;
    let k = args.get("k")?.as_u64()? as usize;
    // normalize: lowercase, non-alphanumerics break words, single spaces.
    let normalized = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // count_words: word → count, and the total.
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for word in normalized.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    // top_k: by count descending, then word ascending; the first k.
    let mut top: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (*w, *c)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(k);
    let mut summary = format!("top {} of {} distinct", top.len(), counts.len());
    if !top.is_empty() {
        let entries: Vec<String> = top.iter().map(|(w, c)| format!("{w} ({c})")).collect();
        summary.push_str(": ");
        summary.push_str(&entries.join(", "));
    }
    let log = format!(
        "normalized {} chars\ncounted {total} words, {} distinct\n{summary}",
        text.chars().count(),
        counts.len()
    );
    let mut out = args.clone();
    out.insert("text".into(), json!(normalized));
    out.insert("counts".into(), json!(counts));
    out.insert("total".into(), json!(total));
    out.insert("top".into(), json!(top));
    out.insert("summary".into(), json!(summary));
    Some((out, log))
}

// ---- enqueue ----

async fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.batch > 1000 {
        bail!("--batch must be between 1 and 1000");
    }
    if args.max_attempts == 0 {
        bail!("--max-attempts must be at least 1");
    }
    let broker = args.common.broker().await?;
    let queues = args.common.queue_names();
    let mut out = BufWriter::new(
        File::create(&args.ids).with_context(|| format!("creating {}", args.ids.display()))?,
    );
    let started = Instant::now();
    let (mut next, mut batches) = (0u64, 0usize);
    let (mut failed_calls, mut resolved) = (0usize, 0usize);
    while next < args.tasks {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(next as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let queue = &queues[batches % queues.len()];
        let end = (next + args.batch as u64).min(args.tasks);
        let tasks: Vec<(u64, Task)> = (next..end)
            .map(|i| {
                let mut task = Task::new(JOB, input(args.seed, i));
                task.queue_name = queue.clone();
                task.max_attempts = args.max_attempts;
                (i, task)
            })
            .collect();
        let (failures, was_resolved) = store_batch(&broker, &tasks).await?;
        failed_calls += failures;
        resolved += usize::from(was_resolved);
        for (i, task) in &tasks {
            writeln!(out, "{i} {} {}", task.task_id, task.queue_name)?;
        }
        // Flushed per batch: the file says what the producer was told,
        // however it ends.
        out.flush()?;
        next = end;
        batches += 1;
    }
    println!(
        "enqueued {} tasks in {batches} batches over {} queues in {:.1}s; {failed_calls} enqueue \
         calls failed and were retried, {resolved} batches were found already stored on retry",
        args.tasks,
        queues.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Stores one batch, whatever Redis does meanwhile. Returns the number of
/// failed calls, and whether a retry found (some of) the batch stored by an
/// earlier call whose answer was lost.
async fn store_batch(broker: &RedisBroker, tasks: &[(u64, Task)]) -> anyhow::Result<(usize, bool)> {
    let give_up = Instant::now() + PATIENCE;
    let mut backoff = Duration::from_millis(50);
    let mut todo: Vec<Task> = tasks.iter().map(|(_, t)| t.clone()).collect();
    let (mut failures, mut resolved) = (0, false);
    loop {
        match broker.enqueue(todo.clone()).await {
            Ok(()) => return Ok((failures, resolved)),
            Err(BrokerError::Duplicate { task_id, .. })
                if todo.iter().any(|t| t.task_id == task_id) =>
            {
                // An earlier call stored tasks of this batch and its answer
                // was lost: keep sending only those Redis does not have.
                resolved = true;
                let mut missing = Vec::new();
                for task in todo {
                    let id = task.task_id;
                    if patiently("read back", || broker.task(TENANT, id))
                        .await?
                        .is_none()
                    {
                        missing.push(task);
                    }
                }
                todo = missing;
                if todo.is_empty() {
                    return Ok((failures, resolved));
                }
            }
            Err(BrokerError::Unavailable { reason, .. }) if Instant::now() < give_up => {
                failures += 1;
                note_retry("enqueue", &reason);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("enqueue failed"),
        }
    }
}

// ---- progress ----

async fn progress(args: Common) -> anyhow::Result<ExitCode> {
    let config = RedisConfig::new(args.redis.clone()).prefix(args.prefix.clone());
    // One try: the script calls again in a second.
    let broker = RedisBroker::connect(config).await?;
    let s = args.stats(&broker).await?;
    println!(
        "{} {} {} {} {}",
        s.pending, s.scheduled, s.active, s.completed, s.dead
    );
    Ok(ExitCode::SUCCESS)
}

// ---- check ----

/// One line of the ids file.
struct Confirmed {
    index: u64,
    id: TaskId,
    queue: String,
}

fn read_ids(path: &Path) -> anyhow::Result<Vec<Confirmed>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let mut parts = line.split_whitespace();
        let (Some(index), Some(id), Some(queue)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("{}:{}: malformed line `{line}`", path.display(), n + 1);
        };
        out.push(Confirmed {
            index: index
                .parse()
                .with_context(|| format!("{}:{}: index", path.display(), n + 1))?,
            id: id
                .parse()
                .with_context(|| format!("{}:{}: task id", path.display(), n + 1))?,
            queue: queue.to_owned(),
        });
    }
    Ok(out)
}

/// What became of one confirmed task.
enum Verdict {
    /// Completed with the expected result.
    Correct,
    /// Not in Redis.
    Lost,
    /// Dead, with its error.
    Dead(String),
    /// Still pending, scheduled, retrying or active.
    Unfinished(TaskState),
    /// Completed with something else than the expected result.
    Wrong(String),
}

fn judge(seed: u64, c: &Confirmed, task: Option<&Task>) -> Verdict {
    let Some(task) = task else {
        return Verdict::Lost;
    };
    let error = || {
        task.error
            .as_ref()
            .map(|e| format!("{}: {}", e.kind, e.message))
            .unwrap_or_else(|| "no error recorded".into())
    };
    match task.state {
        TaskState::Completed => {}
        TaskState::Dead => return Verdict::Dead(error()),
        other => return Verdict::Unfinished(other),
    }
    let original = input(seed, c.index);
    if task.original_args_map != original {
        return Verdict::Wrong(format!(
            "original args differ: stored {}",
            Value::Object(task.original_args_map.clone())
        ));
    }
    if task.queue_name != c.queue || task.job_name != JOB || task.tenant != TENANT {
        return Verdict::Wrong(format!(
            "stored under {}/{}/{}",
            task.tenant, task.queue_name, task.job_name
        ));
    }
    let Some((args, log)) = expected(&original) else {
        return Verdict::Wrong("the generated input has no text or k".into());
    };
    if task.current_handler_index != CHAIN.len() as u32 {
        return Verdict::Wrong(format!(
            "handler index {} at completion",
            task.current_handler_index
        ));
    }
    if task.result_log != log {
        return Verdict::Wrong(format!(
            "result log {:?}, expected {log:?}",
            task.result_log
        ));
    }
    if task.args_map != args {
        return Verdict::Wrong(format!(
            "final args {}, expected {}",
            Value::Object(task.args_map.clone()),
            Value::Object(args)
        ));
    }
    Verdict::Correct
}

/// One handler run, as a worker's `handler finished` debug event says.
struct Run {
    task: String,
    handler: u32,
    attempt: u32,
}

/// Every handler run in the workers' logs (lines cut short by a SIGKILL do
/// not parse and are skipped).
fn handler_runs(dir: &Path) -> anyhow::Result<(Vec<Run>, usize)> {
    let mut runs = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("worker-") && name.ends_with(".log")) {
            continue;
        }
        files += 1;
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            let line = String::from_utf8_lossy(&line);
            if !line.contains("handler finished") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            let run = (|| {
                Some(Run {
                    task: field("task=")?,
                    handler: field("handler=")?.parse().ok()?,
                    attempt: field("attempt=")?.parse().ok()?,
                })
            })();
            runs.extend(run);
        }
    }
    Ok((runs, files))
}

/// What the workers' logs say about the runs of the confirmed tasks.
#[derive(Default)]
struct RunFigures {
    runs: usize,
    ran_twice: usize,
    resumed: usize,
    restarted_from_zero: usize,
    violations: Vec<String>,
    unknown_tasks: usize,
}

fn analyse_runs(runs: Vec<Run>, known: &HashSet<String>) -> RunFigures {
    let mut fig = RunFigures {
        runs: runs.len(),
        ..RunFigures::default()
    };
    let mut by_task: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for r in runs {
        by_task
            .entry(r.task)
            .or_default()
            .push((r.attempt, r.handler));
    }
    for (task, list) in &by_task {
        if !known.contains(task) {
            fig.unknown_tasks += 1;
        }
        let mut per_handler: HashMap<u32, usize> = HashMap::new();
        for (_, h) in list {
            *per_handler.entry(*h).or_default() += 1;
        }
        if per_handler.values().any(|&n| n > 1) {
            fig.ran_twice += 1;
        }
        // Handler h finishing in some attempt means the checkpoint after
        // handler h-1 had been saved (the worker saves it before going on),
        // so no later attempt may start below h: that would be a checkpoint
        // lost, by Redis or by the broker.
        let attempts: BTreeSet<u32> = list.iter().map(|(a, _)| *a).collect();
        for &later in &attempts {
            let Some(first) = list
                .iter()
                .filter(|(a, _)| *a == later)
                .map(|(_, h)| *h)
                .min()
            else {
                continue;
            };
            let Some(done) = list
                .iter()
                .filter(|(a, _)| *a < later)
                .map(|(_, h)| *h)
                .max()
            else {
                continue;
            };
            if first < done {
                fig.violations.push(format!(
                    "task {task}: attempt {later} started at handler {first} although handler \
                     {done} had finished in an earlier attempt (runs: {list:?})"
                ));
            } else if first > 0 {
                fig.resumed += 1;
            } else {
                fig.restarted_from_zero += 1;
            }
        }
    }
    fig
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let confirmed = read_ids(&args.ids)?;
    let broker = args.common.broker().await?;
    let started = Instant::now();
    let seed = args.seed;
    let verdicts: Vec<(usize, Verdict, u32, Option<String>)> =
        futures_util::stream::iter(confirmed.iter().enumerate())
            .map(|(n, c)| {
                let broker = &broker;
                async move {
                    let task = patiently("read task", || broker.task(TENANT, c.id)).await?;
                    let attempt = task.as_ref().map_or(0, |t| t.attempt);
                    let earlier_error = task
                        .as_ref()
                        .filter(|t| t.state == TaskState::Completed)
                        .and_then(|t| t.error.as_ref())
                        .map(|e| e.kind.clone());
                    anyhow::Ok((n, judge(seed, c, task.as_ref()), attempt, earlier_error))
                }
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let read_secs = started.elapsed().as_secs_f64();
    let stats = patiently("stats", || args.common.stats(&broker)).await?;

    let mut seen: HashSet<TaskId> = HashSet::new();
    let duplicates = confirmed.iter().filter(|c| !seen.insert(c.id)).count();
    let (mut correct, mut lost, mut dead, mut unfinished, mut wrong) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut attempts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut earlier_errors: BTreeMap<String, usize> = BTreeMap::new();
    for (n, verdict, attempt, earlier) in verdicts {
        let id = confirmed[n].id;
        match verdict {
            Verdict::Correct => correct.push(id),
            Verdict::Lost => lost.push(format!("{id}")),
            Verdict::Dead(e) => dead.push(format!("{id}: {e}")),
            Verdict::Unfinished(s) => unfinished.push(format!("{id}: {s}")),
            Verdict::Wrong(w) => wrong.push(format!("{id}: {w}")),
        }
        if attempt > 0 {
            *attempts.entry(attempt).or_default() += 1;
        }
        if let Some(kind) = earlier {
            *earlier_errors.entry(kind).or_default() += 1;
        }
    }
    let in_redis = stats.pending + stats.scheduled + stats.active + stats.completed + stats.dead;
    let unconfirmed = in_redis.saturating_sub(confirmed.len());
    let more_than_one = attempts.range(2..).map(|(_, n)| n).sum::<usize>();

    println!("crash check (read straight from Redis, {read_secs:.1}s):");
    println!("  tasks asked for:                 {}", args.expect);
    println!("  tasks the producer was told:     {}", confirmed.len());
    println!("  completed with correct result:   {}", correct.len());
    println!("  lost (not in Redis):             {}", lost.len());
    println!("  dead:                            {}", dead.len());
    println!("  not finished:                    {}", unfinished.len());
    println!("  wrong result:                    {}", wrong.len());
    println!("  ids confirmed twice:             {duplicates}");
    println!(
        "  in Redis by state:               pending {} scheduled {} active {} completed {} dead {}",
        stats.pending, stats.scheduled, stats.active, stats.completed, stats.dead
    );
    println!("  in Redis, never confirmed:       {unconfirmed}");
    println!("  tasks with attempts > 1:         {more_than_one}");
    let histogram: Vec<String> = attempts.iter().map(|(a, n)| format!("{a}:{n}")).collect();
    println!("  attempts (attempt:tasks):        {}", histogram.join(" "));
    let errors: Vec<String> = earlier_errors
        .iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect();
    println!(
        "  completed after a failed try:    {} ({})",
        earlier_errors.values().sum::<usize>(),
        errors.join(" ")
    );

    let mut violations = Vec::new();
    if let Some(dir) = &args.logs {
        let (runs, files) = handler_runs(dir)?;
        let known: HashSet<String> = confirmed.iter().map(|c| c.id.to_string()).collect();
        let fig = analyse_runs(runs, &known);
        println!("  worker logs read:                {files}");
        println!("  handler runs logged:             {}", fig.runs);
        println!("  tasks that ran a handler twice:  {}", fig.ran_twice);
        println!("  later attempts resumed mid-chain:{:>7}", fig.resumed);
        println!(
            "  later attempts from handler 0:   {}",
            fig.restarted_from_zero
        );
        println!(
            "  checkpoint regressions:          {}",
            fig.violations.len()
        );
        println!("  logged tasks never confirmed:    {}", fig.unknown_tasks);
        violations = fig.violations;
        if fig.unknown_tasks > 0 {
            violations.push(format!(
                "{} tasks ran that the producer was never told about",
                fig.unknown_tasks
            ));
        }
    }

    let mut failed = false;
    for (what, list) in [
        ("lost", &lost),
        ("dead", &dead),
        ("not finished", &unfinished),
        ("wrong result", &wrong),
        ("checkpoint regression", &violations),
    ] {
        if list.is_empty() {
            continue;
        }
        failed = true;
        println!("FAIL: {} {what}; first ones:", list.len());
        for item in list.iter().take(SHOW) {
            println!("  {item}");
        }
    }
    if confirmed.len() as u64 != args.expect {
        failed = true;
        println!(
            "FAIL: the producer was told about {} tasks, not {}",
            confirmed.len(),
            args.expect
        );
    }
    if duplicates > 0 || unconfirmed > 0 {
        failed = true;
        println!(
            "FAIL: {duplicates} ids confirmed twice, {unconfirmed} tasks in Redis never confirmed"
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        println!("OK: every task the producer was told about completed, with the correct result");
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_matches_the_handlers_documented_examples() {
        let mut args = ArgsMap::new();
        args.insert("text".into(), json!("  The CAT, the\tcat!\n(42x) "));
        args.insert("k".into(), json!(2));
        let (out, log) = expected(&args).unwrap_or_default();
        assert_eq!(out["text"], json!("the cat the cat 42x"));
        assert_eq!(out["total"], json!(5));
        assert_eq!(out["top"], json!([["cat", 2], ["the", 2]]));
        assert_eq!(
            log,
            "normalized 26 chars\ncounted 5 words, 3 distinct\ntop 2 of 3 distinct: cat (2), the (2)"
        );
    }

    #[test]
    fn inputs_are_a_function_of_seed_and_index() {
        assert_eq!(input(7, 12), input(7, 12));
        assert_ne!(input(7, 12), input(7, 13));
        assert_ne!(input(7, 12), input(8, 12));
    }
}
