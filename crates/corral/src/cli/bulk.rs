//! `corral enqueue --from FILE`: many tasks from JSON Lines, streamed.
//!
//! Each non-blank line is one JSON object with the fields of the HTTP API's
//! `POST /v1/tasks` body ([`NewTask`]): `job`, `args`, `queue`, `delay_ms`,
//! `max_attempts`, `priority`, `timeout_ms`, `deadline_ms`, `unique_key`,
//! `unique_ttl_ms`, `version`; unknown fields are refused. What a line
//! leaves out comes from the command line: the job given as `corral enqueue
//! JOB --from FILE`, `--queue`, `--delay`, `--deadline`, `--max-attempts`,
//! `--priority`;
//! the `--arg`/`--json-arg` args are added to the line's `args`, the line
//! winning where both name a key. Every task goes to `--tenant`.
//!
//! A reader thread parses and checks lines while earlier ones are stored,
//! and hands over batches of at most [`BATCH`] consecutive lines (and
//! [`BATCH_BYTES`]), cut where the queue changes, so each batch is one
//! atomic store in the broker: all of it or none. Memory stays bounded
//! whatever the input's size: two batches wait at most, and a line longer
//! than [`MAX_LINE_BYTES`] is an error.
//!
//! The first bad line (not JSON, not a task, a job the tenant does not
//! have) or a refusal (the tenant's `max_queued` or `max_queues`) stops the
//! run with an error naming its line: every task of the lines before it is
//! enqueued and its id printed, nothing from that line on, so the rest can
//! be sent again with `tail -n +LINE`. The ids go to stdout, one per line in
//! the input's order (only their count with `--quiet`); a progress bar goes
//! to stderr on a terminal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::broker::{Broker, RedisBroker};
use crate::catalog::RedisCatalog;
use crate::job::JobDefinition;
use crate::submit::{NewTask, find_job};
use crate::task::ArgsMap;
use crate::tenant::Tenant;

/// Most lines stored in one call (the Redis broker's script takes up to
/// 1,000 tasks of one queue in one atomic step).
pub(super) const BATCH: usize = 1000;
/// Most bytes of input in one batch.
pub(super) const BATCH_BYTES: u64 = 16 << 20;
/// Longest line accepted.
pub(super) const MAX_LINE_BYTES: u64 = 16 << 20;
/// Job definitions remembered at once while enqueueing.
const JOB_CACHE: usize = 1024;

/// What the command line gives every line that leaves it out.
#[derive(Debug, Clone)]
pub(super) struct Defaults {
    /// `corral enqueue JOB`.
    pub job: Option<String>,
    /// `--arg` and `--json-arg`.
    pub args: ArgsMap,
    /// `--queue`.
    pub queue: String,
    /// `--delay`, in ms.
    pub delay_ms: Option<u64>,
    /// `--deadline`, in ms.
    pub deadline_ms: Option<u64>,
    /// `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// `--priority`.
    pub priority: Option<u8>,
}

impl Defaults {
    /// The one task the flags describe (no `--from`).
    pub fn task(&self, job: String) -> NewTask {
        NewTask {
            job,
            args: self.args.clone(),
            queue: Some(self.queue.clone()),
            delay_ms: self.delay_ms,
            deadline_ms: self.deadline_ms,
            max_attempts: self.max_attempts,
            priority: self.priority,
            ..NewTask::default()
        }
    }

    /// The task of one line, the flags filling in what it leaves out.
    fn parse(&self, bytes: &[u8]) -> Result<NewTask, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(mut map) = value else {
            return Err(
                "not a JSON object (one task per line: {\"job\": …, \"args\": {…}})".into(),
            );
        };
        if let Some(job) = &self.job {
            map.entry("job")
                .or_insert_with(|| Value::from(job.as_str()));
        }
        map.entry("queue")
            .or_insert_with(|| Value::from(self.queue.as_str()));
        if let Some(d) = self.delay_ms {
            map.entry("delay_ms").or_insert(Value::from(d));
        }
        if let Some(d) = self.deadline_ms {
            map.entry("deadline_ms").or_insert(Value::from(d));
        }
        if let Some(n) = self.max_attempts {
            map.entry("max_attempts").or_insert(Value::from(n));
        }
        if let Some(p) = self.priority {
            map.entry("priority").or_insert(Value::from(p));
        }
        match map.get_mut("args") {
            None => {
                map.insert("args".into(), Value::Object(self.args.clone()));
            }
            Some(Value::Object(args)) => {
                for (k, v) in &self.args {
                    args.entry(k.as_str()).or_insert_with(|| v.clone());
                }
            }
            // Not an object: the task's own parse says so.
            Some(_) => {}
        }
        let task: NewTask =
            serde_json::from_value(Value::Object(map)).map_err(|e| format!("not a task: {e}"))?;
        task.check().map_err(|e| e.to_string())?;
        Ok(task)
    }
}

/// Where the lines come from.
pub(super) struct Source {
    reader: Box<dyn BufRead + Send>,
    /// Its size, when it is a regular file (for the bar).
    size: Option<u64>,
    name: String,
}

