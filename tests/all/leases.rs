//! The worker's lease keeping, exercised: heartbeats extend a lease for as
//! long as its task runs, and a worker that lost its lease while stopped
//! (SIGSTOP, a real process) abandons the task when it resumes (SIGCONT)
//! without overwriting what the worker that took it over stored.

use std::time::{Duration, Instant};

use corral::broker::{Broker, EmbeddedBroker, RedisBroker, RedisConfig};
use corral::registry::Registry;
use corral::sandbox::Limits;
use corral::task::{Task, TaskState};
use corral::{Client, TaskId};

use crate::support::redis::{RedisServer, WorkerProcess, handler_runs, unique_prefix};
use crate::support::{self, RunningWorker};

/// A `nap` task of `ms` milliseconds.
fn nap(ms: u64) -> Task {
    let mut args = corral::task::ArgsMap::new();
    args.insert("ms".into(), ms.into());
    Task::new("nap", args)
}

/// A task that runs five times as long as the lease completes on its first
/// attempt: the heartbeats extended the lease all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_task_on_its_first_attempt() {
    let _limit = crate::limit::minutes(5);
    let registry = Registry::new(support::sandbox());
    registry
        .register_files(
            "default",
            "nap",
            &[support::job("sleep")],
            Limits::default(),
        )
        .await
        .expect("register nap");
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let config = corral::worker::WorkerConfig {
        lease: Duration::from_millis(400),
        heartbeat_every: Duration::from_millis(100),
        ..support::worker_config(2)
    };
    let worker = RunningWorker::start(broker.clone(), registry, config);
    let task = nap(2_000);
    client.enqueue(task.clone()).await.expect("enqueue");
    let done = support::wait(&client, &task, 60).await;
    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "the lease ran out under the task");
    let stats = worker.stats.clone();
    worker.stop().await;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (stats.retried.load(Relaxed), stats.lost.load(Relaxed)),
        (0, 0)
    );
}

/// The task's state, polled until `done` says so; fails after `secs`.
async fn wait_for(
    broker: &RedisBroker,
    id: TaskId,
    secs: u64,
    what: &str,
    done: impl Fn(&Task) -> bool,
) -> Task {
    let give_up = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(task) = broker.task("default", id).await.expect("read task")
            && done(&task)
        {
            return task;
        }
        assert!(Instant::now() < give_up, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(worker: &WorkerProcess, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(worker.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// When a stopped worker is resumed, relative to the worker that took its
/// task over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// After B completed the task: A's handler has ended too by then, and
    /// whichever of its heartbeat and its outcome reaches the broker first
    /// is refused.
    AfterCompletion,
    /// As soon as B holds the task, while A's handler still has seconds to
    /// run: A's next heartbeat finds the lease lost and abandons the handler
    /// mid-call.
    WhileHandlerRuns,
}

/// Worker A takes a task, is stopped (SIGSTOP) past its lease; worker B
/// takes the task over and completes it. A, resumed (SIGCONT), finds its
/// lease lost and abandons the task: the stored result is B's (attempt 2),
/// A overwrote nothing, and A counts the task as lost.
async fn a_worker_stopped_past_its_lease(resume: Resume) {
    let server = RedisServer::start();
    let prefix = unique_prefix("leases");
    let broker = RedisBroker::connect(RedisConfig::new(server.url()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let logs = tempfile::tempdir().expect("log dir");
    let nap_job = format!("nap={}", support::job("sleep").display());
    let extra = [
        "--job",
        nap_job.as_str(),
        "--lease",
        "1s",
        "--timeout",
        "60s",
    ];
    let nap_ms = match resume {
        Resume::AfterCompletion => 3_000,
        Resume::WhileHandlerRuns => 12_000,
    };

    let mut a = WorkerProcess::start(&server.url(), &prefix, &extra, logs.path().join("a.log"));
    let task = nap(nap_ms);
    broker.enqueue(vec![task.clone()]).await.expect("enqueue");
    let leased = wait_for(&broker, task.task_id, 60, "A leases the task", |t| {
        t.state == TaskState::Active
    })
    .await;
    assert_eq!(leased.attempt, 1);
    signal(&a, "STOP");

    let mut b = WorkerProcess::start(&server.url(), &prefix, &extra, logs.path().join("b.log"));
    if resume == Resume::WhileHandlerRuns {
        wait_for(&broker, task.task_id, 60, "B leases the task", |t| {
            t.state == TaskState::Active && t.attempt == 2
        })
        .await;
        signal(&a, "CONT");
    }
    let done = wait_for(&broker, task.task_id, 60, "B completes the task", |t| {
        t.state == TaskState::Completed
    })
    .await;
    assert_eq!(done.attempt, 2, "B ran it as the second attempt");
    if resume == Resume::AfterCompletion {
        signal(&a, "CONT");
    }
    assert!(b.stop(), "worker B stops cleanly");
    // Resumed, A's next heartbeat (or its handler's end) finds the lease
    // gone; then it stops.
    let a_log = logs.path().join("a.log");
    let noticed: &[&str] = match resume {
        Resume::AfterCompletion => &["lease lost", "abandoned", "refused"],
        Resume::WhileHandlerRuns => &["lease lost; abandoning the task"],
    };
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&a_log).unwrap_or_default();
        if noticed.iter().any(|n| log.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "A never noticed its lost lease:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.stop(), "worker A stops cleanly");
    let stats = std::fs::read_to_string(&a_log).unwrap_or_default();
    let after = broker
        .task("default", task.task_id)
        .await
        .expect("read task")
        .expect("task kept");
    assert_eq!(
        (after.state, after.attempt, after.result_log.clone()),
        (done.state, done.attempt, done.result_log.clone()),
        "A overwrote B's result"
    );
    let b_runs = handler_runs(&logs.path().join("b.log"));
    assert_eq!(b_runs.len(), 1, "{b_runs:?}");
    assert_eq!(b_runs[0].attempt, 2);
    let line = stats
        .lines()
        .find(|l| l.contains("corral worker stopped"))
        .unwrap_or_else(|| panic!("A printed its counts:\n{stats}"));
    assert!(
        line.contains(" 1 lost"),
        "A counted the task as lost: {line}"
    );
    assert!(line.contains(" 0 completed"), "A completed nothing: {line}");
    // A's handler never finished: it was abandoned mid-call.
    if resume == Resume::WhileHandlerRuns {
        let a_runs = handler_runs(&a_log);
        assert!(a_runs.is_empty(), "{a_runs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_abandons_the_task_when_resumed() {
    let _limit = crate::limit::minutes(5);
    a_worker_stopped_past_its_lease(Resume::AfterCompletion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_workers_heartbeat_abandons_a_handler_still_running() {
    let _limit = crate::limit::minutes(5);
    a_worker_stopped_past_its_lease(Resume::WhileHandlerRuns).await;
}
