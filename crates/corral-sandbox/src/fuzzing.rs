//! Entry points for the fuzz and property targets (`tests/fuzz/`); hidden
//! from the docs and not part of the API.
//!
//! It owns nothing: it runs, unchanged, the path the sandbox takes once a
//! guest returned (how the host checks and decodes what a guest handed
//! back), so the targets exercise the very code production runs. It must
//! never hold logic of its own, and nothing in the crate may use it.

use crate::bindings::corral::job::types as wit;
use crate::{ArgsMap, CallContext, CallError, CallOutput, Limits, Sandbox};

/// What a guest's `handle` returned, as the WIT boundary hands it to the
/// host: `Ok((args as (name, JSON text) pairs, result-log text))`, or
/// `Err((retryable, message))`.
pub type GuestReturn = Result<(Vec<(String, String)>, String), (bool, String)>;

/// Runs the host's side of a handler call (the args' encoding, the output's
/// checks and decoding) on `returned` as if a guest had returned it: the
/// path [`Sandbox::call`] takes once the guest is done, without a guest.
pub fn decode_guest_output(
    sandbox: &Sandbox,
    returned: GuestReturn,
    limits: &Limits,
) -> Result<CallOutput, CallError> {
    let ctx = CallContext {
        task_id: "fuzz".into(),
        job: "fuzz".into(),
        tenant: "fuzz".into(),
        attempt: 1,
        handler_index: 0,
        handler_count: 1,
    };
    let returned = returned
        .map(|(args, log)| wit::Output {
            args: args
                .into_iter()
                .map(|(name, value)| wit::Arg { name, value })
                .collect(),
            log,
        })
        .map_err(|(retryable, message)| wit::Error {
            kind: if retryable {
                wit::ErrorKind::Retryable
            } else {
                wit::ErrorKind::Fatal
            },
            message,
        });
    sandbox.call_native(move |_, _| returned, ctx, &ArgsMap::new(), limits)
}
