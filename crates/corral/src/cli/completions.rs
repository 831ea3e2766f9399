//! `corral completions SHELL`: a completion script for bash, zsh, fish,
//! elvish or PowerShell, generated from the command's own definition (so it
//! always knows every subcommand and flag of this build).
//!
//! The script is built in memory and written in one go: a reader that
//! leaves early (`| head`) ends the command like any other output.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

/// `corral completions …`.
#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the script.
pub(super) fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "corral", &mut script);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&script).and_then(|()| out.flush()) {
        super::stdout_failed(e);
    }
    Ok(ExitCode::SUCCESS)
}
