//! The worker: leases tasks, runs their chains, reports outcomes.
//!
//! [`Worker::run`] starts four duties and stops them in a fixed order:
//!
//! 1. **fetch** (this module): waits for a free slot (at most `concurrency`
//!    tasks at once), leases as many ready tasks as there are free slots in
//!    one broker call, and runs each in its own tokio task;
//! 2. **acker**: collects finished tasks' outcomes and sends them to the
//!    broker in batches;
//! 3. **heartbeat** (`heartbeat.rs`): extends the leases in flight;
//! 4. **maintenance** (`maintenance.rs`): promotes due tasks and recovers
//!    expired leases;
//! 5. **cancels** (`cancels.rs`): waits on the broker for cancels of tasks
//!    this worker runs and stops them at once (the heartbeat also keeps
//!    the worker's entry in the workers registry).
//!
//! No tenant runs more than its `max_concurrency` tasks on one worker: each
//! acquire carries the room every known tenant has left, and any task over
//! it is handed back (`tenants.rs` explains the two layers). While
//! some tenant is at its cap, a slot it frees interrupts the waiting acquire
//! ([`Broker::interrupt`]), so its queued tasks start at once even though the
//! acquire was waiting for other tenants' work.
//!
//! Shutdown (the `shutdown` future resolves, e.g. on SIGINT/SIGTERM): fetch
//! stops taking tasks first; tasks in flight get `shutdown_grace` to finish,
//! with heartbeats still running so their leases hold; whatever is still
//! running then is aborted and handed back (`Outcome::Release`) from its last
//! checkpoint; the acker flushes; only then do heartbeat and maintenance stop.
//! A worker killed outright loses nothing either: its leases expire and
//! another worker's maintenance returns the tasks to pending.

mod cancels;
mod depth;
mod executor;
mod heartbeat;
mod maintenance;
pub mod metrics;
pub mod queues;
mod retry;
mod tenants;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument as _;

pub use executor::{MAX_ERROR_MESSAGE_BYTES, call_context, record_call, task_limits};
pub use metrics::WorkerMetrics;
pub use retry::RetryPolicy;

use corral_client::broker::{
    AcquireRequest, Broker, BrokerError, Lease, Leased, Outcome, WorkerId, WorkerInfo,
};
use corral_core::metering::CallMetering;
use corral_core::task::{DEFAULT_QUEUE, TaskId};
use corral_core::text::Inert;
use corral_registry::registry::Registry;
use executor::Runner;
use metrics::TaskLabels;
use tenants::TenantSlots;

/// How long a busy fetch loop waits for more free slots before it asks the
/// broker, so it fetches batches (see the fetch loop).
const BATCH_WAIT: Duration = Duration::from_millis(1);

/// Tasks this worker is running: their lease and a handle to abort them.
pub(crate) type InFlight = Arc<Mutex<HashMap<TaskId, (Lease, AbortHandle)>>>;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's identity on its leases.
    pub id: WorkerId,
    /// Queues to take tasks from, earlier ones first (strict priority)
    /// unless `queue_weights` is set.
    pub queues: Vec<String>,
    /// Weights of the queues (a queue not listed weighs 1): when not empty,
    /// each acquire asks the queues in a weighted random order
    /// ([`queues::QueueOrder`]), as asynq's queue priorities do.
    pub queue_weights: HashMap<String, u32>,
    /// Tasks run at once. At most the sandbox's `max_instances` (a task
    /// holds one instance at a time): [`Worker::new`] lowers it to that.
    pub concurrency: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often leases are extended; well under `lease`.
    pub heartbeat_every: Duration,
    /// How long one idle acquire waits for work before it asks again (the
    /// wait ends early at shutdown and when a capped tenant frees a slot).
    pub block_for: Duration,
    /// How often the maintenance pass runs.
    pub maintain_every: Duration,
    /// How long tasks in flight may finish after shutdown is asked.
    pub shutdown_grace: Duration,
    /// Backoff for retryable failures.
    pub retry: RetryPolicy,
    /// Most outcomes sent to the broker in one call.
    pub ack_batch: usize,
    /// How often queue depth is sampled for [`WorkerMetrics`] (only with
    /// [`Worker::with_metrics`]).
    pub depth_every: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queues: vec![DEFAULT_QUEUE.to_owned()],
            queue_weights: HashMap::new(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            heartbeat_every: Duration::from_secs(10),
            block_for: Duration::from_secs(1),
            maintain_every: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            ack_batch: 256,
            depth_every: Duration::from_secs(10),
        }
    }
}

