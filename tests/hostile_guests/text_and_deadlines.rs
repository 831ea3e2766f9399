//! Guest text is bounded and inert everywhere; deadlines hold inside host
//! calls.
//!
//! The guests are WAT generated here from seeded random inputs: what they
//! log (through `host.log` and through WASI stdout), the errors they
//! return, the names their jobs, handlers and queues get, and one host call
//! doing as much work as it can. The worker's own log is captured through a
//! plain `tracing-subscriber` fmt layer, as an embedder would install one,
//! so what is asserted is what the library hands to any subscriber.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use corral::sandbox::MAX_FAILURE_TEXT_BYTES;
use corral::text::{Inert, inert_capped, needs_escape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// The sandbox's bound on what one host call may copy out of a guest whose
/// output limit is at most 4 MiB (see `sandbox::hostcall_bytes`).
const HOSTCALL_BYTES_MIN: usize = 16 << 20;

// ---------------------------------------------------------------------------
// Guests that call the host
// ---------------------------------------------------------------------------

/// The slices of WASI the generated guests import, as separate packages
/// (the host's own are newer 0.2 versions, which satisfy these).
const WASI_IO: &str = "package wasi:io@0.2.0;
interface error { resource error; }
interface streams {
  use error.{error};
  variant stream-error { last-operation-failed(error), closed }
  resource output-stream { write: func(contents: list<u8>) -> result<_, stream-error>; }
}";
const WASI_CLI: &str = "package wasi:cli@0.2.0;
interface stdout {
  use wasi:io/streams@0.2.0.{output-stream};
  get-stdout: func() -> output-stream;
}";
const WASI_CLOCKS: &str = "package wasi:clocks@0.2.0;
interface monotonic-clock { type instant = u64; now: func() -> instant; }";
const WASI_RANDOM: &str = "package wasi:random@0.2.0;
interface random { get-random-bytes: func(len: u64) -> list<u8>; }";

const HOST_CALLS_WORLD: &str = "world host-calls {
  include handler;
  import wasi:clocks/monotonic-clock@0.2.0;
  import wasi:random/random@0.2.0;
  import wasi:cli/stdout@0.2.0;
}";

const HOST_CALL_IMPORTS: &str = r#"
  (import "corral:job/host@0.1.0" "log" (func $log (param i32 i32 i32)))
  (import "wasi:clocks/monotonic-clock@0.2.0" "now" (func $now (result i64)))
  (import "wasi:random/random@0.2.0" "get-random-bytes" (func $random (param i64 i32)))
  (import "wasi:cli/stdout@0.2.0" "get-stdout" (func $stdout (result i32)))
  (import "wasi:io/streams@0.2.0" "[method]output-stream.write" (func $write (param i32 i32 i32 i32)))"#;

/// Where generated guests keep their data segments.
const DATA_AT: usize = 1024;

/// A WAT string literal holding `bytes` exactly.
fn wat_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 + 2);
    out.push('"');
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Lays data segments out from [`DATA_AT`]: their offsets, the WAT, and
/// the first free byte after them.
fn layout(segments: &[&[u8]]) -> (Vec<usize>, String, usize) {
    let mut at = DATA_AT;
    let mut offsets = Vec::new();
    let mut wat = String::new();
    for bytes in segments {
        offsets.push(at);
        wat.push_str(&format!("(data (i32.const {at}) {})\n", wat_bytes(bytes)));
        at += bytes.len();
    }
    (offsets, wat, at)
}

/// A handler-world core module importing the host and the WASI slices
/// above: `pages` of memory, data segments `data`, a bump allocator
/// starting past `heap` (64 KiB aligned), and `handle`'s body `body`.
fn host_calls_core(pages: usize, data: &str, heap: usize, body: &str) -> String {
    let heap = heap.next_multiple_of(1 << 16);
    format!(
        r#"(module
  {HOST_CALL_IMPORTS}
  (memory (export "memory") {pages})
  {data}
  (global $next (mut i32) (i32.const {heap}))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $next (i32.add (local.get $ptr) (local.get 3)))
    (if (i32.gt_u (global.get $next) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.sub (i32.shr_u (global.get $next) (i32.const 16)) (memory.size)) (i32.const 1))) (i32.const -1))
          (then unreachable))))
    (local.get $ptr))
  (func (export "handle")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (param $args i32) (param $len i32)
    (result i32)
    (local $out i32) (local $t0 i64) (local $big i32)
    {body})
)"#
    )
}

