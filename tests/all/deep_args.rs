//! Args nested deeper than `MAX_ARG_DEPTH`, end to end on Redis: a guest
//! that returns them gets `bad_output`, and every task stays readable.
//!
//! Found by the `record` and `guest_output` fuzz targets: the host parsed
//! each returned value on its own (serde_json allows 127 levels), but the
//! checkpoint storing it wraps it two levels deeper, so the Redis record of
//! a task whose guest returned 126 or 127 levels could never be read back
//! ("corrupt record"). The guests here are tiny WAT components that return
//! one arg, `deep`, nested to a depth drawn for the run.

use corral::Client;
use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::registry::{HandlerSpec, Registry};
use corral::sandbox::Limits;
use corral::task::{ArgsMap, MAX_ARG_DEPTH, Task, TaskState};
use serde_json::Value;

use crate::support::redis::{RedisServer, unique_prefix};
use crate::support::{self, RunningWorker};

const JOB_WIT: &str = include_str!("../../wit/job.wit");

/// `[{"k":[...1...]}]`: `depth` levels, arrays and objects by turns.
fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for i in 0..depth {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            let mut map = serde_json::Map::new();
            map.insert("k".into(), v);
            Value::Object(map)
        };
    }
    v
}

/// A handler component that ignores its args and returns one arg `deep`
/// whose value is `json`.
fn returning(json: &str) -> Vec<u8> {
    let escaped = json.replace('\\', "\\\\").replace('"', "\\\"");
    let core = format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 2048) "deep")
  (data (i32.const 4096) "{escaped}")
  (global $next (mut i32) (i32.const 16384))
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
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (param i32 i32) (result i32)
    ;; The arg record at 1024: name (2048, 4), value (4096, len).
    (i32.store (i32.const 1024) (i32.const 2048))
    (i32.store (i32.const 1028) (i32.const 4))
    (i32.store (i32.const 1032) (i32.const 4096))
    (i32.store (i32.const 1036) (i32.const {len}))
    ;; ok(output): one arg at 1024, no log.
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (i32.const 1024))
    (i32.store (i32.const 8) (i32.const 1))
    (i32.store (i32.const 12) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.const 0))
)"#,
        len = json.len()
    );
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_source("job.wit", JOB_WIT).expect("parse WIT");
    let world = resolve
        .select_world(&[package], Some("handler"))
        .expect("select world");
    let mut module = wat::parse_str(core).expect("parse WAT");
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

/// Depths on both sides of the bound and up to what serde_json parses
/// alone, a few drawn afresh each run.
fn depths() -> Vec<usize> {
    let mut depths = vec![0, MAX_ARG_DEPTH, MAX_ARG_DEPTH + 1, 125, 126, 127];
    for _ in 0..4 {
        depths.push(rand::random_range(1..=127));
    }
    depths.sort_unstable();
    depths.dedup();
    depths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_too_deep_to_store_are_refused_and_every_task_stays_readable() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let broker =
        RedisBroker::connect(RedisConfig::new(server.url()).prefix(unique_prefix("deep-args")))
            .await
            .expect("connect");
    let registry = Registry::new(support::sandbox());
    let mut tasks = Vec::new();
    for depth in depths() {
        let value = nested(depth);
        let module = registry
            .add_module("default", &returning(&value.to_string()))
            .await
            .expect("add the module");
        let job = format!("deep-{depth}");
        registry
            .register(
                "default",
                &job,
                vec![HandlerSpec {
                    name: job.clone(),
                    module,
                }],
                Limits::default(),
            )
            .await
            .expect("register");
        let mut task = Task::new(job, ArgsMap::new());
        task.max_attempts = 1;
        tasks.push((depth, value, task));
    }
    let client = Client::new(broker.clone());
    client
        .enqueue_many(tasks.iter().map(|(_, _, t)| t.clone()).collect())
        .await
        .expect("enqueue");
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(2));

    for (depth, value, task) in &tasks {
        // Before the bound, `wait` failed here for 126 and 127 levels: the
        // broker called the record corrupt.
        let done = support::wait(&client, task, 60).await;
        if *depth <= MAX_ARG_DEPTH {
            assert_eq!(
                done.state,
                TaskState::Completed,
                "depth {depth}: {:?}",
                done.error
            );
            assert_eq!(done.args_map.get("deep"), Some(value), "depth {depth}");
        } else {
            assert_eq!(done.state, TaskState::Dead, "depth {depth}");
            let error = done.error.as_ref().expect("a dead task has its error");
            assert_eq!(error.kind, "bad_output", "depth {depth}: {error}");
            assert!(error.message.contains("`deep`"), "depth {depth}: {error}");
        }
        // Readable again, through the listing as well.
        let again = broker
            .task("default", task.task_id)
            .await
            .expect("the record reads back")
            .expect("the task is kept");
        assert_eq!(again.state, done.state);
    }
    let dead = broker
        .dead("default", "default", 100)
        .await
        .expect("dead set reads back");
    let too_deep = tasks.iter().filter(|(d, _, _)| *d > MAX_ARG_DEPTH).count();
    assert_eq!(dead.len(), too_deep);
    worker.stop().await;
}
