//! What a guest can reach: the per-call store data, the `host` interface, and
//! the deny-by-default WASI context.
//!
//! Each handler call gets a fresh [`HostState`]: a WASI context with no
//! preopened directories, no sockets, no name lookup, no environment and no
//! arguments (clocks and random only; stdin is closed), stdout, stderr and
//! `host.log` captured into a [`CallLog`] capped at the job's log budget
//! (lines made inert, work per write bounded by the budget, and only what
//! the log kept passed on to tracing), a resource
//! limiter that turns growth past the memory limit into a typed trap, and a
//! cap on host-side resources (streams, pollables) a guest may hold open.
//! Nothing here outlives the call, and nothing here may grant a guest more
//! than that: no file, socket or environment access is ever added per job.
//!
//! The WASI context is built on the guest's first WASI call rather than with
//! the store: building one seeds two random number generators and boxes a
//! dozen trait objects, a measurable share of a task's cost, and handlers
//! that never touch WASI (the common case for pure data transforms) never pay
//! it. What the guest can reach is identical either way.
//!
//! The clock and random interfaces are linked through counting wrappers
//! ([`add_counted_clocks_and_random`]) that pass every call on to
//! wasmtime-wasi unchanged and count it in [`WasiUse`]: those are the only
//! imports whose answers differ from one run of the same call to the next,
//! so the counts say whether a call's result could (not whether it did)
//! depend on more than its inputs.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::clocks::{WasiClocksCtx, WasiClocksCtxView};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::random::WasiRandomCtx;

use super::bindings::corral::job::host::{self, Level};
use corral_core::text::Inert;

/// Host resources (streams, pollables, ...) one call may hold at once.
///
/// wasmtime's default is a million entries, enough for a guest to make the
/// host allocate hundreds of MiB it cannot account for; a handler needs a
/// handful. The component model separately caps the guest's own handles at
/// 100,000 per store.
const MAX_HOST_RESOURCES: usize = 10_000;

/// Largest single `get-random-bytes` request, in bytes. The host allocates
/// the whole buffer before copying it into the guest, so this bounds a host
/// allocation the guest controls (wasmtime's default is 64 MiB).
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// How much of the end of stderr is kept, whatever the log budget, to find a
/// panic message after the guest trapped.
const STDERR_TAIL_BYTES: usize = 2 << 10;

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The `host.log` import, at a level.
    Log(Level),
}

impl LogSource {
    fn label(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Log(Level::Trace) => "trace",
            LogSource::Log(Level::Debug) => "debug",
            LogSource::Log(Level::Info) => "info",
            LogSource::Log(Level::Warn) => "warn",
            LogSource::Log(Level::Error) => "error",
        }
    }
}

/// Everything a guest wrote during one call, up to a byte budget.
///
/// The log keeps a prefix of what the guest wrote, in whole lines, each made
/// inert (see [`corral_core::text`]) and labelled with its source: once a line does
/// not fit, the log is full and everything after it is only counted. So the
/// work one write or `log` call costs is bounded by the budget left, not by
/// the size or line count of what the guest passed (the copy out of guest
/// memory, bounded by the guest's memory limit, is wasmtime's).
#[derive(Debug, Default)]
pub struct CallLog {
    text: String,
    budget: usize,
    dropped: u64,
    /// A line did not fit: nothing more is kept.
    full: bool,
    /// Partial lines of stdout and stderr, flushed as whole lines; never
    /// longer than a line that could still fit.
    pending: [Vec<u8>; 2],
    /// The last bytes written to stderr, kept past the budget.
    stderr_tail: Vec<u8>,
}

/// What a call's log came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FinishedLog {
    /// The labelled lines, and a last line noting a truncation if any.
    pub text: String,
    /// The end of stderr, kept whatever the budget (at most 2 KiB), raw.
    pub stderr_tail: String,
}

impl CallLog {
    /// An empty log keeping at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Bytes of (unescaped) line a line of `source` could still take.
    fn room(&self, source: LogSource) -> usize {
        if self.full {
            return 0;
        }
        self.budget
            .saturating_sub(self.text.len() + source.label().len() + 4)
    }

    /// Marks the log full, counting `bytes` more as dropped.
    fn overflow(&mut self, bytes: usize) {
        self.full = true;
        self.dropped += bytes as u64;
    }

