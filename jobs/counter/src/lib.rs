//! `counter` (hostile): tries to keep state from one task to the next.
//!
//! Increments a `static` counter on every call and returns its args plus
//! `count`, the counter's value after the increment. Demonstrates a handler
//! that relies on an instance outliving its task. Expected: the host runs
//! every task in a fresh instance, so `count` is always 1.

use std::sync::atomic::{AtomicU64, Ordering};

use corral_guest::{Args, Context, Error, Output, export_handler};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn counter(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    args.insert("count", &count)?;
    Ok(Output::new(args).log(format!("call {count} of this instance")))
}

export_handler!(counter);
