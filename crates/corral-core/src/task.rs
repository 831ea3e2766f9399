//! The task model and its JSON form.
//!
//! A [`Task`] is what producers enqueue and workers run. Its JSON keeps the
//! seed's field names (`task_id`, `created_at`, `updated_at`, `queue_name`,
//! `job_name`, `args_map`, `current_handler_index`, `original_args_map`,
//! `result_log`) so tasks written by hand or by older producers still parse;
//! Corral's own fields (`tenant`, `state`, `attempt`, ...) have defaults.
//!
//! This module owns parsing and validation only. It never talks to a broker
//! and never panics on input: [`Task::from_json`] turns anything malformed
//! into a [`TaskParseError`] that says what is wrong.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::metering::TaskMetering;

/// The args map: names to JSON values.
pub type ArgsMap = serde_json::Map<String, serde_json::Value>;

/// A task id: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The nil id: what a task's JSON that leaves its id out reads as, never
    /// the id of a task (see [`Task::from_json`]).
    fn unnamed() -> Self {
        Self(Uuid::nil())
    }

    fn is_unnamed(&self) -> bool {
        self.0.is_nil()
    }
}

/// A `task_id` a task's JSON names: never the nil UUID, which is what a
/// JSON that leaves it out reads as.
fn named_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TaskId, D::Error> {
    let id = TaskId::deserialize(d)?;
    if id.is_unnamed() {
        return Err(serde::de::Error::custom("the nil UUID names no task"));
    }
    Ok(id)
}

/// A `queue_name` a task's JSON names: never empty, which is what a JSON
/// that leaves it out reads as.
fn named_queue<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let queue = String::deserialize(d)?;
    if queue.is_empty() {
        return Err(serde::de::Error::custom("`queue_name` is empty"));
    }
    Ok(queue)
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in its queue for a worker.
    #[default]
    Pending,
    /// Waiting for its `run_at` time (a delayed task).
    Scheduled,
    /// Held by a worker under a lease.
    Active,
    /// Failed with a retryable error; waits for its backoff to pass.
    Retrying,
    /// Every handler succeeded.
    Completed,
    /// Failed for good: a fatal error, out of attempts, or malformed. Kept in
    /// the dead set with its error.
    Dead,
    /// Stopped by an operator or the tenant: never runs (again), never
    /// retried. Kept like dead tasks, with an error of kind `cancelled`
    /// naming the handler that was running, if one was.
    Cancelled,
}

impl TaskState {
    /// Every state, in a task's usual order through life.
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Scheduled,
        TaskState::Active,
        TaskState::Retrying,
        TaskState::Completed,
        TaskState::Dead,
        TaskState::Cancelled,
    ];
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.to_string() == s)
            .ok_or_else(|| {
                format!(
                    "unknown task state `{}`; expected one of pending, scheduled, active, retrying, completed, dead, cancelled",
                    crate::text::Inert(s)
                )
            })
    }
}

impl TaskState {
    /// Whether the task will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Dead | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Active => "active",
            TaskState::Retrying => "retrying",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        };
        f.write_str(s)
    }
}

/// Why a task failed, as stored on the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskError {
    /// A stable machine-readable kind (`guest_error`, `out_of_fuel`,
    /// `deadline`, `unknown_job`, ...).
    pub kind: String,
    /// What happened, naming the handler where there is one.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Index of the handler that failed, if a handler failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_index: Option<u32>,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Deepest nesting of arrays and objects an arg value may have.
///
/// Stored tasks and checkpoints hold args two levels down, and serde_json
/// refuses to parse JSON nested 128 levels deep or more; without a bound
/// well below that, a guest could return args the host accepts but whose
/// checkpoint no one can read back (the Redis broker would call the record
/// corrupt). 64 levels leave room for whatever wraps a task further (API
/// answers, clients' own parsers) and for any real data.
pub const MAX_ARG_DEPTH: usize = 64;

