//! The worker's Prometheus metrics: what it ran, what that cost, and what
//! its queues hold.
//!
//! [`WorkerMetrics`] owns the metric families and registers them (with the
//! sandbox's own gauges) into a [`prometheus_client`] registry, which the
//! binary serves over HTTP. Counts are taken where the work happens: a task
//! is counted started when it is leased and run, finished (completed,
//! retried, dead) once the broker accepted its outcome, each handler call's
//! duration, fuel and peak memory as the sandbox metered it (observed by
//! the worker's acker with the task's outcome, so the histograms are
//! written by one task and never contended). Queue depth is
//! sampled by the worker every [`WorkerConfig::depth_every`] (`depth.rs`;
//! a scrape never reads the broker).
//!
//! Tenants name themselves and their jobs, so label values are bounded:
//! past [`WorkerMetrics::new`]'s limit, new tenants and jobs fold into
//! `other`, and failure kinds that are not Corral's own short identifiers
//! fold into `other` too, so no tenant can grow the scrape without bound.
//! This module never talks to a broker or serves HTTP.
//!
//! [`WorkerConfig::depth_every`]: crate::WorkerConfig::depth_every

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use corral_client::broker::{Outcome, QueueStats};
use corral_core::metering::CallMetering;
use corral_sandbox::Sandbox;

/// The value label values fold into past their bound.
pub const OTHER: &str = "other";

/// Label values of one task: its tenant and job, folded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    tenant: String,
    job: String,
}

/// The metrics of one tenant's job, resolved once: recording a task is
/// then a few atomic adds, with no label hashing or allocation per task.
/// (A prometheus-client metric is a shared handle: these are the series
/// the families expose.)
#[derive(Debug)]
pub struct TaskLabels {
    labels: JobLabels,
    started: Counter,
    completed: Counter,
    seconds: Histogram,
    fuel: Histogram,
    memory: Histogram,
}

/// A finished task: its tenant, job, how it finished and, for a failure,
/// its kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    tenant: String,
    job: String,
    outcome: &'static str,
    kind: String,
}

/// A queue's count of tasks in one state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    tenant: String,
    queue: String,
    state: &'static str,
}

type Histograms = Family<JobLabels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(50e-6, 4.0, 10))
}

fn fuel_histogram() -> Histogram {
    // A thousand to ten billion units.
    Histogram::new(exponential_buckets(1e3, 10.0, 8))
}

fn memory_histogram() -> Histogram {
    // 64 KiB to 1 GiB.
    Histogram::new(exponential_buckets(65536.0, 4.0, 8))
}

