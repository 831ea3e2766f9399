//! The sandbox: runs one handler call in a fresh, metered component instance.
//!
//! It owns the one [`wasmtime::Engine`] of the process (`engine.rs`: fuel
//! metering, epoch interruption driven by a ticker thread, the pooling
//! instance allocator with copy-on-write memory images, async execution),
//! the linker with the host imports (`host.rs`), and the compiled-component
//! cache (`cache.rs`: in memory, and optionally on disk). For every call it
//! makes a new `Store` with the job's [`Limits`], instantiates from the
//! cached `InstancePre`, calls `handle`, and drops everything: no state
//! crosses from one call to the next.
//!
//! It must never know where tasks come from: no broker, no Redis, no task
//! states. Inputs are bytes, a call context and args; outputs are args, text
//! and typed failures ([`LoadError`], [`HandlerFailure`]).
//!
//! # What stops a misbehaving guest
//!
//! | misbehaviour | stopped by | failure kind |
//! | --- | --- | --- |
//! | computes forever | fuel | `out_of_fuel` |
//! | computes or waits past its deadline | epoch callback / async timeout / call hook | `deadline` |
//! | computes or waits after its call was cancelled ([`CancelSignal`]) | the same three, watching the signal; a call cancelled before it starts never instantiates | `cancelled` |
//! | grows memory past its limit | the store's resource limiter | `memory_limit` |
//! | recurses without bound | `max_wasm_stack` | `stack_overflow` |
//! | panics (Rust) | trap on `unreachable`, message from stderr | `panic` |
//! | any other trap | wasmtime | `trap` |
//! | returns too much | size check before decoding | `output_too_large` |
//! | returns args that are not JSON, or nested past `MAX_ARG_DEPTH` | decoding | `bad_output` |
//! | writes too much to stdout/stderr/log | the log budget (kept, truncated) | (succeeds) |
//! | does a lot of work in one host call | the per-call copy bound (`hostcall_bytes`), each host call's own bound, the deadline checked on every return from the host | `trap`, `deadline` |
//! | returns an error message or traps with a huge one | cut to the output limit and 4 KiB, made inert | (its own kind) |
//! | reaches for files, sockets, env | deny-by-default WASI (errors to the guest) | (guest decides) |
//! | imports what the host lacks | linking, at load | `unsupported_import` |
//! | exports another world | type check, at load | `wrong_world` |
//! | needs more memories or tables than an instance may have | at load | `over_engine_limits` |
//! | is a core module, not a component | at load | `core_module` |
//! | is not wasm, or not a valid component | at load | `not_wasm`, `invalid_component` |
//! | takes too long or too much memory to compile | shape checks, then a bounded child process | `compile_limit` |
//!
//! Load errors refuse a module at registration; a module stored without
//! validation fails its tasks with the same kind when a worker resolves it.
//!
//! Calls must run inside a tokio runtime with its timer enabled (the
//! deadline of a guest waiting in a host call is a tokio timeout).

mod cache;
mod cancel;
mod compiler;
mod engine;
mod error;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod inspect;
mod limits;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{CallHook, Engine, Store, Trap};

pub use cache::{DiskCacheError, LoadSource, ModuleHash, default_cache_dir};
pub use cancel::CancelSignal;
pub use compiler::{COMPILE_SUBCOMMAND, CompileConfig, CompileIsolation, run_compile_child};
pub use error::{HandlerFailure, LoadError, MAX_FAILURE_TEXT_BYTES, MAX_NAME_IN_MESSAGE};
pub use host::{MemoryLimitExceeded, WasiUse};
pub use inspect::{MAX_FUNCTION_BODY_BYTES, MAX_FUNCTIONS, MAX_LOCALS, MAX_NESTING_DEPTH};
pub use limits::Limits;

/// The args a handler is called with and returns (names to JSON values).
pub use corral_core::metering::CallMetering;
pub use corral_core::task::ArgsMap;
pub use fields::InertFields;

use corral_core::lru::Lru;
use corral_core::task::{MAX_ARG_DEPTH, nested_deeper_than};
use corral_core::text::{Inert, inert_capped};
use host::{CallLabel, FinishedLog, HostState, SharedLog};

/// Bindings generated from `wit/job.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "corral:job/handler",
        exports: { default: async },
    });
}