/// Whether `value` nests arrays and objects more than `max` levels deep (a
/// scalar is 0 levels, `[]` one). Walks without recursion, and stops at the
/// first value past `max`.
pub fn nested_deeper_than(value: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > max {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// Most errors kept in [`Task::error_history`].
pub const MAX_ERROR_HISTORY: usize = 20;

/// The default number of attempts a task gets.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The tenant of tasks that do not name one.
pub const DEFAULT_TENANT: &str = "default";
/// The queue of tasks that do not name one.
pub const DEFAULT_QUEUE: &str = "default";

fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// Most bytes of a [`Unique`] key.
pub const MAX_UNIQUE_KEY: usize = 256;
/// The highest task priority: a queue gives its pending tasks to workers
/// highest priority first (0, the default, last), first in first out
/// within a priority.
pub const MAX_PRIORITY: u8 = 9;
/// Longest a [`Unique`] key may hold (30 days).
pub const MAX_UNIQUE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Enqueue at most one task per key (within its tenant) for a while: a
/// task enqueued while an earlier one's key still holds is not stored, and
/// the enqueue answers the earlier task's id instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unique {
    /// The key (1 to [`MAX_UNIQUE_KEY`] bytes), chosen by the producer.
    pub key: String,
    /// How long the key holds after the enqueue, ms (1 to
    /// [`MAX_UNIQUE_TTL_MS`]).
    pub ttl_ms: u64,
}

/// Which step of which workflow a task is: the workflow's id and the
/// step's index in its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStep {
    /// The workflow's id.
    pub id: Uuid,
    /// The step's index in the workflow's plan.
    pub step: u32,
}

/// A unit of work: run job `job_name`'s handler chain on `original_args_map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique id (UUID v7). Required by [`Task::from_json`]; a record that
    /// is stored under its id may leave it out ([`Task::from_stored_json`]).
    #[serde(default = "TaskId::unnamed", deserialize_with = "named_id")]
    pub task_id: TaskId,
    /// When the producer created the task.
    pub created_at: DateTime<Utc>,
    /// When the task last changed (when left out: the Unix epoch; a broker
    /// sets it when it stores the task).
    #[serde(default)]
    pub updated_at: DateTime<Utc>,
    /// The queue the task waits in. Required by [`Task::from_json`]; a
    /// record that is stored in its queue may leave it out
    /// ([`Task::from_stored_json`]).
    #[serde(default, deserialize_with = "named_queue")]
    pub queue_name: String,
    /// The job whose handler chain runs the task.
    pub job_name: String,
    /// The args for the handler at `current_handler_index`: the original args
    /// before the first handler, then each handler's output.
    pub args_map: ArgsMap,
    /// The handler to run next; equals the chain length once all have run
    /// (when left out: 0).
    #[serde(default)]
    pub current_handler_index: u32,
    /// The args the producer gave; what handler 0 receives (when left out:
    /// empty; the Redis broker's stored records leave it out while it is
    /// `args_map`, and fill it back in).
    #[serde(default)]
    pub original_args_map: ArgsMap,
    /// What the handlers appended to the result log, in order (when left
    /// out: empty).
    #[serde(default)]
    pub result_log: String,

    /// The tenant that owns the task.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Where the task is in its life.
    #[serde(default)]
    pub state: TaskState,
    /// How many times a worker has started the task (1 on the first run).
    #[serde(default)]
    pub attempt: u32,
    /// How many attempts the task gets before it goes to the dead set.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Do not run before this time (delayed tasks and retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Where it waits in its queue: 0 (the default) to [`MAX_PRIORITY`];
    /// a higher priority is taken first, one priority in the order
    /// enqueued. Kept through retries, releases and requeues.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// Fail the task if it has not completed by this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Wall-clock budget for the whole chain on one attempt, in milliseconds;
    /// narrows the job's own limit, never widens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Enqueued at most once per key within a time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<Unique>,
    /// The workflow this task is a step of, when it is one (written by the
    /// broker that enqueues the step, never by a producer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowStep>,
    /// The version of the job definition the task was enqueued against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_version: Option<u32>,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Earlier failures, oldest first: the error a dead task had each time
    /// it was retried by hand (at most [`MAX_ERROR_HISTORY`], the oldest
    /// dropped first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_history: Vec<TaskError>,
    /// What the handlers wrote to stdout, stderr and the `log` import, each
    /// line labelled with its handler and stream; bounded per handler.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
    /// What its handler calls cost so far (written by workers only).
    #[serde(default, skip_serializing_if = "TaskMetering::is_empty")]
    pub metering: TaskMetering,
}

