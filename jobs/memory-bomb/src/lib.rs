//! `memory-bomb` (hostile): allocates 1 MiB chunks forever, writing every
//! byte of each and keeping them all alive.
//!
//! Demonstrates a handler that grows its linear memory without bound. The
//! chunks go through `black_box` so the optimizer cannot drop them. Expected:
//! the host's memory limit refuses `memory.grow`; the allocator then aborts
//! ("memory allocation of ... failed" on stderr, then a trap), or the host's
//! limiter traps at once. The task fails; the worker stays healthy.

use std::hint::black_box;

use corral_guest::{Args, Context, Error, Output, export_handler};

const CHUNK: usize = 1 << 20;

fn memory_bomb(_ctx: Context, _args: Args) -> Result<Output, Error> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(black_box(vec![0xA5; CHUNK]));
        black_box(&chunks);
    }
}

export_handler!(memory_bomb);