/// This machine's host name (`worker` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned())
}

/// `host-pid-random`: unique per process, readable in logs.
pub fn default_worker_id() -> WorkerId {
    let host = host_name();
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// What a worker did, counted as outcomes reach the broker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Tasks completed.
    pub completed: AtomicU64,
    /// Tasks sent back for a retry.
    pub retried: AtomicU64,
    /// Tasks sent to the dead set.
    pub dead: AtomicU64,
    /// Tasks handed back at shutdown.
    pub released: AtomicU64,
    /// Tasks stopped because their cancel was asked for.
    pub cancelled: AtomicU64,
    /// Tasks abandoned because their lease was lost (found by a heartbeat,
    /// a refused checkpoint or a refused outcome) or a checkpoint could not
    /// be written; another worker takes them once the lease expires.
    pub lost: AtomicU64,
    /// The metrics these counts also go to, if any.
    metrics: Option<Arc<WorkerMetrics>>,
}

impl WorkerStats {
    /// A task abandoned (see [`WorkerStats::lost`]).
    fn lose(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.lease_lost();
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Completed(_) => &self.completed,
            Outcome::Retry { .. } => &self.retried,
            Outcome::Dead(_) => &self.dead,
            Outcome::Release => &self.released,
            Outcome::Cancelled(_) => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs tasks from a broker through the registry's handlers.
///
/// ```no_run
/// use corral_client::EmbeddedBroker;
/// use corral_registry::Registry;
/// use corral_sandbox::{Sandbox, SandboxConfig};
/// use corral_worker::{Worker, WorkerConfig};
///
/// # async fn demo() -> anyhow::Result<()> {
/// let registry = Registry::new(Sandbox::new(SandboxConfig::default())?);
/// registry.register_files("default", "pipeline", &["jobs/dist/normalize.wasm"], Default::default()).await?;
/// let worker = Worker::new(EmbeddedBroker::new(), registry, WorkerConfig::default());
/// worker.run(corral_worker::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
pub struct Worker<B> {
    runner: Arc<Runner<B>>,
    broker: Arc<B>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
}

impl<B: Broker + Clone> Worker<B> {
    /// A worker taking tasks from `broker` and running them with `registry`.
    pub fn new(broker: B, registry: Registry, mut config: WorkerConfig) -> Self {
        // Each running task holds one instance from the sandbox's pool. A
        // task leased beyond the pool would find no slot and fail for no
        // fault of its own (its guest never ran): never take more than
        // the pool holds.
        let sandbox = registry.sandbox().config();
        let slots = if sandbox.pooling {
            usize::try_from(sandbox.max_instances)
                .unwrap_or(usize::MAX)
                .max(1)
        } else {
            usize::MAX
        };
        if config.concurrency > slots {
            tracing::warn!(
                concurrency = config.concurrency,
                max_instances = slots,
                "concurrency is over the sandbox's instance pool; running at most {slots} tasks at once"
            );
            config.concurrency = slots;
        }
        let runner = Arc::new(Runner {
            broker: broker.clone(),
            registry,
            retry: config.retry,
            metrics: None,
        });
        Self {
            runner,
            broker: Arc::new(broker),
            config,
            stats: Arc::new(WorkerStats::default()),
        }
    }

    /// Live counters; readable while the worker runs.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Records what the worker does into `metrics` too (tasks, handler
    /// calls, leases lost, acquire batches) and samples its queues' depth
    /// every [`WorkerConfig::depth_every`].
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        let runner = Runner {
            broker: self.runner.broker.clone(),
            registry: self.runner.registry.clone(),
            retry: self.runner.retry,
            metrics: Some(metrics.clone()),
        };
        self.runner = Arc::new(runner);
        self.stats = Arc::new(WorkerStats {
            metrics: Some(metrics),
            ..WorkerStats::default()
        });
        self
    }

    /// Runs until `shutdown` resolves, then shuts down as the module docs
    /// describe. Returns an error only if the broker fails at startup-critical
    /// points; transient broker errors are logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), BrokerError> {
        let cfg = &self.config;
        let concurrency = cfg.concurrency.max(1);
        let in_flight: InFlight = Arc::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Finished>();

        let acker = tokio::spawn(acker(
            self.broker.clone(),
            ack_rx,
            cfg.ack_batch.max(1),
            self.stats.clone(),
        ));
        let entry = WorkerInfo {
            id: cfg.id.clone(),
            host: host_name(),
            pid: std::process::id(),
            started_at: chrono::Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: cfg.queues.clone(),
            concurrency,
            tasks: Vec::new(),
            seen_at: chrono::Utc::now(),
        };
        let beats = tokio::spawn(heartbeat::run(
            self.broker.clone(),
            in_flight.clone(),
            heartbeat::Beat {
                lease_for: cfg.lease,
                every: cfg.heartbeat_every,
                entry,
            },
            self.stats.clone(),
            stop_rx.clone(),
        ));
        let cancels = tokio::spawn(cancels::run(
            self.broker.clone(),
            cfg.id.clone(),
            in_flight.clone(),
            ack_tx.clone(),
            stop_rx.clone(),
        ));
        let upkeep = tokio::spawn(maintenance::run(
            self.broker.clone(),
            cfg.maintain_every,
            stop_rx.clone(),
        ));
        let sampler = self.runner.metrics.clone().map(|metrics| {
            tokio::spawn(depth::run(
                self.broker.clone(),
                cfg.queues.clone(),
                cfg.depth_every,
                metrics,
                stop_rx,
            ))
        });

        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let request = AcquireRequest {
            queues: cfg.queues.clone(),
            worker: cfg.id.clone(),
            max: concurrency,
            lease_for: cfg.lease,
            block_for: cfg.block_for,
            tenant_room: HashMap::new(),
            tenant_caps: HashMap::new(),
            tenant_rates: HashMap::new(),
        };
        let tenant_slots = TenantSlots::default();
        let order = (!cfg.queue_weights.is_empty())
            .then(|| queues::QueueOrder::new(&cfg.queues, &cfg.queue_weights));
        tracing::info!(worker = %cfg.id, queues = ?cfg.queues, concurrency, "worker started");
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(50);
        // Set once `shutdown` has resolved (it must not be polled again).
        let mut stopping = false;
        'fetch: loop {
            if stopping {
                break 'fetch;
            }
            // Reap finished runners so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => break 'fetch,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break 'fetch,
                },
            };
            let mut permits = first;
            // Busy (tasks in flight): give a few more slots a moment to free
            // up, so one broker round trip fetches a batch rather than a
            // task or two. Idle: ask at once, latency first.
            let running = concurrency.saturating_sub(slots.available_permits() + 1);
            if running > 0 {
                let want = (concurrency / 4).clamp(1, running) as u32;
                let more = slots.clone().acquire_many_owned(want);
                if let Ok(Ok(more)) = tokio::time::timeout(BATCH_WAIT, more).await {
                    permits.merge(more);
                }
            }
            let extra = slots.available_permits();
            if extra > 0
                && let Ok(more) = slots.clone().try_acquire_many_owned(extra as u32)
            {
                permits.merge(more);
            }
            let tenant_room = tenant_slots.room(&self.runner.registry).await;
            let capped = tenant_room.values().any(|&room| room == 0);
            let queues = match &order {
                Some(order) => order.draw(&mut rand::rng()),
                None => request.queues.clone(),
            };
            let req = AcquireRequest {
                queues,
                max: permits.num_permits(),
                tenant_room,
                tenant_caps: tenant_slots.caps(),
                tenant_rates: tenant_slots.rates(),
                ..request.clone()
            };
            // An acquire is never cancelled halfway (a backend may already
            // have moved the tasks); it returns within `block_for`, or
            // earlier when interrupted: at shutdown, or when a tenant at its
            // cap frees a slot.
            let freed = capped.then(|| tenant_slots.freed());
            let (result, stop) =
                acquire_interruptible(&*self.broker, &req, freed, shutdown.as_mut()).await;
            stopping = stop;
            let leased = match result {
                Ok(leased) => {
                    backoff = Duration::from_millis(50);
                    if let (Some(m), false) = (&self.runner.metrics, leased.is_empty()) {
                        m.acquired(leased.len());
                    }
                    leased
                }
                Err(_) if stopping => break 'fetch,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "acquire failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break 'fetch,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if capped && leased.is_empty() && !stopping {
                // Most likely a capped tenant freed a slot: let a few more
                // free up, so the next call fetches a batch of its tasks
                // rather than one.
                drop(permits);
                tokio::time::sleep(BATCH_WAIT).await;
                continue;
            }
            for leased in leased {
                let Some(permit) = permits.split(1) else {
                    // More tasks than asked for: hand the extra back.
                    let _ = ack_tx.send((leased.lease, Outcome::Release, None));
                    continue;
                };
                let tenant = &leased.lease.tenant;
                let cap = tenant_slots.cap(&self.runner.registry, tenant).await;
                let Some(slot) = tenant_slots.try_start(tenant, cap) else {
                    // The tenant is at its cap here (one batch brought more of
                    // its tasks than it has slots): hand the task back
                    // untouched for another worker or a later call.
                    let _ = ack_tx.send((leased.lease, Outcome::Release, None));
                    continue;
                };
                let runner = self.runner.clone();
                let ack_tx = ack_tx.clone();
                let map = in_flight.clone();
                let stats = self.stats.clone();
                let Leased { lease, task } = leased;
                let id = lease.task_id;
                let labels = self.runner.metrics.as_ref().map(|m| {
                    let labels = m.labels(&task.tenant, &task.job_name);
                    m.started(&labels);
                    labels
                });
                let mut guard = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let held = lease.clone();
                // One span per task around its broker calls and handler
                // calls; the names are the tenant's, so they are inert.
                let span = tracing::info_span!(
                    "task",
                    task = %id,
                    tenant = %Inert(&task.tenant),
                    job = %Inert(&task.job_name),
                    attempt = task.attempt
                );
                // Boxed: the runner's future is large, and tokio would copy
                // it whole into every task it spawns.
                let run = Box::pin(
                    async move {
                        // Each call's metering, observed by the acker: one
                        // task records every histogram, so the tasks' own
                        // threads never contend for them.
                        let mut calls = labels.as_ref().map(|_| Vec::with_capacity(4));
                        let result = runner.run(&lease, task, calls.as_mut()).await;
                        let metered = labels.zip(calls);
                        (lease, result, metered)
                    }
                    .instrument(span),
                );
                let abort = tasks.spawn(async move {
                    let (lease, result, metered) = run.await;
                    let still_ours = map
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&lease.task_id)
                        .is_some();
                    match result {
                        Ok(outcome) if still_ours => {
                            let _ = ack_tx.send((lease, outcome, metered));
                        }
                        // The heartbeat took it back, and counted it.
                        Ok(_) => {}
                        Err(e) => {
                            if let (Some(m), Some((labels, calls))) = (&stats.metrics, &metered) {
                                m.handler_calls(labels, calls);
                            }
                            if still_ours {
                                stats.lose();
                            }
                            tracing::warn!(task = %lease.task_id, error = %e, "task abandoned")
                        }
                    }
                    drop(slot);
                    drop(permit);
                });
                guard.insert(id, (held, abort));
            }
        }

        tracing::info!(in_flight = tasks.len(), "shutting down: no new tasks");
        let grace = tokio::time::sleep(cfg.shutdown_grace);
        tokio::pin!(grace);
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = &mut grace => break,
            }
        }
        let unfinished: Vec<(Lease, AbortHandle)> = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, v)| v)
            .collect();
        for (lease, abort) in unfinished {
            abort.abort();
            tracing::info!(task = %lease.task_id, "handing back unfinished task");
            let _ = ack_tx.send((lease, Outcome::Release, None));
        }
        tasks.shutdown().await;
        // The cancel listener holds a sender too: it stops before the
        // acker can finish.
        cancels.abort();
        let _ = cancels.await;
        drop(ack_tx);
        let _ = acker.await;
        let _ = stop_tx.send(true);
        let _ = beats.await;
        let _ = upkeep.await;
        if let Some(sampler) = sampler {
            let _ = sampler.await;
        }
        tracing::info!(worker = %cfg.id, "worker stopped");
        Ok(())
    }
}

