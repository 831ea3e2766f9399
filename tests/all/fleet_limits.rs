//! A tenant's `max_concurrency` holds over the whole fleet: three real
//! `corral worker` processes, each with room for twelve tasks, never run
//! more than the tenant's four at once, measured from the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::catalog::{Catalog, RedisCatalog};
use corral::registry::Registry;
use corral::sandbox::Limits;
use corral::task::{ArgsMap, Task, TaskState};
use corral::tenant::TenantLimits;

use crate::api_support;
use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};
use crate::support::{self};

const TASKS: usize = 60;
const CAP: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_cap_holds_across_three_worker_processes() {
    let _limit = crate::limit::minutes(6);
    let server = RedisServer::start();
    let prefix = unique_prefix("fleetcap");
    let config = RedisConfig::new(server.url()).prefix(prefix.clone());
    let broker = RedisBroker::connect(config.clone()).await.expect("connect");
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect_config(&config)
            .await
            .expect("catalog"),
    );
    let limits = TenantLimits {
        max_concurrency: CAP,
        ..TenantLimits::default()
    };
    api_support::tenant(&catalog, "acme", limits).await;
    Registry::with_catalog(support::sandbox(), catalog)
        .register_files("acme", "nap", &[support::job("sleep")], Limits::default())
        .await
        .expect("register");

    let logs = tempfile::tempdir().expect("log dir");
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| {
            WorkerProcess::start(
                &server.url(),
                &prefix,
                &["--concurrency", "12"],
                logs.path().join(format!("worker-{i}.log")),
            )
        })
        .collect();
    for w in &mut workers {
        w.wait_started();
    }
    // Enqueued the way the API does: with the tenant's limits.
    let tasks: Vec<Task> = (0..TASKS)
        .map(|_| {
            let mut args = ArgsMap::new();
            args.insert("ms".into(), 150.into());
            let mut t = Task::new("nap", args);
            t.tenant = "acme".into();
            t
        })
        .collect();
    broker
        .enqueue_within(tasks.clone(), &limits.queue_quota())
        .await
        .expect("enqueue");

    // Only to turn a hang into a failure, never a measure of speed.
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut peak = 0;
    loop {
        let stats = broker.tenant_stats("acme").await.expect("stats");
        peak = peak.max(stats.active);
        assert!(
            stats.active <= CAP as usize,
            "{} of the tenant's tasks active at once, its cap being {CAP}: {stats:?}",
            stats.active
        );
        if stats.completed == TASKS {
            break;
        }
        assert!(Instant::now() < give_up, "tasks unfinished: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in &mut workers {
        assert!(w.stop(), "a worker did not stop cleanly");
    }
    assert_eq!(peak, CAP as usize, "the workers never used the whole cap");
    for t in &tasks {
        let done = broker
            .task("acme", t.task_id)
            .await
            .expect("task")
            .expect("stored");
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        // Nothing was handed back over the cap: one attempt each.
        assert_eq!(done.attempt, 1);
    }
}
