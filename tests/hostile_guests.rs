//! Hostile guests: every way a handler can misbehave, each run through a real
//! worker on the embedded broker, each ending as its own error kind, with the
//! worker alive and the next task on it unaffected.
//!
//! The guests are the hostile jobs in `jobs/` (built by `jobs/build.sh`) and
//! small hand-written WAT modules, made into components here with
//! `wit-component` (the cheapest way to get an `unreachable`, an import the
//! host lacks, or a component of another world). Hostile inputs to the
//! loader (a core module, random bytes) and hostile files in the disk cache
//! (corrupt, truncated, foreign) are here too.
//!
//! Every wait is bounded and every limit short; nothing here asserts a time
//! but how soon a cancelled call stops (`hostile_guests/cancel.rs`), which is
//! the requirement itself.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use corral::broker::{Broker, EmbeddedBroker};
use corral::registry::{HandlerSpec, Registry, RegistryError};
use corral::sandbox::{
    CallContext, HandlerFailure, Limits, LoadError, LoadSource, ModuleHash, Sandbox, SandboxConfig,
};
use corral::task::{ArgsMap, Task, TaskError, TaskState};
use corral::worker::{RetryPolicy, Worker, WorkerConfig};
use corral::{Client, TaskId};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TENANT: &str = "default";

/// The contract, for building WAT fixtures into components.
const JOB_WIT: &str = include_str!("../wit/job.wit");

#[path = "common/interpreters.rs"]
mod interpreters;
#[path = "common/limit.rs"]
mod limit;

// Guest text bounded and inert; deadlines inside host calls.
#[path = "hostile_guests/text_and_deadlines.rs"]
mod text_and_deadlines;

// Calls cancelled from outside while they compute or wait.
#[path = "hostile_guests/cancel.rs"]
mod cancel;

// Python and JavaScript guests held by the same limits.
#[path = "hostile_guests/polyglot.rs"]
mod polyglot;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// One sandbox for the whole test binary, as a worker process has one
/// engine: each module compiles once however many tests use it.
fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Sandbox::new(SandboxConfig {
                max_instances: 64,
                ..SandboxConfig::default()
            })
            .expect("sandbox")
        })
        .clone()
}

fn job_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../jobs/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it builds jobs/ with jobs/build.sh and `corral build`)",
        path.display()
    );
    path
}

fn job_bytes(name: &str) -> Vec<u8> {
    std::fs::read(job_path(name)).expect("read job component")
}

/// Short limits for hostile runs: nothing here may take long.
fn tight() -> Limits {
    Limits {
        fuel: 100_000_000,
        memory_bytes: 32 << 20,
        timeout_ms: 1_000,
        ..Limits::default()
    }
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 1,
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: 0.5,
        },
        block_for: Duration::from_millis(100),
        maintain_every: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// A worker running in the background until [`RunningWorker::stop`].
struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), corral::broker::BrokerError>>,
}

impl RunningWorker {
    fn start<B: Broker + Clone>(broker: B, registry: Registry, config: WorkerConfig) -> Self {
        let worker = Worker::new(broker, registry, config);
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle
            .await
            .expect("worker task")
            .expect("worker ran cleanly");
    }
}

