//! A task's record as the Redis broker stores it, and its assembly back into
//! a [`Task`].
//!
//! A record is four fields under one id, each in its queue's hash (see
//! [`keys`](super::keys)): the task JSON as enqueued (or as pushed raw), the
//! metadata the scripts keep (state, attempt, fencing token, times, worker;
//! format in `lua/common.lua`), the last checkpoint's JSON and the last
//! error's JSON. Scripts only ever store JSON that Rust wrote and edit the
//! small metadata string, so no script parses or re-encodes task JSON (Lua's
//! cjson would turn `[]` into `{}` and round large numbers).
//!
//! This module owns the metadata format on the Rust side and the overlay
//! rules. It never talks to Redis and never panics on what Redis returns:
//! anything that does not parse is an error or, for the task JSON itself, a
//! malformed-task stand-in.

use chrono::{DateTime, Utc};

use crate::broker::{Checkpoint, malformed_task};
use crate::task::{Task, TaskError, TaskId, TaskState};

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
    /// The next handler to run.
    pub handler: u32,
    /// When the current or last attempt started (µs).
    pub started_us: Option<i64>,
    /// The worker holding, or last holding, the lease.
    pub worker: String,
}

impl Meta {
    /// Parses `state|attempt|max|token|updated|run_at|handler|started|worker`.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|_| "metadata is not UTF-8".to_owned())?;
        let mut parts = text.splitn(9, '|');
        let mut next = |name: &str| {
            parts
                .next()
                .ok_or_else(|| format!("metadata `{text}` has no {name}"))
        };
        let state = match next("state")? {
            "p" => TaskState::Pending,
            "s" => TaskState::Scheduled,
            "a" => TaskState::Active,
            "r" => TaskState::Retrying,
            "c" => TaskState::Completed,
            "d" => TaskState::Dead,
            other => return Err(format!("metadata `{text}` has unknown state `{other}`")),
        };
        let num = |s: &str, name: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("metadata `{text}` has a bad {name} `{s}`"))
        };
        let opt_time = |s: &str, name: &str| -> Result<Option<i64>, String> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse::<i64>()
                    .map(Some)
                    .map_err(|_| format!("metadata `{text}` has a bad {name} `{s}`"))
            }
        };
        let attempt = num(next("attempt")?, "attempt")?;
        let max_attempts = num(next("max_attempts")?, "max_attempts")?;
        let token = num(next("token")?, "token")?;
        let updated_us = opt_time(next("updated")?, "updated")?.unwrap_or(0);
        let run_at_us = opt_time(next("run_at")?, "run_at")?;
        let handler = num(next("handler")?, "handler")?;
        let started_us = opt_time(next("started")?, "started")?;
        let worker = next("worker")?.to_owned();
        let small = |n: u64, name: &str| {
            u32::try_from(n).map_err(|_| format!("metadata `{text}` has an oversized {name}"))
        };
        Ok(Self {
            state,
            attempt: small(attempt, "attempt")?,
            max_attempts: small(max_attempts, "max_attempts")?,
            token,
            updated_us,
            run_at_us,
            handler: small(handler, "handler")?,
            started_us,
            worker,
        })
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
    let parsed = match Task::from_json(raw) {
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
        Ok(task) => task,
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

    #[test]
    fn meta_parses_and_refuses_damage() {
        let m = Meta::parse(b"a|2|3|7|1700000000000000||1|1700000000000001|host|1").unwrap();
        assert_eq!(m.state, TaskState::Active);
        assert_eq!(
            (m.attempt, m.max_attempts, m.token, m.handler),
            (2, 3, 7, 1)
        );
        assert_eq!(m.run_at_us, None);
        assert_eq!(m.started_us, Some(1_700_000_000_000_001));
        assert_eq!(m.worker, "host|1");
        assert!(Meta::parse(b"x|0|3|0|1||0||").is_err());
        assert!(Meta::parse(b"p|0|3").is_err());
        assert!(Meta::parse(b"p|-1|3|0|1||0||").is_err());
        assert!(Meta::parse(b"\xff").is_err());
    }

    #[test]
    fn unparsable_task_json_reads_as_a_malformed_stand_in() {
        let id = TaskId::new();
        let record = RawRecord {
            task: Some(b"{not json".to_vec()),
            meta: b"d|1|3|1|1700000000000000||0|1700000000000000|w".to_vec(),
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
