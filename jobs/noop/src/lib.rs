//! `noop`: returns its args unchanged with an empty log. The cheapest possible
//! handler, used by benchmarks to measure the host's per-task overhead.

use corral_guest::{Args, Context, Error, Output, export_handler};

fn noop(_ctx: Context, args: Args) -> Result<Output, Error> {
    Ok(Output::new(args))
}

export_handler!(noop);
