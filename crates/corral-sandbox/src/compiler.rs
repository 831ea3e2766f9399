//! Compiling tenants' uploads under bounds of CPU time, memory, wall-clock
//! time and concurrency.
//!
//! Cranelift's cost grows faster than linearly on some shapes of code, and
//! nothing about a module's size says how long it will take. So a compile
//! runs in a child process (`corral __compile`, see [`run_compile_child`])
//! under `RLIMIT_CPU` (SIGXCPU, then SIGKILL), `RLIMIT_DATA` (allocation
//! fails and the child aborts), no core files and no file writes, and is
//! killed at a wall-clock limit; it reads the module on stdin and writes
//! wasmtime's precompiled artifact on stdout, which the parent deserializes
//! with its own engine (wasmtime checks that the artifact was compiled with
//! compatible settings). A limit reached is a [`LoadError::CompileLimit`].
//! Compiles also take a slot of a process-wide count and one of their
//! owner's, so one tenant's uploads cannot occupy every compile.
//!
//! An embedding application that only runs its own modules may compile in
//! process ([`CompileIsolation::InProcess`], the library's default): then
//! only the concurrency bounds hold, on tokio's blocking pool.
//!
//! This module never decides whether a module is wanted; it only turns
//! bytes into an artifact or a refusal, and never runs guest code.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{LoadError, SandboxConfig};

/// The hidden subcommand of `corral` that compiles one module.
pub const COMPILE_SUBCOMMAND: &str = "__compile";

/// How a child ends when the module is not a valid component (the message
/// is on stderr).
const EXIT_INVALID: u8 = 3;

/// Most bytes of a child's stderr kept for an error message.
const STDERR_KEPT: u64 = 16 << 10;

/// Most bytes of compiled code one module may become: the parent holds the
/// artifact in memory while loading it. Real modules compile to a few times
/// their size (a 64 MiB module would be far past any real one).
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Where compiles run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileIsolation {
    /// On tokio's blocking pool in this process: only the concurrency
    /// bounds hold. For modules the application trusts.
    InProcess,
    /// In a child process running `program __compile` (the `corral` binary,
    /// or any program whose `main` hands that subcommand to
    /// [`run_compile_child`]), under every bound of [`CompileConfig`].
    Child {
        /// The program to run.
        program: PathBuf,
    },
}

/// The bounds on compiling one module, and on compiles at once.
#[derive(Debug, Clone)]
pub struct CompileConfig {
    /// Where compiles run.
    pub isolation: CompileIsolation,
    /// CPU time one compile may use, over all its threads.
    pub cpu_time: Duration,
    /// Memory one compile may allocate (the child's data segment and
    /// private mappings).
    pub memory_bytes: u64,
    /// Wall-clock time one compile may take, once it has its slots.
    pub wall_time: Duration,
    /// Compiles at once in this process.
    pub max_concurrent: usize,
    /// Compiles at once for one owner (tenant); more wait for their turn.
    pub max_per_owner: usize,
}

impl Default for CompileConfig {
    fn default() -> Self {
        Self {
            isolation: CompileIsolation::InProcess,
            cpu_time: Duration::from_secs(120),
            memory_bytes: 4 << 30,
            wall_time: Duration::from_secs(300),
            max_concurrent: 2,
            max_per_owner: 1,
        }
    }
}

/// The compile slots of one process: a total and one count per owner.
pub(crate) struct CompileSlots {
    total: Arc<Semaphore>,
    per_owner: Mutex<HashMap<String, Arc<Semaphore>>>,
    max_per_owner: usize,
}

/// Both slots of one compile; released on drop.
pub(crate) struct CompileSlot<'a> {
    slots: &'a CompileSlots,
    own: Option<OwnedSemaphorePermit>,
    _total: Option<OwnedSemaphorePermit>,
}

impl CompileSlots {
    pub(crate) fn new(config: &CompileConfig) -> Self {
        Self {
            total: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            per_owner: Mutex::new(HashMap::new()),
            max_per_owner: config.max_per_owner.max(1),
        }
    }

    /// Waits for a slot of `owner`'s, then for one of the total: an owner
    /// with many compiles waiting holds at most its own share of the total.
    pub(crate) async fn acquire(&self, owner: &str) -> CompileSlot<'_> {
        let own = {
            let mut map = self.per_owner.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(owner.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_owner)))
                .clone()
        };
        // Neither semaphore is ever closed, so both permits are `Some`.
        let own = own.acquire_owned().await.ok();
        let total = self.total.clone().acquire_owned().await.ok();
        CompileSlot {
            slots: self,
            own,
            _total: total,
        }
    }
}

impl Drop for CompileSlot<'_> {
    /// Forgets every owner's semaphore nobody holds or awaits (this one's,
    /// and any left by a wait that was cancelled), so the map grows with
    /// compiles in flight, not with every tenant ever seen.
    fn drop(&mut self) {
        drop(self.own.take());
        self.slots
            .per_owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, sem| Arc::strong_count(sem) > 1);
    }
}

/// The engine settings a child needs to compile exactly as the parent
/// would (the allocation strategy does not change generated code).
fn child_args(config: &SandboxConfig) -> [String; 3] {
    [
        COMPILE_SUBCOMMAND.to_owned(),
        u8::from(config.consume_fuel).to_string(),
        config.max_wasm_stack.to_string(),
    ]
}

