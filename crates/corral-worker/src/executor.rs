//! Runs one leased task's handler chain and decides its outcome.
//!
//! Handler `i` gets the args handler `i - 1` returned; after each handler but
//! the last, progress is checkpointed through [`Broker::update`], so a task
//! recovered from a dead worker resumes at the handler that was running. A
//! failure names the handler and its cause; retryable failures go back with
//! backoff until the task runs out of attempts. A task with a `deadline`
//! (the whole task's, over every attempt) fails for good with kind
//! [`DEADLINE_EXCEEDED`] once it passes: before a handler starts, when a
//! handler's wall-clock limit (narrowed to the time left) ends it, and
//! instead of a retry that could only start after it. The executor never acks: it
//! returns the [`Outcome`] for the worker's acker to send. Names the tenant
//! chose and text the guest wrote reach the task and the worker's log only
//! inert and bounded ([`corral_core::text`]).
//!
//! How one handler call is set up and recorded on the task ([`task_limits`],
//! [`call_context`], [`record_call`]) is public, so that a finished task can
//! be run again outside any broker and compared field by field with what
//! the worker stored (`corral replay`).

use std::sync::Arc;

use corral_client::broker::{Broker, BrokerError, Checkpoint, Lease, Outcome};
use corral_core::clock;
use corral_core::metering::CallMetering;
use corral_core::task::{Task, TaskError};
use corral_core::text::{Inert, inert_capped};
use corral_registry::registry::{HandlerSpec, Registry, RegistryError};
use corral_sandbox::{CallContext, CallError, CallOutput, Limits, LoadError};

use super::metrics::WorkerMetrics;
use super::retry::RetryPolicy;

/// Runs `task`, held under `lease`, to an outcome. `Err` means the lease was
/// lost (or the broker failed mid-chain): the task is no longer ours and
/// must not be acked.
pub(crate) async fn run_task<B: Broker>(
    broker: &B,
    registry: &Registry,
    retry: &RetryPolicy,
    lease: &Lease,
    mut task: Task,
    mut calls: Option<&mut Vec<CallMetering>>,
) -> Result<Outcome, BrokerError> {
    let job = match registry
        .resolve(&task.tenant, &task.job_name, task.job_version)
        .await
    {
        Ok(job) => job,
        Err(e) => {
            let (kind, retryable) = match &e {
                RegistryError::UnknownVersion { .. } => ("unknown_job_version", false),
                RegistryError::UnknownJob { .. } => ("unknown_job", false),
                // The store was briefly unreachable: worth another attempt.
                RegistryError::Catalog(_) => ("registry_unavailable", true),
                // A stored module this worker's sandbox refuses (stored by
                // something that bypassed validation, or a worker with
                // tighter sandbox settings than the one that registered
                // it): the task fails with the load error's own kind, as the
                // registration would have.
                RegistryError::Module(load) => (
                    load.kind(),
                    // Not the module's fault: the compiler could not start.
                    matches!(load, LoadError::CompilerUnavailable(_)),
                ),
                _ => ("job_unloadable", false),
            };
            return Ok(fail(
                &task,
                retry,
                TaskError {
                    kind: kind.into(),
                    message: e.to_string(),
                    retryable,
                    handler_index: None,
                },
            ));
        }
    };
    let count = job.handlers.len() as u32;
    let job_limits = task_limits(&job.definition.limits, &task);
    let sandbox = registry.sandbox();

    while task.current_handler_index < count {
        let index = task.current_handler_index;
        let handler = &job.handlers[index as usize];
        let spec = &job.definition.handlers[index as usize];
        let mut limits = job_limits;
        if let Some(deadline) = task.deadline {
            let left = (deadline - chrono::Utc::now()).num_milliseconds();
            if left <= 0 {
                return Ok(Outcome::Dead(deadline_exceeded(&task, None)));
            }
            limits.timeout_ms = limits.timeout_ms.min(left as u64);
        }
        let ctx = call_context(&task, count);
        let result = sandbox.call(handler, ctx, &task.args_map, &limits).await;
        if let Some(calls) = calls.as_deref_mut() {
            calls.push(match &result {
                Ok(out) => out.metering,
                Err(err) => err.metering,
            });
        }
        match record_call(&mut task, spec, result) {
            Ok(()) => {
                // One event per handler run: counting them shows which
                // handlers ran again after a crash (tests/all/crash.rs).
                tracing::debug!(task = %task.task_id, handler = index, attempt = task.attempt, "handler finished");
                if task.current_handler_index < count {
                    broker.update(lease, &Checkpoint::of(&task)).await?;
                    task.metering.billed();
                }
            }
            Err(error) => {
                tracing::warn!(task = %task.task_id, error = %Inert(&error.message), "handler failed");
                // Keep what the failing call wrote and cost; the outcome
                // itself carries only the error.
                broker.update(lease, &Checkpoint::of(&task)).await?;
                return Ok(fail(&task, retry, error));
            }
        }
    }
    Ok(Outcome::Completed(Checkpoint::of(&task)))
}

/// The limits every handler call of `task` runs under: the job's, with the
/// wall-clock limit narrowed to the task's own `timeout_ms` (never widened).
pub fn task_limits(job: &Limits, task: &Task) -> Limits {
    let mut limits = *job;
    if let Some(timeout) = task.timeout() {
        limits.timeout_ms = limits.timeout_ms.min(timeout.as_millis().max(1) as u64);
    }
    limits
}

