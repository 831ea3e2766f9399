//! `corral replay ID`: runs a finished task again, here and outside the
//! broker, and compares the run with what the worker stored.
//!
//! The task is read from the shared (Redis) broker; only a completed or
//! dead task is replayed. Its job definition comes from the catalog on the
//! same Redis at the version the task was pinned to (the newest when it was
//! enqueued without one, which the report says): the same module hashes,
//! the same limits, the wall-clock limit narrowed by the task's own
//! `timeout_ms` as the worker narrows it. Handler 0 gets the task's
//! original args, each next handler what the one before returned, and each
//! call is told the attempt in which the stored run last called that
//! handler. Every call is recorded on a copy of the task with the worker's
//! own steps ([`crate::worker::record_call`]), so the copy is what the task
//! would hold had this run been the one that happened, and the two are
//! compared field by field.
//!
//! Compared, and a difference when unequal: per handler, fuel, peak linear
//! memory and the guest log (the task's `[index:name]` lines); then the
//! outcome (completed, or the failing handler, error kind, message and
//! retryability), the final args and the result log. Shown but never
//! compared: wall-clock and instantiation times, which depend on the
//! machine. A call that ended on its deadline stopped at a time, not at an
//! instruction: its fuel and memory are shown, not compared.
//!
//! What a guest reads from the clocks or random interfaces can change its
//! result from one run to the next; the sandbox counts those calls per
//! call ([`crate::sandbox::WasiUse`]) and the report gives the replay's
//! counts per handler, naming them beside any difference they may explain.
//! Nothing is known of the stored run's own calls: the report speaks of the
//! replay only.
//!
//! Exit status: 0 when the replay matches on every compared field, 1 when
//! it differs ([`REPLAY_DIFFERS`]), 2 when there is nothing to compare
//! ([`REPLAY_FAILED`]: the task is missing, not finished or malformed, its
//! job version or a module is gone from the catalog, Redis is unreachable).
//!
//! Nothing is written to the broker or the catalog: this module only reads
//! them, runs handlers in its own sandbox and prints.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use super::broker_cmds::RedisArgs;
use super::sandbox_args::sandbox_config;
use super::units;
use crate::broker::{Broker, MALFORMED};
use crate::metering::{CallMetering, HandlerMetering, TaskMetering};
use crate::registry::{Registry, RegistryError, ResolvedJob};
use crate::sandbox::{Limits, Sandbox, WasiUse};
use crate::task::{ArgsMap, DEFAULT_TENANT, Task, TaskError, TaskId, TaskState};
use crate::text::Inert;
use crate::worker::{call_context, record_call, task_limits};

/// `corral replay`'s exit status when the replay differs from the stored run.
pub const REPLAY_DIFFERS: u8 = 1;

/// `corral replay`'s exit status when nothing could be replayed.
pub const REPLAY_FAILED: u8 = 2;

/// Most bytes of one args or text value the text report prints (the JSON
/// report has them whole).
const SHOWN_BYTES: usize = 2 << 10;

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The id of a completed or dead task.
    id: TaskId,
    /// The owning tenant.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `corral replay`.
pub(super) async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let report = match replay(&args).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(REPLAY_FAILED));
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print();
    }
    Ok(if report.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REPLAY_DIFFERS)
    })
}

/// One handler call of the replay.
struct Call {
    /// The attempt the guest was told.
    attempt: u32,
    /// The args it was given.
    args_in: ArgsMap,
    /// Its args and result text, or the error the task would store.
    outcome: Result<(ArgsMap, String), TaskError>,
    /// Its log lines as the task stores them (`[index:name]…`).
    log: Vec<String>,
    metering: CallMetering,
    wasi: WasiUse,
}

/// What a handler did in the stored run, as far as the task says.
struct StoredHandler {
    metering: Option<HandlerMetering>,
    log: Vec<String>,
}

/// One field where the replay and the stored run disagree.
struct Difference {
    /// A stable name: `handlers[1].fuel`, `outcome`, `args`, ...
    field: String,
    handler: Option<u32>,
    /// For people: what differs, and what may explain it.
    message: String,
    stored: Value,
    replay: Value,
}

