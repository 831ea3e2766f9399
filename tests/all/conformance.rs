//! The broker conformance suite: one set of tests, run against every broker.
//!
//! Each test below is a generic function over a [`Backend`]; the
//! `conformance!` macro at the bottom instantiates all of them for the
//! embedded broker, a standalone Redis (a server of each test's own) and a
//! three-master Redis Cluster (one per test binary, each test under its own
//! key prefix). Time is a [`ManualClock`] the tests move; nothing sleeps to
//! let a lease expire or a delay pass. The embedded broker is the reference:
//! where the backends could differ, the test states what both must do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use corral::broker::{
    AcquireRequest, Broker, BrokerError, Cancelled, Checkpoint, EmbeddedBroker, Lease, Leased,
    Outcome, PageQuery, RateLimit, RedisBroker, RedisConfig, Retention, TenantQuota, WorkerInfo,
};
use corral::clock::{self, Clock, ManualClock};
use corral::schedule::{Missed, Schedule, Timing};
use corral::task::{ArgsMap, Task, TaskError, TaskId, TaskState};
use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::redis::{RedisServer, cluster, redis_cli, unique_prefix};

/// A broker under test with the clock it reads.
pub struct Fixture<B> {
    pub broker: B,
    pub clock: ManualClock,
    /// Keeps the backend's server alive for the test.
    _server: Option<RedisServer>,
    /// The Redis servers behind the broker (none for the embedded one).
    ports: Vec<u16>,
}

/// A kind of broker the suite runs against.
pub trait Backend {
    type B: Broker + Clone;
    fn make(retention: Retention) -> impl Future<Output = Fixture<Self::B>>;
    /// How many `acquire` calls wait for work at the broker now (on the
    /// cluster, which tests share, other tests' waits count too).
    fn waiting(fx: &Fixture<Self::B>) -> impl Future<Output = usize>;
}

/// Clients blocked in `BLPOP` (an acquire's wait) on the servers at `ports`.
async fn blocked_in_blpop(ports: &[u16]) -> usize {
    let ports = ports.to_vec();
    tokio::task::spawn_blocking(move || {
        ports
            .iter()
            .map(|port| {
                redis_cli(*port, &["client", "list"])
                    .lines()
                    .filter(|l| l.contains(" cmd=blpop ") && l.contains(" flags=b"))
                    .count()
            })
            .sum()
    })
    .await
    .expect("client list")
}

/// Waits until more than `before` acquire calls wait for work: the one the
/// test started has reached its wait. Polled, failing after 60 s.
async fn until_an_acquire_waits<K: Backend>(fx: &Fixture<K::B>, before: usize) {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while K::waiting(fx).await <= before {
        assert!(
            std::time::Instant::now() < give_up,
            "the acquire never reached its wait"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn start_clock() -> ManualClock {
    // A fixed, whole-second start: far from any real "now", so nothing can
    // pass for being due by accident.
    ManualClock::new(DateTime::from_timestamp(1_900_000_000, 0).expect("valid time"))
}

pub struct Embedded;
impl Backend for Embedded {
    type B = EmbeddedBroker;
    async fn make(retention: Retention) -> Fixture<EmbeddedBroker> {
        let clock = start_clock();
        let broker = EmbeddedBroker::with_clock(Arc::new(clock.clone()), retention);
        Fixture {
            broker,
            clock,
            _server: None,
            ports: Vec::new(),
        }
    }
    async fn waiting(fx: &Fixture<EmbeddedBroker>) -> usize {
        fx.broker.waiting_acquires()
    }
}

pub struct Standalone;
impl Backend for Standalone {
    type B = RedisBroker;
    async fn make(retention: Retention) -> Fixture<RedisBroker> {
        let server = RedisServer::start();
        let clock = start_clock();
        let config = RedisConfig::new(server.url())
            .clock(Arc::new(clock.clone()))
            .retention(retention);
        let broker = RedisBroker::connect(config)
            .await
            .expect("connect to redis");
        Fixture {
            broker,
            clock,
            ports: vec![server.port()],
            _server: Some(server),
        }
    }
    async fn waiting(fx: &Fixture<RedisBroker>) -> usize {
        blocked_in_blpop(&fx.ports).await
    }
}

pub struct Cluster;
impl Backend for Cluster {
    type B = RedisBroker;
    async fn make(retention: Retention) -> Fixture<RedisBroker> {
        let (urls, ports) = tokio::task::spawn_blocking(|| (cluster().urls(), cluster().ports()))
            .await
            .expect("cluster start");
        let clock = start_clock();
        let config = RedisConfig::cluster(urls)
            .prefix(unique_prefix("conf"))
            .clock(Arc::new(clock.clone()))
            .retention(retention);
        let broker = RedisBroker::connect(config)
            .await
            .expect("connect to cluster");
        Fixture {
            broker,
            clock,
            _server: None,
            ports,
        }
    }
    async fn waiting(fx: &Fixture<RedisBroker>) -> usize {
        blocked_in_blpop(&fx.ports).await
    }
}

const T: &str = "default";
const Q: &str = "default";
const LEASE: Duration = Duration::from_secs(30);

fn task(n: i64) -> Task {
    let mut args = ArgsMap::new();
    args.insert("n".into(), n.into());
    Task::new("job", args)
}

fn task_in(tenant: &str, queue: &str, n: i64) -> Task {
    let mut t = task(n);
    t.tenant = tenant.into();
    t.queue_name = queue.into();
    t
}

fn req(worker: &str, queues: &[&str], max: usize) -> AcquireRequest {
    AcquireRequest {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        worker: worker.into(),
        max,
        lease_for: LEASE,
        block_for: Duration::ZERO,
        tenant_room: Default::default(),
        tenant_caps: Default::default(),
        tenant_rates: Default::default(),
    }
}

async fn take<B: Broker>(b: &B, worker: &str, max: usize) -> Vec<Leased> {
    b.acquire(&req(worker, &[Q], max)).await.expect("acquire")
}

async fn take_one<B: Broker>(b: &B, worker: &str) -> Leased {
    let mut got = take(b, worker, 1).await;
    assert_eq!(got.len(), 1, "expected one task");
    got.remove(0)
}

async fn get<B: Broker>(b: &B, id: TaskId) -> Task {
    b.task(T, id).await.expect("task").expect("task is stored")
}

fn error(kind: &str, retryable: bool) -> TaskError {
    TaskError {
        kind: kind.into(),
        message: format!("{kind} happened"),
        retryable,
        handler_index: Some(0),
    }
}

fn checkpoint(index: u32, log: &str) -> Checkpoint {
    let mut args = ArgsMap::new();
    args.insert("step".into(), index.into());
    args.insert("empty_list".into(), serde_json::json!([]));
    args.insert("big".into(), serde_json::json!(9_007_199_254_740_993_u64));
    let mut metering = corral::metering::TaskMetering::default();
    metering.record(
        index.saturating_sub(1),
        1,
        corral::metering::CallMetering {
            fuel: 1_000 + u64::from(index),
            peak_memory_bytes: 1 << 16,
            wall_us: 700,
            instantiate_us: 30,
        },
    );
    Checkpoint {
        current_handler_index: index,
        args_map: args,
        result_log: log.into(),
        log: format!("[{index}:h]line\n"),
        metering,
    }
}

async fn ack_one<B: Broker>(b: &B, lease: &Lease, outcome: Outcome) -> Result<(), BrokerError> {
    let mut results = b.ack(&[(lease.clone(), outcome)]).await.expect("ack call");
    assert_eq!(results.len(), 1);
    results.remove(0)
}

fn is_lease_lost<T: std::fmt::Debug>(r: &Result<T, BrokerError>) -> bool {
    matches!(r, Err(BrokerError::LeaseLost { .. }))
}

pub async fn enqueue_then_acquire_gives_fifo_leases<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let tasks: Vec<Task> = (0..3).map(task).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    fx.broker.enqueue(tasks).await.expect("enqueue");
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.pending, stats.active), (3, 0));
    assert_eq!(get(&fx.broker, ids[0]).await.state, TaskState::Pending);

    let got = take(&fx.broker, "w1", 10).await;
    assert_eq!(got.iter().map(|l| l.task.task_id).collect::<Vec<_>>(), ids);
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l.lease.task_id, l.task.task_id);
        assert_eq!((l.lease.tenant.as_str(), l.lease.queue.as_str()), (T, Q));
        assert_eq!(l.lease.worker, "w1");
        assert!(l.lease.token >= 1);
        assert_eq!(l.task.state, TaskState::Active);
        assert_eq!(l.task.attempt, 1);
        assert_eq!(l.task.args_map["n"], i as i64);
    }
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.pending, stats.active), (0, 3));
    let stored = get(&fx.broker, ids[1]).await;
    assert_eq!((stored.state, stored.attempt), (TaskState::Active, 1));
    assert!(take(&fx.broker, "w2", 10).await.is_empty());
}

pub async fn acquire_takes_at_most_max_from_the_queues_asked<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let mut tasks: Vec<Task> = (0..3).map(|n| task_in(T, "a", n)).collect();
    tasks.extend((0..2).map(|n| task_in(T, "b", n)));
    fx.broker.enqueue(tasks).await.expect("enqueue");
    let from_b = fx
        .broker
        .acquire(&req("w", &["b"], 10))
        .await
        .expect("acquire");
    assert_eq!(from_b.len(), 2);
    assert!(
        from_b
            .iter()
            .all(|l| l.task.queue_name == "b" && l.lease.queue == "b")
    );
    let a1 = fx
        .broker
        .acquire(&req("w", &["a"], 2))
        .await
        .expect("acquire");
    assert_eq!(a1.len(), 2);
    let a2 = fx
        .broker
        .acquire(&req("w", &["a", "b"], 2))
        .await
        .expect("acquire");
    assert_eq!(a2.len(), 1);
    assert!(
        fx.broker
            .acquire(&req("w", &["a", "b"], 2))
            .await
            .expect("acquire")
            .is_empty()
    );
    assert!(
        fx.broker
            .acquire(&req("w", &["a"], 0))
            .await
            .expect("acquire")
            .is_empty()
    );
}

pub async fn duplicates_and_invalid_tasks_are_refused<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    match fx.broker.enqueue(vec![t.clone()]).await {
        Err(BrokerError::Duplicate { task_id, .. }) => assert_eq!(task_id, t.task_id),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    let good = task(2);
    let mut bad = task(3);
    bad.job_name = " ".into();
    match fx.broker.enqueue(vec![good.clone(), bad]).await {
        Err(BrokerError::Invalid { reason, .. }) => {
            assert!(reason.contains("job_name"), "{reason}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        fx.broker
            .task(T, good.task_id)
            .await
            .expect("task")
            .is_none()
    );
    // Metering is the workers' to write: a task enqueued with some, as if
    // it had run already, is refused.
    let mut forged = task(4);
    forged.metering = checkpoint(1, "").metering;
    match fx.broker.enqueue(vec![forged]).await {
        Err(BrokerError::Invalid { reason, .. }) => {
            assert!(reason.contains("metering"), "{reason}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(fx.broker.stats(T, Q).await.expect("stats").pending, 1);
}

pub async fn update_saves_progress_only_under_the_current_token<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let l = take_one(&fx.broker, "w").await;
    let cp = checkpoint(1, "first line");
    fx.broker.update(&l.lease, &cp).await.expect("update");
    let stored = get(&fx.broker, t.task_id).await;
    assert_eq!(stored.current_handler_index, 1);
    assert_eq!(stored.result_log, "first line");
    assert_eq!(stored.args_map, cp.args_map, "args survive byte for byte");
    assert_eq!(stored.log, cp.log);
    let mut billed = cp.metering.clone();
    billed.billed();
    assert_eq!(
        stored.metering, billed,
        "stored progress is billed progress"
    );
    assert_eq!(stored.original_args_map, t.original_args_map);
    assert_eq!(stored.state, TaskState::Active);

    let stale = Lease {
        token: l.lease.token + 1,
        ..l.lease.clone()
    };
    assert!(is_lease_lost(
        &fx.broker.update(&stale, &checkpoint(2, "x")).await
    ));
    let stranger = Lease {
        task_id: TaskId::new(),
        ..l.lease.clone()
    };
    assert!(is_lease_lost(
        &fx.broker.update(&stranger, &checkpoint(2, "x")).await
    ));
    assert_eq!(get(&fx.broker, t.task_id).await.current_handler_index, 1);
}

pub async fn completing_stores_the_result_and_repeats_are_harmless<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let l = take_one(&fx.broker, "w").await;
    let done = checkpoint(3, "a\nb\nc");
    ack_one(&fx.broker, &l.lease, Outcome::Completed(done.clone()))
        .await
        .expect("ack");
    let stored = get(&fx.broker, t.task_id).await;
    assert_eq!(stored.state, TaskState::Completed);
    assert_eq!(stored.result_log, "a\nb\nc");
    assert_eq!(stored.current_handler_index, 3);
    assert_eq!(stored.args_map, done.args_map);
    assert_eq!(stored.error, None);
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.active, stats.completed), (0, 1));

    // The same ack again (its first reply was lost): accepted, no change.
    ack_one(&fx.broker, &l.lease, Outcome::Completed(done))
        .await
        .expect("repeat ack");
    assert_eq!(fx.broker.stats(T, Q).await.expect("stats").completed, 1);
    // A different outcome, or the lease used after the fact: refused.
    assert!(is_lease_lost(
        &ack_one(&fx.broker, &l.lease, Outcome::Dead(error("late", false))).await
    ));
    assert!(is_lease_lost(
        &fx.broker.update(&l.lease, &checkpoint(1, "late")).await
    ));
    assert_eq!(get(&fx.broker, t.task_id).await.state, TaskState::Completed);
}

pub async fn a_retry_waits_for_its_time_and_keeps_its_error<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let l = take_one(&fx.broker, "w").await;
    fx.broker
        .update(&l.lease, &checkpoint(1, "one"))
        .await
        .expect("update");
    let at = clock::add(fx.clock.now(), Duration::from_secs(10));
    let err = error("flaky", true);
    ack_one(
        &fx.broker,
        &l.lease,
        Outcome::Retry {
            error: err.clone(),
            at,
        },
    )
    .await
    .expect("ack");
    let stored = get(&fx.broker, t.task_id).await;
    assert_eq!(stored.state, TaskState::Retrying);
    assert_eq!(stored.error.as_ref(), Some(&err));
    assert_eq!(stored.run_at, Some(at));
    assert_eq!(fx.broker.stats(T, Q).await.expect("stats").scheduled, 1);
    assert!(take(&fx.broker, "w", 1).await.is_empty(), "not due yet");

    fx.clock.advance(Duration::from_secs(11));
    let again = take_one(&fx.broker, "w").await;
    assert_eq!(again.task.task_id, t.task_id);
    assert_eq!(again.task.attempt, 2);
    assert!(again.lease.token > l.lease.token);
    assert_eq!(
        again.task.current_handler_index, 1,
        "resumes at its checkpoint"
    );
    assert_eq!(again.task.result_log, "one");
    assert_eq!(
        again.task.error.as_ref(),
        Some(&err),
        "the last error stays visible"
    );
    assert!(is_lease_lost(
        &fx.broker.update(&l.lease, &checkpoint(2, "old")).await
    ));
}

