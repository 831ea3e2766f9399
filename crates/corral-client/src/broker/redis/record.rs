//! A task's record as the Redis broker stores it, and its assembly back into
//! a [`Task`].
//!
//! A record is three fields under one id, each in its queue's hash (see
//! [`keys`](super::keys)): the task itself, which is the metadata the
//! scripts keep (state, attempt, fencing token, times, worker; format in
//! `lua/common.lua`) followed by the task JSON as enqueued ([`StoredTask`]:
//! what the metadata or a default already says is left out) or as pushed
//! raw; the last checkpoint's JSON and the last error's JSON. (Scripts keep
//! a large JSON apart from its metadata, but always answer with this one
//! form, which is all Rust reads and writes.) Scripts only ever store JSON
//! that Rust wrote and edit the small metadata in front of it, so no script
//! parses or re-encodes task JSON (Lua's cjson would turn `[]` into `{}`
//! and round large numbers).
//!
//! This module owns the metadata format on the Rust side and the overlay
//! rules. It never talks to Redis and never panics on what Redis returns:
//! anything that does not parse is an error or, for the task JSON itself, a
//! malformed-task stand-in.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::broker::{Checkpoint, malformed_task};
use corral_core::metering::TaskMetering;
use corral_core::task::{
    ArgsMap, DEFAULT_MAX_ATTEMPTS, DEFAULT_TENANT, MAX_PRIORITY, Task, TaskError, TaskId,
    TaskState, Unique, WorkflowStep,
};

/// Microseconds since the epoch: the unit of every time the scripts see.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time `us` microseconds after the epoch (clamped into chrono's range).
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// A task's JSON as a record stores it: the task's own JSON without what is
/// kept elsewhere or implied. `task_id` and `queue_name` are where the
/// record is kept (its field and its queue's hash); `updated_at`, `state`
/// and `attempt` live in the metadata (and [`assemble`] lays them over the
/// task); an empty
/// `result_log`, a `current_handler_index` of 0, the default tenant and
/// `max_attempts`, and an `original_args_map` that is `args_map` before the
/// first handler are what [`Task::from_stored_json`] assumes when they are
/// missing. A no-op task's JSON takes 79 bytes instead of 338, and a
/// task's args are no longer stored twice: in Redis memory, bytes per
/// queued task is most of what a million queued tasks cost.
///
/// Every other field of [`Task`] is here, by reference and in the same
/// order (scripts match `"job_name"` before the args); the unit test below
/// fails when a field of [`Task`] is missing.
#[derive(Serialize)]
pub struct StoredTask<'a> {
    created_at: &'a DateTime<Utc>,
    job_name: &'a str,
    args_map: &'a ArgsMap,
    #[serde(skip_serializing_if = "is_zero")]
    current_handler_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_args_map: Option<&'a ArgsMap>,
    #[serde(skip_serializing_if = "str::is_empty")]
    result_log: &'a str,
    #[serde(skip_serializing_if = "is_default_tenant")]
    tenant: &'a str,
    #[serde(skip_serializing_if = "is_default_max_attempts")]
    max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<&'a DateTime<Utc>>,
    #[serde(skip_serializing_if = "is_zero")]
    priority: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<&'a DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unique: Option<&'a Unique>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<&'a WorkflowStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a TaskError>,
    #[serde(skip_serializing_if = "<[TaskError]>::is_empty")]
    error_history: &'a [TaskError],
    #[serde(skip_serializing_if = "str::is_empty")]
    log: &'a str,
    #[serde(skip_serializing_if = "TaskMetering::is_empty")]
    metering: &'a TaskMetering,
}

