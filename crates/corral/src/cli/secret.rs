//! API tokens given to the command line, never on it.
//!
//! A command-line argument is readable by every user of the machine (`ps`,
//! `/proc/*/cmdline`) and lands in shell history, so a token is read from
//! the environment (`CORRAL_TOKEN`), a file (`--token-file PATH`) or standard
//! input (`--token-file -`). The old `--token VALUE` is still recognised, so
//! that scripts using it fail with a message saying what to do instead
//! rather than with "unexpected argument". This module reads secrets; it
//! never prints or logs one.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::tenant::Token;

/// The environment variable a token is taken from.
pub const TOKEN_ENV: &str = "CORRAL_TOKEN";

/// Most bytes read from a token file (a token is 68).
const MAX_TOKEN_FILE: u64 = 4096;

/// Where to read an API token from.
#[derive(Debug, Args)]
pub struct TokenInput {
    /// Read the API token from this file (`-`: standard input); otherwise it
    /// is taken from the environment variable CORRAL_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Refused: a token on the command line is visible to every user of the
    /// machine. Kept only to say so.
    #[arg(long, hide = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// How the commands that take a token read it, for messages.
pub const TOKEN_SOURCES: &str =
    "set CORRAL_TOKEN, or pass --token-file PATH (`--token-file -` reads standard input)";

/// Why a token on the command line is refused, and what to do instead
/// (`instead`, e.g. [`TOKEN_SOURCES`]).
pub fn refuse_on_command_line(what: &str, instead: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} is no longer taken on the command line, where every user of the machine can \
         read it (`ps`) and shell history keeps it: {instead}. If you just typed a token \
         here, consider it exposed and revoke it (`corral tenants tokens NAME` lists ids)"
    )
}

impl TokenInput {
    /// The token from `--token-file`, else from the environment when
    /// `use_env`; `None` when neither gives one.
    pub fn read(&self, use_env: bool) -> anyhow::Result<Option<Token>> {
        if self.token.is_some() {
            return Err(refuse_on_command_line("`--token TOKEN`", TOKEN_SOURCES));
        }
        if let Some(path) = &self.token_file {
            return read_file(path).map(Some);
        }
        if use_env && let Some(text) = std::env::var_os(TOKEN_ENV) {
            let text = text
                .into_string()
                .map_err(|_| anyhow::anyhow!("{TOKEN_ENV} is not valid UTF-8"))?;
            return parse(&text, TOKEN_ENV).map(Some);
        }
        Ok(None)
    }
}

fn read_file(path: &Path) -> anyhow::Result<Token> {
    let mut text = String::new();
    let what = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_TOKEN_FILE)
            .read_to_string(&mut text)
            .context("reading the token from standard input")?;
        "standard input".to_owned()
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
            .with_context(|| format!("reading the token from {}", path.display()))?;
        path.display().to_string()
    };
    parse(&text, &what)
}

/// The first non-empty line of `text`, trimmed.
fn parse(text: &str, what: &str) -> anyhow::Result<Token> {
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Ok(Token::from_presented(line)),
        None => bail!("no token in {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_the_first_non_empty_line() {
        let t = parse("\n  crl_abc  \nsecond\n", "x").unwrap();
        assert_eq!(t.expose(), "crl_abc");
        assert!(parse(" \n\t\n", "x").is_err());
    }

    #[test]
    fn a_token_on_the_command_line_is_refused() {
        let input = TokenInput {
            token_file: None,
            token: Some("crl_x".into()),
        };
        let refused = input.read(true).unwrap_err().to_string();
        assert!(refused.contains(TOKEN_ENV) && refused.contains("--token-file"));
        assert!(!refused.contains("crl_x"), "the refusal repeats the secret");
    }
}