pub async fn a_dead_task_lands_in_the_dead_set<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let l = take_one(&fx.broker, "w").await;
    let err = error("fatal", false);
    ack_one(&fx.broker, &l.lease, Outcome::Dead(err.clone()))
        .await
        .expect("ack");
    let stored = get(&fx.broker, t.task_id).await;
    assert_eq!(
        (stored.state, stored.error.as_ref()),
        (TaskState::Dead, Some(&err))
    );
    assert_eq!(fx.broker.stats(T, Q).await.expect("stats").dead, 1);
    let dead = fx.broker.dead(T, Q, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, t.task_id);
    assert_eq!(dead[0].error.as_ref(), Some(&err));
    assert!(
        fx.broker
            .dead(T, "other", 10)
            .await
            .expect("dead")
            .is_empty()
    );
}

pub async fn release_hands_back_to_the_front_without_counting<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let (a, b) = (task(1), task(2));
    fx.broker
        .enqueue(vec![a.clone(), b.clone()])
        .await
        .expect("enqueue");
    let first = take_one(&fx.broker, "w").await;
    assert_eq!(first.task.task_id, a.task_id);
    ack_one(&fx.broker, &first.lease, Outcome::Release)
        .await
        .expect("release");
    let stored = get(&fx.broker, a.task_id).await;
    assert_eq!((stored.state, stored.attempt), (TaskState::Pending, 0));
    ack_one(&fx.broker, &first.lease, Outcome::Release)
        .await
        .expect("repeat release");
    let again = take_one(&fx.broker, "w2").await;
    assert_eq!(
        again.task.task_id, a.task_id,
        "released task is next in line"
    );
    assert_eq!(again.task.attempt, 1);
    assert!(again.lease.token > first.lease.token);
    assert!(is_lease_lost(
        &ack_one(&fx.broker, &first.lease, Outcome::Release).await
    ));
    assert_eq!(take_one(&fx.broker, "w").await.task.task_id, b.task_id);
}

pub async fn heartbeats_keep_leases_and_name_the_lost_ones<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    fx.broker
        .enqueue(vec![task(1), task(2)])
        .await
        .expect("enqueue");
    let got = take(&fx.broker, "w", 2).await;
    let leases: Vec<Lease> = got.iter().map(|l| l.lease.clone()).collect();
    fx.clock.advance(Duration::from_secs(20));
    let lost = fx
        .broker
        .heartbeat(&leases, LEASE)
        .await
        .expect("heartbeat");
    assert!(lost.is_empty(), "{lost:?}");
    fx.clock.advance(Duration::from_secs(20));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(m.recovered, 0, "heartbeat moved the expiry");
    // Only the first lease is kept alive from here.
    let lost = fx
        .broker
        .heartbeat(&leases[..1], LEASE)
        .await
        .expect("heartbeat");
    assert!(lost.is_empty());
    fx.clock.advance(Duration::from_secs(15));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(m.recovered, 1);
    let lost = fx
        .broker
        .heartbeat(&leases, LEASE)
        .await
        .expect("heartbeat");
    assert_eq!(lost, vec![leases[1].task_id]);
    let stranger = Lease {
        task_id: TaskId::new(),
        ..leases[0].clone()
    };
    assert_eq!(
        fx.broker
            .heartbeat(std::slice::from_ref(&stranger), LEASE)
            .await
            .expect("heartbeat"),
        vec![stranger.task_id]
    );
}

pub async fn an_expired_lease_is_recovered_and_the_old_holder_fenced<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let old = take_one(&fx.broker, "w1").await;
    fx.broker
        .update(&old.lease, &checkpoint(1, "before the crash"))
        .await
        .expect("update");
    fx.clock.advance(LEASE + Duration::from_secs(1));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!((m.recovered, m.expired_dead), (1, 0));
    assert_eq!(get(&fx.broker, t.task_id).await.state, TaskState::Pending);
    let new = take_one(&fx.broker, "w2").await;
    assert_eq!(new.task.attempt, 2);
    assert!(new.lease.token > old.lease.token);
    assert_eq!(
        new.task.current_handler_index, 1,
        "resumes from the checkpoint"
    );
    assert_eq!(new.task.result_log, "before the crash");

    assert!(is_lease_lost(
        &fx.broker.update(&old.lease, &checkpoint(2, "zombie")).await
    ));
    assert!(is_lease_lost(
        &ack_one(
            &fx.broker,
            &old.lease,
            Outcome::Completed(checkpoint(3, "zombie"))
        )
        .await
    ));
    assert_eq!(
        fx.broker
            .heartbeat(std::slice::from_ref(&old.lease), LEASE)
            .await
            .expect("heartbeat"),
        vec![t.task_id]
    );
    ack_one(
        &fx.broker,
        &new.lease,
        Outcome::Completed(checkpoint(3, "done")),
    )
    .await
    .expect("ack");
    assert_eq!(get(&fx.broker, t.task_id).await.result_log, "done");
}

pub async fn expiry_on_the_last_attempt_is_death<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let mut t = task(1);
    t.max_attempts = 2;
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    for attempt in 1..=2 {
        let l = take_one(&fx.broker, "w").await;
        assert_eq!(l.task.attempt, attempt);
        fx.broker
            .update(&l.lease, &checkpoint(2, "half"))
            .await
            .expect("update");
        fx.clock.advance(LEASE + Duration::from_secs(1));
        let m = fx.broker.maintain().await.expect("maintain");
        assert_eq!(
            (m.recovered, m.expired_dead),
            if attempt == 1 { (1, 0) } else { (0, 1) }
        );
    }
    let stored = get(&fx.broker, t.task_id).await;
    assert_eq!(stored.state, TaskState::Dead);
    let err = stored.error.expect("an error");
    assert_eq!(err.kind, "lease_expired");
    assert!(!err.retryable);
    assert_eq!(err.handler_index, Some(2));
    assert!(err.message.contains("attempt 2 of 2"), "{}", err.message);
    assert_eq!(fx.broker.dead(T, Q, 5).await.expect("dead").len(), 1);
    assert!(take(&fx.broker, "w", 1).await.is_empty());
}

pub async fn delayed_tasks_wait_for_their_time<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let now = fx.clock.now();
    let mut a = task(1);
    a.run_at = Some(clock::add(now, Duration::from_secs(60)));
    let mut b = task(2);
    b.run_at = Some(clock::add(now, Duration::from_secs(120)));
    let mut past = task(3);
    past.run_at = Some(now - chrono::Duration::seconds(5));
    fx.broker
        .enqueue(vec![a.clone(), b.clone(), past.clone()])
        .await
        .expect("enqueue");
    assert_eq!(get(&fx.broker, a.task_id).await.state, TaskState::Scheduled);
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.pending, stats.scheduled), (1, 2));
    let first = take_one(&fx.broker, "w").await;
    assert_eq!(first.task.task_id, past.task_id);
    ack_one(
        &fx.broker,
        &first.lease,
        Outcome::Completed(checkpoint(1, "x")),
    )
    .await
    .expect("ack");
    assert!(take(&fx.broker, "w", 5).await.is_empty());

    fx.clock.advance(Duration::from_secs(61));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(m.promoted, 1, "maintenance makes due tasks pending");
    assert_eq!(get(&fx.broker, a.task_id).await.state, TaskState::Pending);
    let second = take_one(&fx.broker, "w").await;
    assert_eq!(second.task.task_id, a.task_id);
    ack_one(
        &fx.broker,
        &second.lease,
        Outcome::Completed(checkpoint(1, "x")),
    )
    .await
    .expect("ack");

    fx.clock.advance(Duration::from_secs(60));
    // No maintenance pass: acquire itself sees the due task.
    assert_eq!(take_one(&fx.broker, "w").await.task.task_id, b.task_id);
}

pub async fn finished_tasks_go_after_their_retention_time<K: Backend>() {
    let retention = Retention {
        completed_ttl: Duration::from_secs(60),
        dead_ttl: Duration::from_secs(600),
        ..Retention::default()
    };
    let fx = K::make(retention).await;
    let (a, b) = (task(1), task(2));
    fx.broker
        .enqueue(vec![a.clone(), b.clone()])
        .await
        .expect("enqueue");
    let la = take_one(&fx.broker, "w").await;
    let lb = take_one(&fx.broker, "w").await;
    ack_one(
        &fx.broker,
        &la.lease,
        Outcome::Completed(checkpoint(1, "a")),
    )
    .await
    .expect("ack");
    ack_one(&fx.broker, &lb.lease, Outcome::Dead(error("fatal", false)))
        .await
        .expect("ack");
    fx.clock.advance(Duration::from_secs(30));
    assert_eq!(fx.broker.maintain().await.expect("maintain").trimmed, 0);
    assert!(fx.broker.task(T, a.task_id).await.expect("task").is_some());
    fx.clock.advance(Duration::from_secs(31));
    assert_eq!(fx.broker.maintain().await.expect("maintain").trimmed, 1);
    assert!(fx.broker.task(T, a.task_id).await.expect("task").is_none());
    assert!(fx.broker.task(T, b.task_id).await.expect("task").is_some());
    fx.clock.advance(Duration::from_secs(600));
    assert_eq!(fx.broker.maintain().await.expect("maintain").trimmed, 1);
    assert!(fx.broker.task(T, b.task_id).await.expect("task").is_none());
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.completed, stats.dead), (0, 0));
}

pub async fn finished_sets_keep_only_the_newest<K: Backend>() {
    let retention = Retention {
        max_completed: 3,
        max_dead: 2,
        ..Retention::default()
    };
    let fx = K::make(retention).await;
    let tasks: Vec<Task> = (0..9).map(task).collect();
    fx.broker.enqueue(tasks.clone()).await.expect("enqueue");
    for (i, expected) in tasks.iter().enumerate() {
        let l = take_one(&fx.broker, "w").await;
        assert_eq!(l.task.task_id, expected.task_id);
        let outcome = if i < 5 {
            Outcome::Completed(checkpoint(1, "done"))
        } else {
            Outcome::Dead(error("fatal", false))
        };
        ack_one(&fx.broker, &l.lease, outcome).await.expect("ack");
        fx.clock.advance(Duration::from_secs(1));
    }
    fx.broker.maintain().await.expect("maintain");
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.completed, stats.dead), (3, 2));
    for (i, t) in tasks.iter().enumerate() {
        let kept = fx.broker.task(T, t.task_id).await.expect("task").is_some();
        let expect = (2..5).contains(&i) || (7..9).contains(&i);
        assert_eq!(kept, expect, "task {i}");
    }
    let dead = fx.broker.dead(T, Q, 10).await.expect("dead");
    let dead_ids: Vec<TaskId> = dead.iter().map(|t| t.task_id).collect();
    assert_eq!(
        dead_ids,
        vec![tasks[8].task_id, tasks[7].task_id],
        "newest first"
    );
}

/// An acquire of up to 4 tasks by `worker`, waiting up to two minutes, in
/// the background.
fn spawn_waiting_acquire<B: Broker + Clone>(
    broker: &B,
    worker: &str,
) -> tokio::task::JoinHandle<Result<Vec<Leased>, BrokerError>> {
    let broker = broker.clone();
    let mut r = req(worker, &[Q], 4);
    r.block_for = Duration::from_secs(120);
    tokio::spawn(async move { broker.acquire(&r).await })
}

pub async fn a_blocked_acquire_wakes_for_an_enqueue<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let before = K::waiting(&fx).await;
    let waiting = spawn_waiting_acquire(&fx.broker, "w");
    until_an_acquire_waits::<K>(&fx, before).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the blocked acquire woke up long before its block_for")
        .expect("join")
        .expect("acquire");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.task_id, t.task_id);
}

pub async fn a_blocked_acquire_wakes_for_a_recovered_task<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    let first = take_one(&fx.broker, "w1").await;
    let before = K::waiting(&fx).await;
    let waiting = spawn_waiting_acquire(&fx.broker, "w2");
    until_an_acquire_waits::<K>(&fx, before).await;
    fx.clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(fx.broker.maintain().await.expect("maintain").recovered, 1);
    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the blocked acquire woke up long before its block_for")
        .expect("join")
        .expect("acquire");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lease.worker, "w2");
    assert!(got[0].lease.token > first.lease.token);
}

pub async fn an_idle_acquire_gives_up_after_block_for<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let mut r = req("w", &[Q, "other"], 8);
    r.block_for = Duration::from_millis(300);
    assert!(fx.broker.acquire(&r).await.expect("acquire").is_empty());
}

