//! Compiling uploads is bounded: shape checks refuse pathological modules
//! before anything compiles them, a compile runs in a child process of the
//! real `corral` binary under CPU, memory and wall-clock limits, compiles
//! are bounded in number per tenant and in total, other tenants' tasks keep
//! completing meanwhile, timing says nothing about other tenants' uploads,
//! and the caches of compiled code are bounded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::broker::EmbeddedBroker;
use corral::registry::Registry;
use corral::sandbox::{
    CompileConfig, CompileIsolation, Limits, LoadError, LoadSource, MAX_FUNCTION_BODY_BYTES,
    MAX_FUNCTIONS, MAX_NESTING_DEPTH, Sandbox, SandboxConfig,
};
use corral::{Client, TaskState};
use rand::{Rng as _, SeedableRng as _};

use crate::support::{self, RunningWorker, job_bytes, worker_config};

/// The `corral` binary, which compiles as its own child.
fn corral() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corral"))
}

fn sandbox_with(compile: CompileConfig) -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_instances: 16,
        compile,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

fn child(cpu: Duration, memory_bytes: u64, wall: Duration) -> CompileConfig {
    CompileConfig {
        isolation: CompileIsolation::Child { program: corral() },
        cpu_time: cpu,
        memory_bytes,
        wall_time: wall,
        ..CompileConfig::default()
    }
}

/// A component embedding one core module written as WAT fields.
fn component(fields: &str) -> Vec<u8> {
    wat::parse_str(format!("(component (core module {fields}))")).expect("generated WAT parses")
}

/// WAT fields of `functions` functions of `ops` arithmetic steps over many
/// locals, with a branch every 64 steps: inside every shape bound, yet
/// seconds of CPU to compile.
fn heavy_fields(functions: usize, ops: usize) -> String {
    let mut fields = String::new();
    for f in 0..functions {
        fields.push_str("(func (param i64) (result i64) (local i64 i64 i64 i64 i64 i64 i64 i64)");
        for i in 0..ops {
            let a = i % 8 + 1;
            let b = (i * 7 + f) % 8 + 1;
            fields.push_str(&format!(
                " (local.set {a} (i64.add (i64.mul (local.get {a}) (local.get {b})) (i64.const {i})))"
            ));
            if i % 64 == 63 {
                fields.push_str(&format!(
                    " (if (i64.eqz (local.get {a})) (then (local.set {b} (local.get 0))))"
                ));
            }
        }
        fields.push_str(" (local.get 1))");
    }
    fields
}

/// A module of 200 functions of 4,000 steps (9 MB; about 5 s of CPU and
/// 60 MiB to compile here), distinct for each `variant`.
fn slow_component(variant: usize) -> Vec<u8> {
    static FIELDS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let fields = FIELDS.get_or_init(|| heavy_fields(200, 4_000));
    component(&format!(
        "{fields} (func (result i32) (i32.const {variant}))"
    ))
}

/// A module of 20 functions of 40,000 steps: about 270 MiB to compile.
fn hungry_component() -> Vec<u8> {
    component(&heavy_fields(20, 40_000))
}