/// Everything `corral replay` prints.
struct Report {
    stored: Task,
    version: u32,
    pinned: bool,
    names: Vec<String>,
    modules: Vec<String>,
    limits: Limits,
    /// The replay's copy of the task after its run.
    copy: Task,
    calls: Vec<Call>,
    stored_handlers: Vec<StoredHandler>,
    /// The replay's failure, if a handler failed.
    failure: Option<TaskError>,
    differences: Vec<Difference>,
    notes: Vec<String>,
}

async fn replay(args: &ReplayArgs) -> anyhow::Result<Report> {
    let (id, tenant) = (args.id, args.tenant.as_str());
    let broker = args.redis.connect("replay").await?;
    let Some(stored) = broker
        .task(tenant, id)
        .await
        .with_context(|| format!("reading task {id}"))?
    else {
        bail!(
            "task {id} not found for tenant `{}` (never enqueued, or dropped after its retention period)",
            Inert(tenant)
        );
    };
    if !stored.state.is_final() {
        bail!(
            "task {id} is {}: only a finished (completed or dead) task can be replayed; \
             `corral wait {id}` waits for it to finish",
            stored.state
        );
    }
    if let Some(e) = stored.error.as_ref().filter(|e| e.kind == MALFORMED) {
        bail!(
            "task {id} never ran, there is nothing to replay: {}",
            Inert(&e.message)
        );
    }

    let catalog = args.redis.catalog("replay").await?;
    let registry = Registry::with_catalog(Sandbox::new(sandbox_config())?, Arc::new(catalog));
    let job = resolve(&registry, &stored).await?;
    let def = &job.definition;
    let limits = task_limits(&def.limits, &stored);
    let count = job.handlers.len() as u32;

    // The copy the replay runs on: the task as it was enqueued.
    let mut copy = stored.clone();
    copy.current_handler_index = 0;
    copy.args_map = stored.original_args_map.clone();
    copy.result_log.clear();
    copy.log.clear();
    copy.metering = TaskMetering::default();
    copy.error = None;

    let sandbox = registry.sandbox();
    let mut calls = Vec::new();
    let mut failure = None;
    while copy.current_handler_index < count {
        let index = copy.current_handler_index;
        // The attempt in which the stored run last called this handler (the
        // call its metering and error describe), or its last attempt.
        copy.attempt =
            stored_metering(&stored.metering, index).map_or(stored.attempt, |m| m.attempt);
        let args_in = copy.args_map.clone();
        let ctx = call_context(&copy, count);
        let (result, wasi) = sandbox
            .call_counted(&job.handlers[index as usize], ctx, &args_in, &limits)
            .await;
        let (metering, output) = match &result {
            Ok(out) => (out.metering, (out.args.clone(), out.result_log.clone())),
            Err(err) => (err.metering, Default::default()),
        };
        let log_from = copy.log.len();
        let recorded = record_call(&mut copy, &def.handlers[index as usize], result);
        let log = copy.log[log_from..].lines().map(str::to_owned).collect();
        let outcome = match recorded {
            Ok(()) => Ok(output),
            Err(e) => Err(e),
        };
        let failed = outcome.as_ref().err().cloned();
        calls.push(Call {
            attempt: copy.attempt,
            args_in,
            outcome,
            log,
            metering,
            wasi,
        });
        if let Some(e) = failed {
            failure = Some(e);
            break;
        }
    }

    let names: Vec<String> = def.handlers.iter().map(|h| h.name.clone()).collect();
    let stored_handlers = (0..count)
        .map(|i| StoredHandler {
            metering: stored_metering(&stored.metering, i).copied(),
            log: stored
                .log
                .lines()
                .filter(|l| l.starts_with(&log_prefix(i, &names[i as usize])))
                .map(str::to_owned)
                .collect(),
        })
        .collect();
    let mut report = Report {
        pinned: stored.job_version.is_some(),
        version: def.version,
        modules: def.handlers.iter().map(|h| h.module.to_string()).collect(),
        names,
        limits,
        stored,
        copy,
        calls,
        stored_handlers,
        failure,
        differences: Vec::new(),
        notes: Vec::new(),
    };
    report.compare();
    Ok(report)
}