/// Why a task's JSON was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed task: {reason}")]
pub struct TaskParseError {
    /// What is wrong, as serde_json or validation put it.
    pub reason: String,
}

impl Task {
    /// Moves the task's error, if it has one, to the end of its
    /// [`error_history`](Self::error_history), keeping at most
    /// [`MAX_ERROR_HISTORY`]: what a retry by hand does, so the failure
    /// that killed the task stays on record.
    pub fn archive_error(&mut self) {
        if let Some(error) = self.error.take() {
            self.error_history.push(error);
        }
        let over = self.error_history.len().saturating_sub(MAX_ERROR_HISTORY);
        self.error_history.drain(..over);
    }

    /// A new pending task for `job_name` in the default queue and tenant.
    pub fn new(job_name: impl Into<String>, args: ArgsMap) -> Self {
        let now = Utc::now();
        Self {
            task_id: TaskId::new(),
            created_at: now,
            updated_at: now,
            queue_name: DEFAULT_QUEUE.to_owned(),
            job_name: job_name.into(),
            args_map: args.clone(),
            current_handler_index: 0,
            original_args_map: args,
            result_log: String::new(),
            tenant: default_tenant(),
            state: TaskState::Pending,
            attempt: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            priority: 0,
            run_at: None,
            deadline: None,
            timeout_ms: None,
            unique: None,
            workflow: None,
            job_version: None,
            error: None,
            error_history: Vec::new(),
            log: String::new(),
            metering: TaskMetering::default(),
        }
    }

    /// Parses and validates a task's JSON. Unknown fields, a missing
    /// `task_id`, `created_at`, `queue_name`, `job_name` or `args_map`, the
    /// nil UUID as an id,
    /// wrong types and empty names are errors; the other fields have
    /// defaults (see each field), so a stored task need not repeat them.
    pub fn from_json(json: &[u8]) -> Result<Self, TaskParseError> {
        let task = Self::parse(json)?;
        let missing = if task.task_id.is_unnamed() {
            Some("missing field `task_id`")
        } else if task.queue_name.is_empty() {
            Some("missing field `queue_name`")
        } else {
            None
        };
        if let Some(reason) = missing {
            return Err(TaskParseError {
                reason: reason.to_owned(),
            });
        }
        task.validate()?;
        Ok(task)
    }

    /// Parses and validates the JSON of a task stored under `id` in queue
    /// `queue`: as [`from_json`](Self::from_json), but `task_id` and
    /// `queue_name` may be left out (they are then `id` and `queue`), since
    /// where the record is kept already says them. One that names them
    /// keeps what it names, for the caller to check against where it was
    /// found; one that names the nil UUID or an empty queue is as wrong as
    /// it is for `from_json`.
    pub fn from_stored_json(json: &[u8], id: TaskId, queue: &str) -> Result<Self, TaskParseError> {
        let mut task = Self::parse(json)?;
        if task.task_id.is_unnamed() {
            task.task_id = id;
        }
        if task.queue_name.is_empty() {
            queue.clone_into(&mut task.queue_name);
        }
        task.validate()?;
        Ok(task)
    }

    fn parse(json: &[u8]) -> Result<Self, TaskParseError> {
        serde_json::from_slice(json).map_err(|e| TaskParseError {
            reason: e.to_string(),
        })
    }