use bindings::corral::job::types as wit;

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Use the pooling instance allocator (instantiation in microseconds,
    /// at most `max_instances` at once) instead of allocating each
    /// instance's memory with `mmap` on demand.
    pub pooling: bool,
    /// Instances that may exist at once (pool size): at least the worker's
    /// concurrency, or calls past it fail with `instantiate` (retryable).
    pub max_instances: u32,
    /// No job may set a memory limit above this (the pool's slot size).
    pub max_memory_bytes: u64,
    /// Largest module accepted.
    pub max_module_bytes: u64,
    /// Wasm stack per call. Past it a guest traps with `stack_overflow`.
    pub max_wasm_stack: usize,
    /// No job's log budget ([`Limits::max_log_bytes`]) may exceed this: the
    /// log is kept in host memory, filled as fast as the guest can write.
    pub max_log_bytes: u64,
    /// Where to keep precompiled artifacts (see [`default_cache_dir`]);
    /// `None` keeps them in memory only. A directory that cannot be used
    /// (not creatable, writable by others) is logged and ignored: the cache
    /// only saves time.
    pub cache_dir: Option<PathBuf>,
    /// Meter fuel. On by default; off only to measure what metering costs
    /// (`corral bench sandbox`) or for fully trusted handlers, since with it
    /// off [`Limits::fuel`] is ignored and only the deadline stops a loop.
    pub consume_fuel: bool,
    /// Where and under which bounds modules compile.
    pub compile: CompileConfig,
    /// Most compiled handlers kept in memory; the least recently used go
    /// first.
    pub memory_cache_entries: usize,
    /// Most bytes of compiled code kept in memory.
    pub memory_cache_bytes: u64,
    /// Most bytes of precompiled artifacts kept in `cache_dir`; the least
    /// recently used files are deleted past it.
    pub disk_cache_bytes: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            pooling: true,
            max_instances: 256,
            max_memory_bytes: 512 << 20,
            max_module_bytes: 64 << 20,
            max_wasm_stack: 512 << 10,
            max_log_bytes: 1 << 20,
            cache_dir: None,
            consume_fuel: true,
            compile: CompileConfig::default(),
            memory_cache_entries: 1024,
            memory_cache_bytes: 1 << 30,
            disk_cache_bytes: 4 << 30,
        }
    }
}

/// A compiled handler, ready to instantiate.
pub struct LoadedHandler {
    hash: ModuleHash,
    pre: bindings::HandlerPre<HostState>,
    /// How long compiling it took (or took when its artifact was made).
    compile_time: Duration,
    /// Owners whose own validation has taken `compile_time`: see
    /// [`Sandbox::validate_async`].
    paid: Mutex<HashSet<String>>,
}

impl LoadedHandler {
    /// The module's content hash.
    pub fn hash(&self) -> &ModuleHash {
        &self.hash
    }

    /// How long compiling this handler took, wherever it was compiled.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether `owner` has already waited out this handler's compile, and
    /// records that it now has.
    fn paid_by(&self, owner: &str) -> bool {
        !self
            .paid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(owner.to_owned())
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
    /// What the call cost.
    pub metering: CallMetering,
}

/// A failed call: the failure and what the guest wrote before it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// What went wrong.
    pub failure: HandlerFailure,
    /// What the guest wrote, within budget.
    pub guest_log: String,
    /// What the call cost up to its failure (zero when it never ran).
    pub metering: CallMetering,
}

/// The engine, linker and component cache of one process.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use corral_sandbox::{Sandbox, SandboxConfig, CallContext, Limits};
///
/// let sandbox = Sandbox::new(SandboxConfig::default())?;
/// let handler = sandbox.load(&std::fs::read("jobs/dist/normalize.wasm")?)?;
/// let ctx = CallContext {
///     task_id: "t1".into(), job: "demo".into(), tenant: "default".into(),
///     attempt: 1, handler_index: 0, handler_count: 1,
/// };
/// let mut args = corral_sandbox::ArgsMap::new();
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
    memory: Lru<ModuleHash, Arc<LoadedHandler>>,
    disk: Option<cache::DiskCache>,
    compiles: compiler::CompileSlots,
    active: Arc<engine::ActiveCalls>,
    /// Instances alive: from a successful instantiation to the end of its
    /// call.
    instances: engine::Counter,
    /// Module loads by where they were answered from.
    loads: LoadTally,
    config: SandboxConfig,
}

/// How module loads were answered, counted since the sandbox was built.
#[derive(Debug, Default)]
struct LoadTally {
    memory: std::sync::atomic::AtomicU64,
    disk: std::sync::atomic::AtomicU64,
    compiled: std::sync::atomic::AtomicU64,
}

impl LoadTally {
    fn count<E>(
        &self,
        loaded: Result<(Arc<LoadedHandler>, LoadSource), E>,
    ) -> Result<(Arc<LoadedHandler>, LoadSource), E> {
        if let Ok((_, source)) = &loaded {
            let counter = match source {
                LoadSource::Memory => &self.memory,
                LoadSource::Disk => &self.disk,
                LoadSource::Compiled => &self.compiled,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        loaded
    }
}

/// Module loads since the sandbox was built, by where each was answered
/// from: the compile cache's hits (`memory`, `disk`) and misses
/// (`compiled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Found compiled in memory.
    pub memory: u64,
    /// Found precompiled on disk.
    pub disk: u64,
    /// Compiled.
    pub compiled: u64,
}

impl Sandbox {
    /// Builds the engine, starts the epoch ticker, links the host imports
    /// and opens the disk cache, if any.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let engine = engine::build(&config)?;
        let active = Arc::new(engine::ActiveCalls::default());
        engine::start_ticker(&engine, active.clone());

        let mut linker = Linker::new(&engine);
        // The whole of WASI p2 is linked so that guests built by ordinary
        // toolchains (which import much of it) load; what each interface may
        // actually do is decided by the per-call context in `host`.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // The same clocks and random, each call counted (`call_counted`).
        host::add_counted_clocks_and_random(&mut linker)?;
        bindings::Handler::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;