fn host_calls_component(core: &str) -> Vec<u8> {
    component(
        core,
        &[WASI_IO, WASI_CLI, WASI_CLOCKS, WASI_RANDOM],
        HOST_CALLS_WORLD,
        "host-calls",
    )
}

/// The end of a `handle` that succeeds with its args and `log` (a data
/// segment at `log_at`, `log_len` bytes) as its result-log text.
fn succeed_with_log(log_at: usize, log_len: usize) -> String {
    format!(
        r#"
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (local.get $args))
    (i32.store (i32.const 8) (local.get $len))
    (i32.store (i32.const 12) (i32.const {log_at}))
    (i32.store (i32.const 16) (i32.const {log_len}))
    (i32.const 0)"#
    )
}

// ---------------------------------------------------------------------------
// The worker's log, captured
// ---------------------------------------------------------------------------

/// Everything the fmt layer wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The output's lines, each checked to be one whole event: a level,
    /// then text with nothing that could break or restyle a line.
    fn event_lines(&self) -> Vec<String> {
        let bytes = self.bytes().clone();
        let text = String::from_utf8(bytes).expect("the log is UTF-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "an event line was left open: {text:?}"
        );
        text.lines()
            .map(|line| {
                let level = line.trim_start().split(' ').next().unwrap_or_default();
                assert!(
                    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                    "a line that is not an event (forged?): {line:?}"
                );
                assert!(
                    !line.chars().any(needs_escape),
                    "raw control text in the log: {line:?}"
                );
                line.to_owned()
            })
            .collect()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's `corral` events (every level) until the guard
/// drops; the tests using it run on a current-thread runtime, so the worker
/// runs on this thread too.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("corral=trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Characters guests and tenants like to hide in text.
const NASTY: &[&str] = &[
    "\n",
    "\r",
    "\r\n",
    "\0",
    "\t",
    "\x1b[2J",
    "\x1b[31m",
    "\x07",
    "\x7f",
    "\u{85}",
    "\u{9b}",
    "\u{2028}",
    "\u{2029}",
    "\u{202e}",
    "\u{2066}",
    "\u{200f}",
    "\u{feff}",
    "\u{fffd}",
    "é",
    "✓",
    "\\n",
    "[0:hostile][info] forged",
    " INFO corral::guest: forged",
];

/// Random text of about `len` characters: mostly printable, with nasty
/// pieces mixed in at `nasty_share` of positions.
fn nasty_text(rng: &mut StdRng, len: usize, nasty_share: f64) -> String {
    let mut s = String::new();
    while s.chars().count() < len {
        if rng.random_bool(nasty_share) {
            s.push_str(NASTY[rng.random_range(0..NASTY.len())]);
        } else {
            s.push(rng.random_range(' '..='~'));
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Logs: bounded, inert, and only what was kept reaches tracing
// ---------------------------------------------------------------------------

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// One thing a generated guest writes.
#[derive(Debug, Clone)]
enum Write {
    /// `host.log` at a level (an index into [`LEVELS`]).
    Log(u32, Vec<u8>),
    /// A `write` to stdout (any bytes, valid UTF-8 or not).
    Stdout(Vec<u8>),
    /// `host.log` of `len` copies of one ASCII byte, made by `memory.fill`.
    LogFill(u32, u8, usize),
    /// A stdout `write` of `len` copies of one byte.
    StdoutFill(u8, usize),
}

impl Write {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Write::Log(_, b) | Write::Stdout(b) => b.clone(),
            Write::LogFill(_, byte, len) | Write::StdoutFill(byte, len) => vec![*byte; *len],
        }
    }
}

fn random_writes(rng: &mut StdRng, budget: usize) -> Vec<Write> {
    let count = rng.random_range(1..10);
    (0..count)
        .map(|_| {
            let level = rng.random_range(0..5);
            match rng.random_range(0..8) {
                // Many short lines.
                0 => {
                    let lines: Vec<String> = (0..rng.random_range(1..200))
                        .map(|_| {
                            let n = rng.random_range(0..12);
                            nasty_text(rng, n, 0.1)
                        })
                        .collect();
                    Write::Log(level, lines.join("\n").into_bytes())
                }
                // One line, up to several budgets long.
                1 => {
                    let n = rng.random_range(0..budget * 3);
                    Write::Log(level, nasty_text(rng, n, 0.02).into_bytes())
                }
                // Mostly nasty.
                2 => {
                    let n = rng.random_range(0..200);
                    Write::Log(level, nasty_text(rng, n, 0.7).into_bytes())
                }
                3 => Write::Log(level, Vec::new()),
                // Raw bytes to stdout, split anywhere, invalid UTF-8 too.
                4 => {
                    let n = rng.random_range(0..300);
                    let mut bytes = nasty_text(rng, n, 0.2).into_bytes();
                    for _ in 0..rng.random_range(0..4) {
                        let at = rng.random_range(0..=bytes.len());
                        bytes.insert(at, [0xff, 0xc3, 0x80, 0xe2][rng.random_range(0..4)]);
                    }
                    Write::Stdout(bytes)
                }
                // Huge, made in guest memory.
                5 => {
                    let byte = [b'\n', b'x', 0x1b, 0, b'\r'][rng.random_range(0..5)];
                    Write::LogFill(level, byte, rng.random_range(1..(8 << 20)))
                }
                6 => {
                    let byte = [b'\n', b'y', 0x1b, 0xff][rng.random_range(0..4)];
                    Write::StdoutFill(byte, rng.random_range(1..(8 << 20)))
                }
                _ => {
                    let lines = rng.random_range(1..50);
                    let text: String = (0..lines)
                        .map(|i| format!("line {i} of a stdout burst\n"))
                        .collect();
                    Write::Stdout(text.into_bytes())
                }
            }
        })
        .collect()
}

/// The writes' kinds and sizes, for failure messages.
fn summary(writes: &[Write]) -> String {
    let parts: Vec<String> = writes
        .iter()
        .map(|w| match w {
            Write::Log(level, b) => format!("log({level}, {} bytes)", b.len()),
            Write::Stdout(b) => format!("stdout({} bytes)", b.len()),
            Write::LogFill(level, byte, n) => format!("log({level}, {n} x {byte:#x})"),
            Write::StdoutFill(byte, n) => format!("stdout({n} x {byte:#x})"),
        })
        .collect();
    parts.join(", ")
}

/// A guest making `writes` in order, then returning its args.
fn writer_guest(writes: &[Write]) -> Vec<u8> {
    let literal: Vec<Vec<u8>> = writes
        .iter()
        .map(|w| match w {
            Write::Log(_, b) | Write::Stdout(b) => b.clone(),
            _ => Vec::new(),
        })
        .collect();
    let segments: Vec<&[u8]> = literal.iter().map(Vec::as_slice).collect();
    let (offsets, data, end) = layout(&segments);
    let big = end.next_multiple_of(1 << 16);
    let largest = writes
        .iter()
        .map(|w| match w {
            Write::LogFill(_, _, n) | Write::StdoutFill(_, n) => *n,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let pages = (big + largest).div_ceil(1 << 16) + 2;
    let mut body = String::from("(local.set $out (call $stdout))\n");
    for (write, at) in writes.iter().zip(&offsets) {
        body.push_str(&match write {
            Write::Log(level, b) => {
                format!(
                    "(call $log (i32.const {level}) (i32.const {at}) (i32.const {}))\n",
                    b.len()
                )
            }
            Write::Stdout(b) => format!(
                "(call $write (local.get $out) (i32.const {at}) (i32.const {}) (i32.const 32))\n",
                b.len()
            ),
            Write::LogFill(level, byte, n) => format!(
                "(memory.fill (i32.const {big}) (i32.const {byte}) (i32.const {n}))\n\
                 (call $log (i32.const {level}) (i32.const {big}) (i32.const {n}))\n"
            ),
            Write::StdoutFill(byte, n) => format!(
                "(memory.fill (i32.const {big}) (i32.const {byte}) (i32.const {n}))\n\
                 (call $write (local.get $out) (i32.const {big}) (i32.const {n}) (i32.const 32))\n"
            ),
        });
    }
    body.push_str(&succeed_with_log(0, 0));
    host_calls_component(&host_calls_core(pages, &data, big + largest, &body))
}

/// What the task's log must keep of `writes` under `budget`: the longest
/// prefix of lines that fits, each line made inert and labelled, where a
/// stdout line counts at its newline, or as soon as its unfinished part
/// alone could no longer fit. Returns the kept lines and, per `host.log`
/// call that kept anything, the text tracing must carry for it.
struct LogModel {
    budget: usize,
    used: usize,
    full: bool,
    kept: Vec<String>,
    events: Vec<(u32, String)>,
    pending: Vec<u8>,
}

impl LogModel {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            full: false,
            kept: Vec::new(),
            events: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn push(&mut self, label: &str, line: &str) -> bool {
        let content = Inert(line).to_string();
        let cost = label.len() + 3 + content.len() + 1;
        if self.full || self.used + cost > self.budget {
            self.full = true;
            return false;
        }
        self.used += cost;
        self.kept.push(format!("[{label}] {content}"));
        true
    }

    fn room(&self, label: &str) -> usize {
        if self.full {
            0
        } else {
            self.budget.saturating_sub(self.used + label.len() + 4)
        }
    }

    fn write(&mut self, write: &Write) {
        match write {
            Write::Log(level, _) | Write::LogFill(level, _, _) => {
                let bytes = write.bytes();
                let message = String::from_utf8(bytes).expect("log messages are UTF-8");
                let mut kept = Vec::new();
                for line in message.lines() {
                    if !self.push(LEVELS[*level as usize], line) {
                        break;
                    }
                    kept.push(Inert(line).to_string());
                }
                let joined = kept.join("\\n");
                if !joined.is_empty() {
                    self.events.push((*level, joined));
                }
            }
            Write::Stdout(_) | Write::StdoutFill(..) => {
                let bytes = write.bytes();
                for &b in &bytes {
                    if self.full {
                        return;
                    }
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.pending);
                        let line = line.strip_suffix(b"\r").unwrap_or(&line);
                        self.push("stdout", &String::from_utf8_lossy(line));
                    } else {
                        self.pending.push(b);
                    }
                }
                // An unfinished line that can no longer fit fills the log
                // as soon as it is written.
                if !self.full
                    && bytes.last().is_some_and(|b| *b != b'\n')
                    && self.pending.len() > self.room("stdout")
                {
                    self.pending.clear();
                    self.full = true;
                }
            }
        }
    }

    fn finish(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.push("stdout", &String::from_utf8_lossy(&rest));
        }
    }
}

/// Generated guests write logs of every shape and size under small budgets:
/// the task keeps exactly the lines that fit, inert, noting the drop; the
/// worker's log carries exactly the `host.log` lines the task kept, one
/// event line per call, and nothing else of the guest's.
#[tokio::test(flavor = "current_thread")]
async fn guest_logs_are_bounded_and_inert_in_the_task_and_the_worker_log() {
    let _limit = crate::limit::minutes(5);
    let mut rng = StdRng::seed_from_u64(0x6c6f_6773);
    for case in 0..24 {
        let budget = rng.random_range(16..4096);
        let writes = random_writes(&mut rng, budget);
        let limits = Limits {
            max_log_bytes: budget as u64,
            memory_bytes: 64 << 20,
            ..tight()
        };
        let bytes = writer_guest(&writes);
        let (captured, guard) = capture();
        let done = completed(Guest::Bytes(bytes), &[("case", json!(case))], limits).await;
        drop(guard);

        let mut model = LogModel::new(budget);
        for write in &writes {
            model.write(write);
        }
        model.finish();
        let context = format!("case {case}, budget {budget}, writes {}", summary(&writes));

        // The task's log: the model's lines, then the note iff anything
        // was dropped.
        let mut lines: Vec<&str> = done.log.lines().collect();
        let note = lines
            .last()
            .filter(|l| l.starts_with("[0:hostile][corral] log truncated: "))
            .copied();
        if note.is_some() {
            lines.pop();
        }
        let kept: Vec<&str> = lines
            .iter()
            .map(|l| {
                l.strip_prefix("[0:hostile]")
                    .unwrap_or_else(|| panic!("{context}: unlabelled line {l:?}"))
            })
            .collect();
        assert_eq!(kept, model.kept, "{context}");
        assert_eq!(note.is_some(), model.full, "{context}: {note:?}");
        let used: usize = kept.iter().map(|l| l.len() + 1).sum();
        assert!(used <= budget, "{context}: {used} bytes kept");
        assert!(
            !done.log.chars().any(|c| c != '\n' && needs_escape(c)),
            "{context}"
        );

        // The worker's log: one event per `host.log` call that kept
        // anything, carrying exactly what was kept.
        let events: Vec<(String, String)> = captured
            .event_lines()
            .into_iter()
            .filter_map(|line| {
                let (head, rest) = line.split_once("corral::guest: ")?;
                let level = head.trim_start().split(' ').next()?.to_ascii_lowercase();
                let message = &rest[..rest.rfind(" task=")?];
                Some((level, message.to_owned()))
            })
            .collect();
        let expected: Vec<(String, String)> = model
            .events
            .iter()
            .map(|(level, text)| (LEVELS[*level as usize].to_owned(), text.clone()))
            .collect();
        assert_eq!(events, expected, "{context}");
    }
}

// ---------------------------------------------------------------------------
// Error messages: capped like output
// ---------------------------------------------------------------------------

/// What a generated failing guest returns as its message.
enum Message {
    /// From a data segment.
    Text(String),
    /// `len` copies of one ASCII byte, made by `memory.fill`.
    Fill(u8, usize),
}

fn failing_guest(message: &Message) -> Vec<u8> {
    let (at, len, fill, pages) = match message {
        Message::Text(text) => {
            let (_, _, end) = layout(&[text.as_bytes()]);
            (
                DATA_AT,
                text.len(),
                String::new(),
                end.div_ceil(1 << 16) + 1,
            )
        }
        Message::Fill(byte, n) => {
            let at = 1 << 16;
            (
                at,
                *n,
                format!("(memory.fill (i32.const {at}) (i32.const {byte}) (i32.const {n}))"),
                (at + n).div_ceil(1 << 16) + 1,
            )
        }
    };
    let data = match message {
        Message::Text(text) => layout(&[text.as_bytes()]).1,
        Message::Fill(..) => String::new(),
    };
    let body = format!(
        r#"{fill}
    (i32.store8 (i32.const 0) (i32.const 1))
    (i32.store8 (i32.const 4) (i32.const 1))
    (i32.store (i32.const 8) (i32.const {at}))
    (i32.store (i32.const 12) (i32.const {len}))
    (i32.const 0)"#
    );
    host_calls_component(&host_calls_core(pages, &data, pages << 16, &body))
}

/// Guests return errors with messages of every size up to 120 MiB: the
/// task stores each capped at the job's output limit and the failure
/// ceiling, inert, with a note of how much was cut; one past what a single
/// crossing from the guest may carry is refused as a trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_message_is_capped_and_inert() {
    let _limit = crate::limit::minutes(5);
    let mut rng = StdRng::seed_from_u64(0x0065_7272_6f72);
    let mut cases: Vec<(Message, u64)> = Vec::new();
    for _ in 0..8 {
        let len = rng.random_range(0..6000);
        let max_output = [100, 1000, 1 << 20][rng.random_range(0..3)];
        cases.push((Message::Text(nasty_text(&mut rng, len, 0.1)), max_output));
    }
    for n in [4095, 4096, 4097, 1 << 20, 12 << 20, 120 << 20] {
        let byte = [b'x', b'\n', 0x1b][rng.random_range(0..3)];
        cases.push((Message::Fill(byte, n), 1 << 20));
    }
    for (message, max_output) in cases {
        let original = match &message {
            Message::Text(text) => text.clone(),
            Message::Fill(byte, n) => String::from_utf8(vec![*byte; *n]).expect("ASCII"),
        };
        // `memory.fill` burns fuel by the byte.
        let limits = Limits {
            max_output_bytes: max_output,
            memory_bytes: 256 << 20,
            fuel: 10_000_000_000,
            timeout_ms: 30_000,
            ..tight()
        };
        let error = failed(Guest::Bytes(failing_guest(&message)), &[], limits).await;
        let context = format!(
            "a {}-byte message, output limit {max_output}",
            original.len()
        );
        if original.len() > HOSTCALL_BYTES_MIN {
            // Past what one crossing from the guest may carry, the message
            // is not even copied out.
            assert_eq!(error.kind, "trap", "{context}: {error}");
            assert!(
                error.message.contains("too much data"),
                "{context}: {error}"
            );
            assert!(error.message.len() <= MAX_FAILURE_TEXT_BYTES, "{context}");
            continue;
        }
        assert_eq!(error.kind, "guest_error", "{context}: {error}");
        assert!(!error.retryable, "{context}");
        let cap = (max_output as usize).min(MAX_FAILURE_TEXT_BYTES);
        let expected = format!(
            "handler 0 (`hostile`) of job `hostile` returned a fatal error: {}",
            inert_capped(&original, cap)
        );
        assert_eq!(error.message, expected, "{context}");
        assert!(
            error.message.len() <= MAX_FAILURE_TEXT_BYTES + 200,
            "{context}: {} bytes stored",
            error.message.len()
        );
        assert!(!error.message.chars().any(needs_escape), "{context}");
    }
}

