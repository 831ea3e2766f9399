//! The HTTP API end to end: real requests to a server on `127.0.0.1:0`, the
//! catalog in a private Redis, real components run by a worker.
//!
//! Authentication on every route, tenant isolation on every route (404 where
//! a 403 would reveal existence), malformed and oversized bodies, uploads of
//! hostile modules (refused at upload where that can be told, contained at
//! run time where it cannot), version pinning and per-tenant limits.

use std::sync::Arc;
use std::time::Duration;

use corral::api::ApiConfig;
use corral::broker::{RedisBroker, RedisConfig};
use corral::catalog::{Catalog, RedisCatalog};
use corral::registry::Registry;
use corral::tenant::{TenantLimits, Token};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_support::{self, Api, RedisServer};
use crate::support::{self, RunningWorker};

/// A test's world: a private Redis holding the catalog and the broker, the
/// API, two tenants.
struct World {
    redis: RedisServer,
    catalog: Arc<dyn Catalog>,
    broker: RedisBroker,
    registry: Registry,
    api: Api,
    a: String,
    b: String,
}

async fn world_with(limits_a: TenantLimits, config: ApiConfig) -> World {
    world_on(RedisServer::start(), limits_a, config).await
}

async fn world_on(redis: RedisServer, limits_a: TenantLimits, config: ApiConfig) -> World {
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
    let registry = Registry::with_catalog(support::sandbox(), catalog.clone());
    let api = api_support::serve(broker.clone(), registry.clone(), config).await;
    World {
        redis,
        catalog,
        broker,
        registry,
        api,
        a,
        b,
    }
}

async fn world() -> World {
    world_with(TenantLimits::default(), ApiConfig::default()).await
}

fn quick() -> Value {
    json!({"fuel": 200_000_000u64, "memory_bytes": 32u64 << 20, "timeout_ms": 1500})
}

