//! Real worker processes, SIGKILLed at random moments: no task is lost, and
//! a chain interrupted by a kill resumes at the handler that was running,
//! from its checkpoint, not from the start.
//!
//! 10,000 text-pipeline tasks (normalize → count_words → top_k) go into a
//! Redis of the test's own; three `corral worker` processes work them; six
//! times a random worker is SIGKILLed and a new one started. Each worker
//! logs a debug event per finished handler run (task, handler, attempt), so
//! the test counts what ran where. Run with `--nocapture` to see the figures
//! (how many tasks were recovered, how many ran a handler twice).
//!
//! A worker started while Redis is away (restarting) waits for it through
//! every step of its start; `scripts/crash-at-scale.sh` runs the same kind of
//! chaos at scale, with Redis itself killed and restarted from its AOF.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::task::{ArgsMap, Task, TaskId, TaskState};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::redis::{RedisServer, WorkerProcess, handler_runs, unique_prefix};

const TASKS: usize = 10_000;
const KILLS: usize = 6;
const WORKERS: usize = 3;

fn text_task(i: usize) -> Task {
    let mut args = ArgsMap::new();
    args.insert(
        "text".into(),
        format!("Task {i}: the quick brown fox jumps over the lazy dog; the dog sleeps, the fox {i} runs!")
            .into(),
    );
    let mut task = Task::new("text-stats", args);
    // Enough attempts that no task dies of kills alone.
    task.max_attempts = 10;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_nothing_and_chains_resume_from_their_checkpoint() {
    let _limit = crate::limit::minutes(12);
    let server = RedisServer::start();
    let prefix = unique_prefix("crash");
    let broker = RedisBroker::connect(RedisConfig::new(server.url()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let tasks: Vec<Task> = (0..TASKS).map(text_task).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    broker.enqueue(tasks).await.expect("enqueue");

    let logs = tempfile::tempdir().expect("log dir");
    let url = server.url();
    let mut started = 0;
    let mut start_worker = || {
        started += 1;
        let log = logs.path().join(format!("worker-{started}.log"));
        // A short lease so killed workers' tasks come back quickly; the
        // heartbeat (a third of it) keeps live workers' leases well clear.
        WorkerProcess::start(
            &url,
            &prefix,
            &[
                "--concurrency",
                "4",
                "--lease",
                "3s",
                "--shutdown-grace",
                "2s",
            ],
            log,
        )
    };
    let mut workers: Vec<WorkerProcess> = (0..WORKERS).map(|_| start_worker()).collect();

    // Only to turn a hang into a failure, never a measure of speed.
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut kills = 0;
    let mut rng = rand::rng();
    loop {
        let stats = broker.stats("default", "default").await.expect("stats");
        let left = stats.pending + stats.scheduled + stats.active;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "tasks still unfinished: {stats:?}"
        );
        // Kill only while work is being done, so kills hit chains mid-way.
        if kills < KILLS && stats.completed > 0 && stats.pending > 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
            let victim = rng.random_range(0..workers.len());
            workers[victim].kill();
            workers[victim] = start_worker();
            kills += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for w in &mut workers {
        w.stop();
    }
    assert!(
        kills >= 3,
        "the run ended after only {kills} kills; make it longer"
    );

    // Every task completed, each handler's line exactly once in its result.
    let mut recovered = 0;
    let mut attempts: HashMap<String, u32> = HashMap::new();
    for id in &ids {
        let task = broker
            .task("default", *id)
            .await
            .expect("read task")
            .unwrap_or_else(|| panic!("task {id} was lost"));
        assert_eq!(
            task.state,
            TaskState::Completed,
            "task {id}: {:?}",
            task.error
        );
        assert_eq!(task.current_handler_index, 3);
        let lines: Vec<&str> = task.result_log.lines().collect();
        assert_eq!(lines.len(), 3, "task {id}: {:?}", task.result_log);
        assert!(lines[0].starts_with("normalized "), "{lines:?}");
        assert!(lines[1].starts_with("counted "), "{lines:?}");
        assert!(lines[2].starts_with("top 3 of "), "{lines:?}");
        if task.attempt > 1 {
            recovered += 1;
        }
        attempts.insert(id.to_string(), task.attempt);
    }
    let stats = broker.stats("default", "default").await.expect("stats");
    assert_eq!((stats.completed, stats.dead), (TASKS, 0));

    // What ran: per task, per attempt, the handlers that finished.
    let mut runs: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for n in 1..=started {
        for run in handler_runs(&logs.path().join(format!("worker-{n}.log"))) {
            runs.entry(run.task)
                .or_default()
                .push((run.attempt, run.handler));
        }
    }
    let mut ran_twice = 0;
    let mut resumed = 0;
    for (task, list) in &runs {
        let mut per_handler: HashMap<u32, usize> = HashMap::new();
        for (_, h) in list {
            *per_handler.entry(*h).or_default() += 1;
        }
        if per_handler.values().any(|&n| n > 1) {
            ran_twice += 1;
        }
        // Handler k+1 finishing in an attempt means the checkpoint after
        // handler k was saved: no later attempt may start before it.
        let max_attempt = list.iter().map(|(a, _)| *a).max().unwrap_or(0);
        for later in 2..=max_attempt {
            let Some(first_run) = list
                .iter()
                .filter(|(a, _)| *a == later)
                .map(|(_, h)| *h)
                .min()
            else {
                continue;
            };
            let done_before = list
                .iter()
                .filter(|(a, _)| *a < later)
                .map(|(_, h)| *h)
                .max();
            if let Some(done) = done_before {
                assert!(
                    first_run >= done,
                    "task {task} attempt {later} started at handler {first_run} although handler {done} had finished before: {list:?}"
                );
                if first_run > 0 {
                    resumed += 1;
                }
            }
        }
        assert!(
            attempts.contains_key(task),
            "the log names a task that was never enqueued: {task}"
        );
    }
    eprintln!(
        "crash test: {TASKS} tasks, {WORKERS} workers, {kills} SIGKILLs, {started} worker processes; \
         {recovered} tasks needed more than one attempt, {resumed} resumed mid-chain from a checkpoint, \
         {ran_twice} ran a handler twice"
    );
    assert!(recovered > 0, "no kill hit a task in flight");
    assert!(
        resumed > 0,
        "no interrupted chain resumed from its checkpoint"
    );
}

/// A TCP proxy in front of Redis on `upstream` that cuts its `nth`
/// connection (from 1) when that connection sends its first `PING`, as a
/// Redis SIGKILLed at that moment would; every other connection is passed
/// through. Returns the proxy's URL and how many connections it cut.
async fn cutting_proxy(upstream: u16, nth: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let url = format!("redis://{}", listener.local_addr().expect("proxy address"));
    let cut = Arc::new(AtomicUsize::new(0));
    let cuts = cut.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((client, _)) = listener.accept().await {
            accepted += 1;
            let sabotage = accepted == nth;
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let replies = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sabotage && buf[..n].windows(4).any(|w| w.eq_ignore_ascii_case(b"PING")) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Both directions end: the client sees its connection drop.
                replies.abort();
            });
        }
    });
    (url, cut)
}

