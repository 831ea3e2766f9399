//! Corral for producers: put tasks into a broker and read what became of
//! them, without compiling a wasm runtime, an HTTP server or a command line.
//!
//! | module | owns |
//! | --- | --- |
//! | [`task`] | the task model and its JSON (from `corral-core`) |
//! | [`broker`] | the broker trait, leases, the embedded broker and the Redis broker |
//! | [`client`] | the producer API: enqueue, bulk enqueue, status, wait |
//! | [`schedule`] | schedules: cron and interval timetables, and how due ticks fire |
//! | [`workflow`] | workflows: chains, groups and chords of tasks, compiled to steps the broker advances |
//!
//! ```no_run
//! use std::time::Duration;
//! use corral_client::{Client, RedisBroker, RedisConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let client = Client::new(broker);
//! let task = client.task("text-stats").arg("text", "Hello, World")?.build();
//! let id = client.enqueue(task).await?;
//! let done = client.wait("default", id, Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! `examples/producer.rs` is the same as a program.
//!
//! Workers (`corral-worker`) take the tasks from the same broker. Nothing in
//! this crate knows about wasm: data flows client → broker → worker.

pub mod broker;
pub mod client;
pub mod schedule;
pub mod workflow;

pub use corral_core::{clock, task};

pub use broker::{Broker, BrokerError, EmbeddedBroker, RedisBroker, RedisConfig};
pub use client::{Client, ScheduleBuilder, WaitError};
pub use task::{ArgsMap, Task, TaskId, TaskState};

/// Entry points for the fuzz targets (`tests/fuzz/`): how the Redis broker
/// stores and reassembles a task, re-exported unchanged so the targets
/// exercise the code production runs. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::broker::redis::record::{
        AssembleError, Assembled, META_LEN, Meta, RawRecord, StoredTask, assemble, from_micros,
        micros,
    };
}