    /// Appends `[label] line`, the line made inert, unless it does not fit
    /// (then nothing is appended). Returns the range of the line's text in
    /// the log. Work is bounded by the room left.
    fn push_line(&mut self, source: LogSource, line: &str) -> Option<std::ops::Range<usize>> {
        if self.full {
            return None;
        }
        let mark = self.text.len();
        let label = source.label();
        // One byte is kept for the line's newline.
        let limit = self.budget.saturating_sub(1);
        if mark + label.len() + 3 > limit {
            return None;
        }
        self.text.push('[');
        self.text.push_str(label);
        self.text.push_str("] ");
        let start = self.text.len();
        if corral_core::text::push_inert(&mut self.text, line, limit) < line.len() {
            self.text.truncate(mark);
            return None;
        }
        let end = self.text.len();
        self.text.push('\n');
        Some(start..end)
    }

    fn write_stream(&mut self, source: LogSource, bytes: &[u8]) {
        let slot = usize::from(source == LogSource::Stderr);
        if source == LogSource::Stderr {
            let new = &bytes[bytes.len().saturating_sub(STDERR_TAIL_BYTES)..];
            self.stderr_tail.extend_from_slice(new);
            let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL_BYTES);
            self.stderr_tail.drain(..excess);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.full {
                self.dropped += rest.len() as u64;
                return;
            }
            let pending = self.pending[slot].len();
            // The rest of the current line may be this long; one more byte
            // lets its newline be found.
            let window = self.room(source).saturating_sub(pending) + 1;
            let scan = &rest[..rest.len().min(window)];
            match scan.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    let mut line = std::mem::take(&mut self.pending[slot]);
                    line.extend_from_slice(&rest[..pos]);
                    rest = &rest[pos + 1..];
                    let text = String::from_utf8_lossy(&line);
                    let text = text.strip_suffix('\r').unwrap_or(&text);
                    if self.push_line(source, text).is_none() {
                        self.overflow(line.len() + 1);
                    }
                }
                None if rest.len() < window => {
                    self.pending[slot].extend_from_slice(rest);
                    return;
                }
                // This line cannot fit, however it ends.
                None => {
                    self.pending[slot].clear();
                    self.overflow(pending + rest.len());
                    return;
                }
            }
        }
    }

    /// Appends a `host.log` message, line by line; returns the kept lines'
    /// text (inert), joined by an escaped newline, for tracing.
    fn write_message(&mut self, source: LogSource, message: &str) -> String {
        let mut kept = String::new();
        let mut lines = 0;
        let mut rest = message;
        while !rest.is_empty() {
            let room = self.room(source);
            let window = rest.len().min(room + 1);
            // A newline is ASCII, so its position is a character boundary.
            // Lines end as `str::lines` ends them: at `\n` or `\r\n`.
            let (line, next) = match rest.as_bytes()[..window].iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    let line = &rest[..pos];
                    (line.strip_suffix('\r').unwrap_or(line), &rest[pos + 1..])
                }
                None if rest.len() <= room => (rest, ""),
                None => {
                    self.overflow(rest.len());
                    break;
                }
            };
            let Some(range) = self.push_line(source, line) else {
                self.overflow(rest.len());
                break;
            };
            if lines > 0 {
                kept.push_str("\\n");
            }
            lines += 1;
            kept.push_str(&self.text[range]);
            rest = next;
        }
        kept
    }

    /// The captured text, with unterminated lines flushed and a note when
    /// anything was dropped.
    pub fn finish(mut self) -> FinishedLog {
        for (slot, source) in [(0, LogSource::Stdout), (1, LogSource::Stderr)] {
            let rest = std::mem::take(&mut self.pending[slot]);
            if !rest.is_empty()
                && self
                    .push_line(source, &String::from_utf8_lossy(&rest))
                    .is_none()
            {
                self.overflow(rest.len());
            }
        }
        if self.dropped > 0 {
            self.text.push_str(&format!(
                "[corral] log truncated: {} bytes dropped past the {}-byte budget\n",
                self.dropped, self.budget
            ));
        }
        FinishedLog {
            text: self.text,
            stderr_tail: String::from_utf8_lossy(&self.stderr_tail).into_owned(),
        }
    }
}

