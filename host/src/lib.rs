//! Corral: a job executor whose handlers are sandboxed, metered WebAssembly
//! components.
//!
//! Producers put JSON [`Task`](task::Task)s into a [`Broker`](broker::Broker)
//! through a [`Client`](client::Client); a [`Worker`](worker::Worker) leases
//! them, looks up the job's handler chain in the [`Registry`](registry::Registry)
//! and runs each handler in a fresh [`Sandbox`](sandbox::Sandbox) instance
//! under fuel, memory and wall-clock limits, checkpointing after every
//! handler. Data flows one way: client → broker → worker → sandbox → broker.
//!
//! | module | owns |
//! | --- | --- |
//! | [`task`] | the task model and its JSON |
//! | [`broker`] | the broker trait, leases, the embedded broker |
//! | [`sandbox`] | the engine, limits, the component cache, host imports |
//! | [`registry`] | job definitions: name → handler chain + limits |
//! | [`catalog`] | storage of tenants, modules and job definitions |
//! | [`tenant`] | tenants, their limits and API tokens |
//! | [`worker`] | fetch loop, concurrency, heartbeats, shutdown |
//! | [`client`] | the producer API |
//! | [`api`] | the HTTP API and dashboard: tenants upload, register, enqueue, read |
//! | [`text`] | guest and tenant text made inert and bounded for logs and records |

pub mod api;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod clock;
#[doc(hidden)]
pub mod fuzzing;
mod lru;
pub mod registry;
pub mod sandbox;
pub mod task;
pub mod tenant;
pub mod text;
pub mod worker;

pub use broker::{Broker, EmbeddedBroker};
pub use client::Client;
pub use registry::{JobDefinition, Registry};
pub use sandbox::{Limits, Sandbox, SandboxConfig};
pub use task::{ArgsMap, Task, TaskId, TaskState};
pub use worker::{Worker, WorkerConfig};
