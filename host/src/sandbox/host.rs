//! What a guest can reach: the per-call store data, the `host` interface, and
//! the deny-by-default WASI context.
//!
//! Each handler call gets a fresh [`HostState`]: a WASI context with no
//! preopened directories, no sockets, no environment and no arguments (clocks
//! and random only), stdout and stderr captured into a [`CallLog`] capped at
//! the job's log budget, and a resource limiter that turns growth past the
//! memory limit into a typed trap. Nothing here outlives the call.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::corral::job::host::{self, Level};

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
#[derive(Debug, Default)]
pub struct CallLog {
    text: String,
    budget: usize,
    dropped: u64,
    /// Partial lines of stdout and stderr, flushed as whole lines.
    pending: [Vec<u8>; 2],
}

impl CallLog {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    fn push_line(&mut self, source: LogSource, line: &str) {
        let label = source.label();
        let needed = label.len() + line.len() + 4;
        if self.text.len() + needed > self.budget {
            self.dropped += line.len() as u64 + 1;
            return;
        }
        self.text.push('[');
        self.text.push_str(label);
        self.text.push_str("] ");
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn write_stream(&mut self, source: LogSource, bytes: &[u8]) {
        let slot = usize::from(source == LogSource::Stderr);
        // Do not buffer more than the budget for a line that never ends.
        if self.text.len() + self.pending[slot].len() > self.budget {
            self.dropped += bytes.len() as u64;
            return;
        }
        self.pending[slot].extend_from_slice(bytes);
        while let Some(pos) = self.pending[slot].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending[slot].drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            self.push_line(source, text.trim_end_matches('\r'));
        }
    }

    /// The captured text, with unterminated lines flushed and a note when
    /// anything was dropped.
    pub fn finish(mut self) -> String {
        for (slot, source) in [(0, LogSource::Stdout), (1, LogSource::Stderr)] {
            let rest = std::mem::take(&mut self.pending[slot]);
            if !rest.is_empty() {
                self.push_line(source, &String::from_utf8_lossy(&rest));
            }
        }
        if self.dropped > 0 {
            self.text.push_str(&format!(
                "[corral] log truncated: {} bytes dropped past the {}-byte budget\n",
                self.dropped, self.budget
            ));
        }
        self.text
    }
}

/// A shared handle on one call's log, given to the stdout/stderr streams.
pub type SharedLog = Arc<Mutex<CallLog>>;

fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, CallLog> {
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

/// The data of one handler call's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    log: SharedLog,
    memory_limit: u64,
    /// Tables beyond this many elements are refused.
    table_elements_limit: usize,
    /// Name of the task and handler, for tracing.
    pub(crate) span: tracing::Span,
}

impl HostState {
    /// A fresh state: deny-by-default WASI, stdout and stderr into a log of
    /// `log_budget` bytes, memory capped at `memory_limit`.
    pub fn new(memory_limit: u64, log_budget: usize, span: tracing::Span) -> Self {
        let log: SharedLog = Arc::new(Mutex::new(CallLog::new(log_budget)));
        let mut wasi = WasiCtx::builder();
        wasi.stdout(CapturedStream {
            log: log.clone(),
            source: LogSource::Stdout,
        })
        .stderr(CapturedStream {
            log: log.clone(),
            source: LogSource::Stderr,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            log,
            memory_limit,
            table_elements_limit: 1 << 20,
            span,
        }
    }

    /// The call's log handle.
    pub fn log(&self) -> SharedLog {
        self.log.clone()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl super::bindings::corral::job::types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let _enter = self.span.enter();
        match level {
            Level::Trace => tracing::trace!(target: "corral::guest", "{message}"),
            Level::Debug => tracing::debug!(target: "corral::guest", "{message}"),
            Level::Info => tracing::info!(target: "corral::guest", "{message}"),
            Level::Warn => tracing::warn!(target: "corral::guest", "{message}"),
            Level::Error => tracing::error!(target: "corral::guest", "{message}"),
        }
        let mut log = lock(&self.log);
        for line in message.lines() {
            log.push_line(LogSource::Log(level), line);
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_limit,
                requested: desired,
            }));
        }
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

impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        lock(&self.log).write_stream(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
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
        log.push_line(
            LogSource::Log(Level::Info),
            "this line is far too long to fit in",
        );
        let text = log.finish();
        assert!(
            text.starts_with("[stdout] hello\n[stdout] world\n"),
            "{text}"
        );
        assert!(
            text.contains("log truncated: 36 bytes dropped past the 40-byte budget"),
            "{text}"
        );
    }
}