/// Acquires, and asks the broker to end the wait early when `shutdown`
/// resolves or (while some tenant is at its cap) when `freed` says a capped
/// tenant freed a slot, so its queued tasks need not wait for `block_for`.
/// Returns the acquire's result and whether `shutdown` resolved.
async fn acquire_interruptible<B: Broker>(
    broker: &B,
    req: &AcquireRequest,
    freed: Option<&Notify>,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> (Result<Vec<Leased>, BrokerError>, bool) {
    let done = Notify::new();
    let acquire = async {
        let result = broker.acquire(req).await;
        done.notify_one();
        result
    };
    let watch = async {
        let freed = async {
            match freed {
                Some(freed) => freed.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = done.notified() => false,
            _ = shutdown => {
                broker.interrupt(&req.worker).await;
                true
            }
            _ = freed => {
                broker.interrupt(&req.worker).await;
                false
            }
        }
    };
    tokio::join!(acquire, watch)
}

/// A task's outcome on its way to the broker, with its metrics and the
/// metering of the calls it made (none for a task handed back untouched,
/// or without metrics).
type Finished = (Lease, Outcome, Option<Metered>);

/// A task's job's metrics, and each handler call it made in this run.
type Metered = (Arc<TaskLabels>, Vec<CallMetering>);

/// Sends outcomes to the broker in batches; retries a failed batch so no
/// outcome is dropped while the broker is briefly away.
async fn acker<B: Broker>(
    broker: Arc<B>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    batch: usize,
    stats: Arc<WorkerStats>,
) {
    let mut received: Vec<Finished> = Vec::with_capacity(batch);
    let mut buf = Vec::with_capacity(batch);
    let mut labels = Vec::with_capacity(batch);
    while rx.recv_many(&mut received, batch).await > 0 {
        for (lease, outcome, label) in received.drain(..) {
            buf.push((lease, outcome));
            labels.push(label);
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match broker.ack(&buf).await {
                Ok(results) => {
                    for (((lease, outcome), label), result) in buf.iter().zip(&labels).zip(results)
                    {
                        match result {
                            Ok(()) => {
                                stats.count(outcome);
                                if let (Some(m), Some((labels, calls))) = (&stats.metrics, label) {
                                    m.handler_calls(labels, calls);
                                    m.finished(labels, outcome);
                                }
                            }
                            Err(e) => {
                                if let (Some(m), Some((labels, calls))) = (&stats.metrics, label) {
                                    m.handler_calls(labels, calls);
                                }
                                stats.lose();
                                tracing::warn!(task = %lease.task_id, error = %e, "outcome refused");
                            }
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "ack failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        buf.clear();
        labels.clear();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