/// The job version the task ran, with its handlers loaded from the
/// catalog's module bytes; a clear error when any of it is gone.
async fn resolve(registry: &Registry, task: &Task) -> anyhow::Result<Arc<ResolvedJob>> {
    let (tenant, name) = (Inert(&task.tenant), Inert(&task.job_name));
    match registry
        .resolve(&task.tenant, &task.job_name, task.job_version)
        .await
    {
        Ok(job) => Ok(job),
        Err(RegistryError::UnknownVersion { version, .. }) => bail!(
            "job `{name}` of tenant `{tenant}` has no version {version} any more: \
             the handlers task {} ran are gone from the catalog",
            task.task_id
        ),
        Err(RegistryError::UnknownJob { .. }) => {
            bail!("tenant `{tenant}` has no job `{name}` (any more) in the catalog")
        }
        Err(RegistryError::UnknownModule(hash)) => bail!(
            "module {hash} of job `{name}` is no longer in the catalog: \
             the exact handler task {} ran cannot be loaded",
            task.task_id
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "loading job `{name}` of tenant `{tenant}` from the catalog"
        ))),
    }
}

fn stored_metering(metering: &TaskMetering, index: u32) -> Option<&HandlerMetering> {
    metering.handlers.iter().find(|h| h.handler_index == index)
}

/// What the worker puts before each log line of handler `index`.
fn log_prefix(index: u32, name: &str) -> String {
    format!("[{index}:{}]", Inert(name))
}

/// Kinds of failure that depend on the machine or on when someone acted,
/// not on the guest: a cancel stops a call wherever it happens to be.
fn timing_dependent(kind: &str) -> bool {
    matches!(kind, "deadline" | "instantiate" | "cancelled")
}

/// `text`, cut to [`SHOWN_BYTES`] with a note of what was left out, inert.
fn clip(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return Inert(text).to_string();
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", Inert(&text[..end]), text.len() - end)
}

fn args_text(args: &ArgsMap) -> String {
    clip(&serde_json::to_string(args).unwrap_or_default())
}

fn wasi_json(w: &WasiUse) -> Value {
    json!({
        "any": w.any,
        "wall_clock": w.wall_clock,
        "monotonic_clock": w.monotonic_clock,
        "random": w.random,
        "insecure_random": w.insecure_random,
        "insecure_seed": w.insecure_seed,
    })
}

fn error_json(e: &TaskError) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// One line on what a call asked of WASI.
fn wasi_text(w: &WasiUse) -> String {
    if !w.any {
        return "no WASI calls".to_owned();
    }
    let counts = [
        ("wall clock", w.wall_clock),
        ("monotonic clock", w.monotonic_clock),
        ("random", w.random),
        ("insecure random", w.insecure_random),
        ("insecure seed", w.insecure_seed),
    ];
    let used: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} ×{n}"))
        .collect();
    if used.is_empty() {
        "WASI calls, none to a clock or random".to_owned()
    } else {
        format!("read {}", used.join(", "))
    }
}

/// Where a failure happened, for messages: `at handler 1 (`x`) with kind
/// K: message`.
fn outcome_text(error: Option<&TaskError>, names: &[String]) -> String {
    match error {
        None => "with no error stored".to_owned(),
        Some(e) => {
            let at = match e.handler_index {
                Some(i) => format!(
                    "at handler {i} (`{}`)",
                    Inert(names.get(i as usize).map_or("?", String::as_str))
                ),
                None => "before any handler ran".to_owned(),
            };
            format!("{at} with kind {}: {}", Inert(&e.kind), clip(&e.message))
        }
    }
}

impl Report {
    fn handler_name(&self, index: u32) -> String {
        format!(
            "{index} (`{}`)",
            Inert(self.names.get(index as usize).map_or("?", String::as_str))
        )
    }

    /// Handlers whose replayed call read a clock or random numbers, up to
    /// and including `upto`.
    fn nondeterministic(&self, upto: Option<u32>) -> Vec<u32> {
        (0..self.calls.len() as u32)
            .filter(|i| upto.is_none_or(|u| *i <= u))
            .filter(|i| {
                let w = &self.calls[*i as usize].wasi;
                w.clock_calls() > 0 || w.random_calls() > 0
            })
            .collect()
    }