        let disk = config.cache_dir.as_deref().and_then(|dir| {
            match cache::DiskCache::open(dir, &engine, config.disk_cache_bytes) {
                Ok(disk) => Some(disk),
                Err(e) => {
                    tracing::warn!(error = %e, "not caching precompiled components on disk");
                    None
                }
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                memory: Lru::new(config.memory_cache_entries, config.memory_cache_bytes),
                disk,
                compiles: compiler::CompileSlots::new(&config.compile),
                active,
                instances: engine::Counter::default(),
                loads: LoadTally::default(),
                config,
            }),
        })
    }

    /// The process's engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Instances alive at this moment, each from its call's successful
    /// instantiation to the end of the call: never more than
    /// [`SandboxConfig::max_instances`].
    pub fn instances_in_use(&self) -> usize {
        self.inner.instances.count()
    }

    /// The settings the sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The directory precompiled artifacts are kept in, when the disk cache
    /// is in use.
    pub fn disk_cache_dir(&self) -> Option<&Path> {
        self.inner.disk.as_ref().map(|d| d.dir())
    }

    /// The file the precompiled artifact of `hash` is (or would be) kept
    /// in, when the disk cache is in use.
    pub fn disk_cache_path(&self, hash: &ModuleHash) -> Option<PathBuf> {
        self.inner.disk.as_ref().map(|d| d.path(hash))
    }

    /// Number of compiled handlers held in memory.
    pub fn cached_handlers(&self) -> usize {
        self.inner.memory.len()
    }

    /// The handler with this hash, if it is compiled and in memory.
    pub fn cached(&self, hash: &ModuleHash) -> Option<Arc<LoadedHandler>> {
        self.inner.memory.get(hash)
    }

    /// The handler compiled from `bytes`, compiling it on first use, here
    /// and in this process.
    ///
    /// For modules the caller trusts (its own files, benchmarks): none of
    /// the compile bounds of [`CompileConfig`] apply, only the shape checks.
    /// Untrusted bytes go through [`load_async`](Self::load_async).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedHandler>, LoadError> {
        self.load_traced(bytes).map(|(handler, _)| handler)
    }

    /// Like [`load`](Self::load), also saying where the handler came from.
    pub fn load_traced(&self, bytes: &[u8]) -> Result<(Arc<LoadedHandler>, LoadSource), LoadError> {
        self.inner.loads.count(self.load_uncounted(bytes))
    }

    /// Module loads so far, by where they were answered from.
    pub fn load_counts(&self) -> LoadCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let t = &self.inner.loads;
        LoadCounts {
            memory: t.memory.load(Relaxed),
            disk: t.disk.load(Relaxed),
            compiled: t.compiled.load(Relaxed),
        }
    }

    fn load_uncounted(&self, bytes: &[u8]) -> Result<(Arc<LoadedHandler>, LoadSource), LoadError> {
        let hash = ModuleHash::of(bytes);
        if let Some(handler) = self.inner.memory.get(&hash) {
            return Ok((handler, LoadSource::Memory));
        }
        self.check_bytes(bytes)?;
        if let Some(handler) = self.load_from_disk(&hash)? {
            return Ok((handler, LoadSource::Disk));
        }
        let started = Instant::now();
        let artifact = self
            .inner
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let handler = self.load_artifact(hash, &artifact, started.elapsed())?;
        Ok((handler, LoadSource::Compiled))
    }

    /// Checks that `bytes` would load, compiling here like
    /// [`load`](Self::load) (and keeping the compiled handler).
    pub fn validate(&self, bytes: &[u8]) -> Result<ModuleHash, LoadError> {
        self.load(bytes).map(|h| h.hash.clone())
    }

    /// The handler compiled from `bytes` for `owner` (a tenant), never on
    /// the async runtime's threads and within every bound of
    /// [`CompileConfig`]: a slot of the owner's and one of the process's,
    /// and, with [`CompileIsolation::Child`], CPU time, memory and
    /// wall-clock time. Bytes already compiled (in memory or on disk) are
    /// not compiled again.
    pub async fn load_async(
        &self,
        owner: &str,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedHandler>, LoadSource), LoadError> {
        let loaded = self.load_async_uncounted(owner, bytes).await;
        self.inner.loads.count(loaded)
    }

    async fn load_async_uncounted(
        &self,
        owner: &str,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedHandler>, LoadSource), LoadError> {
        let bytes: Arc<[u8]> = bytes.into();
        // Hashing and the shape checks read every byte: milliseconds for a
        // large module.
        let hash = self
            .blocking({
                let sandbox = self.clone();
                let bytes = bytes.clone();
                move || {
                    let hash = ModuleHash::of(&bytes);
                    if sandbox.inner.memory.get(&hash).is_none() {
                        sandbox.check_bytes(&bytes)?;
                    }
                    Ok(hash)
                }
            })
            .await?;
        if let Some(handler) = self.inner.memory.get(&hash) {
            return Ok((handler, LoadSource::Memory));
        }
        let _slot = self.inner.compiles.acquire(owner).await;
        // Compiled by someone else while this call waited for its slot.
        if let Some(handler) = self.inner.memory.get(&hash) {
            return Ok((handler, LoadSource::Memory));
        }
        let from_disk = self
            .blocking({
                let sandbox = self.clone();
                let hash = hash.clone();
                move || sandbox.load_from_disk(&hash)
            })
            .await?;
        if let Some(handler) = from_disk {
            return Ok((handler, LoadSource::Disk));
        }
        let started = Instant::now();
        let artifact = match &self.inner.config.compile.isolation {
            CompileIsolation::Child { program } => {
                compiler::compile_in_child(program, &self.inner.config, bytes).await?
            }
            CompileIsolation::InProcess => {
                let engine = self.inner.engine.clone();
                self.blocking(move || {
                    engine
                        .precompile_component(&bytes)
                        .map_err(|e| LoadError::Invalid(format!("{e:#}")))
                })
                .await?
            }
        };
        let compile_time = started.elapsed();
        let sandbox = self.clone();
        let handler = self
            .blocking(move || sandbox.load_artifact(hash, &artifact, compile_time))
            .await?;
        Ok((handler, LoadSource::Compiled))
    }

    /// Checks that `bytes` would load for `owner` (keeping the compiled
    /// handler, since a module validated is usually about to run), and
    /// answers its hash.
    ///
    /// The answer takes as long as compiling the module took, whoever
    /// compiled it: a tenant uploading bytes another tenant already
    /// uploaded waits as long as if they were new, so timing says nothing
    /// about other tenants' modules, and nothing is compiled twice.
    pub async fn validate_async(
        &self,
        owner: &str,
        bytes: Vec<u8>,
    ) -> Result<ModuleHash, LoadError> {
        let started = tokio::time::Instant::now();
        let (handler, source) = self.load_async(owner, bytes).await?;
        if !handler.paid_by(owner) && source != LoadSource::Compiled {
            tokio::time::sleep_until(started + handler.compile_time).await;
        }
        Ok(handler.hash.clone())
    }

    /// Runs `work` on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
    ) -> Result<T, LoadError> {
        match tokio::task::spawn_blocking(work).await {
            Ok(done) => done,
            // Only a panic inside wasmtime gets here; the same bytes would
            // panic again.
            Err(e) => Err(LoadError::Invalid(format!("compilation failed: {e}"))),
        }
    }

    /// Size, magic and the shape checks of `inspect.rs`.
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
        inspect::check_shape(bytes)
    }

    /// The handler whose artifact the disk cache holds, if any.
    fn load_from_disk(&self, hash: &ModuleHash) -> Result<Option<Arc<LoadedHandler>>, LoadError> {
        let Some((component, compile_time)) = self
            .inner
            .disk
            .as_ref()
            .and_then(|d| d.load(&self.inner.engine, hash))
        else {
            return Ok(None);
        };
        self.keep(hash.clone(), &component, compile_time).map(Some)
    }

    /// The handler of an artifact this engine's compiler just produced
    /// (here or in a child process), kept on disk and in memory.
    fn load_artifact(
        &self,
        hash: ModuleHash,
        artifact: &[u8],
        compile_time: Duration,
    ) -> Result<Arc<LoadedHandler>, LoadError> {
        // SAFETY: `artifact` is the output of `precompile_component` by an
        // engine with this one's code-generation settings, handed over in
        // memory or through a pipe from our own child; wasmtime checks the
        // settings again while deserializing.
        let component =
            unsafe { Component::deserialize(&self.inner.engine, artifact) }.map_err(|e| {
                let message = format!("{e:#}");
                // The pool checks a component's memories and tables as it
                // loads, before `check_resources` could: the same refusal.
                if message.contains("pooling allocator") {
                    LoadError::OverEngineLimits(message)
                } else {
                    LoadError::Invalid(message)
                }
            })?;
        // Stored only once it proved loadable.
        let handler = self.keep(hash.clone(), &component, compile_time)?;
        if let Some(disk) = &self.inner.disk {
            disk.store(&hash, artifact, compile_time);
        }
        Ok(handler)
    }

    /// Prepares `component` and keeps it in the memory cache, weighed by
    /// the size of its compiled code.
    fn keep(
        &self,
        hash: ModuleHash,
        component: &Component,
        compile_time: Duration,
    ) -> Result<Arc<LoadedHandler>, LoadError> {
        let handler = self.prepare(hash.clone(), component, compile_time)?;
        let image = component.image_range();
        let weight = (image.end as usize).saturating_sub(image.start as usize) as u64;
        Ok(self.inner.memory.insert(hash, Arc::new(handler), weight))
    }

    fn prepare(
        &self,
        hash: ModuleHash,
        component: &Component,
        compile_time: Duration,
    ) -> Result<LoadedHandler, LoadError> {
        self.check_resources(component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = bindings::HandlerPre::new(instance_pre)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok(LoadedHandler {
            hash,
            pre,
            compile_time,
            paid: Mutex::default(),
        })
    }

    /// Refuses a component the pool could never instantiate, so that it
    /// fails once at registration instead of on every task.
    fn check_resources(&self, component: &Component) -> Result<(), LoadError> {
        // `None` means the component instantiates imported modules, which
        // the linker never provides: linking refuses it next.
        let Some(needs) = component.resources_required() else {
            return Ok(());
        };
        let mut over = Vec::new();
        if needs.num_memories > engine::MEMORIES_PER_COMPONENT {
            over.push(format!(
                "{} memories (at most {})",
                needs.num_memories,
                engine::MEMORIES_PER_COMPONENT
            ));
        }
        if needs.num_tables > engine::TABLES_PER_COMPONENT {
            over.push(format!(
                "{} tables (at most {})",
                needs.num_tables,
                engine::TABLES_PER_COMPONENT
            ));
        }
        let max_pages = self.inner.config.max_memory_bytes >> 16;
        if let Some(pages) = needs.max_initial_memory_size
            && pages > max_pages
        {
            over.push(format!(
                "an initial memory of {pages} pages (at most {max_pages})"
            ));
        }
        if let Some(elements) = needs.max_initial_table_size
            && elements > engine::TABLE_ELEMENTS as u64
        {
            over.push(format!(
                "an initial table of {elements} elements (at most {})",
                engine::TABLE_ELEMENTS
            ));
        }
        if over.is_empty() {
            Ok(())
        } else {
            Err(LoadError::OverEngineLimits(over.join(", ")))
        }
    }

    /// The limits a call actually runs under: the job's, with memory capped
    /// at the pool's slot size and the log budget (host memory the guest
    /// fills at will) at the sandbox's ceiling.
    fn effective(&self, limits: &Limits) -> Limits {
        let config = &self.inner.config;
        Limits {
            memory_bytes: limits.memory_bytes.min(config.max_memory_bytes),
            max_log_bytes: limits.max_log_bytes.min(config.max_log_bytes),
            ..*limits
        }
    }

    /// A fresh store for one call: deny-by-default host state, memory
    /// limiter, fuel, a bound on what one host call may copy out of the
    /// guest, and an epoch callback and call hook that fail the call past
    /// `deadline` or once `cancel` is cancelled (the epoch callback also
    /// yields every tick).
    fn new_store(
        &self,
        label: CallLabel,
        limits: &Limits,
        deadline: Instant,
        cancel: Option<&CancelSignal>,
    ) -> Store<HostState> {
        let state = HostState::new(limits.memory_bytes, limits.max_log_bytes as usize, label);
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| s);
        store.set_hostcall_fuel(hostcall_bytes(limits));
        if self.inner.config.consume_fuel {
            // Cannot fail: fuel is enabled on this engine.
            let _ = store.set_fuel(limits.fuel);
        }
        // Epochs are only checked in wasm code: a host call that does a lot
        // of work (copying a huge argument in, say) could otherwise end past
        // the deadline and let the guest return as if it had not. So the
        // deadline is checked on the way into and out of every host call
        // (and libcall) as well.
        // A cancelled call is stopped at the same places, and is reported as
        // cancelled even if its deadline has passed too: it was asked to stop.
        let hook_cancel = cancel.cloned();
        store.call_hook(move |_, hook| match hook {
            CallHook::CallingHost | CallHook::ReturningFromHost => {
                stopped(hook_cancel.as_ref(), deadline).map_or(Ok(()), Err)
            }
            _ => Ok(()),
        });
        store.set_epoch_deadline(1);
        let epoch_cancel = cancel.cloned();
        store.epoch_deadline_callback(move |_| {
            if let Some(stop) = stopped(epoch_cancel.as_ref(), deadline) {
                Err(stop)
            } else {
                // Yield to the runtime once per tick, so a computing guest
                // never holds a worker thread for long.
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Runs `handler` once on `args` in a fresh instance under `limits`.
    pub async fn call(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> Result<CallOutput, CallError> {
        self.call_counted(handler, ctx, args, limits).await.0
    }

    /// [`call`](Self::call), stopped as soon as `cancel` is cancelled: a
    /// guest that computes is stopped at its next epoch tick (every
    /// millisecond), one that waits in a host call (a sleep, a poll) at
    /// once, and a call whose signal is already cancelled never
    /// instantiates. Either way it fails with [`HandlerFailure::Cancelled`],
    /// carrying what the guest wrote and what the call cost so far.
    pub async fn call_cancellable(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
        cancel: &CancelSignal,
    ) -> Result<CallOutput, CallError> {
        self.run_call(handler, ctx, args, limits, Some(cancel))
            .await
            .0
    }

    /// [`call`](Self::call), also answering what the guest asked of WASI
    /// ([`WasiUse`]): whether it made WASI calls, and how many to the
    /// clock and random interfaces, for a caller that must know whether
    /// the result could depend on more than the args (`corral replay`).
    pub async fn call_counted(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> (Result<CallOutput, CallError>, WasiUse) {
        self.run_call(handler, ctx, args, limits, None).await
    }

    /// One call, cancellable when given a signal: the body of
    /// [`call_counted`](Self::call_counted) and
    /// [`call_cancellable`](Self::call_cancellable).
    async fn run_call(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
        cancel: Option<&CancelSignal>,
    ) -> (Result<CallOutput, CallError>, WasiUse) {
        if cancel.is_some_and(CancelSignal::is_cancelled) {
            // Nothing to stop yet: no store, no instance, nothing run.
            let error = CallError {
                failure: HandlerFailure::Cancelled,
                guest_log: String::new(),
                metering: CallMetering::default(),
            };
            return (Err(error), WasiUse::default());
        }
        if !Engine::same(handler.pre.engine(), &self.inner.engine) {
            // wasmtime would panic: an instance cannot live in a store of
            // another engine.
            let error = CallError {
                failure: HandlerFailure::Instantiate {
                    message: "handler was loaded by another sandbox".into(),
                },
                guest_log: String::new(),
                metering: CallMetering::default(),
            };
            return (Err(error), WasiUse::default());
        }
        let _active = self.inner.active.enter();
        let limits = self.effective(limits);
        let span = tracing::debug_span!("handler", task = %Inert(&ctx.task_id), job = %Inert(&ctx.job), index = ctx.handler_index);
        let started = Instant::now();
        let deadline = deadline_after(started, &limits);
        let mut store = self.new_store(label(&ctx), &limits, deadline, cancel);
        let log = store.data().log();
        let wit_ctx = wit_context(ctx);
        let wit_args = encode_args(args);

        let mut in_use = None;
        let mut instantiated = None;
        let run = async {
            let instance = handler
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (e, true))?;
            instantiated = Some(started.elapsed());
            in_use = Some(self.inner.instances.enter());
            instance
                .call_handle(&mut store, &wit_ctx, &wit_args)
                .await
                .map_err(|e| (e, false))
        };
        // The epoch callback stops a guest that computes; this timeout stops
        // one that waits in a host call (a sleep, a poll).
        let timed = tokio::time::timeout_at(deadline.into(), run.instrument(span));
        // And the signal stops either at once: dropping the call's future
        // drops the guest wherever it is (it yields every epoch tick). Looked
        // at first, so a call cancelled before it is first polled never
        // instantiates.
        let outcome = tokio::select! {
            biased;
            () = cancelled(cancel) => Err((wasmtime::Error::new(Cancelled), false)),
            timed = timed => match timed {
                Ok(outcome) => past_deadline(outcome, deadline),
                Err(_) => Err((wasmtime::Error::new(DeadlineExceeded), false)),
            },
        };
        let metering = meter(&store, &limits, started, instantiated);
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(
                fuel = metering.fuel,
                peak_memory = metering.peak_memory_bytes,
                elapsed_us = metering.wall_us,
                instantiate_us = metering.instantiate_us,
                wasi = store.data().wasi_used(),
                "handler call done"
            );
        }
        let wasi = store.data().wasi_use();
        drop(store);
        drop(in_use);
        (finish(outcome, take_log(&log), &limits, metering), wasi)
    }

    /// The call path of [`call`](Self::call), step by step, with the time
    /// each step took; for `corral bench sandbox`, not part of the API.
    #[doc(hidden)]
    pub async fn call_phases(
        &self,
        handler: &LoadedHandler,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> (Result<CallOutput, CallError>, CallPhases) {
        let t0 = Instant::now();
        let _active = self.inner.active.enter();
        let limits = self.effective(limits);
        let deadline = deadline_after(t0, &limits);
        let mut store = self.new_store(label(&ctx), &limits, deadline, None);
        let log = store.data().log();
        let wit_ctx = wit_context(ctx);
        let wit_args = encode_args(args);
        let t1 = Instant::now();
        let instance = handler.pre.instantiate_async(&mut store).await;
        let t2 = Instant::now();
        let outcome = match instance {
            Ok(instance) => instance
                .call_handle(&mut store, &wit_ctx, &wit_args)
                .await
                .map_err(|e| (e, false)),
            Err(e) => Err((e, true)),
        };
        let outcome = past_deadline(outcome, deadline);
        let metering = meter(&store, &limits, t0, Some(t2 - t0));
        let t3 = Instant::now();
        drop(store);
        let t4 = Instant::now();
        let result = finish(outcome, take_log(&log), &limits, metering);
        let t5 = Instant::now();
        let phases = CallPhases {
            setup: t1 - t0,
            instantiate: t2 - t1,
            call: t3 - t2,
            drop: t4 - t3,
            finish: t5 - t4,
        };
        (result, phases)
    }

    /// The host side of [`call`](Self::call) around a native function
    /// instead of a guest: the same argument encoding, output checks and
    /// decoding, no store and no instance. The baseline `corral bench
    /// sandbox` compares the sandbox's cost against.
    pub(crate) fn call_native(
        &self,
        native: impl FnOnce(&wit::Context, Vec<wit::Arg>) -> Result<wit::Output, wit::Error>,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> Result<CallOutput, CallError> {
        let limits = self.effective(limits);
        let wit_ctx = wit_context(ctx);
        let wit_args = encode_args(args);
        let outcome = Ok(native(&wit_ctx, wit_args));
        finish(
            outcome,
            FinishedLog::default(),
            &limits,
            CallMetering::default(),
        )
    }

    /// What metering adds to one call, timed over `calls` calls: reading
    /// the clock, the store's fuel and its limiter's memory ([`meter`]) and
    /// adding the result to a task's metering, on a real store. For `corral
    /// bench sandbox`, not part of the API; returns the time per call.
    #[doc(hidden)]
    pub fn metering_cost(&self, limits: &Limits, calls: u32) -> Duration {
        let limits = self.effective(limits);
        let started = Instant::now();
        let store = self.new_store(
            label(&CallContext {
                task_id: "bench".into(),
                job: "bench".into(),
                tenant: "bench".into(),
                attempt: 1,
                handler_index: 0,
                handler_count: 1,
            }),
            &limits,
            deadline_after(started, &limits),
            None,
        );
        let mut task = corral_core::metering::TaskMetering::default();
        let timed = Instant::now();
        for i in 0..calls {
            let call_started = Instant::now();
            let instantiated = Some(call_started.elapsed());
            let cost = meter(&store, &limits, call_started, instantiated);
            task.record(i % 4, 1, std::hint::black_box(cost));
        }
        std::hint::black_box(&task);
        timed.elapsed() / calls.max(1)
    }

    /// [`call_native`](Self::call_native) around [`native_noop`]: the
    /// baseline of `corral bench sandbox`, not part of the API.
    #[doc(hidden)]
    pub fn call_native_noop(
        &self,
        ctx: CallContext,
        args: &ArgsMap,
        limits: &Limits,
    ) -> Result<CallOutput, CallError> {
        self.call_native(native_noop, ctx, args, limits)
    }
}

/// When a call started at `started` must end. A timeout too large to
/// represent (a library caller passing `u64::MAX` ms) means a year.
fn deadline_after(started: Instant, limits: &Limits) -> Instant {
    started
        .checked_add(limits.timeout())
        .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600))
}

/// Least bytes one host call may copy out of the guest; see
/// [`hostcall_bytes`].
const HOSTCALL_BYTES_MIN: usize = 16 << 20;

/// Most bytes one host call may copy out of the guest: wasmtime's own
/// default, which no job may raise.
const HOSTCALL_BYTES_MAX: usize = 128 << 20;

/// What one crossing from the guest to the host may carry (wasmtime's
/// "hostcall fuel": about a byte of host memory per unit, counting each
/// list element at its host size), which bounds the work and the memory of
/// every host call, whatever it is (a log message, a stdout write, a poll
/// list), and of lifting the handler's result. Past it the call traps
/// ("too much data is being copied"). At least [`HOSTCALL_BYTES_MIN`], and
/// four times the output limit so that a legitimate result fits even as
/// many small args; at most [`HOSTCALL_BYTES_MAX`].
fn hostcall_bytes(limits: &Limits) -> usize {
    let output = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    output
        .saturating_mul(4)
        .clamp(HOSTCALL_BYTES_MIN, HOSTCALL_BYTES_MAX)
}

/// A call that returned after its deadline failed by it, whatever it
/// returned: the last host call may have overrun it with no wasm left to
/// notice.
fn past_deadline(outcome: Outcome, deadline: Instant) -> Outcome {
    match outcome {
        Ok(_) if Instant::now() >= deadline => Err((wasmtime::Error::new(DeadlineExceeded), false)),
        other => other,
    }
}

/// Time spent in each step of one call; see [`Sandbox::call_phases`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CallPhases {
    /// Store, host state, limits, argument encoding.
    pub setup: Duration,
    /// `instantiate_async`.
    pub instantiate: Duration,
    /// `handle`, including copying arguments in and results out.
    pub call: Duration,
    /// Dropping the store: the instance's slot goes back to the pool.
    pub drop: Duration,
    /// Output checks and decoding the args' JSON.
    pub finish: Duration,
}

/// The native function [`Sandbox::call_native`] is usually given: returns
/// its args unchanged, as the `noop` job does.
pub(crate) fn native_noop(
    _ctx: &wit::Context,
    args: Vec<wit::Arg>,
) -> Result<wit::Output, wit::Error> {
    Ok(wit::Output {
        args,
        log: String::new(),
    })
}

fn label(ctx: &CallContext) -> CallLabel {
    CallLabel {
        task_id: ctx.task_id.clone(),
        job: ctx.job.clone(),
        index: ctx.handler_index,
    }
}

fn wit_context(ctx: CallContext) -> wit::Context {
    wit::Context {
        task_id: ctx.task_id,
        job: ctx.job,
        tenant: ctx.tenant,
        attempt: ctx.attempt,
        handler_index: ctx.handler_index,
        handler_count: ctx.handler_count,
    }
}

/// The args map as the guest receives it: each value as JSON text.
fn encode_args(args: &ArgsMap) -> Vec<wit::Arg> {
    args.iter()
        .map(|(name, value)| wit::Arg {
            name: name.clone(),
            value: value.to_string(),
        })
        .collect()
}

/// Takes the call's log; the store (and with it every other handle on the
/// log) is gone by now, but a lock is as cheap as proving that.
fn take_log(log: &SharedLog) -> FinishedLog {
    std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner())).finish()
}

