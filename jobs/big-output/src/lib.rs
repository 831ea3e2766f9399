//! `big-output` (hostile): returns a single arg, `data`, a string of arg
//! `bytes` bytes (default 32 MiB).
//!
//! Demonstrates a handler whose output is far larger than any task result
//! should be. Expected: the host refuses the output (output size limit) and
//! fails the task instead of storing or forwarding it.
//!
//! Building the value and serializing it to JSON text (in the SDK) needs
//! about five times `bytes` of guest memory at the peak: the default 32 MiB
//! needs between 160 and 176 MiB, so under a smaller memory limit the job
//! dies of the memory limit first (allocation failure, then a trap). Pass a
//! smaller `bytes` (e.g. 4 MiB, which fits in 24 MiB) to reach the output
//! limit under a tight memory limit.

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_BYTES: usize = 32 << 20;

fn big_output(_ctx: Context, args: Args) -> Result<Output, Error> {
    let bytes = args.get_opt::<usize>("bytes")?.unwrap_or(DEFAULT_BYTES);
    let mut out = Args::new();
    out.insert("data", "x".repeat(bytes).as_str())?;
    Ok(Output::new(out).log(format!("returned {bytes} bytes")))
}

export_handler!(big_output);