/// A worker started while Redis comes and goes waits for it at every step of
/// its start instead of exiting half way: the connection its broker opens
/// first, then the one its catalog opens next, is cut as it sends its first
/// command. Each time the worker must go on and run tasks (generated args,
/// which `noop` hands back unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_drop_while_it_starts_waits_and_runs() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let logs = tempfile::tempdir().expect("log dir");
    let mut rng = rand::rng();
    for (nth, which) in [(1, "broker"), (2, "catalog")] {
        let prefix = unique_prefix("start");
        let (url, cut) = cutting_proxy(server.port(), nth).await;
        let log = logs.path().join(format!("worker-{nth}.log"));
        let mut worker = WorkerProcess::start(&url, &prefix, &["--concurrency", "2"], log.clone());
        let broker = RedisBroker::connect(RedisConfig::new(server.url()).prefix(prefix.clone()))
            .await
            .expect("connect");
        let tasks: Vec<Task> = (0..rng.random_range(3..12))
            .map(|i| {
                let mut args = ArgsMap::new();
                args.insert("i".into(), i.into());
                args.insert("r".into(), rng.random::<u32>().into());
                Task::new("noop", args)
            })
            .collect();
        broker.enqueue(tasks.clone()).await.expect("enqueue");

        let give_up = Instant::now() + Duration::from_secs(60);
        let mut done = 0;
        while done < tasks.len() {
            assert!(
                worker.running(),
                "the worker exited after its {which} connection dropped at start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                Instant::now() < give_up,
                "{done} of {} tasks completed in 60 s after the {which} connection dropped",
                tasks.len()
            );
            done = 0;
            for t in &tasks {
                let stored = broker.task("default", t.task_id).await.expect("read task");
                if let Some(stored) = stored.filter(|s| s.state == TaskState::Completed) {
                    assert_eq!(stored.args_map, t.original_args_map);
                    done += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            cut.load(Ordering::SeqCst),
            1,
            "the proxy never cut the {which} connection"
        );
        assert!(worker.stop(), "the worker did not stop cleanly");
    }
}