pub async fn an_interrupt_ends_a_wait_without_losing_work<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let before = K::waiting(&fx).await;
    let waiting = spawn_waiting_acquire(&fx.broker, "w");
    until_an_acquire_waits::<K>(&fx, before).await;
    // Another worker's interrupt does not end this wait. A wait ended by
    // mistake ends at once; the pause is room for that mistake to show, not
    // a synchronisation (a correct broker passes however long it is).
    fx.broker.interrupt(&"someone-else".to_owned()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "another worker's interrupt ended the wait"
    );
    fx.broker.interrupt(&"w".to_owned()).await;
    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the interrupted acquire returned long before its block_for")
        .expect("join")
        .expect("acquire");
    assert!(got.is_empty());
    // An interrupt sent while the worker is not waiting ends its next wait
    // (once), and never hides ready work.
    fx.broker.interrupt(&"w".to_owned()).await;
    let mut r = req("w", &[Q], 4);
    r.block_for = Duration::from_secs(120);
    let got = tokio::time::timeout(Duration::from_secs(30), fx.broker.acquire(&r))
        .await
        .expect("the early interrupt ended the next wait")
        .expect("acquire");
    assert!(got.is_empty());
    let t = task(1);
    fx.broker.enqueue(vec![t.clone()]).await.expect("enqueue");
    fx.broker.interrupt(&"w".to_owned()).await;
    let got = fx.broker.acquire(&r).await.expect("acquire");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.task_id, t.task_id);
}

pub async fn tenant_room_limits_each_tenant<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    fx.broker
        .enqueue((0..10).map(|n| task_in("acme", Q, n)).collect())
        .await
        .expect("enqueue");
    fx.broker
        .enqueue((0..10).map(|n| task_in("beta", Q, n)).collect())
        .await
        .expect("enqueue");
    let count =
        |got: &[Leased], tenant: &str| got.iter().filter(|l| l.task.tenant == tenant).count();
    let mut r = req("w", &[Q], 12);
    r.tenant_room = [("acme".to_owned(), 0)].into_iter().collect();
    let got = fx.broker.acquire(&r).await.expect("acquire");
    assert_eq!((count(&got, "acme"), count(&got, "beta")), (0, 10));
    r.tenant_room = [("acme".to_owned(), 3)].into_iter().collect();
    let got = fx.broker.acquire(&r).await.expect("acquire");
    assert_eq!((count(&got, "acme"), count(&got, "beta")), (3, 0));
    r.tenant_room = [("acme".to_owned(), 100)].into_iter().collect();
    let got = fx.broker.acquire(&r).await.expect("acquire");
    assert_eq!((count(&got, "acme"), count(&got, "beta")), (7, 0));
}

pub async fn tenants_share_a_worker_fairly<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let flood: Vec<Task> = (0..20).map(|n| task_in("acme", Q, n)).collect();
    let trickle: Vec<Task> = (0..3).map(|n| task_in("beta", Q, n)).collect();
    fx.broker.enqueue(flood).await.expect("enqueue");
    fx.broker.enqueue(trickle).await.expect("enqueue");
    let count =
        |got: &[Leased], tenant: &str| got.iter().filter(|l| l.task.tenant == tenant).count();
    let got = take(&fx.broker, "w", 6).await;
    assert_eq!((count(&got, "acme"), count(&got, "beta")), (3, 3));
    for l in &got {
        assert_eq!(l.lease.tenant, l.task.tenant);
    }
    // One at a time, tenants take turns.
    fx.broker
        .enqueue((0..2).map(|n| task_in("beta", Q, n)).collect())
        .await
        .expect("enqueue");
    let mut singles = Vec::new();
    for _ in 0..4 {
        singles.extend(take(&fx.broker, "w", 1).await);
    }
    assert_eq!((count(&singles, "acme"), count(&singles, "beta")), (2, 2));
    assert_ne!(singles[0].task.tenant, singles[1].task.tenant);
}

pub async fn malformed_entries_go_dead_and_acquire_carries_on<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let good_raw = task(7);
    let wrong_tenant = task_in("mallory", Q, 1);
    let mut missing = serde_json::to_value(task(8)).expect("json");
    missing.as_object_mut().expect("object").remove("job_name");
    // The nil id names no task (a stored record that leaves its id out reads
    // as naming it).
    let named_nil = task(10);
    let nil_id = String::from_utf8(named_nil.to_json())
        .expect("utf-8")
        .replace(
            &named_nil.task_id.to_string(),
            &uuid::Uuid::nil().to_string(),
        );
    let entries: Vec<Vec<u8>> = vec![
        b"{not json at all".to_vec(),
        serde_json::to_vec(&missing).expect("json"),
        nil_id.into_bytes(),
        good_raw.to_json(),
        wrong_tenant.to_json(),
        good_raw.to_json(),
    ];
    for raw in entries {
        fx.broker.enqueue_raw(T, Q, raw).await.expect("raw push");
    }
    let normal = task(9);
    fx.broker
        .enqueue(vec![normal.clone()])
        .await
        .expect("enqueue");

    let got = take(&fx.broker, "w", 10).await;
    let ids: Vec<TaskId> = got.iter().map(|l| l.task.task_id).collect();
    assert_eq!(ids, vec![good_raw.task_id, normal.task_id]);
    assert_eq!(got[0].task.original_args_map, good_raw.original_args_map);
    assert_eq!(
        (got[0].task.state, got[0].task.attempt),
        (TaskState::Active, 1)
    );
    assert!(take(&fx.broker, "w", 10).await.is_empty());

    let dead = fx.broker.dead(T, Q, 10).await.expect("dead");
    assert_eq!(dead.len(), 5, "{dead:#?}");
    let reasons: Vec<String> = dead
        .iter()
        .map(|t| {
            assert_eq!(t.state, TaskState::Dead);
            let e = t.error.as_ref().expect("a reason");
            assert_eq!(e.kind, "malformed");
            assert!(!e.retryable);
            e.message.clone()
        })
        .collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(
        has("key must be a string") || has("expected"),
        "{reasons:?}"
    );
    assert!(has("missing field `job_name`"), "{reasons:?}");
    assert!(has("nil UUID"), "{reasons:?}");
    assert!(has("`mallory`"), "{reasons:?}");
    assert!(
        has(&format!("task_id {} already exists", good_raw.task_id)),
        "{reasons:?}"
    );
    assert!(
        dead.iter()
            .any(|t| t.original_args_map["raw"] == "{not json at all")
    );
    // A dead stand-in is readable by its id like any task.
    let any = &dead[0];
    assert_eq!(get(&fx.broker, any.task_id).await.state, TaskState::Dead);
    let stats = fx.broker.stats(T, Q).await.expect("stats");
    assert_eq!((stats.pending, stats.active, stats.dead), (0, 2, 5));
}

pub async fn tenants_see_only_their_own_tasks<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let mine = task_in("acme", "q1", 1);
    fx.broker
        .enqueue(vec![mine.clone()])
        .await
        .expect("enqueue");
    assert!(
        fx.broker
            .task("acme", mine.task_id)
            .await
            .expect("task")
            .is_some()
    );
    assert!(
        fx.broker
            .task("other", mine.task_id)
            .await
            .expect("task")
            .is_none()
    );
    assert!(
        fx.broker
            .task(T, mine.task_id)
            .await
            .expect("task")
            .is_none()
    );
    assert_eq!(
        fx.broker.stats("other", "q1").await.expect("stats").pending,
        0
    );
    assert_eq!(
        fx.broker.stats("acme", "q2").await.expect("stats").pending,
        0
    );
    assert_eq!(
        fx.broker.stats("acme", "q1").await.expect("stats").pending,
        1
    );
    // Odd names are names, not key syntax.
    let odd = task_in("a:{b}", "c}:d", 1);
    fx.broker.enqueue(vec![odd.clone()]).await.expect("enqueue");
    assert!(
        fx.broker
            .task("a:{b}", odd.task_id)
            .await
            .expect("task")
            .is_some()
    );
    let got = fx
        .broker
        .acquire(&req("w", &["c}:d"], 5))
        .await
        .expect("acquire");
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].lease.tenant.as_str(), got[0].lease.queue.as_str()),
        ("a:{b}", "c}:d")
    );
}

pub async fn a_bulk_enqueue_keeps_its_order<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let tasks: Vec<Task> = (0..2500).map(task).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    fx.broker.enqueue(tasks).await.expect("enqueue");
    assert_eq!(fx.broker.stats(T, Q).await.expect("stats").pending, 2500);
    let mut taken = Vec::new();
    while taken.len() < ids.len() {
        let got = take(&fx.broker, "w", 1000).await;
        assert!(!got.is_empty(), "ran dry after {}", taken.len());
        taken.extend(got.into_iter().map(|l| l.task.task_id));
    }
    assert_eq!(taken.len(), ids.len());
    let first_difference = taken.iter().zip(&ids).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "tasks came out of order");
}

/// How a batch of one-task enqueues, sent all at once, was answered.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answers {
    stored: usize,
    full: usize,
    too_many_queues: usize,
}

/// Enqueues each task in a call of its own, all calls at once, within
/// `quota`; any answer but stored or a quota refusal fails the test.
async fn enqueue_at_once<B: Broker>(b: &B, tasks: Vec<Task>, quota: &TenantQuota) -> Answers {
    let answers = join_all(tasks.into_iter().map(|t| b.enqueue_within(vec![t], quota))).await;
    let mut out = Answers::default();
    for answer in answers {
        match answer {
            Ok(()) => out.stored += 1,
            Err(BrokerError::Full { .. }) => out.full += 1,
            Err(BrokerError::TooManyQueues { .. }) => out.too_many_queues += 1,
            Err(other) => panic!("unexpected enqueue error: {other}"),
        }
    }
    out
}

/// A task of `tenant` in a random one of `queues`, delayed up to a minute
/// one time in four.
fn quota_task(rng: &mut StdRng, now: DateTime<chrono::Utc>, tenant: &str, queues: &[&str]) -> Task {
    let queue = queues[rng.random_range(0..queues.len())];
    let mut t = task_in(tenant, queue, rng.random_range(0..1000));
    if rng.random_ratio(1, 4) {
        t.run_at = Some(clock::add(
            now,
            Duration::from_secs(rng.random_range(1..60)),
        ));
    }
    t
}

/// What the broker counts as `tenant`'s queued tasks.
async fn queued<B: Broker>(b: &B, tenant: &str) -> u64 {
    let s = b.tenant_stats(tenant).await.expect("tenant stats");
    (s.pending + s.scheduled) as u64
}

pub async fn max_queued_holds_under_concurrency_and_stays_exact<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let mut rng = StdRng::seed_from_u64(0x000c_0a1a);
    const LIMIT: u64 = 20;
    let quota = TenantQuota {
        max_queued: LIMIT,
        max_queues: 8,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    let (tenant, queues) = ("acme", ["q0", "q1", "q2"]);
    // 128 enqueues at once against an empty tenant: exactly the limit.
    let tasks = (0..128)
        .map(|_| quota_task(&mut rng, fx.clock.now(), tenant, &queues))
        .collect();
    let got = enqueue_at_once(&fx.broker, tasks, &quota).await;
    assert_eq!((got.stored, got.full), (20, 108), "{got:?}");
    // Another tenant's room is its own.
    fx.broker
        .enqueue_within(vec![task_in("other", "q0", 1)], &quota)
        .await
        .expect("another tenant enqueues");
    // The model: how many of the tenant's tasks are pending, scheduled or
    // retrying. Random rounds move tasks through every transition; after
    // each, a burst of enqueues must be stored exactly up to the limit.
    let mut model = LIMIT;
    for round in 0..10 {
        let want = rng.random_range(1..=12);
        let got = fx
            .broker
            .acquire(&AcquireRequest {
                tenant_room: [("other".to_owned(), 0)].into_iter().collect(),
                tenant_caps: Default::default(),
                tenant_rates: Default::default(),
                ..req("w", &queues, want)
            })
            .await
            .expect("acquire");
        model -= got.len() as u64;
        let mut outcomes = Vec::new();
        let mut abandoned = 0;
        for l in got {
            let outcome = match rng.random_range(0..5) {
                0 => Outcome::Completed(Checkpoint::of(&l.task)),
                1 => {
                    model += 1;
                    let at =
                        clock::add(fx.clock.now(), Duration::from_secs(rng.random_range(0..20)));
                    Outcome::Retry {
                        error: error("flaky", true),
                        at,
                    }
                }
                2 => {
                    model += 1;
                    Outcome::Release
                }
                3 => Outcome::Dead(error("fatal", false)),
                _ => {
                    // Left to expire, as a killed worker's lease does.
                    abandoned += 1;
                    continue;
                }
            };
            outcomes.push((l.lease, outcome));
        }
        let acked = fx.broker.ack(&outcomes).await.expect("ack");
        assert!(acked.iter().all(Result::is_ok), "{acked:?}");
        if abandoned > 0 || rng.random_bool(0.5) {
            fx.clock.advance(LEASE + Duration::from_secs(1));
            let m = fx.broker.maintain().await.expect("maintain");
            assert_eq!(m.recovered + m.expired_dead, abandoned, "round {round}");
            model += m.recovered as u64;
        }
        assert_eq!(queued(&fx.broker, tenant).await, model, "round {round}");
        let extra = rng.random_range(1..40);
        let tasks = (0..(LIMIT - model) as usize + extra)
            .map(|_| quota_task(&mut rng, fx.clock.now(), tenant, &queues))
            .collect();
        let got = enqueue_at_once(&fx.broker, tasks, &quota).await;
        assert_eq!(
            (got.stored as u64, got.full),
            (LIMIT - model, extra),
            "round {round}"
        );
        model = LIMIT;
        assert_eq!(queued(&fx.broker, tenant).await, model, "round {round}");
    }
}

