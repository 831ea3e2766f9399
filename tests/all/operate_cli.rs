//! The operator commands as real processes on a private Redis: `corral
//! tasks ls|retry|cancel|delete|retry-dead`, `corral queues
//! ls|pause|resume|purge`, `corral stats` and `corral workers`, with a
//! `corral worker` process running. Destructive verbs refuse without a
//! terminal to ask on unless given `--yes`, and then change nothing.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::redis::{RedisServer, WorkerProcess};

fn corral(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("--no-disk-cache")
        .args(args)
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_CONFIG")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        // Not a terminal: nobody could answer a question.
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    corral(args).output().expect("run corral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and requires success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and requires failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?}: {}", text(&out.stdout));
    text(&out.stderr)
}

/// Each line of `out` as JSON.
fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `tasks ls --json`: each tenant's listed task ids with their states.
fn listed(url: &str, extra: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut args = vec!["tasks", "ls", "--redis", url, "--json"];
    args.extend_from_slice(extra);
    let mut all = BTreeMap::new();
    for page in lines(&ok(&args)) {
        let tenant = page["tenant"].as_str().expect("tenant").to_owned();
        let tasks = page["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| {
                assert_eq!(t["tenant"], tenant.as_str(), "{t}");
                (
                    t["task_id"].as_str().expect("task_id").to_owned(),
                    t["state"].as_str().expect("state").to_owned(),
                )
            })
            .collect();
        all.insert(tenant, tasks);
    }
    all
}

/// `queues ls --json`: (tenant, queue) to its stats.
fn queues(url: &str) -> BTreeMap<(String, String), Value> {
    lines(&ok(&["queues", "ls", "--redis", url, "--json"]))
        .into_iter()
        .map(|q| {
            (
                (
                    q["tenant"].as_str().expect("tenant").to_owned(),
                    q["queue"].as_str().expect("queue").to_owned(),
                ),
                q["stats"].clone(),
            )
        })
        .collect()
}

fn enqueue(url: &str, tenant: &str, queue: &str) -> String {
    ok(&[
        "enqueue", "noop", "--redis", url, "--tenant", tenant, "--queue", queue,
    ])
    .trim()
    .to_owned()
}