/// A request: method, path, and body with its content type.
type Request = (Method, String, Option<(&'static str, Vec<u8>)>);

/// Every route with a plausible request, for the auth sweep.
fn routes(hash: &str, job: &str, task: &str) -> Vec<Request> {
    let j = |v: Value| Some(("application/json", serde_json::to_vec(&v).unwrap()));
    vec![
        (
            Method::POST,
            "/v1/modules".into(),
            Some(("application/wasm", support::job_bytes("noop"))),
        ),
        (Method::GET, format!("/v1/modules/{hash}"), None),
        (
            Method::POST,
            "/v1/jobs".into(),
            j(json!({"name": "j2", "handlers": [hash]})),
        ),
        (Method::GET, "/v1/jobs".into(), None),
        (Method::GET, format!("/v1/jobs/{job}"), None),
        (
            Method::POST,
            "/v1/tasks".into(),
            j(json!({"job": job, "args": {}})),
        ),
        (Method::GET, "/v1/tasks".into(), None),
        (Method::GET, format!("/v1/tasks/{task}"), None),
        (
            Method::GET,
            format!("/v1/tasks/{task}/wait?timeout_ms=10"),
            None,
        ),
        (Method::GET, "/v1/stats".into(), None),
        (Method::GET, "/v1/usage".into(), None),
        (Method::DELETE, format!("/v1/jobs/{job}"), None),
        (Method::GET, "/v1/tenants".into(), None),
        (Method::POST, format!("/v1/tasks/{task}/retry"), None),
        (Method::POST, format!("/v1/tasks/{task}/cancel"), None),
        (Method::DELETE, format!("/v1/tasks/{task}"), None),
        (Method::GET, "/v1/queues".into(), None),
        (Method::GET, "/v1/queues/default/stats".into(), None),
        (Method::POST, "/v1/queues/default/pause".into(), None),
        (Method::POST, "/v1/queues/default/resume".into(), None),
        (Method::POST, "/v1/queues/default/retry-dead".into(), None),
        (
            Method::DELETE,
            "/v1/queues/default/tasks?state=dead".into(),
            None,
        ),
        (Method::GET, "/v1/workers".into(), None),
        (
            Method::POST,
            "/v1/schedules".into(),
            j(json!({"name": "s", "every_secs": 60, "job": job})),
        ),
        (Method::GET, "/v1/schedules".into(), None),
        (Method::DELETE, "/v1/schedules/s".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_unique_keys_and_deadlines_through_the_api() {
    let _limit = crate::limit::minutes(5);
    let w = world_with(
        TenantLimits {
            max_schedules: 2,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let (api, a, b) = (&w.api, w.a.as_str(), w.b.as_str());
    api.register(a, "nap", &["noop"], quick())
        .await
        .expect(201, "");
    api.register(b, "nap", &["noop"], quick())
        .await
        .expect(201, "");

    // Unique keys: the second enqueue names the first task, stores nothing.
    let unique = json!({"job": "nap", "unique_key": "invoice:7", "unique_ttl_ms": 60_000});
    let first = api.post("/v1/tasks", a, &unique).await;
    first.expect(202, "");
    let again = api.post("/v1/tasks", a, &unique).await;
    again.expect(200, "");
    assert_eq!(again.body["deduplicated"], true, "{again:?}");
    assert_eq!(again.body["task_id"], first.body["task_id"]);
    assert_eq!(again.body["state"], "pending");
    // Another tenant's key of the same name is its own.
    let theirs = api.post("/v1/tasks", b, &unique).await;
    theirs.expect(202, "");
    assert!(theirs.body.get("deduplicated").is_none(), "{theirs:?}");
    for bad in [
        json!({"job": "nap", "unique_ttl_ms": 10}),
        json!({"job": "nap", "unique_key": ""}),
        json!({"job": "nap", "unique_key": "k", "unique_ttl_ms": 0}),
        json!({"job": "nap", "deadline_ms": 0}),
    ] {
        api.post("/v1/tasks", a, &bad)
            .await
            .expect(400, "bad_request");
    }

    // A deadline is stored with the task.
    let timed = api
        .post(
            "/v1/tasks",
            a,
            &json!({"job": "nap", "deadline_ms": 60_000, "priority": 7}),
        )
        .await;
    timed.expect(202, "");
    let id = timed.body["task_id"].as_str().expect("id");
    let task = api.get(&format!("/v1/tasks/{id}"), a).await;
    assert!(task.body["deadline"].is_string(), "{task:?}");
    assert_eq!(task.body["priority"], 7, "{task:?}");

    // Schedules: stored with their next tick, the tenant's own, bounded.
    let made = api
        .post(
            "/v1/schedules",
            a,
            &json!({"name": "hourly", "every_secs": 3600, "job": "nap"}),
        )
        .await;
    made.expect(201, "");
    assert!(made.body["next_tick"].is_string(), "{made:?}");
    api.post(
        "/v1/schedules",
        a,
        &json!({"name": "nightly", "cron": "0 3 * * *", "tz": "Europe/Paris", "job": "nap", "missed": "once"}),
    )
    .await
    .expect(201, "");
    api.post(
        "/v1/schedules",
        a,
        &json!({"name": "third", "every_secs": 60, "job": "nap"}),
    )
    .await
    .expect(429, "too_many_schedules");
    // Replacing one is not a new one.
    api.post(
        "/v1/schedules",
        a,
        &json!({"name": "hourly", "every_secs": 1800, "job": "nap"}),
    )
    .await
    .expect(201, "");
    for (bad, kind) in [
        (
            json!({"name": "x", "cron": "not cron", "job": "nap"}),
            "bad_request",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "tz": "Mars/Base", "job": "nap"}),
            "bad_request",
        ),
        (
            json!({"name": "x", "cron": "* * * * *", "every_secs": 5, "job": "nap"}),
            "bad_request",
        ),
        (json!({"name": "x", "job": "nap"}), "bad_request"),
        (
            json!({"name": "bad name", "every_secs": 5, "job": "nap"}),
            "bad_request",
        ),
        (
            json!({"name": "x", "every_secs": 5, "job": "nope"}),
            "job_not_found",
        ),
    ] {
        let status = if kind == "job_not_found" { 404 } else { 400 };
        api.post("/v1/schedules", b, &bad)
            .await
            .expect(status, kind);
    }
    let mine = api.get("/v1/schedules", a).await;
    mine.expect(200, "");
    let names: Vec<&str> = mine.body["schedules"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["hourly", "nightly"]);
    assert_eq!(mine.body["schedules"][0]["timing"]["every"]["secs"], 1800);
    let theirs = api.get("/v1/schedules", b).await;
    assert_eq!(theirs.body["schedules"], json!([]));
    api.send(Method::DELETE, "/v1/schedules/hourly", Some(b), None)
        .await
        .expect(404, "schedule_not_found");
    let gone = api
        .send(Method::DELETE, "/v1/schedules/hourly", Some(a), None)
        .await;
    assert_eq!(gone.status.as_u16(), 204, "{gone:?}");
    let left = api.get("/v1/schedules", a).await;
    assert_eq!(left.body["schedules"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_through_the_api_are_the_tenants_own_and_bounded() {
    let _limit = crate::limit::minutes(5);
    let w = world_with(
        TenantLimits {
            max_workflows: 2,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let (api, a, b) = (&w.api, w.a.as_str(), w.b.as_str());
    api.register(a, "nap", &["noop"], quick())
        .await
        .expect(201, "");
    let chord = json!({"flow": {"chord": {
        "group": [{"task": {"job": "nap", "args": {"n": 1}}}, {"task": {"job": "nap", "args": {"n": 2}}}],
        "callback": {"task": {"job": "nap"}}
    }}, "on_failure": "wait"});
    let made = api.post("/v1/workflows", a, &chord).await;
    made.expect(202, "");
    assert_eq!(made.body["state"], "running");
    let id = made.body["workflow_id"].as_str().expect("an id").to_owned();
    let shown = api.get(&format!("/v1/workflows/{id}"), a).await;
    shown.expect(200, "");
    assert_eq!(shown.body["on_failure"], "wait");
    let steps = shown.body["steps"].as_array().expect("steps");
    let states: Vec<&str> = steps
        .iter()
        .map(|s| s["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["enqueued", "enqueued", "waiting"]);
    // The members are tasks of the tenant, pinned to the job's version.
    let member = steps[0]["task_id"].as_str().expect("task id");
    let task = api.get(&format!("/v1/tasks/{member}"), a).await;
    task.expect(200, "");
    assert_eq!(task.body["job_version"], 1);
    assert_eq!(task.body["workflow"]["step"], 0);
    // Another tenant sees neither the workflow nor its tasks.
    api.get(&format!("/v1/workflows/{id}"), b)
        .await
        .expect(404, "workflow_not_found");
    api.get(&format!("/v1/tasks/{member}"), b)
        .await
        .expect(404, "task_not_found");
    let theirs = api.get("/v1/workflows", b).await;
    assert_eq!(theirs.body["workflows"], json!([]));
    let mine = api.get("/v1/workflows", a).await;
    assert_eq!(mine.body["workflows"][0]["id"], json!(id));
    // Bounded: max_workflows is 2.
    api.post("/v1/workflows", a, &chord).await.expect(202, "");
    api.post("/v1/workflows", a, &chord)
        .await
        .expect(429, "too_many_workflows");
    for (bad, status, kind) in [
        (json!({"flow": {"group": []}}), 400, "bad_request"),
        (
            json!({"flow": {"task": {"job": "nope"}}}),
            404,
            "job_not_found",
        ),
        (
            json!({"flow": {"task": {"job": "nap", "max_attempts": 0}}}),
            400,
            "bad_request",
        ),
        (
            json!({"flow": {"task": {"job": "nap", "queue": "a b"}}}),
            400,
            "bad_request",
        ),
        (
            json!({"flow": {"task": {"job": "nap"}}, "extra": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"flow": {"task": {"job": "nap", "version": 9}}}),
            404,
            "job_version_not_found",
        ),
    ] {
        api.post("/v1/workflows", b, &bad)
            .await
            .expect(status, kind);
    }
    api.get("/v1/workflows/not-a-uuid", a)
        .await
        .expect(404, "workflow_not_found");
    // Steps in more queues than the tenant may have: refused up front.
    let wide: Vec<Value> = (0..101)
        .map(|q| json!({"task": {"job": "nap", "queue": format!("q{q}")}}))
        .collect();
    let refused = api
        .post("/v1/workflows", a, &json!({"flow": {"group": wide}}))
        .await;
    refused.expect(400, "bad_request");
    assert!(refused.body.to_string().contains("queues"), "{refused:?}");

    // A job's rate limit: the tenant's own job only, stored in the broker.
    let set = api
        .send(
            Method::PUT,
            "/v1/jobs/nap/rate-limit",
            Some(a),
            Some((
                "application/json",
                br#"{"tasks": 5, "per_ms": 1000}"#.to_vec(),
            )),
        )
        .await;
    set.expect(200, "");
    assert_eq!(set.body["rate_limit"]["tasks"], 5);
    let limit = corral::broker::RateLimit {
        tasks: 5,
        per_ms: 1000,
    };
    use corral::broker::Broker as _;
    assert_eq!(
        w.broker.job_rates("alpha").await.expect("rates"),
        [("nap".to_owned(), limit)]
    );
    api.send(
        Method::PUT,
        "/v1/jobs/nap/rate-limit",
        Some(b),
        Some((
            "application/json",
            br#"{"tasks": 5, "per_ms": 1000}"#.to_vec(),
        )),
    )
    .await
    .expect(404, "job_not_found");
    api.send(
        Method::PUT,
        "/v1/jobs/nap/rate-limit",
        Some(a),
        Some((
            "application/json",
            br#"{"tasks": 0, "per_ms": 1000}"#.to_vec(),
        )),
    )
    .await
    .expect(400, "bad_request");
    let gone = api
        .send(Method::DELETE, "/v1/jobs/nap/rate-limit", Some(a), None)
        .await;
    assert_eq!(gone.status.as_u16(), 204, "{gone:?}");
    assert!(w.broker.job_rates("alpha").await.expect("rates").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_once() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    w.api
        .send(Method::GET, "/v1/stats", Some(&w.a), None)
        .await
        .expect(200, "");
    let revoked = w
        .catalog
        .revoke_token(&Token::from_presented(&w.a).hash())
        .await
        .unwrap();
    assert_eq!(revoked.as_deref(), Some("alpha"));
    w.api
        .send(Method::GET, "/v1/stats", Some(&w.a), None)
        .await
        .expect(401, "unauthorized");
    // The other tenant's token is untouched.
    w.api
        .send(Method::GET, "/v1/stats", Some(&w.b), None)
        .await
        .expect(200, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_valid_token() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let hash = w.api.upload_job(&w.a, "noop").await;
    let routes = routes(&hash, "j", "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10");
    let bad_headers: [Option<&str>; 4] = [None, Some("nope"), Some(""), Some("crl_0000")];
    for (method, path, body) in routes {
        for token in bad_headers {
            let reply = w.api.send(method.clone(), &path, token, body.clone()).await;
            reply.expect(401, "unauthorized");
        }
        // A token sent under another scheme is not accepted either.
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", w.api.base))
            .header("Authorization", format!("Basic {}", w.a));
        if let Some((ct, bytes)) = body.clone() {
            req = req.header("Content-Type", ct).body(bytes);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }
}

/// A refusal reaches a client that writes its whole body before it reads:
/// the server reads what a refused request still sends (up to a bound)
/// rather than close on unread bytes, which resets the connection and can
/// take the answer with it. Refused by authentication, or by the handler
/// before it reads the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_still_gets_its_answer() {
    let _limit = crate::limit::minutes(2);
    let w = world().await;
    let upload = vec![0u8; 900 << 10];
    let refusals = [
        (None, "application/wasm", 401, "unauthorized"),
        (Some("crl_0000"), "application/wasm", 401, "unauthorized"),
        (
            Some(w.a.as_str()),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
    ];
    for (token, content_type, status, kind) in refusals {
        for _ in 0..10 {
            let body = Some((content_type, upload.clone()));
            let reply = w.api.send(Method::POST, "/v1/modules", token, body).await;
            reply.expect(status, kind);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_reach_another_tenants_modules_jobs_or_tasks() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let worker = RunningWorker::start(
        w.broker.clone(),
        w.registry.clone(),
        support::worker_config(2),
    );
    // Alpha's world: a module, a job, a finished task.
    w.api
        .register(&w.a, "secret-job", &["normalize"], json!({}))
        .await
        .expect(201, "");
    let hash = w.api.upload_job(&w.a, "normalize").await;
    let task = w
        .api
        .enqueue(&w.a, "secret-job", json!({"text": "Top SECRET"}))
        .await;
    let done = w.api.wait(&w.a, &task).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["args_map"]["text"], "top secret");
    // Its metering came through the Redis checkpoint into the task's JSON.
    assert_eq!(done["metering"]["total"]["calls"], 1, "{done}");
    assert!(
        done["metering"]["handlers"][0]["fuel"].as_u64() > Some(0),
        "{done}"
    );

    // Every route as beta, aimed at alpha's things: nothing succeeds, and
    // each answer is the one for something that does not exist. Alpha gets
    // each of them first, so a route broken for everyone cannot pass.
    let missing_hash = "0".repeat(64);
    let missing_task = "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10";
    for (theirs, unknown, field, value) in [
        (
            format!("/v1/modules/{hash}"),
            format!("/v1/modules/{missing_hash}"),
            "hash",
            json!(hash),
        ),
        (
            "/v1/jobs/secret-job".into(),
            "/v1/jobs/no-such-job".into(),
            "name",
            json!("secret-job"),
        ),
        (
            "/v1/jobs/secret-job?version=1".into(),
            "/v1/jobs/no-such-job?version=1".into(),
            "version",
            json!(1),
        ),
        (
            format!("/v1/tasks/{task}"),
            format!("/v1/tasks/{missing_task}"),
            "task_id",
            json!(task),
        ),
        (
            format!("/v1/tasks/{task}/wait?timeout_ms=10"),
            format!("/v1/tasks/{missing_task}/wait?timeout_ms=10"),
            "state",
            json!("completed"),
        ),
    ] {
        let own = w.api.get(&theirs, &w.a).await;
        own.expect(200, "");
        assert_eq!(own.body[field], value, "{theirs} as its owner: {own:?}");
        let r1 = w.api.get(&theirs, &w.b).await;
        let r2 = w.api.get(&unknown, &w.b).await;
        assert_eq!(r1.status.as_u16(), 404, "{theirs}: {r1:?}");
        assert_eq!((r1.status, r1.kind()), (r2.status, r2.kind()), "{theirs}");
        assert!(!r1.message().contains("alpha"), "{r1:?}");
    }
    // The operator verbs, as beta on alpha's finished task and queue: each
    // answers as for a task or queue never used; alpha's are found (a
    // finished task is not retried or cancelled: 409).
    for (method, theirs, unknown, own) in [
        (
            Method::POST,
            format!("/v1/tasks/{task}/retry"),
            format!("/v1/tasks/{missing_task}/retry"),
            409,
        ),
        (
            Method::POST,
            format!("/v1/tasks/{task}/cancel"),
            format!("/v1/tasks/{missing_task}/cancel"),
            409,
        ),
        (
            Method::GET,
            "/v1/queues/default/stats".into(),
            "/v1/queues/never-used/stats".into(),
            200,
        ),
        (
            Method::POST,
            "/v1/queues/default/pause".into(),
            "/v1/queues/never-used/pause".into(),
            200,
        ),
        (
            Method::POST,
            "/v1/queues/default/resume".into(),
            "/v1/queues/never-used/resume".into(),
            200,
        ),
        (
            Method::POST,
            "/v1/queues/default/retry-dead".into(),
            "/v1/queues/never-used/retry-dead".into(),
            200,
        ),
        (
            Method::DELETE,
            "/v1/queues/default/tasks?state=dead".into(),
            "/v1/queues/never-used/tasks?state=dead".into(),
            200,
        ),
        (
            Method::DELETE,
            format!("/v1/tasks/{task}"),
            format!("/v1/tasks/{missing_task}"),
            // Not deleted as alpha: the checks below list it.
            0,
        ),
    ] {
        let r1 = w.api.send(method.clone(), &theirs, Some(&w.b), None).await;
        let r2 = w.api.send(method.clone(), &unknown, Some(&w.b), None).await;
        assert_eq!(r1.status.as_u16(), 404, "{method} {theirs}: {r1:?}");
        assert_eq!((r1.status, r1.kind()), (r2.status, r2.kind()), "{theirs}");
        assert!(!r1.message().contains("alpha"), "{r1:?}");
        if own != 0 {
            let mine = w.api.send(method.clone(), &theirs, Some(&w.a), None).await;
            assert_eq!(mine.status.as_u16(), own, "{method} {theirs}: {mine:?}");
        }
    }
    // Beta's delete left alpha's task alone.
    let kept = w.api.get(&format!("/v1/tasks/{task}"), &w.a).await;
    kept.expect(200, "");
    assert_eq!(kept.body["state"], "completed");
    // Enqueue alpha's job as beta: unknown job, as for a name never used
    // (as alpha, accepted).
    w.api
        .post(
            "/v1/tasks",
            &w.a,
            &json!({"job": "secret-job", "args": {"text": "x"}}),
        )
        .await
        .expect(202, "");
    let r1 = w
        .api
        .post("/v1/tasks", &w.b, &json!({"job": "secret-job"}))
        .await;
    let r2 = w
        .api
        .post("/v1/tasks", &w.b, &json!({"job": "no-such-job"}))
        .await;
    r1.expect(404, "job_not_found");
    r2.expect(404, "job_not_found");
    // Remove alpha's job as beta: unknown job, as for a name never used;
    // alpha's job stays.
    let r1 = w
        .api
        .send(Method::DELETE, "/v1/jobs/secret-job", Some(&w.b), None)
        .await;
    let r2 = w
        .api
        .send(Method::DELETE, "/v1/jobs/no-such-job", Some(&w.b), None)
        .await;
    r1.expect(404, "job_not_found");
    r2.expect(404, "job_not_found");
    assert_eq!(
        r1.message().replace("secret-job", "X"),
        r2.message().replace("no-such-job", "X")
    );
    w.api.get("/v1/jobs/secret-job", &w.a).await.expect(200, "");
    // Beta naming alpha with `?tenant=` reaches nothing, on any route: the
    // answer for a tenant that does not exist. Its own name is accepted.
    let reads = [
        "/v1/jobs".to_owned(),
        "/v1/jobs/secret-job".into(),
        "/v1/tasks".into(),
        format!("/v1/tasks/{task}"),
        format!("/v1/tasks/{task}/wait?timeout_ms=10"),
        format!("/v1/modules/{hash}"),
        "/v1/stats".into(),
        "/v1/usage".into(),
    ];
    let with = |path: &str, tenant: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}tenant={tenant}")
    };
    for path in &reads {
        let theirs = w.api.get(&with(path, "alpha"), &w.b).await;
        let nobody = w.api.get(&with(path, "nobody"), &w.b).await;
        theirs.expect(404, "tenant_not_found");
        assert_eq!(
            (
                theirs.status,
                theirs.kind(),
                theirs.message().replace("alpha", "X")
            ),
            (
                nobody.status,
                nobody.kind(),
                nobody.message().replace("nobody", "X")
            ),
            "{path}"
        );
        let own = w.api.get(&with(path, "beta"), &w.b).await;
        assert_ne!(own.kind(), "tenant_not_found", "{path}: {own:?}");
        assert_eq!(
            own.status,
            w.api.get(path, &w.b).await.status,
            "{path}: its own name changes nothing"
        );
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/tasks?tenant=alpha",
            Some(json!({"job": "secret-job"})),
        ),
        (Method::DELETE, "/v1/jobs/secret-job?tenant=alpha", None),
        (
            Method::POST,
            "/v1/jobs?tenant=alpha",
            Some(json!({"name": "planted", "handlers": [hash]})),
        ),
    ] {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        w.api
            .send(method, path, Some(&w.b), body)
            .await
            .expect(404, "tenant_not_found");
    }
    let module = w
        .api
        .send(
            Method::POST,
            "/v1/modules?tenant=alpha",
            Some(&w.b),
            Some(("application/wasm", support::job_bytes("noop"))),
        )
        .await;
    module.expect(404, "tenant_not_found");
    w.api.get("/v1/jobs/secret-job", &w.a).await.expect(200, "");
    w.api
        .get("/v1/jobs/planted", &w.a)
        .await
        .expect(404, "job_not_found");
    // The list of tenants is an admin's.
    w.api
        .get("/v1/tenants", &w.b)
        .await
        .expect(403, "admin_required");
    // A chain naming alpha's module: unknown module (alpha may).
    let chain = json!({"name": "steal", "handlers": [hash]});
    w.api.post("/v1/jobs", &w.a, &chain).await.expect(201, "");
    let r = w.api.post("/v1/jobs", &w.b, &chain).await;
    r.expect(404, "module_not_found");
    // Lists and counts show alpha its own things and beta nothing of them.
    let jobs = w.api.get("/v1/jobs", &w.a).await;
    jobs.expect(200, "");
    assert_eq!(
        jobs.body["jobs"].as_array().map(Vec::len),
        Some(2),
        "{jobs:?}"
    );
    let tasks = w.api.get("/v1/tasks", &w.a).await;
    tasks.expect(200, "");
    assert!(
        tasks.body["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["task_id"] == json!(task))),
        "{tasks:?}"
    );
    let stats = w.api.get("/v1/stats", &w.a).await;
    assert!(stats.body["completed"].as_u64() >= Some(1), "{stats:?}");
    let jobs = w.api.get("/v1/jobs", &w.b).await;
    jobs.expect(200, "");
    assert_eq!(jobs.body["jobs"], json!([]));
    let tasks = w.api.get("/v1/tasks", &w.b).await;
    tasks.expect(200, "");
    assert_eq!(tasks.body["tasks"], json!([]));
    let stats = w.api.get("/v1/stats", &w.b).await;
    assert_eq!(stats.body["completed"], 0);
    // Usage: alpha's task cost is alpha's, and beta sees none of it.
    let usage = w.api.get("/v1/usage", &w.a).await;
    usage.expect(200, "");
    assert_eq!(usage.body["tenant"], "alpha", "{usage:?}");
    assert!(
        usage.body["total"]["calls"].as_u64() >= Some(1),
        "{usage:?}"
    );
    assert!(
        usage.body["total"]["fuel"].as_u64() >= done["metering"]["total"]["fuel"].as_u64(),
        "{usage:?}"
    );
    assert_eq!(
        usage.body["days"].as_array().map(Vec::len),
        Some(1),
        "{usage:?}"
    );
    let usage = w.api.get("/v1/usage", &w.b).await;
    usage.expect(200, "");
    assert_eq!(usage.body["total"]["calls"], 0, "{usage:?}");
    assert_eq!(usage.body["days"], json!([]), "{usage:?}");
    let bad = w.api.get("/v1/usage?since=2020-01-01", &w.a).await;
    bad.expect(400, "");
    // Beta may use the same job name (no 409 that would reveal alpha's),
    // and uploading the same bytes gives beta its own copy.
    let mine = w
        .api
        .register(&w.b, "secret-job", &["noop"], json!({}))
        .await;
    mine.expect(201, "");
    assert_eq!(mine.body["version"], 1);
    assert_eq!(mine.body["tenant"], "beta");
    let same = w.api.upload_job(&w.b, "normalize").await;
    assert_eq!(same, hash);
    // Beta's task of its own `secret-job` runs beta's chain, not alpha's.
    let t = w
        .api
        .enqueue(&w.b, "secret-job", json!({"text": "Top SECRET"}))
        .await;
    let done = w.api.wait(&w.b, &t).await;
    assert_eq!(done["args_map"]["text"], "Top SECRET", "{done}");
    assert_eq!(done["tenant"], "beta");
    // And alpha's view is unchanged.
    let alpha_jobs = w.api.get("/v1/jobs", &w.a).await;
    assert_eq!(
        alpha_jobs.body["jobs"][0]["handlers"][0]["name"],
        "normalize"
    );
    assert_eq!(alpha_jobs.body["jobs"].as_array().map(Vec::len), Some(2));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_with_a_reason() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let hash = w.api.upload_job(&w.a, "noop").await;
    w.api
        .post("/v1/jobs", &w.a, &json!({"name": "ok", "handlers": [hash]}))
        .await
        .expect(201, "");
    let raw = |path: &'static str, body: &'static str| {
        let api = &w.api;
        let token = w.a.clone();
        async move {
            api.send(
                Method::POST,
                path,
                Some(&token),
                Some(("application/json", body.as_bytes().to_vec())),
            )
            .await
        }
    };
    for (path, body, needle) in [
        ("/v1/jobs", "not json", "malformed JSON"),
        ("/v1/jobs", "", "empty"),
        (
            "/v1/jobs",
            "{\"name\": 1, \"handlers\": []}",
            "invalid type",
        ),
        ("/v1/jobs", "{\"handlers\": []}", "missing field `name`"),
        (
            "/v1/jobs",
            "{\"name\": \"x\", \"handlers\": [], \"oops\": 1}",
            "unknown field `oops`",
        ),
        (
            "/v1/tasks",
            "{\"job\": \"ok\", \"args\": [1, 2]}",
            "invalid type",
        ),
        (
            "/v1/tasks",
            "{\"job\": \"ok\", \"max_attempts\": -1}",
            "invalid value",
        ),
        ("/v1/tasks", "{\"job\": \"ok\"", "EOF"),
    ] {
        let r = raw(path, body).await;
        r.expect(400, "bad_request");
        assert!(r.message().contains(needle), "{path} {body}: {r:?}");
    }
    for (body, kind, needle) in [
        (
            json!({"name": "x", "handlers": ["abc"]}),
            "bad_request",
            "not a module hash",
        ),
        (
            json!({"name": "x", "handlers": []}),
            "empty_chain",
            "no handlers",
        ),
        (
            json!({"name": "bad name!", "handlers": [hash]}),
            "invalid_name",
            "invalid job name",
        ),
        (
            json!({"name": "x", "handlers": [hash], "limits": {"fuel": 0}}),
            "invalid_limits",
            "fuel",
        ),
        // Handler names are shown in task logs and errors: nothing that
        // could break or restyle a line there.
        (
            json!({"name": "x", "handlers": [{"name": "a\nb", "module": hash}]}),
            "bad_request",
            "none of them control",
        ),
        (
            json!({"name": "x", "handlers": [{"name": "\u{1b}[2Jx", "module": hash}]}),
            "bad_request",
            "none of them control",
        ),
        (
            json!({"name": "x", "handlers": [{"name": "x\u{202e}y", "module": hash}]}),
            "bad_request",
            "none of them control",
        ),
    ] {
        let r = w.api.post("/v1/jobs", &w.a, &body).await;
        r.expect(400, kind);
        assert!(r.message().contains(needle), "{body}: {r:?}");
    }
    for (body, needle) in [
        (
            json!({"job": "ok", "queue": "no spaces"}),
            "invalid queue name",
        ),
        (json!({"job": "ok", "max_attempts": 0}), "max_attempts"),
        (json!({"job": "ok", "timeout_ms": 0}), "timeout_ms"),
        (json!({"job": "ok", "priority": 10}), "priority"),
        (json!({"job": "ok", "delay_ms": 1u64 << 50}), "delay_ms"),
    ] {
        let r = w.api.post("/v1/tasks", &w.a, &body).await;
        r.expect(400, "bad_request");
        assert!(r.message().contains(needle), "{body}: {r:?}");
    }
    for path in [
        "/v1/tasks/not-a-uuid",
        "/v1/tasks/not-a-uuid/wait",
        "/v1/tasks?limit=abc",
        "/v1/tasks?state=bogus",
        "/v1/tasks?limit=0",
        "/v1/jobs/ok?version=x",
        "/v1/tasks?oops=1",
    ] {
        w.api.get(path, &w.a).await.expect(400, "bad_request");
    }
    // Unknown routes and methods answer in the same JSON shape.
    w.api
        .get("/v1/nothing", &w.a)
        .await
        .expect(404, "route_not_found");
    w.api
        .send(Method::DELETE, "/v1/jobs", Some(&w.a), None)
        .await
        .expect(405, "method_not_allowed");
    // A module upload declared as something else is refused.
    w.api
        .send(
            Method::POST,
            "/v1/modules",
            Some(&w.a),
            Some(("text/plain", support::job_bytes("noop"))),
        )
        .await
        .expect(415, "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let _limit = crate::limit::minutes(5);
    let noop_len = support::job_bytes("noop").len() as u64;
    let w = world_with(
        TenantLimits {
            max_module_bytes: noop_len - 1,
            ..TenantLimits::default()
        },
        ApiConfig {
            max_json_bytes: 16 << 10,
            ..ApiConfig::default()
        },
    )
    .await;
    // A module one byte over alpha's cap; beta's cap takes it.
    let r = w.api.upload(&w.a, support::job_bytes("noop")).await;
    r.expect(413, "module_too_large");
    assert!(r.message().contains(&format!("{}", noop_len - 1)), "{r:?}");
    w.api
        .upload(&w.b, support::job_bytes("noop"))
        .await
        .expect(201, "");
    // JSON bodies over the API's cap, on both JSON routes.
    let big = "x".repeat(20 << 10);
    for path in ["/v1/jobs", "/v1/tasks"] {
        let r = w
            .api
            .post(path, &w.b, &json!({"job": "j", "args": {"big": big}}))
            .await;
        r.expect(413, "body_too_large");
    }
    // Megabytes over alpha's cap: still a clean 413 (the body is drained, so
    // the client reads the answer rather than a reset).
    let r = w.api.upload(&w.a, vec![0u8; 8 << 20]).await;
    r.expect(413, "module_too_large");
    // The same size is under beta's cap: read whole, then refused as content.
    let r = w.api.upload(&w.b, vec![0u8; 8 << 20]).await;
    r.expect(422, "not_wasm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_are_refused_at_upload_with_their_own_error() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    for (what, bytes, kind) in api_support::refused_modules() {
        let r = w.api.upload(&w.a, bytes).await;
        assert_eq!(r.status.as_u16(), 422, "{what}: {r:?}");
        assert_eq!(r.kind(), kind, "{what}: {r:?}");
        assert!(!r.message().is_empty());
    }
    // Nothing refused was stored.
    let jobs = w
        .api
        .post(
            "/v1/jobs",
            &w.a,
            &json!({"name": "x", "handlers": [corral::sandbox::ModuleHash::of(b"").as_str()]}),
        )
        .await;
    jobs.expect(404, "module_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_that_validate_are_contained_at_run_time() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let worker = RunningWorker::start(
        w.broker.clone(),
        w.registry.clone(),
        support::worker_config(2),
    );
    // (module, args, the task's end state, the error kinds it may die of)
    let cases: [(&str, Value, &str, &[&str]); 11] = [
        ("spin", json!({}), "dead", &["out_of_fuel"]),
        ("memory_bomb", json!({}), "dead", &["memory_limit"]),
        ("sleep", json!({"ms": 60_000}), "dead", &["deadline"]),
        // Spinning on the clock burns fuel and time; either limit stops it.
        (
            "busy_wait",
            json!({"ms": 60_000}),
            "dead",
            &["out_of_fuel", "deadline"],
        ),
        // The wasm stack, or the guest's shadow stack in linear memory (an
        // out-of-bounds trap), runs out first; see jobs/recurse.
        ("recurse", json!({}), "dead", &["stack_overflow", "trap"]),
        // A guest panic: reported as such, or as the trap it ends in.
        ("panic", json!({}), "dead", &["panic", "trap"]),
        (
            "big_output",
            json!({"bytes": 4 << 20}),
            "dead",
            &["output_too_large"],
        ),
        ("open_file", json!({}), "completed", &[]),
        ("socket", json!({}), "completed", &[]),
        // A log flood is capped; state cannot outlive its instance.
        ("big_log", json!({}), "completed", &[]),
        ("counter", json!({}), "completed", &[]),
    ];
    let mut ids = Vec::new();
    for (module, args, _, _) in &cases {
        let job = format!("hostile-{module}");
        w.api
            .register(&w.a, &job, &[module], quick())
            .await
            .expect(201, "");
        ids.push(w.api.enqueue(&w.a, &job, args.clone()).await);
    }
    for ((module, _, state, kinds), id) in cases.iter().zip(&ids) {
        let task = w.api.wait(&w.a, id).await;
        assert_eq!(task["state"], *state, "{module}: {task}");
        if !kinds.is_empty() {
            let got = task["error"]["kind"].as_str().unwrap_or("");
            assert!(
                kinds.contains(&got),
                "{module}: expected {kinds:?}, got {task}"
            );
        }
    }
    // The file and network attempts were refused inside the sandbox.
    let open_file = w.api.wait(&w.a, &ids[7]).await;
    assert_ne!(open_file["args_map"]["file"], "opened", "{open_file}");
    let socket = w.api.wait(&w.a, &ids[8]).await;
    assert_ne!(socket["args_map"]["tcp"], "connected", "{socket}");
    let big_log = w.api.wait(&w.a, &ids[9]).await;
    let kept = big_log["log"].as_str().unwrap_or("").len();
    assert!(
        kept > 0 && kept < 256 << 10,
        "kept {kept} bytes of a 1 MiB log"
    );
    let counter = w.api.wait(&w.a, &ids[10]).await;
    assert_eq!(counter["args_map"]["count"], 1, "{counter}");
    // And the worker is still healthy.
    w.api
        .register(&w.a, "after", &["normalize"], json!({}))
        .await
        .expect(201, "");
    let t = w
        .api
        .enqueue(&w.a, "after", json!({"text": "Still OK"}))
        .await;
    assert_eq!(w.api.wait(&w.a, &t).await["args_map"]["text"], "still ok");
    worker.stop().await;
}

/// The task ids of a `GET /v1/tasks` answer.
fn task_ids(list: &api_support::Reply) -> Vec<String> {
    list.body["tasks"]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|t| t["task_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_acts_on_the_tenant_it_names() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let worker = RunningWorker::start(
        w.broker.clone(),
        w.registry.clone(),
        support::worker_config(2),
    );
    let admin = Token::generate();
    w.catalog
        .add_admin_token(&admin.hash(), Some("tests"))
        .await
        .unwrap();
    let admin = admin.expose().to_owned();
    // Each tenant's own job of one name, and a finished task of it.
    w.api
        .register(&w.a, "stats", &["normalize"], json!({}))
        .await
        .expect(201, "");
    w.api
        .register(&w.b, "stats", &["count_words"], json!({}))
        .await
        .expect(201, "");
    let ta = w.api.enqueue(&w.a, "stats", json!({"text": "Alpha"})).await;
    let tb = w.api.enqueue(&w.b, "stats", json!({"text": "b b"})).await;
    assert_eq!(w.api.wait(&w.a, &ta).await["state"], "completed");
    assert_eq!(w.api.wait(&w.b, &tb).await["state"], "completed");

    // The admin reads each tenant's things under that tenant's name.
    for (tenant, task, handler) in [("alpha", &ta, "normalize"), ("beta", &tb, "count_words")] {
        let one = w
            .api
            .get(&format!("/v1/tasks/{task}?tenant={tenant}"), &admin)
            .await;
        one.expect(200, "");
        assert_eq!(one.body["tenant"], tenant, "{one:?}");
        let list = w
            .api
            .get(&format!("/v1/tasks?tenant={tenant}"), &admin)
            .await;
        list.expect(200, "");
        assert_eq!(task_ids(&list), vec![task.clone()], "{list:?}");
        let jobs = w
            .api
            .get(&format!("/v1/jobs?tenant={tenant}&limit=10"), &admin)
            .await;
        jobs.expect(200, "");
        assert_eq!(jobs.body["jobs"][0]["tenant"], tenant, "{jobs:?}");
        assert_eq!(jobs.body["jobs"][0]["handlers"][0]["name"], handler);
        let stats = w
            .api
            .get(&format!("/v1/stats?tenant={tenant}"), &admin)
            .await;
        stats.expect(200, "");
        assert_eq!(stats.body["completed"], 1, "{stats:?}");
        let usage = w
            .api
            .get(&format!("/v1/usage?tenant={tenant}"), &admin)
            .await;
        usage.expect(200, "");
        assert_eq!(usage.body["tenant"], tenant, "{usage:?}");
    }
    // A task asked for under the other tenant answers as a missing one.
    let wrong = w
        .api
        .get(&format!("/v1/tasks/{ta}?tenant=beta"), &admin)
        .await;
    let missing = w
        .api
        .get(
            "/v1/tasks/0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10?tenant=beta",
            &admin,
        )
        .await;
    wrong.expect(404, "task_not_found");
    assert_eq!(
        (wrong.status, wrong.kind()),
        (missing.status, missing.kind())
    );
    // Where one tenant is needed, the admin must name one that exists.
    let long = "x".repeat(300);
    for path in [
        "/v1/tasks".to_owned(),
        format!("/v1/tasks/{ta}"),
        "/v1/jobs".into(),
        "/v1/jobs/stats".into(),
        "/v1/stats".into(),
        "/v1/usage".into(),
    ] {
        w.api
            .get(&path, &admin)
            .await
            .expect(400, "tenant_required");
        for nobody in ["nobody", "a%20b", "%00", long.as_str()] {
            w.api
                .get(&format!("{path}?tenant={nobody}"), &admin)
                .await
                .expect(404, "tenant_not_found");
        }
    }
    w.api
        .get("/v1/stats?tenant=alpha&tenant=beta", &admin)
        .await
        .expect(400, "bad_request");
    // It writes as the tenant it names: a task enqueued for alpha runs
    // alpha's chain and is alpha's.
    let queued = w
        .api
        .post(
            "/v1/tasks?tenant=alpha",
            &admin,
            &json!({"job": "stats", "args": {"text": "By ADMIN"}, "max_attempts": 1}),
        )
        .await;
    queued.expect(202, "");
    let id = queued.body["task_id"].as_str().expect("task_id").to_owned();
    let done = w.api.wait(&w.a, &id).await;
    assert_eq!(done["tenant"], "alpha", "{done}");
    assert_eq!(done["args_map"]["text"], "by admin", "{done}");

    // The tenants, by name, a page at a time; never a token.
    let tenants = w.api.get("/v1/tenants", &admin).await;
    tenants.expect(200, "");
    let rows: Vec<(String, u64)> = tenants.body["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_owned(),
                t["tokens"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(rows, vec![("alpha".into(), 1), ("beta".into(), 1)]);
    assert_eq!(
        tenants.body["tenants"][0]["limits"]["max_queued"],
        json!(TenantLimits::default().max_queued)
    );
    assert!(!tenants.body.to_string().contains("crl_"), "{tenants:?}");
    let first = w.api.get("/v1/tenants?limit=1", &admin).await;
    assert_eq!(first.body["tenants"][0]["name"], "alpha", "{first:?}");
    assert_eq!(first.body["next"], "alpha");
    let rest = w.api.get("/v1/tenants?limit=1&after=alpha", &admin).await;
    assert_eq!(rest.body["tenants"][0]["name"], "beta", "{rest:?}");
    assert_eq!(rest.body["next"], Value::Null);
    w.api
        .get("/v1/tenants?limit=0", &admin)
        .await
        .expect(400, "bad_request");

    // Revoked, it is refused at once, exactly as a token never issued.
    assert!(
        w.catalog
            .revoke_admin_token(&Token::from_presented(&admin).hash().id())
            .await
            .unwrap()
    );
    let refused = w.api.get("/v1/stats?tenant=alpha", &admin).await;
    refused.expect(401, "unauthorized");
    let unknown = w
        .api
        .get("/v1/stats?tenant=alpha", Token::generate().expose())
        .await;
    assert_eq!(refused.body, unknown.body);
    w.api
        .get("/v1/tenants", &admin)
        .await
        .expect(401, "unauthorized");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_job_is_gone_and_its_queued_tasks_fail_as_unknown_job() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    // The worker has a registry of its own, as a worker process would: it
    // learns of the removal from the store, not from the API's registry.
    let registry = Registry::with_catalog(support::sandbox(), w.catalog.clone());
    let worker = RunningWorker::start(w.broker.clone(), registry, support::worker_config(2));
    for token in [&w.a, &w.b] {
        w.api
            .register(token, "doomed", &["normalize"], json!({}))
            .await
            .expect(201, "");
    }
    // The worker runs it once (and keeps it resolved), and one more task
    // is due after the removal.
    let first = w.api.enqueue(&w.a, "doomed", json!({"text": "A"})).await;
    assert_eq!(w.api.wait(&w.a, &first).await["state"], "completed");
    let later = w
        .api
        .post(
            "/v1/tasks",
            &w.a,
            &json!({"job": "doomed", "args": {"text": "B"}, "delay_ms": 2500, "max_attempts": 1}),
        )
        .await;
    later.expect(202, "");
    let later = later.body["task_id"].as_str().expect("task_id").to_owned();
    let removed = w
        .api
        .send(Method::DELETE, "/v1/jobs/doomed", Some(&w.a), None)
        .await;
    assert_eq!(removed.status.as_u16(), 204, "{removed:?}");
    // Gone for alpha: not shown, not listed, no new task, not removed
    // twice. Beta's job of that name stays.
    w.api
        .get("/v1/jobs/doomed", &w.a)
        .await
        .expect(404, "job_not_found");
    assert_eq!(w.api.get("/v1/jobs", &w.a).await.body["jobs"], json!([]));
    w.api
        .post("/v1/tasks", &w.a, &json!({"job": "doomed"}))
        .await
        .expect(404, "job_not_found");
    w.api
        .send(Method::DELETE, "/v1/jobs/doomed", Some(&w.a), None)
        .await
        .expect(404, "job_not_found");
    w.api.get("/v1/jobs/doomed", &w.b).await.expect(200, "");
    // The queued task fails when it runs, as for a job never registered.
    let done = w.api.wait(&w.a, &later).await;
    assert_eq!(done["state"], "dead", "{done}");
    assert_eq!(done["error"]["kind"], "unknown_job", "{done}");
    // The name is free again, from version 1, with a new chain.
    let again = w
        .api
        .register(&w.a, "doomed", &["count_words"], json!({}))
        .await;
    again.expect(201, "");
    assert_eq!(again.body["version"], 1);
    let t = w.api.enqueue(&w.a, "doomed", json!({"text": "c c"})).await;
    let done = w.api.wait(&w.a, &t).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["args_map"]["counts"]["c"], 2, "{done}");
    // An admin removes a tenant's job by naming the tenant.
    let admin = Token::generate();
    w.catalog
        .add_admin_token(&admin.hash(), None)
        .await
        .unwrap();
    w.api
        .send(
            Method::DELETE,
            "/v1/jobs/doomed",
            Some(admin.expose()),
            None,
        )
        .await
        .expect(400, "tenant_required");
    let removed = w
        .api
        .send(
            Method::DELETE,
            "/v1/jobs/doomed?tenant=beta",
            Some(admin.expose()),
            None,
        )
        .await;
    assert_eq!(removed.status.as_u16(), 204, "{removed:?}");
    w.api
        .get("/v1/jobs/doomed", &w.b)
        .await
        .expect(404, "job_not_found");
    w.api.get("/v1/jobs/doomed", &w.a).await.expect(200, "");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_keep_the_version_they_were_enqueued_with() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    // Version 1: normalize only.
    let v1 = w
        .api
        .register(&w.a, "stats", &["normalize"], json!({}))
        .await;
    v1.expect(201, "");
    assert_eq!(v1.body["version"], 1);
    let first = w.api.enqueue(&w.a, "stats", json!({"text": "A b a"})).await;
    // Registering the name again needs an explicit replace.
    let again = w
        .api
        .register(&w.a, "stats", &["normalize"], json!({}))
        .await;
    again.expect(409, "job_exists");
    assert!(again.message().contains("version 1"), "{again:?}");
    // Version 2: normalize then count_words.
    let n = w.api.upload_job(&w.a, "normalize").await;
    let c = w.api.upload_job(&w.a, "count_words").await;
    let v2 = w
        .api
        .post(
            "/v1/jobs",
            &w.a,
            &json!({"name": "stats", "handlers": [n, {"name": "count", "module": c}], "replace": true}),
        )
        .await;
    v2.expect(201, "");
    assert_eq!(v2.body["version"], 2);
    let second = w.api.enqueue(&w.a, "stats", json!({"text": "A b a"})).await;
    // A task may also ask for an older version explicitly.
    let pinned = w
        .api
        .post(
            "/v1/tasks",
            &w.a,
            &json!({"job": "stats", "args": {"text": "x"}, "version": 1}),
        )
        .await;
    pinned.expect(202, "");
    assert_eq!(pinned.body["job_version"], 1);
    w.api
        .post("/v1/tasks", &w.a, &json!({"job": "stats", "version": 9}))
        .await
        .expect(404, "job_version_not_found");

    // Only now does a worker start: both tasks were queued before it.
    let worker = RunningWorker::start(
        w.broker.clone(),
        w.registry.clone(),
        support::worker_config(2),
    );
    let first = w.api.wait(&w.a, &first).await;
    let second = w.api.wait(&w.a, &second).await;
    worker.stop().await;
    assert_eq!(first["state"], "completed", "{first}");
    assert_eq!(first["job_version"], 1);
    assert_eq!(first["args_map"]["text"], "a b a");
    assert!(first["args_map"].get("counts").is_none(), "{first}");
    assert_eq!(second["state"], "completed", "{second}");
    assert_eq!(second["job_version"], 2);
    assert_eq!(second["args_map"]["counts"]["a"], 2, "{second}");
    // Both versions stay readable.
    let old = w.api.get("/v1/jobs/stats?version=1", &w.a).await;
    assert_eq!(old.body["handlers"].as_array().map(Vec::len), Some(1));
    let new = w.api.get("/v1/jobs/stats", &w.a).await;
    assert_eq!(new.body["version"], 2);
    assert_eq!(new.body["handlers"][1]["name"], "count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_are_enforced_at_upload_registration_and_enqueue() {
    let _limit = crate::limit::minutes(5);
    let w = world_with(
        TenantLimits {
            max_fuel: 1_000_000,
            max_memory_bytes: 16 << 20,
            max_timeout_ms: 2_000,
            max_queued: 3,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let hash = w.api.upload_job(&w.a, "noop").await;
    for (limits, name) in [
        (json!({"fuel": 1_000_001}), "fuel"),
        (json!({"memory_bytes": 32u64 << 20}), "memory_bytes"),
        (json!({"timeout_ms": 2_001}), "timeout_ms"),
    ] {
        let r = w
            .api
            .post(
                "/v1/jobs",
                &w.a,
                &json!({"name": "j", "handlers": [hash], "limits": limits}),
            )
            .await;
        r.expect(422, "over_tenant_limit");
        assert!(r.message().contains(name), "{r:?}");
    }
    // Limits left out are the defaults narrowed to the tenant's ceilings.
    let ok = w
        .api
        .post("/v1/jobs", &w.a, &json!({"name": "j", "handlers": [hash]}))
        .await;
    ok.expect(201, "");
    assert_eq!(ok.body["limits"]["fuel"], 1_000_000);
    assert_eq!(ok.body["limits"]["memory_bytes"], 16u64 << 20);
    assert_eq!(ok.body["limits"]["timeout_ms"], 2_000);
    // No worker runs: the fourth task is over max_queued, delayed ones count.
    w.api.enqueue(&w.a, "j", json!({})).await;
    w.api.enqueue(&w.a, "j", json!({})).await;
    w.api
        .post("/v1/tasks", &w.a, &json!({"job": "j", "delay_ms": 60_000}))
        .await
        .expect(202, "");
    let full = w.api.post("/v1/tasks", &w.a, &json!({"job": "j"})).await;
    full.expect(429, "queue_full");
    assert!(full.message().contains("limit of 3"), "{full:?}");
    // Beta's queue is its own.
    let hb = w.api.upload_job(&w.b, "noop").await;
    w.api
        .post("/v1/jobs", &w.b, &json!({"name": "j", "handlers": [hb]}))
        .await
        .expect(201, "");
    w.api.enqueue(&w.b, "j", json!({})).await;
    // Listing shows alpha's three tasks, the delayed one as scheduled.
    let listed = w.api.get("/v1/tasks", &w.a).await;
    assert_eq!(listed.body["tasks"].as_array().map(Vec::len), Some(3));
    let scheduled = w.api.get("/v1/tasks?state=scheduled", &w.a).await;
    assert_eq!(scheduled.body["tasks"].as_array().map(Vec::len), Some(1));
    let stats = w.api.get("/v1/stats", &w.a).await;
    assert_eq!(
        (
            stats.body["pending"].clone(),
            stats.body["scheduled"].clone()
        ),
        (json!(2), json!(1))
    );
    let _ = &w.catalog;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_stay_within_the_tenant_quota() {
    let _limit = crate::limit::minutes(5);
    let w = world_with(
        TenantLimits {
            max_queued: 20,
            max_queues: 4,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let hash = w.api.upload_job(&w.a, "noop").await;
    w.api
        .post("/v1/jobs", &w.a, &json!({"name": "j", "handlers": [hash]}))
        .await
        .expect(201, "");
    // Kinds of the answers to `bodies`, all posted at once.
    let burst = |token: String, bodies: Vec<Value>| {
        let api = &w.api;
        async move {
            let replies = futures_util::future::join_all(
                bodies
                    .iter()
                    .map(|body| api.post("/v1/tasks", &token, body)),
            )
            .await;
            let mut kinds = std::collections::BTreeMap::<String, usize>::new();
            for r in replies {
                let kind = match r.status.as_u16() {
                    202 => "stored".to_owned(),
                    429 => r.kind().to_owned(),
                    _ => panic!("unexpected reply: {r:?}"),
                };
                *kinds.entry(kind).or_default() += 1;
            }
            kinds
        }
    };
    let count = |kinds: &std::collections::BTreeMap<String, usize>, k: &str| {
        kinds.get(k).copied().unwrap_or(0)
    };
    // 128 at once against max_queued 20, across the tenant's four queues.
    let bodies = (0..128)
        .map(|i| json!({"job": "j", "queue": format!("q{}", i % 4), "args": {"i": i}}))
        .collect();
    let kinds = burst(w.a.clone(), bodies).await;
    assert_eq!(count(&kinds, "stored"), 20, "{kinds:?}");
    assert_eq!(count(&kinds, "queue_full"), 108, "{kinds:?}");
    let stats = w.api.get("/v1/stats", &w.a).await;
    assert_eq!(stats.body["pending"], json!(20));
    // 64 new queue names at once against max_queues 4 (fresh tenant, room
    // for tasks): exactly 4 names are created.
    let gamma = api_support::tenant(
        &w.catalog,
        "gamma",
        TenantLimits {
            max_queues: 4,
            ..TenantLimits::default()
        },
    )
    .await;
    let hash = w.api.upload_job(&gamma, "noop").await;
    w.api
        .post(
            "/v1/jobs",
            &gamma,
            &json!({"name": "j", "handlers": [hash]}),
        )
        .await
        .expect(201, "");
    let bodies = (0..64)
        .map(|i| json!({"job": "j", "queue": format!("name-{i}")}))
        .collect();
    let kinds = burst(gamma.clone(), bodies).await;
    assert_eq!(count(&kinds, "stored"), 4, "{kinds:?}");
    assert_eq!(count(&kinds, "too_many_queues"), 60, "{kinds:?}");
    let listed = w.api.get("/v1/tasks", &gamma).await;
    let names: std::collections::BTreeSet<&str> = listed.body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["queue_name"].as_str())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

/// The dashboard is three static files served without a token, none
/// holding any tenant's data; the page's policy allows only this origin's
/// script and style (nothing inline) and requires Trusted Types, and the
/// script writes data as text only and sends the token only in a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_a_static_page_without_data() {
    let _limit = crate::limit::minutes(5);
    let w = world().await;
    let mut texts = Vec::new();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let resp = reqwest::get(format!("{}{path}", w.api.base)).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        texts.push(resp.text().await.unwrap());
    }
    let (html, script) = (&texts[0], &texts[1]);
    assert!(html.contains("<title>Corral</title>"));
    assert!(html.contains(r#"<script src="/dashboard.js" defer></script>"#));
    // No inline script or style for the policy to refuse.
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));
    assert!(script.contains("/v1/tasks") && script.contains("/v1/queues"));
    // Data only as text; the token only in the Authorization header.
    assert!(!script.contains("innerHTML") && !script.contains("insertAdjacentHTML"));
    assert!(script.contains(r#"Authorization: "Bearer " + token()"#));
    // No external assets, and nothing of any tenant.
    for text in &texts {
        assert!(!text.contains("http://") && !text.contains("https://"));
        assert!(!text.contains("alpha") && !text.contains("beta"));
    }
}

/// With its Redis away, the API answers every route 503 with the kind of
/// store that is missing (never a hang, never a 500), and serves again,
/// with nothing lost, once Redis is back. (While the connection retries
/// its backoff, an answer takes up to about ten seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_away_answers_503_and_then_serves_again() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut w = world_on(server, TenantLimits::default(), ApiConfig::default()).await;
    let hash = w.api.upload_job(&w.a, "noop").await;
    w.api
        .post("/v1/jobs", &w.a, &json!({"name": "j", "handlers": [hash]}))
        .await
        .expect(201, "");
    let id = w.api.enqueue(&w.a, "j", json!({})).await;
    let reads = [
        "/v1/jobs".to_owned(),
        "/v1/jobs/j".to_owned(),
        format!("/v1/modules/{hash}"),
        format!("/v1/tasks/{id}"),
        "/v1/tasks".to_owned(),
        "/v1/stats".to_owned(),
    ];
    // Served while Redis is up (so the 503s below are the store's doing).
    for path in &reads {
        w.api.get(path, &w.a).await.expect(200, "");
    }
    let probe = |path: &'static str| w.api.send(Method::GET, path, None, None);
    probe("/healthz").await.expect(200, "");
    let ready = probe("/readyz").await;
    ready.expect(200, "");
    assert_eq!(
        ready.body,
        json!({"status": "ready", "broker": "ok", "catalog": "ok"})
    );
    // Anyone may probe: a flood of probes shares one read of each store
    // (or two, if the flood outlasts a second), never one per caller.
    let commands = || {
        let info = w.redis.cli(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("total_commands_processed")
    };
    let before = commands();
    let flood = futures_util::future::join_all((0..50).map(|_| probe("/readyz"))).await;
    assert!(flood.iter().all(|r| r.status.as_u16() == 200), "{flood:?}");
    let spent = commands() - before;
    assert!(spent < 25, "50 probes cost {spent} Redis commands");

    w.redis.stop();
    // The probes, with no token: alive, not ready, saying which store is
    // away and nothing more.
    probe("/healthz").await.expect(200, "");
    // Once the shared answer from before is older than a second.
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let unready = loop {
        let reply = probe("/readyz").await;
        if reply.status.as_u16() != 200 {
            break reply;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "still ready with Redis stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(unready.status.as_u16(), 503, "{unready:?}");
    assert_eq!(unready.body["status"], "unready");
    for store in ["broker", "catalog"] {
        assert!(
            ["unreachable", "timeout"].contains(&unready.body[store].as_str().unwrap_or("")),
            "{unready:?}"
        );
    }
    let enqueue = json!({"job": "j"});
    // All at once: each waits out the same reconnect attempts.
    let gets = futures_util::future::join_all(
        reads
            .iter()
            .map(|path| async { (path.clone(), w.api.get(path, &w.a).await) }),
    );
    let post = w.api.post("/v1/tasks", &w.a, &enqueue);
    let (mut answers, posted) = tokio::join!(gets, post);
    answers.push(("POST /v1/tasks".into(), posted));
    for (what, reply) in &answers {
        assert_eq!(reply.status.as_u16(), 503, "{what}: {reply:?}");
        assert!(
            ["store_unavailable", "broker_unavailable"].contains(&reply.kind()),
            "{what}: {reply:?}"
        );
    }
    // The raw answer carries Retry-After.
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/stats", w.api.base))
        .bearer_auth(&w.a)
        .send()
        .await
        .expect("an answer");
    assert_eq!(raw.status().as_u16(), 503);
    assert_eq!(
        raw.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // Back: the same requests are served, with what was stored before.
    w.redis.restart();
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    for path in &reads {
        loop {
            let reply = w.api.get(path, &w.a).await;
            if reply.status.as_u16() == 200 {
                break;
            }
            assert_eq!(reply.status.as_u16(), 503, "{path}: {reply:?}");
            assert!(
                std::time::Instant::now() < give_up,
                "{path} still unavailable: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let task = w.api.get(&format!("/v1/tasks/{id}"), &w.a).await;
    assert_eq!(task.body["task_id"], json!(id), "{task:?}");
    // Ready again once its shared answer is older than a second.
    loop {
        let ready = w.api.send(Method::GET, "/readyz", None, None).await;
        if ready.status.as_u16() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "never ready again: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.api
        .post("/v1/tasks", &w.a, &enqueue)
        .await
        .expect(202, "");
}
