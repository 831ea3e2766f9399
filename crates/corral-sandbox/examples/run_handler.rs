//! Runs one handler component in the sandbox, with no broker, no worker
//! and no tenant: what another host embedding `corral-sandbox` does.
//!
//! With the hand-written handler it carries (it returns its args
//! unchanged):
//!
//! ```text
//! cargo run --release -p corral-sandbox --example run_handler
//! ```
//!
//! or with any handler component and a text to give it:
//!
//! ```text
//! cargo run --release -p corral-sandbox --example run_handler -- jobs/dist/normalize.wasm "Hello, World"
//! ```
//!
//! It then calls the handler again with an output limit of 8 bytes, which
//! no output fits: the call fails as `output_too_large`, and nothing of the
//! guest's reaches the host.

use corral_sandbox::{ArgsMap, CallContext, Limits, Sandbox, SandboxConfig};

/// The smallest `corral:job/handler` component, in the text format.
const MINIMAL_HANDLER: &str = include_str!("../../../tests/fixtures/minimal_handler.wat");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let (bytes, echoes) = match argv.next() {
        Some(path) => (std::fs::read(&path)?, false),
        None => (wat::parse_str(MINIMAL_HANDLER)?, true),
    };
    let text = argv.next().unwrap_or_else(|| "Hello, World".to_owned());

    // One sandbox per process: the engine, its limits, the compiled-code
    // cache (in memory only here).
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    // Checked (a component of the handler world, importing only what the
    // host provides) and compiled once; later loads of the same bytes hit
    // the cache.
    let handler = sandbox.load(&bytes)?;

    let mut args = ArgsMap::new();
    args.insert("text".into(), text.into());
    let context = || CallContext {
        task_id: "example".into(),
        job: "example".into(),
        tenant: "default".into(),
        attempt: 1,
        handler_index: 0,
        handler_count: 1,
    };

    // A fresh instance for the call, under fuel, memory and a deadline.
    let limits = Limits {
        fuel: 100_000_000,
        timeout_ms: 2_000,
        ..Limits::default()
    };
    let out = sandbox
        .call(&handler, context(), &args, &limits)
        .await
        .map_err(|e| anyhow::anyhow!("the handler failed: {}", e.failure))?;
    println!("args: {}", serde_json::Value::Object(out.args.clone()));
    println!("result log: {:?}", out.result_log);
    if echoes {
        assert_eq!(out.args, args, "the minimal handler returns its args");
    }

    // The same handler, allowed 8 bytes of output.
    let tight = Limits {
        max_output_bytes: 8,
        ..limits
    };
    match sandbox.call(&handler, context(), &args, &tight).await {
        Err(e) => {
            println!(
                "with 8 bytes of output: {} ({})",
                e.failure.kind(),
                e.failure
            );
            assert_eq!(e.failure.kind(), "output_too_large");
        }
        Ok(out) => anyhow::bail!("an 8-byte output limit let {:?} through", out.args),
    }
    Ok(())
}
