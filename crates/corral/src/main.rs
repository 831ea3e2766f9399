//! The `corral` command line; see `corral --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // A compile of one module, in a child under resource limits: no
    // runtime, no logging, nothing but the compiler.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == corral::sandbox::COMPILE_SUBCOMMAND)
    {
        let rest: Vec<String> = args.filter_map(|a| a.into_string().ok()).collect();
        return corral::sandbox::run_compile_child(&rest);
    }
    // The command line, with the config file and environment applied.
    let cli = match corral::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Dropped after the runtime: the last spans are sent on the way out.
    let _tracing = corral::cli::init_tracing(cli.verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(corral::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
