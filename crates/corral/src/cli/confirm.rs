//! Asking before a destructive command acts: `confirm(prompt, yes)`.
//!
//! A command that removes or discards something (`corral jobs rm`, …) calls
//! [`confirm`] with what it is about to do and its `--yes` flag. With
//! `--yes` it goes ahead without asking. Otherwise the question goes to
//! stderr and the answer comes from stdin, which must be a terminal: a
//! script, a pipe or a closed stdin gets an error saying to pass `--yes`,
//! never a silent "yes" (nor an answer read from data piped in for
//! something else). Only `y` or `yes` (any case) agrees; anything else,
//! and end of input, is "no". This module reads one line and decides
//! nothing about what is confirmed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};

/// Longest answer read, in bytes: a person types a word.
const MAX_ANSWER: u64 = 256;

/// Whether to go ahead with what `prompt` says (a sentence, without a
/// question mark: ` [y/N] ` is added): `true` at once when `yes` (the
/// command's `--yes`), else what the person at the terminal answers. An
/// error when stdin is not a terminal and `yes` was not given.
pub fn confirm(prompt: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "{prompt}: refusing to ask with no terminal on standard input; pass --yes to go ahead"
        );
    }
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{prompt}? [y/N] ").context("writing the question")?;
    stderr.flush().context("writing the question")?;
    drop(stderr);
    let mut answer = String::new();
    std::io::Read::take(stdin.lock(), MAX_ANSWER)
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(agrees(&answer))
}

/// Whether `answer` (a line as typed) is a yes.
fn agrees(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_agrees() {
        for yes in ["y", "Y\n", " yes \n", "YES"] {
            assert!(agrees(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yes please", "sure", "ye"] {
            assert!(!agrees(no), "{no:?}");
        }
    }

    #[test]
    fn yes_goes_ahead_without_asking() {
        assert!(confirm("remove everything", true).unwrap());
    }
}
