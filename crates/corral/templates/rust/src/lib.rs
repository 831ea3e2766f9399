//! `{{name}}`: a Corral job handler. It receives the task's args and returns
//! the args for the next handler (or the task's result) and a line for the
//! task's result log.

use corral_guest::{Args, Context, Error, Output, export_handler, log};

fn handle(ctx: Context, mut args: Args) -> Result<Output, Error> {
    // A missing or mistyped arg is a fatal error for the task, with a clear
    // message; return `Error::retryable(...)` for a failure worth retrying.
    let name: String = args.get_opt("name")?.unwrap_or_else(|| "world".to_owned());
    log::info(&format!("greeting {name} (task {})", ctx.task_id));
    args.insert("greeting", &format!("Hello, {name}!"))?;
    Ok(Output::new(args).log(format!("greeted {name}")))
}

export_handler!(handle);
