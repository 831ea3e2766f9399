//! Entry points for the fuzz and property targets (`tests/fuzz/`); hidden
//! from the docs and not part of the API.
//!
//! It owns nothing: it re-exports, unchanged, the pieces of private modules
//! the targets feed generated input to (how the Redis broker stores and
//! reassembles a task, and how the sandbox decodes what a guest returned),
//! so the targets exercise the very code production runs. It must never
//! hold logic of its own, and nothing in the workspace may use it.

pub use corral_client::fuzzing::*;
pub use corral_sandbox::fuzzing::*;
