//! `corral bench sandbox`: what the sandbox costs, measured and printed one
//! figure per line.
//!
//! Figures, in order: per-task overhead (instantiate + call + drop) of a
//! trivial handler, as median and p99, for a minimal hand-written component
//! (`tests/fixtures/minimal_handler.wat`: the host's own cost) and for
//! `noop.wasm` (the same handler in Rust with the guest SDK: what a real
//! trivial job costs), with where the time goes; the same host call path
//! around a native Rust function; first compile, disk-cache load and
//! memory-cache load of the example jobs; the slowdown fuel metering costs on
//! `cpu_heavy.wasm` (the same component on engines with and without
//! metering, runs alternated); and resident memory before and after many
//! calls on the sandbox alone, then many tasks through a worker on the
//! embedded broker.
//!
//! On a shared machine the figures move with whatever else runs: compare
//! runs taken under the same load, and trust medians over p99s.
//!
//! This module measures and prints; it asserts nothing (timings are not
//! test material) and changes no setting of the sandbox it measures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::units::{mib, ms, us};

use crate::broker::{EmbeddedBroker, Retention};
use crate::client::Client;
use crate::clock::SystemClock;
use crate::registry::Registry;
use crate::sandbox::{
    CallContext, CallPhases, CompileConfig, CompileIsolation, Limits, LoadSource, LoadedHandler,
    Sandbox, SandboxConfig,
};
use crate::task::{ArgsMap, DEFAULT_TENANT};
use crate::worker::{Worker, WorkerConfig};

/// The minimal handler component, in the component text format.
const MINIMAL_HANDLER_WAT: &str = include_str!("../../../../tests/fixtures/minimal_handler.wat");

/// The example jobs whose compile and load times are reported.
const EXAMPLE_JOBS: &[&str] = &[
    "normalize",
    "count_words",
    "top_k",
    "noop",
    "echo_log",
    "cpu_heavy",
];

