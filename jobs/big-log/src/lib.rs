//! `big-log` (hostile): writes arg `bytes` bytes (default 1 MiB) of text to
//! stdout, in numbered 80-byte lines (`big-log line 00000000 ....`), then
//! returns its args unchanged.
//!
//! Demonstrates a handler that floods its log. Expected: the host caps the
//! captured stdout (the task's log keeps a bounded prefix and notes the
//! truncation) and the task itself still succeeds. If stdout starts failing,
//! the job stops writing and says so in its log rather than panicking.

use std::io::{self, Write};

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_BYTES: usize = 1 << 20;
const LINE_LEN: usize = 80;

fn big_log(_ctx: Context, args: Args) -> Result<Output, Error> {
    let bytes = args.get_opt::<usize>("bytes")?.unwrap_or(DEFAULT_BYTES);
    let mut stdout = io::stdout().lock();
    let mut written = 0;
    let mut number: u64 = 0;
    while written < bytes {
        let line = numbered_line(number, LINE_LEN.min(bytes - written));
        if let Err(e) = stdout.write_all(line.as_bytes()) {
            let log = format!("big-log: stdout failed after {written} of {bytes} bytes: {e}");
            return Ok(Output::new(args).log(log));
        }
        written += line.len();
        number += 1;
    }
    // Every line ends in a newline, so stdout has flushed them all already.
    let log = match stdout.flush() {
        Ok(()) => format!("big-log: wrote {bytes} bytes to stdout"),
        Err(e) => format!("big-log: flushing stdout failed: {e}"),
    };
    Ok(Output::new(args).log(log))
}

/// Line `number`, exactly `len` bytes long (`len` >= 1), ending in a newline.
fn numbered_line(number: u64, len: usize) -> String {
    let mut line = format!("big-log line {number:08} ");
    line.truncate(len - 1);
    while line.len() < len - 1 {
        line.push('.');
    }
    line.push('\n');
    line
}

export_handler!(big_log);
