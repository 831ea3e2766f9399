//! The Redis broker beyond the conformance suite: entries pushed by hand,
//! a restarted server, dropped connections, bounds and the key layout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use corral::Client;
use corral::broker::{Broker, BrokerError, QueueStats, RedisBroker, RedisConfig, TenantQuota};
use corral::sandbox::Limits;
use corral::task::{ArgsMap, Task, TaskId, TaskState};

use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};
use crate::support::{self, RunningWorker};

const PIPELINE: &[&str] = &["normalize", "count_words", "top_k"];

fn text_task(i: usize) -> Task {
    let mut args = ArgsMap::new();
    args.insert(
        "text".into(),
        format!("Restart test {i}: one two two three three three").into(),
    );
    let mut task = Task::new("text-stats", args);
    task.max_attempts = 10;
    task
}

async fn connect(server: &RedisServer, prefix: &str) -> RedisBroker {
    RedisBroker::connect(RedisConfig::new(server.url()).prefix(prefix.to_owned()))
        .await
        .expect("connect")
}

/// Polls until nothing is pending, scheduled or active.
async fn drained(broker: &RedisBroker, limit: Duration) -> QueueStats {
    let give_up = Instant::now() + limit;
    loop {
        match broker.stats("default", "default").await {
            Ok(s) if s.pending + s.scheduled + s.active == 0 => return s,
            Ok(s) => assert!(Instant::now() < give_up, "not drained: {s:?}"),
            Err(e) => assert!(Instant::now() < give_up, "stats keep failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_pushed_by_hand_run_or_go_dead_with_the_reason() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("raw");
    let broker = connect(&server, &prefix).await;
    let pending = broker.queue_keys("default", "default").pending;

    // The seed's format: Corral's own fields left out.
    let good_id = TaskId::new();
    let seed = format!(
        r#"{{"task_id":"{good_id}","created_at":"2024-07-01T12:00:00Z","updated_at":"2024-07-01T12:00:00Z","queue_name":"default","job_name":"text-stats","args_map":{{"text":"Hello hello world"}},"current_handler_index":0,"original_args_map":{{"text":"Hello hello world"}},"result_log":""}}"#
    );
    let unknown_id = TaskId::new();
    let unknown = seed
        .replace(&good_id.to_string(), &unknown_id.to_string())
        .replace("text-stats", "no-such-job");
    let missing = seed
        .replace(&good_id.to_string(), &TaskId::new().to_string())
        .replace(r#""queue_name":"default","#, "");
    for entry in ["this is not json", &missing, &seed, &unknown] {
        let out = server.cli(&["LPUSH", &pending, entry]);
        assert!(out.trim().parse::<u64>().is_ok(), "LPUSH answered {out}");
    }

    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));
    let client = Client::new(broker.clone());
    // A pushed entry becomes a task when a worker takes it.
    let exists = |id: TaskId| {
        let broker = broker.clone();
        async move {
            let give_up = Instant::now() + Duration::from_secs(30);
            while broker.task("default", id).await.expect("task").is_none() {
                assert!(Instant::now() < give_up, "no worker took entry {id}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    exists(good_id).await;
    exists(unknown_id).await;
    let good = client
        .wait("default", good_id, Duration::from_secs(30))
        .await
        .expect("the hand-pushed task ran");
    assert_eq!(good.state, TaskState::Completed, "{:?}", good.error);
    assert_eq!(good.result_log.lines().count(), 3);
    let unknown = client
        .wait("default", unknown_id, Duration::from_secs(30))
        .await
        .expect("the unknown job ended");
    assert_eq!(unknown.state, TaskState::Dead);
    assert_eq!(
        unknown.error.as_ref().map(|e| e.kind.as_str()),
        Some("unknown_job")
    );

    // The worker carries on with ordinary tasks.
    let after = text_task(1);
    client.enqueue(after.clone()).await.expect("enqueue");
    let after = support::wait(&client, &after, 30).await;
    assert_eq!(after.state, TaskState::Completed);
    worker.stop().await;

    let dead = broker.dead("default", "default", 10).await.expect("dead");
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|t| t.error.as_ref())
        .map(|e| format!("{}: {}", e.kind, e.message))
        .collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("malformed") && r.contains("expected")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("malformed") && r.contains("missing field `queue_name`")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("unknown_job")),
        "{reasons:?}"
    );
    let raw = dead
        .iter()
        .find(|t| {
            t.original_args_map
                .get("raw")
                .is_some_and(|v| v == "this is not json")
        })
        .expect("the garbage entry is kept for inspection");
    assert_eq!(raw.job_name, "(malformed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ride_out_a_redis_restart_and_lose_nothing() {
    let _limit = crate::limit::minutes(5);
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let prefix = unique_prefix("restart");
    let broker = connect(&server, &prefix).await;
    let tasks: Vec<Task> = (0..3000).map(text_task).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    broker.enqueue(tasks).await.expect("enqueue");

    let logs = tempfile::tempdir().expect("log dir");
    let url = server.url();
    let mut workers: Vec<WorkerProcess> = (0..2)
        .map(|i| {
            WorkerProcess::start(
                &url,
                &prefix,
                &["--concurrency", "4", "--lease", "3s"],
                logs.path().join(format!("worker-{i}.log")),
            )
        })
        .collect();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let s = default_stats(&broker).await;
        if s.completed >= 300 {
            break;
        }
        assert!(Instant::now() < give_up, "workers made no progress: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = default_stats(&broker).await;
    assert!(
        before.pending > 0,
        "the run finished before the restart: {before:?}"
    );

    server.restart();

    let stats = drained(&broker, Duration::from_secs(120)).await;
    assert_eq!((stats.completed, stats.dead), (ids.len(), 0), "{stats:?}");
    for id in &ids {
        let task = broker
            .task("default", *id)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("task {id} was lost"));
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(task.result_log.lines().count(), 3, "{:?}", task.result_log);
    }
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(
            w.running(),
            "worker {i} died across the restart: see {}",
            w.log.display()
        );
        assert!(w.stop(), "worker {i} did not shut down cleanly");
    }
}

/// Counts of the default tenant's default queue.
async fn default_stats(broker: &RedisBroker) -> QueueStats {
    broker.stats("default", "default").await.expect("stats")
}

#[tokio::test]
async fn the_broker_reconnects_after_its_connection_is_killed() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let broker = connect(&server, &unique_prefix("drop")).await;
    broker.enqueue(vec![text_task(0)]).await.expect("enqueue");
    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(
        killed.trim().parse::<u64>().unwrap_or(0) >= 1,
        "CLIENT KILL said {killed}"
    );
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    loop {
        match broker.enqueue(vec![text_task(1)]).await {
            Ok(()) => break,
            Err(BrokerError::Unavailable { op, .. }) => {
                assert_eq!(op, "enqueue");
                failures += 1;
                assert!(Instant::now() < give_up, "never reconnected");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert!(failures <= 100);
    assert_eq!(default_stats(&broker).await.pending, 2);
}

#[tokio::test]
async fn a_full_queue_refuses_more() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("full"))
        .max_queued(5);
    let broker = RedisBroker::connect(config).await.expect("connect");
    broker
        .enqueue((0..4).map(text_task).collect())
        .await
        .expect("under the bound");
    match broker.enqueue((4..6).map(text_task).collect()).await {
        Err(BrokerError::Full { reason, .. }) => assert!(reason.contains("bound of 5"), "{reason}"),
        other => panic!("expected Full, got {other:?}"),
    }
    broker
        .enqueue(vec![text_task(9)])
        .await
        .expect("exactly at the bound");
    assert_eq!(default_stats(&broker).await.pending, 5);
}

#[tokio::test]
async fn every_key_of_a_tenant_carries_its_hash_tag() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("keys");
    let broker = connect(&server, &prefix).await;
    let mut a = text_task(0);
    a.tenant = "acme:corp".into();
    a.queue_name = "mail{1}".into();
    let b = text_task(1);
    broker
        .enqueue(vec![a.clone(), b.clone()])
        .await
        .expect("enqueue");
    for (tenant, queue) in [("acme:corp", "mail{1}"), ("default", "default")] {
        let req = corral::broker::AcquireRequest {
            queues: vec![queue.into()],
            worker: "w".into(),
            max: 1,
            lease_for: Duration::from_secs(30),
            block_for: Duration::ZERO,
            tenant_room: Default::default(),
            tenant_caps: Default::default(),
            tenant_rates: Default::default(),
        };
        let got = broker.acquire(&req).await.expect("acquire");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lease.tenant, tenant);
        let cp = corral::broker::Checkpoint::of(&got[0].task);
        let results = broker
            .ack(&[(got[0].lease.clone(), corral::broker::Outcome::Completed(cp))])
            .await
            .expect("ack");
        assert!(results[0].is_ok());
    }
    let keys = server.cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
    let mut tags = BTreeSet::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        if key == format!("{prefix}:tenants") || key.starts_with(&format!("{prefix}:{{wake}}")) {
            continue;
        }
        let open = key
            .find('{')
            .unwrap_or_else(|| panic!("{key} has no hash tag"));
        let close = open
            + key[open..]
                .find('}')
                .unwrap_or_else(|| panic!("{key} has no hash tag"));
        tags.insert(key[open + 1..close].to_owned());
    }
    let expected: BTreeSet<String> = ["q:acme%3Acorp", "q:default"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(tags, expected);
    let expected_keys = broker.queue_keys("acme:corp", "mail{1}");
    // A task's metadata lives in its record's one field: no `meta` hash.
    assert!(
        !keys.lines().any(|k| k == expected_keys.meta),
        "{} is written: {keys}",
        expected_keys.meta
    );
    for key in [
        &expected_keys.task,
        &expected_keys.completed,
        &expected_keys.tenant.queues,
        &expected_keys.tenant.queued,
    ] {
        assert!(keys.lines().any(|k| k == key), "{key} missing from {keys}");
    }
    let members = server.cli(&["SMEMBERS", &expected_keys.tenant.queues]);
    assert_eq!(members.trim(), "mail{1}");
    let tenants = server.cli(&["SMEMBERS", &format!("{prefix}:tenants")]);
    let tenants: BTreeSet<&str> = tenants.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tenants, BTreeSet::from(["acme:corp", "default"]));
}

