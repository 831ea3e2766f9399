//! `spin` (hostile): loops forever without calling the host.
//!
//! Demonstrates a handler that burns CPU and never returns. The counter goes
//! through `black_box` so the optimizer can neither remove the loop nor
//! prove it side-effect free. Expected: the host stops it when the task runs
//! out of fuel and fails (or retries) the task; the worker stays healthy.

use std::hint::black_box;

use corral_guest::{Args, Context, Error, Output, export_handler};

fn spin(_ctx: Context, _args: Args) -> Result<Output, Error> {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

export_handler!(spin);
