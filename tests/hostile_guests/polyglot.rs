//! Python and JavaScript guests misbehaving: the interpreters a tenant brings
//! (componentize-py's CPython, componentize-js's SpiderMonkey) are held by
//! the same limits as a Rust guest, and each way out ends as the same kind of
//! task error. The guests are `jobs/python/hostile-py` and
//! `jobs/js/hostile-js` (built by `corral build` in the test command), one
//! component each with a `mode` arg.

use serde_json::json;

use super::interpreters::cached_sandbox;
use super::{Guest, Limits, registry_on, run_hostile};

/// Limits an interpreter fits in, small enough that each misbehaviour hits
/// its limit quickly.
fn limits() -> Limits {
    Limits {
        fuel: 500_000_000,
        memory_bytes: 96 << 20,
        timeout_ms: 10_000,
        ..Limits::default()
    }
}

const GUESTS: [&str; 2] = ["hostile_py", "hostile_js"];

async fn fails(guest: &'static str, mode: &str, limits: Limits) -> corral::task::TaskError {
    dies(guest, mode, limits).await.0
}

/// The error a `mode` run dies with, and the task's log.
async fn dies(
    guest: &'static str,
    mode: &str,
    limits: Limits,
) -> (corral::task::TaskError, String) {
    let registry = registry_on(cached_sandbox(), Guest::Job(guest), limits).await;
    let done = run_hostile(registry, &[("mode", json!(mode))]).await;
    assert_eq!(
        done.state,
        corral::task::TaskState::Dead,
        "{guest} {mode}: {done:?}"
    );
    let error = done.error.expect("a dead task carries its error");
    assert!(
        error
            .message
            .contains("handler 0 (`hostile`) of job `hostile`"),
        "{guest} {mode}: {error}"
    );
    (error, done.log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_in_python_or_javascript_runs_out_of_fuel() {
    let _limit = crate::limit::minutes(10);
    for guest in GUESTS {
        let error = fails(guest, "loop", limits()).await;
        assert_eq!(error.kind, "out_of_fuel", "{guest}: {error}");
        assert!(!error.retryable, "{guest}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_in_python_or_javascript_is_stopped_at_its_deadline() {
    let _limit = crate::limit::minutes(10);
    for guest in GUESTS {
        // The tenant ceiling's fuel lasts an interpreter's tight loop about
        // 350 ms here (a JavaScript `for (;;) n++` burns some 28 billion
        // units a second): the deadline comes well before.
        let limits = Limits {
            fuel: 10_000_000_000,
            timeout_ms: 100,
            ..limits()
        };
        let error = fails(guest, "loop", limits).await;
        assert_eq!(error.kind, "deadline", "{guest}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_in_python_or_javascript_hits_the_memory_limit() {
    let _limit = crate::limit::minutes(10);
    for guest in GUESTS {
        let error = fails(guest, "alloc", limits()).await;
        assert_eq!(error.kind, "memory_limit", "{guest}: {error}");
        assert!(
            error.message.contains("over its limit of 100663296"),
            "{guest}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_in_python_or_javascript_ends_as_a_clear_error() {
    let _limit = crate::limit::minutes(10);
    for guest in GUESTS {
        let error = fails(guest, "recurse", limits()).await;
        // The interpreters count their own depth and raise before the wasm
        // stack runs out; either way the task dies with a named cause.
        let clear = error.kind == "stack_overflow"
            || error.message.contains("RecursionError")
            || error.message.contains("too much recursion");
        assert!(clear, "{guest}: {error}");
        assert!(!error.retryable, "{guest}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_is_fatal_with_its_traceback_in_the_log() {
    let _limit = crate::limit::minutes(10);
    // (guest, mode, the exception's name, what only its traceback or stack
    // says: the line that raised)
    for (guest, mode, name, trace) in [
        (
            "hostile_py",
            "raise",
            "KeyError",
            "Traceback (most recent call last)",
        ),
        ("hostile_js", "throw", "TypeError", "handler.js"),
    ] {
        let (error, log) = dies(guest, mode, limits()).await;
        assert_eq!(error.kind, "guest_error", "{guest}: {error}");
        assert!(!error.retryable, "{guest}: {error}");
        assert!(error.message.contains(name), "{guest}: {error}");
        assert!(log.contains(name) && log.contains(trace), "{guest}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_and_fatal_map_to_the_wit_error_kinds() {
    let _limit = crate::limit::minutes(10);
    for guest in GUESTS {
        let error = fails(guest, "retry", limits()).await;
        assert!(error.retryable, "{guest}: {error}");
        assert!(
            error.message.contains("try again later"),
            "{guest}: {error}"
        );
        let error = fails(guest, "fatal", limits()).await;
        assert!(!error.retryable, "{guest}: {error}");
        assert!(
            error.message.contains("cannot ever work"),
            "{guest}: {error}"
        );
    }
}
