//! `corral bench e2e`: Corral end to end through Redis, measured.
//!
//! In a queue of its own (deleted afterwards), the bench
//!
//! 1. enqueues `--single` no-op tasks one call each: the single enqueue rate;
//!    then as many again from `--producers` concurrent producers sharing
//!    the one connection;
//! 2. enqueues `--tasks` no-op tasks in one bulk call: the bulk enqueue rate,
//!    and Redis's memory per queued task (`used_memory` before and after;
//!    `--tasks 1000000` measures the cost at a deep backlog);
//! 3. starts ONE `corral worker` process (`--job bench=<component>`, the
//!    Rust no-op by default, any job's component with `--job FILE` and its
//!    args with `--arg`) and times it draining them: the end-to-end rate, from the first task
//!    leased to the queue empty (and, separately, including the worker's
//!    start-up);
//! 4. with that worker idle, enqueues at a steady `--rate` per second for
//!    `--latency-for`, and reads when each task started (the lease time the
//!    broker records): p50 and p99 enqueue-to-start latency;
//! 5. under load: for `--load-for`, enqueues a steady stream at half the
//!    rate step 3 measured (a small batch every millisecond) while the
//!    same worker drains it, and reads the same latency;
//! 6. reads the worker's peak resident memory (`VmHWM`) before stopping it;
//! 7. with `--workers N` (2 by default; 0: no row), enqueues `--tasks` again
//!    and times N worker processes draining them together, with their CPU
//!    and Redis's per task;
//! 8. submits a workflow, a chord of `--chord` no-op members and one
//!    callback (which receives their 10,000 results), into a queue of its
//!    own, then starts a worker for that queue and times it as in 3: from
//!    the first member leased, members per second, the callback's delay
//!    after the last member, and the worker's and Redis's CPU per member.
//!
//! `--metrics` runs the worker with its Prometheus metrics recording, to
//! compare against a run without.
//!
//! It prints one figure per line. Every task runs the component in a fresh
//! wasm instance, so the figures include the sandbox's per-task cost.
//! This module only measures; it changes nothing in how Corral runs.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Args;

use super::broker_cmds::RedisArgs;
use super::parse_duration;
use crate::broker::{Broker, RedisBroker};
use crate::task::{ArgsMap, DEFAULT_TENANT, Task, TaskId};

/// The flags that leave only the drain rows (and the bulk enqueue before
/// them) in a `corral bench e2e` run, for benches that run it to measure
/// just that.
pub(super) const DRAIN_ONLY: [&str; 8] = [
    "--single",
    "0",
    "--latency-for",
    "0s",
    "--load-for",
    "0s",
    "--chord",
    "0",
];

#[derive(Debug, Args)]
pub(super) struct E2eArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Tasks enqueued in bulk and drained by the worker: the backlog the
    /// drain starts from (`--backlog 1000000` measures the cost at depth).
    #[arg(long, alias = "backlog", default_value_t = 100_000)]
    tasks: usize,
    /// Tasks enqueued one call each, for the single enqueue rate.
    #[arg(long, default_value_t = 5_000)]
    single: usize,
    /// Producers sharing the bench's one connection for a second single
    /// enqueue figure: `--single` tasks again, one call each, split
    /// between them and sent concurrently (0: no such row).
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// The worker's concurrency: the most tasks leased at once, which also
    /// bounds how many one acquire can take (and at most the worker's
    /// instance pool, 256 by default: the worker lowers it to that). The
    /// bench's tenant is not in the catalog (unless someone registered
    /// `default` there), so no tenant cap applies.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Tasks per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long the latency phase lasts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    latency_for: Duration,
    /// The component every task runs (a one-handler job): the Rust no-op
    /// by default; `jobs/dist/noop_py.wasm` measures a Python guest.
    #[arg(
        long = "job",
        alias = "noop",
        value_name = "FILE",
        default_value = "jobs/dist/noop.wasm"
    )]
    job: PathBuf,
    /// An arg of every task as `key=value` (a string).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// An arg of every task as `key=JSON`.
    #[arg(long = "json-arg", value_name = "KEY=JSON")]
    json_args: Vec<String>,
    /// The `corral` binary to start the worker from (default: this one).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Run the worker with its Prometheus metrics on (`--metrics-listen`
    /// on a free loopback port), to measure what recording them costs.
    #[arg(long)]
    metrics: bool,
    /// Members of the workflow row's chord (0: no workflow row).
    #[arg(long, default_value_t = 10_000)]
    chord: usize,
    /// How long the latency-under-load phase lasts (0: no such row).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    load_for: Duration,
    /// Worker processes of the scale-out row, draining `--tasks` together
    /// (0: no such row).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Spread the drained tasks over this many tenants (`bench-0`, ...):
    /// a tenant's keys live in one Cluster slot, so a Cluster's masters
    /// share the work only when several tenants have some. The other rows
    /// use the default tenant.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
}

