//! `recurse` (hostile): recurses without bound.
//!
//! Demonstrates a handler that exhausts its stack. Each frame keeps an array
//! whose address escapes through `black_box`, and uses the callee's result
//! after the call, so the compiler can turn the recursion neither into a loop
//! nor into a tail call. Expected: a stack-overflow trap (wasm call stack
//! exhausted, or the 1 MiB shadow stack in linear memory running out, which
//! traps as an out-of-bounds access); the task fails and the worker stays
//! healthy.

use std::hint::black_box;

use corral_guest::{Args, Context, Error, Output, export_handler};

fn recurse(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let depth = descend(0);
    // Never reached: `descend` only returns when `black_box` says so.
    args.insert("depth", &depth)?;
    Ok(Output::new(args))
}

#[inline(never)]
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 4]);
    if black_box(false) {
        return depth;
    }
    let below = descend(depth + 1);
    black_box(below) ^ frame[0]
}

export_handler!(recurse);