impl<'a> StoredTask<'a> {
    /// The stored form of `task`.
    pub fn of(task: &'a Task) -> Self {
        let implied_original =
            task.current_handler_index == 0 && task.original_args_map == task.args_map;
        Self {
            created_at: &task.created_at,
            job_name: &task.job_name,
            args_map: &task.args_map,
            current_handler_index: task.current_handler_index,
            original_args_map: (!implied_original).then_some(&task.original_args_map),
            result_log: &task.result_log,
            tenant: &task.tenant,
            max_attempts: task.max_attempts,
            run_at: task.run_at.as_ref(),
            priority: task.priority,
            deadline: task.deadline.as_ref(),
            timeout_ms: task.timeout_ms,
            unique: task.unique.as_ref(),
            workflow: task.workflow.as_ref(),
            job_version: task.job_version,
            error: task.error.as_ref(),
            error_history: &task.error_history,
            log: &task.log,
            metering: &task.metering,
        }
    }
}

/// Whether a task's JSON names `original_args_map` at its top level. Only
/// asked when the parsed task leaves it open, which is every stored record
/// of a task with args before its first handler: so on the lease path. A
/// record that holds the name nowhere (the stored form) is answered by one
/// substring search; only one that holds it somewhere (a whole task's
/// JSON, or args that use the name as a key) is skimmed as JSON, values
/// skipped rather than built.
fn names_original(json: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        original_args_map: Option<serde::de::IgnoredAny>,
    }
    // Built once: building a searcher costs more than one search.
    static NAME: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"original_args_map\""));
    NAME.find(json).is_some()
        && serde_json::from_slice::<Probe>(json).map_or(true, |p| p.original_args_map.is_some())
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

fn is_default_tenant(t: &&str) -> bool {
    *t == DEFAULT_TENANT
}

fn is_default_max_attempts(n: &u32) -> bool {
    *n == DEFAULT_MAX_ATTEMPTS
}

/// The metadata field of a record, as the scripts keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Where the task is in its life.
    pub state: TaskState,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The fencing token of the latest lease.
    pub token: u64,
    /// When the task last changed (µs).
    pub updated_us: i64,
    /// When a retry is due (µs), if one is.
    pub run_at_us: Option<i64>,
    /// The task's priority (0-9): which line it waits in while pending.
    pub priority: u8,
    /// The next handler to run (below 2^24: it shares four bytes with the
    /// priority).
    pub handler: u32,
    /// When the current or last attempt started (µs).
    pub started_us: Option<i64>,
    /// The worker holding, or last holding, the lease.
    pub worker: String,
    /// Active, and its cancel was asked for (state byte `k`).
    pub cancel_requested: bool,
}

/// The fixed part of the packed metadata, in bytes (see `lua/common.lua`):
/// state (1), attempt (4), max_attempts (4), token (6), updated (8),
/// run_at (8), priority (1), handler (3), started (8), the worker id's
/// length (1); the worker id follows, then the task JSON.
pub const META_LEN: usize = 44;

/// The longest worker id a record keeps; longer ones are cut (at a
/// character boundary).
const MAX_WORKER_LEN: usize = 255;

/// The largest fencing token the six bytes of a record hold.
const MAX_TOKEN: u64 = (1 << 48) - 1;

