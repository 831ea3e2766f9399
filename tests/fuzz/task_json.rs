//! Target `task_json`: the task JSON parser ([`Task::from_json`], and
//! [`parse_raw_task`] that workers run on hand-pushed entries).
//!
//! Inputs: raw bytes; a generated valid task's JSON damaged as text
//! (flips, cuts, JSON tokens spliced in); the same damaged as a value
//! (fields dropped, retyped, unknown, nested past the parser's depth);
//! and generated valid tasks as they are.
//!
//! Properties: parsing never panics; a refusal says why (a non-empty
//! reason); anything accepted validates and comes back equal from its own
//! JSON; a valid task comes back equal from its JSON, and a raw push of it
//! is accepted into its own tenant's queue and refused in another's; the
//! dead-set stand-in for any refused entry is itself a valid task.

use arbitrary::{Result, Unstructured};
use corral::broker::{MALFORMED, MALFORMED_KEEP, malformed_task, parse_raw_task};
use corral::task::{MAX_ARG_DEPTH, Task, TaskId};

use crate::driver::{self, Target};
use crate::inputs::{self, ArgsShape};

const TARGET: Target = Target {
    name: "task_json",
    cases: 3000,
    max_input: 64 << 10,
    max_alloc: 16 << 20,
    max_heap_growth: 64 << 20,
};

/// Args of a valid task (values nest at most `MAX_ARG_DEPTH` deep; the
/// damaged inputs go past that).
pub const PRODUCER_ARGS: ArgsShape = ArgsShape {
    keys: 8,
    many_keys: 2000,
    deep: MAX_ARG_DEPTH,
    huge: 256 << 10,
};

/// Parses `raw` as a task and as a raw push, and checks what came back.
fn check_parse(raw: &[u8], tenant: &str, queue: &str) {
    match Task::from_json(raw) {
        Ok(task) => {
            task.validate().expect("an accepted task validates");
            let again = Task::from_json(&task.to_json()).unwrap_or_else(|e| {
                panic!("an accepted task does not parse from its own JSON: {e}")
            });
            assert!(
                again == task,
                "an accepted task changes through its own JSON:\n{}",
                inputs::diff(&task, &again)
            );
            let pushed = parse_raw_task(raw, tenant, queue);
            if task.tenant == tenant && task.queue_name == queue {
                assert_eq!(pushed.as_ref(), Ok(&task));
            } else {
                let reason = pushed.expect_err("a push into another tenant's queue is refused");
                assert!(reason.contains(&format!("`{tenant}`")), "{reason}");
            }
        }
        Err(e) => {
            assert!(!e.reason.trim().is_empty(), "a refusal without a reason");
            let pushed = parse_raw_task(raw, tenant, queue);
            assert_eq!(pushed, Err(e.reason.clone()));
            check_stand_in(raw, tenant, queue, &e.reason);
        }
    }
}

/// The dead-set entry for a refused push is a valid task that keeps (a
/// bounded prefix of) what was pushed and says why.
fn check_stand_in(raw: &[u8], tenant: &str, queue: &str, reason: &str) {
    let id = TaskId::new();
    let at = chrono::Utc::now();
    let task = malformed_task(id, tenant, queue, raw, reason, at);
    task.validate().expect("the stand-in validates");
    let error = task.error.as_ref().expect("the stand-in has an error");
    assert_eq!(error.kind, MALFORMED);
    assert!(error.message.contains(reason));
    let kept = task.original_args_map["raw"]
        .as_str()
        .expect("raw is kept as a string");
    // Lossy UTF-8 turns each bad byte into U+FFFD (3 bytes).
    assert!(
        kept.len() <= 3 * MALFORMED_KEEP,
        "{} bytes kept",
        kept.len()
    );
    let back = Task::from_json(&task.to_json()).expect("the stand-in parses from its JSON");
    assert!(
        back == task,
        "the stand-in changes through its JSON:\n{}",
        inputs::diff(&task, &back)
    );
}

fn case(u: &mut Unstructured<'_>) -> Result<()> {
    let tenant = inputs::name(u)?;
    let queue = inputs::name(u)?;
    match u.int_in_range(0u8..=3)? {
        // Raw bytes, sometimes behind an opening brace.
        0 => {
            let mut raw = if u.arbitrary()? {
                b"{".to_vec()
            } else {
                Vec::new()
            };
            let n = u.len();
            raw.extend_from_slice(u.bytes(n)?);
            check_parse(&raw, &tenant, &queue);
        }
        // A valid task's JSON, damaged as text.
        1 => {
            let task = inputs::task(u, PRODUCER_ARGS)?;
            let mut raw = task.to_json();
            inputs::mutate_bytes(u, &mut raw, inputs::JSON_TOKENS)?;
            check_parse(&raw, &tenant, &queue);
        }
        // A valid task's JSON, damaged as a value.
        2 => {
            let mut task = inputs::task(u, PRODUCER_ARGS)?;
            if u.arbitrary()? {
                task.tenant = tenant.clone();
                task.queue_name = queue.clone();
            }
            let mut value = serde_json::to_value(&task).expect("a task is a JSON value");
            for _ in 0..u.int_in_range(1..=3)? {
                inputs::mutate_value(u, &mut value)?;
            }
            let raw = serde_json::to_vec(&value).expect("a value serializes");
            check_parse(&raw, &tenant, &queue);
        }
        // A valid task: it round-trips and a push of it is accepted.
        _ => {
            let mut task = inputs::task(u, PRODUCER_ARGS)?;
            task.tenant = tenant.clone();
            task.queue_name = queue.clone();
            let json = task.to_json();
            let back = Task::from_json(&json)
                .unwrap_or_else(|e| panic!("a valid task does not parse from its JSON: {e}"));
            assert!(
                back == task,
                "a valid task changes through its JSON:\n{}",
                inputs::diff(&task, &back)
            );
            assert_eq!(parse_raw_task(&json, &tenant, &queue), Ok(task));
        }
    }
    Ok(())
}

#[test]
fn fuzz_task_json() {
    driver::run(&TARGET, case);
}