/// What the guest is told about a call of `task`'s current handler, in a
/// chain of `handler_count`: the task's id, job, tenant and attempt.
pub fn call_context(task: &Task, handler_count: u32) -> CallContext {
    CallContext {
        task_id: task.task_id.to_string(),
        job: task.job_name.clone(),
        tenant: task.tenant.clone(),
        attempt: task.attempt,
        handler_index: task.current_handler_index,
        handler_count,
    }
}

/// Records a finished call of `task`'s current handler (`spec`, its entry
/// in the job definition) on the task, as the worker stores it: the call's
/// metering under the handler's index and the task's attempt, the guest's
/// log lines prefixed `[index:name]`, and, when it succeeded, its args,
/// its result text appended to the result log and the next handler's
/// index. A failed call returns the error the task then stores (naming
/// the handler, inert, at most [`MAX_ERROR_MESSAGE_BYTES`]); the task
/// stays at the failed handler with the args it was given.
pub fn record_call(
    task: &mut Task,
    spec: &HandlerSpec,
    result: Result<CallOutput, CallError>,
) -> Result<(), TaskError> {
    let index = task.current_handler_index;
    match result {
        Ok(out) => {
            task.metering.record(index, task.attempt, out.metering);
            append_guest_log(task, index, &spec.name, &out.guest_log);
            task.args_map = out.args;
            task.append_log(&out.result_log);
            task.current_handler_index = index + 1;
            Ok(())
        }
        Err(err) => {
            task.metering.record(index, task.attempt, err.metering);
            append_guest_log(task, index, &spec.name, &err.guest_log);
            // The failure's own text is inert and bounded already.
            let message = format!(
                "handler {index} (`{}`) of job `{}` {}",
                Inert(&spec.name),
                Inert(&task.job_name),
                err.failure
            );
            Err(TaskError {
                kind: err.failure.kind().into(),
                message: inert_capped(&message, MAX_ERROR_MESSAGE_BYTES),
                retryable: err.failure.is_retryable(),
                handler_index: Some(index),
            })
        }
    }
}

/// Most bytes of a task's error message: it quotes tenant-chosen names
/// and guest text, and is stored with the task and shown in every listing.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 8 << 10;

/// The error kind of a task whose whole-task `deadline` passed.
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// The error of `task` whose deadline passed; `last` is what ended its
/// last handler call, if that was a failure.
fn deadline_exceeded(task: &Task, last: Option<&TaskError>) -> TaskError {
    let deadline = task.deadline.map(|d| d.to_rfc3339()).unwrap_or_default();
    let message = match last {
        Some(last) => format!(
            "the task's deadline {deadline} passed (attempt {} of {}); last error: {}",
            task.attempt, task.max_attempts, last.message
        ),
        None => format!(
            "the task's deadline {deadline} passed before handler {} could start (attempt {} of {})",
            task.current_handler_index, task.attempt, task.max_attempts
        ),
    };
    TaskError {
        kind: DEADLINE_EXCEEDED.into(),
        message: inert_capped(&message, MAX_ERROR_MESSAGE_BYTES),
        retryable: false,
        handler_index: Some(task.current_handler_index),
    }
}

fn fail(task: &Task, retry: &RetryPolicy, mut error: TaskError) -> Outcome {
    error.message = inert_capped(&error.message, MAX_ERROR_MESSAGE_BYTES);
    let now = chrono::Utc::now();
    // Past the deadline (a handler cut short by the time left), or a retry
    // that could only start after it: the task fails for good.
    let past = |at| task.deadline.is_some_and(|d| at >= d);
    if past(now) {
        return Outcome::Dead(deadline_exceeded(task, Some(&error)));
    }
    if error.retryable && task.attempt < task.max_attempts {
        let at = clock::add(now, retry.delay(task.attempt));
        if past(at) {
            return Outcome::Dead(deadline_exceeded(task, Some(&error)));
        }
        Outcome::Retry { error, at }
    } else {
        Outcome::Dead(error)
    }
}

/// Appends a handler's log (inert lines, from the sandbox) under its
/// index and name; the name is the tenant's, so it is made inert too.
fn append_guest_log(task: &mut Task, index: u32, name: &str, text: &str) {
    use std::fmt::Write as _;
    let name = Inert(name);
    for line in text.lines() {
        // Writing to a String cannot fail.
        let _ = writeln!(task.log, "[{index}:{name}]{line}");
    }
}

/// Shared, cheaply cloned pieces every task runner needs.
pub(crate) struct Runner<B> {
    pub broker: B,
    pub registry: Registry,
    pub retry: RetryPolicy,
    pub metrics: Option<Arc<WorkerMetrics>>,
}

impl<B: Broker> Runner<B> {
    pub(crate) async fn run(
        self: &Arc<Self>,
        lease: &Lease,
        task: Task,
        calls: Option<&mut Vec<CallMetering>>,
    ) -> Result<Outcome, BrokerError> {
        run_task(
            &self.broker,
            &self.registry,
            &self.retry,
            lease,
            task,
            calls,
        )
        .await
    }
}