impl Meta {
    /// Parses the packed metadata `lua/common.lua` describes, followed by
    /// nothing (the task JSON, if any, already cut off: see
    /// [`RawRecord::from_fields`]).
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if raw.len() < META_LEN {
            return Err(format!("metadata of {} bytes is too short", raw.len()));
        }
        let uint_at = |at: usize, len: usize| {
            raw[at..at + len]
                .iter()
                .fold(0u64, |n, &b| n << 8 | u64::from(b))
        };
        // Doubles holding integers (times in µs): refuse anything that is
        // not a whole number in range.
        let int_at = |at: usize, name: &str| -> Result<i64, String> {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            let x = f64::from_be_bytes(b);
            if x.is_finite() && x.fract() == 0.0 && (0.0..=9.0e15).contains(&x) {
                Ok(x as i64)
            } else {
                Err(format!("metadata has a bad {name} ({x})"))
            }
        };
        let state = match raw[0] {
            b'p' => TaskState::Pending,
            b's' => TaskState::Scheduled,
            b'a' => TaskState::Active,
            b'r' => TaskState::Retrying,
            b'c' => TaskState::Completed,
            b'd' => TaskState::Dead,
            b'x' => TaskState::Cancelled,
            b'k' => TaskState::Active,
            other => return Err(format!("metadata has unknown state byte {other:#04x}")),
        };
        if raw[31] > MAX_PRIORITY {
            return Err(format!("metadata has a bad priority ({})", raw[31]));
        }
        let worker_len = usize::from(raw[META_LEN - 1]);
        if raw.len() != META_LEN + worker_len {
            return Err(format!(
                "metadata of {} bytes does not hold its {worker_len}-byte worker id",
                raw.len()
            ));
        }
        let optional = |t: i64| (t != 0).then_some(t);
        let worker = std::str::from_utf8(&raw[META_LEN..])
            .map_err(|_| "metadata's worker id is not UTF-8".to_owned())?
            .to_owned();
        Ok(Self {
            state,
            cancel_requested: raw[0] == b'k',
            attempt: uint_at(1, 4) as u32,
            max_attempts: uint_at(5, 4) as u32,
            token: uint_at(9, 6),
            updated_us: int_at(15, "updated time")?,
            run_at_us: optional(int_at(23, "run_at time")?),
            priority: raw[31],
            handler: uint_at(32, 3) as u32,
            started_us: optional(int_at(35, "start time")?),
            worker,
        })
    }

    /// Packs the metadata as `lua/common.lua` reads it, followed by
    /// `json`: a whole record.
    pub fn record(&self, json: &[u8]) -> Vec<u8> {
        let state = match self.state {
            TaskState::Pending => b'p',
            TaskState::Scheduled => b's',
            TaskState::Active if self.cancel_requested => b'k',
            TaskState::Active => b'a',
            TaskState::Retrying => b'r',
            TaskState::Completed => b'c',
            TaskState::Dead => b'd',
            TaskState::Cancelled => b'x',
        };
        let worker = &self.worker[..self.worker.floor_char_boundary(MAX_WORKER_LEN)];
        let mut out = Vec::with_capacity(META_LEN + worker.len() + json.len());
        out.push(state);
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.max_attempts.to_be_bytes());
        out.extend_from_slice(&self.token.min(MAX_TOKEN).to_be_bytes()[2..]);
        out.extend_from_slice(&(self.updated_us as f64).to_be_bytes());
        out.extend_from_slice(&(self.run_at_us.unwrap_or(0) as f64).to_be_bytes());
        out.push(self.priority);
        out.extend_from_slice(&self.handler.min(0x00FF_FFFF).to_be_bytes()[1..]);
        out.extend_from_slice(&(self.started_us.unwrap_or(0) as f64).to_be_bytes());
        out.push(worker.len() as u8);
        out.extend_from_slice(worker.as_bytes());
        out.extend_from_slice(json);
        out
    }

    /// The packed metadata alone (a record without task JSON).
    pub fn encode(&self) -> Vec<u8> {
        self.record(&[])
    }
}

/// Where record `record`'s metadata ends and its task JSON starts: after
/// the metadata's fixed part and the worker id its last byte counts. A
/// record too short to say is all metadata (and fails to parse as such).
fn meta_len(record: &[u8]) -> usize {
    match record.get(META_LEN - 1) {
        Some(&n) => (META_LEN + usize::from(n)).min(record.len()),
        None => record.len(),
    }
}

/// What Redis holds for one task, fields as stored.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    /// The task JSON (missing only if the record was damaged by hand).
    pub task: Option<Vec<u8>>,
    /// The metadata field.
    pub meta: Vec<u8>,
    /// The last checkpoint's JSON.
    pub progress: Option<Vec<u8>>,
    /// The last error's JSON.
    pub error: Option<Vec<u8>>,
}

impl RawRecord {
    /// A record as the scripts answer it: the task field (metadata, then
    /// the task JSON), the checkpoint and the error.
    pub fn from_fields(task: Vec<u8>, progress: Option<Vec<u8>>, error: Option<Vec<u8>>) -> Self {
        let at = meta_len(&task);
        let mut meta = task;
        let json = meta.split_off(at);
        Self {
            task: (!json.is_empty()).then_some(json),
            meta,
            progress,
            error,
        }
    }
}

