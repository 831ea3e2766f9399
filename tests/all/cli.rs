//! The command as scripts use it: exit codes that tell outcomes apart, a
//! quick and clear failure when Redis is not there, and a reader that
//! stops reading (`| head`) ending the command quietly.

use std::io::Read as _;
use std::process::{Command, Output, Stdio};

use crate::support::redis::{RedisServer, free_port};

fn corral(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("--no-disk-cache")
        .args(args)
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    corral(args).output().expect("run corral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Nothing listens at the URL: each one-shot command fails on its own
/// bound (not the connection's ten seconds of retries) naming the URL.
#[test]
fn an_unreachable_redis_is_named_and_given_up_on() {
    let _limit = crate::limit::minutes(5);
    let url = format!("redis://127.0.0.1:{}", free_port(false));
    let id = "01a22e00-289f-7332-b0c8-2e8bdbb01925";
    for args in [
        vec!["status", id, "--redis", &url],
        vec!["wait", id, "--redis", &url],
        vec!["enqueue", "noop", "--redis", &url],
        vec!["tenants", "create", "acme", "--redis", &url],
    ] {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("Redis at {url} did not answer within 2 s")),
            "{args:?}: {stderr}"
        );
    }
}

/// `wait` exits 0 for a completed task, 1 for a missing one (or a dead
/// one), 3 when its timeout passes first.
#[test]
fn wait_exit_codes_tell_timed_out_from_failed() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    // `enqueue` needs the job in the catalog.
    let noop = crate::support::job("noop");
    for args in [
        vec!["tenants", "create", "acme", "--redis", &url],
        vec![
            "jobs",
            "register",
            "noop",
            noop.to_str().expect("UTF-8"),
            "--redis",
            &url,
            "--tenant",
            "acme",
        ],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let out = run(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    // No worker: the task stays pending.
    let out = run(&[
        "wait",
        &id,
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("still pending"),
        "{}",
        text(&out.stderr)
    );
    let missing = "01a22e00-289f-7332-b0c8-2e8bdbb01925";
    let out = run(&["wait", missing, "--redis", &url, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// The reader of stdout goes away after one byte of a long output: the
/// command ends with 141 (128 + SIGPIPE), as other Unix tools do, and
/// never panics.
#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let _limit = crate::limit::minutes(5);
    // Five 100 KiB args come back in `final args`: far more than a pipe
    // holds, so the command is still writing when the reader leaves.
    let big = "x".repeat(100 << 10);
    let args: Vec<String> = (0..5).map(|i| format!("a{i}={big}")).collect();
    let mut cmd = corral(&["run"]);
    cmd.arg(crate::support::job("noop"));
    for a in &args {
        cmd.args(["--arg", a]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corral");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut one = [0u8; 1];
    stdout.read_exact(&mut one).expect("the first byte");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `corral bench e2e`, small: every row runs against a private Redis and
/// prints its figure (their values are the bench's business, not a test's),
/// and the bench leaves no queue behind.
#[test]
fn the_e2e_bench_runs_every_row_and_cleans_up() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let noop = crate::support::job("noop");
    let noop = noop.to_str().expect("a UTF-8 path");
    let out = run(&[
        "bench",
        "e2e",
        "--redis",
        &url,
        "--job",
        noop,
        "--tasks",
        "300",
        "--single",
        "30",
        "--producers",
        "3",
        "--rate",
        "50",
        "--latency-for",
        "200ms",
        "--load-for",
        "200ms",
        "--workers",
        "2",
        "--chord",
        "20",
        "--tenants",
        "2",
    ]);
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{printed}\n{}", text(&out.stderr));
    for figure in [
        "end-to-end: ",
        "worker CPU while draining: ",
        "Redis CPU while draining: ",
        "single enqueue: ",
        "single enqueue, 3 producers sharing one connection: ",
        "bulk enqueue: ",
        "Redis memory per queued task: ",
        "enqueue-to-start latency p99: ",
        "enqueue-to-start latency under load p99: ",
        "end-to-end with 2 worker processes: ",
        "workflow chord: ",
        "worker peak resident memory: ",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(figure)),
            "no `{figure}` line in\n{printed}"
        );
    }
    assert!(printed.contains("2 tenant(s)"), "{printed}");
    // Every bench queue was deleted: no task record is left.
    let left = crate::support::redis::redis_cli(server.port(), &["--scan", "--pattern", "*:task"]);
    assert!(left.trim().is_empty(), "left behind: {left}");
}

/// `corral bench cluster`, small: it starts a three-master Redis Cluster of
/// its own, runs the drain over several tenants on it, prints the masters'
/// CPU, and stops the servers afterwards.
#[test]
fn the_cluster_bench_starts_a_cluster_and_stops_it() {
    let _limit = crate::limit::minutes(5);
    let noop = crate::support::job("noop");
    let noop = noop.to_str().expect("a UTF-8 path");
    let out = run(&[
        "bench",
        "cluster",
        "--job",
        noop,
        "--tasks",
        "300",
        "--tenants",
        "6",
    ]);
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{printed}\n{}", text(&out.stderr));
    // "cluster: 3 masters on 127.0.0.1 ports A, B, C, 6 tenants"
    let ports: Vec<u16> = printed
        .lines()
        .find_map(|l| l.split_once(" ports ")?.1.strip_suffix(", 6 tenants"))
        .map(|list| list.split(", ").filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(ports.len(), 3, "{printed}");
    for figure in [
        "end-to-end: ",
        "end-to-end with 2 worker processes: ",
        "Redis CPU over the 3 masters: ",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(figure)),
            "no `{figure}` line in\n{printed}"
        );
    }
    assert!(!printed.contains("µs/task (unknown"), "{printed}");
    // The servers are gone.
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a server still listens on {port}"
        );
    }
}