// ---------------------------------------------------------------------------
// Tenant-chosen names
// ---------------------------------------------------------------------------

/// Handler names, queue names and (unregistered) job names full of line
/// breaks and escapes: each task's error, log and every line of the
/// worker's log stay inert, and each failure is exactly one event line.
#[tokio::test(flavor = "current_thread")]
async fn names_with_line_breaks_and_escapes_stay_on_one_line() {
    let _limit = crate::limit::minutes(5);
    let mut rng = StdRng::seed_from_u64(0x6e61_6d65);
    for case in 0..8 {
        let len = rng.random_range(1..40);
        let handler = nasty_text(&mut rng, len, 0.4);
        let len = rng.random_range(1..40);
        let queue = nasty_text(&mut rng, len, 0.4);
        let len = rng.random_range(1..40);
        let job = nasty_text(&mut rng, len, 0.4);
        let guest_message = nasty_text(&mut rng, 64, 0.3);
        let context = format!("case {case}: handler {handler:?}, queue {queue:?}, job {job:?}");

        let registry = Registry::new(sandbox());
        let module = registry
            .add_module(
                TENANT,
                &failing_guest(&Message::Text(guest_message.clone())),
            )
            .await
            .expect("add module");
        registry
            .register(TENANT, "hostile", vec![spec(&handler, module)], tight())
            .await
            .expect("a handler's name is the tenant's to choose");
        let broker = EmbeddedBroker::new();
        let client = Client::new(broker.clone());
        let hostile = client.task("hostile").queue(&queue).max_attempts(1).build();
        let unknown = client.task(&job).queue(&queue).max_attempts(1).build();
        client
            .enqueue_many(vec![hostile.clone(), unknown.clone()])
            .await
            .expect("enqueue");

        let (captured, guard) = capture();
        let config = WorkerConfig {
            queues: vec![queue.clone()],
            ..worker_config()
        };
        let worker = RunningWorker::start(broker, registry, config);
        let hostile_done = wait(&client, hostile.task_id).await;
        let unknown_done = wait(&client, unknown.task_id).await;
        worker.stop().await;
        drop(guard);

        let error = hostile_done.error.expect("failed");
        assert_eq!(error.kind, "guest_error", "{context}: {error}");
        assert_eq!(
            error.message,
            format!(
                "handler 0 (`{}`) of job `hostile` returned a fatal error: {}",
                Inert(&handler),
                Inert(&guest_message)
            ),
            "{context}"
        );
        let unknown_error = unknown_done.error.expect("failed");
        assert_eq!(unknown_error.kind, "unknown_job", "{context}");
        assert!(
            unknown_error.message.contains(&Inert(&job).to_string()),
            "{context}: {unknown_error}"
        );
        for text in [&error.message, &unknown_error.message, &hostile_done.log] {
            assert!(
                !text.chars().any(|c| c != '\n' && needs_escape(c)),
                "{context}: {text:?}"
            );
        }

        let lines = captured.event_lines();
        let failures: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("handler failed"))
            .collect();
        assert_eq!(failures.len(), 1, "{context}: {lines:#?}");
        assert!(
            failures[0].contains(&Inert(&handler).to_string()),
            "{context}: {}",
            failures[0]
        );
    }
}