/// A shared handle on one call's log, given to the stdout/stderr streams.
pub type SharedLog = Arc<Mutex<CallLog>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, CallLog> {
    // A poisoned lock only means a writer panicked mid-append; the text is
    // still valid UTF-8 and worth keeping.
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Raised through the limiter when a guest asks for memory past its limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (requested {requested})")]
pub struct MemoryLimitExceeded {
    /// The limit.
    pub limit: u64,
    /// What the guest asked for.
    pub requested: u64,
}

/// Names the call in the worker's tracing output when the guest logs.
#[derive(Debug, Clone)]
pub struct CallLabel {
    /// The task's id.
    pub task_id: String,
    /// The job's name.
    pub job: String,
    /// The handler's index in the chain.
    pub index: u32,
}

/// The data of one handler call's store.
pub struct HostState {
    /// Built on first use; see the module docs.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    log: SharedLog,
    memory_limit: u64,
    /// Linear memory held now, all memories together; memories only grow,
    /// so this is also the call's peak.
    memory_bytes: u64,
    /// Tables beyond this many elements are refused.
    table_elements_limit: usize,
    label: CallLabel,
    /// Clock and random calls so far.
    uses: WasiUse,
}

impl HostState {
    /// A fresh state: deny-by-default WASI, stdout and stderr into a log of
    /// `log_budget` bytes, memory capped at `memory_limit`.
    pub fn new(memory_limit: u64, log_budget: usize, label: CallLabel) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        Self {
            wasi: None,
            table,
            log: Arc::new(Mutex::new(CallLog::new(log_budget))),
            memory_limit,
            memory_bytes: 0,
            table_elements_limit: 1 << 20,
            label,
            uses: WasiUse::default(),
        }
    }

    /// The most linear memory the call's instance held, in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.memory_bytes
    }

    /// The call's log handle.
    pub fn log(&self) -> SharedLog {
        self.log.clone()
    }

    /// Whether the guest made any WASI call (and so a context was built).
    pub fn wasi_used(&self) -> bool {
        self.wasi.is_some()
    }

    /// What the guest asked of WASI so far.
    pub fn wasi_use(&self) -> WasiUse {
        WasiUse {
            any: self.wasi_used(),
            ..self.uses
        }
    }

    /// The WASI context (built now if this is the first WASI call), the
    /// resource table and the call counters, borrowed apart.
    fn wasi_parts(&mut self) -> (&mut WasiCtx, &mut ResourceTable, &mut WasiUse) {
        let Self {
            wasi,
            table,
            log,
            memory_limit,
            uses,
            ..
        } = self;
        let ctx = wasi.get_or_insert_with(|| build_wasi(log, *memory_limit));
        (ctx, table, uses)
    }
}

/// What one call's guest asked of WASI: whether it made any WASI call at
/// all (writing to stdout or stderr is one), and how many calls it made to
/// each clock and random interface, the only ones whose answers are not
/// the same on every run. A call with all counts zero got nothing from
/// outside its inputs but the deny-by-default answers, which never change;
/// a count above zero says the guest read a clock or random numbers, not
/// that its result depends on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WasiUse {
    /// Any WASI call at all (stdout/stderr, environment, clocks, ...).
    pub any: bool,
    /// Calls to `wasi:clocks/wall-clock` (`now`, `resolution`).
    pub wall_clock: u64,
    /// Calls to `wasi:clocks/monotonic-clock` (`now`, `resolution`, and
    /// `subscribe-instant` / `subscribe-duration`, whose pollables become
    /// ready by the clock).
    pub monotonic_clock: u64,
    /// Calls to `wasi:random/random` (`get-random-bytes`, `get-random-u64`).
    pub random: u64,
    /// Calls to `wasi:random/insecure` (`get-insecure-random-bytes`,
    /// `get-insecure-random-u64`).
    pub insecure_random: u64,
    /// Calls to `wasi:random/insecure-seed` (Rust's `HashMap` seeds its
    /// hasher this way: a new seed every call).
    pub insecure_seed: u64,
}

impl WasiUse {
    /// Calls to either clock.
    pub fn clock_calls(&self) -> u64 {
        self.wall_clock.saturating_add(self.monotonic_clock)
    }

    /// Calls to any random interface.
    pub fn random_calls(&self) -> u64 {
        self.random
            .saturating_add(self.insecure_random)
            .saturating_add(self.insecure_seed)
    }
}

/// A WASI implementation with the call counters beside it: every call
/// counts, then goes to `inner` unchanged.
struct Counted<'a, T> {
    inner: T,
    uses: &'a mut WasiUse,
}

struct CountedClocks;

impl HasData for CountedClocks {
    type Data<'a> = Counted<'a, WasiClocksCtxView<'a>>;
}

struct CountedRandom;