#[tokio::test]
async fn purging_a_queue_gives_back_its_quota() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let broker = connect(&server, &unique_prefix("purge")).await;
    let quota = TenantQuota {
        max_queued: 12,
        max_queues: 2,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    let in_queue = |queue: &str, delayed: bool| {
        let mut t = text_task(0);
        t.tenant = "acme".into();
        t.queue_name = queue.into();
        if delayed {
            t.run_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
        }
        t
    };
    let mut doomed: Vec<Task> = (0..6).map(|_| in_queue("doomed", false)).collect();
    doomed.extend((0..2).map(|_| in_queue("doomed", true)));
    broker
        .enqueue_within(doomed, &quota)
        .await
        .expect("enqueue");
    broker
        .enqueue_within((0..3).map(|_| in_queue("kept", false)).collect(), &quota)
        .await
        .expect("enqueue");
    // One leased (active, not queued), one completed: both go too.
    let req = corral::broker::AcquireRequest {
        queues: vec!["doomed".into()],
        worker: "w".into(),
        max: 2,
        lease_for: Duration::from_secs(30),
        block_for: Duration::ZERO,
        tenant_room: Default::default(),
        tenant_caps: Default::default(),
        tenant_rates: Default::default(),
    };
    let got = broker.acquire(&req).await.expect("acquire");
    assert_eq!(got.len(), 2);
    let cp = corral::broker::Checkpoint::of(&got[0].task);
    broker
        .ack(&[(got[0].lease.clone(), corral::broker::Outcome::Completed(cp))])
        .await
        .expect("ack");
    assert!(matches!(
        broker
            .enqueue_within(vec![in_queue("third", false)], &quota)
            .await,
        Err(BrokerError::TooManyQueues { .. })
    ));
    broker.purge_queue("acme", "doomed").await.expect("purge");
    assert_eq!(
        broker.stats("acme", "doomed").await.expect("stats"),
        QueueStats::default()
    );
    // 3 queued in `kept` remain: room for exactly 9 more, and the purged
    // queue's name is free for another.
    let more: Vec<Task> = (0..9).map(|_| in_queue("third", false)).collect();
    broker
        .enqueue_within(more, &quota)
        .await
        .expect("the room came back");
    assert!(matches!(
        broker
            .enqueue_within(vec![in_queue("kept", false)], &quota)
            .await,
        Err(BrokerError::Full { .. })
    ));
}

