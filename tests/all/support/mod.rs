//! Shared test helpers: where the built jobs are, registries and workers
//! wired up for a test, and waiting for tasks.

#![allow(dead_code)]

pub mod browser;
pub mod redis;
pub mod spy;

use std::path::PathBuf;
use std::time::Duration;

use corral::broker::Broker;
use corral::registry::Registry;
use corral::sandbox::{Limits, Sandbox, SandboxConfig};
use corral::worker::{RetryPolicy, Worker, WorkerConfig};
use corral::{Client, Task};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The folder `jobs/build.sh` writes components to.
pub fn jobs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../jobs/dist")
}

/// A built job component; fails the test with a clear message when missing.
pub fn job(name: &str) -> PathBuf {
    let path = jobs_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it builds jobs/ with jobs/build.sh and `corral build`)",
        path.display()
    );
    path
}

/// The bytes of a built job component.
pub fn job_bytes(name: &str) -> Vec<u8> {
    std::fs::read(job(name)).expect("read job component")
}

/// A sandbox with a small pool, suitable for tests.
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_instances: 64,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

/// A registry with `chains` registered for tenant `default`: (job name,
/// handler component names, limits).
pub async fn registry(chains: &[(&str, &[&str], Limits)]) -> Registry {
    let registry = Registry::new(sandbox());
    for (name, handlers, limits) in chains {
        let files: Vec<PathBuf> = handlers.iter().map(|h| job(h)).collect();
        registry
            .register_files("default", name, &files, *limits)
            .await
            .expect("register job");
    }
    registry
}

/// A worker config for tests: quick retries and maintenance.
pub fn worker_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: 0.5,
        },
        block_for: Duration::from_millis(200),
        maintain_every: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// A worker running in the background until [`RunningWorker::stop`].
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), corral::broker::BrokerError>>,
    pub stats: std::sync::Arc<corral::worker::WorkerStats>,
}

impl RunningWorker {
    pub fn start<B: Broker + Clone>(broker: B, registry: Registry, config: WorkerConfig) -> Self {
        let worker = Worker::new(broker, registry, config);
        let stats = worker.stats();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            handle,
            stats,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle
            .await
            .expect("worker task")
            .expect("worker ran cleanly");
    }
}

/// Waits for a task to finish, failing the test after `secs`.
pub async fn wait<B: Broker>(client: &Client<B>, task: &Task, secs: u64) -> Task {
    client
        .wait(&task.tenant, task.task_id, Duration::from_secs(secs))
        .await
        .unwrap_or_else(|e| panic!("task {} did not finish: {e}", task.task_id))
}
