//! The operator routes of the HTTP API end to end: a private Redis holding
//! the catalog and the broker, the API on `127.0.0.1:0`, real components run
//! by a worker (in this process, or a `corral worker` process where what is
//! checked is what a worker process does).
//!
//! Paging with a cursor; retrying a dead task (its error kept in its
//! history) and a queue's dead tasks within the tenant's `max_queued`;
//! cancelling and deleting; pausing a queue while a worker process serves
//! it; purging by state; the workers a tenant is shown; and every route
//! answering another tenant's task or queue exactly as a missing one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::api::ApiConfig;
use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::catalog::{Catalog, RedisCatalog};
use corral::registry::Registry;
use corral::tenant::TenantLimits;
use corral::worker::WorkerConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_support::{self, Api, RedisServer, Reply};
use crate::support::redis::WorkerProcess;
use crate::support::{self, RunningWorker};

struct World {
    redis: RedisServer,
    broker: RedisBroker,
    registry: Registry,
    api: Api,
    /// Alpha's token.
    a: String,
    /// Beta's token.
    b: String,
}

async fn world(limits_a: TenantLimits) -> World {
    let redis = RedisServer::start();
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect(&redis.url())
            .await
            .expect("connect the Redis catalog"),
    );
    let a = api_support::tenant(&catalog, "alpha", limits_a).await;
    let b = api_support::tenant(&catalog, "beta", TenantLimits::default()).await;
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .expect("connect the Redis broker");
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    let api = api_support::serve(broker.clone(), registry.clone(), ApiConfig::default()).await;
    World {
        redis,
        broker,
        registry,
        api,
        a,
        b,
    }
}

impl World {
    async fn call(&self, method: Method, path: &str, token: &str) -> Reply {
        self.api.send(method, path, Some(token), None).await
    }

    /// Enqueues `job` into `queue` for `token`'s tenant, one attempt.
    async fn enqueue(&self, token: &str, job: &str, queue: &str, args: Value) -> String {
        let reply = self
            .api
            .post(
                "/v1/tasks",
                token,
                &json!({"job": job, "args": args, "queue": queue, "max_attempts": 1}),
            )
            .await;
        reply.expect(202, "");
        reply.body["task_id"].as_str().expect("task_id").to_owned()
    }

    async fn task(&self, token: &str, id: &str) -> Value {
        let reply = self.api.get(&format!("/v1/tasks/{id}"), token).await;
        reply.expect(200, "");
        reply.body
    }