/// Opens `path` (`-`: standard input).
pub(super) fn open(path: &Path) -> anyhow::Result<Source> {
    if path == Path::new("-") {
        return Ok(Source {
            reader: Box::new(BufReader::new(std::io::stdin())),
            size: None,
            name: "standard input".into(),
        });
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok(Source {
        reader: Box::new(BufReader::with_capacity(256 << 10, file)),
        size,
        name: PathBuf::from(path).display().to_string(),
    })
}

/// Consecutive parsed lines of one queue.
#[derive(Default)]
struct Batch {
    /// (line number, task).
    tasks: Vec<(u64, NewTask)>,
    /// Bytes of input read up to the end of this batch.
    read: u64,
}

/// What the reader hands over: a batch, then possibly the line it stopped
/// at and why.
enum Chunk {
    Lines(Batch),
    Stop { line: u64, why: String },
}

/// Reads, parses and checks lines on this (blocking) thread; sends batches
/// until the input ends, a line is bad, or the receiver is gone.
fn read_lines(mut source: Source, defaults: Defaults, tx: mpsc::Sender<Chunk>) {
    let mut batch = Batch::default();
    let mut batch_bytes = 0u64;
    let mut read = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        line_no += 1;
        let got = (&mut source.reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf);
        let stop = match got {
            Ok(0) => break,
            Err(e) => Some(format!("reading {}: {e}", source.name)),
            Ok(n) if n as u64 > MAX_LINE_BYTES => {
                Some(format!("longer than {} MiB", MAX_LINE_BYTES >> 20))
            }
            Ok(n) => {
                read += n as u64;
                let line = buf.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                match defaults.parse(line) {
                    Ok(task) => {
                        let other_queue = batch
                            .tasks
                            .first()
                            .is_some_and(|(_, first)| first.queue != task.queue);
                        if other_queue || batch.tasks.len() >= BATCH || batch_bytes >= BATCH_BYTES {
                            if tx
                                .blocking_send(Chunk::Lines(std::mem::take(&mut batch)))
                                .is_err()
                            {
                                return;
                            }
                            batch_bytes = 0;
                        }
                        batch_bytes += n as u64;
                        batch.tasks.push((line_no, task));
                        batch.read = read;
                        None
                    }
                    Err(why) => Some(why),
                }
            }
        };
        if let Some(why) = stop {
            let _ = tx.blocking_send(Chunk::Lines(batch));
            let _ = tx.blocking_send(Chunk::Stop { line: line_no, why });
            return;
        }
    }
    let _ = tx.blocking_send(Chunk::Lines(batch));
}

/// Enqueues every line of `source` for `tenant`; prints the ids (or their
/// count when `quiet`).
pub(super) async fn run(
    source: Source,
    defaults: Defaults,
    broker: &RedisBroker,
    catalog: &RedisCatalog,
    tenant: &Tenant,
    quiet: bool,
) -> anyhow::Result<()> {
    let bar = super::progress::bytes_bar(source.size);
    bar.set_message("0 tasks enqueued");
    let (tx, mut rx) = mpsc::channel(2);
    let reader = std::thread::spawn(move || read_lines(source, defaults, tx));
    let quota = tenant.limits.queue_quota();
    let mut jobs: HashMap<(String, Option<u32>), JobDefinition> = HashMap::new();
    let mut enqueued = 0u64;
    let stopped = |line: u64, why: &dyn std::fmt::Display, enqueued: u64| {
        anyhow::anyhow!(
            "line {line}: {why}\n{enqueued} task(s) from the lines before line {line} are \
             enqueued; nothing from line {line} on (resume with `tail -n +{line}`)"
        )
    };
    while let Some(chunk) = rx.recv().await {
        let batch = match chunk {
            Chunk::Lines(batch) => batch,
            Chunk::Stop { line, why } => {
                drop(bar);
                return Err(stopped(line, &why, enqueued));
            }
        };
        let Some(&(first, _)) = batch.tasks.first() else {
            continue;
        };
        let mut tasks = Vec::with_capacity(batch.tasks.len());
        let mut bad = None;
        for (line, request) in batch.tasks {
            let key = (request.job.clone(), request.version);
            if !jobs.contains_key(&key) {
                match find_job(catalog, &tenant.name, &request.job, request.version).await {
                    Ok(job) => {
                        if jobs.len() >= JOB_CACHE {
                            jobs.clear();
                        }
                        jobs.insert(key.clone(), job);
                    }
                    Err(e) => {
                        bad = Some((line, e));
                        break;
                    }
                }
            }
            if let Some(job) = jobs.get(&key) {
                tasks.push(request.into_task(&tenant.name, job));
            }
        }
        if !tasks.is_empty() {
            let mut ids = String::with_capacity(tasks.len() * 37);
            for task in &tasks {
                let _ = writeln!(ids, "{}", task.task_id);
            }
            let n = tasks.len() as u64;
            if let Err(e) = broker.enqueue_within(tasks, &quota).await {
                drop(bar);
                return Err(stopped(first, &e, enqueued));
            }
            enqueued += n;
            if !quiet {
                bar.suspend(|| say!("{}", ids.trim_end()));
            }
            bar.set_position(batch.read);
            bar.set_message(format!("{enqueued} tasks enqueued"));
        }
        if let Some((line, e)) = bad {
            drop(bar);
            let why = format!("{e} for tenant `{}`", tenant.name);
            return Err(stopped(line, &why, enqueued));
        }
    }
    drop(bar);
    if reader.join().is_err() {
        bail!("the input reader failed");
    }
    if quiet {
        say!("{enqueued}");
    }
    Ok(())
}