    /// The hint added to a difference that a clock or random read before
    /// it may explain.
    fn wasi_hint(&self, upto: Option<u32>) -> String {
        let readers = self.nondeterministic(upto);
        if readers.is_empty() {
            return String::new();
        }
        let names: Vec<String> = readers.iter().map(|i| self.handler_name(*i)).collect();
        format!(
            " (in the replay, handler {} read a clock or random numbers, which may explain it)",
            names.join(", ")
        )
    }

    fn differ(
        &mut self,
        field: String,
        handler: Option<u32>,
        message: String,
        stored: Value,
        replay: Value,
    ) {
        self.differences.push(Difference {
            field,
            handler,
            message,
            stored,
            replay,
        });
    }

    fn compare(&mut self) {
        let stored_error = self.stored.error.clone();
        let stored_completed = self.stored.state == TaskState::Completed;
        if !self.pinned {
            self.notes.push(format!(
                "the task was enqueued without a job version: replayed the newest, v{}; \
                 the worker ran the newest it knew of when the task ran, which may be older",
                self.version
            ));
        }
        let calls_made = self.stored.metering.total.calls;
        let handlers_metered = self.stored.metering.handlers.len() as u64;
        // Only a handler that failed is ever called again (a retry resumes
        // at it), and its log keeps every call's lines.
        let retried = calls_made > handlers_metered;
        if retried {
            self.notes.push(format!(
                "the stored run made {calls_made} handler calls over {} attempts for {handlers_metered} \
                 handlers: a handler's stored metering is its last call, and its stored log may hold \
                 earlier calls' lines before the last call's; the replay calls each handler once, \
                 telling it the attempt of that last call",
                self.stored.attempt
            ));
        }
        let no_metering = self.stored.metering.is_empty();
        if no_metering
            && (stored_completed
                || stored_error
                    .as_ref()
                    .is_some_and(|e| e.handler_index.is_some()))
        {
            self.notes.push(
                "the stored run has no metering (written by a worker that did not meter?): \
                 fuel and memory are not compared"
                    .to_owned(),
            );
        }

        for i in 0..self.names.len() as u32 {
            self.compare_handler(i, retried, no_metering, stored_completed, &stored_error);
        }

        // Log lines of the stored run that no handler of this version wrote.
        let foreign = self
            .stored
            .log
            .lines()
            .filter(|l| {
                !(0..self.names.len() as u32)
                    .any(|i| l.starts_with(&log_prefix(i, &self.names[i as usize])))
            })
            .count();
        if foreign > 0 {
            self.differ(
                "log".into(),
                None,
                format!(
                    "the stored log has {foreign} line(s) no handler of this job version wrote"
                ),
                json!(self.stored.log),
                json!(self.copy.log),
            );
        }

        let replay_error = self.failure.clone();
        let states_agree = stored_completed == replay_error.is_none();
        if !states_agree {
            let message = match &replay_error {
                None => format!(
                    "the stored run died {} but the replay completed",
                    outcome_text(stored_error.as_ref(), &self.names)
                ),
                Some(e) => format!(
                    "the stored run completed but the replay failed {}",
                    outcome_text(Some(e), &self.names)
                ),
            };
            let kinds = [stored_error.as_ref(), replay_error.as_ref()];
            let timing = if kinds.iter().flatten().any(|e| timing_dependent(&e.kind)) {
                " (a `deadline` or `instantiate` failure depends on the machine's speed and load)"
            } else {
                ""
            };
            let hint = self.wasi_hint(None);
            self.differ(
                "outcome".into(),
                None,
                format!("{message}{timing}{hint}"),
                stored_error.as_ref().map_or(json!("completed"), error_json),
                replay_error.as_ref().map_or(json!("completed"), error_json),
            );
            return;
        }
        if let (Some(s), Some(r)) = (&stored_error, &replay_error)
            && s != r
        {
            let timing = if timing_dependent(&s.kind) || timing_dependent(&r.kind) {
                " (a `deadline` or `instantiate` failure depends on the machine's speed and load)"
            } else {
                ""
            };
            let hint = self.wasi_hint(None);
            self.differ(
                "error".into(),
                r.handler_index.or(s.handler_index),
                format!(
                    "the error differs: the stored run died {}; the replay failed {}{}{timing}{hint}",
                    outcome_text(Some(s), &self.names),
                    outcome_text(Some(r), &self.names),
                    if s.retryable != r.retryable {
                        format!(
                            " (retryable: stored {}, replay {})",
                            s.retryable, r.retryable
                        )
                    } else {
                        String::new()
                    }
                ),
                error_json(s),
                error_json(r),
            );
        }
        if self.stored.args_map != self.copy.args_map {
            let changed = args_changes(&self.stored.args_map, &self.copy.args_map);
            let what = if stored_completed {
                "the final args differ"
            } else {
                "the args at the failed handler differ"
            };
            let hint = self.wasi_hint(None);
            self.differ(
                "args".into(),
                None,
                format!("{what}: {changed}{hint}"),
                json!(self.stored.args_map),
                json!(self.copy.args_map),
            );
        }
        if self.stored.result_log != self.copy.result_log {
            let hint = self.wasi_hint(None);
            self.differ(
                "result_log".into(),
                None,
                format!(
                    "the result log differs: stored \"{}\", replay \"{}\"{hint}",
                    clip(&self.stored.result_log),
                    clip(&self.copy.result_log)
                ),
                json!(self.stored.result_log),
                json!(self.copy.result_log),
            );
        }
    }

