//! Target `guest_output`: what the host makes of whatever a guest returns
//! (the sandbox's output checks and decoding, reached through
//! `corral::fuzzing::decode_guest_output`, the very code a call runs once
//! the guest is done).
//!
//! Inputs: outputs whose arg values are valid JSON, damaged JSON, arbitrary
//! text, brackets nested thousands deep, numbers past every range; names
//! odd and repeated; any result-log text; errors of either kind; output
//! caps from tiny to large.
//!
//! Properties: decoding never panics; output over the cap is refused as
//! `output_too_large` before anything is parsed; otherwise an arg that is
//! not JSON, or nests deeper than `MAX_ARG_DEPTH`, is refused as
//! `bad_output` naming it, and anything else comes
//! back as exactly the parsed args (a repeated name keeps its last value)
//! and the log unchanged; a guest's error stays a `guest_error` of its
//! kind; and whatever is accepted can be stored: a task and a checkpoint
//! holding the args come back equal from their JSON.

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use corral::broker::Checkpoint;
use corral::fuzzing::{GuestReturn, decode_guest_output};
use corral::sandbox::{HandlerFailure, Limits, MAX_NAME_IN_MESSAGE, Sandbox, SandboxConfig};
use corral::task::{ArgsMap, MAX_ARG_DEPTH, Task};
use corral::text::inert_capped;
use serde_json::Value;

use crate::driver::{self, Target};
use crate::inputs::{self, Shape};

const TARGET: Target = Target {
    name: "guest_output",
    cases: 3000,
    max_input: 64 << 10,
    max_alloc: 32 << 20,
    max_heap_growth: 128 << 20,
};

/// A sandbox for decoding only: it never instantiates anything.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

/// `args` as the host decodes them when a guest returns them unchanged, or
/// `None` when it refuses them.
pub fn accepted(args: &ArgsMap) -> Option<ArgsMap> {
    let pairs = args
        .iter()
        .map(|(name, value)| (name.clone(), value.to_string()))
        .collect();
    let limits = Limits {
        max_output_bytes: u64::MAX,
        ..Limits::default()
    };
    decode_guest_output(sandbox(), Ok((pairs, String::new())), &limits)
        .ok()
        .map(|out| out.args)
}

/// One arg value's text, as a guest might write it.
fn value_text(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 | 1 => {
            let mut budget = 64;
            inputs::value(u, Shape::SMALL, &mut budget)?.to_string()
        }
        2 => {
            let mut budget = 64;
            let mut bytes = inputs::value(u, Shape::SMALL, &mut budget)?
                .to_string()
                .into_bytes();
            inputs::mutate_bytes(u, &mut bytes, inputs::JSON_TOKENS)?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        3 => inputs::text(u, 4096)?,
        4 => {
            // Nesting around the parser's depth limit, or far past it.
            let depth = if u.arbitrary()? {
                u.int_in_range(120..=140)?
            } else {
                u.int_in_range(0..=100_000)?
            };
            let open = if u.arbitrary()? { "[" } else { "{\"a\":" };
            let close = if open == "[" { "]" } else { "}" };
            let closed = u.arbitrary::<bool>()?;
            let mut s = open.repeat(depth);
            s.push('1');
            if closed {
                s.push_str(&close.repeat(depth));
            }
            s
        }
        5 => {
            let depth = u.int_in_range(0..=140)?;
            inputs::nested(u, depth, Value::Null)?.to_string()
        }
        6 => {
            let digits = u.int_in_range(1..=20_000)?;
            let mut s = "9".repeat(digits);
            s.push_str(u.choose(&["", ".5", "e999999", "e-999999", "E+1", "e"])?);
            if u.arbitrary()? {
                s.insert(0, '-');
            }
            s
        }
        _ => u
            .choose(&[
                "",
                " ",
                "null",
                "\"\\ud800\"",
                "\"\\udc00\\ud800\"",
                "1e400",
                "-0",
                "[1,]",
                "{\"a\":1,\"a\":2}",
                "\u{feff}1",
                "1 2",
            ])?
            .to_string(),
    })
}

