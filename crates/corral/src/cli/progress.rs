//! Progress shown to a person: the bar of `corral enqueue --from` and the
//! spinner of `corral wait`, drawn on stderr with `indicatif`.
//!
//! Only on a terminal: when stderr is a file or a pipe (a script, a log),
//! the bar is hidden and nothing extra is written, so scripts see exactly
//! what they saw before. Never drawn on stdout, which carries the command's
//! answer (ids, task summaries). Dropping a bar clears it.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// How often a spinner moves.
const TICK: Duration = Duration::from_millis(100);

/// stderr when it is a terminal, nowhere otherwise.
fn target() -> (ProgressDrawTarget, bool) {
    if std::io::stderr().is_terminal() {
        (ProgressDrawTarget::stderr(), true)
    } else {
        (ProgressDrawTarget::hidden(), false)
    }
}

/// A spinner saying `message`, with the time spent so far.
pub(super) fn spinner(message: String) -> ProgressBar {
    let (target, shown) = target();
    let bar = ProgressBar::with_draw_target(None, target)
        .with_finish(ProgressFinish::AndClear)
        .with_message(message);
    // The template is a constant: it always parses.
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    if shown {
        bar.enable_steady_tick(TICK);
    }
    bar
}

/// A bar over `total` bytes of input (a spinner when the size is unknown,
/// as for standard input); its message is set by the caller (tasks
/// enqueued so far).
pub(super) fn bytes_bar(total: Option<u64>) -> ProgressBar {
    let (target, shown) = target();
    let bar = ProgressBar::with_draw_target(total, target).with_finish(ProgressFinish::AndClear);
    let template = match total {
        Some(_) => "{spinner} {msg} [{wide_bar}] {bytes}/{total_bytes}, eta {eta}",
        None => "{spinner} {bytes} read, {msg} ({elapsed})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if shown {
        bar.enable_steady_tick(TICK);
    }
    bar
}