pub async fn queue_names_are_bounded_per_tenant<K: Backend>() {
    let retention = Retention {
        completed_ttl: Duration::from_secs(60),
        ..Retention::default()
    };
    let fx = K::make(retention).await;
    let mut rng = StdRng::seed_from_u64(0x0009_0e0e);
    const MAX: u32 = 6;
    let quota = TenantQuota {
        max_queued: 1_000_000,
        max_queues: MAX,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    let tenant = "acme";
    // MAX + k new names at once, some of them odd: exactly MAX are created.
    let extra = rng.random_range(3..12);
    let names: Vec<String> = (0..MAX as usize + extra)
        .map(|i| match i % 3 {
            0 => format!("n{i}"),
            1 => format!("n{i}:{{x}}"),
            _ => format!("n{i}-{}", rng.random::<u32>()),
        })
        .collect();
    let tasks: Vec<Task> = names.iter().map(|q| task_in(tenant, q, 1)).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    let got = enqueue_at_once(&fx.broker, tasks, &quota).await;
    assert_eq!(
        (got.stored, got.too_many_queues),
        (MAX as usize, extra),
        "{got:?}"
    );
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for (name, id) in names.iter().zip(&ids) {
        match fx.broker.task(tenant, *id).await.expect("task") {
            Some(_) => held.push(name.clone()),
            None => refused.push(name.clone()),
        }
    }
    assert_eq!(held.len(), MAX as usize);
    // A name it holds takes more tasks, a new one does not; another tenant
    // is not limited by this one's names.
    for name in &held {
        fx.broker
            .enqueue_within(vec![task_in(tenant, name, 2)], &quota)
            .await
            .expect("a held queue takes more");
    }
    match fx
        .broker
        .enqueue_within(vec![task_in(tenant, &refused[0], 3)], &quota)
        .await
    {
        Err(BrokerError::TooManyQueues { .. }) => {}
        other => panic!("expected TooManyQueues, got {other:?}"),
    }
    fx.broker
        .enqueue_within(vec![task_in("other", &refused[0], 3)], &quota)
        .await
        .expect("another tenant's names are its own");
    // A queue whose last record is gone frees its name.
    let freed = &held[0];
    let got = fx
        .broker
        .acquire(&req("w", &[freed.as_str()], 10))
        .await
        .expect("acquire");
    assert_eq!(got.len(), 2);
    let outcomes: Vec<(Lease, Outcome)> = got
        .into_iter()
        .map(|l| {
            let cp = Checkpoint::of(&l.task);
            (l.lease, Outcome::Completed(cp))
        })
        .collect();
    fx.broker.ack(&outcomes).await.expect("ack");
    let late = task_in(tenant, &refused[1], 4);
    assert!(
        matches!(
            fx.broker.enqueue_within(vec![late.clone()], &quota).await,
            Err(BrokerError::TooManyQueues { .. })
        ),
        "finished tasks still hold their queue's name"
    );
    fx.clock.advance(Duration::from_secs(61));
    assert_eq!(fx.broker.maintain().await.expect("maintain").trimmed, 2);
    let got = enqueue_at_once(
        &fx.broker,
        vec![late, task_in(tenant, &refused[2], 5)],
        &quota,
    )
    .await;
    assert_eq!((got.stored, got.too_many_queues), (1, 1), "{got:?}");
}

/// Queue names for the idle-fleet tests: generated, some with characters
/// that need encoding.
fn idle_names(rng: &mut StdRng, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("idle-{i}"),
            1 => format!("idle:{i}:{{{}}}", rng.random::<u16>()),
            2 => format!("idle.{i}.{:x}", rng.random::<u64>()),
            _ => format!("idle_{i}"),
        })
        .collect()
}

/// Gives each of `tenant`'s `names` one task and finishes it (completed,
/// or dead one time in three): the queues hold a finished record each and
/// nothing else.
async fn finish_one_in_each<B: Broker>(b: &B, rng: &mut StdRng, tenant: &str, names: &[String]) {
    let tasks: Vec<Task> = names.iter().map(|q| task_in(tenant, q, 1)).collect();
    for chunk in tasks.chunks(500) {
        let calls = chunk.iter().map(|t| b.enqueue(vec![t.clone()]));
        for r in join_all(calls).await {
            r.expect("enqueue");
        }
    }
    let mut leased = Vec::new();
    for chunk in names.chunks(500) {
        let calls = chunk
            .iter()
            .map(|q| async move { b.acquire(&req("w", &[q.as_str()], 1)).await });
        for got in join_all(calls).await {
            leased.extend(got.expect("acquire"));
        }
    }
    assert_eq!(leased.len(), names.len());
    let outcomes: Vec<(Lease, Outcome)> = leased
        .into_iter()
        .map(|l| {
            let outcome = if rng.random_ratio(1, 3) {
                Outcome::Dead(error("fatal", false))
            } else {
                Outcome::Completed(Checkpoint::of(&l.task))
            };
            (l.lease, outcome)
        })
        .collect();
    let acked = b.ack(&outcomes).await.expect("ack");
    assert!(acked.iter().all(Result::is_ok));
}

pub async fn idle_queues_cost_no_maintenance_and_due_work_is_still_done<K: Backend>() {
    let retention = Retention {
        completed_ttl: Duration::from_secs(3600),
        dead_ttl: Duration::from_secs(3600),
        ..Retention::default()
    };
    let fx = K::make(retention).await;
    let mut rng = StdRng::seed_from_u64(0x1d1e_0005);
    const N: usize = 5000;
    let names = idle_names(&mut rng, N);
    finish_one_in_each(&fx.broker, &mut rng, "idle", &names).await;
    // Thousands of queues, each with a finished record: nothing is due, so
    // a pass visits none of them.
    for _ in 0..3 {
        let m = fx.broker.maintain().await.expect("maintain");
        assert_eq!(m.queues_visited, 0, "{m:?}");
        assert_eq!((m.promoted, m.recovered, m.trimmed), (0, 0, 0));
    }
    // Work in two of them is still done exactly when due: a delayed task
    // in one, a lease that a (killed) worker lets run out in another.
    let (delayed_q, leased_q) = (&names[rng.random_range(0..N)], &names[N / 2]);
    let mut delayed = task_in("idle", delayed_q, 2);
    delayed.run_at = Some(clock::add(fx.clock.now(), Duration::from_secs(90)));
    fx.broker
        .enqueue(vec![delayed.clone(), task_in("idle", leased_q, 3)])
        .await
        .expect("enqueue");
    let held = fx
        .broker
        .acquire(&req("killed", &[leased_q.as_str()], 1))
        .await
        .expect("acquire");
    assert_eq!(held.len(), 1);
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(m.queues_visited, 0, "nothing is due yet: {m:?}");
    fx.clock.advance(LEASE + Duration::from_secs(1));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(
        (m.recovered, m.promoted, m.queues_visited),
        (1, 0, 1),
        "{m:?}"
    );
    assert_eq!(
        fx.broker.maintain().await.expect("maintain").queues_visited,
        0
    );
    fx.clock.advance(Duration::from_secs(58));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!(
        (m.promoted, m.queues_visited),
        (0, 0),
        "one second early: {m:?}"
    );
    fx.clock.advance(Duration::from_secs(1));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!((m.promoted, m.queues_visited), (1, 1), "due now: {m:?}");
    let got = fx
        .broker
        .acquire(&req("w", &[delayed_q.as_str(), leased_q.as_str()], 5))
        .await
        .expect("acquire");
    let mut ids: Vec<TaskId> = got.iter().map(|l| l.task.task_id).collect();
    ids.sort();
    let mut want = vec![delayed.task_id, held[0].task.task_id];
    want.sort();
    assert_eq!(ids, want);
    for l in &got {
        ack_one(
            &fx.broker,
            &l.lease,
            Outcome::Completed(Checkpoint::of(&l.task)),
        )
        .await
        .expect("ack");
    }
    // Retention still trims every queue, each visited once, when its time
    // comes (the first records an hour after they finished, the last two a
    // second later); then the fleet is idle again, and the queues are gone.
    // (A pass may stop after a bounded number of visits and leave the
    // rest, still due, to the next.)
    fx.clock.advance(Duration::from_secs(3599));
    let (mut trimmed, mut visited) = (0, 0);
    for _ in 0..10 {
        let m = fx.broker.maintain().await.expect("maintain");
        if m.queues_visited == 0 {
            break;
        }
        trimmed += m.trimmed;
        visited += m.queues_visited;
    }
    assert_eq!((trimmed, visited), (N, N));
    fx.clock.advance(Duration::from_secs(1));
    let m = fx.broker.maintain().await.expect("maintain");
    assert_eq!((m.trimmed, m.queues_visited), (2, 2), "{m:?}");
    let stats = fx.broker.tenant_stats("idle").await.expect("stats");
    assert_eq!(stats, Default::default());
    let quota = TenantQuota {
        max_queued: 10,
        max_queues: 1,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    fx.broker
        .enqueue_within(vec![task_in("idle", "fresh", 4)], &quota)
        .await
        .expect("the tenant's queue names were all freed");
}

/// One handler call's metering, as a worker records it.
fn call(fuel: u64, peak: u64) -> corral::metering::CallMetering {
    corral::metering::CallMetering {
        fuel,
        peak_memory_bytes: peak,
        wall_us: 1_000,
        instantiate_us: 10,
    }
}

pub async fn usage_bills_each_stored_call_once_by_tenant_and_day<K: Backend>() {
    use corral::metering::Usage;
    let fx = K::make(Retention::default()).await;
    let today = fx.clock.now().date_naive();
    let tasks: Vec<Task> = (0..4).map(task).collect();
    fx.broker.enqueue(tasks).await.expect("enqueue");
    fx.broker
        .enqueue(vec![task_in("other", "elsewhere", 9)])
        .await
        .expect("enqueue");
    let got = take(&fx.broker, "w", 4).await;
    assert!(got.iter().all(|l| l.task.tenant == T));
    assert_eq!(got.len(), 4);

    // Task 0: a checkpoint after its first handler (billed), then the
    // final checkpoint with the second call only unbilled.
    let mut t0 = got[0].task.clone();
    t0.metering.record(0, 1, call(100, 1 << 20));
    t0.current_handler_index = 1;
    fx.broker
        .update(&got[0].lease, &Checkpoint::of(&t0))
        .await
        .expect("update");
    t0.metering.billed();
    t0.metering.record(1, 1, call(50, 3 << 20));
    t0.current_handler_index = 2;
    let done = Outcome::Completed(Checkpoint::of(&t0));
    ack_one(&fx.broker, &got[0].lease, done.clone())
        .await
        .expect("ack");
    // The same ack again (its reply was lost): applied once, billed once.
    ack_one(&fx.broker, &got[0].lease, done)
        .await
        .expect("repeat");
    // Task 1 fails its call: the checkpoint bills the call, the retry
    // counts the task.
    let mut t1 = got[1].task.clone();
    t1.metering.record(0, 1, call(7, 1 << 16));
    fx.broker
        .update(&got[1].lease, &Checkpoint::of(&t1))
        .await
        .expect("update");
    let at = clock::add(fx.clock.now(), Duration::from_secs(60));
    ack_one(
        &fx.broker,
        &got[1].lease,
        Outcome::Retry {
            error: error("flaky", true),
            at,
        },
    )
    .await
    .expect("retry");
    ack_one(
        &fx.broker,
        &got[2].lease,
        Outcome::Dead(error("broken", false)),
    )
    .await
    .expect("dead");
    // A holder whose lease moved on bills nothing.
    let mut t3 = got[3].task.clone();
    t3.metering.record(0, 1, call(1_000_000, 64 << 20));
    let stale = Lease {
        token: got[3].lease.token + 1,
        ..got[3].lease.clone()
    };
    assert!(is_lease_lost(
        &fx.broker.update(&stale, &Checkpoint::of(&t3)).await
    ));
    assert!(is_lease_lost(
        &ack_one(&fx.broker, &stale, Outcome::Completed(Checkpoint::of(&t3))).await
    ));

    let usage = fx.broker.usage(T, today..=today).await.expect("usage");
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].day, today);
    assert_eq!(
        usage[0].usage,
        Usage {
            calls: 3,
            fuel: 157,
            wall_us: 3_000,
            instantiate_us: 30,
            peak_memory_bytes: 3 << 20,
            completed: 1,
            retried: 1,
            dead: 1,
        }
    );
    // Another tenant's counters are its own; other days have none.
    let other = fx
        .broker
        .usage("other", today..=today)
        .await
        .expect("usage");
    assert!(other.is_empty(), "{other:?}");
    let mut theirs = fx
        .broker
        .acquire(&req("w", &["elsewhere"], 1))
        .await
        .expect("acquire");
    assert_eq!(theirs.len(), 1);
    let l = theirs.remove(0);
    let mut t = l.task.clone();
    t.metering.record(0, 1, call(11, 1 << 16));
    ack_one(&fx.broker, &l.lease, Outcome::Completed(Checkpoint::of(&t)))
        .await
        .expect("ack");
    let other = fx
        .broker
        .usage("other", today..=today)
        .await
        .expect("usage");
    assert_eq!(
        other
            .iter()
            .map(|d| (d.usage.calls, d.usage.fuel, d.usage.completed))
            .collect::<Vec<_>>(),
        [(1, 11, 1)]
    );
    let ours = fx.broker.usage(T, today..=today).await.expect("usage");
    assert_eq!((ours[0].usage.calls, ours[0].usage.fuel), (3, 157));
    let yesterday = today.pred_opt().expect("a day before");
    let before = fx
        .broker
        .usage(T, yesterday..=yesterday)
        .await
        .expect("usage");
    assert!(before.is_empty(), "{before:?}");

    // The next day's work lands on the next day.
    fx.clock.advance(Duration::from_secs(24 * 3600));
    fx.broker.maintain().await.expect("maintain");
    let l = take_one(&fx.broker, "w").await;
    let mut t = l.task.clone();
    t.metering.record(0, 2, call(5, 1 << 16));
    ack_one(&fx.broker, &l.lease, Outcome::Completed(Checkpoint::of(&t)))
        .await
        .expect("ack");
    let tomorrow = today.succ_opt().expect("a day after");
    let both = fx.broker.usage(T, today..=tomorrow).await.expect("usage");
    assert_eq!(
        both.iter()
            .map(|d| (d.day, d.usage.calls, d.usage.fuel))
            .collect::<Vec<_>>(),
        [(today, 3, 157), (tomorrow, 1, 5)]
    );

    // On Redis, each day's counters expire: none is kept for ever.
    let mut usage_keys = 0;
    for port in &fx.ports {
        for key in redis_cli(*port, &["--scan", "--pattern", "*usage-*"]).lines() {
            let ttl: i64 = redis_cli(*port, &["TTL", key])
                .trim()
                .parse()
                .expect("a TTL");
            assert!(ttl > 0, "{key} has TTL {ttl}");
            usage_keys += 1;
        }
    }
    assert!(
        fx.ports.is_empty() || usage_keys >= 3,
        "{usage_keys} usage keys"
    );

    // Ranges are bounded: no query walks more days than are kept.
    let far = today + chrono::Days::new(u64::from(corral::metering::USAGE_KEPT_DAYS));
    assert!(matches!(
        fx.broker.usage(T, today..=far).await,
        Err(BrokerError::Invalid { .. })
    ));
    assert!(matches!(
        fx.broker.usage(T, tomorrow..=today).await,
        Err(BrokerError::Invalid { .. })
    ));
}

