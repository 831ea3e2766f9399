//! Corral's shared vocabulary: what every other Corral crate speaks, and
//! nothing that runs.
//!
//! | module | owns |
//! | --- | --- |
//! | [`task`] | the task model and its JSON, args and their nesting bound |
//! | [`text`] | guest and tenant text made inert and bounded for logs and records |
//! | [`clock`] | time, injectable, so tests move it instead of sleeping |
//! | [`lru`] | the bounded least-recently-used map behind every cache |
//!
//! It sits below both the producer's crate (`corral-client`: brokers and
//! the client) and the sandbox (`corral-sandbox`), which share the args
//! model and the text rule but must not know of each other. It must never
//! depend on a runtime, do I/O, or know of brokers or wasm.

pub mod clock;
pub mod lru;
pub mod metering;
pub mod task;
pub mod text;

pub use task::{ArgsMap, Task, TaskId, TaskState};