    async fn stats(&self, token: &str, queue: &str) -> Value {
        let reply = self
            .api
            .get(&format!("/v1/queues/{queue}/stats"), token)
            .await;
        reply.expect(200, "");
        reply.body
    }
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["tasks"]
        .as_array()
        .expect("a task list")
        .iter()
        .map(|t| t["task_id"].as_str().expect("task_id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_list_pages_with_a_cursor() {
    let _limit = crate::limit::minutes(5);
    let w = world(TenantLimits::default()).await;
    w.api
        .register(&w.a, "j", &["noop"], json!({}))
        .await
        .expect(201, "");
    // No worker runs: all stay pending. Five in `a`, three in `b`.
    let mut in_a = Vec::new();
    for _ in 0..5 {
        in_a.push(w.enqueue(&w.a, "j", "a", json!({})).await);
    }
    let mut in_b = Vec::new();
    for _ in 0..3 {
        in_b.push(w.enqueue(&w.a, "j", "b", json!({})).await);
    }
    // The order: queue `a` then `b`, newest first in each.
    let expected: Vec<String> = in_a
        .iter()
        .rev()
        .chain(in_b.iter().rev())
        .cloned()
        .collect();

    let first = w.api.get("/v1/tasks?limit=3", &w.a).await;
    first.expect(200, "");
    assert_eq!(ids(&first), expected[..3], "{first:?}");
    assert_eq!(first.body["truncated"], false);
    let mut listed = ids(&first);
    let mut next = first.body["next"].as_str().map(str::to_owned);
    assert!(next.is_some(), "{first:?}");
    let mut pages = 1;
    while let Some(cursor) = next.take() {
        assert!(pages <= 3, "more pages than 8 tasks in threes need");
        let page = w
            .api
            .get(&format!("/v1/tasks?limit=3&cursor={cursor}"), &w.a)
            .await;
        page.expect(200, "");
        listed.extend(ids(&page));
        next = page.body["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(listed, expected);
    assert_eq!(pages, 3);
    // Filters page the same way.
    let only_b = w.api.get("/v1/tasks?queue=b&limit=2", &w.a).await;
    assert_eq!(ids(&only_b), expected[5..7]);
    let cursor = only_b.body["next"].as_str().expect("a next page");
    let rest = w
        .api
        .get(&format!("/v1/tasks?queue=b&limit=2&cursor={cursor}"), &w.a)
        .await;
    assert_eq!(ids(&rest), expected[7..]);
    assert_eq!(rest.body["next"], Value::Null);
    let none = w.api.get("/v1/tasks?state=dead", &w.a).await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // A cursor that no page gave, and a bad queue name, are 400; beta,
    // given alpha's cursor, sees nothing of alpha's.
    w.api
        .get("/v1/tasks?cursor=garbage", &w.a)
        .await
        .expect(400, "bad_request");
    w.api
        .get("/v1/tasks?queue=a%20b", &w.a)
        .await
        .expect(400, "bad_request");
    let theirs = w
        .api
        .get(
            &format!("/v1/tasks?cursor={}", first.body["next"].as_str().unwrap()),
            &w.b,
        )
        .await;
    theirs.expect(200, "");
    assert_eq!(ids(&theirs), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tasks_run_again_within_the_tenants_quota() {
    let _limit = crate::limit::minutes(5);
    let w = world(TenantLimits {
        max_queued: 2,
        ..TenantLimits::default()
    })
    .await;
    w.api
        .register(&w.a, "fails", &["fail"], json!({}))
        .await
        .expect(201, "");
    let worker = RunningWorker::start(
        w.broker.clone(),
        w.registry.clone(),
        WorkerConfig {
            queues: vec!["q".into()],
            ..support::worker_config(2)
        },
    );
    let mut dead = Vec::new();
    for n in 0..3 {
        let id = w
            .enqueue(&w.a, "fails", "q", json!({"message": format!("broke {n}")}))
            .await;
        let task = w.api.wait(&w.a, &id).await;
        assert_eq!(task["state"], "dead", "{task}");
        dead.push(id);
    }
    // Stopped, so that what runs again stays pending to be looked at.
    worker.stop().await;

    let path = |id: &str| format!("/v1/tasks/{id}/retry");
    let r = w.call(Method::POST, &path(&dead[0]), &w.a).await;
    r.expect(200, "");
    assert_eq!(r.body, json!({"task_id": dead[0], "state": "pending"}));
    let task = w.task(&w.a, &dead[0]).await;
    assert_eq!(task["state"], "pending", "{task}");
    assert_eq!(task["attempt"], 0, "{task}");
    assert!(task["error"].is_null(), "{task}");
    let history = task["error_history"].as_array().expect("an error history");
    assert_eq!(history.len(), 1, "{task}");
    assert_eq!(history[0]["kind"], "guest_error", "{task}");
    assert!(
        history[0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("fatal error: broke 0")),
        "{task}"
    );
    // Pending now: not retried again.
    w.call(Method::POST, &path(&dead[0]), &w.a)
        .await
        .expect(409, "wrong_state");
    // Two more would make three queued, past alpha's max_queued of 2:
    // refused whole, nothing moves.
    let all = w.call(Method::POST, "/v1/queues/q/retry-dead", &w.a).await;
    all.expect(429, "queue_full");
    assert_eq!(w.stats(&w.a, "q").await["dead"], 2);
    // With the first one deleted there is room.
    w.call(Method::DELETE, &format!("/v1/tasks/{}", dead[0]), &w.a)
        .await
        .expect(200, "");
    let all = w.call(Method::POST, "/v1/queues/q/retry-dead", &w.a).await;
    all.expect(200, "");
    assert_eq!(all.body, json!({"queue": "q", "retried": 2}));
    let stats = w.stats(&w.a, "q").await;
    assert_eq!(
        (stats["dead"].clone(), stats["pending"].clone()),
        (json!(0), json!(2))
    );
    for id in &dead[1..] {
        let task = w.task(&w.a, id).await;
        assert_eq!(task["state"], "pending", "{task}");
        assert_eq!(task["error_history"].as_array().map(Vec::len), Some(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_cancelled_deleted_and_purged_by_state() {
    let _limit = crate::limit::minutes(5);
    let w = world(TenantLimits::default()).await;
    w.api
        .register(&w.a, "j", &["noop"], json!({}))
        .await
        .expect(201, "");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(w.enqueue(&w.a, "j", "q", json!({})).await);
    }
    // A waiting task is cancelled at once, and only once.
    let cancel = |id: &str| format!("/v1/tasks/{id}/cancel");
    let r = w.call(Method::POST, &cancel(&ids[0]), &w.a).await;
    r.expect(200, "");
    assert_eq!(r.body, json!({"task_id": ids[0], "result": "now"}));
    let task = w.task(&w.a, &ids[0]).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    assert_eq!(task["error"]["kind"], "cancelled", "{task}");
    w.call(Method::POST, &cancel(&ids[0]), &w.a)
        .await
        .expect(409, "wrong_state");
    w.call(Method::POST, &cancel(&ids[1]), &w.a)
        .await
        .expect(200, "");
    // A cancelled task may run again.
    w.call(Method::POST, &format!("/v1/tasks/{}/retry", ids[1]), &w.a)
        .await
        .expect(200, "");
    w.call(Method::POST, &cancel(&ids[1]), &w.a)
        .await
        .expect(200, "");
    // Deleted: gone, and a second delete finds nothing.
    let del = format!("/v1/tasks/{}", ids[2]);
    let r = w.call(Method::DELETE, &del, &w.a).await;
    r.expect(200, "");
    assert_eq!(r.body, json!({"task_id": ids[2], "state": "deleted"}));
    w.api.get(&del, &w.a).await.expect(404, "task_not_found");
    w.call(Method::DELETE, &del, &w.a)
        .await
        .expect(404, "task_not_found");
    // Purge: the state is required, `active` is refused, a state that is
    // not one is 400.
    let purge = |state: &str| format!("/v1/queues/q/tasks{state}");
    w.call(Method::DELETE, &purge(""), &w.a)
        .await
        .expect(400, "bad_request");
    w.call(Method::DELETE, &purge("?state=active"), &w.a)
        .await
        .expect(409, "wrong_state");
    w.call(Method::DELETE, &purge("?state=zombie"), &w.a)
        .await
        .expect(400, "bad_request");
    let stats = w.stats(&w.a, "q").await;
    assert_eq!(
        (stats["pending"].clone(), stats["cancelled"].clone()),
        (json!(1), json!(2)),
        "{stats}"
    );
    let r = w
        .call(Method::DELETE, &purge("?state=cancelled"), &w.a)
        .await;
    r.expect(200, "");
    assert_eq!(
        r.body,
        json!({"queue": "q", "state": "cancelled", "purged": 2})
    );
    let stats = w.stats(&w.a, "q").await;
    assert_eq!(
        (stats["pending"].clone(), stats["cancelled"].clone()),
        (json!(1), json!(0)),
        "{stats}"
    );
    for id in &ids[..2] {
        w.api
            .get(&format!("/v1/tasks/{id}"), &w.a)
            .await
            .expect(404, "task_not_found");
    }
    assert_eq!(w.task(&w.a, &ids[3]).await["state"], "pending");
    // Unknown queues and names that are not queue names.
    w.call(Method::DELETE, "/v1/queues/nope/tasks?state=dead", &w.a)
        .await
        .expect(404, "queue_not_found");
    w.api
        .get("/v1/queues/a%20b/stats", &w.a)
        .await
        .expect(400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_is_skipped_by_a_running_worker_process() {
    let _limit = crate::limit::minutes(5);
    let w = world(TenantLimits::default()).await;
    w.api
        .register(&w.a, "j", &["noop"], json!({}))
        .await
        .expect(201, "");
    let log = w.redis.dir().join("worker.log");
    let mut worker = WorkerProcess::start(
        &w.redis.url(),
        "corral",
        // Short leases: the registry entry, with the tasks the worker
        // runs, is refreshed every second.
        &["--queue", "slow", "--queue", "other", "--lease", "3s"],
        log.clone(),
    );
    worker.wait_started();
    // The worker serves `slow`.
    let first = w.enqueue(&w.a, "j", "slow", json!({})).await;
    assert_eq!(w.api.wait(&w.a, &first).await["state"], "completed");

    let r = w.call(Method::POST, "/v1/queues/slow/pause", &w.a).await;
    r.expect(200, "");
    assert_eq!(r.body, json!({"queue": "slow", "paused": true}));
    let held = w.enqueue(&w.a, "j", "slow", json!({})).await;
    // A task of another queue, enqueued after, is run by the same worker:
    // it has been asking for work since, and left the paused queue alone.
    let other = w.enqueue(&w.a, "j", "other", json!({})).await;
    assert_eq!(w.api.wait(&w.a, &other).await["state"], "completed");
    let queues = w.api.get("/v1/queues", &w.a).await;
    queues.expect(200, "");
    let slow = queues.body["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["queue"] == "slow"))
        .cloned()
        .unwrap_or_else(|| panic!("no queue `slow`: {queues:?}"));
    assert_eq!(slow["tenant"], "alpha");
    assert_eq!(slow["stats"]["paused"], true, "{slow}");
    assert_eq!(slow["stats"]["pending"], 1, "{slow}");
    assert_eq!(slow["stats"]["completed"], 1, "{slow}");
    assert_eq!(w.task(&w.a, &held).await["state"], "pending");

    // The worker is shown to alpha (its queue names, without task ids),
    // not to beta, which has no queue it serves. It registers as it
    // starts, and it has run tasks since.
    let workers = w.api.get("/v1/workers", &w.a).await;
    workers.expect(200, "");
    let listed = workers.body["workers"].as_array().expect("workers");
    assert_eq!(listed.len(), 1, "{workers:?}");
    assert_eq!(listed[0]["pid"], worker.pid(), "{workers:?}");
    assert_eq!(listed[0]["queues"], json!(["slow", "other"]), "{workers:?}");
    assert_eq!(listed[0]["tasks"], json!([]), "{workers:?}");
    let none = w.api.get("/v1/workers", &w.b).await;
    none.expect(200, "");
    assert_eq!(none.body["workers"], json!([]), "{none:?}");
    // Beta's long task runs on it, in queue `other` that alpha has too: the
    // registry names it (as the operator sees), alpha is never shown its
    // id. Beta cancels it; its worker stops it.
    w.api
        .register(&w.b, "sleepy", &["sleep"], json!({"timeout_ms": 120_000}))
        .await
        .expect(201, "");
    let long = w
        .enqueue(&w.b, "sleepy", "other", json!({"ms": 60_000}))
        .await;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let registry = w.broker.workers().await.expect("the workers registry");
        if registry
            .iter()
            .any(|r| r.tasks.iter().any(|t| t.to_string() == long))
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the worker never listed beta's task: {registry:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = w.api.get("/v1/workers", &w.a).await;
    assert_eq!(seen.body["workers"][0]["tasks"], json!([]), "{seen:?}");
    let theirs = w.api.get("/v1/workers", &w.b).await;
    assert_eq!(theirs.body["workers"][0]["queues"], json!(["other"]));
    assert_eq!(theirs.body["workers"][0]["tasks"], json!([]), "{theirs:?}");
    let r = w
        .call(Method::POST, &format!("/v1/tasks/{long}/cancel"), &w.b)
        .await;
    r.expect(200, "");
    assert_eq!(r.body["result"], "requested", "{r:?}");
    assert_eq!(r.body["worker"], listed[0]["id"], "{r:?}");
    let give_up = Instant::now() + Duration::from_secs(60);
    while w.task(&w.b, &long).await["state"] != "cancelled" {
        assert!(Instant::now() < give_up, "beta's task was never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resumed, the held task runs.
    let r = w.call(Method::POST, "/v1/queues/slow/resume", &w.a).await;
    r.expect(200, "");
    assert_eq!(r.body, json!({"queue": "slow", "paused": false}));
    assert_eq!(w.api.wait(&w.a, &held).await["state"], "completed");
    assert_eq!(w.stats(&w.a, "slow").await["paused"], false);
    assert!(worker.stop(), "the worker exited cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_tasks_and_queues_answer_as_missing_ones() {
    let _limit = crate::limit::minutes(5);
    let w = world(TenantLimits::default()).await;
    w.api
        .register(&w.a, "j", &["noop"], json!({}))
        .await
        .expect(201, "");
    w.api
        .register(&w.b, "j", &["noop"], json!({}))
        .await
        .expect(201, "");
    // Alpha: a pending task in its queue `secret`; beta has a queue of its
    // own, so it is a tenant with tasks, not an empty one.
    let task = w.enqueue(&w.a, "j", "secret", json!({})).await;
    w.enqueue(&w.b, "j", "mine", json!({})).await;
    let missing = "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10";
    let routes = |id: &str, queue: &str| -> Vec<(Method, String)> {
        vec![
            (Method::POST, format!("/v1/tasks/{id}/retry")),
            (Method::POST, format!("/v1/tasks/{id}/cancel")),
            (Method::DELETE, format!("/v1/tasks/{id}")),
            (Method::GET, format!("/v1/queues/{queue}/stats")),
            (Method::POST, format!("/v1/queues/{queue}/pause")),
            (Method::POST, format!("/v1/queues/{queue}/resume")),
            (Method::POST, format!("/v1/queues/{queue}/retry-dead")),
            (
                Method::DELETE,
                format!("/v1/queues/{queue}/tasks?state=pending"),
            ),
        ]
    };
    for ((method, theirs), (_, unknown)) in routes(&task, "secret")
        .into_iter()
        .zip(routes(missing, "never-used"))
    {
        let r1 = w.call(method.clone(), &theirs, &w.b).await;
        let r2 = w.call(method.clone(), &unknown, &w.b).await;
        assert_eq!(r1.status.as_u16(), 404, "{method} {theirs}: {r1:?}");
        assert_eq!(
            (
                r1.status,
                r1.kind(),
                r1.message()
                    .replace(&task, missing)
                    .replace("secret", "never-used")
            ),
            (r2.status, r2.kind(), r2.message().to_owned()),
            "{method} {theirs}"
        );
        assert!(!r1.message().contains("alpha"), "{r1:?}");
    }
    // Nothing of alpha's changed, and beta's lists hold none of it.
    let t = w.task(&w.a, &task).await;
    assert_eq!(t["state"], "pending", "{t}");
    let stats = w.stats(&w.a, "secret").await;
    assert_eq!(
        (stats["pending"].clone(), stats["paused"].clone()),
        (json!(1), json!(false))
    );
    let queues = w.api.get("/v1/queues", &w.b).await;
    let names: BTreeSet<&str> = queues.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["queue"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["mine"]), "{queues:?}");
    // The same requests as alpha reach its things (a route broken for
    // everyone cannot pass above).
    for (method, path, status) in [
        (Method::GET, "/v1/queues/secret/stats".to_owned(), 200),
        (Method::POST, "/v1/queues/secret/pause".to_owned(), 200),
        (Method::POST, "/v1/queues/secret/resume".to_owned(), 200),
        (Method::POST, "/v1/queues/secret/retry-dead".to_owned(), 200),
        (
            Method::DELETE,
            "/v1/queues/secret/tasks?state=dead".to_owned(),
            200,
        ),
        (Method::POST, format!("/v1/tasks/{task}/retry"), 409),
        (Method::POST, format!("/v1/tasks/{task}/cancel"), 200),
        (Method::DELETE, format!("/v1/tasks/{task}"), 200),
    ] {
        let r = w.call(method.clone(), &path, &w.a).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {r:?}");
    }
}