/// Every task of `tenant` that `list_page` shows, page by page (`limit`
/// per page), with the number of pages.
async fn all_pages<B: Broker>(b: &B, tenant: &str, query: PageQuery) -> (Vec<Task>, usize) {
    let mut query = query;
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let page = b.list_page(tenant, &query).await.expect("list_page");
        assert!(page.tasks.len() <= query.limit);
        out.extend(page.tasks);
        pages += 1;
        assert!(pages < 1000, "paging never ends");
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return (out, pages),
        }
    }
}

pub async fn pages_list_every_task_once_by_queue_and_state<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let mut ids = Vec::new();
    for n in 0..12 {
        let t = task_in("acme", if n % 3 == 0 { "mail" } else { Q }, n);
        ids.push(t.task_id);
        b.enqueue(vec![t]).await.expect("enqueue");
    }
    let leased = b.acquire(&req("w1", &[Q], 3)).await.expect("acquire");
    assert_eq!(leased.len(), 3);
    // Another tenant's tasks never show.
    b.enqueue(vec![task_in("other", Q, 99)])
        .await
        .expect("enqueue");
    ack_one(b, &leased[0].lease, Outcome::Dead(error("boom", false)))
        .await
        .expect("dead");
    ack_one(b, &leased[1].lease, Outcome::Completed(checkpoint(1, "ok")))
        .await
        .expect("completed");

    let (all, pages) = all_pages(
        b,
        "acme",
        PageQuery {
            limit: 5,
            ..PageQuery::default()
        },
    )
    .await;
    assert!(pages >= 3, "{pages} pages for 12 tasks at 5 a page");
    let mut seen: Vec<TaskId> = all.iter().map(|t| t.task_id).collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want, "every task once, and only acme's");
    // By queue in name order (default, then mail), then by state.
    assert!(all[8..].iter().all(|t| t.queue_name == "mail"));
    assert_eq!(all[0].state, TaskState::Pending);

    let (dead, _) = all_pages(
        b,
        "acme",
        PageQuery {
            state: Some(TaskState::Dead),
            limit: 2,
            ..PageQuery::default()
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, leased[0].lease.task_id);
    let (active, _) = all_pages(
        b,
        "acme",
        PageQuery {
            state: Some(TaskState::Active),
            queue: Some(Q.into()),
            limit: 10,
            cursor: None,
        },
    )
    .await;
    assert_eq!(active.len(), 1);
    let (pending, pages) = all_pages(
        b,
        "acme",
        PageQuery {
            state: Some(TaskState::Pending),
            queue: Some(Q.into()),
            limit: 2,
            cursor: None,
        },
    )
    .await;
    assert_eq!(pending.len(), 5);
    assert!(pages >= 3);
    // Newest first within a state.
    assert!(pending.windows(2).all(|w| w[0].task_id > w[1].task_id));
    assert!(matches!(
        b.list_page(
            "acme",
            &PageQuery {
                limit: 0,
                ..PageQuery::default()
            }
        )
        .await,
        Err(BrokerError::Invalid { .. })
    ));
    assert!(matches!(
        b.list_page(
            "acme",
            &PageQuery {
                limit: 5,
                cursor: Some("garbage".into()),
                ..PageQuery::default()
            }
        )
        .await,
        Err(BrokerError::Invalid { .. })
    ));
    let queues: Vec<String> = b
        .queues("acme")
        .await
        .expect("queues")
        .into_iter()
        .map(|q| q.queue)
        .collect();
    assert_eq!(queues, vec![Q.to_owned(), "mail".to_owned()]);
}

pub async fn retry_runs_a_dead_task_again_and_keeps_its_error<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let t = task(1);
    let id = t.task_id;
    b.enqueue(vec![t]).await.expect("enqueue");
    let l = take_one(b, "w1").await;
    b.update(&l.lease, &checkpoint(1, "step one"))
        .await
        .expect("checkpoint");
    ack_one(b, &l.lease, Outcome::Dead(error("boom", false)))
        .await
        .expect("dead");
    let unlimited = TenantQuota::UNLIMITED;
    // Only dead or cancelled tasks; another tenant's id is as missing.
    assert!(matches!(
        b.retry("other", id, &unlimited).await,
        Err(BrokerError::NotFound { .. })
    ));
    assert!(matches!(
        b.retry(T, TaskId::new(), &unlimited).await,
        Err(BrokerError::NotFound { .. })
    ));
    b.retry(T, id, &unlimited).await.expect("retry");
    let again = get(b, id).await;
    assert_eq!(again.state, TaskState::Pending);
    assert_eq!(again.attempt, 0);
    assert_eq!(again.error, None);
    assert_eq!(again.error_history.len(), 1);
    assert_eq!(again.error_history[0].kind, "boom");
    assert!(matches!(
        b.retry(T, id, &unlimited).await,
        Err(BrokerError::Conflict { .. })
    ));
    // It resumes from its checkpoint, attempts counted afresh.
    let l = take_one(b, "w1").await;
    assert_eq!(l.task.task_id, id);
    assert_eq!(l.task.attempt, 1);
    assert_eq!(l.task.current_handler_index, 1);
    ack_one(b, &l.lease, Outcome::Dead(error("again", false)))
        .await
        .expect("dead");

    // Every dead task of a queue, within the tenant's quota.
    let more: Vec<Task> = (2..5).map(task).collect();
    b.enqueue(more).await.expect("enqueue");
    for l in take(b, "w1", 3).await {
        ack_one(b, &l.lease, Outcome::Dead(error("boom", false)))
            .await
            .expect("dead");
    }
    assert_eq!(b.stats(T, Q).await.expect("stats").dead, 4);
    let tight = TenantQuota {
        max_queued: 3,
        max_queues: 10,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    assert!(matches!(
        b.retry_dead(T, Q, &tight).await,
        Err(BrokerError::Full { .. })
    ));
    assert_eq!(b.stats(T, Q).await.expect("stats").dead, 4, "refused whole");
    assert_eq!(b.retry_dead(T, Q, &unlimited).await.expect("retry_dead"), 4);
    let stats = b.stats(T, Q).await.expect("stats");
    assert_eq!((stats.dead, stats.pending), (0, 4));
    assert_eq!(queued(b, T).await, 4);
    assert_eq!(get(b, id).await.error_history.len(), 2);
}

pub async fn delete_and_purge_take_tasks_out_of_every_count<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let tasks: Vec<Task> = (0..10).map(task).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    b.enqueue(tasks).await.expect("enqueue");
    let mut later = task(50);
    later.run_at = Some(clock::add(fx.clock.now(), Duration::from_secs(3600)));
    let later_id = later.task_id;
    b.enqueue(vec![later]).await.expect("enqueue");
    let leased = take(b, "w1", 3).await;
    ack_one(b, &leased[0].lease, Outcome::Dead(error("boom", false)))
        .await
        .expect("dead");
    ack_one(b, &leased[1].lease, Outcome::Completed(checkpoint(1, "ok")))
        .await
        .expect("done");
    let active = leased[2].lease.task_id;
    assert_eq!(queued(b, T).await, 8);

    // Any state but active.
    assert!(matches!(
        b.delete(T, active).await,
        Err(BrokerError::Conflict { .. })
    ));
    assert!(matches!(
        b.delete("other", ids[5]).await,
        Err(BrokerError::NotFound { .. })
    ));
    b.delete(T, ids[5]).await.expect("delete pending");
    b.delete(T, later_id).await.expect("delete scheduled");
    b.delete(T, leased[0].lease.task_id)
        .await
        .expect("delete dead");
    assert!(b.task(T, ids[5]).await.expect("task").is_none());
    assert!(matches!(
        b.delete(T, ids[5]).await,
        Err(BrokerError::NotFound { .. })
    ));
    assert_eq!(queued(b, T).await, 6);
    let stats = b.stats(T, Q).await.expect("stats");
    assert_eq!(
        (
            stats.pending,
            stats.scheduled,
            stats.active,
            stats.completed,
            stats.dead
        ),
        (6, 0, 1, 1, 0)
    );

    assert!(matches!(
        b.purge(T, Q, TaskState::Active).await,
        Err(BrokerError::Conflict { .. })
    ));
    assert_eq!(b.purge(T, Q, TaskState::Completed).await.expect("purge"), 1);
    assert_eq!(b.purge(T, Q, TaskState::Pending).await.expect("purge"), 6);
    assert_eq!(queued(b, T).await, 0);
    let stats = b.stats(T, Q).await.expect("stats");
    assert_eq!((stats.pending, stats.completed, stats.active), (0, 0, 1));
    // Nothing purged comes back to a worker.
    assert!(take(b, "w2", 10).await.is_empty());
    // The quota's room is back: a full quota's worth fits again.
    let quota = TenantQuota {
        max_queued: 6,
        max_queues: 10,
        max_concurrency: u32::MAX,
        rate: None,
        max_unique_keys: u64::MAX,
    };
    b.enqueue_within((0..6).map(task).collect(), &quota)
        .await
        .expect("room after the purge");
}

pub async fn a_paused_queue_is_skipped_and_takes_enqueues<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    // Another tenant has a queue of the same name, which stays served.
    b.enqueue(vec![task(1), task_in("other", Q, 3)])
        .await
        .expect("enqueue");
    assert!(matches!(
        b.pause(T, "nope", true).await,
        Err(BrokerError::NotFound { .. })
    ));
    b.pause(T, Q, true).await.expect("pause");
    b.enqueue(vec![task(2)])
        .await
        .expect("a paused queue takes enqueues");
    let got = take(b, "w1", 10).await;
    assert_eq!(got.len(), 1, "a paused queue gives nothing");
    assert_eq!(got[0].lease.tenant, "other");
    assert!(take(b, "w1", 10).await.is_empty());
    let stats = b.stats(T, Q).await.expect("stats");
    assert!(stats.paused);
    assert_eq!(stats.pending, 2);
    assert!(!b.stats("other", Q).await.expect("stats").paused);
    b.pause(T, Q, false).await.expect("resume");
    assert!(!b.stats(T, Q).await.expect("stats").paused);
    assert_eq!(take(b, "w1", 10).await.len(), 2);
}

pub async fn cancel_ends_waiting_tasks_at_once_and_tells_the_holder<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let (a, c) = (task(1), task(2));
    let (a_id, c_id) = (a.task_id, c.task_id);
    let mut later = task(3);
    later.run_at = Some(clock::add(fx.clock.now(), Duration::from_secs(60)));
    let later_id = later.task_id;
    b.enqueue(vec![a, c, later]).await.expect("enqueue");
    assert!(matches!(
        b.cancel("other", a_id).await,
        Err(BrokerError::NotFound { .. })
    ));
    // A running task: its worker is told, the lease holds on.
    let running = take_one(b, "w1").await;
    assert_eq!(running.task.task_id, a_id);
    b.update(&running.lease, &checkpoint(2, "two"))
        .await
        .expect("checkpoint");
    assert_eq!(
        b.cancel(T, a_id).await.expect("cancel"),
        Cancelled::Requested {
            worker: "w1".into()
        }
    );
    let told = b
        .cancel_requests(&"w1".to_owned(), Duration::from_secs(5))
        .await
        .expect("cancel_requests");
    assert_eq!(told, vec![a_id]);
    assert!(
        b.cancel_requests(&"w1".to_owned(), Duration::from_millis(50))
            .await
            .expect("cancel_requests")
            .is_empty(),
        "each cancel is delivered once"
    );
    // Whatever the worker reports but success, the task ends cancelled,
    // naming the handler of its checkpoint; never retried.
    let at = clock::add(fx.clock.now(), Duration::from_secs(1));
    ack_one(
        b,
        &running.lease,
        Outcome::Retry {
            error: error("io", true),
            at,
        },
    )
    .await
    .expect("ack");
    let done = get(b, a_id).await;
    assert_eq!(done.state, TaskState::Cancelled);
    let e = done.error.expect("an error");
    assert_eq!((e.kind.as_str(), e.handler_index), ("cancelled", Some(2)));
    assert!(matches!(
        b.cancel(T, a_id).await,
        Err(BrokerError::Conflict { .. })
    ));

    // Waiting tasks are final at once and never run.
    assert_eq!(b.cancel(T, c_id).await.expect("cancel"), Cancelled::Now);
    assert_eq!(b.cancel(T, later_id).await.expect("cancel"), Cancelled::Now);
    fx.clock.advance(Duration::from_secs(120));
    b.maintain().await.expect("maintain");
    assert!(take(b, "w1", 10).await.is_empty());
    assert_eq!(get(b, c_id).await.state, TaskState::Cancelled);
    assert_eq!(queued(b, T).await, 0);
    let stats = b.stats(T, Q).await.expect("stats");
    assert_eq!((stats.cancelled, stats.pending, stats.scheduled), (3, 0, 0));

    // A holder that dies: the expired lease ends the task cancelled.
    let d = task(4);
    let d_id = d.task_id;
    b.enqueue(vec![d]).await.expect("enqueue");
    let held = take_one(b, "w9").await;
    assert_eq!(held.lease.task_id, d_id);
    b.cancel(T, d_id).await.expect("cancel");
    fx.clock.advance(LEASE + Duration::from_secs(1));
    b.maintain().await.expect("maintain");
    assert_eq!(get(b, d_id).await.state, TaskState::Cancelled);
    assert!(take(b, "w1", 10).await.is_empty());
    // And a cancelled task may be run again by hand.
    b.retry(T, d_id, &TenantQuota::UNLIMITED)
        .await
        .expect("retry");
    assert_eq!(take_one(b, "w1").await.lease.task_id, d_id);
}

