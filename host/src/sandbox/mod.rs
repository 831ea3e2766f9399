//! The sandbox: runs one handler call in a fresh, metered component instance.
//!
//! It owns the one [`wasmtime::Engine`] of the process (fuel metering, epoch
//! interruption driven by a ticker thread, the pooling instance allocator with
//! copy-on-write memory images, async execution), the linker with the host
//! imports, and the compiled-component cache. For every call it makes a new
//! `Store` with the job's [`Limits`], instantiates from the cached
//! `InstancePre`, calls `handle`, and drops everything.
//!
//! It must never know where tasks come from: no broker, no Redis, no task
//! states. Inputs are bytes, a call context and args; outputs are args, text
//! and typed failures.

mod cache;
mod error;
mod host;
mod limits;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use cache::{LoadSource, ModuleHash};
pub use error::{HandlerFailure, LoadError};
pub use host::MemoryLimitExceeded;
pub use limits::Limits;

use crate::task::ArgsMap;
use host::HostState;

/// Bindings generated from `wit/job.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "corral:job/handler",
        exports: { default: async },
    });
}

use bindings::corral::job::types as wit;

/// How often the ticker advances the engine's epoch: the granularity of
/// deadlines and of the yields that keep a busy guest from hogging a thread.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Use the pooling instance allocator (fast instantiation, bounded
    /// concurrency) instead of on-demand allocation.
    pub pooling: bool,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
    /// No job may set a memory limit above this (the pool's slot size).
    pub max_memory_bytes: u64,
    /// Largest module accepted.
    pub max_module_bytes: u64,
    /// Wasm stack per call.
    pub max_wasm_stack: usize,
    /// Where to keep precompiled artifacts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            pooling: true,
            max_instances: 256,
            max_memory_bytes: 512 << 20,
            max_module_bytes: 64 << 20,
            max_wasm_stack: 512 << 10,
            cache_dir: None,
        }
    }
}

/// A compiled handler, ready to instantiate.
pub struct LoadedHandler {
    hash: ModuleHash,
    pre: bindings::HandlerPre<HostState>,
}

impl LoadedHandler {
    /// The module's content hash.
    pub fn hash(&self) -> &ModuleHash {
        &self.hash
    }
}

/// Where a call sits; passed to the guest as its `context`.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The task's id.
    pub task_id: String,
    /// The job name.
    pub job: String,
    /// The owning tenant.
    pub tenant: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// This handler's index in the chain.
    pub handler_index: u32,
    /// The chain's length.
    pub handler_count: u32,
}

/// A successful call's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutput {
    /// Args for the next handler.
    pub args: ArgsMap,
    /// Text for the result log.
    pub result_log: String,
    /// What the guest wrote to stdout, stderr and `log`, within budget.
    pub guest_log: String,
}

/// A failed call: the failure and what the guest wrote before it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// What went wrong.
    pub failure: HandlerFailure,
    /// What the guest wrote, within budget.
    pub guest_log: String,
}

/// The engine, linker and component cache of one process.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use corral::sandbox::{Sandbox, SandboxConfig, CallContext, Limits};
///
/// let sandbox = Sandbox::new(SandboxConfig::default())?;
/// let handler = sandbox.load(&std::fs::read("jobs/dist/normalize.wasm")?)?;
/// let ctx = CallContext {
///     task_id: "t1".into(), job: "demo".into(), tenant: "default".into(),
///     attempt: 1, handler_index: 0, handler_count: 1,
/// };
/// let mut args = corral::task::ArgsMap::new();
/// args.insert("text".into(), "Hello, World".into());
/// let out = sandbox.call(&handler, ctx, &args, &Limits::default()).await;
/// println!("{:?}", out.map(|o| o.args));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    memory: cache::MemoryCache<LoadedHandler>,
    disk: Option<cache::DiskCache>,
    config: SandboxConfig,
}

