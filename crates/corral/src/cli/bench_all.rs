//! `corral bench all`: every figure in one place.
//!
//! Runs the other benches as child processes of this same binary, one
//! after another so they never share the CPU, and prints each figure line
//! they print, prefixed with the run it comes from:
//!
//! - `sandbox`: `corral bench sandbox` (per-task overhead and its phases,
//!   compile and load times, metering, memory);
//! - `e2e`: `corral bench e2e` with its defaults (100,000 tasks: the drain,
//!   the enqueue rates, latency idle and under load, two workers, the
//!   chord);
//! - `backlog 20000` and `backlog 1000000`: `corral bench e2e --backlog N`
//!   with every other row off, then one line comparing the two drain
//!   rates (the cost of depth) and Redis's memory per queued task;
//! - `cluster`: `corral bench cluster` (a three-master Redis Cluster the
//!   bench starts, tasks over twelve tenants, one and two workers), when
//!   `redis-server` is on the PATH.
//!
//! This module only runs and relays; the figures are the other benches'.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;

use super::broker_cmds::RedisArgs;

#[derive(Debug, Args)]
pub(super) struct AllArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Where the built jobs are (`jobs/build.sh` puts them there).
    #[arg(long, env = "CORRAL_JOBS_DIR", default_value = "jobs/dist")]
    jobs_dir: std::path::PathBuf,
    /// The deep backlog of the flat-cost pair.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,
    /// The shallow backlog it is compared with.
    #[arg(long, default_value_t = 20_000)]
    shallow: usize,
}

/// Runs `corral ARGS`, relaying each line of its standard output as
/// `label: line`; returns the lines. (Blocking: nothing else runs in this
/// command meanwhile.)
fn relay(label: &str, args: &[String]) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding the corral binary")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting corral {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut out = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        say!("{label}: {line}");
        out.push(line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("corral {} failed ({status})", args.join(" "));
    }
    Ok(out)
}

/// The number a figure line starts with after `prefix`.
fn figure(lines: &[String], prefix: &str) -> Option<f64> {
    lines.iter().find_map(|l| {
        l.strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

pub(super) fn run(args: AllArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.redis.redis.clone() else {
        bail!(
            "corral bench all needs a Redis of its own: --redis URL (its data is left alone, but its CPU figures are only meaningful when nothing else uses it)"
        );
    };
    let jobs = args.jobs_dir.display().to_string();
    let mut redis = vec![
        "--redis".to_owned(),
        url,
        "--prefix".to_owned(),
        args.redis.prefix.clone(),
    ];
    if args.redis.cluster {
        redis.push("--cluster".to_owned());
    }
    let with = |base: &[&str], extra: &[String]| -> Vec<String> {
        base.iter()
            .map(|s| (*s).to_owned())
            .chain(extra.iter().cloned())
            .collect()
    };
    say!(
        "corral bench all: {} CPUs, {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find_map(|l| l
                .strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())))
            .unwrap_or_else(|| "unknown CPU".to_owned())
    );
    relay(
        "sandbox",
        &with(&["bench", "sandbox", "--jobs-dir", &jobs], &[]),
    )?;
    let noop = format!("{jobs}/noop.wasm");
    relay("e2e", &with(&["bench", "e2e", "--job", &noop], &redis))?;
    let mut drains = Vec::new();
    for n in [args.shallow, args.backlog] {
        let n_text = n.to_string();
        let mut run = vec!["bench", "e2e", "--job", &noop, "--backlog", &n_text];
        run.extend(super::bench_e2e::DRAIN_ONLY);
        run.extend(["--workers", "0"]);
        let lines = relay(&format!("backlog {n}"), &with(&run, &redis))?;
        drains.push((
            n,
            figure(&lines, "end-to-end: "),
            figure(&lines, "bulk enqueue: "),
        ));
    }
    if let [(shallow, Some(a), Some(ea)), (deep, Some(b), Some(eb))] = drains[..] {
        say!(
            "flat cost: draining {deep} queued tasks ran at {:.0}% of the rate at {shallow} ({b:.0} vs {a:.0} tasks/s); bulk enqueue at {:.0}% ({eb:.0} vs {ea:.0} tasks/s)",
            b / a * 100.0,
            eb / ea * 100.0
        );
    }
    let cluster = with(&["bench", "cluster", "--job", &noop], &[]);
    if let Err(e) = relay("cluster", &cluster) {
        say!("cluster: not measured: {e:#}");
    }
    Ok(ExitCode::SUCCESS)
}