/// Pathological shapes, sized at random just past each bound: refused by
/// the shape checks, before any compile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pathological_shapes_are_refused_before_compiling() {
    let _limit = crate::limit::minutes(5);
    // A compiler that cannot start: anything reaching it would answer
    // `compiler_unavailable`, so `compile_limit` proves the shape checks
    // refused the module first.
    let sandbox = sandbox_with(CompileConfig {
        isolation: CompileIsolation::Child {
            program: PathBuf::from("/nonexistent/corral"),
        },
        ..CompileConfig::default()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for round in 0..3 {
        let depth = MAX_NESTING_DEPTH as usize + rng.random_range(1..2_000);
        let nested = component(&format!(
            "(func {} {})",
            "(block".repeat(depth),
            ")".repeat(depth)
        ));
        let functions = MAX_FUNCTIONS as usize + rng.random_range(1..1_000);
        let many = component(&"(func)".repeat(functions));
        let steps = MAX_FUNCTION_BODY_BYTES / 3 + rng.random_range(1..10_000);
        let long = component(&format!("(func {})", "(drop (i32.const 1))".repeat(steps)));
        for (what, bytes) in [("nesting", nested), ("functions", many), ("body", long)] {
            let err = sandbox
                .validate_async("hostile", bytes)
                .await
                .expect_err("refused");
            assert_eq!(err.kind(), "compile_limit", "round {round}, {what}: {err}");
            assert!(
                err.to_string().contains("refused before compiling"),
                "{what}: {err}"
            );
        }
    }
    // The control: a module inside every bound reaches the compiler.
    let err = sandbox
        .validate_async("hostile", job_bytes("noop"))
        .await
        .expect_err("no compiler");
    assert_eq!(err.kind(), "compiler_unavailable", "{err}");
}

/// A compile past its CPU time, its memory or its wall-clock time is
/// stopped and the module refused, each bound saying which it was.
async fn refused_past(limits: CompileConfig, bytes: Vec<u8>, says: &str) {
    let err = sandbox_with(limits)
        .validate_async("hostile", bytes)
        .await
        .expect_err("over the bound");
    assert_eq!(err.kind(), "compile_limit", "{err}");
    assert!(err.to_string().contains(says), "{says}: {err}");
}

const MINUTES: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_cpu_time_is_killed_and_refused() {
    let _limit = crate::limit::minutes(5);
    let limits = child(Duration::from_secs(1), 4 << 30, MINUTES);
    refused_past(limits, slow_component(0), "CPU time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_memory_is_refused() {
    let _limit = crate::limit::minutes(5);
    let limits = child(MINUTES, 96 << 20, MINUTES);
    refused_past(limits, hungry_component(), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_past_its_wall_time_is_killed_and_refused() {
    let _limit = crate::limit::minutes(5);
    let limits = child(MINUTES, 4 << 30, Duration::from_millis(300));
    refused_past(limits, slow_component(0), "wall-clock").await;
}

/// Within its bounds, a child compile gives a handler that runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_compile_gives_a_working_handler() {
    let _limit = crate::limit::minutes(5);
    let sandbox = sandbox_with(child(
        Duration::from_secs(60),
        2 << 30,
        Duration::from_secs(120),
    ));
    let (handler, source) = sandbox
        .load_async("t", job_bytes("normalize"))
        .await
        .expect("compiles in a child");
    assert_eq!(source, LoadSource::Compiled);
    let mut args = corral::task::ArgsMap::new();
    args.insert("text".into(), "Hello, World".into());
    let out = sandbox
        .call(&handler, context(), &args, &Limits::default())
        .await
        .expect("runs");
    assert_eq!(out.args.get("text"), Some(&"hello world".into()));
    // Refusals of a child compile keep their kinds.
    let mut truncated = job_bytes("noop");
    truncated.truncate(truncated.len() / 2);
    let err = sandbox
        .validate_async("t", truncated)
        .await
        .expect_err("bad");
    assert_eq!(err.kind(), "invalid_component", "{err}");
}

fn context() -> corral::sandbox::CallContext {
    corral::sandbox::CallContext {
        task_id: "t1".into(),
        job: "normalize".into(),
        tenant: "t".into(),
        attempt: 1,
        handler_index: 0,
        handler_count: 1,
    }
}

/// Counts this process's children running `program` (other tests of this
/// binary compile beside this one, each with its own program path).
fn compiles_running(program: &std::path::Path) -> usize {
    let me = std::process::id().to_string();
    let program = program.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            ppid == Some(me.as_str())
                && std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(program))
        })
        .count()
}