type Outcome = Result<Result<wit::Output, wit::Error>, (wasmtime::Error, bool)>;

/// Turns what the guest did into the call's result: its error, a
/// classified trap, or its output once checked and decoded.
/// What a finished call cost: fuel from the store's meter, memory from its
/// limiter, and the time since `started` (`instantiated`: how long after
/// `started` the instance was ready, if it ever was).
fn meter(
    store: &Store<HostState>,
    limits: &Limits,
    started: Instant,
    instantiated: Option<Duration>,
) -> CallMetering {
    // No fuel meter (fuel disabled): nothing consumed.
    let fuel_left = store.get_fuel().unwrap_or(limits.fuel);
    CallMetering {
        fuel: limits.fuel.saturating_sub(fuel_left),
        peak_memory_bytes: store.data().peak_memory(),
        wall_us: micros(started.elapsed()),
        instantiate_us: instantiated.map(micros).unwrap_or(0),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn finish(
    outcome: Outcome,
    log: FinishedLog,
    limits: &Limits,
    metering: CallMetering,
) -> Result<CallOutput, CallError> {
    let output = match outcome {
        Ok(Ok(output)) => output,
        Ok(Err(guest)) => {
            return Err(CallError {
                failure: HandlerFailure::Guest {
                    retryable: guest.kind == wit::ErrorKind::Retryable,
                    message: guest_text(&guest.message, limits),
                },
                guest_log: log.text,
                metering,
            });
        }
        Err((e, instantiating)) => {
            return Err(CallError {
                failure: classify(e, instantiating, limits, &log),
                guest_log: log.text,
                metering,
            });
        }
    };
    let fail = |failure| CallError {
        failure,
        guest_log: log.text.clone(),
        metering,
    };
    // Checked before any decoding: the host has already copied the output
    // out of the guest (bounded by the guest's memory limit) but spends
    // nothing more on an oversized one.
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
            // Past this depth the args could not be stored and read back
            // (see `MAX_ARG_DEPTH`).
            Ok(value) if nested_deeper_than(&value, MAX_ARG_DEPTH) => {
                return Err(fail(HandlerFailure::BadOutput {
                    name: inert_capped(&arg.name, MAX_NAME_IN_MESSAGE),
                    reason: format!(
                        "nested deeper than {MAX_ARG_DEPTH} levels of arrays and objects"
                    ),
                }));
            }
            Ok(value) => {
                next.insert(arg.name, value);
            }
            Err(e) => {
                return Err(fail(HandlerFailure::BadOutput {
                    name: inert_capped(&arg.name, MAX_NAME_IN_MESSAGE),
                    reason: guest_text(&format!("not valid JSON: {e}"), limits),
                }));
            }
        }
    }
    Ok(CallOutput {
        args: next,
        result_log: output.log,
        guest_log: log.text,
        metering,
    })
}