// ---------------------------------------------------------------------------
// Deadlines inside host calls
// ---------------------------------------------------------------------------

/// The one expensive host call a deadline guest makes.
#[derive(Debug, Clone, Copy)]
enum HostCall {
    /// `host.log` of `n` copies of a byte (newlines: `n` empty lines).
    Log(u8, usize),
    /// A stdout `write` of `n` copies of a byte.
    Stdout(u8, usize),
    /// `get-random-bytes(n)`.
    Random(usize),
}

/// A guest that reads the monotonic clock, makes one expensive host call,
/// reads the clock again and returns at once, with no loop anywhere (so no
/// epoch check after the call): its result log says whether it saw itself
/// run for `deadline_ms` or more.
fn deadline_guest(call: HostCall, deadline_ms: u64) -> Vec<u8> {
    let (_, data, end) = layout(&[b"overran", b"within"]);
    let (overran, within) = (DATA_AT, DATA_AT + 7);
    let big = end.next_multiple_of(1 << 16);
    let (size, prepare, invoke) = match call {
        HostCall::Log(byte, n) => (
            n,
            format!("(memory.fill (i32.const {big}) (i32.const {byte}) (i32.const {n}))"),
            format!("(call $log (i32.const 2) (i32.const {big}) (i32.const {n}))"),
        ),
        HostCall::Stdout(byte, n) => (
            n,
            format!("(memory.fill (i32.const {big}) (i32.const {byte}) (i32.const {n}))"),
            format!(
                "(call $write (call $stdout) (i32.const {big}) (i32.const {n}) (i32.const 32))"
            ),
        ),
        HostCall::Random(n) => (
            n,
            String::new(),
            format!("(call $random (i64.const {n}) (i32.const 48))"),
        ),
    };
    let pages = (big + size).div_ceil(1 << 16) + 1;
    let deadline_ns = deadline_ms * 1_000_000;
    let body = format!(
        r#"(local.set $t0 (call $now))
    {prepare}
    {invoke}
    (if (i64.ge_u (i64.sub (call $now) (local.get $t0)) (i64.const {deadline_ns}))
      (then (i32.store (i32.const 12) (i32.const {overran})) (i32.store (i32.const 16) (i32.const 7)))
      (else (i32.store (i32.const 12) (i32.const {within})) (i32.store (i32.const 16) (i32.const 6))))
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (local.get $args))
    (i32.store (i32.const 8) (local.get $len))
    (i32.const 0)"#
    );
    host_calls_component(&host_calls_core(pages, &data, big + size, &body))
}