impl HasData for CountedRandom {
    type Data<'a> = Counted<'a, &'a mut WasiRandomCtx>;
}

fn counted_clocks(state: &mut HostState) -> Counted<'_, WasiClocksCtxView<'_>> {
    let (ctx, table, uses) = state.wasi_parts();
    let ctx: &mut WasiClocksCtx = ctx.clocks();
    Counted {
        inner: WasiClocksCtxView { ctx, table },
        uses,
    }
}

fn counted_random(state: &mut HostState) -> Counted<'_, &mut WasiRandomCtx> {
    let (ctx, _, uses) = state.wasi_parts();
    Counted {
        inner: ctx.random(),
        uses,
    }
}

/// Links the clock and random interfaces again, over what
/// `wasmtime_wasi::p2::add_to_linker_async` linked, through the counting
/// wrappers: same names, same answers, each call counted in the call's
/// [`WasiUse`].
pub fn add_counted_clocks_and_random(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    wall_clock::add_to_linker::<HostState, CountedClocks>(linker, counted_clocks)?;
    monotonic_clock::add_to_linker::<HostState, CountedClocks>(linker, counted_clocks)?;
    random::add_to_linker::<HostState, CountedRandom>(linker, counted_random)?;
    insecure::add_to_linker::<HostState, CountedRandom>(linker, counted_random)?;
    insecure_seed::add_to_linker::<HostState, CountedRandom>(linker, counted_random)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl wall_clock::Host for Counted<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.uses.wall_clock += 1;
        wall_clock::Host::now(&mut self.inner)
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.uses.wall_clock += 1;
        wall_clock::Host::resolution(&mut self.inner)
    }
}

impl monotonic_clock::Host for Counted<'_, WasiClocksCtxView<'_>> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.uses.monotonic_clock += 1;
        monotonic_clock::Host::now(&mut self.inner)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.uses.monotonic_clock += 1;
        monotonic_clock::Host::resolution(&mut self.inner)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.uses.monotonic_clock += 1;
        monotonic_clock::Host::subscribe_instant(&mut self.inner, when)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.uses.monotonic_clock += 1;
        monotonic_clock::Host::subscribe_duration(&mut self.inner, duration)
    }
}

impl random::Host for Counted<'_, &mut WasiRandomCtx> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.uses.random += 1;
        random::Host::get_random_bytes(self.inner, len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.uses.random += 1;
        random::Host::get_random_u64(self.inner)
    }
}

impl insecure::Host for Counted<'_, &mut WasiRandomCtx> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.uses.insecure_random += 1;
        insecure::Host::get_insecure_random_bytes(self.inner, len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.uses.insecure_random += 1;
        insecure::Host::get_insecure_random_u64(self.inner)
    }
}

impl insecure_seed::Host for Counted<'_, &mut WasiRandomCtx> {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        self.uses.insecure_seed += 1;
        insecure_seed::Host::insecure_seed(self.inner)
    }
}

/// The deny-by-default WASI context every call gets. Everything not set here
/// is wasmtime-wasi's default, which is also a denial: stdin closed, no
/// preopened directories, no environment, no arguments, no working
/// directory; host clocks; fresh random generators.
fn build_wasi(log: &SharedLog, memory_limit: u64) -> WasiCtx {
    let mut wasi = WasiCtx::builder();
    wasi.stdout(CapturedStream {
        log: log.clone(),
        source: LogSource::Stdout,
    })
    .stderr(CapturedStream {
        log: log.clone(),
        source: LogSource::Stderr,
    })
    // No network at all: sockets cannot even be created, so no address check
    // is ever reached.
    .allow_tcp(false)
    .allow_udp(false)
    .allow_ip_name_lookup(false)
    .max_random_size(MAX_RANDOM_BYTES.min(memory_limit));
    wasi.build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (ctx, table, _) = self.wasi_parts();
        WasiCtxView { ctx, table }
    }
}