/// At most `max` distinct values; later ones read [`OTHER`].
#[derive(Debug)]
struct LabelBound {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelBound {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn fold(&self, value: &str) -> String {
        if !label_safe(value) {
            return OTHER.to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// Whether `value` may be a label value as it is. prometheus-client writes
/// label values unescaped, so a quote, a backslash or a line break in a
/// name (a task's job name is whatever its producer wrote) would end the
/// value and let the name write series of its own into the scrape; such
/// names, and very long ones, are [`OTHER`].
fn label_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && !value
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
}

/// A failure kind as a label: Corral's kinds are short snake_case
/// identifiers; anything else (a stored task's error from elsewhere) is
/// [`OTHER`].
fn kind_label(kind: &str) -> String {
    let ours = !kind.is_empty()
        && kind.len() <= 32
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ours {
        kind.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// The worker's metrics. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct WorkerMetrics {
    tenants: LabelBound,
    jobs: LabelBound,
    started: Family<JobLabels, Counter>,
    finished: Family<FinishLabels, Counter>,
    handler_seconds: Histograms,
    handler_fuel: Histograms,
    handler_memory: Histograms,
    leases_lost: Counter,
    acquire_batch: Histogram,
    queue_depth: Family<DepthLabels, Gauge>,
    /// Tenant and queue pairs of the last depth sample, so a queue that
    /// emptied reads 0 rather than its last depth.
    sampled: Mutex<HashSet<(String, String)>>,
    /// Each tenant's job's resolved metrics, by the names as given
    /// (bounded: past the label bounds, names share `other`'s entry).
    jobs_seen: Mutex<SeenJobs>,
}

/// Tenant → job → resolved metrics, looked up by `&str` (no allocation
/// per task), with its number of entries.
#[derive(Debug, Default)]
struct SeenJobs {
    by_tenant: HashMap<String, HashMap<String, Arc<TaskLabels>>>,
    entries: usize,
}

impl SeenJobs {
    fn get(&self, tenant: &str, job: &str) -> Option<Arc<TaskLabels>> {
        self.by_tenant.get(tenant)?.get(job).cloned()
    }

    fn insert(&mut self, tenant: &str, job: &str, resolved: Arc<TaskLabels>) {
        let jobs = self.by_tenant.entry(tenant.to_owned()).or_default();
        if jobs.insert(job.to_owned(), resolved).is_none() {
            self.entries += 1;
        }
    }
}

impl WorkerMetrics {
    /// Metrics whose tenant and job labels each take at most
    /// `max_label_values` distinct values (the rest are [`OTHER`]).
    pub fn new(max_label_values: usize) -> Self {
        Self {
            tenants: LabelBound::new(max_label_values),
            jobs: LabelBound::new(max_label_values),
            started: Family::default(),
            finished: Family::default(),
            handler_seconds: Family::new_with_constructor(seconds_histogram),
            handler_fuel: Family::new_with_constructor(fuel_histogram),
            handler_memory: Family::new_with_constructor(memory_histogram),
            leases_lost: Counter::default(),
            acquire_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            queue_depth: Family::default(),
            sampled: Mutex::new(HashSet::new()),
            jobs_seen: Mutex::new(SeenJobs::default()),
        }
    }

    /// Adds the worker's families, and `sandbox`'s instances in use and
    /// module loads (read at each scrape), to `registry` (names start with
    /// `corral_`).
    pub fn register(self: &Arc<Self>, registry: &mut Registry, sandbox: &Sandbox) {
        registry.register(
            "corral_tasks_started",
            "Tasks leased and started by this worker",
            self.started.clone(),
        );
        registry.register(
            "corral_tasks_finished",
            "Tasks whose outcome the broker accepted: completed, retried (a failed attempt sent back) or dead, with the failure kind",
            self.finished.clone(),
        );
        registry.register(
            "corral_handler_duration_seconds",
            "Wall-clock time of each handler call, instantiation included",
            self.handler_seconds.clone(),
        );
        registry.register(
            "corral_handler_fuel",
            "Fuel each handler call consumed",
            self.handler_fuel.clone(),
        );
        registry.register(
            "corral_handler_peak_memory_bytes",
            "Peak linear memory of each handler call",
            self.handler_memory.clone(),
        );
        registry.register(
            "corral_leases_lost",
            "Tasks abandoned because their lease was lost or their progress could not be stored",
            self.leases_lost.clone(),
        );
        registry.register(
            "corral_acquire_batch_size",
            "Tasks leased per broker acquire that returned any",
            self.acquire_batch.clone(),
        );
        registry.register(
            "corral_queue_depth",
            "Tasks per tenant, queue and state, as last sampled",
            self.queue_depth.clone(),
        );
        registry.register_collector(Box::new(SandboxGauges(sandbox.clone())));
    }

    /// The metrics of `tenant`'s job `job`, resolved on first use.
    pub fn labels(&self, tenant: &str, job: &str) -> Arc<TaskLabels> {
        let mut seen = self.jobs_seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = seen.get(tenant, job) {
            return found;
        }
        let labels = JobLabels {
            tenant: self.tenants.fold(tenant),
            job: self.jobs.fold(job),
        };
        let (folded_tenant, folded_job) = (labels.tenant.clone(), labels.job.clone());
        let resolved = match seen.get(&folded_tenant, &folded_job) {
            Some(found) => found,
            None => Arc::new(TaskLabels {
                started: self.started.get_or_create(&labels).clone(),
                completed: self
                    .finished
                    .get_or_create(&FinishLabels {
                        tenant: labels.tenant.clone(),
                        job: labels.job.clone(),
                        outcome: "completed",
                        kind: String::new(),
                    })
                    .clone(),
                seconds: self.handler_seconds.get_or_create(&labels).clone(),
                fuel: self.handler_fuel.get_or_create(&labels).clone(),
                memory: self.handler_memory.get_or_create(&labels).clone(),
                labels,
            }),
        };
        // Names folded into `other` share its entry and add none.
        if seen.entries
            >= 4 * self
                .tenants
                .max
                .saturating_mul(self.jobs.max)
                .clamp(1, 1 << 16)
        {
            // Folded names each keep an entry; past this many, start over
            // rather than grow (the series themselves are kept).
            *seen = SeenJobs::default();
        }
        seen.insert(&folded_tenant, &folded_job, resolved.clone());
        seen.insert(tenant, job, resolved.clone());
        resolved
    }

    /// A task leased and started.
    pub fn started(&self, labels: &TaskLabels) {
        labels.started.inc();
    }

    /// Handler calls of one task, as the sandbox metered them.
    pub fn handler_calls(&self, labels: &TaskLabels, calls: &[CallMetering]) {
        for cost in calls {
            labels.seconds.observe(cost.wall_us as f64 / 1e6);
            labels.fuel.observe(cost.fuel as f64);
            labels.memory.observe(cost.peak_memory_bytes as f64);
        }
    }

    /// An outcome the broker accepted (releases are not counted: the task
    /// runs again elsewhere).
    pub fn finished(&self, labels: &TaskLabels, outcome: &Outcome) {
        let (outcome, kind) = match outcome {
            Outcome::Completed(_) => {
                labels.completed.inc();
                return;
            }
            Outcome::Retry { error, .. } => ("retried", kind_label(&error.kind)),
            Outcome::Dead(error) => ("dead", kind_label(&error.kind)),
            Outcome::Cancelled(error) => ("cancelled", kind_label(&error.kind)),
            Outcome::Release => return,
        };
        self.finished
            .get_or_create(&FinishLabels {
                tenant: labels.labels.tenant.clone(),
                job: labels.labels.job.clone(),
                outcome,
                kind,
            })
            .inc();
    }

    /// A task abandoned: lease lost, or progress not stored.
    pub fn lease_lost(&self) {
        self.leases_lost.inc();
    }

    /// An acquire that leased `n` tasks (`n > 0`).
    pub fn acquired(&self, n: usize) {
        self.acquire_batch.observe(n as f64);
    }

    /// A fresh depth sample: each tenant's queue with its counts. Tenants
    /// past the label bound are summed into [`OTHER`]; queues sampled
    /// before and absent now read 0.
    pub fn queue_depths(&self, sample: &[(String, String, QueueStats)]) {
        let mut now: HashMap<(String, String), QueueStats> = HashMap::new();
        for (tenant, queue, stats) in sample {
            let queue = if label_safe(queue) {
                queue.clone()
            } else {
                OTHER.to_owned()
            };
            let key = (self.tenants.fold(tenant), queue);
            let sum = now.entry(key).or_default();
            sum.pending += stats.pending;
            sum.scheduled += stats.scheduled;
            sum.active += stats.active;
            sum.completed += stats.completed;
            sum.dead += stats.dead;
        }
        let mut sampled = self.sampled.lock().unwrap_or_else(|p| p.into_inner());
        for key in sampled.iter() {
            now.entry(key.clone()).or_default();
        }
        for ((tenant, queue), stats) in &now {
            for (state, n) in [
                ("pending", stats.pending),
                ("scheduled", stats.scheduled),
                ("active", stats.active),
                ("completed", stats.completed),
                ("dead", stats.dead),
            ] {
                self.queue_depth
                    .get_or_create(&DepthLabels {
                        tenant: tenant.clone(),
                        queue: queue.clone(),
                        state,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        *sampled = now.into_keys().collect();
    }
}

/// The sandbox's gauges, read at each scrape.
struct SandboxGauges(Sandbox);

impl std::fmt::Debug for SandboxGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxGauges")
    }
}

impl Collector for SandboxGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let in_use = ConstGauge::new(self.0.instances_in_use() as i64);
        in_use.encode(encoder.encode_descriptor(
            "corral_instances_in_use",
            "Wasm instances alive now (from instantiation to the end of their call)",
            None,
            in_use.metric_type(),
        )?)?;
        let loads = self.0.load_counts();
        let hits = ConstCounter::new(loads.memory + loads.disk);
        hits.encode(encoder.encode_descriptor(
            "corral_compile_cache_hits",
            "Module loads answered by the compile cache (in memory or on disk)",
            None,
            hits.metric_type(),
        )?)?;
        let misses = ConstCounter::new(loads.compiled);
        misses.encode(encoder.encode_descriptor(
            "corral_compile_cache_misses",
            "Module loads that had to compile",
            None,
            misses.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that would break out of its label value is counted under
    /// `other`, and the scrape holds no series it wrote.
    #[test]
    fn names_cannot_write_into_the_scrape() {
        let sandbox = Sandbox::new(corral_sandbox::SandboxConfig::default()).expect("sandbox");
        let metrics = Arc::new(WorkerMetrics::new(10));
        let mut registry = Registry::default();
        metrics.register(&mut registry, &sandbox);
        let evil = "x\"} 1\nforged_total{a=\"b\"} 99\n# \\";
        metrics.started(&metrics.labels("acme", evil));
        metrics.started(&metrics.labels(evil, "job"));
        metrics.queue_depths(&[(
            "acme".into(),
            evil.into(),
            QueueStats {
                pending: 3,
                ..QueueStats::default()
            },
        )]);
        metrics.started(&metrics.labels("acme", "fine"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(!text.contains("forged"), "{text}");
        assert!(
            text.contains(r#"corral_tasks_started_total{tenant="acme",job="other"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"corral_tasks_started_total{tenant="other",job="job"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"corral_queue_depth{tenant="acme",queue="other",state="pending"} 3"#),
            "{text}"
        );
        // A safe name after the unsafe ones still gets its own label.
        assert!(
            text.contains(r#"corral_tasks_started_total{tenant="acme",job="fine"} 1"#),
            "{text}"
        );
    }
}
