//! The process's one wasmtime [`Engine`]: its settings and its epoch ticker.
//!
//! Owns the choice of every engine and pooling-allocator setting (each one is
//! commented with why), the limits a component must fit to be instantiated
//! in the pool at all, and the thread that advances the engine's epoch. It
//! never compiles or runs a guest itself, and never changes a setting after
//! the engine is built: compiled artifacts are only valid for the settings
//! they were compiled with (see the disk cache's fingerprint).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::SandboxConfig;

/// How often the ticker advances the epoch while calls are running: the
/// granularity of deadlines and of the yields that keep a computing guest
/// from holding a runtime thread (each tick, a running guest yields to the
/// async runtime so other tasks on the same thread get their turn).
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How often the ticker looks for running calls while there are none. Idle
/// workers should not wake a thousand times a second; a call that starts
/// while the ticker sleeps waits at most this long for its first tick, which
/// only delays its first yield and deadline check by that much.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Linear memories one component may contain: its program's, plus one for
/// the WASI preview 1 adapter when it was built for wasip1 and wrapped.
/// Each pool slot reserves address space for one memory, so this and
/// `max_instances` size the memory pool.
pub(crate) const MEMORIES_PER_COMPONENT: u32 = 2;

/// Tables one component may contain (Rust components have two: the program's
/// function table and wit-component's shim table).
pub(crate) const TABLES_PER_COMPONENT: u32 = 8;

/// Core instances one component may create (Rust components have three:
/// program, shim, fixups; Python or JavaScript components about a dozen).
pub(crate) const CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Elements one table may hold (function tables of large guests, such as a
/// Python interpreter, run to tens of thousands of entries).
pub(crate) const TABLE_ELEMENTS: usize = 100_000;

/// Bytes of each linear memory reset in place (rather than handed back to
/// the kernel with `madvise`) when its slot is released, where the kernel
/// has `PAGEMAP_SCAN` (Linux 6.7+): then only the pages the guest actually
/// dirtied are reset. A small handler dirties a few dozen KiB (the top of
/// its shadow stack, its heap, its data), so the whole reset stays in user
/// space and the next instance in the slot takes no page faults: this halves
/// the per-task cost of `noop.wasm` against `madvise` (measured with
/// `corral bench sandbox`). The price is resident memory: up to this much per
/// warm slot (`max_unused_warm_slots` of them, plus the busy ones).
const MEMORY_KEEP_RESIDENT_PAGEMAP: usize = 1 << 20;

/// Without `PAGEMAP_SCAN`, wasmtime resets the *first* bytes of a memory in
/// place, dirty or not, and the rest with one `madvise`. A memory this small
/// (a hand-written or C guest) is reset entirely in user space; a Rust
/// guest's first MiB is the bottom of its shadow stack, which it rarely
/// touches, so a larger value would only memset clean pages.
const MEMORY_KEEP_RESIDENT_PLAIN: usize = 64 << 10;

/// The same for tables, which are small; with `PAGEMAP_SCAN` only dirty
/// pages are reset, without it the first 16 KiB are (a Rust guest's function
/// table sits at the start and is rewritten by every instantiation).
const TABLE_KEEP_RESIDENT_PAGEMAP: usize = 64 << 10;
const TABLE_KEEP_RESIDENT_PLAIN: usize = 16 << 10;

/// Builds the engine for `config`.
pub(crate) fn build(config: &SandboxConfig) -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        // Fuel: a deterministic instruction budget per call, the only limit
        // that stops an infinite loop the same way on every machine.
        .consume_fuel(config.consume_fuel)
        // Epochs: a cheap check at loop headers and function entries against
        // a counter the ticker bumps; drives deadlines and yields.
        .epoch_interruption(true)
        // Small enough that deep recursion traps as a stack overflow well
        // before a Rust guest's 1 MiB shadow stack (in linear memory) runs
        // out, which would trap as an out-of-bounds access instead; large
        // enough for ordinary recursive code.
        .max_wasm_stack(config.max_wasm_stack)
        // Each async call runs on its own stack (a fiber from the pool): it
        // must hold the wasm stack above plus the host functions it calls.
        // Untouched stack pages cost address space only.
        .async_stack_size((config.max_wasm_stack + (1 << 20)).max(2 << 20))
        // Copy-on-write memory images: a fresh instance maps its data
        // segments instead of copying them.
        .memory_init_cow(true)
        // A core module with several memories cannot fit the pool (one
        // memory per slot per module); refusing them at validation makes
        // that a load error at registration, not a failure of every task.
        .wasm_multi_memory(false);
    if config.pooling {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(config)));
    }
    Ok(Engine::new(&wasm)?)
}

