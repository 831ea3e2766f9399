//! The walking skeleton end to end on the embedded broker: handler chains,
//! checkpoints, guest errors, limits, unknown jobs and shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::Client;
use corral::broker::{Checkpoint, EmbeddedBroker};
use corral::registry::RegistryError;
use corral::sandbox::Limits;
use corral::task::{TaskId, TaskState};

use crate::support::spy::UpdateSpy;
use crate::support::{self, RunningWorker};

const PIPELINE: &[&str] = &["normalize", "count_words", "top_k"];

/// Every checkpoint a broker is sent, in order.
type Updates = Arc<Mutex<Vec<(TaskId, Checkpoint)>>>;

/// An embedded broker that records every checkpoint it is sent.
fn recording_broker() -> (UpdateSpy<EmbeddedBroker>, Updates) {
    let updates = Updates::default();
    let seen = updates.clone();
    let broker = UpdateSpy {
        inner: EmbeddedBroker::new(),
        on_update: Arc::new(move |lease, cp| {
            seen.lock().unwrap().push((lease.task_id, cp.clone()));
        }),
    };
    (broker, updates)
}

fn quick_limits() -> Limits {
    Limits {
        fuel: 200_000_000,
        memory_bytes: 32 << 20,
        timeout_ms: 1_500,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_flow_through_the_chain_and_checkpoints_advance() {
    let _limit = crate::limit::minutes(5);
    let (broker, updates) = recording_broker();
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let client = Client::new(broker.clone());
    let task = client
        .task("text-stats")
        .arg("text", "The cat, the HAT; the bat!")
        .unwrap()
        .arg("k", &2)
        .unwrap()
        .build();
    client.enqueue(task.clone()).await.unwrap();
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));
    let done = support::wait(&client, &task, 30).await;
    worker.stop().await;

    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.current_handler_index, 3);
    // normalize → count_words → top_k, each reading what the previous wrote.
    assert_eq!(done.args_map["text"], "the cat the hat the bat");
    assert_eq!(done.args_map["total"], 6);
    assert_eq!(done.args_map["counts"]["the"], 3);
    assert_eq!(
        done.args_map["top"],
        serde_json::json!([["the", 3], ["bat", 1]])
    );
    assert_eq!(done.original_args_map["text"], "The cat, the HAT; the bat!");
    let lines: Vec<&str> = done.result_log.lines().collect();
    assert_eq!(lines.len(), 3, "{}", done.result_log);
    assert!(lines[0].starts_with("normalized"), "{}", lines[0]);
    assert!(lines[1].starts_with("counted 6 words"), "{}", lines[1]);
    assert!(
        lines[2].starts_with("top 2 of 4 distinct: the (3)"),
        "{}",
        lines[2]
    );

    // One checkpoint after each handler but the last (the ack carries that).
    let updates = updates.lock().unwrap().clone();
    let indexes: Vec<u32> = updates
        .iter()
        .filter(|(id, _)| *id == task.task_id)
        .map(|(_, cp)| cp.current_handler_index)
        .collect();
    assert_eq!(indexes, vec![1, 2]);
    assert_eq!(updates[0].1.args_map["text"], "the cat the hat the bat");
    assert_eq!(updates[1].1.result_log.lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_task_resumes_at_its_handler() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let client = Client::new(broker.clone());
    // As a recovered task looks: handler 0 already ran and checkpointed.
    let mut task = client
        .task("text-stats")
        .arg("text", "B b a")
        .unwrap()
        .build();
    task.current_handler_index = 1;
    task.args_map.insert("text".into(), "b b a".into());
    task.result_log = "normalized 5 chars".into();
    client.enqueue(task.clone()).await.unwrap();
    let worker = RunningWorker::start(broker, registry, support::worker_config(1));
    let done = support::wait(&client, &task, 30).await;
    worker.stop().await;
    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    let lines: Vec<&str> = done.result_log.lines().collect();
    assert_eq!(lines.len(), 3, "{}", done.result_log);
    assert_eq!(lines[0], "normalized 5 chars");
    assert!(lines[1].starts_with("counted 3 words"));
    assert_eq!(done.args_map["top"][0], serde_json::json!(["b", 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_fail_the_task_with_the_guests_message() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[("fail", &["fail"], Limits::default())]).await;
    let client = Client::new(broker.clone());
    let fatal = client
        .task("fail")
        .arg("kind", "fatal")
        .unwrap()
        .arg("message", "bad input: no customer id")
        .unwrap()
        .build();
    let retryable = client
        .task("fail")
        .arg("kind", "retryable")
        .unwrap()
        .arg("message", "upstream busy")
        .unwrap()
        .max_attempts(3)
        .build();
    client
        .enqueue_many(vec![fatal.clone(), retryable.clone()])
        .await
        .unwrap();
    let worker = RunningWorker::start(broker, registry, support::worker_config(2));
    let fatal_done = support::wait(&client, &fatal, 30).await;
    let retry_done = support::wait(&client, &retryable, 30).await;
    let stats = worker.stats.clone();
    worker.stop().await;

    assert_eq!(fatal_done.state, TaskState::Dead);
    assert_eq!(fatal_done.attempt, 1, "fatal errors are not retried");
    let err = fatal_done.error.unwrap();
    assert_eq!(err.kind, "guest_error");
    assert!(!err.retryable);
    assert_eq!(err.handler_index, Some(0));
    assert!(
        err.message.contains("bad input: no customer id"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("handler 0 (`fail`)"),
        "{}",
        err.message
    );

    assert_eq!(retry_done.state, TaskState::Dead);
    assert_eq!(retry_done.attempt, 3, "retried until out of attempts");
    let err = retry_done.error.unwrap();
    assert!(err.retryable);
    assert!(err.message.contains("upstream busy"));
    assert_eq!(stats.retried.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Runs `job` (one hostile handler) and then a normal task on the same
/// worker; returns the hostile task's error.
async fn contained(
    handler: &str,
    args: &[(&str, serde_json::Value)],
    limits: Limits,
) -> corral::task::TaskError {
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[
        ("hostile", &[handler], limits),
        ("text-stats", PIPELINE, Limits::default()),
    ])
    .await;
    let client = Client::new(broker.clone());
    let mut builder = client.task("hostile").max_attempts(1);
    for (name, value) in args {
        builder = builder.arg(name, value).unwrap();
    }
    let hostile = builder.build();
    client.enqueue(hostile.clone()).await.unwrap();
    let worker = RunningWorker::start(broker, registry, support::worker_config(1));
    let done = support::wait(&client, &hostile, 30).await;
    // The same worker, with its only slot, runs the next task normally.
    let next = client
        .task("text-stats")
        .arg("text", "still alive")
        .unwrap()
        .build();
    client.enqueue(next.clone()).await.unwrap();
    let next_done = support::wait(&client, &next, 30).await;
    worker.stop().await;
    assert_eq!(
        next_done.state,
        TaskState::Completed,
        "{:?}",
        next_done.error
    );
    assert_eq!(next_done.args_map["total"], 2);
    assert_eq!(done.state, TaskState::Dead);
    done.error.expect("a dead task carries its error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_fuel() {
    let _limit = crate::limit::minutes(5);
    let err = contained("spin", &[], quick_limits()).await;
    assert_eq!(err.kind, "out_of_fuel", "{err}");
    assert!(
        err.message.contains("ran out of fuel (200000000 units)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_guest_is_stopped_by_its_deadline() {
    let _limit = crate::limit::minutes(5);
    let err = contained("sleep", &[("ms", 60_000.into())], quick_limits()).await;
    assert_eq!(err.kind, "deadline", "{err}");
    assert!(err.message.contains("deadline of 1500 ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_waiting_guest_is_stopped_by_its_deadline() {
    let _limit = crate::limit::minutes(5);
    let limits = Limits {
        fuel: 9_000_000_000,
        ..quick_limits()
    };
    let err = contained("busy_wait", &[("ms", 60_000.into())], limits).await;
    assert_eq!(err.kind, "deadline", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let _limit = crate::limit::minutes(5);
    let err = contained("memory_bomb", &[], quick_limits()).await;
    assert_eq!(err.kind, "memory_limit", "{err}");
    assert!(err.message.contains("over its limit of 33554432"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_job_fails_its_task_and_the_worker_carries_on() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let client = Client::new(broker.clone());
    let unknown = client.task("no-such-job").build();
    let known = client
        .task("text-stats")
        .arg("text", "a b")
        .unwrap()
        .build();
    client
        .enqueue_many(vec![unknown.clone(), known.clone()])
        .await
        .unwrap();
    let worker = RunningWorker::start(broker, registry, support::worker_config(1));
    let unknown_done = support::wait(&client, &unknown, 30).await;
    let known_done = support::wait(&client, &known, 30).await;
    worker.stop().await;
    assert_eq!(unknown_done.state, TaskState::Dead);
    let err = unknown_done.error.unwrap();
    assert_eq!(err.kind, "unknown_job");
    assert!(
        err.message.contains("unknown job `no-such-job`"),
        "{}",
        err.message
    );
    assert_eq!(unknown_done.attempt, 1, "an unknown job is not retried");
    assert_eq!(known_done.state, TaskState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_name_twice_is_an_error_unless_replaced() {
    let _limit = crate::limit::minutes(5);
    let registry = support::registry(&[("text-stats", PIPELINE, Limits::default())]).await;
    let files: Vec<_> = PIPELINE.iter().map(|h| support::job(h)).collect();
    let err = registry
        .register_files("default", "text-stats", &files, Limits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::AlreadyRegistered { version: 1, .. }),
        "{err}"
    );
    // Another tenant may use the same name.
    let other = registry
        .register_files("acme", "text-stats", &files, Limits::default())
        .await
        .unwrap();
    assert_eq!(other.version, 1);
    let def = registry
        .resolve("default", "text-stats", None)
        .await
        .unwrap();
    let replaced = registry
        .replace(
            "default",
            "text-stats",
            def.definition.handlers[..1].to_vec(),
            Limits::default(),
        )
        .await
        .unwrap();
    assert_eq!(replaced.version, 2);
    let v1 = registry
        .resolve("default", "text-stats", Some(1))
        .await
        .unwrap();
    assert_eq!(v1.handlers.len(), 3);
    let newest = registry
        .resolve("default", "text-stats", None)
        .await
        .unwrap();
    assert_eq!(newest.handlers.len(), 1);
    assert!(matches!(
        registry.resolve("default", "text-stats", Some(9)).await,
        Err(RegistryError::UnknownVersion { version: 9, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdout_stderr_and_log_land_in_the_task_log() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[("echo", &["echo_log"], Limits::default())]).await;
    let client = Client::new(broker.clone());
    let task = client.task("echo").arg("x", &1).unwrap().build();
    client.enqueue(task.clone()).await.unwrap();
    let worker = RunningWorker::start(broker, registry, support::worker_config(1));
    let done = support::wait(&client, &task, 30).await;
    worker.stop().await;
    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    assert_eq!(done.args_map["x"], 1);
    assert!(done.log.contains("[0:echo_log][stdout] "), "{}", done.log);
    assert!(done.log.contains("[0:echo_log][stderr] "), "{}", done.log);
    assert!(done.log.contains("[0:echo_log][info] "), "{}", done.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_tasks_still_running_after_the_grace_period() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let limits = Limits {
        timeout_ms: 30_000,
        ..Limits::default()
    };
    let registry = support::registry(&[("slow", &["sleep"], limits)]).await;
    let client = Client::new(broker.clone());
    let task = client.task("slow").arg("ms", &20_000).unwrap().build();
    client.enqueue(task.clone()).await.unwrap();
    let config = corral::WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..support::worker_config(1)
    };
    let worker = RunningWorker::start(broker.clone(), registry, config);
    // Wait until the worker holds the task (polled, failing after 60 s).
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t = client
            .status("default", task.task_id)
            .await
            .unwrap()
            .unwrap();
        if t.state == TaskState::Active {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the worker never took the task: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = worker.stats.clone();
    worker.stop().await;
    let back = client
        .status("default", task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.state, TaskState::Pending, "handed back, not lost");
    assert_eq!(
        back.attempt, 0,
        "a handed-back run does not count as an attempt"
    );
    assert_eq!(stats.released.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A task's own `timeout_ms` narrows its job's deadline, never widens it:
/// the same one-second nap completes under the job's 60 s, dies of its
/// deadline under a task timeout of 200 ms, and a task timeout above the
/// job's leaves the job's in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_own_timeout_narrows_its_jobs() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let job = |timeout_ms| Limits {
        timeout_ms,
        ..Limits::default()
    };
    let registry = support::registry(&[
        ("nap", &["sleep"], job(60_000)),
        ("short-nap", &["sleep"], job(200)),
    ])
    .await;
    let client = Client::new(broker.clone());
    let nap = |job: &str, timeout: Option<u64>| {
        let mut b = client.task(job).arg("ms", &1_000).unwrap().max_attempts(1);
        if let Some(ms) = timeout {
            b = b.timeout(Duration::from_millis(ms));
        }
        b.build()
    };
    let under_job = nap("nap", None);
    let narrowed = nap("nap", Some(200));
    let wider = nap("short-nap", Some(60_000));
    for t in [&under_job, &narrowed, &wider] {
        client.enqueue(t.clone()).await.unwrap();
    }
    let worker = RunningWorker::start(broker, registry, support::worker_config(3));
    let under_job = support::wait(&client, &under_job, 60).await;
    let narrowed = support::wait(&client, &narrowed, 60).await;
    let wider = support::wait(&client, &wider, 60).await;
    worker.stop().await;
    assert_eq!(
        under_job.state,
        TaskState::Completed,
        "{:?}",
        under_job.error
    );
    for t in [&narrowed, &wider] {
        assert_eq!(t.state, TaskState::Dead, "{t:?}");
        let error = t.error.as_ref().expect("an error");
        assert_eq!(error.kind, "deadline", "{error}");
    }
}

/// Every handler call is metered and the task keeps it: each handler's
/// latest call (fuel, peak memory, wall and instantiate time) and a total
/// over every call, retries included; a failed call is metered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_metered_on_the_task_retries_included() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[
        ("stats", &["normalize", "count_words"], Limits::default()),
        ("flaky", &["normalize", "fail"], Limits::default()),
        ("bomb", &["memory_bomb"], Limits::default()),
    ])
    .await;
    let client = Client::new(broker.clone());
    let stats = client.task("stats").arg("text", "A b a").unwrap().build();
    let flaky = client
        .task("flaky")
        .arg("text", "x")
        .unwrap()
        .arg("kind", "retryable")
        .unwrap()
        .max_attempts(3)
        .build();
    let bomb = client.task("bomb").max_attempts(1).build();
    for t in [&stats, &flaky, &bomb] {
        client.enqueue(t.clone()).await.unwrap();
    }
    let worker = RunningWorker::start(broker, registry, support::worker_config(3));
    let stats = support::wait(&client, &stats, 60).await;
    let flaky = support::wait(&client, &flaky, 60).await;
    let bomb = support::wait(&client, &bomb, 60).await;
    worker.stop().await;

    assert_eq!(stats.state, TaskState::Completed, "{:?}", stats.error);
    let m = &stats.metering;
    assert_eq!(
        m.handlers
            .iter()
            .map(|h| (h.handler_index, h.attempt))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 1)]
    );
    for h in &m.handlers {
        let c = h.cost;
        assert!(c.fuel > 0, "{h:?}");
        // Every component here has at least one 64 KiB page.
        assert!(c.peak_memory_bytes >= 64 << 10, "{h:?}");
        assert!(
            c.instantiate_us > 0 && c.wall_us >= c.instantiate_us,
            "{h:?}"
        );
    }
    assert_eq!(m.total.calls, 2);
    assert_eq!(
        m.total.fuel,
        m.handlers.iter().map(|h| h.cost.fuel).sum::<u64>()
    );

    // Normalize ran once (its result was checkpointed: attempts 2 and 3
    // resumed at `fail`), fail three times: the total counts every call,
    // each handler shows its latest.
    assert_eq!(flaky.state, TaskState::Dead, "{flaky:?}");
    let m = &flaky.metering;
    assert_eq!(m.total.calls, 4, "{m:?}");
    assert_eq!(
        m.handlers
            .iter()
            .map(|h| (h.handler_index, h.attempt))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 3)]
    );

    // The bomb grew its memory up to the limit before it was stopped.
    assert_eq!(bomb.state, TaskState::Dead);
    assert_eq!(
        bomb.error.as_ref().map(|e| e.kind.as_str()),
        Some("memory_limit")
    );
    let peak = bomb.metering.handlers[0].cost.peak_memory_bytes;
    let limit = Limits::default().memory_bytes;
    assert!(
        peak > limit / 2 && peak <= limit,
        "peak {peak} of a {limit} limit"
    );
}

/// A worker told to run more tasks at once than its sandbox has instances
/// runs only as many as it has: a task leased beyond the pool would find no
/// slot and die though its guest never ran (seen with slow Python handlers
/// and `--concurrency 512` over the default 256 instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_runs_more_tasks_than_its_instance_pool_holds() {
    let _limit = crate::limit::minutes(5);
    let sandbox = corral::sandbox::Sandbox::new(corral::sandbox::SandboxConfig {
        max_instances: 2,
        ..corral::sandbox::SandboxConfig::default()
    })
    .expect("sandbox");
    let registry = corral::registry::Registry::new(sandbox);
    registry
        .register_files(
            "default",
            "sleep",
            &[support::job("sleep")],
            Limits::default(),
        )
        .await
        .expect("register");
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            client
                .task("sleep")
                .arg("ms", &200)
                .expect("arg")
                .max_attempts(1)
                .build()
        })
        .collect();
    client.enqueue_many(tasks.clone()).await.expect("enqueue");
    let worker = RunningWorker::start(broker, registry, support::worker_config(8));
    for task in &tasks {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_fails_for_good_once_its_whole_task_deadline_passes() {
    let _limit = crate::limit::minutes(5);
    let broker = EmbeddedBroker::new();
    let registry = support::registry(&[
        ("nap", &["sleep"], Limits::default()),
        ("fail", &["fail"], Limits::default()),
    ])
    .await;
    let client = Client::new(broker.clone());
    // Its deadline passes while its handler sleeps: the handler is cut
    // short at the deadline, well before its own 10 s limit.
    let cut = client
        .task("nap")
        .arg("ms", &5_000)
        .unwrap()
        .deadline(Duration::from_millis(300))
        .build();
    // Retryable failures with attempts to spare, but the backoff (at least
    // 1 s here) would start the retry after the deadline.
    let retried = client
        .task("fail")
        .arg("kind", "retryable")
        .unwrap()
        .max_attempts(5)
        .deadline(Duration::from_millis(500))
        .build();
    // Past its deadline before any worker takes it: no handler runs.
    let mut late = client.task("nap").arg("ms", &1).unwrap().build();
    late.deadline = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    // A deadline that is not reached changes nothing.
    let fine = client
        .task("nap")
        .arg("ms", &1)
        .unwrap()
        .deadline(Duration::from_secs(60))
        .build();
    client
        .enqueue_many(vec![
            cut.clone(),
            retried.clone(),
            late.clone(),
            fine.clone(),
        ])
        .await
        .unwrap();
    let mut config = support::worker_config(4);
    config.retry.base = Duration::from_secs(1);
    config.retry.max = Duration::from_secs(2);
    config.retry.jitter = 0.0;
    let worker = RunningWorker::start(broker, registry, config);
    let cut_done = support::wait(&client, &cut, 30).await;
    let retried_done = support::wait(&client, &retried, 30).await;
    let late_done = support::wait(&client, &late, 30).await;
    let fine_done = support::wait(&client, &fine, 30).await;
    worker.stop().await;

    assert_eq!(
        fine_done.state,
        TaskState::Completed,
        "{:?}",
        fine_done.error
    );
    for (done, attempts) in [(&cut_done, 1), (&retried_done, 1), (&late_done, 1)] {
        assert_eq!(done.state, TaskState::Dead, "{:?}", done.error);
        let err = done.error.as_ref().unwrap();
        assert_eq!(err.kind, "deadline_exceeded", "{}", err.message);
        assert!(!err.retryable);
        assert_eq!(done.attempt, attempts, "{}", err.message);
    }
    // Completed had the handler slept its 5 s: it was cut at the deadline.
    assert_eq!(cut_done.error.as_ref().unwrap().handler_index, Some(0));
    let err = retried_done.error.unwrap();
    assert!(
        err.message.contains("fail job asked to fail"),
        "{}",
        err.message
    );
    assert!(
        late_done.log.is_empty() && late_done.metering.is_empty(),
        "a handler ran after the deadline: {:?}",
        late_done.log
    );
}