async fn wait<B: Broker>(client: &Client<B>, id: TaskId) -> Task {
    client
        .wait(TENANT, id, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"))
}

/// What a hostile job is made of.
enum Guest {
    /// A built job from `jobs/dist`.
    Job(&'static str),
    /// Component bytes made in the test.
    Bytes(Vec<u8>),
}

/// A registry over the shared sandbox with `guest` registered as job
/// `hostile` (under `limits`) and the `counter` job as `counter`.
async fn registry_with(guest: Guest, limits: Limits) -> Registry {
    registry_on(sandbox(), guest, limits).await
}

/// [`registry_with`] on a sandbox of the test's own.
async fn registry_on(sandbox: Sandbox, guest: Guest, limits: Limits) -> Registry {
    let registry = Registry::new(sandbox);
    let hostile = match guest {
        Guest::Job(name) => registry
            .add_module_file(TENANT, &job_path(name))
            .await
            .expect("add hostile module"),
        Guest::Bytes(bytes) => registry
            .add_module(TENANT, &bytes)
            .await
            .expect("add hostile module"),
    };
    let counter = registry
        .add_module_file(TENANT, &job_path("counter"))
        .await
        .expect("add counter module");
    registry
        .register(TENANT, "hostile", vec![spec("hostile", hostile)], limits)
        .await
        .expect("register hostile job");
    registry
        .register(
            TENANT,
            "counter",
            vec![spec("counter", counter)],
            Limits::default(),
        )
        .await
        .expect("register counter job");
    registry
}

fn spec(name: &str, module: ModuleHash) -> HandlerSpec {
    HandlerSpec {
        name: name.into(),
        module,
    }
}

/// Runs one `hostile` task (one attempt) on a worker with a single slot,
/// then a `counter` task on the same worker, and checks that one completed
/// normally in a fresh instance. Returns the hostile task as it ended.
async fn run_hostile(registry: Registry, args: &[(&str, Value)]) -> Task {
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let mut builder = client.task("hostile").max_attempts(1);
    for (name, value) in args {
        builder = builder.arg(name, value).expect("arg");
    }
    let hostile = builder.build();
    client.enqueue(hostile.clone()).await.expect("enqueue");
    let worker = RunningWorker::start(broker, registry, worker_config());
    let done = wait(&client, hostile.task_id).await;

    // The same worker, with its only slot, runs the next task normally.
    let next = client
        .task("counter")
        .arg("after", "hostile")
        .expect("arg")
        .build();
    client.enqueue(next.clone()).await.expect("enqueue");
    let next_done = wait(&client, next.task_id).await;
    worker.stop().await;
    assert_eq!(
        next_done.state,
        TaskState::Completed,
        "{:?}",
        next_done.error
    );
    assert_eq!(
        next_done.args_map["count"], 1,
        "the next task got a fresh instance"
    );
    assert_eq!(next_done.args_map["after"], "hostile");
    done
}

/// [`run_hostile`] for a guest expected to fail: its error.
async fn failed(guest: Guest, args: &[(&str, Value)], limits: Limits) -> TaskError {
    let done = run_hostile(registry_with(guest, limits).await, args).await;
    assert_eq!(done.state, TaskState::Dead, "{done:?}");
    assert_eq!(done.attempt, 1);
    let error = done.error.expect("a dead task carries its error");
    assert_eq!(error.handler_index, Some(0), "{error}");
    assert!(
        error
            .message
            .contains("handler 0 (`hostile`) of job `hostile`"),
        "{error}"
    );
    error
}

/// [`run_hostile`] for a guest expected to succeed: the finished task.
async fn completed(guest: Guest, args: &[(&str, Value)], limits: Limits) -> Task {
    let done = run_hostile(registry_with(guest, limits).await, args).await;
    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    done
}

fn context() -> CallContext {
    CallContext {
        task_id: "t".into(),
        job: "j".into(),
        tenant: TENANT.into(),
        attempt: 1,
        handler_index: 0,
        handler_count: 1,
    }
}

// ---------------------------------------------------------------------------
// WAT fixtures made into components
// ---------------------------------------------------------------------------

/// A core module for the handler world's ABI: a memory, a bump allocator
/// (`cabi_realloc`), and `handle(ctx: 9 x i32, args: ptr, len) -> ptr`, whose
/// body is `body` (it must leave the result pointer on the stack). The
/// result area at 0..20 is `result<output, error>`: tag, args ptr/len, log
/// ptr/len. `imports` and `data` are spliced in as they are.
fn handler_core(imports: &str, data: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  {data}
  (global $next (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $next (i32.add (local.get $ptr) (local.get 3)))
    (if (i32.gt_u (global.get $next) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (global.get $next) (i32.const 16)) (i32.const 1))) (i32.const -1))
          (then unreachable))))
    (local.get $ptr))
  (func (export "handle")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (param $args i32) (param $len i32)
    (result i32)
    {body})
)"#
    )
}

/// The body of a `handle` that succeeds, returning its args and no log.
const RETURN_ARGS: &str = r#"
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (local.get $args))
    (i32.store (i32.const 8) (local.get $len))
    (i32.store (i32.const 12) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.const 0)"#;