impl Sandbox {
    /// Builds the engine, starts the epoch ticker and links the host imports.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .memory_init_cow(true);
        if config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            // Every instance of a Rust wasip2 component uses a few core
            // instances (the program plus wit-component's shims), one memory
            // and a couple of tables; size the pool for `max_instances` such
            // components at once.
            pool.total_component_instances(config.max_instances)
                .total_core_instances(config.max_instances * 4)
                .total_memories(config.max_instances * 2)
                .total_tables(config.max_instances * 4)
                .total_stacks(config.max_instances)
                // The slot size caps any job's memory limit.
                .max_memory_size(config.max_memory_bytes as usize)
                // Keep a few warm slots' pages resident: resetting them is
                // cheaper than faulting fresh pages in on the next task.
                .linear_memory_keep_resident(64 << 10)
                .table_keep_resident(16 << 10);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm)?;
        start_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Handler::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;

        let disk = match &config.cache_dir {
            Some(dir) => Some(cache::DiskCache::new(dir, &engine)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                memory: cache::MemoryCache::new(),
                disk,
                config,
            }),
        })
    }

    /// The process's engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The settings the sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Number of compiled handlers held in memory.
    pub fn cached_handlers(&self) -> usize {
        self.inner.memory.len()
    }

    /// The handler with this hash, if it is compiled and in memory.
    pub fn cached(&self, hash: &ModuleHash) -> Option<Arc<LoadedHandler>> {
        self.inner.memory.get(hash)
    }

    /// The handler compiled from `bytes`, compiling it on first use.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedHandler>, LoadError> {
        self.load_traced(bytes).map(|(handler, _)| handler)
    }

    /// Like [`load`](Self::load), also saying where the handler came from.
    pub fn load_traced(&self, bytes: &[u8]) -> Result<(Arc<LoadedHandler>, LoadSource), LoadError> {
        let hash = ModuleHash::of(bytes);
        if let Some(handler) = self.inner.memory.get(&hash) {
            return Ok((handler, LoadSource::Memory));
        }
        self.check_bytes(bytes)?;
        let (component, source) = match self
            .inner
            .disk
            .as_ref()
            .and_then(|d| d.load(&self.inner.engine, &hash))
        {
            Some(component) => (component, LoadSource::Disk),
            None => (self.compile(&hash, bytes)?, LoadSource::Compiled),
        };
        let handler = self.prepare(hash.clone(), &component)?;
        Ok((self.inner.memory.insert(hash, Arc::new(handler)), source))
    }

    /// Checks that `bytes` would load, without keeping anything.
    pub fn validate(&self, bytes: &[u8]) -> Result<ModuleHash, LoadError> {
        self.load(bytes).map(|h| h.hash.clone())
    }

    fn check_bytes(&self, bytes: &[u8]) -> Result<(), LoadError> {
        let limit = self.inner.config.max_module_bytes;
        if bytes.len() as u64 > limit {
            return Err(LoadError::TooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        // Bytes 4..8 are the version and layer: a core module is `01 00 00 00`.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule);
        }
        Ok(())
    }

    fn compile(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<Component, LoadError> {
        let engine = &self.inner.engine;
        let Some(disk) = &self.inner.disk else {
            return Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")));
        };
        let artifact = engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        disk.store(hash, &artifact);
        // SAFETY: `artifact` was produced just now by this engine.
        unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    fn prepare(&self, hash: ModuleHash, component: &Component) -> Result<LoadedHandler, LoadError> {
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = bindings::HandlerPre::new(instance_pre)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok(LoadedHandler { hash, pre })
    }

    /// Runs `handler` once on `args` in a fresh instance under `limits`.
    pub async fn call(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> Result<CallOutput, CallError> {
        let limits = Limits {
            memory_bytes: limits.memory_bytes.min(self.inner.config.max_memory_bytes),
            ..*limits
        };
        let span = tracing::info_span!("handler", task = %ctx.task_id, job = %ctx.job, index = ctx.handler_index);
        let state = HostState::new(limits.memory_bytes, limits.max_log_bytes as usize, span);
        let log = state.log();
        let finish_log =
            || std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner())).finish();

        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| s);
        if let Err(e) = store.set_fuel(limits.fuel) {
            return Err(CallError {
                failure: HandlerFailure::Instantiate {
                    message: format!("{e:#}"),
                },
                guest_log: finish_log(),
            });
        }
        let started = Instant::now();
        let deadline = started + limits.timeout();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });

        let wit_ctx = wit::Context {
            task_id: ctx.task_id,
            job: ctx.job,
            tenant: ctx.tenant,
            attempt: ctx.attempt,
            handler_index: ctx.handler_index,
            handler_count: ctx.handler_count,
        };
        let wit_args: Vec<wit::Arg> = args
            .iter()
            .map(|(name, value)| wit::Arg {
                name: name.clone(),
                value: value.to_string(),
            })
            .collect();

        let run = async {
            let instance = handler
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (e, true))?;
            instance
                .call_handle(&mut store, &wit_ctx, &wit_args)
                .await
                .map_err(|e| (e, false))
        };
        // The epoch callback stops a guest that computes; this timeout stops
        // one that waits in a host call (a sleep, a poll).
        let outcome = match tokio::time::timeout(limits.timeout(), run).await {
            Ok(outcome) => outcome,
            Err(_) => Err((wasmtime::Error::new(DeadlineExceeded), false)),
        };
        let consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        drop(store);
        let guest_log = finish_log();
        let fail = |failure| CallError {
            failure,
            guest_log: guest_log.clone(),
        };
        tracing::trace!(
            fuel = consumed,
            elapsed_us = started.elapsed().as_micros() as u64,
            "handler call done"
        );

        let output = match outcome {
            Ok(Ok(output)) => output,
            Ok(Err(guest)) => {
                return Err(fail(HandlerFailure::Guest {
                    retryable: guest.kind == wit::ErrorKind::Retryable,
                    message: guest.message,
                }));
            }
            Err((e, instantiating)) => {
                return Err(fail(classify(e, instantiating, &limits, &guest_log)));
            }
        };

        let size = output.log.len() as u64
            + output
                .args
                .iter()
                .map(|a| (a.name.len() + a.value.len()) as u64)
                .sum::<u64>();
        if size > limits.max_output_bytes {
            return Err(fail(HandlerFailure::OutputTooLarge {
                size,
                limit: limits.max_output_bytes,
            }));
        }
        let mut next = ArgsMap::new();
        for arg in output.args {
            match serde_json::from_str(&arg.value) {
                Ok(value) => {
                    next.insert(arg.name, value);
                }
                Err(e) => {
                    return Err(fail(HandlerFailure::BadOutput {
                        name: arg.name,
                        reason: e.to_string(),
                    }));
                }
            }
        }
        Ok(CallOutput {
            args: next,
            result_log: output.log,
            guest_log,
        })
    }
}

