//! The command line around the API, as real processes: `corral serve` on its
//! own (embedded broker, in-memory catalog, in-process workers);
//! `corral tenants create` / `corral jobs register|list` against a private
//! Redis; and a `corral worker` process running jobs uploaded through the
//! API of another process.

use std::process::Stdio;
use std::time::Duration;

use corral::catalog::{Catalog, RedisCatalog};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::api_support::{Api, RedisServer};
use crate::support;

fn corral() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The next stdout line, failing the test after 60 s or at end of output.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the process printed a line in time")
        .expect("stdout is readable")
        .expect("the process is still running")
}

/// Starts `corral serve ARGS` on port 0; returns the process, its stdout
/// lines before `listening on`, and an API client pointed at it.
async fn serve(args: &[&str]) -> (Child, Vec<String>, Api) {
    let mut child = corral()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = Vec::new();
    loop {
        let line = next_line(&mut lines).await;
        if let Some(base) = line.strip_prefix("listening on ") {
            let api = Api::connect(base);
            return (child, before, api);
        }
        before.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_serve_alone_runs_what_its_api_is_given() {
    let (mut child, printed, api) =
        serve(&["--workers", "2", "--tenant", "acme", "--tenant", "zed"]).await;
    let token_of = |name: &str| {
        printed
            .iter()
            .find_map(|l| l.strip_prefix(&format!("tenant {name} token ")))
            .unwrap_or_else(|| panic!("no token printed for {name}: {printed:?}"))
            .to_owned()
    };
    let (acme, zed) = (token_of("acme"), token_of("zed"));
    assert_ne!(acme, zed);
    api.register(
        &acme,
        "stats",
        &["normalize", "count_words", "top_k"],
        json!({}),
    )
    .await
    .expect(201, "");
    let id = api
        .enqueue(&acme, "stats", json!({"text": "b a b", "k": 1}))
        .await;
    let done = api.wait(&acme, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["args_map"]["top"], json!([["b", 2]]));
    // Zed sees nothing of it.
    api.get(&format!("/v1/tasks/{id}"), &zed)
        .await
        .expect(404, "task_not_found");
    child.kill().await.expect("stop corral serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_jobs_commands_write_the_redis_catalog() {
    let redis = RedisServer::start();
    let url = redis.url();
    let run = |args: Vec<String>| async move {
        let out = corral().args(&args).output().await.expect("run corral");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, token, err) = run(s(&[
        "tenants",
        "create",
        "acme",
        "--redis",
        &url,
        "--max-fuel",
        "5000000",
    ]))
    .await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("crl_") && token.len() == 68, "{token}");
    let (ok, _, err) = run(s(&["tenants", "create", "acme", "--redis", &url])).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = run(s(&["tenants", "create", "acme"])).await;
    assert!(!ok && err.contains("--redis"), "{err}");

    let normalize = support::job("normalize").display().to_string();
    let count = support::job("count_words").display().to_string();
    let (ok, out, err) = run(s(&[
        "jobs", "register", "stats", &normalize, "--redis", &url, "--token", &token,
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("registered job stats v1 for tenant acme: normalize"),
        "{out}"
    );
    let (ok, _, err) = run(s(&[
        "jobs", "register", "stats", &normalize, "--redis", &url, "--tenant", "acme",
    ]))
    .await;
    assert!(!ok && err.contains("replace it explicitly"), "{err}");
    let (ok, out, err) = run(s(&[
        "jobs",
        "register",
        "stats",
        &normalize,
        &count,
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--replace",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("v2"), "{out}");
    // Over the tenant's fuel ceiling, and an unknown token.
    let (ok, _, err) = run(s(&[
        "jobs", "register", "hot", &normalize, "--redis", &url, "--tenant", "acme", "--fuel",
        "9000000",
    ]))
    .await;
    assert!(!ok && err.contains("over the tenant's maximum"), "{err}");
    let (ok, _, err) = run(s(&["jobs", "list", "--redis", &url, "--token", "crl_nope"])).await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    // A module that is not a component is refused with its reason.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    let (ok, _, err) = run(s(&[
        "jobs",
        "register",
        "bad",
        &bogus.display().to_string(),
        "--redis",
        &url,
        "--tenant",
        "acme",
    ]))
    .await;
    assert!(!ok && err.contains("core WebAssembly module"), "{err}");

    let (ok, out, err) = run(s(&["jobs", "list", "--redis", &url, "--token", &token])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("stats v2  normalize -> count_words  fuel=5000000"),
        "{out}"
    );

    // What the commands wrote is what the library reads.
    let catalog = RedisCatalog::connect(&url).await.unwrap();
    let job = catalog.job("acme", "stats", None).await.unwrap().unwrap();
    assert_eq!(job.version, 2);
    assert_eq!(job.handlers.len(), 2);
    assert_eq!(job.limits.fuel, 5_000_000);

    // Rotating a token: add one, revoke the old; the old stops working.
    let (ok, second, err) = run(s(&["tenants", "token", "acme", "--redis", &url])).await;
    assert!(ok, "{err}");
    let second = second.trim().to_owned();
    assert!(second.starts_with("crl_") && second != token, "{second}");
    let (ok, _, err) = run(s(&["tenants", "revoke", &token, "--redis", &url])).await;
    assert!(
        ok && err.contains("revoked a token of tenant acme"),
        "{err}"
    );
    let (ok, _, err) = run(s(&["jobs", "list", "--redis", &url, "--token", &token])).await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    let (ok, out, err) = run(s(&["jobs", "list", "--redis", &url, "--token", &second])).await;
    assert!(ok && out.contains("stats v2"), "{err}");
    let (ok, _, err) = run(s(&["tenants", "revoke", &token, "--redis", &url])).await;
    assert!(!ok && err.contains("no tenant has that token"), "{err}");
    let (ok, _, err) = run(s(&["tenants", "token", "nobody", "--redis", &url])).await;
    assert!(!ok && err.contains("no tenant `nobody`"), "{err}");

    // Changing limits: only those given; the rest stay.
    let (ok, out, err) = run(s(&[
        "tenants",
        "limits",
        "acme",
        "--redis",
        &url,
        "--max-concurrency",
        "3",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"max_concurrency\": 3"), "{out}");
    let acme = catalog.tenant("acme").await.unwrap().unwrap();
    assert_eq!(acme.limits.max_concurrency, 3);
    assert_eq!(acme.limits.max_fuel, 5_000_000);
    let (ok, _, err) = run(s(&["tenants", "limits", "nobody", "--redis", &url])).await;
    assert!(!ok && err.contains("no tenant `nobody`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_runs_jobs_uploaded_through_another_process() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Process 1 creates the tenant; process 2 serves the API and runs no
    // worker; process 3 is a worker that knows no jobs of its own. They
    // share only Redis.
    let created = corral()
        .args(["tenants", "create", "acme", "--redis", &url])
        .output()
        .await
        .expect("run corral tenants create");
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let (mut api_process, _, api) = serve(&["--redis", &url, "--workers", "0"]).await;
    api.register(&token, "stats", &["normalize", "count_words"], json!({}))
        .await
        .expect(201, "");
    let first = api.enqueue(&token, "stats", json!({"text": "x Y x"})).await;
    let mut worker = corral()
        .args(["worker", "--redis", &url, "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral worker");
    let done = api.wait(&token, &first).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["args_map"]["counts"]["x"], 2, "{done}");
    // A new version uploaded while the worker runs is fetched on demand.
    let n = api.upload_job(&token, "normalize").await;
    let t = api.upload_job(&token, "top_k").await;
    let c = api.upload_job(&token, "count_words").await;
    api.post(
        "/v1/jobs",
        &token,
        &json!({"name": "stats", "handlers": [n, c, t], "replace": true}),
    )
    .await
    .expect(201, "");
    let second = api
        .enqueue(&token, "stats", json!({"text": "x Y x", "k": 1}))
        .await;
    let done = api.wait(&token, &second).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["job_version"], 2);
    assert_eq!(done["args_map"]["top"], json!([["x", 2]]), "{done}");
    worker.kill().await.expect("stop the worker");
    api_process.kill().await.expect("stop the API");
}