/// The pooling allocator's settings. Everything an instance needs (memory,
/// tables, metadata, its async stack) is preallocated in slots, so
/// instantiation takes a slot instead of calling `mmap`, and releasing one
/// resets it instead of calling `munmap`. Each total is sized for
/// `max_instances` of the largest component the per-component limits admit,
/// so no tenant's component can exhaust a pool another tenant needs beyond
/// the instances it holds.
fn pool(config: &SandboxConfig) -> PoolingAllocationConfig {
    let instances = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool
        // Component instances at once: one per running handler call.
        .total_component_instances(instances)
        // Per-component caps, checked again at load time (see
        // `Sandbox::check_resources`) so an oversized component is refused
        // at registration rather than failing at every instantiation.
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        // Core instance metadata is allocated on demand up to the default
        // size cap (1 MiB each); the count only bounds it.
        .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
        // Multi-memory is off, so one memory per core module; tables may be
        // several (reference types), so leave room.
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        // Every memory slot reserves `Config::memory_reservation` of address
        // space (4 GiB plus guards on 64-bit, so bounds checks are free);
        // 512 slots are ~3 TiB of the 128 TiB a process may map, none of it
        // resident until touched.
        .total_memories(instances * MEMORIES_PER_COMPONENT)
        .total_tables(instances * TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        // One async stack per running call.
        .total_stacks(instances)
        // The slot size caps any job's memory limit (jobs are clamped to it).
        .max_memory_size(config.max_memory_bytes as usize);
    // How a released slot is reset: see the constants' docs.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_PAGEMAP)
            .table_keep_resident(TABLE_KEEP_RESIDENT_PAGEMAP);
    } else {
        pool.pagemap_scan(Enabled::No)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_PLAIN)
            .table_keep_resident(TABLE_KEEP_RESIDENT_PLAIN);
    }
    // A slot remembers the module it last held ("affinity"): the next
    // instance of that module reuses it with its copy-on-write image still
    // mapped. Up to this many warm slots wait for their module before being
    // handed to another one.
    pool.max_unused_warm_slots(instances.min(100));
    pool
}

/// Counts handler calls in flight, so the ticker can idle when there are
/// none.
#[derive(Debug, Default)]
pub(crate) struct ActiveCalls(AtomicUsize);

impl ActiveCalls {
    /// Marks a call as running until the guard drops (also when the call's
    /// future is dropped halfway).
    pub(crate) fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// A count of things in use, each held by a guard that borrows it (no
/// reference count to bump on the call path, unlike [`ActiveCalls`], which
/// the ticker thread shares).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicUsize);

impl Counter {
    /// Counts one until the guard drops.
    pub(crate) fn enter(&self) -> CounterGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        CounterGuard(&self.0)
    }

    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counted; see [`Counter::enter`].
pub(crate) struct CounterGuard<'a>(&'a AtomicUsize);

impl Drop for CounterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running call; see [`ActiveCalls::enter`].
pub(crate) struct ActiveGuard(Arc<ActiveCalls>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the thread that advances `engine`'s epoch every [`EPOCH_TICK`]
/// while `active` counts running calls, and every [`IDLE_POLL`] otherwise.
/// It holds only a weak handle, so it ends once the engine is dropped.
pub(crate) fn start_ticker(engine: &Engine, active: Arc<ActiveCalls>) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("corral-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(if active.any() { EPOCH_TICK } else { IDLE_POLL });
            }
        });
    if let Err(e) = spawned {
        // Without a ticker, deadlines fall back to the async timeout alone
        // and computing guests do not yield: worth shouting about, not worth
        // refusing to run.
        tracing::error!(error = %e, "could not start the epoch ticker thread");
    }
}