impl E2eArgs {
    /// The tenants the drained tasks belong to.
    fn tenant_names(&self) -> Vec<String> {
        match self.tenants {
            0 | 1 => vec![DEFAULT_TENANT.to_owned()],
            n => (0..n).map(|i| format!("bench-{i}")).collect(),
        }
    }
}

/// Stops (SIGTERM, then SIGKILL) the worker process when dropped, so a
/// failed bench leaves nothing running.
struct WorkerProcess {
    child: std::process::Child,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU seconds (user + system) the process has used so far.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which may hold spaces, so split
        // after its closing parenthesis): utime is the 12th, stime the 13th,
        // in clock ticks of 1/100 s (USER_HZ on Linux).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let give_up = Instant::now() + Duration::from_secs(15);
        while Instant::now() < give_up {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn bench_task(queue: &str, args: &ArgsMap) -> Task {
    let mut task = Task::new("bench", args.clone());
    task.queue_name = queue.to_owned();
    task.max_attempts = 1;
    task
}

/// `n` bench tasks in `queue`, shared out over `tenants`, as enqueue
/// calls of at most 100,000 (one call is one script holding Redis) and one
/// tenant each, as producers would send them.
fn backlog(tenants: &[String], queue: &str, task_args: &ArgsMap, n: usize) -> Vec<Vec<Task>> {
    let mut calls = Vec::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let mine = n / tenants.len() + usize::from(i < n % tenants.len());
        let tasks: Vec<Task> = (0..mine)
            .map(|_| {
                let mut task = bench_task(queue, task_args);
                task.tenant.clone_from(tenant);
                task
            })
            .collect();
        calls.extend(tasks.chunks(100_000).map(<[Task]>::to_vec));
    }
    calls
}

async fn enqueue_calls(broker: &RedisBroker, calls: Vec<Vec<Task>>) -> anyhow::Result<()> {
    for call in calls {
        broker.enqueue(call).await?;
    }
    Ok(())
}

/// `queue`'s counts summed over `tenants`.
async fn stats_of(
    broker: &RedisBroker,
    tenants: &[String],
    queue: &str,
) -> anyhow::Result<crate::broker::QueueStats> {
    let mut sum = crate::broker::QueueStats::default();
    for tenant in tenants {
        sum.add(&broker.stats(tenant, queue).await?);
    }
    Ok(sum)
}

/// What the chord row measured.
struct ChordFigures {
    members: usize,
    submitted: Duration,
    members_done: Duration,
    all_done: Duration,
    worker_cpu: String,
    redis_cpu: String,
}

/// Starts the bench's worker process on `queue`.
fn spawn_worker(
    args: &E2eArgs,
    bin: &std::path::Path,
    queue: &str,
) -> anyhow::Result<WorkerProcess> {
    let url = args.redis.redis.clone().unwrap_or_default();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("worker")
        .arg("--redis")
        .arg(&url)
        .arg("--prefix")
        .arg(&args.redis.prefix)
        .arg("--queue")
        .arg(queue)
        .arg("--concurrency")
        .arg(args.concurrency.to_string())
        .arg("--job")
        .arg(format!("bench={}", args.job.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if args.redis.cluster {
        cmd.arg("--cluster");
    }
    // The default tenant's too: the latency and chord rows use it.
    let mut tenants = args.tenant_names();
    if !tenants.iter().any(|t| t == DEFAULT_TENANT) {
        tenants.push(DEFAULT_TENANT.to_owned());
    }
    for tenant in tenants {
        cmd.arg("--tenant").arg(tenant);
    }
    if args.metrics {
        cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    Ok(WorkerProcess {
        child: cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    })
}

/// Submits a chord of `members` bench tasks and one bench callback into
/// `queue`, starts a worker for it and waits for the chord to complete.
async fn measure_chord(
    members: usize,
    args: &E2eArgs,
    bin: &std::path::Path,
    broker: &RedisBroker,
    queue: &str,
    limit: Duration,
) -> anyhow::Result<ChordFigures> {
    use crate::broker::TenantQuota;
    use crate::workflow::{Flow, OnFailure, Plan, Workflow, WorkflowId, WorkflowState};
    let step = || Flow::task("bench").queue(queue).max_attempts(1);
    let workflow = Workflow {
        id: WorkflowId::new(),
        tenant: DEFAULT_TENANT.to_owned(),
        flow: Flow::chord((0..members).map(|_| step()), step()),
        on_failure: OnFailure::FailFast,
    };
    let plan = Plan::compile(&workflow, Utc::now()).map_err(|e| anyhow::anyhow!(e))?;
    let submit_started = Instant::now();
    broker
        .submit_workflow(&plan, &TenantQuota::UNLIMITED, u32::MAX)
        .await?;
    let submitted = submit_started.elapsed();
    let mut worker = spawn_worker(args, bin, queue)?;
    let give_up = Instant::now() + limit;
    // From the first member leased, as the drain is timed.
    while broker.stats(DEFAULT_TENANT, queue).await?.pending >= members {
        if Instant::now() > give_up {
            bail!("the chord's worker never started taking tasks");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = cpu_mark(&worker, broker).await;
    let t0 = Instant::now();
    let mut members_done = None;
    let all_done = loop {
        let s = broker.stats(DEFAULT_TENANT, queue).await?;
        if s.dead > 0 {
            bail!("{} of the chord's steps died; see the worker's log", s.dead);
        }
        if members_done.is_none() && s.completed >= members {
            members_done = Some(t0.elapsed());
        }
        if s.completed > members {
            break t0.elapsed();
        }
        if Instant::now() > give_up {
            bail!("the chord did not complete within {limit:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let after = cpu_mark(&worker, broker).await;
    worker.stop();
    let status = broker
        .workflow(DEFAULT_TENANT, workflow.id)
        .await?
        .context("the chord's workflow vanished")?;
    if status.state != WorkflowState::Completed {
        bail!("the chord ended {}: {:?}", status.state, status.error);
    }
    let per_member = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map(|(a, b)| format!("{:.1} µs/member", (b - a) * 1e6 / members as f64))
            .unwrap_or_else(|| "unknown".to_owned())
    };
    Ok(ChordFigures {
        members,
        submitted,
        members_done: members_done.unwrap_or(all_done),
        all_done,
        worker_cpu: per_member(before.worker, after.worker),
        redis_cpu: per_member(before.redis, after.redis),
    })
}

/// Enqueue-to-start latencies (ms, sorted) of a steady stream of `rate`
/// tasks per second into `queue` for `length`, sent as a batch every
/// millisecond while a worker drains the queue; at most `MAX_SAMPLED` of
/// them, evenly spread, are read back.
async fn latency_under_load(
    broker: &RedisBroker,
    queue: &str,
    task_args: &ArgsMap,
    rate: f64,
    length: Duration,
    limit: Duration,
) -> anyhow::Result<(Vec<f64>, usize)> {
    const MAX_SAMPLED: usize = 20_000;
    let mut sent: Vec<(TaskId, chrono::DateTime<Utc>)> = Vec::new();
    let t0 = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = t0.elapsed();
        if elapsed >= length {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as usize;
        if due <= sent.len() {
            continue;
        }
        let batch: Vec<Task> = (sent.len()..due)
            .map(|_| bench_task(queue, task_args))
            .collect();
        let at = Utc::now();
        sent.extend(batch.iter().map(|t| (t.task_id, at)));
        broker.enqueue(batch).await?;
    }
    drain(broker, &default_tenant(), queue, sent.len(), limit).await?;
    let step = sent.len().div_ceil(MAX_SAMPLED).max(1);
    let mut latencies_ms = Vec::with_capacity(sent.len() / step + 1);
    for (id, at) in sent.iter().step_by(step) {
        let started = broker
            .attempt_info(DEFAULT_TENANT, *id)
            .await?
            .and_then(|i| i.started_at)
            .with_context(|| format!("task {id} never started"))?;
        latencies_ms.push((started - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok((latencies_ms, sent.len()))
}

/// What the scale-out row measured.
struct ScaleFigures {
    workers: usize,
    rate: f64,
    worker_cpu: String,
    redis_cpu: String,
}

/// Enqueues `args.tasks` into `queue`, then times `args.workers` worker
/// processes draining them together.
async fn measure_scale_out(
    args: &E2eArgs,
    bin: &std::path::Path,
    broker: &RedisBroker,
    queue: &str,
    task_args: &ArgsMap,
    limit: Duration,
) -> anyhow::Result<ScaleFigures> {
    let tenants = args.tenant_names();
    enqueue_calls(broker, backlog(&tenants, queue, task_args, args.tasks)).await?;
    let mut workers = Vec::with_capacity(args.workers);
    for _ in 0..args.workers {
        workers.push(spawn_worker(args, bin, queue)?);
    }
    let give_up = Instant::now() + limit;
    while stats_of(broker, &tenants, queue).await?.pending >= args.tasks {
        if Instant::now() > give_up {
            bail!("the scale-out workers never started taking tasks");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu = |workers: &[WorkerProcess]| {
        workers
            .iter()
            .map(WorkerProcess::cpu_seconds)
            .sum::<Option<f64>>()
    };
    let (workers_before, redis_before) = (
        cpu(&workers),
        broker.server_cpu_seconds().await.ok().flatten(),
    );
    let first = drain(broker, &tenants, queue, args.tasks, limit).await?;
    let done = Instant::now();
    let (workers_after, redis_after) = (
        cpu(&workers),
        broker.server_cpu_seconds().await.ok().flatten(),
    );
    for w in &mut workers {
        w.stop();
    }
    let per_task = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map(|(a, b)| format!("{:.1} µs/task", (b - a) * 1e6 / args.tasks as f64))
            .unwrap_or_else(|| "unknown".to_owned())
    };
    Ok(ScaleFigures {
        workers: args.workers,
        rate: args.tasks as f64 / done.duration_since(first).as_secs_f64(),
        worker_cpu: per_task(workers_before, workers_after),
        redis_cpu: per_task(redis_before, redis_after),
    })
}

fn default_tenant() -> [String; 1] {
    [DEFAULT_TENANT.to_owned()]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU use of the worker and of Redis, read when the drain starts.
struct CpuMark {
    worker: Option<f64>,
    redis: Option<f64>,
}

async fn cpu_mark(worker: &WorkerProcess, broker: &RedisBroker) -> CpuMark {
    CpuMark {
        worker: worker.cpu_seconds(),
        redis: broker.server_cpu_seconds().await.ok().flatten(),
    }
}

/// Waits until the queue has nothing pending, scheduled or active; returns
/// when the first task was seen leased or done.
async fn drain(
    broker: &RedisBroker,
    tenants: &[String],
    queue: &str,
    total: usize,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let give_up = Instant::now() + limit;
    let mut first = None;
    loop {
        let s = stats_of(broker, tenants, queue).await?;
        let now = Instant::now();
        if first.is_none() && (s.active > 0 || s.completed > 0 || s.dead > 0) {
            first = Some(now);
        }
        if s.pending + s.scheduled + s.active == 0 && s.completed + s.dead >= total.min(1) {
            if s.dead > 0 {
                bail!("{} of the bench's tasks died; see the worker's log", s.dead);
            }
            return Ok(first.unwrap_or(now));
        }
        if now > give_up {
            bail!("the worker did not drain the queue within {limit:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn run(args: E2eArgs) -> anyhow::Result<ExitCode> {
    if !args.job.exists() {
        bail!(
            "{} is missing: build the example jobs first with `scripts/demo.sh` (or `jobs/build.sh`)",
            args.job.display()
        );
    }
    let broker = args.redis.connect("bench e2e").await?;
    let queue = format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let single_queue = format!("{queue}-single");
    let chord_queue = format!("{queue}-chord");
    let scale_queue = format!("{queue}-scale");
    let queues = Queues {
        main: &queue,
        single: &single_queue,
        chord: &chord_queue,
        scale: &scale_queue,
    };
    let result = measure(&args, &broker, &queues).await;
    // Leave nothing behind, whatever happened.
    let mut tenants = args.tenant_names();
    tenants.push(DEFAULT_TENANT.to_owned());
    tenants.dedup();
    for tenant in &tenants {
        for q in [&queue, &single_queue, &chord_queue, &scale_queue] {
            if let Err(e) = broker.purge_queue(tenant, q).await {
                eprintln!("warning: could not delete the bench queue {q} of {tenant}: {e}");
            }
        }
    }
    result
}

/// The bench's queues, one per row that needs its own.
struct Queues<'a> {
    main: &'a str,
    single: &'a str,
    chord: &'a str,
    scale: &'a str,
}

async fn measure(
    args: &E2eArgs,
    broker: &RedisBroker,
    queues: &Queues<'_>,
) -> anyhow::Result<ExitCode> {
    let (queue, single_queue, chord_queue) = (queues.main, queues.single, queues.chord);
    // 1. Single enqueues, one broker call each.
    let task_args = crate::task::parse_arg_pairs(
        args.args.iter().map(String::as_str),
        args.json_args.iter().map(String::as_str),
    )?;
    let singles: Vec<Task> = (0..args.single)
        .map(|_| bench_task(single_queue, &task_args))
        .collect();
    let started = Instant::now();
    for task in singles {
        broker.enqueue(vec![task]).await?;
    }
    let single_rate = args.single as f64 / started.elapsed().as_secs_f64();
    // The same number again from several producers at once, sharing the
    // one (multiplexed) connection.
    let shared_rate = if args.single > 0 && args.producers > 0 {
        let each = args.single.div_ceil(args.producers);
        let mut batches: Vec<Vec<Task>> = (0..args.producers)
            .map(|p| {
                (0..each.min(args.single.saturating_sub(p * each)))
                    .map(|_| bench_task(single_queue, &task_args))
                    .collect()
            })
            .collect();
        batches.retain(|b| !b.is_empty());
        let started = Instant::now();
        let mut producers = tokio::task::JoinSet::new();
        for batch in batches {
            let broker = broker.clone();
            producers.spawn(async move {
                for task in batch {
                    broker.enqueue(vec![task]).await?;
                }
                Ok::<_, crate::broker::BrokerError>(())
            });
        }
        while let Some(done) = producers.join_next().await {
            done??;
        }
        Some(args.single as f64 / started.elapsed().as_secs_f64())
    } else {
        None
    };

    // 2. One bulk enqueue, and what the queued tasks hold of Redis's memory.
    let tenants = args.tenant_names();
    let calls = backlog(&tenants, queue, &task_args, args.tasks);
    let memory_before = broker.server_memory_bytes().await.ok().flatten();
    let started = Instant::now();
    enqueue_calls(broker, calls).await?;
    let bulk_rate = args.tasks as f64 / started.elapsed().as_secs_f64();
    let memory_after = broker.server_memory_bytes().await.ok().flatten();
    let per_queued = memory_before
        .zip(memory_after)
        .map(|(a, b)| {
            format!(
                "{:.0} bytes",
                b.saturating_sub(a) as f64 / args.tasks.max(1) as f64
            )
        })
        .unwrap_or_else(|| "unknown".to_owned());

    // 3. One worker process drains them.
    let bin = match &args.worker_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding the corral binary")?,
    };
    let spawned = Instant::now();
    let mut worker = spawn_worker(args, &bin, queue)?;
    let limit = Duration::from_secs(600);
    // Wait for the worker to take its first task, then note CPU use, so
    // the per-task CPU figures leave out its start-up.
    let give_up = Instant::now() + limit;
    while stats_of(broker, &tenants, queue).await?.pending >= args.tasks {
        if Instant::now() > give_up {
            bail!("the worker never started taking tasks");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = cpu_mark(&worker, broker).await;
    let first = drain(broker, &tenants, queue, args.tasks, limit).await?;
    let done = Instant::now();
    let after = cpu_mark(&worker, broker).await;
    // A rate of tasks that died is not a rate of work done: say so.
    let died = stats_of(broker, &tenants, queue).await?.dead;
    if died == args.tasks {
        bail!(
            "every task died: is {} a job that succeeds on these args? (`corral run` it)",
            args.job.display()
        );
    }
    let per_task_us = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .map(|(a, b)| format!("{:.1} µs/task", (b - a) * 1e6 / args.tasks as f64))
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let worker_cpu = per_task_us(before.worker, after.worker);
    let redis_cpu = per_task_us(before.redis, after.redis);
    let e2e_rate = args.tasks as f64 / done.duration_since(first).as_secs_f64();
    let e2e_with_start = args.tasks as f64 / done.duration_since(spawned).as_secs_f64();

    // 4. Steady rate, one task at a time, worker idle in between.
    let count = (f64::from(args.rate) * args.latency_for.as_secs_f64()).round() as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut sent: Vec<(TaskId, chrono::DateTime<Utc>)> = Vec::with_capacity(count);
    let t0 = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(t0 + period * i as u32).await;
        let task = bench_task(queue, &task_args);
        let id = task.task_id;
        let at = Utc::now();
        broker.enqueue(vec![task]).await?;
        sent.push((id, at));
    }
    drain(broker, &default_tenant(), queue, count, limit).await?;
    let mut latencies_ms = Vec::with_capacity(count);
    for (id, at) in &sent {
        let info = broker
            .attempt_info(DEFAULT_TENANT, *id)
            .await?
            .with_context(|| format!("task {id} vanished"))?;
        let started = info
            .started_at
            .with_context(|| format!("task {id} never started"))?;
        latencies_ms.push((started - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    latencies_ms.sort_by(f64::total_cmp);

    // 5. Under load: half the drain rate, while the worker drains.
    let load_rate = (e2e_rate / 2.0).max(1.0);
    let under_load = if args.load_for.is_zero() {
        None
    } else {
        Some(latency_under_load(broker, queue, &task_args, load_rate, args.load_for, limit).await?)
    };

    // 6. The worker's peak memory, then stop it.
    let peak_kib = worker.peak_rss_kib();
    worker.stop();

    // 7. Several workers together.
    let scale = match args.workers {
        0 => None,
        _ => Some(measure_scale_out(args, &bin, broker, queues.scale, &task_args, limit).await?),
    };

    // 8. A chord, drained by a worker of its own.
    let chord = match args.chord {
        0 => None,
        n => Some(measure_chord(n, args, &bin, broker, chord_queue, limit).await?),
    };

    say!(
        "end-to-end: {e2e_rate:.0} tasks/s ({} tasks of {}, one worker process, concurrency {}, {} tenant(s))",
        args.tasks,
        args.job.file_name().map_or_else(
            || args.job.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        args.concurrency,
        tenants.len()
    );
    if died > 0 {
        say!("tasks that died while draining: {died} (counted in the rates above)");
    }
    say!("end-to-end including worker start-up: {e2e_with_start:.0} tasks/s");
    say!("worker CPU while draining: {worker_cpu}");
    say!("Redis CPU while draining: {redis_cpu}");
    if args.single > 0 {
        say!(
            "single enqueue: {single_rate:.0} tasks/s ({} calls of one task)",
            args.single
        );
    }
    if let Some(rate) = shared_rate {
        say!(
            "single enqueue, {} producers sharing one connection: {rate:.0} tasks/s ({} calls of one task in all)",
            args.producers,
            args.single
        );
    }
    say!(
        "bulk enqueue: {bulk_rate:.0} tasks/s ({} tasks in calls of at most 100,000)",
        args.tasks
    );
    say!(
        "Redis memory per queued task: {per_queued} ({} tasks queued)",
        args.tasks
    );
    if count > 0 {
        say!(
            "enqueue-to-start latency p50: {:.3} ms ({} tasks at {}/s)",
            percentile(&latencies_ms, 50.0),
            count,
            args.rate
        );
        say!(
            "enqueue-to-start latency p99: {:.3} ms",
            percentile(&latencies_ms, 99.0)
        );
    }
    if let Some((latencies, sent)) = &under_load {
        say!(
            "enqueue-to-start latency under load p50: {:.3} ms ({sent} tasks at {load_rate:.0}/s, half the drain rate, a batch every ms)",
            percentile(latencies, 50.0),
        );
        say!(
            "enqueue-to-start latency under load p99: {:.3} ms",
            percentile(latencies, 99.0)
        );
    }
    if let Some(s) = &scale {
        say!(
            "end-to-end with {} worker processes: {:.0} tasks/s ({} tasks)",
            s.workers,
            s.rate,
            args.tasks
        );
        say!(
            "CPU with {} worker processes: workers {} together, Redis {}",
            s.workers,
            s.worker_cpu,
            s.redis_cpu
        );
    }
    if let Some(c) = chord {
        say!(
            "workflow chord: {:.0} members/s ({} members and 1 callback, done in {:.2} s from the first member leased; submitted in {:.0} ms)",
            c.members as f64 / c.members_done.as_secs_f64(),
            c.members,
            c.all_done.as_secs_f64(),
            c.submitted.as_secs_f64() * 1000.0,
        );
        say!(
            "workflow chord callback: done {:.1} ms after the last member",
            (c.all_done.saturating_sub(c.members_done)).as_secs_f64() * 1000.0
        );
        say!(
            "workflow chord CPU: worker {}, Redis {}",
            c.worker_cpu,
            c.redis_cpu
        );
    }
    match peak_kib {
        Some(kib) => say!(
            "worker peak resident memory: {:.1} MiB",
            kib as f64 / 1024.0
        ),
        None => say!("worker peak resident memory: unknown (no /proc)"),
    }
    Ok(ExitCode::SUCCESS)
}
