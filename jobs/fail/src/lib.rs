//! `fail`: always fails, the way its args ask.
//!
//! Arg `kind` is `"retryable"` or `"fatal"` (default `"fatal"`); arg `message`
//! is the error's message (default `fail job asked to fail`). Any other
//! `kind` is itself a fatal error. Used to test retries with backoff and
//! immediate failure.

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_MESSAGE: &str = "fail job asked to fail";

fn fail(_ctx: Context, args: Args) -> Result<Output, Error> {
    let kind = args.get_opt::<String>("kind")?;
    let message = args
        .get_opt::<String>("message")?
        .unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
    Err(match kind.as_deref() {
        None | Some("fatal") => Error::fatal(message),
        Some("retryable") => Error::retryable(message),
        Some(other) => Error::fatal(format!(
            "unknown kind `{other}`: expected `retryable` or `fatal`"
        )),
    })
}

export_handler!(fail);
