//! Fuzz and property targets, one module each: the task JSON parser
//! (`task_json`), the Redis record format (`record`), args across the WIT
//! boundary through a real guest (`wit_args`) and the decoding of whatever
//! a guest returns (`guest_output`), and the upload validator (`upload`).
//!
//! `cargo test --release --test fuzz` runs each briefly on fixed seeds (the
//! same cases every run; a few seconds each). To run longer, on fresh
//! seeds, or to replay a failure:
//!
//! ```text
//! scripts/fuzz.sh                      # every target, 60 s each
//! scripts/fuzz.sh upload 600           # one target, 10 minutes
//! CORRAL_FUZZ_SEED=0x… scripts/fuzz.sh upload   # the one failing case
//! ```
//!
//! A failing case prints the line that replays it. Every case also runs
//! under a counting allocator (`alloc.rs`) and fails if it asked for more
//! heap than its target allows, so "no unbounded allocation" is checked,
//! not hoped.

mod alloc;
mod driver;
mod inputs;
#[path = "../common/limit.rs"]
mod limit;

mod guest_output;
mod record;
mod task_json;
mod upload;
mod wit_args;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