/// Raised by the epoch callback (or the async timeout) past the deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// Turns a wasmtime error into the failure it stands for.
fn classify(
    e: wasmtime::Error,
    instantiating: bool,
    limits: &Limits,
    guest_log: &str,
) -> HandlerFailure {
    if e.downcast_ref::<DeadlineExceeded>().is_some() {
        return HandlerFailure::Deadline {
            limit: limits.timeout(),
        };
    }
    if let Some(m) = e.downcast_ref::<MemoryLimitExceeded>() {
        return HandlerFailure::MemoryLimit {
            limit: m.limit,
            requested: m.requested,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => HandlerFailure::OutOfFuel { limit: limits.fuel },
        Some(Trap::StackOverflow) => HandlerFailure::StackOverflow,
        Some(Trap::Interrupt) => HandlerFailure::Deadline {
            limit: limits.timeout(),
        },
        Some(trap) => {
            let mut message = trap.to_string();
            if *trap == Trap::UnreachableCodeReached {
                message.push_str(" (a Rust guest panicked)");
            }
            let tail = guest_log.trim_end();
            if !tail.is_empty() {
                let mut start = tail.len().saturating_sub(512);
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                message.push_str("; guest output ends with: ");
                message.push_str(&tail[start..]);
            }
            HandlerFailure::Trap { message }
        }
        None if instantiating => HandlerFailure::Instantiate {
            message: format!("{e:#}"),
        },
        None => HandlerFailure::Trap {
            message: format!("{e:#}"),
        },
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("corral-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        // Without a ticker, deadlines fall back to the async timeout alone.
        tracing::error!(error = %e, "could not start the epoch ticker thread");
    }
}
