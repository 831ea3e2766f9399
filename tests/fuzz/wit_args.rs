//! Target `wit_args`: args crossing the WIT boundary into a real guest and
//! back. `jobs/dist/noop.wasm` (built with the guest SDK) parses every arg
//! and returns the same map, so a call is the full round trip: host
//! encoding, the component model's copy in and out, the SDK's decoding and
//! encoding in the guest, the host's checks and decoding.
//!
//! Inputs: args maps with odd Unicode in names and values, many keys, values
//! nested up to and past the JSON parsers' depth, strings up to a MiB;
//! output caps below and above what comes back.
//!
//! Properties: the call returns the args exactly, or fails with the typed
//! error the input calls for: a fatal `guest_error` when a value is nested
//! deeper than a JSON parser takes (the guest's parser refuses it), else
//! `output_too_large` when the map is over the cap, else `bad_output` when
//! a value nests deeper than `MAX_ARG_DEPTH` (the host refuses what it
//! could not store). Nothing else: with the ample fuel, memory and time
//! given here, any other failure is a finding.

use std::sync::{Arc, OnceLock};

use arbitrary::{Result, Unstructured};
use corral::sandbox::{CallContext, HandlerFailure, Limits, LoadedHandler, Sandbox, SandboxConfig};
use corral::task::{ArgsMap, MAX_ARG_DEPTH};
use serde_json::Value;

use crate::driver::{self, Target};
use crate::inputs::{self, ArgsShape};

const TARGET: Target = Target {
    name: "wit_args",
    cases: 600,
    max_input: 32 << 10,
    // The host's copies of args up to a MiB (guest memory is not heap).
    max_alloc: 32 << 20,
    max_heap_growth: 128 << 20,
};

const SHAPE: ArgsShape = ArgsShape {
    keys: 16,
    many_keys: 2000,
    deep: 130,
    huge: 1 << 20,
};

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            max_instances: 4,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

fn noop() -> Arc<LoadedHandler> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../jobs/dist/noop.wasm");
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run jobs/build.sh before the tests"));
    sandbox().load(&bytes).expect("noop.wasm loads")
}

/// Whether a JSON parser with serde_json's default depth limit (the host's
/// and the guest SDK's) takes `v`'s text.
fn parses(v: &Value) -> bool {
    serde_json::from_str::<Value>(&v.to_string()).is_ok()
}

#[test]
fn fuzz_wit_args() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let handler = noop();
    let summary = driver::run(&TARGET, |u: &mut Unstructured<'_>| -> Result<()> {
        let args = inputs::args(u, SHAPE)?;
        let limits = Limits {
            max_output_bytes: *u.choose(&[1 << 10, 64 << 10, 1 << 20, 16 << 20])?,
            memory_bytes: 256 << 20,
            timeout_ms: 60_000,
            fuel: 10_000_000_000,
            ..Limits::default()
        };
        let size: u64 = args
            .iter()
            .map(|(name, value)| (name.len() + value.to_string().len()) as u64)
            .sum();
        let ctx = CallContext {
            task_id: inputs::text(u, 64)?,
            job: inputs::text(u, 64)?,
            tenant: inputs::text(u, 64)?,
            attempt: u.arbitrary()?,
            handler_index: 0,
            handler_count: 1,
        };
        let got = runtime.block_on(sandbox().call(&handler, ctx, &args, &limits));
        if !args.values().all(parses) {
            let error = got.expect_err("a value too deep for the guest's parser is refused");
            assert_eq!(error.failure.kind(), "guest_error", "{}", error.failure);
            assert!(!error.failure.is_retryable());
        } else if size > limits.max_output_bytes {
            let error = got.expect_err("output over the cap is refused");
            assert_eq!(
                error.failure,
                HandlerFailure::OutputTooLarge {
                    size,
                    limit: limits.max_output_bytes
                }
            );
        } else if args.values().any(|v| inputs::depth(v) > MAX_ARG_DEPTH) {
            let error = got.expect_err("args too deep to store are refused");
            assert_eq!(error.failure.kind(), "bad_output", "{}", error.failure);
        } else {
            let out = got.unwrap_or_else(|e| panic!("the echo failed: {}", e.failure));
            let echoed: &ArgsMap = &out.args;
            assert!(
                echoed == &args,
                "args changed crossing the WIT boundary:\n{}",
                inputs::diff(&args, echoed)
            );
        }
        Ok(())
    });
    assert!(summary.cases > 0);
}