pub async fn stats_count_retrying_and_the_last_minute<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    b.enqueue((0..4).map(task).collect())
        .await
        .expect("enqueue");
    let leased = take(b, "w1", 4).await;
    let at = clock::add(fx.clock.now(), Duration::from_secs(30));
    ack_one(
        b,
        &leased[0].lease,
        Outcome::Retry {
            error: error("io", true),
            at,
        },
    )
    .await
    .expect("retry");
    ack_one(b, &leased[1].lease, Outcome::Completed(checkpoint(1, "ok")))
        .await
        .expect("done");
    ack_one(b, &leased[2].lease, Outcome::Dead(error("boom", false)))
        .await
        .expect("dead");
    let s = b.stats(T, Q).await.expect("stats");
    assert_eq!(
        (
            s.scheduled,
            s.retrying,
            s.active,
            s.completed_last_minute,
            s.failed_last_minute
        ),
        (1, 1, 1, 1, 1)
    );
    fx.clock.advance(Duration::from_secs(61));
    b.maintain().await.expect("maintain");
    let s = b.stats(T, Q).await.expect("stats");
    assert_eq!(
        (
            s.scheduled,
            s.retrying,
            s.pending,
            s.completed_last_minute,
            s.failed_last_minute
        ),
        (0, 0, 2, 0, 0),
        "the retry was promoted (and the lease left running recovered), the minute passed"
    );
    assert_eq!((s.completed, s.dead), (1, 1));
}

pub async fn workers_register_and_drop_out_after_their_ttl<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        host: "host".into(),
        pid: 42,
        started_at: fx.clock.now(),
        version: "1".into(),
        queues: vec![Q.into()],
        concurrency: 4,
        tasks: vec![TaskId::new()],
        seen_at: fx.clock.now(),
    };
    b.register_worker(&info("w1"), Duration::from_secs(30))
        .await
        .expect("register");
    b.register_worker(&info("w2"), Duration::from_secs(90))
        .await
        .expect("register");
    let listed = b.workers().await.expect("workers");
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["w1", "w2"]
    );
    assert_eq!(listed[0].tasks.len(), 1);
    fx.clock.advance(Duration::from_secs(31));
    let listed = b.workers().await.expect("workers");
    assert_eq!(listed.len(), 1, "w1 missed its refresh");
    b.deregister_worker(&"w2".to_owned())
        .await
        .expect("deregister");
    assert!(b.workers().await.expect("workers").is_empty());
}

/// The tenant quota of a tenant capped at `cap` tasks at once.
fn capped(cap: u32) -> TenantQuota {
    TenantQuota {
        max_concurrency: cap,
        ..TenantQuota::UNLIMITED
    }
}

fn held(got: &[Leased], tenant: &str) -> usize {
    got.iter().filter(|l| l.task.tenant == tenant).count()
}

pub async fn a_tenants_cap_holds_over_every_worker_and_queue<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let other = "other";
    // The cap comes with the tasks (what the API's enqueue stores), so
    // workers that never read the tenant's limits hold it too.
    b.enqueue_within((0..10).map(|n| task_in("acme", Q, n)).collect(), &capped(3))
        .await
        .expect("enqueue");
    b.enqueue_within(
        (0..10).map(|n| task_in("acme", other, n)).collect(),
        &capped(3),
    )
    .await
    .expect("enqueue");
    b.enqueue((0..5).map(|n| task_in("beta", Q, n)).collect())
        .await
        .expect("enqueue");
    let both = |worker: &str, max| req(worker, &[Q, other], max);
    let w1 = b.acquire(&both("w1", 20)).await.expect("acquire");
    assert_eq!((held(&w1, "acme"), held(&w1, "beta")), (3, 5));
    // Another worker, another queue: the tenant is at its cap everywhere.
    let w2 = b.acquire(&both("w2", 20)).await.expect("acquire");
    assert_eq!(w2.len(), 0, "the cap is the fleet's, not one worker's");
    // A finished task frees one slot (any outcome ends a lease).
    let acme: Vec<&Leased> = w1.iter().filter(|l| l.task.tenant == "acme").collect();
    ack_one(b, &acme[0].lease, Outcome::Completed(checkpoint(1, "done")))
        .await
        .expect("ack");
    ack_one(b, &acme[1].lease, Outcome::Release)
        .await
        .expect("release");
    let w2 = b.acquire(&both("w2", 20)).await.expect("acquire");
    assert_eq!(held(&w2, "acme"), 2);
    assert_eq!(b.acquire(&both("w3", 20)).await.expect("acquire").len(), 0);
    // A worker's fresher reading of the cap (from the catalog) wins, and is
    // what every worker sees from then on.
    let mut raised = both("w3", 20);
    raised.tenant_caps = [("acme".to_owned(), 5)].into_iter().collect();
    assert_eq!(held(&b.acquire(&raised).await.expect("acquire"), "acme"), 2);
    assert_eq!(b.acquire(&both("w4", 20)).await.expect("acquire").len(), 0);
    // Leases that ran out no longer count (their tasks come back with
    // maintenance): five more may start.
    fx.clock.advance(LEASE + Duration::from_secs(1));
    let w5 = b.acquire(&both("w5", 20)).await.expect("acquire");
    assert_eq!(held(&w5, "acme"), 5);
    // Heartbeats keep leases, and so the count, alive.
    let leases: Vec<Lease> = w5.iter().map(|l| l.lease.clone()).collect();
    fx.clock.advance(LEASE / 2);
    assert!(
        b.heartbeat(&leases, LEASE)
            .await
            .expect("heartbeat")
            .is_empty()
    );
    fx.clock.advance(LEASE / 2 + Duration::from_secs(1));
    b.maintain().await.expect("maintain");
    let w6 = b.acquire(&both("w6", 20)).await.expect("acquire");
    assert_eq!(held(&w6, "acme"), 0);
    // The expired leases went back to pending; only w5's are active.
    let stats = b.tenant_stats("acme").await.expect("tenant stats");
    assert_eq!(stats.active, 5, "{stats:?}");
}

pub async fn a_slot_freed_under_a_cap_wakes_a_waiting_acquire<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    b.enqueue_within((0..4).map(|n| task_in(T, Q, n)).collect(), &capped(1))
        .await
        .expect("enqueue");
    let first = take(b, "w1", 4).await;
    assert_eq!(first.len(), 1);
    let before = K::waiting(&fx).await;
    let waiting = spawn_waiting_acquire(b, "w2");
    until_an_acquire_waits::<K>(&fx, before).await;
    ack_one(
        b,
        &first[0].lease,
        Outcome::Completed(checkpoint(1, "done")),
    )
    .await
    .expect("ack");
    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the freed slot woke the waiting acquire long before its block_for")
        .expect("join")
        .expect("acquire");
    assert_eq!(got.len(), 1, "one slot, one task");
}

pub async fn a_unique_key_holds_for_its_ttl_within_its_tenant<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let unique = |mut t: Task, key: &str, secs: u64| {
        t.unique = Some(corral::task::Unique {
            key: key.into(),
            ttl_ms: secs * 1000,
        });
        t
    };
    let first = unique(task_in("acme", Q, 1), "invoice:7", 10);
    b.enqueue(vec![first.clone()]).await.expect("enqueue");
    // The same key in another queue of the tenant: refused, naming the
    // task that holds it; nothing is stored.
    let again = unique(task_in("acme", "other", 2), "invoice:7", 10);
    match b.enqueue(vec![again.clone()]).await {
        Err(BrokerError::Deduplicated { existing, .. }) => assert_eq!(existing, first.task_id),
        other => panic!("expected a deduplicated enqueue, got {other:?}"),
    }
    assert!(b.task("acme", again.task_id).await.expect("task").is_none());
    // Another tenant's key of the same name is its own.
    b.enqueue(vec![unique(task_in("beta", Q, 3), "invoice:7", 10)])
        .await
        .expect("another tenant's key");
    // Two tasks sharing a key in one call are refused whole.
    let pair = vec![
        unique(task_in("acme", Q, 4), "pair", 10),
        unique(task_in("acme", Q, 5), "pair", 10),
    ];
    assert!(matches!(
        b.enqueue(pair).await,
        Err(BrokerError::Invalid { .. })
    ));
    // Past its ttl the key is free again.
    fx.clock.advance(Duration::from_secs(11));
    let later = unique(task_in("acme", Q, 6), "invoice:7", 10);
    b.enqueue(vec![later.clone()])
        .await
        .expect("the key expired");
    // Concurrent enqueues of one key: exactly one is stored, every other
    // answer names it.
    fx.clock.advance(Duration::from_secs(11));
    let racers: Vec<Task> = (0..16)
        .map(|n| unique(task_in("acme", Q, 100 + n), "race", 60))
        .collect();
    let answers = join_all(racers.iter().map(|t| b.enqueue(vec![t.clone()]))).await;
    let stored: Vec<TaskId> = racers
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_ok())
        .map(|(t, _)| t.task_id)
        .collect();
    assert_eq!(stored.len(), 1, "{answers:?}");
    for answer in answers.iter().filter(|a| a.is_err()) {
        match answer {
            Err(BrokerError::Deduplicated { existing, .. }) => assert_eq!(*existing, stored[0]),
            other => panic!("expected a deduplicated enqueue, got {other:?}"),
        }
    }
    // Only the stored ones count as queued: acme has first, later, the winner.
    assert_eq!(queued(b, "acme").await, 3);
    // A tenant holds at most its max_unique_keys at once; expired keys
    // make room.
    let bounded = TenantQuota {
        max_unique_keys: 2,
        ..TenantQuota::UNLIMITED
    };
    for (n, key) in ["a", "b"].into_iter().enumerate() {
        b.enqueue_within(
            vec![unique(task_in("gamma", Q, n as i64), key, 5)],
            &bounded,
        )
        .await
        .expect("within the bound");
    }
    assert!(matches!(
        b.enqueue_within(vec![unique(task_in("gamma", Q, 3), "c", 5)], &bounded)
            .await,
        Err(BrokerError::Full { .. })
    ));
    fx.clock.advance(Duration::from_secs(6));
    b.enqueue_within(vec![unique(task_in("gamma", Q, 4), "c", 5)], &bounded)
        .await
        .expect("the expired keys made room");
}

fn every(name: &str, secs: u64, queue: &str, missed: Missed) -> Schedule {
    Schedule {
        name: name.into(),
        tenant: "acme".into(),
        timing: Timing::Every { secs },
        missed,
        job: "job".into(),
        args: ArgsMap::new(),
        queue: queue.into(),
        max_attempts: None,
        priority: None,
        timeout_ms: None,
        created_at: chrono::Utc::now(),
    }
}

/// Maintenance passes of three workers at once.
async fn maintain_as_three<B: Broker>(b: &B) -> (usize, usize) {
    let passes = join_all([b.maintain(), b.maintain(), b.maintain()]).await;
    passes.into_iter().fold((0, 0), |(e, s), m| {
        let m = m.expect("maintain");
        (e + m.ticks_enqueued, s + m.ticks_skipped)
    })
}

pub async fn each_schedule_tick_is_enqueued_once_whoever_maintains<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let start = fx.clock.now();
    let stored = b
        .put_schedule(
            &every("tick", 10, Q, Missed::Skip),
            &TenantQuota::UNLIMITED,
            2,
        )
        .await
        .expect("put");
    assert_eq!(
        stored.next_tick,
        Some(start + chrono::Duration::seconds(10))
    );
    // Nothing is due yet.
    assert_eq!(maintain_as_three(b).await, (0, 0));
    fx.clock.advance(Duration::from_secs(35));
    assert_eq!(maintain_as_three(b).await, (3, 0));
    fx.clock.advance(Duration::from_secs(10));
    assert_eq!(maintain_as_three(b).await, (1, 0));
    assert_eq!(maintain_as_three(b).await, (0, 0));
    // One task per tick, stamped with it.
    let got = b.acquire(&req("w", &[Q], 10)).await.expect("acquire");
    let mut stamps: Vec<i64> = got
        .iter()
        .map(|l| (l.task.created_at - start).num_seconds())
        .collect();
    stamps.sort_unstable();
    assert_eq!(stamps, [10, 20, 30, 40]);
    assert!(
        got.iter()
            .all(|l| l.task.tenant == "acme" && l.task.job_name == "job")
    );
    let listed = b.schedules("acme").await.expect("schedules");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].next_tick,
        Some(start + chrono::Duration::seconds(50))
    );
    // The tenant's max_schedules holds for new names; a replace is fine.
    b.put_schedule(
        &every("other", 60, Q, Missed::Skip),
        &TenantQuota::UNLIMITED,
        2,
    )
    .await
    .expect("second schedule");
    assert!(matches!(
        b.put_schedule(
            &every("third", 60, Q, Missed::Skip),
            &TenantQuota::UNLIMITED,
            2
        )
        .await,
        Err(BrokerError::Full { .. })
    ));
    b.put_schedule(
        &every("tick", 20, Q, Missed::Skip),
        &TenantQuota::UNLIMITED,
        2,
    )
    .await
    .expect("replace");
    let mut bad = every("bad", 10, Q, Missed::Skip);
    bad.timing = Timing::Cron {
        expr: "not cron".into(),
        tz: None,
    };
    assert!(matches!(
        b.put_schedule(&bad, &TenantQuota::UNLIMITED, 10).await,
        Err(BrokerError::Invalid { .. })
    ));
    // Removed: no more ticks.
    assert!(b.remove_schedule("acme", "tick").await.expect("remove"));
    assert!(b.remove_schedule("acme", "other").await.expect("remove"));
    assert!(
        !b.remove_schedule("acme", "tick")
            .await
            .expect("remove again")
    );
    fx.clock.advance(Duration::from_secs(600));
    assert_eq!(maintain_as_three(b).await, (0, 0));
    assert!(b.schedules("acme").await.expect("schedules").is_empty());
}

