//! `corral bench cluster`: end to end on a Redis Cluster the bench starts.
//!
//! Starts `--masters` `redis-server` processes (three by default) with
//! cluster mode on, on free loopback ports in a temporary directory, joins
//! them with `redis-cli --cluster create` (no replicas), then runs
//! `corral bench e2e` against them with the drained tasks spread over
//! `--tenants` tenants (a tenant's keys live in one slot, so the masters
//! share the work only through several tenants), one and then
//! `--workers` worker processes. It prints the e2e figures and the CPU the
//! masters used together per task drained (enqueues included), read from
//! each node's `INFO cpu`. The servers are stopped and their directory
//! removed afterwards, whatever happened.
//!
//! This module only measures; nothing in how Corral runs depends on it.

use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::broker::{RedisBroker, RedisConfig};

#[derive(Debug, Args)]
pub(super) struct ClusterArgs {
    /// Masters of the cluster.
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Tenants the drained tasks are spread over.
    #[arg(long, default_value_t = 12)]
    tenants: usize,
    /// Tasks drained by one worker, then by `--workers`.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Worker processes of the scale-out row.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The component every task runs.
    #[arg(
        long = "job",
        value_name = "FILE",
        default_value = "jobs/dist/noop.wasm"
    )]
    job: std::path::PathBuf,
}

/// The cluster's servers and their directory: stopped (SIGKILL: they hold
/// nothing worth keeping) and removed when dropped.
struct Servers {
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `redis-cli ARGS` and returns its output; fails on a non-zero exit.
fn redis_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli (is Redis installed?)")?;
    if !out.status.success() {
        bail!(
            "redis-cli {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits, up to `within`, for `ready` to hold.
fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let give_up = Instant::now() + within;
    while !ready() {
        if Instant::now() > give_up {
            bail!("{what} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start(masters: usize) -> anyhow::Result<(Servers, Vec<u16>)> {
    let dir = std::env::temp_dir().join(format!(
        "corral-bench-cluster-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut servers = Servers {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let mut ports = Vec::new();
    for _ in 0..masters {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is Redis installed?)")?;
        servers.children.push(child);
        ports.push(port);
    }
    for port in &ports {
        let p = port.to_string();
        wait_for("a server did not answer", Duration::from_secs(10), || {
            redis_cli(&["-p", &p, "ping"]).is_ok_and(|o| o.trim() == "PONG")
        })?;
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    redis_cli(&create)?;
    for port in &ports {
        let p = port.to_string();
        wait_for(
            "the cluster did not settle",
            Duration::from_secs(30),
            || {
                redis_cli(&["-p", &p, "cluster", "info"])
                    .is_ok_and(|o| o.contains("cluster_state:ok"))
            },
        )?;
    }
    Ok((servers, ports))
}

/// CPU seconds the servers at `urls` have used, summed.
async fn cpu(urls: &[String]) -> Option<f64> {
    let mut sum = 0.0;
    for url in urls {
        let node = RedisBroker::connect(RedisConfig::new(url.clone()))
            .await
            .ok()?;
        sum += node.server_cpu_seconds().await.ok().flatten()?;
    }
    Some(sum)
}

pub(super) async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    if !args.job.exists() {
        bail!(
            "{} is missing: build the example jobs first (`jobs/build.sh`)",
            args.job.display()
        );
    }
    if args.masters < 3 {
        bail!("a Redis Cluster needs at least 3 masters");
    }
    let (servers, ports) = start(args.masters)?;
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    say!(
        "cluster: {} masters on 127.0.0.1 ports {}, {} tenants",
        args.masters,
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        args.tenants
    );
    let before = cpu(&urls).await;
    let exe = std::env::current_exe().context("finding the corral binary")?;
    let tasks = args.tasks.to_string();
    let tenants = args.tenants.to_string();
    let workers = args.workers.to_string();
    let status = Command::new(exe)
        .args(["bench", "e2e", "--redis", &urls.join(","), "--job"])
        .arg(&args.job)
        .args([
            "--tasks",
            &tasks,
            "--tenants",
            &tenants,
            "--workers",
            &workers,
        ])
        .args(super::bench_e2e::DRAIN_ONLY)
        .stdin(Stdio::null())
        .status()
        .context("running corral bench e2e")?;
    let after = cpu(&urls).await;
    drop(servers);
    if !status.success() {
        bail!("corral bench e2e failed on the cluster ({status})");
    }
    let drained = args.tasks * (1 + usize::from(args.workers > 0));
    match before.zip(after) {
        Some((a, b)) => say!(
            "Redis CPU over the {} masters: {:.1} µs/task ({drained} tasks enqueued and drained)",
            args.masters,
            (b - a) * 1e6 / drained as f64
        ),
        None => say!("Redis CPU over the masters: unknown"),
    }
    Ok(ExitCode::SUCCESS)
}
