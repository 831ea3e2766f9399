//! Cancelling running tasks across processes: a `corral worker` process
//! runs a guest that loops forever or sleeps in a host call; this test
//! process cancels the task through the broker, and the worker must stop
//! the guest and report the task `cancelled` (naming the handler that was
//! running) within 100 ms, without being killed, then go on serving.

use std::time::{Duration, Instant};

use corral::TaskId;
use corral::broker::{Broker, Cancelled, RedisBroker, RedisConfig};
use corral::task::{ArgsMap, Task, TaskState};

use crate::support;
use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};

/// The bound the worker has to stop a cancelled guest and say so.
const BOUND: Duration = Duration::from_millis(100);

async fn state_of(broker: &RedisBroker, id: TaskId) -> Task {
    broker
        .task("default", id)
        .await
        .expect("read task")
        .expect("task is stored")
}

/// Polls until the task is in `state` (every 2 ms, failing after `secs`);
/// returns it and how long that took.
async fn until(broker: &RedisBroker, id: TaskId, state: TaskState, secs: u64) -> (Task, Duration) {
    let started = Instant::now();
    loop {
        let task = state_of(broker, id).await;
        if task.state == state {
            return (task, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "task {id} not {state} within {secs} s: {:?} {:?}",
            task.state,
            task.error
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn task(job: &str, args: &[(&str, u64)]) -> Task {
    let mut map = ArgsMap::new();
    for (k, v) in args {
        map.insert((*k).into(), (*v).into());
    }
    Task::new(job, map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_guests_are_cancelled_from_another_process_within_the_bound() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let prefix = unique_prefix("cancel");
    let broker = RedisBroker::connect(RedisConfig::new(server.url()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let logs = tempfile::tempdir().expect("log dir");
    let jobs = [
        format!("spin={}", support::job("spin").display()),
        format!("nap={}", support::job("sleep").display()),
        format!("noop={}", support::job("noop").display()),
    ];
    // Fuel enough for the loop to run until it is cancelled.
    let mut extra = vec![
        "--id",
        "canceller-test-worker",
        "--timeout",
        "120s",
        "--fuel",
        "10000000000",
    ];
    for job in &jobs {
        extra.extend(["--job", job.as_str()]);
    }
    let mut worker =
        WorkerProcess::start(&server.url(), &prefix, &extra, logs.path().join("w.log"));
    worker.wait_started();

    for (what, t) in [
        ("a guest that loops forever", task("spin", &[])),
        (
            "a guest asleep in a host call",
            task("nap", &[("ms", 600_000)]),
        ),
    ] {
        let id = t.task_id;
        broker.enqueue(vec![t]).await.expect("enqueue");
        until(&broker, id, TaskState::Active, 60).await;
        // Let the guest get going.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        let answer = match broker.cancel("default", id).await {
            Ok(answer) => answer,
            Err(e) => panic!(
                "{what}: cancel refused ({e}); the task: {:?}",
                state_of(&broker, id).await.error
            ),
        };
        assert_eq!(
            answer,
            Cancelled::Requested {
                worker: "canceller-test-worker".into()
            }
        );
        let (done, _) = until(&broker, id, TaskState::Cancelled, 30).await;
        let took = asked.elapsed();
        eprintln!("{what}: cancelled and reported in {took:?}");
        assert!(
            took < BOUND,
            "{what}: {took:?} from the cancel to the task's end"
        );
        let error = done.error.expect("a cancelled task has an error");
        assert_eq!(error.kind, "cancelled");
        assert_eq!(error.handler_index, Some(0), "the running handler is named");
        assert_eq!(done.attempt, 1);
        assert!(worker.running(), "the worker was not killed");
    }

    // The worker goes on serving, and nothing cancelled runs again.
    let next = task("noop", &[]);
    let next_id = next.task_id;
    broker.enqueue(vec![next]).await.expect("enqueue");
    until(&broker, next_id, TaskState::Completed, 60).await;
    broker.maintain().await.expect("maintain");
    let stats = broker.stats("default", "default").await.expect("stats");
    assert_eq!((stats.cancelled, stats.active, stats.pending), (2, 0, 0));

    // It is in the workers registry, with its pid.
    let workers = broker.workers().await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.id == "canceller-test-worker")
        .expect("the worker is registered");
    assert_eq!(me.pid, worker.pid());
    assert!(worker.stop(), "a clean shutdown");
    assert!(
        broker.workers().await.expect("workers").is_empty(),
        "a stopped worker leaves the registry"
    );
}