/// Compiles `bytes` in a child process of `program` under `config`'s
/// bounds; answers wasmtime's precompiled artifact.
pub(crate) async fn compile_in_child(
    program: &std::path::Path,
    sandbox: &SandboxConfig,
    bytes: Arc<[u8]>,
) -> Result<Vec<u8>, LoadError> {
    let limits = &sandbox.compile;
    let cpu_secs = limits.cpu_time.as_secs().max(1);
    let memory = limits.memory_bytes;
    let mut command = tokio::process::Command::new(program);
    command
        .args(child_args(sandbox))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls `setrlimit`, which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            set_limit(libc::RLIMIT_CPU, cpu_secs, cpu_secs + 1)?;
            set_limit(libc::RLIMIT_DATA, memory, memory)?;
            set_limit(libc::RLIMIT_CORE, 0, 0)?;
            set_limit(libc::RLIMIT_FSIZE, 0, 0)
        });
    }
    let mut child = command.spawn().map_err(|e| {
        LoadError::CompilerUnavailable(format!("starting {}: {e}", program.display()))
    })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(LoadError::CompilerUnavailable(
            "the compiler's pipes were not opened".into(),
        ));
    };
    let feed = async move {
        // A child that dies early closes its stdin: its exit says why.
        let _ = stdin.write_all(&bytes).await;
    };
    let cap = MAX_ARTIFACT_BYTES.min(memory);
    let mut artifact = Vec::new();
    let mut oversized = false;
    // Past the cap the rest is read and dropped, so the child is never
    // left blocked on a full pipe and ends on its own.
    let read_out = async {
        let mut stdout = stdout;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = stdout.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if artifact.len() + n > cap as usize {
                oversized = true;
                artifact = Vec::new();
            }
            if !oversized {
                artifact.extend_from_slice(&chunk[..n]);
            }
        }
    };
    let mut message = Vec::new();
    let mut stderr = stderr.take(STDERR_KEPT);
    let read_err = stderr.read_to_end(&mut message);
    let run = async {
        let ((), out, _, status) = tokio::join!(feed, read_out, read_err, child.wait());
        out.and(status)
    };
    let status = match tokio::time::timeout(limits.wall_time, run).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(LoadError::CompilerUnavailable(format!("compiler: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            return Err(LoadError::CompileLimit(format!(
                "compiling took longer than {} s of wall-clock time",
                limits.wall_time.as_secs_f64()
            )));
        }
    };
    let message = String::from_utf8_lossy(&message);
    let message = message.trim();
    if oversized {
        return Err(LoadError::CompileLimit(format!(
            "the compiled code is over {} MiB",
            cap >> 20
        )));
    }
    if status.success() {
        return Ok(artifact);
    }
    if status.code() == Some(i32::from(EXIT_INVALID)) {
        // wasmtime's reason quotes names from the module: the tenant's text.
        return Err(LoadError::Invalid(corral_core::text::inert_capped(
            message,
            super::MAX_FAILURE_TEXT_BYTES,
        )));
    }
    use std::os::unix::process::ExitStatusExt as _;
    let signal = status.signal();
    if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && message.is_empty()) {
        return Err(LoadError::CompileLimit(format!(
            "compiling used more than {cpu_secs} s of CPU time"
        )));
    }
    if message.contains("memory allocation of") || message.contains("out of memory") {
        return Err(LoadError::CompileLimit(format!(
            "compiling needed more than {} MiB of memory",
            memory >> 20
        )));
    }
    Err(LoadError::CompileLimit(format!(
        "the compiler ended with {status}: {}",
        corral_core::text::inert_capped(message, 1024)
    )))
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The body of `corral __compile CONSUME_FUEL MAX_WASM_STACK`: reads a
/// module on stdin and writes its precompiled artifact on stdout, with an
/// engine built as the parent's. Exits 0 on success, 3 with the reason on
/// stderr for a module wasmtime refuses, 2 for bad arguments; a limit
/// reached ends it by signal or abort. `args` are the arguments after the
/// subcommand.
pub fn run_compile_child(args: &[String]) -> ExitCode {
    let [fuel, stack] = args else {
        eprintln!("usage: corral {COMPILE_SUBCOMMAND} CONSUME_FUEL MAX_WASM_STACK");
        return ExitCode::from(2);
    };
    let (Ok(fuel), Ok(max_wasm_stack)) = (fuel.parse::<u8>(), stack.parse::<usize>()) else {
        eprintln!("{COMPILE_SUBCOMMAND}: bad arguments");
        return ExitCode::from(2);
    };
    let config = SandboxConfig {
        // No instances are made here: no pool to reserve.
        pooling: false,
        consume_fuel: fuel != 0,
        max_wasm_stack,
        ..SandboxConfig::default()
    };
    let engine = match super::engine::build(&config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{COMPILE_SUBCOMMAND}: building the engine: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("{COMPILE_SUBCOMMAND}: reading the module: {e}");
        return ExitCode::from(2);
    }
    match engine.precompile_component(&bytes) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&artifact).and_then(|()| out.flush()).is_err() {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
