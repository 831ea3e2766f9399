//! What a worker shows an operator: Prometheus metrics, probes on its
//! metrics port, and what each tenant's tasks cost (`corral usage`), all
//! from a real `corral worker` process on a real Redis running real
//! components.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral::Client;
use corral::broker::{RedisBroker, RedisConfig};
use corral::task::{ArgsMap, Task, TaskState};

use crate::support;
use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};

/// The address a worker's log says its metrics port listens on; fails
/// after 60 s.
fn metrics_address(log: &Path) -> String {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("metrics listening on http://"))
        {
            return addr.trim().to_owned();
        }
        assert!(
            Instant::now() < give_up,
            "no metrics port in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of the sample `series` (name and labels exactly as exposed),
/// if the scrape has it.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn text_stats(text: &str) -> Task {
    let mut args = ArgsMap::new();
    args.insert("text".into(), text.into());
    Task::new("text-stats", args)
}

/// Enqueues `tasks` and waits for each to finish.
async fn run_all(client: &Client<RedisBroker>, tasks: Vec<Task>) -> Vec<Task> {
    let mut done = Vec::new();
    for task in tasks {
        client.enqueue(task.clone()).await.expect("enqueue");
        done.push(task);
    }
    let mut finished = Vec::new();
    for task in done {
        finished.push(support::wait(client, &task, 120).await);
    }
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraped_worker_counts_what_it_ran_and_probes_follow_redis() {
    let _limit = crate::limit::minutes(5);
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("metrics");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("worker.log");
    // Two label values each: the third job seen is counted as `other`.
    let _worker = WorkerProcess::start(
        &redis.url(),
        &prefix,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-max-labels",
            "2",
            "--concurrency",
            "4",
        ],
        log.clone(),
    );
    let addr = metrics_address(&log);
    let (status, body) = get(&addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    let broker = RedisBroker::connect(RedisConfig::new(redis.url()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let client = Client::new(broker.clone());
    let texts: Vec<Task> = (0..3)
        .map(|i| text_stats(&format!("a b b c {i}")))
        .collect();
    for t in run_all(&client, texts).await {
        assert_eq!(t.state, TaskState::Completed, "{:?}", t.error);
    }
    let mut failing = Task::new("always-fails", ArgsMap::new());
    failing.max_attempts = 1;
    let dead = run_all(&client, vec![failing]).await;
    assert_eq!(dead[0].state, TaskState::Dead);
    let kind = dead[0].error.as_ref().expect("an error").kind.clone();
    for t in run_all(&client, vec![Task::new("noop", ArgsMap::new())]).await {
        assert_eq!(t.state, TaskState::Completed, "{:?}", t.error);
    }

    let (status, scrape) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("no `{series}` in:\n{scrape}"))
    };
    assert_eq!(
        value(r#"corral_tasks_started_total{tenant="default",job="text-stats"}"#),
        3.0
    );
    assert_eq!(
        value(
            r#"corral_tasks_finished_total{tenant="default",job="text-stats",outcome="completed",kind=""}"#
        ),
        3.0
    );
    assert_eq!(
        value(&format!(
            r#"corral_tasks_finished_total{{tenant="default",job="always-fails",outcome="dead",kind="{kind}"}}"#
        )),
        1.0
    );
    // The third job is past the bound of two.
    assert_eq!(
        value(r#"corral_tasks_started_total{tenant="default",job="other"}"#),
        1.0
    );
    assert!(!scrape.contains(r#"job="noop""#), "{scrape}");
    // Three handlers per text-stats task, each call observed.
    assert_eq!(
        value(r#"corral_handler_duration_seconds_count{tenant="default",job="text-stats"}"#),
        9.0
    );
    assert_eq!(
        value(r#"corral_handler_fuel_count{tenant="default",job="text-stats"}"#),
        9.0
    );
    assert!(value(r#"corral_handler_fuel_sum{tenant="default",job="text-stats"}"#) > 0.0);
    assert!(
        value(r#"corral_handler_peak_memory_bytes_sum{tenant="default",job="text-stats"}"#) > 0.0
    );
    assert_eq!(value("corral_leases_lost_total"), 0.0);
    assert!(value("corral_acquire_batch_size_count") >= 1.0);
    assert_eq!(value("corral_instances_in_use"), 0.0);
    assert!(
        value("corral_compile_cache_misses_total") + value("corral_compile_cache_hits_total")
            >= 1.0
    );

    // Queue depth comes from the worker's sampler, not from the scrape.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, scrape) = get(&addr, "/metrics").await;
        let completed = sample(
            &scrape,
            r#"corral_queue_depth{tenant="default",queue="default",state="completed"}"#,
        );
        if completed == Some(4.0) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no depth sample of 4 completed tasks:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Redis goes away: the process is still up, but no longer ready.
    redis.stop();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&addr, "/readyz").await;
        if status == 503 {
            assert!(body.contains("unready"), "{body}");
            break;
        }
        assert!(Instant::now() < give_up, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&addr, "/healthz").await.0, 200);
}

/// `corral usage` adds up exactly what the tasks' own metering says they
/// cost, per tenant and day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_to_the_tasks_metering() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let prefix = unique_prefix("usage");
    let dir = tempfile::tempdir().expect("temp dir");
    let _worker = WorkerProcess::start(
        &redis.url(),
        &prefix,
        &["--concurrency", "4"],
        dir.path().join("worker.log"),
    );
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let client = Client::new(broker.clone());
    let mut tasks: Vec<Task> = (0..5).map(|i| text_stats(&format!("x y {i}"))).collect();
    // A fatal failure: dead on its first attempt.
    let mut failing = Task::new("always-fails", ArgsMap::new());
    failing.max_attempts = 2;
    tasks.push(failing);
    let done = run_all(&client, tasks).await;
    let (mut calls, mut fuel, mut wall) = (0, 0, 0);
    for t in &done {
        calls += t.metering.total.calls;
        fuel += t.metering.total.fuel;
        wall += t.metering.total.wall_us;
    }
    assert_eq!(calls, 5 * 3 + 1, "{done:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "usage",
            "--redis",
            &redis.url(),
            "--prefix",
            &prefix,
            "--json",
        ])
        .output()
        .expect("run corral usage");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    // The tasks ran today (UTC), unless the day turned meanwhile: then
    // the rows of both days add up.
    let sum = |field: &str| -> u64 {
        rows.iter()
            .filter(|r| r["tenant"] == "default")
            .map(|r| r[field].as_u64().expect("a count"))
            .sum()
    };
    assert_eq!(sum("calls"), calls, "{stdout}");
    assert_eq!(sum("fuel"), fuel, "{stdout}");
    assert_eq!(sum("wall_us"), wall, "{stdout}");
    assert_eq!(
        (sum("completed"), sum("retried"), sum("dead")),
        (5, 0, 1),
        "{stdout}"
    );

    // The table names the tenant and the same call count.
    let table = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "usage",
            "default",
            "--redis",
            &redis.url(),
            "--prefix",
            &prefix,
        ])
        .output()
        .expect("run corral usage");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CALLS"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("default")
                && l.split_whitespace().nth(2) == Some(&calls.to_string())),
        "{table}"
    );
}