    /// The task as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A Task holds only strings, numbers, maps and timestamps: it always
        // serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// [`validate`](Self::validate), and what only a task being enqueued
    /// must satisfy: it carries no metering (only workers write it).
    pub fn validate_new(&self) -> Result<(), TaskParseError> {
        self.validate()?;
        if !self.metering.is_empty() {
            return Err(TaskParseError {
                reason: "`metering` is written by workers, never enqueued".into(),
            });
        }
        Ok(())
    }

    /// Checks what serde cannot: names are not empty, counters are sane.
    pub fn validate(&self) -> Result<(), TaskParseError> {
        let fail = |reason: &str| {
            Err(TaskParseError {
                reason: reason.to_owned(),
            })
        };
        if self.job_name.trim().is_empty() {
            return fail("`job_name` is empty");
        }
        if self.queue_name.trim().is_empty() {
            return fail("`queue_name` is empty");
        }
        if self.tenant.trim().is_empty() {
            return fail("`tenant` is empty");
        }
        if self.max_attempts == 0 {
            return fail("`max_attempts` must be at least 1");
        }
        if self.priority > MAX_PRIORITY {
            return Err(TaskParseError {
                reason: format!("`priority` must be 0 to {MAX_PRIORITY}"),
            });
        }
        if let Some(unique) = &self.unique {
            if unique.key.is_empty() || unique.key.len() > MAX_UNIQUE_KEY {
                return Err(TaskParseError {
                    reason: format!("`unique.key` must be 1 to {MAX_UNIQUE_KEY} bytes"),
                });
            }
            if !(1..=MAX_UNIQUE_TTL_MS).contains(&unique.ttl_ms) {
                return Err(TaskParseError {
                    reason: format!("`unique.ttl_ms` must be 1 to {MAX_UNIQUE_TTL_MS} (30 days)"),
                });
            }
        }
        for (field, args) in [
            ("args_map", &self.args_map),
            ("original_args_map", &self.original_args_map),
        ] {
            if args.values().any(|v| nested_deeper_than(v, MAX_ARG_DEPTH)) {
                return Err(TaskParseError {
                    reason: format!(
                        "`{field}` holds a value nested deeper than {MAX_ARG_DEPTH} levels of arrays and objects"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The per-attempt wall-clock budget the task asks for.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Appends one handler's text to the result log, one line per handler.
    pub fn append_log(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !self.result_log.is_empty() && !self.result_log.ends_with('\n') {
            self.result_log.push('\n');
        }
        self.result_log.push_str(text);
    }
}

/// Parses command-line args into an args map: each of `strings` is
/// `key=value` with the value taken as a string, whatever it looks like
/// (`n=5` is the string "5"); each of `json` is `key=JSON`, its value parsed
/// as JSON (`n=5` is the number 5, `s="hi"` a string), an error when it does
/// not parse. A key given twice, in either list, is an error: a script
/// never has one value silently win.
pub fn parse_arg_pairs<'a>(
    strings: impl IntoIterator<Item = &'a str>,
    json: impl IntoIterator<Item = &'a str>,
) -> Result<ArgsMap, TaskParseError> {
    fn split(pair: &str) -> Result<(&str, &str), TaskParseError> {
        let (key, value) = pair.split_once('=').ok_or_else(|| TaskParseError {
            reason: format!("argument `{pair}` is not of the form key=value"),
        })?;
        if key.is_empty() {
            return Err(TaskParseError {
                reason: format!("argument `{pair}` has an empty key"),
            });
        }
        Ok((key, value))
    }
    let mut map = ArgsMap::new();
    let strings = strings.into_iter().map(|p| (p, false));
    for (pair, is_json) in strings.chain(json.into_iter().map(|p| (p, true))) {
        let (key, value) = split(pair)?;
        let value = if is_json {
            serde_json::from_str(value).map_err(|e| TaskParseError {
                reason: format!("argument `{key}`: `{value}` is not JSON ({e})"),
            })?
        } else {
            serde_json::Value::String(value.to_owned())
        };
        if map.insert(key.to_owned(), value).is_some() {
            return Err(TaskParseError {
                reason: format!("argument `{key}` is given twice"),
            });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_TASK: &str = r#"{
        "task_id": "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10",
        "created_at": "2024-07-01T12:00:00Z",
        "updated_at": "2024-07-01T12:00:00Z",
        "queue_name": "default",
        "job_name": "text-stats",
        "args_map": {"text": "Hello hello world"},
        "current_handler_index": 0,
        "original_args_map": {"text": "Hello hello world"},
        "result_log": ""
    }"#;

    #[test]
    fn seed_format_parses_with_defaults() {
        let task = Task::from_json(SEED_TASK.as_bytes()).expect("seed task parses");
        assert_eq!(task.job_name, "text-stats");
        assert_eq!(task.tenant, DEFAULT_TENANT);
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(task.attempt, 0);
        assert_eq!(task.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(task.args_map["text"], "Hello hello world");
    }

    #[test]
    fn round_trips() {
        let mut task = Task::new("j", parse_arg_pairs(["b=x"], ["a=1"]).unwrap());
        task.error = Some(TaskError {
            kind: "guest_error".into(),
            message: "m".into(),
            retryable: true,
            handler_index: Some(1),
        });
        let back = Task::from_json(&task.to_json()).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn fields_a_stored_task_leaves_out_take_their_defaults() {
        let json = r#"{"task_id": "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10",
            "created_at": "2024-07-01T12:00:00Z", "queue_name": "q", "job_name": "j",
            "args_map": {"a": 1}}"#;
        let task = Task::from_json(json.as_bytes()).unwrap();
        assert_eq!(task.updated_at, DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(task.current_handler_index, 0);
        assert!(task.original_args_map.is_empty());
        assert_eq!(task.result_log, "");
        // Whatever the defaults, a task comes back from its JSON unchanged.
        assert_eq!(Task::from_json(&task.to_json()).unwrap(), task);
    }

    #[test]
    fn unknown_field_is_named() {
        let json = SEED_TASK.replace("\"result_log\": \"\"", "\"result_log\": \"\", \"oops\": 1");
        let err = Task::from_json(json.as_bytes()).unwrap_err();
        assert!(err.reason.contains("unknown field `oops`"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let json = SEED_TASK.replace("\"job_name\": \"text-stats\",", "");
        let err = Task::from_json(json.as_bytes()).unwrap_err();
        assert!(err.reason.contains("missing field `job_name`"), "{err}");
    }

    #[test]
    fn a_stored_task_may_leave_out_its_id_and_queue() {
        let id = TaskId::new();
        let stored = r#"{"created_at":"2024-07-01T12:00:00Z","job_name":"j","args_map":{}}"#;
        let err = Task::from_json(stored.as_bytes()).unwrap_err();
        assert!(err.reason.contains("missing field `task_id`"), "{err}");
        let task = Task::from_stored_json(stored.as_bytes(), id, "q").unwrap();
        assert_eq!((task.task_id, task.queue_name.as_str()), (id, "q"));
        // What a record names is kept, for the caller to check.
        let named = task.to_json();
        let other = Task::from_stored_json(&named, TaskId::new(), "elsewhere").unwrap();
        assert_eq!(other, task);
        // The nil id names no task: never a task's id from JSON.
        let nil = String::from_utf8(named)
            .unwrap()
            .replace(&id.to_string(), "00000000-0000-0000-0000-000000000000");
        let err = Task::from_json(nil.as_bytes()).unwrap_err();
        assert!(err.reason.contains("nil UUID"), "{err}");
        assert!(Task::from_stored_json(nil.as_bytes(), id, "q").is_err());
        let mut no_queue = serde_json::to_value(&task).unwrap();
        no_queue.as_object_mut().unwrap().remove("queue_name");
        let err = Task::from_json(no_queue.to_string().as_bytes()).unwrap_err();
        assert!(err.reason.contains("missing field `queue_name`"), "{err}");
    }

    #[test]
    fn wrong_types_and_garbage_are_errors() {
        let json = SEED_TASK.replace(
            "\"current_handler_index\": 0",
            "\"current_handler_index\": -1",
        );
        assert!(Task::from_json(json.as_bytes()).is_err());
        let json = SEED_TASK.replace("{\"text\": \"Hello hello world\"}", "[1,2]");
        assert!(Task::from_json(json.as_bytes()).is_err());
        assert!(Task::from_json(b"\xff\x00not json").is_err());
        assert!(Task::from_json(b"").is_err());
        let json = SEED_TASK.replace("\"text-stats\"", "\"  \"");
        assert!(
            Task::from_json(json.as_bytes())
                .unwrap_err()
                .reason
                .contains("job_name")
        );
    }

    #[test]
    fn args_nested_past_the_bound_are_refused() {
        let nest = |depth: usize| {
            let mut v = serde_json::Value::Null;
            for i in 0..depth {
                v = if i % 2 == 0 {
                    serde_json::json!([v])
                } else {
                    serde_json::json!({ "k": v })
                };
            }
            v
        };
        assert!(!nested_deeper_than(&nest(0), 0));
        assert!(nested_deeper_than(&nest(1), 0));
        assert!(!nested_deeper_than(&nest(MAX_ARG_DEPTH), MAX_ARG_DEPTH));
        assert!(nested_deeper_than(&nest(MAX_ARG_DEPTH + 1), MAX_ARG_DEPTH));

        let mut args = ArgsMap::new();
        args.insert("ok".into(), nest(MAX_ARG_DEPTH));
        let mut task = Task::new("j", args);
        assert_eq!(Task::from_json(&task.to_json()), Ok(task.clone()));
        task.args_map.insert("deep".into(), nest(MAX_ARG_DEPTH + 1));
        let err = Task::from_json(&task.to_json()).unwrap_err();
        assert!(err.reason.contains("`args_map`"), "{err}");
    }

    #[test]
    fn every_float_survives_the_task_json() {
        // Doubles from their bits (SplitMix64), all exponents: each must
        // come back as the very same double.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut args = ArgsMap::new();
        for i in 0..20_000 {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let x = f64::from_bits(z ^ (z >> 31));
            if let Some(n) = serde_json::Number::from_f64(x) {
                args.insert(format!("f{i}"), serde_json::Value::Number(n));
            }
        }
        let task = Task::new("j", args);
        let back = Task::from_json(&task.to_json()).unwrap();
        for (name, value) in &task.args_map {
            let (sent, got) = (value.as_f64(), back.args_map[name].as_f64());
            assert_eq!(
                sent.map(f64::to_bits),
                got.map(f64::to_bits),
                "{name}: {sent:?} came back as {got:?}"
            );
        }
    }

    #[test]
    fn arg_pairs_are_strings_and_json_pairs_are_json() {
        let map = parse_arg_pairs(
            ["n=5", "s=hi", "e=", "t=true"],
            ["m=5", "q=\"3\"", "o={\"a\":[1]}"],
        )
        .unwrap();
        assert_eq!(map["n"], "5");
        assert_eq!(map["s"], "hi");
        assert_eq!(map["e"], "");
        assert_eq!(map["t"], "true");
        assert_eq!(map["m"], 5);
        assert_eq!(map["q"], "3");
        assert_eq!(map["o"]["a"][0], 1);
        assert!(parse_arg_pairs(["novalue"], []).is_err());
        assert!(parse_arg_pairs(["=v"], []).is_err());
        assert!(parse_arg_pairs([], ["s=hi"]).is_err());
        assert!(parse_arg_pairs(["a=1"], ["a=1"]).is_err());
        assert!(parse_arg_pairs(["a=1", "a=2"], []).is_err());
    }
}