/// One tenant's compiles run one at a time (`max_per_owner` 1) and never
/// take every slot: another tenant's compile runs beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiles_are_bounded_per_tenant_and_in_total() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("corral-bounded");
    std::os::unix::fs::symlink(corral(), &program).expect("symlink corral");
    let sandbox = sandbox_with(CompileConfig {
        isolation: CompileIsolation::Child {
            program: program.clone(),
        },
        max_concurrent: 2,
        max_per_owner: 1,
        ..child(
            Duration::from_secs(60),
            4 << 30,
            Duration::from_millis(1_500),
        )
    });
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (seen, sampling, program) = (seen.clone(), sampling.clone(), program.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                seen.lock()
                    .expect("samples")
                    .push(compiles_running(&program));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Four distinct slow modules from one tenant: each runs to its wall
    // limit, so any overlap would be seen.
    let modules: Vec<Vec<u8>> = (0..4).map(slow_component).collect();
    let hostile: Vec<_> = modules
        .into_iter()
        .map(|bytes| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move { sandbox.validate_async("hostile", bytes).await })
        })
        .collect();
    // Until the sampler sees the first of them compiling (bounded).
    let give_up = Instant::now() + Duration::from_secs(60);
    while !seen.lock().expect("samples").contains(&1) {
        assert!(Instant::now() < give_up, "no compile ever started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let alone = seen.lock().expect("samples").clone();
    // Another tenant's compile gets the second slot beside them.
    sandbox
        .validate_async("other", job_bytes("normalize"))
        .await
        .expect("the other tenant's module compiles");
    for h in hostile {
        let err = h.await.expect("join").expect_err("over the wall bound");
        assert_eq!(err.kind(), "compile_limit", "{err}");
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let all = seen.lock().expect("samples").clone();
    assert!(
        alone.iter().all(|n| *n <= 1),
        "one tenant ran compiles at once: {alone:?}"
    );
    assert!(
        alone.contains(&1),
        "the sampler saw the compiles: {alone:?}"
    );
    assert!(all.iter().all(|n| *n <= 2), "over the total: {all:?}");
    assert!(
        all.contains(&2),
        "the other tenant compiled beside: {all:?}"
    );
}

/// While one tenant's upload compiles, another tenant's tasks keep
/// completing: compiles never hold the async runtime. The runtime has one
/// worker thread, so a compile that blocked it would let no task finish
/// until it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn other_tenants_tasks_complete_while_a_hostile_upload_compiles() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("corral-beside");
    std::os::unix::fs::symlink(corral(), &program).expect("symlink corral");
    let sandbox = sandbox_with(CompileConfig {
        isolation: CompileIsolation::Child {
            program: program.clone(),
        },
        ..child(Duration::from_secs(60), 4 << 30, Duration::from_secs(120))
    });
    let registry = Registry::new(sandbox.clone());
    registry
        .register_files(
            "default",
            "noop",
            &[support::job("noop")],
            Limits::default(),
        )
        .await
        .expect("register noop");
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let worker = RunningWorker::start(broker, registry.clone(), worker_config(4));

    let upload = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.add_module("hostile", &slow_component(0)).await })
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    while compiles_running(&program) == 0 {
        assert!(
            Instant::now() < give_up,
            "the hostile compile never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Tasks run one after another for as long as the compile does; those
    // that finish while its process is still running finished beside it.
    let mut beside = 0;
    for _ in 0..10_000 {
        let task = corral::Task::new("noop", corral::task::ArgsMap::new());
        client.enqueue(task.clone()).await.expect("enqueue");
        let task = support::wait(&client, &task, 30).await;
        assert_eq!(task.state, TaskState::Completed, "{:?}", task.error);
        if compiles_running(&program) == 0 {
            break;
        }
        beside += 1;
    }
    assert!(
        beside > 0,
        "no task completed while the hostile module compiled"
    );
    // It compiled in full, and was then refused: it was never a handler.
    let refused = upload.await.expect("join");
    assert!(
        matches!(
            refused,
            Err(corral::registry::RegistryError::Module(
                LoadError::WrongWorld(_)
            ))
        ),
        "{refused:?}"
    );
    worker.stop().await;
}

/// A tenant uploading bytes another tenant already uploaded waits as long
/// as the compile took, though nothing compiles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_does_not_reveal_another_tenants_upload() {
    let _limit = crate::limit::minutes(5);
    let sandbox = sandbox_with(child(
        Duration::from_secs(60),
        2 << 30,
        Duration::from_secs(120),
    ));
    let bytes = job_bytes("normalize");
    sandbox
        .validate_async("first", bytes.clone())
        .await
        .expect("first upload");
    let handler = sandbox
        .cached(&corral::sandbox::ModuleHash::of(&bytes))
        .expect("cached");
    let compile_time = handler.compile_time();
    assert!(compile_time > Duration::ZERO);

    let started = Instant::now();
    sandbox
        .validate_async("second", bytes.clone())
        .await
        .expect("second upload");
    let second = started.elapsed();
    assert!(
        second >= compile_time,
        "the second tenant's upload answered in {second:?}, faster than the {compile_time:?} compile"
    );
    // Not compiled again: the same handler is cached.
    let again = sandbox
        .cached(&corral::sandbox::ModuleHash::of(&bytes))
        .expect("cached");
    assert!(Arc::ptr_eq(&handler, &again));
}

/// The memory cache keeps at most its number of handlers, dropping the
/// least recently used; the disk cache keeps at most its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caches_are_bounded_least_recently_used_first() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 16,
        memory_cache_entries: 2,
        cache_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let noop = sandbox.load(&job_bytes("noop")).expect("noop");
    let counter = sandbox.load(&job_bytes("counter")).expect("counter");
    // noop is used again, so counter is now the least recent.
    assert!(sandbox.cached(noop.hash()).is_some());
    let normalize = sandbox.load(&job_bytes("normalize")).expect("normalize");
    assert_eq!(sandbox.cached_handlers(), 2);
    assert!(sandbox.cached(counter.hash()).is_none(), "counter evicted");
    assert!(sandbox.cached(noop.hash()).is_some());
    assert!(sandbox.cached(normalize.hash()).is_some());

    // The disk: room for about one artifact.
    let one = std::fs::metadata(sandbox.disk_cache_path(noop.hash()).expect("path"))
        .expect("noop artifact")
        .len();
    let small_dir = tempfile::tempdir().expect("tempdir");
    let small = Sandbox::new(SandboxConfig {
        max_instances: 16,
        cache_dir: Some(small_dir.path().to_owned()),
        disk_cache_bytes: one + one / 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    small.load(&job_bytes("noop")).expect("noop");
    std::thread::sleep(Duration::from_millis(20));
    small.load(&job_bytes("counter")).expect("counter");
    let files: Vec<_> = std::fs::read_dir(small_dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        Some(&files[0]),
        small.disk_cache_path(counter.hash()).as_ref(),
        "the newest artifact stays"
    );
}