/// Text the guest controls, as a failure carries it: inert, and capped at
/// the call's output limit and at [`MAX_FAILURE_TEXT_BYTES`] (an error is
/// output too, and is stored with the task).
fn guest_text(text: &str, limits: &Limits) -> String {
    let max = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    inert_capped(text, max.min(MAX_FAILURE_TEXT_BYTES))
}

/// Raised by the epoch callback, the call hook or the async timeout past the
/// deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

/// Raised by the epoch callback, the call hook or the wait on the signal
/// once a call's [`CancelSignal`] is cancelled.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled")]
struct Cancelled;

/// Why a running call must stop now, if it must: cancelled (first: it was
/// asked to), or past its deadline.
fn stopped(cancel: Option<&CancelSignal>, deadline: Instant) -> Option<wasmtime::Error> {
    if cancel.is_some_and(CancelSignal::is_cancelled) {
        Some(wasmtime::Error::new(Cancelled))
    } else if Instant::now() >= deadline {
        Some(wasmtime::Error::new(DeadlineExceeded))
    } else {
        None
    }
}

/// Returns once `cancel` is cancelled; never without a signal.
async fn cancelled(cancel: Option<&CancelSignal>) {
    match cancel {
        Some(signal) => signal.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Turns a wasmtime error into the failure it stands for.
fn classify(
    e: wasmtime::Error,
    instantiating: bool,
    limits: &Limits,
    log: &FinishedLog,
) -> HandlerFailure {
    if e.downcast_ref::<Cancelled>().is_some() {
        return HandlerFailure::Cancelled;
    }
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
            if *trap == Trap::UnreachableCodeReached
                && let Some(message) = panic_message(&log.stderr_tail)
            {
                return HandlerFailure::Panic {
                    message: guest_text(&message, limits),
                };
            }
            let mut message = trap.to_string();
            let tail = log.stderr_tail.trim_end();
            if !tail.is_empty() {
                let mut start = tail.len().saturating_sub(512);
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                message.push_str("; stderr ends with: ");
                message.push_str(&tail[start..]);
            }
            HandlerFailure::Trap {
                message: guest_text(&message, limits),
            }
        }
        // An error raised by a host function on the guest's behalf (its
        // text may quote what the guest passed).
        None if instantiating => HandlerFailure::Instantiate {
            message: guest_text(&format!("{e:#}"), limits),
        },
        None => HandlerFailure::Trap {
            message: guest_text(&format!("{e:#}"), limits),
        },
    }
}

/// The message of the last Rust panic written to `stderr`: Rust prints
/// `thread '<name>' panicked at <file>:<line>:<col>:` and the message on
/// the lines after it, then (with panic=abort) the guest hits `unreachable`.
/// Returns `message (at file:line:col)`.
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let rest = &stderr[at + "panicked at ".len()..];
    let (location, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let location = location.trim_end().trim_end_matches(':');
    let message: Vec<&str> = body
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .collect();
    let message = message.join("\n");
    let message = message.trim();
    Some(if message.is_empty() {
        format!("(no message) (at {location})")
    } else {
        format!("{message} (at {location})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_message_is_found_in_stderr() {
        let stderr = "starting\n\nthread '<unnamed>' panicked at src/lib.rs:12:5:\nhostile panic\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("hostile panic (at src/lib.rs:12:5)")
        );
        assert_eq!(panic_message("no panic here\n"), None);
    }
}