#[test]
fn operators_list_pause_purge_and_see_workers() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let noop = crate::support::job("noop");
    let noop = noop.to_str().expect("a UTF-8 path");
    for tenant in ["acme", "zed"] {
        ok(&["tenants", "create", tenant, "--redis", &url]);
        ok(&[
            "jobs", "register", "noop", noop, "--redis", &url, "--tenant", tenant,
        ]);
    }
    // No worker yet: everything stays pending.
    let a: Vec<String> = (0..3).map(|_| enqueue(&url, "acme", "work")).collect();
    let z = enqueue(&url, "zed", "other");

    // Every tenant without --tenant; one with it.
    let all = listed(&url, &[]);
    assert_eq!(all["acme"].len(), 3, "{all:?}");
    assert!(a.iter().all(|id| all["acme"][id] == "pending"), "{all:?}");
    assert_eq!(all["zed"].keys().collect::<Vec<_>>(), vec![&z], "{all:?}");
    let only = listed(&url, &["--tenant", "zed"]);
    assert_eq!(only.keys().collect::<Vec<_>>(), vec!["zed"]);
    // Paging: two, then the rest from the printed cursor.
    let page = lines(&ok(&[
        "tasks", "ls", "--redis", &url, "--tenant", "acme", "--limit", "2", "--json",
    ]));
    let cursor = page[0]["next"].as_str().expect("a next page").to_owned();
    let rest = listed(&url, &["--tenant", "acme", "--cursor", &cursor]);
    assert_eq!(rest["acme"].len(), 1, "{rest:?}");
    // The table names each task.
    let table = ok(&["tasks", "ls", "--redis", &url]);
    assert!(table.starts_with("TASK "), "{table}");
    assert!(
        a.iter().chain([&z]).all(|id| table.contains(id.as_str())),
        "{table}"
    );

    // Pause: the only tenant with a queue `work` is meant.
    let said = ok(&["queues", "pause", "work", "--redis", &url]);
    assert!(said.contains("paused"), "{said}");
    let qs = queues(&url);
    let work = &qs[&("acme".to_owned(), "work".to_owned())];
    assert_eq!(work["paused"], true, "{qs:?}");
    assert_eq!(work["pending"], 3, "{qs:?}");
    assert_eq!(qs[&("zed".to_owned(), "other".to_owned())]["paused"], false);
    let table = ok(&["queues", "ls", "--redis", &url]);
    assert!(table.starts_with("TENANT "), "{table}");

    // A worker process serving both queues: the paused one waits; it shows
    // in `workers` with its pid.
    let log = server.dir().join("worker.log");
    let mut worker = WorkerProcess::start(
        &url,
        "corral",
        &["--queue", "work", "--queue", "other"],
        log,
    );
    worker.wait_started();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let zed = listed(&url, &["--tenant", "zed"]);
        if zed["zed"][&z] == "completed" {
            break;
        }
        assert!(Instant::now() < give_up, "zed's task never ran: {zed:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = lines(&ok(&["workers", "--redis", &url, "--json"]));
    let me = workers
        .iter()
        .find(|w| w["pid"] == worker.pid())
        .unwrap_or_else(|| panic!("worker {} not listed: {workers:?}", worker.pid()));
    assert_eq!(me["queues"], serde_json::json!(["work", "other"]), "{me}");
    let table = ok(&["workers", "--redis", &url]);
    assert!(table.contains(&worker.pid().to_string()), "{table}");
    assert!(
        listed(&url, &["--tenant", "acme"])["acme"]
            .values()
            .all(|s| s == "pending"),
        "a paused queue's task ran"
    );

    // Purge refuses without a terminal and without --yes, and deletes
    // nothing; with --yes it deletes the state asked for.
    let e = fails(&[
        "queues", "purge", "work", "--state", "pending", "--redis", &url,
    ]);
    assert!(e.contains("--yes"), "{e}");
    assert_eq!(listed(&url, &["--tenant", "acme"])["acme"].len(), 3);
    let e = fails(&["tasks", "delete", &a[0], "--redis", &url]);
    assert!(e.contains("--yes"), "{e}");
    // Cancel one, delete one (with --yes), and purge the pending rest.
    let said = ok(&["tasks", "cancel", &a[0], "--redis", &url]);
    assert!(said.contains("cancelled"), "{said}");
    ok(&["tasks", "delete", &a[1], "--redis", &url, "--yes"]);
    let said = ok(&[
        "queues", "purge", "work", "--state", "pending", "--redis", &url, "--yes",
    ]);
    assert!(said.starts_with("1 pending"), "{said}");
    let left = listed(&url, &["--tenant", "acme"]);
    assert_eq!(
        left["acme"].clone().into_iter().collect::<Vec<_>>(),
        vec![(a[0].clone(), "cancelled".to_owned())]
    );
    // The cancelled task runs again once the queue is resumed.
    ok(&["tasks", "retry", &a[0], "--redis", &url]);
    ok(&[
        "queues", "resume", "work", "--redis", &url, "--tenant", "acme",
    ]);
    let give_up = Instant::now() + Duration::from_secs(60);
    while listed(&url, &["--tenant", "acme"])["acme"][&a[0]] != "completed" {
        assert!(Instant::now() < give_up, "the retried task never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stats: per queue and per tenant.
    let stats = lines(&ok(&["stats", "--redis", &url, "--json"]));
    let acme = stats
        .iter()
        .find(|s| s["tenant"] == "acme")
        .expect("acme's stats");
    assert_eq!(acme["total"]["completed"], 1, "{acme}");
    assert_eq!(acme["total"]["pending"], 0, "{acme}");
    let table = ok(&["stats", "--redis", &url]);
    assert!(table.contains("acme") && table.contains("zed"), "{table}");
    // Errors name what is missing.
    let e = fails(&["queues", "pause", "nope", "--redis", &url]);
    assert!(e.contains("queue `nope` not found"), "{e}");
    let e = fails(&[
        "tasks",
        "retry",
        "0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10",
        "--redis",
        &url,
    ]);
    assert!(e.contains("not found"), "{e}");
    let e = fails(&[
        "queues", "pause", "work", "--redis", &url, "--tenant", "zed",
    ]);
    assert!(e.contains("queue `work` not found for tenant `zed`"), "{e}");
    // A name two tenants use needs --tenant.
    enqueue(&url, "zed", "work");
    let e = fails(&["queues", "pause", "work", "--redis", &url]);
    assert!(e.contains("`acme`, `zed`") && e.contains("--tenant"), "{e}");
    ok(&[
        "queues", "pause", "work", "--redis", &url, "--tenant", "zed",
    ]);
    let qs = queues(&url);
    assert_eq!(qs[&("zed".to_owned(), "work".to_owned())]["paused"], true);
    assert_eq!(qs[&("acme".to_owned(), "work".to_owned())]["paused"], false);
    assert!(worker.stop(), "the worker exited cleanly");
}