    fn compare_handler(
        &mut self,
        i: u32,
        retried: bool,
        no_metering: bool,
        stored_completed: bool,
        stored_error: &Option<TaskError>,
    ) {
        let name = self.handler_name(i);
        let Some(call) = self.calls.get(i as usize) else {
            return;
        };
        let metering = call.metering;
        let replay_kind = call.outcome.as_ref().err().map(|e| e.kind.clone());
        let replay_log = call.log.clone();
        let stored = &self.stored_handlers[i as usize];
        let stored_log = stored.log.clone();
        // Whether the stored run called this handler: the task says so by
        // its metering, or by how far it got.
        let stored_reached = stored_completed
            || stored_error
                .as_ref()
                .and_then(|e| e.handler_index)
                .is_some_and(|h| i <= h);
        let hint = self.wasi_hint(Some(i));
        match stored.metering {
            Some(m) => {
                let stored_kind = stored_error
                    .as_ref()
                    .filter(|e| e.handler_index == Some(i))
                    .map(|e| e.kind.clone());
                let by_time = [&replay_kind, &stored_kind]
                    .iter()
                    .any(|k| k.as_deref().is_some_and(|k| k == "deadline"));
                if by_time {
                    if m.cost.fuel != metering.fuel {
                        self.notes.push(format!(
                            "handler {name} ended on its deadline: its fuel (stored {}, replay {}) \
                             and memory depend on when it was stopped and are not compared",
                            m.cost.fuel, metering.fuel
                        ));
                    }
                } else {
                    if m.cost.fuel != metering.fuel {
                        self.differ(
                            format!("handlers[{i}].fuel"),
                            Some(i),
                            format!(
                                "handler {name}: fuel differs: stored {}, replay {}{hint}",
                                m.cost.fuel, metering.fuel
                            ),
                            json!(m.cost.fuel),
                            json!(metering.fuel),
                        );
                    }
                    if m.cost.peak_memory_bytes != metering.peak_memory_bytes {
                        self.differ(
                            format!("handlers[{i}].peak_memory_bytes"),
                            Some(i),
                            format!(
                                "handler {name}: peak memory differs: stored {} bytes, replay {} bytes{hint}",
                                m.cost.peak_memory_bytes, metering.peak_memory_bytes
                            ),
                            json!(m.cost.peak_memory_bytes),
                            json!(metering.peak_memory_bytes),
                        );
                    }
                }
            }
            None if stored_reached && !no_metering => {
                self.differ(
                    format!("handlers[{i}].metering"),
                    Some(i),
                    format!("handler {name}: the stored run has no metering for it, though it ran"),
                    Value::Null,
                    serde_json::to_value(metering).unwrap_or(Value::Null),
                );
            }
            None => {}
        }
        if !stored_reached {
            // The outcome's difference says the stored run stopped before.
            return;
        }
        // A retried handler's stored log may hold earlier calls' lines first.
        let same_log = stored_log == replay_log || (retried && stored_log.ends_with(&replay_log));
        if !same_log {
            self.differ(
                format!("handlers[{i}].log"),
                Some(i),
                format!(
                    "handler {name}: the log differs: stored {} line(s), replay {} line(s){hint}",
                    stored_log.len(),
                    replay_log.len()
                ),
                json!(stored_log),
                json!(replay_log),
            );
        }
    }

