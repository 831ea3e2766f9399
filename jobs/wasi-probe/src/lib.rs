//! `wasi-probe` (hostile): asks the host for everything WASI could grant
//! besides files and sockets (`open-file` and `socket` probe those), and
//! reports what it got.
//!
//! Calls `wasi:cli`, `wasi:random` and `wasi:clocks` directly (not through
//! std, whose wasi-libc might emulate an answer), and returns its args plus
//! `env` (the environment, as `NAME=value` strings), `argv` (its arguments),
//! `cwd` (its initial working directory, or null), `stdin` (what reading
//! stdin gave: `N bytes`, `closed` or an error), `random_bytes` (how many of
//! 32 requested random bytes arrived), `wall_clock_secs` (seconds since the
//! Unix epoch by the wall clock) and `monotonic_advances` (whether the
//! monotonic clock moves). Demonstrates a handler reaching for the worker's
//! configuration. Expected: no environment, no arguments, no working
//! directory, an empty stdin; clocks and random granted.

use corral_guest::{Args, Context, Error, Output, export_handler};
use wasip2::cli::{environment, stdin};
use wasip2::clocks::{monotonic_clock, wall_clock};
use wasip2::io::streams::StreamError;
use wasip2::random::random;

fn wasi_probe(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let env: Vec<String> = environment::get_environment()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let argv = environment::get_arguments();
    let cwd = environment::initial_cwd();
    let stdin = match stdin::get_stdin().blocking_read(1024) {
        Ok(bytes) => format!("{} bytes", bytes.len()),
        Err(StreamError::Closed) => "closed".to_owned(),
        Err(StreamError::LastOperationFailed(e)) => format!("error: {}", e.to_debug_string()),
    };
    let random_bytes = random::get_random_bytes(32).len();
    let wall_clock_secs = wall_clock::now().seconds;
    let start = monotonic_clock::now();
    let mut monotonic_advances = false;
    for _ in 0..1_000_000 {
        if monotonic_clock::now() > start {
            monotonic_advances = true;
            break;
        }
    }

    let log = format!(
        "env: {} vars; argv: {} args; cwd: {cwd:?}; stdin: {stdin}; random: {random_bytes} bytes; \
         wall clock: {wall_clock_secs} s; monotonic advances: {monotonic_advances}",
        env.len(),
        argv.len(),
    );
    args.insert("env", &env)?;
    args.insert("argv", &argv)?;
    args.insert("cwd", &cwd)?;
    args.insert("stdin", &stdin)?;
    args.insert("random_bytes", &random_bytes)?;
    args.insert("wall_clock_secs", &wall_clock_secs)?;
    args.insert("monotonic_advances", &monotonic_advances)?;
    Ok(Output::new(args).log(log))
}

export_handler!(wasi_probe);