pub async fn missed_ticks_are_skipped_or_run_once_and_quotas_hold<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    for (name, missed) in [("skip", Missed::Skip), ("once", Missed::Once)] {
        b.put_schedule(&every(name, 10, name, missed), &TenantQuota::UNLIMITED, 10)
            .await
            .expect("put");
    }
    // A ten-minute outage: ticks more than a minute late, with later ones
    // due too, are missed; the last minute's run.
    fx.clock.advance(Duration::from_secs(605));
    let (enqueued, skipped) = maintain_as_three(b).await;
    let pending = |q: &'static str| async move { b.stats("acme", q).await.expect("stats").pending };
    assert_eq!(pending("skip").await, 6);
    assert_eq!(pending("once").await, 7);
    assert_eq!((enqueued, skipped), (13, 1));
    // A tick whose task the tenant's quota refuses still passes.
    let tight = TenantQuota {
        max_queued: 13,
        ..TenantQuota::UNLIMITED
    };
    b.put_schedule(&every("full", 10, "full", Missed::Skip), &tight, 10)
        .await
        .expect("put");
    fx.clock.advance(Duration::from_secs(10));
    let (_, skipped) = maintain_as_three(b).await;
    assert!(skipped >= 1, "the refused tick passed");
    assert_eq!(pending("full").await, 0);
    let listed = b.schedules("acme").await.expect("schedules");
    let full = listed
        .iter()
        .find(|s| s.schedule.name == "full")
        .expect("listed");
    assert!(full.next_tick > Some(fx.clock.now()));
}

pub async fn a_tenants_rate_limit_holds_per_window_over_every_worker<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let quota = TenantQuota {
        max_concurrency: 1000,
        rate: Some(RateLimit {
            tasks: 3,
            per_ms: 1000,
        }),
        ..TenantQuota::UNLIMITED
    };
    b.enqueue_within((0..12).map(|n| task_in("acme", Q, n)).collect(), &quota)
        .await
        .expect("enqueue");
    b.enqueue((0..4).map(|n| task_in("beta", Q, n)).collect())
        .await
        .expect("enqueue");
    let w1 = take(b, "w1", 20).await;
    assert_eq!((held(&w1, "acme"), held(&w1, "beta")), (3, 4));
    // Another worker in the same window: nothing more of acme.
    assert_eq!(held(&take(b, "w2", 20).await, "acme"), 0);
    fx.clock.advance(Duration::from_secs(1));
    assert_eq!(held(&take(b, "w2", 20).await, "acme"), 3);
    assert_eq!(held(&take(b, "w3", 20).await, "acme"), 0);
    // A worker's fresher reading wins: a raised limit, then none at all.
    fx.clock.advance(Duration::from_secs(1));
    let mut r = req("w4", &[Q], 20);
    r.tenant_rates = [(
        "acme".to_owned(),
        Some(RateLimit {
            tasks: 4,
            per_ms: 1000,
        }),
    )]
    .into_iter()
    .collect();
    assert_eq!(held(&b.acquire(&r).await.expect("acquire"), "acme"), 4);
    assert_eq!(held(&take(b, "w5", 20).await, "acme"), 0);
    r.tenant_rates = [("acme".to_owned(), None)].into_iter().collect();
    assert_eq!(held(&b.acquire(&r).await.expect("acquire"), "acme"), 2);
}

pub async fn a_jobs_rate_limit_holds_per_window_while_other_jobs_go_on<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let limit = RateLimit {
        tasks: 2,
        per_ms: 10_000,
    };
    b.set_job_rate("acme", "slow", Some(limit))
        .await
        .expect("set the job's rate");
    assert_eq!(
        b.job_rates("acme").await.expect("rates"),
        [("slow".to_owned(), limit)]
    );
    assert!(b.job_rates("other").await.expect("rates").is_empty());
    let job = |name: &str, n: i64| {
        let mut t = task_in("acme", Q, n);
        t.job_name = name.into();
        t
    };
    let mut tasks: Vec<Task> = (0..5).map(|n| job("slow", n)).collect();
    tasks.extend((0..3).map(|n| job("fast", n)));
    // Another tenant's job of the same name is not limited.
    tasks.push({
        let mut t = task_in("other", Q, 9);
        t.job_name = "slow".into();
        t
    });
    b.enqueue(tasks).await.expect("enqueue");
    let jobs = |got: &[Leased], name: &str, tenant: &str| {
        got.iter()
            .filter(|l| l.task.job_name == name && l.task.tenant == tenant)
            .count()
    };
    // Two workers in the same window: two `slow` in all; the `fast` tasks
    // behind the held ones run.
    let first = take(b, "w1", 20).await;
    let second = take(b, "w2", 20).await;
    let both: Vec<Leased> = first.into_iter().chain(second).collect();
    assert_eq!(jobs(&both, "slow", "acme"), 2);
    assert_eq!(jobs(&both, "fast", "acme"), 3);
    assert_eq!(jobs(&both, "slow", "other"), 1);
    // The held ones wait, scheduled, not failed.
    let stats = b.stats("acme", Q).await.expect("stats");
    assert_eq!((stats.scheduled, stats.dead, stats.pending), (3, 0, 0));
    // The next window lets two more through.
    fx.clock.advance(Duration::from_secs(10));
    b.maintain().await.expect("maintain");
    assert_eq!(jobs(&take(b, "w1", 20).await, "slow", "acme"), 2);
    assert!(take(b, "w2", 20).await.is_empty());
    // Without a limit the last one goes at the next window (it waits
    // scheduled until then), and nothing is held again.
    b.set_job_rate("acme", "slow", None).await.expect("unset");
    assert!(b.job_rates("acme").await.expect("rates").is_empty());
    fx.clock.advance(Duration::from_secs(10));
    b.maintain().await.expect("maintain");
    assert_eq!(jobs(&take(b, "w1", 20).await, "slow", "acme"), 1);
}

/// What the workflow tests' steps compute from their args: `{"n": n + 1}`
/// for a step given `n` (0 when none), and for one given `results`, the sum
/// of their `n`s, with the order they came in (`order`).
fn step_output(args: &ArgsMap) -> ArgsMap {
    let mut out = ArgsMap::new();
    match args.get("results").and_then(|r| r.as_array()) {
        Some(results) => {
            let ns: Vec<i64> = results
                .iter()
                .map(|r| r["n"].as_i64().expect("each result has n"))
                .collect();
            out.insert("n".into(), ns.iter().sum::<i64>().into());
            out.insert("order".into(), serde_json::json!(ns));
        }
        None => {
            let n = args.get("n").and_then(|n| n.as_i64()).unwrap_or(0);
            out.insert("n".into(), (n + 1).into());
        }
    }
    if let Some(tag) = args.get("tag") {
        out.insert("tag".into(), tag.clone());
    }
    out
}

fn done(output: ArgsMap) -> Outcome {
    Outcome::Completed(Checkpoint {
        current_handler_index: 1,
        args_map: output,
        result_log: String::new(),
        log: String::new(),
        metering: Default::default(),
    })
}

/// Leases every ready task of queue `Q` and acks each (in one concurrent
/// ack per task, as separate workers would) with `outcome`; returns the
/// tasks it ran.
async fn run_ready<B: Broker>(b: &B, outcome: impl Fn(&Task) -> Outcome) -> Vec<Task> {
    let got = b.acquire(&req("w", &[Q], 1000)).await.expect("acquire");
    let acks = got.iter().map(|l| {
        let outcome = outcome(&l.task);
        async move { ack_one(b, &l.lease, outcome).await.expect("ack") }
    });
    join_all(acks).await;
    got.into_iter().map(|l| l.task).collect()
}

fn flow_task(n: Option<i64>) -> corral::workflow::FlowTask {
    let t = corral::workflow::Flow::task("job").queue(Q);
    match n {
        Some(n) => t.arg("n", n),
        None => t,
    }
}

fn submitted(
    flow: corral::workflow::Flow,
    policy: corral::workflow::OnFailure,
) -> corral::workflow::Plan {
    let wf = corral::workflow::Workflow {
        id: corral::workflow::WorkflowId::new(),
        tenant: "acme".into(),
        flow,
        on_failure: policy,
    };
    corral::workflow::Plan::compile(&wf, chrono::Utc::now()).expect("compiles")
}

/// Workflow `id` of tenant `acme`, which must be stored.
async fn flow<B: Broker>(
    b: &B,
    id: corral::workflow::WorkflowId,
) -> corral::workflow::WorkflowStatus {
    b.workflow("acme", id)
        .await
        .expect("status")
        .expect("stored")
}

pub async fn a_chord_callback_is_enqueued_once_with_every_result_in_order<K: Backend>() {
    use corral::workflow::{Flow, OnFailure, StepState, WorkflowState};
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    // first -> chord(five members) -> chain(callback, last): nesting both ways.
    let members: Vec<Flow> = (0..5).map(|n| flow_task(Some(10 * n)).into()).collect();
    let callback = Flow::chain([
        Flow::from(flow_task(None).arg("tag", "sum")),
        flow_task(None).into(),
    ]);
    let plan = submitted(
        Flow::chain([flow_task(Some(1)).into(), Flow::chord(members, callback)]),
        OnFailure::FailFast,
    );
    let id = plan.head.id;
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    // The same plan twice is one workflow.
    assert!(matches!(
        b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10).await,
        Err(BrokerError::Conflict { .. })
    ));
    let ran = run_ready(b, |t| done(step_output(&t.args_map))).await;
    assert_eq!(ran.len(), 1, "only the first step is ready");
    assert_eq!(ran[0].task_id, plan.steps[0].id);
    // The members get the first step's output (n = 2), merged under their own n.
    let ran = run_ready(b, |t| done(step_output(&t.args_map))).await;
    assert_eq!(ran.len(), 5);
    // Acks racing from several workers, a repeated ack, and maintenance
    // passes long after: the callback is enqueued exactly once.
    fx.clock.advance(Duration::from_secs(5));
    join_all([b.maintain(), b.maintain()]).await;
    let got = b.acquire(&req("w", &[Q], 100)).await.expect("acquire");
    assert_eq!(got.len(), 1, "one callback");
    let cb = &got[0];
    assert_eq!(cb.lease.workflow.map(|s| s.step), Some(6));
    assert_eq!(
        serde_json::Value::Object(cb.task.args_map.clone()),
        serde_json::json!({"results": [{"n": 1}, {"n": 11}, {"n": 21}, {"n": 31}, {"n": 41}], "tag": "sum"}),
        "the members' outputs in the group's order, with the callback's own args"
    );
    let output = step_output(&cb.task.args_map);
    ack_one(b, &cb.lease, done(output.clone()))
        .await
        .expect("ack");
    ack_one(b, &cb.lease, done(output))
        .await
        .expect("repeated ack");
    fx.clock.advance(Duration::from_secs(5));
    b.maintain().await.expect("maintain");
    let last = run_ready(b, |t| done(step_output(&t.args_map))).await;
    assert_eq!(last.len(), 1, "the chain after the callback runs once");
    assert_eq!(last[0].args_map["n"], 105);
    fx.clock.advance(Duration::from_secs(5));
    b.maintain().await.expect("maintain");
    assert!(take(b, "w", 10).await.is_empty(), "nothing runs twice");
    let status = flow(b, id).await;
    assert_eq!(status.state, WorkflowState::Completed);
    assert_eq!(status.count(StepState::Completed), 8);
    assert_eq!(status.result.expect("result")["n"], 106);
    let ids: Vec<TaskId> = status.steps.iter().map(|s| s.task_id).collect();
    assert_eq!(ids, plan.steps.iter().map(|s| s.id).collect::<Vec<_>>());
    // Another tenant does not see it.
    assert!(b.workflow("other", id).await.expect("status").is_none());
    let listed = b.workflows("acme").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].steps), (id, 8));
}

pub async fn a_failed_step_fails_its_workflow_at_once_or_after_the_rest<K: Backend>() {
    use corral::workflow::{Flow, OnFailure, StepState, WorkflowState};
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let fail = |t: &Task| {
        if t.args_map.get("n").and_then(|n| n.as_i64()) == Some(666) {
            Outcome::Dead(error("guest_error", false))
        } else {
            done(step_output(&t.args_map))
        }
    };
    // group(chain(doomed, after), other)
    let shape = || {
        Flow::group([
            Flow::chain([Flow::from(flow_task(Some(666))), flow_task(None).into()]),
            Flow::from(flow_task(Some(1))),
        ])
    };
    // Fail fast: the workflow fails with the first failure, and nothing
    // after it is enqueued.
    let plan = submitted(shape(), OnFailure::FailFast);
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    let ran = run_ready(b, fail).await;
    assert_eq!(ran.len(), 2);
    fx.clock.advance(Duration::from_secs(5));
    b.maintain().await.expect("maintain");
    assert!(take(b, "w", 10).await.is_empty());
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Failed);
    let failure = status.error.expect("error");
    assert_eq!(
        (failure.task_id, failure.error.kind.as_str()),
        (plan.steps[0].id, "guest_error")
    );
    assert_eq!(status.steps[1].state, StepState::Waiting);
    // Wait: the independent step still runs; the dependent one is skipped;
    // the workflow fails once the rest is done.
    let plan = submitted(shape(), OnFailure::Wait);
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    let got = take(b, "w", 10).await;
    assert_eq!(got.len(), 2);
    let (doomed, other): (Vec<_>, Vec<_>) =
        got.into_iter().partition(|l| l.task.args_map["n"] == 666);
    ack_one(
        b,
        &doomed[0].lease,
        Outcome::Dead(error("guest_error", false)),
    )
    .await
    .expect("ack");
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Running);
    assert_eq!(status.steps[1].state, StepState::Skipped);
    ack_one(
        b,
        &other[0].lease,
        done(step_output(&other[0].task.args_map)),
    )
    .await
    .expect("ack");
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Failed);
    assert_eq!(status.count(StepState::Completed), 1);
    // A step dies out of an ack too: its lease ran out on its last attempt,
    // or it was cancelled while it waited.
    let mut doomed_task = flow_task(Some(1));
    doomed_task.max_attempts = Some(1);
    let plan = submitted(
        Flow::chain([Flow::from(doomed_task), flow_task(None).into()]),
        OnFailure::FailFast,
    );
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    assert_eq!(take(b, "w", 10).await.len(), 1);
    fx.clock.advance(LEASE + Duration::from_secs(1));
    b.maintain().await.expect("maintain");
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Failed);
    assert_eq!(status.error.expect("error").error.kind, "lease_expired");
    let plan = submitted(
        Flow::chain([Flow::from(flow_task(Some(1))), flow_task(None).into()]),
        OnFailure::FailFast,
    );
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    assert_eq!(
        b.cancel("acme", plan.steps[0].id).await.expect("cancel"),
        Cancelled::Now
    );
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Failed);
    assert_eq!(status.error.expect("error").error.kind, "cancelled");
    assert!(take(b, "w", 10).await.is_empty());
    // A callback whose input would gather more than MAX_INPUT_BYTES of
    // outputs fails instead of being assembled.
    let plan = submitted(
        Flow::chord(
            (0..3).map(|n| Flow::from(flow_task(Some(n)))),
            flow_task(None),
        ),
        OnFailure::FailFast,
    );
    b.submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit");
    let big = "x".repeat(corral::workflow::MAX_INPUT_BYTES / 3 + 1);
    let ran = run_ready(b, |t| {
        let mut out = step_output(&t.args_map);
        out.insert("blob".into(), big.clone().into());
        done(out)
    })
    .await;
    assert_eq!(ran.len(), 3);
    fx.clock.advance(Duration::from_secs(5));
    b.maintain().await.expect("maintain");
    assert!(
        take(b, "w", 10).await.is_empty(),
        "the callback is not enqueued"
    );
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Failed);
    let failure = status.error.expect("error");
    assert_eq!(failure.error.kind, corral::workflow::INPUT_TOO_LARGE);
    assert_eq!(failure.task_id, plan.steps[3].id);
    assert_eq!(status.steps[3].state, StepState::Failed);
}