/// Options of `corral bench sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxBenchArgs {
    /// Where the built jobs are (`jobs/build.sh` puts them there).
    #[arg(long, env = "CORRAL_JOBS_DIR", default_value = "jobs/dist")]
    jobs_dir: PathBuf,
    /// Calls timed for each per-task figure (after a tenth as many to warm up).
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// Tasks run through one worker for the resident-memory figures.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// `below` for `cpu_heavy.wasm` (it counts primes below it).
    #[arg(long, default_value_t = 200_000)]
    primes_below: u32,
    /// Runs of `cpu_heavy.wasm` per engine (the median is reported).
    #[arg(long, default_value_t = 21)]
    cpu_runs: usize,
    /// Only these parts, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Part>,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Per-task overhead of the minimal handler and noop.wasm, native baseline.
    Overhead,
    /// Where a call's time goes, step by step.
    Phases,
    /// First compile and cached loads of the example jobs.
    Compile,
    /// Fuel metering's cost on cpu_heavy.wasm.
    Fuel,
    /// Resident memory over many tasks through a worker.
    Memory,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.jobs_dir;
    let noop_bytes = read_job(dir, "noop")?;
    let limits = Limits::default();
    let iterations = args.iterations.max(100);

    say!(
        "corral bench sandbox: {} CPUs, pooling allocator, PAGEMAP_SCAN {}, {iterations} timed calls per figure",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            "available"
        } else {
            "unavailable"
        },
    );

    let started = Instant::now();
    let sandbox = Sandbox::new(super::sandbox_args::sandbox_config())?;
    say!("engine setup: {}", ms(started.elapsed()));

    let wanted = |part| args.only.is_empty() || args.only.contains(&part);

    // Per-task overhead.
    let minimal_bytes = wat::parse_str(MINIMAL_HANDLER_WAT)
        .context("parsing tests/fixtures/minimal_handler.wat")?;
    let minimal = sandbox
        .load(&minimal_bytes)
        .context("loading the minimal handler")?;
    let noop = sandbox.load(&noop_bytes).context("loading noop.wasm")?;
    let mut one_arg = ArgsMap::new();
    one_arg.insert("x".into(), 1.into());

    let mut handlers = vec![
        ("minimal WAT handler", minimal.clone()),
        ("noop.wasm", noop.clone()),
    ];
    // The Python and JavaScript no-ops (`corral build jobs/python/*/
    // jobs/js/*/ --out-dir jobs/dist`): an interpreter's fresh instance per
    // task. Compiling one takes seconds; a restarted bench loads it from
    // the disk cache when the command has one.
    for (name, file) in [("noop_py.wasm", "noop_py"), ("noop_js.wasm", "noop_js")] {
        let path = dir.join(format!("{file}.wasm"));
        if !path.exists() {
            say!(
                "{name}: missing, skipped (build it with `corral build jobs/python/*/ jobs/js/*/ --out-dir {}`)",
                dir.display()
            );
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let started = Instant::now();
        let (handler, source) = sandbox
            .load_async(DEFAULT_TENANT, bytes)
            .await
            .with_context(|| format!("loading {name}"))?;
        say!(
            "{name}: {} bytes, loaded ({source:?}) in {}",
            std::fs::metadata(&path).map_or(0, |m| m.len()),
            ms(started.elapsed())
        );
        handlers.push((name, handler));
    }
    if wanted(Part::Overhead) {
        for (name, handler) in &handlers {
            let times = time_calls(&sandbox, handler, &one_arg, &limits, iterations).await?;
            print_percentiles(&format!("per-task overhead, {name}"), &times);
        }
        let native = time_native(&sandbox, &one_arg, &limits, iterations)?;
        print_percentiles("same call path, native Rust function", &native);
        // Included in the per-task figures above; alone here because it is
        // far below their noise.
        let metering = sandbox.metering_cost(&limits, iterations.max(1) as u32 * 10);
        say!(
            "metering one call (clock, fuel and memory reads, added to the task), mean: {:.3} µs",
            metering.as_secs_f64() * 1e6
        );
    }
    if wanted(Part::Phases) {
        for (name, handler) in &handlers {
            let phases = time_phases(&sandbox, handler, &one_arg, &limits, iterations).await?;
            for (phase, median) in phases {
                say!("{name} phase {phase}, median: {}", us(median));
            }
        }
    }
    if wanted(Part::Compile) {
        compile_and_load(dir)?;
        compile_in_child(dir).await?;
    }
    if wanted(Part::Fuel) {
        fuel_slowdown(dir, args.primes_below, args.cpu_runs.max(1)).await?;
    }
    if wanted(Part::Memory) {
        resident_memory_sandbox(&sandbox, &noop, &one_arg, &limits, args.tasks.max(1)).await?;
        resident_memory(dir, args.tasks.max(1)).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read_job(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {}: build the jobs first with `jobs/build.sh`",
            path.display()
        )
    })
}

fn context(i: usize) -> CallContext {
    CallContext {
        task_id: format!("bench-{i}"),
        job: "bench".into(),
        tenant: DEFAULT_TENANT.into(),
        attempt: 1,
        handler_index: 0,
        handler_count: 1,
    }
}

/// Times `iterations` calls (after warming up), each from context creation
/// to decoded output.
async fn time_calls(
    sandbox: &Sandbox,
    handler: &LoadedHandler,
    args: &ArgsMap,
    limits: &Limits,
    iterations: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations / 10 + iterations {
        let started = Instant::now();
        let out = sandbox.call(handler, context(i), args, limits).await;
        let elapsed = started.elapsed();
        match out {
            Ok(out) if out.args == *args => {}
            Ok(out) => bail!("handler changed its args: {:?}", out.args),
            Err(e) => bail!("handler failed: {}", e.failure),
        }
        if i >= iterations / 10 {
            times.push(elapsed);
        }
    }
    Ok(times)
}