    fn to_json(&self) -> Value {
        let handlers: Vec<Value> = (0..self.names.len())
            .map(|i| {
                let stored = &self.stored_handlers[i];
                let replay = self.calls.get(i).map(|c| {
                    let (args_out, result, error) = match &c.outcome {
                        Ok((args, text)) => (json!(args), json!(text), Value::Null),
                        Err(e) => (Value::Null, Value::Null, error_json(e)),
                    };
                    json!({
                        "attempt": c.attempt,
                        "args_in": c.args_in,
                        "args_out": args_out,
                        "result": result,
                        "error": error,
                        "log": c.log,
                        "metering": c.metering,
                        "wasi": wasi_json(&c.wasi),
                    })
                });
                json!({
                    "index": i,
                    "name": self.names[i],
                    "module": self.modules[i],
                    "replay": replay,
                    "stored": {
                        "metering": stored.metering,
                        "log": stored.log,
                    },
                })
            })
            .collect();
        let differences: Vec<Value> = self
            .differences
            .iter()
            .map(|d| {
                json!({
                    "field": d.field,
                    "handler": d.handler,
                    "message": d.message,
                    "stored": d.stored,
                    "replay": d.replay,
                })
            })
            .collect();
        let s = &self.stored;
        json!({
            "task_id": s.task_id,
            "tenant": s.tenant,
            "job": s.job_name,
            "job_version": self.version,
            "version_pinned": self.pinned,
            "limits": self.limits,
            "matches": self.differences.is_empty(),
            "stored": {
                "state": s.state,
                "attempt": s.attempt,
                "calls": s.metering.total.calls,
                "error": s.error,
                "args": s.args_map,
                "result_log": s.result_log,
            },
            "replay": {
                "state": if self.failure.is_some() { "failed" } else { "completed" },
                "error": self.failure,
                "args": self.copy.args_map,
                "result_log": self.copy.result_log,
            },
            "handlers": handlers,
            "differences": differences,
            "notes": self.notes,
            "wasi_counted": "per replayed call: calls to wasi:clocks/wall-clock, wasi:clocks/monotonic-clock \
                 (subscriptions included), wasi:random/random, wasi:random/insecure and \
                 wasi:random/insecure-seed; nothing is known of the stored run's own calls",
        })
    }

    fn print(&self) {
        let s = &self.stored;
        let stored_state = match &s.error {
            Some(e) if s.state == TaskState::Dead => {
                format!("dead {}", outcome_text(Some(e), &self.names))
            }
            _ => s.state.to_string(),
        };
        say!(
            "replay of task {} (tenant `{}`, job `{}` v{}{}, {} handler(s))",
            s.task_id,
            Inert(&s.tenant),
            Inert(&s.job_name),
            self.version,
            if self.pinned {
                ""
            } else {
                ", newest: not pinned"
            },
            self.names.len()
        );
        say!(
            "  stored: {stored_state}; attempt {}/{}, {} handler call(s)",
            s.attempt,
            s.max_attempts,
            s.metering.total.calls
        );
        let l = &self.limits;
        say!(
            "  limits: fuel {}, memory {}, timeout {} ms, output {} bytes, log {} bytes",
            l.fuel,
            units::mib(l.memory_bytes),
            l.timeout_ms,
            l.max_output_bytes,
            l.max_log_bytes
        );
        for i in 0..self.names.len() {
            say!();
            self.print_handler(i);
        }
        say!();
        say!(
            "outcome: stored {stored_state}; replay {}",
            match &self.failure {
                None => "completed".to_owned(),
                Some(e) => format!("failed {}", outcome_text(Some(e), &self.names)),
            }
        );
        if s.args_map == self.copy.args_map {
            say!("  args (same): {}", args_text(&s.args_map));
        } else {
            say!("  args, stored: {}", args_text(&s.args_map));
            say!("  args, replay: {}", args_text(&self.copy.args_map));
        }
        if s.result_log == self.copy.result_log {
            say!("  result log (same): {}", clip(&s.result_log));
        } else {
            say!("  result log, stored: {}", clip(&s.result_log));
            say!("  result log, replay: {}", clip(&self.copy.result_log));
        }
        for note in &self.notes {
            say!("note: {note}");
        }
        say!(
            "note: clock and random use is counted per replayed call (calls to wasi:clocks/wall-clock, \
             wasi:clocks/monotonic-clock with its subscriptions, wasi:random/random, /insecure, \
             /insecure-seed); nothing is known of the stored run's own calls"
        );
        if self.differences.is_empty() {
            say!(
                "same: the replay matches the stored run on every compared field (fuel, peak memory, \
                 logs, outcome, args, result log; times are not compared)"
            );
        } else {
            say!("differs ({}):", self.differences.len());
            for d in &self.differences {
                say!("  - {}", d.message);
            }
        }
    }