pub async fn workflows_are_bounded_wait_for_quota_room_and_go_after_retention<K: Backend>() {
    use corral::workflow::{Flow, OnFailure, WorkflowState};
    let retention = Retention {
        completed_ttl: Duration::from_secs(60),
        ..Retention::default()
    };
    let fx = K::make(retention).await;
    let b = &fx.broker;
    // Eight concurrent submissions against a limit of five: five stored.
    let plans: Vec<_> = (0..8)
        .map(|n| submitted(flow_task(Some(n)).into(), OnFailure::FailFast))
        .collect();
    let results = join_all(
        plans
            .iter()
            .map(|p| b.submit_workflow(p, &TenantQuota::UNLIMITED, 5)),
    )
    .await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 5);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, BrokerError::Full { .. }))
    );
    assert_eq!(
        run_ready(b, |t| done(step_output(&t.args_map))).await.len(),
        5
    );
    // Ended workflows count until retention drops them.
    assert!(matches!(
        b.submit_workflow(&plans[7], &TenantQuota::UNLIMITED, 5)
            .await,
        Err(BrokerError::Full { .. })
    ));
    fx.clock.advance(Duration::from_secs(61));
    b.maintain().await.expect("maintain");
    let kept: Vec<_> = join_all(plans.iter().map(|p| b.workflow("acme", p.head.id))).await;
    assert!(kept.iter().all(|s| s.as_ref().expect("status").is_none()));
    assert!(b.workflows("acme").await.expect("list").is_empty());
    // A group wider than the tenant's max_queued: the rest waits, ready,
    // and is enqueued as room frees.
    let quota = TenantQuota {
        max_queued: 3,
        ..TenantQuota::UNLIMITED
    };
    let plan = submitted(
        Flow::chord(
            (0..5).map(|n| Flow::from(flow_task(Some(n)))),
            flow_task(None),
        ),
        OnFailure::FailFast,
    );
    b.submit_workflow(&plan, &quota, 5).await.expect("submit");
    let mut ran = run_ready(b, |t| done(step_output(&t.args_map))).await.len();
    assert_eq!(ran, 3);
    for _ in 0..3 {
        fx.clock.advance(Duration::from_secs(2));
        b.maintain().await.expect("maintain");
        ran += run_ready(b, |t| done(step_output(&t.args_map))).await.len();
    }
    assert_eq!(ran, 6, "five members and the callback, each once");
    let status = flow(b, plan.head.id).await;
    assert_eq!(status.state, WorkflowState::Completed);
    assert_eq!(status.result.expect("result")["n"], 15);
}

fn at_priority(n: i64, priority: u8) -> Task {
    let mut t = task(n);
    t.priority = priority;
    t
}

/// The `n` arg of each leased task, in the order taken.
fn ns(got: &[Leased]) -> Vec<i64> {
    got.iter()
        .map(|l| l.task.args_map["n"].as_i64().expect("n"))
        .collect()
}

pub async fn priorities_are_strict_within_a_queue_through_every_path<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    // Highest first, each priority in the order enqueued, one batch or
    // one at a time; a batch may cross from one priority to the next.
    b.enqueue(
        [(0, 0), (1, 5), (2, 9), (3, 5), (4, 0), (5, 1)]
            .into_iter()
            .map(|(n, p)| at_priority(n, p))
            .collect(),
    )
    .await
    .expect("enqueue");
    b.enqueue(vec![at_priority(6, 9)]).await.expect("enqueue");
    assert_eq!(b.stats(T, Q).await.expect("stats").pending, 7);
    let first = take(b, "w", 3).await;
    assert_eq!(ns(&first), [2, 6, 1]);
    assert_eq!(first[0].task.priority, 9);
    let rest = take(b, "w", 10).await;
    assert_eq!(ns(&rest), [3, 5, 0, 4]);
    assert_eq!(queued(b, T).await, 0);

    // A release goes to the front of its priority, a retry and a recovered
    // lease to its back, each at the priority it was enqueued with.
    let lease = |n: i64| {
        first
            .iter()
            .chain(&rest)
            .find(|l| l.task.args_map["n"] == n)
            .map(|l| l.lease.clone())
            .expect("leased")
    };
    b.enqueue(vec![at_priority(10, 5), at_priority(11, 1)])
        .await
        .expect("enqueue");
    ack_one(b, &lease(3), Outcome::Release)
        .await
        .expect("release");
    let soon = clock::add(fx.clock.now(), Duration::from_secs(1));
    ack_one(
        b,
        &lease(5),
        Outcome::Retry {
            error: error("flaky", true),
            at: soon,
        },
    )
    .await
    .expect("retry");
    fx.clock.advance(Duration::from_secs(2));
    assert_eq!(ns(&take(b, "w", 10).await), [3, 10, 11, 5]);
    // Leases 2, 6, 1, 0, 4 (and the four just taken) run out; maintenance
    // puts each back at its priority.
    fx.clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(b.maintain().await.expect("maintain").recovered, 9);
    b.enqueue(vec![at_priority(12, 0)]).await.expect("enqueue");
    let again = take(b, "w", 20).await;
    let priorities: Vec<u8> = again.iter().map(|l| l.task.priority).collect();
    assert!(
        priorities.windows(2).all(|w| w[0] >= w[1]),
        "{priorities:?}"
    );
    assert_eq!(again.len(), 10);
    assert_eq!(
        again.last().map(|l| l.task.args_map["n"].clone()),
        Some(12.into())
    );

    // A dead task retried by hand keeps its priority.
    let top = again[0].clone();
    assert_eq!(top.task.priority, 9);
    ack_one(b, &top.lease, Outcome::Dead(error("boom", false)))
        .await
        .expect("dead");
    b.enqueue(vec![at_priority(13, 8)]).await.expect("enqueue");
    b.retry(T, top.task.task_id, &TenantQuota::UNLIMITED)
        .await
        .expect("retry by hand");
    assert_eq!(
        ns(&take(b, "w", 10).await),
        [top.task.args_map["n"].as_i64().expect("n"), 13]
    );

    // Cancel, delete, stats, pages and purge see tasks of every priority.
    let waiting: Vec<Task> = (20..26)
        .map(|n| at_priority(n, (n % 3) as u8 * 4))
        .collect();
    let ids: Vec<TaskId> = waiting.iter().map(|t| t.task_id).collect();
    b.enqueue(waiting).await.expect("enqueue");
    assert_eq!(b.cancel(T, ids[1]).await.expect("cancel"), Cancelled::Now);
    b.delete(T, ids[2]).await.expect("delete");
    assert_eq!(b.stats(T, Q).await.expect("stats").pending, 4);
    assert_eq!(queued(b, T).await, 4);
    let (listed, _) = all_pages(
        b,
        T,
        PageQuery {
            state: Some(TaskState::Pending),
            limit: 2,
            ..PageQuery::default()
        },
    )
    .await;
    let mut listed: Vec<TaskId> = listed.iter().map(|t| t.task_id).collect();
    listed.sort();
    let mut want = vec![ids[0], ids[3], ids[4], ids[5]];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(b.purge(T, Q, TaskState::Pending).await.expect("purge"), 4);
    assert_eq!(b.stats(T, Q).await.expect("stats").pending, 0);
    assert_eq!(queued(b, T).await, 0);
    assert!(take(b, "w", 10).await.is_empty());
}

pub async fn a_tenants_priorities_do_not_starve_other_tenants<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    b.enqueue(
        (0..20)
            .map(|n| {
                let mut t = task_in("acme", Q, n);
                t.priority = 9;
                t
            })
            .collect(),
    )
    .await
    .expect("enqueue");
    b.enqueue((0..5).map(|n| task_in("beta", Q, n)).collect())
        .await
        .expect("enqueue");
    let got = take(b, "w", 6).await;
    let beta = got.iter().filter(|l| l.task.tenant == "beta").count();
    assert_eq!(beta, 3, "priority 9 of one tenant takes no turn of another");
    let mut singles = Vec::new();
    for _ in 0..4 {
        singles.extend(take(b, "w", 1).await);
    }
    assert_eq!(
        singles.iter().filter(|l| l.task.tenant == "beta").count(),
        2
    );
}

pub async fn a_limited_jobs_backlog_is_deferred_a_slice_per_acquire<K: Backend>() {
    let fx = K::make(Retention::default()).await;
    let b = &fx.broker;
    let limit = RateLimit {
        tasks: 1,
        per_ms: 3_600_000,
    };
    b.set_job_rate(T, "slow", Some(limit))
        .await
        .expect("set the job's rate");
    let backlog: Vec<Task> = (0..3000)
        .map(|n| {
            let mut t = task(n);
            t.job_name = "slow".into();
            t
        })
        .collect();
    b.enqueue(backlog).await.expect("enqueue");
    // The window's one task, then an acquire that finds the job over its
    // limit: it leases nothing and moves only a bounded slice of the
    // backlog aside for the next window, not all of it at once.
    assert_eq!(take(b, "w", 1).await.len(), 1);
    assert!(take(b, "w", 1).await.is_empty());
    let stats = b.stats(T, Q).await.expect("stats");
    assert!(stats.scheduled >= 1, "{stats:?}");
    assert!(stats.pending >= 1900, "{stats:?}");
    assert_eq!(stats.pending + stats.scheduled, 2999, "{stats:?}");
}

macro_rules! conformance {
    ($module:ident, $backend:ty) => {
        mod $module {
            conformance!(@tests $backend;
                enqueue_then_acquire_gives_fifo_leases,
                acquire_takes_at_most_max_from_the_queues_asked,
                duplicates_and_invalid_tasks_are_refused,
                update_saves_progress_only_under_the_current_token,
                completing_stores_the_result_and_repeats_are_harmless,
                a_retry_waits_for_its_time_and_keeps_its_error,
                a_dead_task_lands_in_the_dead_set,
                release_hands_back_to_the_front_without_counting,
                heartbeats_keep_leases_and_name_the_lost_ones,
                an_expired_lease_is_recovered_and_the_old_holder_fenced,
                expiry_on_the_last_attempt_is_death,
                delayed_tasks_wait_for_their_time,
                finished_tasks_go_after_their_retention_time,
                finished_sets_keep_only_the_newest,
                a_blocked_acquire_wakes_for_an_enqueue,
                a_blocked_acquire_wakes_for_a_recovered_task,
                an_idle_acquire_gives_up_after_block_for,
                an_interrupt_ends_a_wait_without_losing_work,
                tenant_room_limits_each_tenant,
                tenants_share_a_worker_fairly,
                malformed_entries_go_dead_and_acquire_carries_on,
                tenants_see_only_their_own_tasks,
                a_bulk_enqueue_keeps_its_order,
                max_queued_holds_under_concurrency_and_stays_exact,
                queue_names_are_bounded_per_tenant,
                idle_queues_cost_no_maintenance_and_due_work_is_still_done,
                usage_bills_each_stored_call_once_by_tenant_and_day,
                pages_list_every_task_once_by_queue_and_state,
                retry_runs_a_dead_task_again_and_keeps_its_error,
                delete_and_purge_take_tasks_out_of_every_count,
                a_paused_queue_is_skipped_and_takes_enqueues,
                cancel_ends_waiting_tasks_at_once_and_tells_the_holder,
                stats_count_retrying_and_the_last_minute,
                workers_register_and_drop_out_after_their_ttl,
                a_tenants_cap_holds_over_every_worker_and_queue,
                a_slot_freed_under_a_cap_wakes_a_waiting_acquire,
                a_unique_key_holds_for_its_ttl_within_its_tenant,
                each_schedule_tick_is_enqueued_once_whoever_maintains,
                missed_ticks_are_skipped_or_run_once_and_quotas_hold,
                a_tenants_rate_limit_holds_per_window_over_every_worker,
                a_chord_callback_is_enqueued_once_with_every_result_in_order,
                a_failed_step_fails_its_workflow_at_once_or_after_the_rest,
                workflows_are_bounded_wait_for_quota_room_and_go_after_retention,
                a_jobs_rate_limit_holds_per_window_while_other_jobs_go_on,
                priorities_are_strict_within_a_queue_through_every_path,
                a_tenants_priorities_do_not_starve_other_tenants,
                a_limited_jobs_backlog_is_deferred_a_slice_per_acquire
            );
        }
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let _limit = crate::limit::minutes(5);
                super::$name::<$backend>().await;
            }
        )*
    };
}

conformance!(embedded, super::Embedded);
conformance!(redis, super::Standalone);
conformance!(redis_cluster, super::Cluster);