/// Commands the server has run so far (`INFO stats`).
fn commands_run(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_commands_processed")
}

/// Gives each of tenant `idle`'s `names` one task and completes it.
async fn idle_queues(broker: &RedisBroker, names: &[String]) {
    let req = |q: &str| corral::broker::AcquireRequest {
        queues: vec![q.to_owned()],
        worker: "w".into(),
        max: 1,
        lease_for: Duration::from_secs(30),
        block_for: Duration::ZERO,
        tenant_room: Default::default(),
        tenant_caps: Default::default(),
        tenant_rates: Default::default(),
    };
    for chunk in names.chunks(250) {
        let tasks = chunk.iter().map(|q| {
            let mut t = text_task(0);
            t.tenant = "idle".into();
            t.queue_name = q.clone();
            broker.enqueue(vec![t])
        });
        for r in futures_util::future::join_all(tasks).await {
            r.expect("enqueue");
        }
        let takes = chunk
            .iter()
            .map(|q| async move { broker.acquire(&req(q)).await });
        let mut outcomes = Vec::new();
        for got in futures_util::future::join_all(takes).await {
            for l in got.expect("acquire") {
                let cp = corral::broker::Checkpoint::of(&l.task);
                outcomes.push((l.lease, corral::broker::Outcome::Completed(cp)));
            }
        }
        assert_eq!(outcomes.len(), chunk.len());
        let acked = broker.ack(&outcomes).await.expect("ack");
        assert!(acked.iter().all(Result::is_ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_queues_add_no_command_to_maintenance_or_acquire() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("idle");
    // What one maintenance pass and one acquire (of a worker serving
    // `default` and `shared`, a name the idle tenant has too) cost the
    // server, from a fresh broker (cold caches, as after every refresh).
    let cost = || async {
        let broker = connect(&server, &prefix).await;
        let before = commands_run(&server);
        let m = broker.maintain().await.expect("maintain");
        let req = corral::broker::AcquireRequest {
            queues: vec!["default".into(), "shared".into()],
            worker: "w".into(),
            max: 4,
            lease_for: Duration::from_secs(30),
            block_for: Duration::ZERO,
            tenant_room: Default::default(),
            tenant_caps: Default::default(),
            tenant_rates: Default::default(),
        };
        assert!(broker.acquire(&req).await.expect("acquire").is_empty());
        (commands_run(&server) - before, m.queues_visited)
    };
    let broker = connect(&server, &prefix).await;
    idle_queues(&broker, &["shared".to_owned()]).await;
    let few = cost().await;
    let names: Vec<String> = (0..5000)
        .map(|i| format!("idle-{i}-{:x}", rand::random::<u32>()))
        .collect();
    idle_queues(&broker, &names).await;
    let many = cost().await;
    assert_eq!(few.1, 0);
    assert_eq!(
        few, many,
        "(commands, queues visited) with 1 idle queue, then with 5001"
    );
}

/// Server-side cost of each script per task (from Redis's own command
/// statistics). A profiling aid, not a check: run with
/// `cargo test --release --test all script_costs -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn script_costs() {
    let _limit = crate::limit::minutes(20);
    let server = RedisServer::start();
    let broker = connect(&server, &unique_prefix("cost")).await;
    let evalsha_usec = |server: &RedisServer| -> u64 {
        let stats = server.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("usec=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let n = 20_000;
    let mut last = evalsha_usec(&server);
    let mut step = |name: &str, server: &RedisServer| {
        let now = evalsha_usec(server);
        eprintln!("{name}: {:.2} µs per task", (now - last) as f64 / n as f64);
        last = now;
    };
    broker
        .enqueue((0..n).map(text_task).collect())
        .await
        .expect("enqueue");
    step("enqueue", &server);
    let mut leased = Vec::new();
    while leased.len() < n {
        let req = corral::broker::AcquireRequest {
            queues: vec!["default".into()],
            worker: "w".into(),
            max: 64,
            lease_for: Duration::from_secs(60),
            block_for: Duration::ZERO,
            tenant_room: Default::default(),
            tenant_caps: Default::default(),
            tenant_rates: Default::default(),
        };
        leased.extend(broker.acquire(&req).await.expect("acquire"));
    }
    step("acquire (64 per call)", &server);
    for chunk in leased.chunks(64) {
        let outcomes: Vec<_> = chunk
            .iter()
            .map(|l| {
                let cp = corral::broker::Checkpoint::of(&l.task);
                (l.lease.clone(), corral::broker::Outcome::Completed(cp))
            })
            .collect();
        broker.ack(&outcomes).await.expect("ack");
    }
    step("ack completed (64 per call)", &server);
}

/// Wall time of one bulk enqueue of 100,000 tasks, client and server side.
/// A profiling aid, not a check: run with
/// `cargo test --release --test all bulk_enqueue_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bulk_enqueue_time() {
    let _limit = crate::limit::minutes(20);
    let server = RedisServer::start();
    let broker = connect(&server, &unique_prefix("bulk")).await;
    // CPU seconds of this process (utime + stime, in 1/100 s) and of Redis.
    let own_cpu = || -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
    };
    for round in 0..3 {
        let tasks: Vec<Task> = (0..100_000)
            .map(|_| Task::new("noop", ArgsMap::new()))
            .collect();
        let (cpu, redis) = (
            own_cpu(),
            broker.server_cpu_seconds().await.unwrap().unwrap(),
        );
        let started = Instant::now();
        broker.enqueue(tasks).await.expect("enqueue");
        let took = started.elapsed();
        let cpu = own_cpu() - cpu;
        let redis = broker.server_cpu_seconds().await.unwrap().unwrap() - redis;
        eprintln!(
            "round {round}: 100000 tasks in {took:?}: {:.0} tasks/s; client CPU {:.1} µs/task, Redis CPU {:.1} µs/task",
            100_000.0 / took.as_secs_f64(),
            cpu * 10.0,
            redis * 10.0
        );
    }
}

/// A record's metadata as versions before one-field records packed it (a
/// field of the queue's `meta` hash, the task JSON alone in `task`).
fn legacy_meta(state: u8, attempt: u32, token: u64, updated_us: i64, worker: &str) -> Vec<u8> {
    let mut out = vec![state];
    out.extend_from_slice(&attempt.to_be_bytes());
    out.extend_from_slice(&10u32.to_be_bytes());
    out.extend_from_slice(&(token as f64).to_be_bytes());
    out.extend_from_slice(&(updated_us as f64).to_be_bytes());
    out.extend_from_slice(&0f64.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(updated_us as f64).to_be_bytes());
    out.extend_from_slice(worker.as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_earlier_version_wrote_are_read_and_run() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("legacy");
    let broker = connect(&server, &prefix).await;
    let keys = broker.queue_keys("default", "default");
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_connection().expect("connect");
    let now_us = chrono::Utc::now().timestamp_micros();

    // One waiting, one completed and one dead task, as an earlier version
    // left them.
    let pending = text_task(1);
    let mut completed = text_task(2);
    completed.state = TaskState::Completed;
    let mut dead = text_task(3);
    dead.state = TaskState::Dead;
    let error = r#"{"kind":"guest_error","message":"an earlier failure","retryable":false}"#;
    let _: () = redis::pipe()
        .hset(&keys.task, pending.task_id.to_string(), pending.to_json())
        .hset(
            &keys.meta,
            pending.task_id.to_string(),
            legacy_meta(b'p', 0, 0, now_us, ""),
        )
        .lpush(&keys.pending, pending.task_id.to_string())
        .hset(
            &keys.task,
            completed.task_id.to_string(),
            completed.to_json(),
        )
        .hset(
            &keys.meta,
            completed.task_id.to_string(),
            legacy_meta(b'c', 1, 1, now_us, "old-worker"),
        )
        .zadd(&keys.completed, completed.task_id.to_string(), now_us)
        .hset(&keys.task, dead.task_id.to_string(), dead.to_json())
        .hset(
            &keys.meta,
            dead.task_id.to_string(),
            legacy_meta(b'd', 10, 10, now_us, "old-worker"),
        )
        .hset(&keys.error, dead.task_id.to_string(), error)
        .zadd(&keys.dead, dead.task_id.to_string(), now_us)
        .sadd(&keys.tenant.queues, "default")
        .incr(&keys.tenant.queued, 1)
        .query(&mut conn)
        .expect("write the earlier layout");

    let read = broker
        .task("default", completed.task_id)
        .await
        .expect("read")
        .expect("the completed task is there");
    assert_eq!((read.state, read.attempt), (TaskState::Completed, 1));
    let listed = broker.dead("default", "default", 10).await.expect("dead");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task_id, dead.task_id);
    assert_eq!(
        listed[0].error.as_ref().map(|e| e.message.as_str()),
        Some("an earlier failure")
    );

    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));
    let ran = support::wait(&Client::new(broker.clone()), &pending, 30).await;
    assert_eq!(ran.state, TaskState::Completed, "{:?}", ran.error);
    assert_eq!(ran.result_log.lines().count(), 3);
    worker.stop().await;

    // The earlier layout is the split form (lua/common.lua): its records
    // are read and written where they are.
    let split: usize = redis::cmd("HLEN")
        .arg(&keys.meta)
        .query(&mut conn)
        .expect("HLEN");
    assert_eq!(split, 3);
    let stats = default_stats(&broker).await;
    assert_eq!((stats.completed, stats.dead, stats.pending), (2, 1, 0));
    let queued: i64 = redis::cmd("GET")
        .arg(&keys.tenant.queued)
        .query(&mut conn)
        .expect("GET");
    assert_eq!(queued, 0);

    // Run again, the dead one gets new (small) JSON: its record turns
    // inline and leaves the `meta` hash.
    broker
        .retry("default", dead.task_id, &TenantQuota::UNLIMITED)
        .await
        .expect("retry the dead task");
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));
    let again = support::wait(&Client::new(broker.clone()), &dead, 30).await;
    assert_eq!(again.state, TaskState::Completed, "{:?}", again.error);
    assert_eq!(
        again.error_history.first().map(|e| e.message.as_str()),
        Some("an earlier failure")
    );
    worker.stop().await;
    let split: usize = redis::cmd("HLEN")
        .arg(&keys.meta)
        .query(&mut conn)
        .expect("HLEN");
    assert_eq!(split, 2);
    let record: Vec<u8> = redis::cmd("HGET")
        .arg(&keys.task)
        .arg(dead.task_id.to_string())
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(record.first(), Some(&b'c'), "inline, completed");
}

