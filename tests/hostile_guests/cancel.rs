//! Cancelling a running handler call from outside: a guest that computes
//! forever and one that waits in a host call are both stopped within
//! [`CANCEL_BOUND`] of the cancel, with kind `cancelled`, what they logged
//! and what they cost so far; the sandbox then runs the next call normally;
//! a call whose signal is already cancelled never runs its guest.
//!
//! The bound is the one timing assert of this binary: stopping a cancelled
//! task at once (not at its deadline, not when it returns) is the
//! requirement itself.

use std::sync::Arc;
use std::time::Instant;

use corral::sandbox::{CallError, CancelSignal, LoadedHandler};

use super::*;

/// Longest a cancelled call may take to return after its signal is
/// cancelled.
const CANCEL_BOUND: Duration = Duration::from_millis(100);

/// How long a call runs before it is cancelled.
const RUN_BEFORE_CANCEL: Duration = Duration::from_millis(50);

/// Limits under which only a cancel can stop the guests here within the
/// test: fuel for minutes of spinning, a minute's deadline.
fn patient() -> Limits {
    Limits {
        fuel: 1 << 50,
        timeout_ms: 60_000,
        ..tight()
    }
}

/// Runs `handler` on `args` under [`patient`] limits, cancels it from
/// another task after [`RUN_BEFORE_CANCEL`], and answers its error and how
/// long after the cancel the call returned. The whole call is bounded far
/// below the deadline, so a cancel that is not obeyed fails here, quickly.
async fn cancelled_while_running(handler: &LoadedHandler, args: &ArgsMap) -> (CallError, Duration) {
    let signal = CancelSignal::new();
    let canceller = tokio::spawn({
        let signal = signal.clone();
        async move {
            tokio::time::sleep(RUN_BEFORE_CANCEL).await;
            let at = Instant::now();
            signal.cancel();
            at
        }
    });
    let (sandbox, limits) = (sandbox(), patient());
    let call = sandbox.call_cancellable(handler, context(), args, &limits, &signal);
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the cancelled call returned long before its deadline");
    let returned = Instant::now();
    let cancelled_at = canceller.await.expect("the canceller ran");
    let error = match result {
        Ok(out) => panic!("the call completed: {:?}", out.args),
        Err(error) => error,
    };
    (error, returned.saturating_duration_since(cancelled_at))
}

/// Asserts `error` is a cancel of a guest that ran, returned within
/// [`CANCEL_BOUND`] of the cancel.
fn assert_cancelled_in_time(guest: &str, error: &CallError, after_cancel: Duration) {
    assert_eq!(
        error.failure.kind(),
        "cancelled",
        "{guest}: {}",
        error.failure
    );
    assert!(!error.failure.is_retryable(), "{guest}: asked to stop");
    assert_eq!(
        error.failure.to_string(),
        "was cancelled and stopped before it finished"
    );
    assert!(
        after_cancel < CANCEL_BOUND,
        "{guest}: the call returned {after_cancel:?} after the cancel"
    );
    // The cost so far is kept: the guest ran (fuel, as far as wasmtime had
    // counted it when the guest stopped), and for as long as it ran before
    // the cancel (wall time).
    assert!(error.metering.fuel > 0, "{guest}: {:?}", error.metering);
    assert!(
        error.metering.wall_us >= RUN_BEFORE_CANCEL.as_micros() as u64,
        "{guest}: {:?}",
        error.metering
    );
}

/// A cancellable call that is not cancelled runs as any other: the sandbox
/// is whole after a cancel.
async fn next_call_runs(sleep: &LoadedHandler) {
    let mut args = ArgsMap::new();
    args.insert("ms".into(), json!(1));
    let out = sandbox()
        .call_cancellable(sleep, context(), &args, &tight(), &CancelSignal::new())
        .await
        .unwrap_or_else(|e| panic!("the call after a cancel: {}", e.failure));
    assert_eq!(out.args, args);
    assert_eq!(out.result_log, "slept 1 ms");
}

fn load(name: &str) -> Arc<LoadedHandler> {
    sandbox()
        .load(&job_bytes(name))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_stops_soon_after_its_call_is_cancelled() {
    let _limit = crate::limit::minutes(5);
    let (spin, sleep) = (load("spin"), load("sleep"));
    let (error, after_cancel) = cancelled_while_running(&spin, &ArgsMap::new()).await;
    assert_cancelled_in_time("spin", &error, after_cancel);
    next_call_runs(&sleep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_guest_stops_soon_after_its_call_is_cancelled() {
    let _limit = crate::limit::minutes(5);
    let sleep = load("sleep");
    let mut args = ArgsMap::new();
    args.insert("ms".into(), json!(300_000));
    let (error, after_cancel) = cancelled_while_running(&sleep, &args).await;
    assert_cancelled_in_time("sleep", &error, after_cancel);
    next_call_runs(&sleep).await;
}

/// What the guest logged before it was cancelled is kept with the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_keeps_what_the_guest_logged() {
    let _limit = crate::limit::minutes(5);
    // Logs a line at info level, then loops forever.
    let core = handler_core(
        r#"(import "corral:job/host@0.1.0" "log" (func $log (param i32 i32 i32)))"#,
        r#"(data (i32.const 1024) "about to loop")"#,
        r#"(call $log (i32.const 2) (i32.const 1024) (i32.const 13))
    (loop $forever (br $forever))
    unreachable"#,
    );
    let looper = sandbox()
        .load(&component(&core, &[], "", "handler"))
        .expect("load the looper");
    let (error, after_cancel) = cancelled_while_running(&looper, &ArgsMap::new()).await;
    assert_cancelled_in_time("looper", &error, after_cancel);
    assert!(
        error.guest_log.contains("about to loop"),
        "{:?}",
        error.guest_log
    );
}

/// A call whose signal was cancelled before it started fails at once,
/// without instantiating: no fuel, no instance, nothing logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_before_it_starts_never_runs_the_guest() {
    let _limit = crate::limit::minutes(5);
    let (spin, sleep) = (load("spin"), load("sleep"));
    let signal = CancelSignal::new();
    signal.cancel();
    let (sandbox, args, limits) = (sandbox(), ArgsMap::new(), patient());
    let call = sandbox.call_cancellable(&spin, context(), &args, &limits, &signal);
    let error = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the cancelled call returned")
        .expect_err("a cancelled call fails");
    assert_eq!(error.failure, HandlerFailure::Cancelled);
    assert_eq!(error.metering, Default::default(), "the guest never ran");
    assert_eq!(error.guest_log, "");
    next_call_runs(&sleep).await;
}
