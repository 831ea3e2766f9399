//! `sleep` (hostile): blocks in `std::thread::sleep` for arg `ms` milliseconds
//! (default 60000), then returns its args unchanged.
//!
//! Demonstrates a handler that uses no CPU, and so no fuel, while it waits:
//! the wait happens inside a WASI host call (a monotonic-clock poll).
//! Expected: the host's wall-clock deadline stops it. Epoch interruption
//! alone cannot: it only fires while wasm code runs, so the deadline must
//! also cut blocking host calls short (e.g. async wasmtime under a timeout).

use std::thread;
use std::time::Duration;

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_MS: u64 = 60_000;

fn sleep(_ctx: Context, args: Args) -> Result<Output, Error> {
    let ms = args.get_opt::<u64>("ms")?.unwrap_or(DEFAULT_MS);
    thread::sleep(Duration::from_millis(ms));
    Ok(Output::new(args).log(format!("slept {ms} ms")))
}

export_handler!(sleep);