/// A cap on output bytes, tiny to large.
fn cap(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => u.int_in_range(0..=256)?,
        1 => u.int_in_range(0..=64 << 10)?,
        2 => 1 << 20,
        _ => u64::MAX,
    })
}

/// Whatever is accepted can be stored: in a task and in a checkpoint, it
/// comes back equal from JSON.
fn storable(args: &ArgsMap, log: &str) {
    let mut task = Task::new("job", ArgsMap::new());
    task.args_map = args.clone();
    task.result_log = log.to_owned();
    let back = Task::from_json(&task.to_json()).unwrap_or_else(|e| {
        panic!("a task holding args the sandbox accepted does not parse from its JSON: {e}")
    });
    assert_eq!(back, task);
    let checkpoint = Checkpoint::of(&task);
    let json = serde_json::to_vec(&checkpoint).expect("a checkpoint serializes");
    let back: Checkpoint = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!("a checkpoint holding args the sandbox accepted does not parse from its JSON: {e}")
    });
    assert_eq!(back, checkpoint);
}

fn case(u: &mut Unstructured<'_>) -> Result<()> {
    let limits = Limits {
        max_output_bytes: cap(u)?,
        ..Limits::default()
    };
    if u.ratio(1, 8)? {
        let retryable = u.arbitrary()?;
        let message = inputs::text(u, 64 << 10)?;
        let returned: GuestReturn = Err((retryable, message));
        let error = decode_guest_output(sandbox(), returned, &limits)
            .expect_err("a guest's error is a failure");
        assert_eq!(error.failure.kind(), "guest_error", "{}", error.failure);
        assert_eq!(error.failure.is_retryable(), retryable);
        return Ok(());
    }

    let n = if u.ratio(1, 16)? {
        u.int_in_range(0..=2000)?
    } else {
        u.int_in_range(0..=12)?
    };
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(n);
    for i in 0..n {
        let name = if i > 0 && u.ratio(1, 8)? {
            pairs[u.int_in_range(0..=i - 1)?].0.clone()
        } else if i >= 64 {
            format!("k{i}")
        } else {
            inputs::text(u, 64)?
        };
        pairs.push((name, value_text(u)?));
    }
    let log = inputs::text(u, 4096)?;

    let size = log.len() as u64
        + pairs
            .iter()
            .map(|(n, v)| (n.len() + v.len()) as u64)
            .sum::<u64>();
    // The first arg the host must refuse: not JSON, or nested too deep to
    // be stored.
    let first_bad = pairs
        .iter()
        .find_map(|(n, v)| match serde_json::from_str::<Value>(v) {
            Ok(value) if inputs::depth(&value) <= MAX_ARG_DEPTH => None,
            _ => Some(n.clone()),
        });
    let mut expected = ArgsMap::new();
    for (n, v) in &pairs {
        if let Ok(value) = serde_json::from_str::<Value>(v) {
            expected.insert(n.clone(), value);
        }
    }

    let got = decode_guest_output(sandbox(), Ok((pairs, log.clone())), &limits);
    if size > limits.max_output_bytes {
        let error = got.expect_err("output over the cap is refused");
        assert_eq!(
            error.failure,
            HandlerFailure::OutputTooLarge {
                size,
                limit: limits.max_output_bytes
            }
        );
    } else if let Some(name) = first_bad {
        let error = got.expect_err("an arg that is not JSON is refused");
        match &error.failure {
            HandlerFailure::BadOutput { name: got, reason } => {
                // Guest text is stored inert and capped.
                assert_eq!(got, &inert_capped(&name, MAX_NAME_IN_MESSAGE));
                assert!(!reason.is_empty());
            }
            other => panic!("expected bad_output for `{name}`, got {other}"),
        }
    } else {
        let out = got.unwrap_or_else(|e| panic!("valid output refused: {}", e.failure));
        assert_eq!(out.args, expected);
        assert_eq!(out.result_log, log);
        storable(&out.args, &out.result_log);
    }
    Ok(())
}

#[test]
fn fuzz_guest_output() {
    driver::run(&TARGET, case);
}
