//! `panic` (hostile): panics with the message `hostile panic`.
//!
//! Demonstrates a handler that dies instead of returning an error. With
//! `panic = "abort"` the panic message goes to stderr and the component
//! traps (`unreachable`). Expected: the host reports the trap as the task's
//! failure, keeps the stderr text, and stays healthy.

use corral_guest::{Args, Context, Error, Output, export_handler};

fn panic(_ctx: Context, _args: Args) -> Result<Output, Error> {
    panic!("hostile panic");
}

export_handler!(panic);
