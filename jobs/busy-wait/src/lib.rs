//! `busy-wait` (hostile): spins on `std::time::Instant::now()` until arg `ms`
//! milliseconds (default 60000) have passed, then returns its args unchanged.
//!
//! Demonstrates a handler that keeps calling the host (the WASI clock) in a
//! tight loop. Expected: the host's wall-clock deadline stops it (a small
//! fuel budget may stop it first).

use std::hint;
use std::time::{Duration, Instant};

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_MS: u64 = 60_000;

fn busy_wait(_ctx: Context, args: Args) -> Result<Output, Error> {
    let ms = args.get_opt::<u64>("ms")?.unwrap_or(DEFAULT_MS);
    let start = Instant::now();
    let wait = Duration::from_millis(ms);
    while start.elapsed() < wait {
        hint::spin_loop();
    }
    Ok(Output::new(args).log(format!("busy-waited {ms} ms")))
}

export_handler!(busy_wait);
