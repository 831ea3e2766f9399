//! `echo-log`: writes one known line to each output channel a handler has,
//! and returns its args unchanged. Used to test the host's capture of them:
//!
//! - stdout: `echo-log: hello from stdout`
//! - stderr: `echo-log: hello from stderr`
//! - the host's `log` import, at info level: `echo-log: hello from the host log`
//! - the output's log text: `echo-log: hello from the output log`
//!
//! A failed write to stdout or stderr is returned as a retryable error rather
//! than a panic (which is what `println!` would do).

use std::io::{self, Write};

use corral_guest::{Args, Context, Error, Output, export_handler, log};

fn echo_log(_ctx: Context, args: Args) -> Result<Output, Error> {
    write_line(&mut io::stdout(), "echo-log: hello from stdout")
        .map_err(|e| Error::retryable(format!("writing to stdout: {e}")))?;
    write_line(&mut io::stderr(), "echo-log: hello from stderr")
        .map_err(|e| Error::retryable(format!("writing to stderr: {e}")))?;
    log::info("echo-log: hello from the host log");
    Ok(Output::new(args).log("echo-log: hello from the output log"))
}

fn write_line(out: &mut impl Write, line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

export_handler!(echo_log);
