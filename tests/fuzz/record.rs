//! Target `record`: how the Redis broker stores a task (packed metadata
//! and task JSON in one field, checkpoint JSON, error JSON) and assembles
//! it back (`broker/redis/record.rs`, reached through `corral::fuzzing`).
//!
//! Inputs: records whose fields are arbitrary bytes, damaged versions of
//! valid fields, or missing; a task field as arbitrary bytes; and valid
//! records as the broker writes them, with checkpoints holding args the
//! sandbox accepted from a guest (what a worker checkpoints).
//!
//! Properties: neither [`Meta::parse`] nor [`assemble`] ever panics; what
//! `assemble` returns is a valid task of the record's id, tenant, queue,
//! state and attempt, that survives its own JSON, or a `Corrupt` error that
//! says why; metadata that parses encodes to bytes that parse the same; a
//! valid record, its task JSON in the stored form or whole, assembles to
//! exactly the task it stands for.

use arbitrary::{Result, Unstructured};
use corral::fuzzing::{
    AssembleError, META_LEN, Meta, RawRecord, StoredTask, assemble, from_micros,
};
use corral::task::{ArgsMap, MAX_PRIORITY, Task, TaskId, TaskState};
use uuid::Uuid;

use crate::driver::{self, Target};
use crate::guest_output;
use crate::inputs::{self, ArgsShape};

const TARGET: Target = Target {
    name: "record",
    cases: 3000,
    max_input: 64 << 10,
    max_alloc: 16 << 20,
    max_heap_growth: 64 << 20,
};

/// Args as a guest may return them: the host parses each value on its own,
/// so a value may nest as deep as the parser allows.
const GUEST_ARGS: ArgsShape = ArgsShape {
    keys: 8,
    many_keys: 500,
    deep: 130,
    huge: 64 << 10,
};

/// Metadata the scripts could have written: whole numbers within what the
/// packed doubles hold exactly, tokens within their six bytes, worker ids
/// within their 255.
fn meta(u: &mut Unstructured<'_>) -> Result<Meta> {
    const MAX: i64 = 9_000_000_000_000_000;
    let optional = |u: &mut Unstructured<'_>| -> Result<Option<i64>> {
        Ok(if u.arbitrary()? {
            Some(u.int_in_range(1..=MAX)?)
        } else {
            None
        })
    };
    Ok(Meta {
        state: inputs::state(u)?,
        attempt: u.arbitrary()?,
        max_attempts: u.arbitrary()?,
        token: u.int_in_range(0..=(1 << 48) - 1)?,
        updated_us: u.int_in_range(0..=MAX)?,
        run_at_us: optional(u)?,
        priority: u.int_in_range(0..=MAX_PRIORITY)?,
        handler: u.int_in_range(0..=0x00FF_FFFF)?,
        started_us: optional(u)?,
        worker: inputs::text(u, 60)?,
        cancel_requested: false,
    })
}

/// Bytes for one field: missing, arbitrary, or `valid` damaged or whole.
fn field(u: &mut Unstructured<'_>, valid: Vec<u8>) -> Result<Option<Vec<u8>>> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => None,
        1 => {
            let n = u.int_in_range(0..=u.len())?;
            Some(u.bytes(n)?.to_vec())
        }
        2 | 3 => {
            let mut bytes = valid;
            inputs::mutate_bytes(u, &mut bytes, inputs::JSON_TOKENS)?;
            Some(bytes)
        }
        _ => Some(valid),
    })
}

/// The invariants of whatever `assemble` makes of a record.
fn check_assembled(id: TaskId, tenant: &str, queue: &str, record: &RawRecord) {
    match assemble(id, tenant, queue, record) {
        Ok(got) => {
            let task = &got.task;
            assert_eq!(task.task_id, id);
            assert_eq!(task.tenant, tenant);
            assert_eq!(task.queue_name, queue);
            assert_eq!(task.state, got.meta.state);
            assert_eq!(task.attempt, got.meta.attempt);
            if let Some(reason) = &got.malformed {
                assert!(
                    !reason.trim().is_empty(),
                    "a malformed record without a reason"
                );
            }
            task.validate().expect("an assembled task validates");
            let back = Task::from_json(&task.to_json()).unwrap_or_else(|e| {
                panic!("an assembled task does not parse from its own JSON: {e}")
            });
            assert_eq!(&back, task, "an assembled task changes through its JSON");
        }
        Err(AssembleError::Corrupt(reason)) => {
            assert!(
                !reason.trim().is_empty(),
                "a corrupt record without a reason"
            );
        }
    }
}

