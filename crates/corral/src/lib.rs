//! Corral: a job executor whose handlers are sandboxed, metered WebAssembly
//! components. This crate is the `corral` command and every crate of the
//! workspace in one place; each part can also be used alone.
//!
//! Producers put JSON [`Task`]s into a [`Broker`] through a [`Client`]; a
//! [`Worker`] leases them, looks up the job's handler chain in the
//! [`Registry`] and runs each handler in a fresh [`Sandbox`] instance under
//! fuel, memory and wall-clock limits, checkpointing after every handler.
//! Data flows one way: client → broker → worker → sandbox → broker.
//!
//! | module | owns | crate |
//! | --- | --- | --- |
//! | [`task`] | the task model and its JSON | `corral-core` |
//! | [`text`] | guest and tenant text made inert and bounded for logs and records | `corral-core` |
//! | [`clock`] | time, injectable | `corral-core` |
//! | [`broker`] | the broker trait, leases, the embedded and Redis brokers | `corral-client` |
//! | [`client`] | the producer API | `corral-client` |
//! | [`sandbox`] | the engine, limits, the component cache, host imports | `corral-sandbox` |
//! | [`job`] | job definitions: name → handler chain + limits | `corral-registry` |
//! | [`tenant`] | tenants, their limits and API tokens | `corral-registry` |
//! | [`catalog`] | storage of tenants, modules and job definitions | `corral-registry` |
//! | [`registry`] | registering jobs, resolving them into compiled handlers | `corral-registry` |
//! | [`submit`] | enqueueing a tenant's task: job known, version pinned, within quota | `corral-registry` |
//! | [`worker`] | fetch loop, concurrency, heartbeats, shutdown | `corral-worker` |
//! | [`api`] | the HTTP API and dashboard | `corral-api` |
//! | [`cli`] | the `corral` command line | this crate |
//!
//! This crate only re-exports and parses command lines: it must never hold
//! logic another crate needs.

pub use corral_api as api;
pub use corral_client::{broker, client, schedule, workflow};
pub use corral_core::{clock, metering, task, text};
pub use corral_registry::{catalog, job, registry, submit, tenant};
pub use corral_sandbox as sandbox;
pub use corral_worker as worker;

pub mod cli;
#[doc(hidden)]
pub mod fuzzing;

pub use broker::{Broker, EmbeddedBroker};
pub use client::Client;
pub use registry::{JobDefinition, Registry};
pub use sandbox::{Limits, Sandbox, SandboxConfig};
pub use task::{ArgsMap, Task, TaskId, TaskState};
pub use worker::{Worker, WorkerConfig};