    fn print_handler(&self, i: usize) {
        let stored = &self.stored_handlers[i];
        say!(
            "handler {} module {}",
            self.handler_name(i as u32),
            Inert(&self.modules[i])
        );
        let Some(call) = self.calls.get(i) else {
            say!("  replay: did not run (an earlier handler failed)");
            match &stored.metering {
                Some(m) => say!(
                    "  stored: ran (attempt {}), fuel {}",
                    m.attempt,
                    m.cost.fuel
                ),
                None => say!("  stored: did not run"),
            }
            return;
        };
        say!("  attempt: {}", call.attempt);
        say!("  args in: {}", args_text(&call.args_in));
        match &call.outcome {
            Ok((args, text)) => {
                say!("  args out: {}", args_text(args));
                if !text.is_empty() {
                    say!("  result: {}", clip(text));
                }
            }
            Err(e) => say!("  failed: {}: {}", Inert(&e.kind), clip(&e.message)),
        }
        if stored.log == call.log {
            print_lines("log (same)", &call.log);
        } else {
            print_lines("log, stored", &stored.log);
            print_lines("log, replay", &call.log);
        }
        let m = &call.metering;
        let sm = stored.metering.map(|h| h.cost);
        let mut line = String::new();
        let _ = write!(line, "  fuel: replay {}", m.fuel);
        match sm {
            Some(c) if c.fuel == m.fuel => line.push_str(", stored the same"),
            Some(c) => {
                let _ = write!(line, ", stored {}", c.fuel);
            }
            None => line.push_str(", stored none"),
        }
        say!("{line}");
        say!(
            "  peak memory: replay {}{}",
            units::mib(m.peak_memory_bytes),
            match sm {
                Some(c) if c.peak_memory_bytes == m.peak_memory_bytes => ", stored the same".into(),
                Some(c) => format!(", stored {}", units::mib(c.peak_memory_bytes)),
                None => String::new(),
            }
        );
        let time = |us: u64| units::ms(Duration::from_micros(us));
        say!(
            "  wall: replay {} (instantiating {}){} (times are not compared)",
            time(m.wall_us),
            time(m.instantiate_us),
            match sm {
                Some(c) => format!(
                    ", stored {} (instantiating {})",
                    time(c.wall_us),
                    time(c.instantiate_us)
                ),
                None => String::new(),
            }
        );
        say!("  wasi (replay): {}", wasi_text(&call.wasi));
    }
}

fn print_lines(label: &str, lines: &[String]) {
    if lines.is_empty() {
        say!("  {label}: (none)");
        return;
    }
    say!("  {label}:");
    for line in lines {
        say!("    {}", clip(line));
    }
}

/// Which top-level args differ, for a message: `top` changed, `x` only
/// stored, `y` only in the replay.
fn args_changes(stored: &ArgsMap, replay: &ArgsMap) -> String {
    let mut parts = Vec::new();
    for (key, value) in stored {
        match replay.get(key) {
            None => parts.push(format!("`{}` only in the stored run", Inert(key))),
            Some(v) if v != value => parts.push(format!(
                "`{}` stored {}, replay {}",
                Inert(key),
                clip(&value.to_string()),
                clip(&v.to_string())
            )),
            Some(_) => {}
        }
    }
    for key in replay.keys().filter(|k| !stored.contains_key(*k)) {
        parts.push(format!("`{}` only in the replay", Inert(key)));
    }
    parts.join("; ")
}