/// Encodes `core_wat` as a component of `world` (in package `corral:job`,
/// after `extra_wit` is appended to the contract; `deps` are other WIT
/// packages pushed first).
fn component(core_wat: &str, deps: &[&str], extra_wit: &str, world: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    for (i, dep) in deps.iter().enumerate() {
        resolve
            .push_source(&format!("dep{i}.wit"), dep)
            .expect("parse dependency WIT");
    }
    let package = resolve
        .push_source("job.wit", &format!("{JOB_WIT}\n{extra_wit}"))
        .expect("parse WIT");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("select world");
    let mut module = wat::parse_str(core_wat).expect("parse WAT");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("embed metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("component module")
        .validate(true)
        .encode()
        .expect("encode component")
}

// ---------------------------------------------------------------------------
// Runaway computation and waiting
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_runs_out_of_fuel() {
    let _limit = crate::limit::minutes(5);
    let limits = Limits {
        fuel: 20_000_000,
        timeout_ms: 30_000,
        ..tight()
    };
    let error = failed(Guest::Job("spin"), &[], limits).await;
    assert_eq!(error.kind, "out_of_fuel", "{error}");
    assert!(
        error.message.contains("ran out of fuel (20000000 units)"),
        "{error}"
    );
    assert!(!error.retryable, "a loop will loop again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_wait_is_stopped_at_its_deadline() {
    let _limit = crate::limit::minutes(5);
    // Fuel enough for minutes of spinning: only the deadline can stop it.
    let limits = Limits {
        fuel: 10_000_000_000,
        timeout_ms: 300,
        ..tight()
    };
    let error = failed(Guest::Job("busy_wait"), &[("ms", json!(60_000))], limits).await;
    assert_eq!(error.kind, "deadline", "{error}");
    assert!(
        error.message.contains("exceeded its deadline of 300 ms"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_is_stopped_at_its_deadline() {
    let _limit = crate::limit::minutes(5);
    let limits = Limits {
        timeout_ms: 300,
        ..tight()
    };
    let error = failed(Guest::Job("sleep"), &[("ms", json!(60_000))], limits).await;
    assert_eq!(error.kind, "deadline", "{error}");
    assert!(
        error.message.contains("exceeded its deadline of 300 ms"),
        "{error}"
    );
}

/// One runtime thread, two tasks at once: a guest busy-waiting for seconds
/// and a trivial one enqueued after it. The trivial task can only finish
/// first if the busy guest yields its thread (at epoch ticks).
#[tokio::test(flavor = "current_thread")]
async fn a_computing_guest_does_not_block_other_tasks_on_its_thread() {
    let _limit = crate::limit::minutes(5);
    let registry = registry_with(
        Guest::Job("busy_wait"),
        Limits {
            fuel: 10_000_000_000,
            timeout_ms: 20_000,
            ..tight()
        },
    )
    .await;
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let busy = client
        .task("hostile")
        .arg("ms", &2_000)
        .expect("arg")
        .max_attempts(1)
        .build();
    client.enqueue(busy.clone()).await.expect("enqueue");
    let config = WorkerConfig {
        concurrency: 2,
        ..worker_config()
    };
    let worker = RunningWorker::start(broker, registry, config);
    // Wait until the busy guest holds its slot.
    for _ in 0..1_000 {
        let task = client.status(TENANT, busy.task_id).await.expect("status");
        if task.is_some_and(|t| t.state == TaskState::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let quick = client.task("counter").build();
    client.enqueue(quick.clone()).await.expect("enqueue");
    let quick_done = wait(&client, quick.task_id).await;
    let busy_now = client
        .status(TENANT, busy.task_id)
        .await
        .expect("status")
        .expect("busy task known");
    assert_eq!(
        quick_done.state,
        TaskState::Completed,
        "{:?}",
        quick_done.error
    );
    assert_eq!(
        busy_now.state,
        TaskState::Active,
        "the quick task finished while the busy guest was still running"
    );
    let busy_done = wait(&client, busy.task_id).await;
    worker.stop().await;
    assert_eq!(
        busy_done.state,
        TaskState::Completed,
        "{:?}",
        busy_done.error
    );
}

// ---------------------------------------------------------------------------
// Memory and stack
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_memory_limit() {
    let _limit = crate::limit::minutes(5);
    let error = failed(Guest::Job("memory_bomb"), &[], tight()).await;
    assert_eq!(error.kind, "memory_limit", "{error}");
    assert!(
        error.message.contains("over its limit of 33554432"),
        "{error}"
    );
    assert!(!error.retryable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_overflows_the_stack() {
    let _limit = crate::limit::minutes(5);
    let error = failed(Guest::Job("recurse"), &[], tight()).await;
    assert_eq!(error.kind, "stack_overflow", "{error}");
    assert!(error.message.contains("overflowed its stack"), "{error}");
}

// ---------------------------------------------------------------------------
// Traps
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_with_its_message() {
    let _limit = crate::limit::minutes(5);
    let error = failed(Guest::Job("panic"), &[], tight()).await;
    assert_eq!(error.kind, "panic", "{error}");
    assert!(
        error.message.contains("panicked: hostile panic (at "),
        "{error}"
    );
    assert!(!error.retryable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_instruction_traps() {
    let _limit = crate::limit::minutes(5);
    let core = handler_core("", "", "unreachable");
    let bytes = component(&core, &[], "", "handler");
    let error = failed(Guest::Bytes(bytes), &[], tight()).await;
    assert_eq!(error.kind, "trap", "{error}");
    assert!(error.message.contains("unreachable"), "{error}");
}

// ---------------------------------------------------------------------------
// Output and logs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_output_is_refused() {
    let _limit = crate::limit::minutes(5);
    // big_output needs about 5x `bytes` of memory: 256 KiB fits easily in
    // 32 MiB, and is four times the output limit.
    let limits = Limits {
        max_output_bytes: 64 << 10,
        ..tight()
    };
    let error = failed(
        Guest::Job("big_output"),
        &[("bytes", json!(256 << 10))],
        limits,
    )
    .await;
    assert_eq!(error.kind, "output_too_large", "{error}");
    assert!(error.message.contains("over its limit of 65536"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_stdout_is_capped_at_the_default_budget_and_noted() {
    let _limit = crate::limit::minutes(5);
    let limits = Limits::default();
    assert_eq!(limits.max_log_bytes, 64 << 10, "the documented default");
    let done = completed(Guest::Job("big_log"), &[("bytes", json!(1 << 20))], limits).await;
    assert_eq!(
        done.result_log.trim(),
        "big-log: wrote 1048576 bytes to stdout"
    );
    let kept: Vec<&str> = done
        .log
        .lines()
        .filter(|l| l.starts_with("[0:hostile][stdout] big-log line "))
        .collect();
    assert!(!kept.is_empty(), "{}", done.log);
    // Lines are kept in order from the start, as many as fit the budget.
    assert!(kept[0].contains("line 00000000"), "{}", kept[0]);
    let kept_bytes: usize = kept.iter().map(|l| l.len() - "[0:hostile]".len() + 1).sum();
    assert!(kept_bytes <= 64 << 10, "{kept_bytes} bytes kept");
    assert!(kept_bytes > 60 << 10, "only {kept_bytes} bytes kept");
    let note = done
        .log
        .lines()
        .find(|l| l.contains("log truncated"))
        .unwrap_or_else(|| panic!("no truncation note in {}", done.log));
    assert!(note.contains("past the 65536-byte budget"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_budget_is_configurable_per_job() {
    let _limit = crate::limit::minutes(5);
    let limits = Limits {
        max_log_bytes: 1_000,
        ..tight()
    };
    let done = completed(Guest::Job("big_log"), &[("bytes", json!(100_000))], limits).await;
    let stdout_lines = done.log.lines().filter(|l| l.contains("[stdout] ")).count();
    // 80-byte lines plus a 9-byte label: 11 fit in 1,000 bytes.
    assert_eq!(stdout_lines, 11, "{}", done.log);
    assert!(
        done.log.contains("past the 1000-byte budget"),
        "{}",
        done.log
    );
}

/// A job cannot buy itself an unbounded log: the budget it asks for is
/// capped at the sandbox's ceiling (1 MiB by default), since the log lives in
/// host memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_budget_above_the_sandbox_ceiling_is_capped() {
    let _limit = crate::limit::minutes(5);
    // The tenant's own ceiling (1 MiB by default) refuses a larger budget at
    // registration; a sandbox whose ceiling sits below it must still cap it.
    let ceiling: u64 = 256 << 10;
    let sandbox = Sandbox::new(SandboxConfig {
        max_log_bytes: ceiling,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let limits = Limits {
        max_log_bytes: 1 << 20,
        ..Limits::default()
    };
    let registry = registry_on(sandbox, Guest::Job("big_log"), limits).await;
    let done = run_hostile(registry, &[("bytes", json!(2 << 20))]).await;
    assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    assert!(
        done.log
            .contains(&format!("past the {ceiling}-byte budget")),
        "{}",
        &done.log[done.log.len().saturating_sub(300)..]
    );
    let kept: usize = done
        .log
        .lines()
        .filter(|l| l.starts_with("[0:hostile][stdout] "))
        .map(|l| l.len() - "[0:hostile]".len() + 1)
        .sum();
    assert!(kept as u64 <= ceiling, "{kept} bytes kept");
}

/// A guest calling the `host.log` import in a loop: 100,000 lines of 100
/// bytes. The task's log keeps what fits its budget and says how much was
/// dropped; the task itself succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_through_the_host_import_is_capped() {
    let _limit = crate::limit::minutes(5);
    let message = "x".repeat(100);
    let core = handler_core(
        r#"(import "corral:job/host@0.1.0" "log" (func $log (param i32 i32 i32)))"#,
        &format!(r#"(data (i32.const 1024) "{message}")"#),
        &format!(
            r#"(local $i i32)
    (loop $again
      (call $log (i32.const 2) (i32.const 1024) (i32.const 100))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 100000))))
    {RETURN_ARGS}"#
        ),
    );
    let bytes = component(&core, &[], "", "handler");
    let limits = Limits {
        max_log_bytes: 4 << 10,
        ..tight()
    };
    let done = completed(Guest::Bytes(bytes), &[("x", json!(1))], limits).await;
    assert_eq!(done.args_map["x"], 1);
    let kept = done
        .log
        .lines()
        .filter(|l| l.contains("[info] xxxx"))
        .count();
    assert_eq!(kept, 37, "108-byte lines in a 4 KiB budget: {}", done.log);
    assert!(
        done.log.contains("past the 4096-byte budget"),
        "{}",
        done.log
    );
}

// ---------------------------------------------------------------------------
// Reaching outside
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_out_of_reach() {
    let _limit = crate::limit::minutes(5);
    let done = completed(Guest::Job("open_file"), &[], tight()).await;
    // No preopened directory, so wasi-libc finds no capability to open any
    // path through, for reading, listing and creating alike. Which error it
    // reports depends on the wasi-libc the guest was built with: ENOTCAPABLE
    // (76) from a WASI preview-1 libc (Debian's; the component carries the
    // adapter), ENOENT (44) from a WASI 0.2 one (rustup's wasm32-wasip2).
    for attempt in ["file", "dir", "create"] {
        let outcome = done.args_map[attempt].as_str().unwrap_or_default();
        assert_ne!(outcome, "opened", "{attempt} was not refused");
        assert!(
            outcome.contains("Capabilities insufficient (os error 76)")
                || outcome.contains("No such file or directory (os error 44)"),
            "{attempt}: {outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_is_out_of_reach() {
    let _limit = crate::limit::minutes(5);
    let done = completed(Guest::Job("socket"), &[], tight()).await;
    for attempt in ["tcp", "udp"] {
        let outcome = done.args_map[attempt].as_str().unwrap_or_default();
        assert!(outcome.contains("access-denied"), "{attempt}: {outcome}");
    }
}

/// No environment, arguments, working directory or stdin; clocks and
/// random are granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_empty_but_clocks_and_random_work() {
    let _limit = crate::limit::minutes(5);
    let done = completed(Guest::Job("wasi_probe"), &[], tight()).await;
    let got = &done.args_map;
    assert_eq!(got["env"], json!([]), "{got:?}");
    assert_eq!(got["argv"], json!([]), "{got:?}");
    assert_eq!(got["cwd"], Value::Null, "{got:?}");
    assert_eq!(got["stdin"], "closed", "{got:?}");
    assert_eq!(got["random_bytes"], 32, "{got:?}");
    assert!(
        got["wall_clock_secs"].as_u64().unwrap_or(0) > 1_577_836_800,
        "wall clock after 2020: {got:?}"
    );
    assert_eq!(got["monotonic_advances"], true, "{got:?}");
}

// ---------------------------------------------------------------------------
// Components the host must refuse
// ---------------------------------------------------------------------------

/// Adds `bytes` as a module; the error it was refused with.
async fn refused(bytes: &[u8]) -> LoadError {
    let registry = Registry::new(sandbox());
    match registry.add_module(TENANT, bytes).await {
        Err(RegistryError::Module(e)) => e,
        other => panic!("expected a load error, got {other:?}"),
    }
}

/// A handler that imports `corral:job/secret-store`, which the host does
/// not provide.
fn imports_secret_store() -> Vec<u8> {
    let core = handler_core(
        r#"(import "corral:job/secret-store@0.1.0" "get" (func $get (param i32 i32 i32)))"#,
        "",
        &format!("(call $get (i32.const 0) (i32.const 0) (i32.const 64)) {RETURN_ARGS}"),
    );
    component(
        &core,
        &[],
        "interface secret-store { get: func(name: string) -> string; }\n\
         world with-secrets { include handler; import secret-store; }",
        "with-secrets",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_what_the_host_lacks_is_refused() {
    let _limit = crate::limit::minutes(5);
    let error = refused(&imports_secret_store()).await;
    assert_eq!(error.kind(), "unsupported_import", "{error}");
    assert!(
        error.to_string().contains("corral:job/secret-store"),
        "{error}"
    );

    // The same with a WASI interface the host does not link.
    let core = handler_core(
        r#"(import "wasi:keyvalue/store@0.2.0-draft" "get" (func $get (param i32 i32 i32)))"#,
        "",
        &format!("(call $get (i32.const 0) (i32.const 0) (i32.const 64)) {RETURN_ARGS}"),
    );
    let keyvalue = "package wasi:keyvalue@0.2.0-draft;\n\
                    interface store { get: func(key: string) -> option<string>; }";
    let bytes = component(
        &core,
        &[keyvalue],
        "world with-keyvalue { include handler; import wasi:keyvalue/store@0.2.0-draft; }",
        "with-keyvalue",
    );
    let error = refused(&bytes).await;
    assert_eq!(error.kind(), "unsupported_import", "{error}");
    assert!(error.to_string().contains("wasi:keyvalue/store"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_world_is_refused() {
    let _limit = crate::limit::minutes(5);
    // `handle` with another type.
    let core = r#"(module
      (memory (export "memory") 1)
      (func (export "handle") (param i32) (result i32) (local.get 0)))"#;
    let bytes = component(
        core,
        &[],
        "world other-handle { export handle: func(x: u32) -> u32; }",
        "other-handle",
    );
    let error = refused(&bytes).await;
    assert_eq!(error.kind(), "wrong_world", "{error}");
    assert!(error.to_string().contains("handle"), "{error}");

    // No `handle` at all.
    let core = r#"(module (func (export "run")))"#;
    let bytes = component(
        core,
        &[],
        "world no-handle { export run: func(); }",
        "no-handle",
    );
    let error = refused(&bytes).await;
    assert_eq!(error.kind(), "wrong_world", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_module_is_refused() {
    let _limit = crate::limit::minutes(5);
    let module = wat::parse_str(handler_core("", "", RETURN_ARGS)).expect("parse WAT");
    let error = refused(&module).await;
    assert_eq!(error.kind(), "core_module", "{error}");
    assert_eq!(error, LoadError::CoreModule);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_are_refused() {
    let _limit = crate::limit::minutes(5);
    // Deterministic noise (xorshift), no wasm magic.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_eq!(refused(&noise).await, LoadError::NotWasm);
    assert_eq!(refused(b"").await, LoadError::NotWasm);

    // The component header followed by noise: parsed, and refused.
    let mut fake = b"\0asm\x0d\x00\x01\x00".to_vec();
    fake.extend_from_slice(&noise);
    let error = refused(&fake).await;
    assert_eq!(error.kind(), "invalid_component", "{error}");
}

/// A module that slipped past validation into the store (written by an
/// older version, or by hand) cannot run: its tasks fail with the same
/// load error registration would have given, and the worker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_stored_without_validation_fails_its_tasks_with_the_load_error() {
    let _limit = crate::limit::minutes(5);
    let registry = Registry::new(sandbox());
    let bytes = imports_secret_store();
    let hash = ModuleHash::of(&bytes);
    registry
        .catalog()
        .put_module(TENANT, &hash, &bytes)
        .await
        .expect("store module bypassing validation");
    registry
        .register(TENANT, "hostile", vec![spec("hostile", hash)], tight())
        .await
        .expect("register refers to a stored module");
    let counter = registry
        .add_module_file(TENANT, &job_path("counter"))
        .await
        .expect("add counter");
    registry
        .register(
            TENANT,
            "counter",
            vec![spec("counter", counter)],
            Limits::default(),
        )
        .await
        .expect("register counter");
    let done = run_hostile(registry, &[]).await;
    assert_eq!(done.state, TaskState::Dead);
    let error = done.error.expect("error");
    assert_eq!(error.kind, "unsupported_import", "{error}");
    assert!(!error.retryable);
    assert!(error.message.contains("corral:job/secret-store"), "{error}");
}

// ---------------------------------------------------------------------------
// Isolation between tasks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_crosses_tasks() {
    let _limit = crate::limit::minutes(5);
    let registry = registry_with(Guest::Job("noop"), Limits::default()).await;
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let tasks: Vec<Task> = (0..50)
        .map(|i| client.task("counter").arg("i", &i).expect("arg").build())
        .collect();
    client.enqueue_many(tasks.clone()).await.expect("enqueue");
    let worker = RunningWorker::start(broker, registry, worker_config());
    for (i, task) in tasks.iter().enumerate() {
        let done = wait(&client, task.task_id).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        assert_eq!(done.args_map["i"], i, "{:?}", done.args_map);
        assert_eq!(done.args_map["count"], 1, "task {i} saw a used instance");
        assert_eq!(done.result_log.trim(), "call 1 of this instance");
    }
    worker.stop().await;
}

// ---------------------------------------------------------------------------
// Limits at registration
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_have_sane_defaults_and_zero_limits_are_refused() {
    let _limit = crate::limit::minutes(5);
    let defaults = Limits::default();
    assert_eq!(defaults.memory_bytes, 64 << 20);
    assert_eq!(defaults.timeout_ms, 10_000);
    assert_eq!(defaults.max_output_bytes, 1 << 20);
    assert_eq!(defaults.max_log_bytes, 64 << 10);
    assert!(defaults.fuel >= 100_000_000);

    let registry = Registry::new(sandbox());
    let noop = registry
        .add_module_file(TENANT, &job_path("noop"))
        .await
        .expect("add noop");
    for zero in [
        Limits {
            fuel: 0,
            ..defaults
        },
        Limits {
            memory_bytes: 0,
            ..defaults
        },
        Limits {
            timeout_ms: 0,
            ..defaults
        },
        Limits {
            max_output_bytes: 0,
            ..defaults
        },
    ] {
        let error = registry
            .register(TENANT, "zero", vec![spec("noop", noop.clone())], zero)
            .await
            .expect_err("zero limit refused");
        assert!(matches!(error, RegistryError::InvalidLimits(_)), "{error}");
    }
}

/// A job's memory limit above the sandbox's slot size runs capped at the
/// slot size, never above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_above_the_sandbox_maximum_is_capped() {
    let _limit = crate::limit::minutes(5);
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 4,
        max_memory_bytes: 16 << 20,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let handler = sandbox.load(&job_bytes("memory_bomb")).expect("load");
    let limits = Limits {
        memory_bytes: 1 << 30,
        ..tight()
    };
    let error = sandbox
        .call(&handler, context(), &ArgsMap::new(), &limits)
        .await
        .expect_err("the bomb fails");
    match error.failure {
        HandlerFailure::MemoryLimit { limit, .. } => assert_eq!(limit, 16 << 20),
        other => panic!("expected memory_limit, got {other}"),
    }
}

/// More calls at once than the pool has instances: the extra call fails
/// with a retryable `instantiate` error, and the pool is whole afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_fails_the_extra_call_retryably() {
    let _limit = crate::limit::minutes(5);
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 1,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let sleep = sandbox.load(&job_bytes("sleep")).expect("load sleep");
    let noop = sandbox.load(&job_bytes("noop")).expect("load noop");
    let limits = Limits {
        timeout_ms: 500,
        ..tight()
    };
    // The sleeper holds the only instance far longer than the test runs.
    let holding = Limits {
        timeout_ms: 120_000,
        ..tight()
    };
    let mut nap = ArgsMap::new();
    nap.insert("ms".into(), json!(300_000));
    let mut holder = Box::pin(sandbox.call(&sleep, context(), &nap, &holding));
    let extra = async {
        // Once the sleeper has its instance (polled, bounded), the pool is
        // empty.
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while sandbox.instances_in_use() == 0 {
            assert!(
                std::time::Instant::now() < give_up,
                "the sleeper never got its instance"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sandbox
            .call(&noop, context(), &ArgsMap::new(), &limits)
            .await
    };
    let extra = tokio::select! {
        held = &mut holder => panic!("the sleeper ended first: {:?}", held.map(|_| ())),
        extra = extra => extra,
    };
    let failure = extra.expect_err("no instance left").failure;
    assert_eq!(failure.kind(), "instantiate", "{failure}");
    assert!(failure.is_retryable());
    // Dropping the sleeper's call ends it and frees its instance.
    drop(holder);
    assert_eq!(sandbox.instances_in_use(), 0);
    // The instance is back: the next call runs.
    sandbox
        .call(&noop, context(), &ArgsMap::new(), &limits)
        .await
        .unwrap_or_else(|e| panic!("noop after the pool freed up: {}", e.failure));
}

/// A handler compiled by one sandbox cannot run in another's engine; the
/// call fails instead of panicking inside wasmtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_from_another_sandbox_is_refused() {
    let _limit = crate::limit::minutes(5);
    let other = Sandbox::new(SandboxConfig {
        max_instances: 1,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let foreign = other.load(&job_bytes("noop")).expect("load noop");
    let error = sandbox()
        .call(&foreign, context(), &ArgsMap::new(), &Limits::default())
        .await
        .expect_err("refused");
    assert_eq!(error.failure.kind(), "instantiate", "{}", error.failure);
}

// ---------------------------------------------------------------------------
// Hostile files in the disk cache
// ---------------------------------------------------------------------------

fn cached_sandbox(dir: &Path) -> Sandbox {
    cached_sandbox_with(dir, SandboxConfig::default())
}

fn cached_sandbox_with(dir: &Path, config: SandboxConfig) -> Sandbox {
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 4,
        cache_dir: Some(dir.to_owned()),
        ..config
    })
    .expect("sandbox");
    assert_eq!(sandbox.disk_cache_dir(), Some(dir), "disk cache in use");
    sandbox
}

/// Loads noop.wasm in a new sandbox over `dir` (a restarted worker), runs
/// it, and says where it came from.
async fn load_noop_fresh(dir: &Path) -> LoadSource {
    let sandbox = cached_sandbox(dir);
    let (handler, source) = sandbox.load_traced(&job_bytes("noop")).expect("load noop");
    let mut args = ArgsMap::new();
    args.insert("k".into(), json!("v"));
    let out = sandbox
        .call(&handler, context(), &args, &Limits::default())
        .await
        .unwrap_or_else(|e| panic!("noop failed: {}", e.failure));
    // noop's behaviour, not some other module's.
    assert_eq!(out.args, args);
    source
}

/// Compiles noop.wasm into `dir`; the artifact's path.
fn artifact_of_noop(dir: &Path) -> PathBuf {
    let sandbox = cached_sandbox(dir);
    let bytes = job_bytes("noop");
    let (handler, source) = sandbox.load_traced(&bytes).expect("load noop");
    assert_eq!(source, LoadSource::Compiled);
    let path = sandbox.disk_cache_path(handler.hash()).expect("path");
    assert!(path.exists(), "{} written", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sandbox_loads_from_the_disk_cache() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    artifact_of_noop(dir.path());
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_file_is_recompiled() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = artifact_of_noop(dir.path());
    let mut bytes = std::fs::read(&path).expect("read artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt artifact");
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Compiled);
    // The bad file was replaced by a sound one.
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_cache_file_is_recompiled() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = artifact_of_noop(dir.path());
    let bytes = std::fs::read(&path).expect("read artifact");
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 0] {
        std::fs::write(&path, &bytes[..keep]).expect("truncate artifact");
        assert_eq!(
            load_noop_fresh(dir.path()).await,
            LoadSource::Compiled,
            "kept {keep} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_cache_file_is_recompiled() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let noop_path = artifact_of_noop(dir.path());

    // A sound artifact of another module (counter), under noop's name.
    let sandbox = cached_sandbox(dir.path());
    let counter = sandbox.load(&job_bytes("counter")).expect("load counter");
    let counter_path = sandbox.disk_cache_path(counter.hash()).expect("path");
    std::fs::copy(&counter_path, &noop_path).expect("plant counter's artifact");
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Compiled);

    // A sound artifact of noop from an engine with other settings (no
    // fuel metering: code that would run unmetered), under this engine's
    // name for it.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let unmetered = cached_sandbox_with(
        other_dir.path(),
        SandboxConfig {
            consume_fuel: false,
            ..SandboxConfig::default()
        },
    );
    let handler = unmetered
        .load(&job_bytes("noop"))
        .expect("load noop unmetered");
    let unmetered_path = unmetered.disk_cache_path(handler.hash()).expect("path");
    assert_ne!(
        unmetered_path.file_name(),
        noop_path.file_name(),
        "engine settings are part of the name"
    );
    std::fs::copy(&unmetered_path, &noop_path).expect("plant unmetered artifact");
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Compiled);

    // Not an artifact at all.
    std::fs::write(&noop_path, b"#!/bin/sh\necho not an artifact\n").expect("plant junk");
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Compiled);
    assert_eq!(load_noop_fresh(dir.path()).await, LoadSource::Disk);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_directory_others_can_write_is_not_used() {
    let _limit = crate::limit::minutes(5);
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 4,
        cache_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    })
    .expect("a bad cache directory does not stop the sandbox");
    assert_eq!(sandbox.disk_cache_dir(), None);
    let (_, source) = sandbox.load_traced(&job_bytes("noop")).expect("load");
    assert_eq!(source, LoadSource::Compiled);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read dir").count(),
        0,
        "nothing written to it"
    );
}