/// A task with a large JSON keeps it apart from its metadata, so a change
/// of state does not copy it; a small one keeps both in one field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_task_keeps_its_json_apart_and_runs() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("split");
    let broker = connect(&server, &prefix).await;
    let keys = broker.queue_keys("default", "default");
    let client = Client::new(broker.clone());
    let small = text_task(1);
    let mut large = text_task(2);
    large
        .args_map
        .insert("text".into(), "word ".repeat(400).into());
    client
        .enqueue_many(vec![small.clone(), large.clone()])
        .await
        .expect("enqueue");
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));
    for task in [&small, &large] {
        let done = support::wait(&client, task, 30).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        assert_eq!(done.result_log.lines().count(), 3);
    }
    worker.stop().await;
    let redis = redis::Client::open(server.url()).expect("redis url");
    let mut conn = redis.get_connection().expect("connect");
    let field = |hash: &str, id: TaskId, conn: &mut redis::Connection| -> Option<Vec<u8>> {
        redis::cmd("HGET")
            .arg(hash)
            .arg(id.to_string())
            .query(conn)
            .expect("HGET")
    };
    let small_record = field(&keys.task, small.task_id, &mut conn).expect("small record");
    assert_eq!(small_record.first(), Some(&b'c'), "inline, completed");
    assert_eq!(field(&keys.meta, small.task_id, &mut conn), None);
    let large_json = field(&keys.task, large.task_id, &mut conn).expect("large JSON");
    assert_eq!(large_json.first(), Some(&b'{'), "the JSON alone");
    let large_meta = field(&keys.meta, large.task_id, &mut conn).expect("large metadata");
    assert_eq!(large_meta.first(), Some(&b'c'), "split, completed");
    assert!(
        large_meta.len() < 100,
        "{} bytes of metadata",
        large_meta.len()
    );
}