/// One host call doing as much work as a guest can make it do, under
/// deadlines of 5 and 100 ms: a task either completes within its deadline
/// (the guest saw itself within it) or fails with `deadline` (or, for a
/// call carrying more than one crossing may, is refused as a trap); no
/// guest that saw itself past its deadline completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_expensive_host_call_cannot_outlast_the_deadline() {
    let _limit = crate::limit::minutes(5);
    let mut calls = Vec::new();
    for n in [1 << 20, 12 << 20, 160 << 20] {
        calls.extend([
            HostCall::Log(b'\n', n),
            HostCall::Log(b'x', n),
            HostCall::Stdout(b'\n', n),
            HostCall::Stdout(b'x', n),
        ]);
    }
    calls.extend([HostCall::Random(64 << 10), HostCall::Random(1 << 20)]);
    let mut deadlines = 0;
    for call in calls {
        for deadline_ms in [5, 100] {
            let limits = Limits {
                timeout_ms: deadline_ms,
                memory_bytes: 256 << 20,
                fuel: 10_000_000_000,
                ..tight()
            };
            let registry =
                registry_with(Guest::Bytes(deadline_guest(call, deadline_ms)), limits).await;
            let done = run_hostile(registry, &[]).await;
            let context = format!("{call:?} under {deadline_ms} ms");
            match done.state {
                TaskState::Completed => {
                    assert_eq!(
                        done.result_log, "within",
                        "{context}: completed past its deadline"
                    )
                }
                TaskState::Dead => {
                    let error = done.error.expect("dead tasks carry their error");
                    let refused = match call {
                        HostCall::Log(_, n) | HostCall::Stdout(_, n) => n > HOSTCALL_BYTES_MIN,
                        HostCall::Random(_) => false,
                    };
                    if refused && error.kind == "trap" {
                        // Past what one crossing may carry: refused whole.
                        assert!(
                            error.message.contains("too much data"),
                            "{context}: {error}"
                        );
                    } else {
                        assert_eq!(error.kind, "deadline", "{context}: {error}");
                        deadlines += 1;
                    }
                }
                other => panic!("{context}: ended {other:?}"),
            }
        }
    }
    assert!(
        deadlines > 0,
        "no call ran into its deadline: nothing was tested"
    );
}