fn time_native(
    sandbox: &Sandbox,
    args: &ArgsMap,
    limits: &Limits,
    iterations: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations / 10 + iterations {
        let started = Instant::now();
        let out = sandbox.call_native_noop(context(i), args, limits);
        let elapsed = started.elapsed();
        match out {
            Ok(out) if out.args == *args => {}
            Ok(out) => bail!("native handler changed its args: {:?}", out.args),
            Err(e) => bail!("native handler failed: {}", e.failure),
        }
        if i >= iterations / 10 {
            times.push(elapsed);
        }
    }
    Ok(times)
}

/// The median of each step of the call path.
async fn time_phases(
    sandbox: &Sandbox,
    handler: &LoadedHandler,
    args: &ArgsMap,
    limits: &Limits,
    iterations: usize,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let mut all: Vec<CallPhases> = Vec::with_capacity(iterations);
    for i in 0..iterations / 10 + iterations {
        let (out, phases) = sandbox.call_phases(handler, context(i), args, limits).await;
        if let Err(e) = out {
            bail!("handler failed: {}", e.failure);
        }
        if i >= iterations / 10 {
            all.push(phases);
        }
    }
    let median = |pick: fn(&CallPhases) -> Duration| {
        let mut v: Vec<Duration> = all.iter().map(pick).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Ok(vec![
        ("store + args setup", median(|p| p.setup)),
        ("instantiate", median(|p| p.instantiate)),
        ("call", median(|p| p.call)),
        ("drop", median(|p| p.drop)),
        ("output decode", median(|p| p.finish)),
        (
            "all steps",
            median(|p| p.setup + p.instantiate + p.call + p.drop + p.finish),
        ),
    ])
}

/// Loads from a fresh engine over the disk cache, per job.
const DISK_LOADS: usize = 7;
/// Loads from the memory cache, per job.
const MEMORY_LOADS: usize = 1_000;

fn median_of(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn compile_and_load(dir: &Path) -> anyhow::Result<()> {
    let cache_dir = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    let result = (|| {
        let config = SandboxConfig {
            cache_dir: Some(cache_dir.clone()),
            ..SandboxConfig::default()
        };
        let first = Sandbox::new(config.clone())?;
        if first.disk_cache_dir().is_none() {
            bail!(
                "the disk cache in {} could not be opened",
                cache_dir.display()
            );
        }
        let mut jobs = Vec::new();
        for name in EXAMPLE_JOBS {
            let bytes = read_job(dir, name)?;
            let started = Instant::now();
            let (_, source) = first.load_traced(&bytes)?;
            let compiled = started.elapsed();
            if source != LoadSource::Compiled {
                bail!("{name}.wasm was not compiled afresh ({source:?})");
            }
            say!(
                "first compile, {name}.wasm ({} KiB): {}",
                bytes.len() >> 10,
                ms(compiled)
            );
            jobs.push((name, bytes));
        }
        // A restarted worker: a new engine over the same cache directory,
        // several times over (each load from disk needs a fresh engine).
        let mut disk_times = vec![Vec::new(); jobs.len()];
        let mut restarted = None;
        for _ in 0..DISK_LOADS {
            let sandbox = Sandbox::new(config.clone())?;
            for ((name, bytes), times) in jobs.iter().zip(&mut disk_times) {
                let started = Instant::now();
                let (_, source) = sandbox.load_traced(bytes)?;
                times.push(started.elapsed());
                if source != LoadSource::Disk {
                    bail!("{name}.wasm did not come from the disk cache ({source:?})");
                }
            }
            restarted = Some(sandbox);
        }
        let Some(restarted) = restarted else {
            bail!("no disk loads ran");
        };
        for ((name, _), times) in jobs.iter().zip(&disk_times) {
            say!(
                "load from disk cache, {name}.wasm, median of {DISK_LOADS}: {}",
                ms(median_of(times))
            );
        }
        for (name, bytes) in &jobs {
            let mut by_bytes = Vec::with_capacity(MEMORY_LOADS);
            let mut by_hash = Vec::with_capacity(MEMORY_LOADS);
            for _ in 0..MEMORY_LOADS {
                let started = Instant::now();
                let (handler, source) = restarted.load_traced(bytes)?;
                by_bytes.push(started.elapsed());
                if source != LoadSource::Memory {
                    bail!("{name}.wasm did not come from the memory cache ({source:?})");
                }
                let started = Instant::now();
                let found = restarted.cached(handler.hash()).is_some();
                by_hash.push(started.elapsed());
                if !found {
                    bail!("{name}.wasm is not in the memory cache by hash");
                }
            }
            say!(
                "load from memory cache (hash the bytes + look up), {name}.wasm, median: {}",
                us(median_of(&by_bytes))
            );
            say!(
                "look up in memory cache by hash, {name}.wasm, median: {}",
                us(median_of(&by_hash))
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&cache_dir);
    result
}

/// Runs `cpu_heavy.wasm` on an engine with fuel metering and on one
/// without, alternating between them so that whatever else the machine does
/// weighs on both alike, and reports each median and their ratio.
/// The first compile of each example job again, in a bounded child
/// process of this binary (as `corral worker` and `corral serve` compile
/// tenants' uploads): what the isolation costs over compiling in process.
async fn compile_in_child(dir: &Path) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(SandboxConfig {
        compile: CompileConfig {
            isolation: CompileIsolation::Child {
                program: std::env::current_exe().context("locating this binary")?,
            },
            ..CompileConfig::default()
        },
        ..SandboxConfig::default()
    })?;
    for name in EXAMPLE_JOBS {
        let bytes = read_job(dir, name)?;
        let started = Instant::now();
        let (_, source) = sandbox.load_async("bench", bytes).await?;
        if source != LoadSource::Compiled {
            bail!("{name}.wasm was not compiled afresh ({source:?})");
        }
        say!(
            "first compile in a bounded child, {name}.wasm: {}",
            ms(started.elapsed())
        );
    }
    Ok(())
}

async fn fuel_slowdown(dir: &Path, below: u32, runs: usize) -> anyhow::Result<()> {
    let bytes = read_job(dir, "cpu_heavy")?;
    let mut args = ArgsMap::new();
    args.insert("below".into(), below.into());
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout_ms: 600_000,
        ..Limits::default()
    };
    let mut engines = Vec::new();
    for fuel in [true, false] {
        let sandbox = Sandbox::new(SandboxConfig {
            consume_fuel: fuel,
            ..SandboxConfig::default()
        })?;
        let handler = sandbox.load(&bytes)?;
        engines.push((fuel, sandbox, handler, Vec::with_capacity(runs)));
    }
    let mut primes = None;
    // The first round warms caches and slots; not counted.
    for round in 0..runs + 1 {
        for (_, sandbox, handler, times) in engines.iter_mut() {
            let started = Instant::now();
            let out = sandbox
                .call(handler, context(round), &args, &limits)
                .await
                .map_err(|e| anyhow::anyhow!("cpu_heavy failed: {}", e.failure))?;
            let elapsed = started.elapsed();
            primes = out.args.get("primes").cloned();
            if round > 0 {
                times.push(elapsed);
            }
        }
    }
    let primes = primes.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let mut medians = Vec::new();
    for (fuel, _, _, times) in engines.iter_mut() {
        times.sort_unstable();
        let median = times[times.len() / 2];
        say!(
            "cpu_heavy.wasm (primes below {below}: {primes}), fuel {}, median: {}",
            if *fuel { "on" } else { "off" },
            ms(median)
        );
        medians.push(median);
    }
    say!(
        "fuel metering slowdown on cpu_heavy.wasm: {:.2}x",
        medians[0].as_secs_f64() / medians[1].as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Calls noop.wasm `calls` times in a row on the sandbox alone (no broker,
/// no worker) and reports resident memory before (after a warm-up) and after:
/// what the sandbox itself keeps per call, if anything.
async fn resident_memory_sandbox(
    sandbox: &Sandbox,
    noop: &LoadedHandler,
    args: &ArgsMap,
    limits: &Limits,
    calls: usize,
) -> anyhow::Result<()> {
    let run = |count: usize| async move {
        for i in 0..count {
            if let Err(e) = sandbox.call(noop, context(i), args, limits).await {
                bail!("noop failed: {}", e.failure);
            }
        }
        anyhow::Ok(())
    };
    run(2_000).await?;
    let before = rss_bytes();
    run(calls).await?;
    let after = rss_bytes();
    if let (Some(before), Some(after)) = (before, after) {
        say!(
            "sandbox alone, resident memory before {calls} noop calls: {}",
            mib(before)
        );
        say!(
            "sandbox alone, resident memory after {calls} noop calls: {}",
            mib(after)
        );
    }
    Ok(())
}

/// Runs `tasks` noop tasks through one worker on the embedded broker, in
/// batches, and reports resident memory before (after 2,000 warm-up tasks),
/// at each quarter, and after. The broker keeps only the last 100 finished tasks, so what it
/// stores does not grow with the count either.
async fn resident_memory(dir: &Path, tasks: usize) -> anyhow::Result<()> {
    const BATCH: usize = 500;
    const WARM_UP_BATCHES: usize = 4;
    let registry = Registry::new(Sandbox::new(SandboxConfig::default())?);
    registry
        .register_files(
            DEFAULT_TENANT,
            "noop",
            &[dir.join("noop.wasm")],
            Limits::default(),
        )
        .await?;
    let retention = Retention {
        max_completed: 100,
        max_dead: 100,
        ..Retention::default()
    };
    let broker = EmbeddedBroker::with_clock(Arc::new(SystemClock), retention);
    let client = Client::new(broker.clone());
    let worker = Worker::new(
        broker,
        registry,
        WorkerConfig {
            concurrency: 1,
            ..WorkerConfig::default()
        },
    );
    let stats = worker.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let run_batch = |count: usize| {
        let client = &client;
        let stats = stats.clone();
        async move {
            let target = stats.completed.load(Ordering::Relaxed) + count as u64;
            let batch = (0..count)
                .map(|i| {
                    client
                        .task("noop")
                        .arg("i", &i)
                        .map(|t| t.max_attempts(1).build())
                })
                .collect::<Result<Vec<_>, _>>()?;
            client.enqueue_many(batch).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while stats.completed.load(Ordering::Relaxed) < target {
                if stats.dead.load(Ordering::Relaxed) > 0 {
                    bail!("a noop task failed");
                }
                if Instant::now() > deadline {
                    bail!("tasks did not finish within 2 minutes");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        }
    };

    // Warm up: the pool slot, the broker's retained set, the allocator.
    for _ in 0..WARM_UP_BATCHES {
        run_batch(BATCH).await?;
    }
    let before = rss_bytes();
    let started = Instant::now();
    let mut done = 0;
    let mut checkpoints = Vec::new();
    let mut next_checkpoint = tasks / 4;
    while done < tasks {
        let count = BATCH.min(tasks - done);
        run_batch(count).await?;
        done += count;
        if done >= next_checkpoint && done < tasks {
            checkpoints.push((done, rss_bytes()));
            next_checkpoint += tasks / 4;
        }
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    let _ = stop_tx.send(());
    running.await??;

    say!(
        "worker on the embedded broker, {tasks} noop tasks, concurrency 1: {:.0} tasks/s",
        tasks as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    match (before, after) {
        (Some(before), Some(after)) => {
            say!("resident memory before {tasks} tasks: {}", mib(before));
            for (done, rss) in checkpoints {
                if let Some(rss) = rss {
                    say!("resident memory after {done} tasks: {}", mib(rss));
                }
            }
            say!("resident memory after {tasks} tasks: {}", mib(after));
            say!(
                "resident memory growth over {tasks} tasks: {:+.2} MiB",
                (after as f64 - before as f64) / f64::from(1 << 20)
            );
        }
        _ => say!("resident memory: unavailable (no /proc/self/status)"),
    }
    Ok(())
}

fn print_percentiles(name: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    say!("{name}, median: {}", us(at(0.5)));
    say!("{name}, p99: {}", us(at(0.99)));
}