/// Why a record could not be assembled into a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssembleError {
    /// The metadata, checkpoint or error field is damaged: our own data.
    Corrupt(String),
}

/// A record assembled into a task.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The task (a stand-in when the stored JSON did not parse).
    pub task: Task,
    /// The record's metadata.
    pub meta: Meta,
    /// Why the stored JSON is not a task, when it is not.
    pub malformed: Option<String>,
}

/// Builds the task a record stands for: the stored JSON with the metadata,
/// checkpoint and error laid over it. A task JSON that does not parse (a raw
/// push, or a damaged record) gives the malformed-task stand-in and says
/// why, so a dead malformed entry is still readable.
pub fn assemble(
    id: TaskId,
    tenant: &str,
    queue: &str,
    record: &RawRecord,
) -> Result<Assembled, AssembleError> {
    let meta = Meta::parse(&record.meta).map_err(AssembleError::Corrupt)?;
    let error = match &record.error {
        Some(json) => Some(
            serde_json::from_slice::<TaskError>(json)
                .map_err(|e| AssembleError::Corrupt(format!("stored error of task {id}: {e}")))?,
        ),
        None => None,
    };
    let raw = record.task.as_deref().unwrap_or_default();
    let parsed = match Task::from_stored_json(raw, id, queue) {
        Ok(task) if task.task_id != id => Err(format!(
            "the record of task {id} holds task {}",
            task.task_id
        )),
        Ok(task) if task.tenant != tenant || task.queue_name != queue => Err(format!(
            "the task names tenant `{}` and queue `{}` but is stored in tenant `{tenant}`'s queue `{queue}`",
            task.tenant, task.queue_name
        )),
        Ok(task) => Ok(task),
        Err(e) => Err(e.reason),
    };
    let mut task = match parsed {
        Ok(mut task) => {
            if task.current_handler_index == 0
                && task.original_args_map.is_empty()
                && !task.args_map.is_empty()
                && !names_original(raw)
            {
                // Left out by `StoredTask`: before the first handler it is
                // the args themselves.
                task.original_args_map.clone_from(&task.args_map);
            }
            task
        }
        Err(reason) => {
            let mut task = malformed_task(
                id,
                tenant,
                queue,
                raw,
                &reason,
                from_micros(meta.updated_us),
            );
            // A stand-in keeps the record's own state: a raw entry read while
            // its lease is held stays active until the worker buries it.
            task.state = meta.state;
            task.attempt = meta.attempt;
            if let Some(e) = error {
                task.error = Some(e);
            }
            return Ok(Assembled {
                task,
                meta,
                malformed: Some(reason),
            });
        }
    };
    if let Some(json) = &record.progress {
        let checkpoint: Checkpoint = serde_json::from_slice(json)
            .map_err(|e| AssembleError::Corrupt(format!("stored checkpoint of task {id}: {e}")))?;
        checkpoint.apply(&mut task);
    }
    task.state = meta.state;
    task.attempt = meta.attempt;
    task.updated_at = from_micros(meta.updated_us);
    if let Some(at) = meta.run_at_us {
        task.run_at = Some(from_micros(at));
    }
    if meta.state == TaskState::Completed {
        task.error = None;
    } else if error.is_some() {
        task.error = error;
    }
    Ok(Assembled {
        task,
        meta,
        malformed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            state: TaskState::Active,
            attempt: 2,
            max_attempts: 3,
            token: 7,
            updated_us: 1_700_000_000_000_000,
            run_at_us: None,
            priority: 7,
            handler: 1,
            started_us: Some(1_700_000_000_000_001),
            worker: "host|1".into(),
            cancel_requested: false,
        }
    }

    #[test]
    fn meta_round_trips_and_refuses_damage() {
        let m = sample();
        let packed = m.encode();
        assert_eq!(packed.len(), META_LEN + 6);
        assert_eq!(Meta::parse(&packed).unwrap(), m);
        let mut bad_state = packed.clone();
        bad_state[0] = b'z';
        assert!(Meta::parse(&bad_state).is_err());
        // An active lease with a cancel asked for reads as active, and
        // packs back to the same byte.
        let mut asked = packed.clone();
        asked[0] = b'k';
        let read = Meta::parse(&asked).unwrap();
        assert_eq!(
            (read.state, read.cancel_requested),
            (TaskState::Active, true)
        );
        assert_eq!(read.encode(), asked);
        assert!(Meta::parse(&packed[..META_LEN - 1]).is_err());
        let mut bad_priority = packed.clone();
        bad_priority[31] = MAX_PRIORITY + 1;
        assert!(Meta::parse(&bad_priority).is_err());
        let mut bad_time = packed.clone();
        bad_time[15..23].copy_from_slice(&f64::NAN.to_be_bytes());
        assert!(Meta::parse(&bad_time).is_err());
        let mut fractional = packed.clone();
        fractional[15..23].copy_from_slice(&1.5f64.to_be_bytes());
        assert!(Meta::parse(&fractional).is_err());
        // The worker id's length must be the bytes that follow.
        let mut long = packed.clone();
        long.push(b'x');
        assert!(Meta::parse(&long).is_err());
        let mut bad_worker = packed;
        let last = bad_worker.len() - 1;
        bad_worker[last] = 0xff;
        assert!(Meta::parse(&bad_worker).is_err());
    }

    #[test]
    fn a_record_splits_into_metadata_and_json() {
        let m = sample();
        let record = RawRecord::from_fields(m.record(b"{\"a\":1}"), None, None);
        assert_eq!(record.task.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(Meta::parse(&record.meta).unwrap(), m);
        // No JSON: the task field is missing, not empty.
        let bare = RawRecord::from_fields(m.encode(), None, None);
        assert_eq!((bare.task, Meta::parse(&bare.meta)), (None, Ok(m.clone())));
        // A worker id longer than a record keeps is cut at a character
        // boundary; a token past six bytes is held at their largest.
        let mut long = m.clone();
        long.worker = "é".repeat(200);
        long.token = u64::MAX;
        let read = Meta::parse(&long.encode()).unwrap();
        assert_eq!(read.worker, "é".repeat(127));
        assert_eq!(read.token, (1 << 48) - 1);
        // Too short to say where the metadata ends: all of it is metadata,
        // which does not parse.
        let short = RawRecord::from_fields(b"p{}".to_vec(), None, None);
        assert_eq!(short.task, None);
        assert!(Meta::parse(&short.meta).is_err());
    }

    /// A task with every field away from its default.
    fn full_task() -> Task {
        let mut args = ArgsMap::new();
        args.insert("now".into(), serde_json::json!({"n": [1, 2.5, "x"]}));
        let mut original = ArgsMap::new();
        original.insert("first".into(), 1.into());
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let error = TaskError {
            kind: "guest_error".into(),
            message: "m".into(),
            retryable: true,
            handler_index: Some(1),
        };
        let mut metering = TaskMetering::default();
        metering.record(
            0,
            1,
            corral_core::metering::CallMetering {
                fuel: 1,
                ..Default::default()
            },
        );
        let mut task = Task::new("job", args);
        task.updated_at = at;
        task.queue_name = "q".into();
        task.current_handler_index = 2;
        task.original_args_map = original;
        task.result_log = "log".into();
        task.tenant = "t".into();
        task.state = TaskState::Retrying;
        task.attempt = 2;
        task.max_attempts = 9;
        task.run_at = Some(at);
        task.priority = 4;
        task.deadline = Some(at);
        task.timeout_ms = Some(5);
        task.unique = Some(Unique {
            key: "k".into(),
            ttl_ms: 10,
        });
        task.workflow = Some(WorkflowStep {
            id: uuid::Uuid::now_v7(),
            step: 3,
        });
        task.job_version = Some(2);
        task.error = Some(error.clone());
        task.error_history = vec![error];
        task.log = "l".into();
        task.metering = metering;
        task
    }

    #[test]
    fn a_stored_task_holds_every_field_but_those_kept_elsewhere() {
        let task = full_task();
        let full = serde_json::to_value(&task).unwrap();
        let stored = serde_json::to_value(StoredTask::of(&task)).unwrap();
        let mut expected = full.as_object().unwrap().clone();
        for kept_elsewhere in ["task_id", "queue_name", "updated_at", "state", "attempt"] {
            expected.remove(kept_elsewhere);
        }
        // A field added to Task but not to StoredTask fails here.
        assert_eq!(stored.as_object().unwrap(), &expected);
        let json = serde_json::to_vec(&StoredTask::of(&task)).unwrap();
        let mut back = Task::from_stored_json(&json, task.task_id, &task.queue_name).unwrap();
        (back.state, back.attempt, back.updated_at) = (task.state, task.attempt, task.updated_at);
        // Compared as JSON: what metering has not yet billed is never
        // serialized, in either form.
        assert_eq!(serde_json::to_value(&back).unwrap(), full);
    }

    #[test]
    fn a_new_task_is_stored_without_its_defaults_and_reads_back_whole() {
        let mut args = ArgsMap::new();
        args.insert("x".into(), 1.into());
        let task = Task::new("noop", args);
        let full = task.to_json();
        let stored = serde_json::to_vec(&StoredTask::of(&task)).unwrap();
        assert!(
            stored.len() * 10 < full.len() * 7,
            "{} vs {}",
            stored.len(),
            full.len()
        );
        let text = String::from_utf8(stored.clone()).unwrap();
        for left_out in [
            "task_id",
            "queue_name",
            "original_args_map",
            "result_log",
            "tenant",
            "state",
            "max_attempts",
        ] {
            assert!(!text.contains(left_out), "{text}");
        }
        let meta = Meta {
            state: TaskState::Pending,
            attempt: 0,
            max_attempts: task.max_attempts,
            token: 0,
            updated_us: micros(task.updated_at),
            run_at_us: None,
            priority: 0,
            handler: 0,
            started_us: None,
            worker: String::new(),
            cancel_requested: false,
        };
        let record = RawRecord {
            task: Some(stored),
            meta: meta.encode(),
            progress: None,
            error: None,
        };
        let got = assemble(task.task_id, DEFAULT_TENANT, &task.queue_name, &record).unwrap();
        assert!(got.malformed.is_none());
        let mut want = task.clone();
        want.updated_at = from_micros(micros(task.updated_at));
        assert_eq!(got.task, want);
        // An original that is not the args before the first handler (empty
        // here) is stored, and read back as it was.
        let mut odd = task.clone();
        odd.original_args_map.clear();
        let record = RawRecord {
            task: Some(serde_json::to_vec(&StoredTask::of(&odd)).unwrap()),
            ..record
        };
        let got = assemble(odd.task_id, DEFAULT_TENANT, &odd.queue_name, &record).unwrap();
        assert!(got.task.original_args_map.is_empty());
        assert_eq!(got.task.args_map, task.args_map);
        // Args that use the field's name as a key do not make the stored
        // form look as if it named its original.
        let mut named = task.clone();
        named
            .args_map
            .insert("original_args_map".into(), serde_json::json!({"x": 1}));
        named.original_args_map = named.args_map.clone();
        let record = RawRecord {
            task: Some(serde_json::to_vec(&StoredTask::of(&named)).unwrap()),
            ..record
        };
        let got = assemble(named.task_id, DEFAULT_TENANT, &named.queue_name, &record).unwrap();
        assert_eq!(got.task.original_args_map, named.args_map);
    }

    #[test]
    fn unparsable_task_json_reads_as_a_malformed_stand_in() {
        let id = TaskId::new();
        let record = RawRecord {
            task: Some(b"{not json".to_vec()),
            meta: Meta {
                state: TaskState::Dead,
                ..sample()
            }
            .encode(),
            progress: None,
            error: None,
        };
        let got = assemble(id, "t", "q", &record).unwrap();
        assert!(got.malformed.is_some());
        let task = got.task;
        assert_eq!(task.task_id, id);
        assert_eq!(task.state, TaskState::Dead);
        assert_eq!(
            task.error.as_ref().map(|e| e.kind.as_str()),
            Some("malformed")
        );
        assert_eq!(task.original_args_map["raw"], "{not json");
    }
}