impl super::bindings::corral::job::types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let kept = lock(&self.log).write_message(LogSource::Log(level), &message);
        // Only what the task's log kept reaches tracing, already inert: a
        // guest must not be able to flood or forge the worker's own log.
        if kept.is_empty() {
            return;
        }
        let CallLabel {
            task_id,
            job,
            index,
        } = &self.label;
        let (task, job) = (Inert(task_id), Inert(job));
        match level {
            Level::Trace => {
                tracing::trace!(target: "corral::guest", %task, %job, index, "{kept}")
            }
            Level::Debug => {
                tracing::debug!(target: "corral::guest", %task, %job, index, "{kept}")
            }
            Level::Info => {
                tracing::info!(target: "corral::guest", %task, %job, index, "{kept}")
            }
            Level::Warn => {
                tracing::warn!(target: "corral::guest", %task, %job, index, "{kept}")
            }
            Level::Error => {
                tracing::error!(target: "corral::guest", %task, %job, index, "{kept}")
            }
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (current, desired) = (current as u64, desired as u64);
        if desired > self.memory_limit {
            // An error, not `Ok(false)`: refusing would make `memory.grow`
            // return -1, and most guests then abort with an `unreachable`
            // trap that no longer says why. The error traps at once and
            // names the limit.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_limit,
                requested: desired,
            }));
        }
        // Called with `current` 0 when a memory is created, too.
        self.memory_bytes = self
            .memory_bytes
            .saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements_limit)
    }
}

/// A guest's stdout or stderr: always accepts writes (so a chatty guest is
/// never failed by its own logging), keeps what fits in the budget.
#[derive(Clone)]
struct CapturedStream {
    log: SharedLog,
    source: LogSource,
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

/// How much a guest may write in one `write` call; what wasmtime-wasi's own
/// stdout offers.
const WRITE_CHUNK: usize = 64 << 10;

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        lock(&self.log).write_stream(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_CHUNK)
    }
}

impl tokio::io::AsyncWrite for CapturedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        lock(&self.log).write_stream(self.source, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_labelled_and_budget_is_kept() {
        let mut log = CallLog::new(40);
        log.write_stream(LogSource::Stdout, b"hello\nwor");
        log.write_stream(LogSource::Stdout, b"ld\n");
        let kept = log.write_message(
            LogSource::Log(Level::Info),
            "this line is far too long to fit in",
        );
        assert_eq!(kept, "");
        // Full: a line that would fit is not kept after one that did not.
        log.write_stream(LogSource::Stdout, b"ok\n");
        let text = log.finish().text;
        assert_eq!(
            text,
            "[stdout] hello\n[stdout] world\n\
             [corral] log truncated: 38 bytes dropped past the 40-byte budget\n"
        );
    }

    #[test]
    fn lines_are_made_inert_and_the_kept_part_is_returned() {
        let mut log = CallLog::new(1 << 10);
        let kept = log.write_message(
            LogSource::Log(Level::Warn),
            "one\r\ntwo\x1b[2J\u{202e}\n\nthree\r",
        );
        assert_eq!(kept, "one\\ntwo\\u{1b}[2J\\u{202e}\\n\\nthree\\r");
        log.write_stream(LogSource::Stdout, b"a\rb\0c\xff\n");
        let text = log.finish().text;
        assert_eq!(
            text,
            "[warn] one\n[warn] two\\u{1b}[2J\\u{202e}\n[warn] \n[warn] three\\r\n\
             [stdout] a\\rb\\0c\u{fffd}\n"
        );
    }

    /// A message of a hundred million one-byte lines costs what fits in the
    /// budget, not a pass over every line: the log is full after a few.
    #[test]
    fn work_is_bounded_by_the_budget() {
        let mut log = CallLog::new(64);
        let message = "x\n".repeat(50_000_000);
        let kept = log.write_message(LogSource::Log(Level::Info), &message);
        assert_eq!(kept.matches('x').count(), 7, "{kept}");
        assert!(log.full);
        let huge = vec![b'\n'; 100 << 20];
        log.write_stream(LogSource::Stdout, &huge);
        let text = log.finish().text;
        assert!(
            text.ends_with(&format!(
                "log truncated: {} bytes dropped past the 64-byte budget\n",
                message.len() - 14 + (100 << 20)
            )),
            "{text}"
        );
    }

    #[test]
    fn the_end_of_stderr_is_kept_past_the_budget() {
        let mut log = CallLog::new(16);
        for i in 0..1000 {
            log.write_stream(LogSource::Stderr, format!("line {i}\n").as_bytes());
        }
        log.write_stream(LogSource::Stderr, b"panicked at x.rs:1:1:\nboom\n");
        let finished = log.finish();
        assert!(finished.text.contains("log truncated"), "{}", finished.text);
        assert!(finished.stderr_tail.len() <= STDERR_TAIL_BYTES);
        assert!(
            finished
                .stderr_tail
                .ends_with("panicked at x.rs:1:1:\nboom\n")
        );
    }
}