/// Args a worker could checkpoint: generated args, as the sandbox decodes
/// them when a guest returns them (`None` when it refuses them).
fn checkpointed_args(u: &mut Unstructured<'_>) -> Result<Option<ArgsMap>> {
    let args = inputs::args(u, GUEST_ARGS)?;
    Ok(guest_output::accepted(&args))
}

fn case(u: &mut Unstructured<'_>) -> Result<()> {
    // Never the nil id: no record is kept under it (acquire.lua gives a raw
    // push naming it a fresh one).
    let id = TaskId(Uuid::from_u128(u.arbitrary::<u128>()?.max(1)));
    let tenant = inputs::name(u)?;
    let queue = inputs::name(u)?;
    match u.int_in_range(0u8..=3)? {
        // A record's task field as arbitrary bytes.
        0 => {
            let n = u.int_in_range(0..=META_LEN + 64)?;
            let raw = u.bytes(n.min(u.len()))?;
            let record = RawRecord::from_fields(raw.to_vec(), None, None);
            if let Ok(m) = Meta::parse(&record.meta) {
                assert_eq!(Meta::parse(&m.encode()), Ok(m));
            }
            check_assembled(id, &tenant, &queue, &record);
        }
        // Any record: fields arbitrary, damaged, missing or whole.
        1 | 2 => {
            let mut task = inputs::task(
                u,
                inputs::ArgsShape {
                    deep: 8,
                    ..GUEST_ARGS
                },
            )?;
            task.task_id = id;
            task.tenant = tenant.clone();
            task.queue_name = queue.clone();
            let m = meta(u)?;
            let mut packed = m.encode();
            if let Some(json) = field(u, task.to_json())? {
                packed.extend_from_slice(&json);
            }
            if u.ratio(1, 3)? {
                inputs::mutate_bytes(u, &mut packed, &[])?;
            }
            let checkpoint = inputs::checkpoint(
                u,
                inputs::ArgsShape {
                    deep: 8,
                    ..GUEST_ARGS
                },
            )?;
            let error = inputs::task_error(u)?;
            let record = RawRecord::from_fields(
                packed,
                field(u, serde_json::to_vec(&checkpoint).expect("serializes"))?,
                field(u, serde_json::to_vec(&error).expect("serializes"))?,
            );
            check_assembled(id, &tenant, &queue, &record);
        }
        // A valid record, as the broker writes one, with args a guest
        // returned in its checkpoint.
        _ => {
            let mut task = inputs::task(u, crate::task_json::PRODUCER_ARGS)?;
            task.task_id = id;
            task.tenant = tenant.clone();
            task.queue_name = queue.clone();
            let m = meta(u)?;
            let checkpoint = if u.arbitrary()? {
                let mut cp = inputs::checkpoint(
                    u,
                    inputs::ArgsShape {
                        deep: 0,
                        ..GUEST_ARGS
                    },
                )?;
                match checkpointed_args(u)? {
                    Some(args) => cp.args_map = args,
                    None => return Ok(()),
                }
                Some(cp)
            } else {
                None
            };
            let error = if u.arbitrary()? {
                Some(inputs::task_error(u)?)
            } else {
                None
            };
            // The stored form the broker writes, or a task's whole JSON (a
            // raw push, or a record written before the stored form).
            let json = if u.arbitrary()? {
                serde_json::to_vec(&StoredTask::of(&task)).expect("serializes")
            } else {
                task.to_json()
            };
            let record = RawRecord::from_fields(
                m.record(&json),
                checkpoint
                    .as_ref()
                    .map(|cp| serde_json::to_vec(cp).expect("serializes")),
                error
                    .as_ref()
                    .map(|e| serde_json::to_vec(e).expect("serializes")),
            );
            let mut expected = task.clone();
            if let Some(cp) = checkpoint {
                cp.apply(&mut expected);
                // A stored checkpoint has been billed: what it carried as
                // unbilled is not stored.
                expected.metering.billed();
            }
            expected.state = m.state;
            expected.attempt = m.attempt;
            expected.updated_at = from_micros(m.updated_us);
            if let Some(at) = m.run_at_us {
                expected.run_at = Some(from_micros(at));
            }
            if m.state == TaskState::Completed {
                expected.error = None;
            } else if error.is_some() {
                expected.error = error;
            }
            let got = assemble(id, &tenant, &queue, &record)
                .unwrap_or_else(|e| panic!("a valid record does not assemble: {e:?}"));
            assert_eq!(got.malformed, None, "a valid record reads as malformed");
            assert_eq!(got.meta, m);
            assert_eq!(
                got.task, expected,
                "a valid record assembles to another task"
            );
            check_assembled(id, &tenant, &queue, &record);
        }
    }
    Ok(())
}

#[test]
fn fuzz_record() {
    driver::run(&TARGET, case);
}
