//! Workflows run by the fleet: real `corral worker` processes on a real
//! Redis, real components (`sleep` members that hand their args on,
//! `tally` callbacks that sum them).
//!
//! - Six chords, each of 60 members (100 ms each) followed by a chain of two
//!   callbacks, submitted with `corral workflow submit` while a killer
//!   SIGKILLs one of three workers every 150 ms or so (twelve times at
//!   most) and starts a new one. Every workflow
//!   completes with the sum of its members, every step ran, and the
//!   tenant's queued count ends at exactly 0: a step stored twice would
//!   leave it above (the second copy's id is skipped as stale when taken,
//!   never counted out), so none was.
//! - A chain whose middle step fails for good fails its workflow with that
//!   step's error, and the step after it never runs; `corral workflow
//!   status` and `ls` show both.

use std::process::Command;
use std::time::{Duration, Instant};

use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::workflow::{StepState, WorkflowId, WorkflowState};

use crate::support::redis::{RedisServer, WorkerProcess, redis_cli, unique_prefix};

/// Chords the crash test runs, and members per chord.
const CHORDS: usize = 6;
const MEMBERS: i64 = 60;

fn corral(url: &str, prefix: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .args(["--redis", url, "--prefix", prefix])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run corral");
    if let Some(text) = stdin
        && let Some(mut input) = child.stdin.take()
    {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("corral output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `corral workflow submit -` of `json`; the new workflow's id.
fn submit(url: &str, prefix: &str, json: &serde_json::Value) -> WorkflowId {
    let (ok, out, err) = corral(
        url,
        prefix,
        &["workflow", "submit", "-"],
        Some(&json.to_string()),
    );
    assert!(ok, "{out}{err}");
    out.split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no workflow id in {out:?}"))
}

fn start_worker(url: &str, prefix: &str, logs: &std::path::Path, i: usize) -> WorkerProcess {
    let sleep = format!("sleep={}", crate::support::job("sleep").display());
    let mut w = WorkerProcess::start(
        url,
        prefix,
        &[
            "--job",
            &sleep,
            "--concurrency",
            "4",
            "--maintain-every",
            "5ms",
            "--lease",
            "2s",
        ],
        logs.join(format!("worker-{i}.log")),
    );
    w.wait_started();
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chords_complete_once_each_while_workers_are_sigkilled() {
    let _limit = crate::limit::minutes(6);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("flow");
    let broker = RedisBroker::connect(RedisConfig::new(url.clone()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let logs = tempfile::tempdir().expect("log dir");
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| start_worker(&url, &prefix, logs.path(), i))
        .collect();

    let chord = |c: usize| {
        let members: Vec<serde_json::Value> = (0..MEMBERS)
            .map(|n| serde_json::json!({"task": {"job": "sleep", "args": {"n": n, "ms": 100, "chord": c}}}))
            .collect();
        serde_json::json!({"flow": {"chord": {
            "group": members,
            "callback": {"chain": [
                {"task": {"job": "tally"}},
                {"task": {"job": "tally", "args": {"add": 1000}}}
            ]}
        }}})
    };
    let ids: Vec<WorkflowId> = (0..CHORDS)
        .map(|c| submit(&url, &prefix, &chord(c)))
        .collect();

    // SIGKILL a worker every 150 ms, start another, until every workflow
    // has ended (the bound only turns a hang into a failure).
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut kills = 0;
    let mut next = 3;
    let statuses = loop {
        if kills < 12 {
            let victim = kills % workers.len();
            workers[victim].kill();
            workers[victim] = start_worker(&url, &prefix, logs.path(), next);
            next += 1;
            kills += 1;
        }
        let statuses: Vec<_> =
            futures_util::future::join_all(ids.iter().map(|id| broker.workflow("default", *id)))
                .await
                .into_iter()
                .map(|s| s.expect("status").expect("stored"))
                .collect();
        if statuses.iter().all(|s| s.state != WorkflowState::Running) {
            break statuses;
        }
        assert!(
            Instant::now() < give_up,
            "workflows unfinished after {kills} kills: {:?}",
            statuses
                .iter()
                .map(|s| (s.state, s.count(StepState::Completed)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert!(kills >= 3, "only {kills} kills happened before the end");
    for w in &mut workers {
        w.stop();
    }

    let sum: i64 = (0..MEMBERS).sum();
    for status in &statuses {
        assert_eq!(status.state, WorkflowState::Completed, "{:?}", status.error);
        assert_eq!(status.count(StepState::Completed), MEMBERS as usize + 2);
        let result = status.result.as_ref().expect("result");
        assert_eq!(result["n"], sum + 1000);
        assert_eq!(result["count"], MEMBERS);
    }
    // Nothing left queued, nothing stored twice.
    let stats = broker.tenant_stats("default").await.expect("stats");
    assert_eq!(
        stats.pending + stats.active + stats.scheduled,
        0,
        "{stats:?}"
    );
    assert_eq!(stats.dead, 0, "{stats:?}");
    let queued = redis_cli(
        server.port(),
        &["GET", &format!("{prefix}:{{q:default}}:queued")],
    );
    assert!(
        matches!(queued.trim(), "" | "0"),
        "the queued count is {queued:?}: a step was stored twice"
    );
    let ready = redis_cli(
        server.port(),
        &["ZCARD", &format!("{prefix}:{{q:default}}:flow-ready")],
    );
    assert_eq!(ready.trim(), "0", "ready steps left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_fails_its_chain_and_the_cli_says_so() {
    let _limit = crate::limit::minutes(3);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("flowfail");
    let logs = tempfile::tempdir().expect("log dir");
    let mut worker = start_worker(&url, &prefix, logs.path(), 0);
    let good = submit(
        &url,
        &prefix,
        &serde_json::json!({"flow": {"chain": [
            {"task": {"job": "tally", "args": {"n": 1}}},
            {"group": [{"task": {"job": "tally"}}, {"task": {"job": "tally", "args": {"add": 10}}}]},
            {"task": {"job": "tally"}}
        ]}}),
    );
    let bad = submit(
        &url,
        &prefix,
        &serde_json::json!({"flow": {"chain": [
            {"task": {"job": "tally", "args": {"n": 1}}},
            {"task": {"job": "tally", "args": {"fail": true}}},
            {"task": {"job": "tally"}}
        ]}}),
    );
    let (ok, out, err) = corral(
        &url,
        &prefix,
        &["workflow", "status", &good.to_string(), "--wait", "60s"],
        None,
    );
    assert!(ok, "{out}{err}");
    // n: 1 + 1 = 2; the group: 3 and 12; their sum 15.
    assert!(out.contains("state     completed"), "{out}");
    assert!(out.contains(r#"result    {"count":2,"n":15}"#), "{out}");
    let (ok, out, err) = corral(
        &url,
        &prefix,
        &["workflow", "status", &bad.to_string(), "--wait", "60s"],
        None,
    );
    assert!(!ok, "a failed workflow exits non-zero: {out}{err}");
    assert!(out.contains("state     failed"), "{out}");
    assert!(
        out.contains("guest_error") || out.contains("asked to fail"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("2 ")).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].trim_end().ends_with("waiting"),
        "the step after never ran: {out}"
    );
    let (ok, out, err) = corral(
        &url,
        &prefix,
        &["workflow", "ls", "--tenant", "default"],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&good.to_string()) && out.contains("completed"),
        "{out}"
    );
    assert!(
        out.contains(&bad.to_string()) && out.contains("failed"),
        "{out}"
    );
    // Not a workflow of this tenant: exit 2.
    let (ok, _, err) = corral(
        &url,
        &prefix,
        &["workflow", "status", &WorkflowId::new().to_string()],
        None,
    );
    assert!(!ok && err.contains("no workflow"), "{err}");
    worker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_member_chord_ends_in_one_callback_with_every_result() {
    use corral::workflow::{Flow, OnFailure, Plan, Workflow};
    let _limit = crate::limit::minutes(4);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("chord");
    let broker = RedisBroker::connect(RedisConfig::new(url.clone()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let logs = tempfile::tempdir().expect("log dir");
    let mut worker = start_worker(&url, &prefix, logs.path(), 0);
    let workflow = Workflow {
        id: WorkflowId::new(),
        tenant: "default".into(),
        flow: Flow::chord(
            (0..10_000).map(|n| Flow::task("noop").arg("n", n)),
            Flow::task("noop"),
        ),
        on_failure: OnFailure::FailFast,
    };
    let plan = Plan::compile(&workflow, chrono::Utc::now()).expect("compiles");
    let callback = plan.steps[10_000].id;
    broker
        .submit_workflow(&plan, &corral::broker::TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    let client = corral::Client::new(broker.clone());
    let status = client
        .wait_workflow("default", workflow.id, Duration::from_secs(120))
        .await
        .expect("status")
        .expect("stored");
    worker.stop();
    assert_eq!(status.state, WorkflowState::Completed, "{:?}", status.error);
    let results = status.result.expect("result")["results"]
        .as_array()
        .expect("the callback's results")
        .clone();
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().enumerate().all(|(i, r)| r["n"] == i as i64));
    let task = broker
        .task("default", callback)
        .await
        .expect("read")
        .expect("the callback's task");
    assert_eq!(task.attempt, 1, "the callback ran once");
    let stats = broker.stats("default", "default").await.expect("stats");
    assert_eq!(stats.completed, 10_001, "{stats:?}");
}
