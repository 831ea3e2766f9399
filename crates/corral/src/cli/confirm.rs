//! Asking before a destructive command: `confirm` asks on the terminal, is
//! skipped by `--yes`, and refuses when nobody could answer (standard input
//! is not a terminal), so that a script never destroys anything by
//! default. It never decides what is destructive: the commands call it.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};

/// Whether to go on: `true` at once with `yes`; otherwise `prompt` is
/// asked on stderr and `y` or `yes` from the terminal goes on. With
/// standard input not a terminal (a script, a pipe) and no `yes`, an error
/// saying to pass `--yes`.
pub fn confirm(prompt: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{prompt}: refused, standard input is not a terminal to confirm on; pass --yes");
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt} [y/N] ").context("writing the question")?;
    stderr.flush().context("writing the question")?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
