//! The command line around the API, as real processes: `corral serve` on its
//! own (embedded broker, in-memory catalog, in-process workers);
//! `corral tenants create|token|tokens|revoke|limits` / `corral jobs
//! register|list` against a private Redis; and a `corral worker` process
//! running jobs uploaded through the API of another process.
//!
//! Tokens reach the commands through `CORRAL_TOKEN`, a file or standard
//! input: every run here checks that no token is among its arguments.

use std::process::Stdio;
use std::time::Duration;

use corral::catalog::{Catalog, RedisCatalog};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::api_support::{Api, RedisServer};
use crate::support;

pub(crate) fn corral() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    // Compiled components stay in memory: never the user's cache directory.
    cmd.arg("--no-disk-cache")
        .env_remove("CORRAL_CACHE_DIR")
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_REDIS_CLUSTER")
        .env_remove("CORRAL_CONFIG")
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
pub(crate) async fn serve(args: &[&str]) -> (Child, Vec<String>, Api) {
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
    let _limit = crate::limit::minutes(5);
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

/// Whether `arg` holds a token (`crl_` and 64 hex digits) anywhere.
pub(crate) fn holds_token(arg: &str) -> bool {
    arg.match_indices("crl_").any(|(i, _)| {
        let hex = &arg.as_bytes()[i + 4..];
        hex.len() >= 64 && hex[..64].iter().all(u8::is_ascii_hexdigit)
    })
}

/// How a run of `corral` is given a token: never as an argument.
#[derive(Clone, Copy)]
pub(crate) enum Secret<'a> {
    None,
    /// In `CORRAL_TOKEN`.
    Env(&'a str),
    /// On standard input (the command is given `--token-file -`).
    Stdin(&'a str),
}

/// Runs `corral ARGS` to the end (60 s at most); (success, stdout, stderr).
/// Fails the test if an argument holds a token.
pub(crate) async fn run_corral(args: &[&str], secret: Secret<'_>) -> (bool, String, String) {
    for arg in args {
        assert!(!holds_token(arg), "a token on the command line: {args:?}");
    }
    let mut cmd = corral();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match secret {
        Secret::None => {}
        Secret::Env(token) => {
            cmd.env("CORRAL_TOKEN", token);
        }
        Secret::Stdin(_) => {
            cmd.stdin(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().expect("spawn corral");
    if let Secret::Stdin(token) = secret {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(format!("{token}\n").as_bytes())
            .await
            .expect("write the token");
        drop(stdin);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("corral finished in time")
        .expect("corral ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_corral`] without a token.
pub(crate) async fn plain(args: &[&str]) -> (bool, String, String) {
    run_corral(args, Secret::None).await
}

#[test]
fn tokens_are_recognised_in_arguments() {
    let _limit = crate::limit::minutes(5);
    let token = corral::tenant::Token::generate();
    assert!(holds_token(token.expose()));
    assert!(holds_token(&format!("--token={}", token.expose())));
    assert!(!holds_token("crl_fake"));
    assert!(!holds_token(token.hash().id().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_jobs_commands_write_the_redis_catalog() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();

    let (ok, token, err) = plain(&[
        "tenants",
        "create",
        "acme",
        "--redis",
        url,
        "--max-fuel",
        "5000000",
    ])
    .await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("crl_") && token.len() == 68, "{token}");
    let (ok, _, err) = plain(&["tenants", "create", "acme", "--redis", url]).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = plain(&["tenants", "create", "acme"]).await;
    assert!(!ok && err.contains("--redis"), "{err}");

    let normalize = support::job("normalize").display().to_string();
    let count = support::job("count_words").display().to_string();
    let (ok, out, err) = run_corral(
        &["jobs", "register", "stats", &normalize, "--redis", url],
        Secret::Env(&token),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("registered job stats v1 for tenant acme: normalize"),
        "{out}"
    );
    let (ok, _, err) = plain(&[
        "jobs", "register", "stats", &normalize, "--redis", url, "--tenant", "acme",
    ])
    .await;
    assert!(!ok && err.contains("replace it explicitly"), "{err}");
    let (ok, out, err) = plain(&[
        "jobs",
        "register",
        "stats",
        &normalize,
        &count,
        "--redis",
        url,
        "--tenant",
        "acme",
        "--replace",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("v2"), "{out}");
    // Over the tenant's fuel ceiling, and an unknown token.
    let (ok, _, err) = plain(&[
        "jobs", "register", "hot", &normalize, "--redis", url, "--tenant", "acme", "--fuel",
        "9000000",
    ])
    .await;
    assert!(!ok && err.contains("over the tenant's maximum"), "{err}");
    let (ok, _, err) = run_corral(&["jobs", "list", "--redis", url], Secret::Env("crl_nope")).await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    // Neither a tenant nor a token: say how to give one.
    let (ok, _, err) = plain(&["jobs", "list", "--redis", url]).await;
    assert!(!ok && err.contains("CORRAL_TOKEN"), "{err}");
    // A module that is not a component is refused with its reason.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    let (ok, _, err) = plain(&[
        "jobs",
        "register",
        "bad",
        &bogus.display().to_string(),
        "--redis",
        url,
        "--tenant",
        "acme",
    ])
    .await;
    assert!(!ok && err.contains("core WebAssembly module"), "{err}");

    let (ok, out, err) = run_corral(&["jobs", "list", "--redis", url], Secret::Env(&token)).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("stats v2  normalize -> count_words  fuel=5000000"),
        "{out}"
    );

    // A job's rate limit, set and removed; an unknown job is refused.
    let (ok, out, err) = plain(&[
        "jobs",
        "rate-limit",
        "stats",
        "20/1s",
        "--redis",
        url,
        "--tenant",
        "acme",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("job stats of tenant acme: at most 20 tasks per 1000 ms"),
        "{out}"
    );
    let broker = corral::broker::RedisBroker::connect(corral::broker::RedisConfig::new(url))
        .await
        .unwrap();
    {
        use corral::broker::Broker as _;
        let rates = broker.job_rates("acme").await.unwrap();
        assert_eq!(rates.len(), 1);
        assert_eq!((rates[0].1.tasks, rates[0].1.per_ms), (20, 1000));
        let (ok, _, err) = plain(&[
            "jobs",
            "rate-limit",
            "stats",
            "none",
            "--redis",
            url,
            "--tenant",
            "acme",
        ])
        .await;
        assert!(ok, "{err}");
        assert!(broker.job_rates("acme").await.unwrap().is_empty());
    }
    let (ok, _, err) = plain(&[
        "jobs",
        "rate-limit",
        "nope",
        "5/1s",
        "--redis",
        url,
        "--tenant",
        "acme",
    ])
    .await;
    assert!(!ok && err.contains("has no job `nope`"), "{err}");

    // What the commands wrote is what the library reads.
    let catalog = RedisCatalog::connect(url).await.unwrap();
    let job = catalog.job("acme", "stats", None).await.unwrap().unwrap();
    assert_eq!(job.version, 2);
    assert_eq!(job.handlers.len(), 2);
    assert_eq!(job.limits.fuel, 5_000_000);

    // Rotating a token: add one, revoke the old by the secret on stdin; the
    // old stops working.
    let (ok, second, err) = plain(&["tenants", "token", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    let second = second.trim().to_owned();
    assert!(second.starts_with("crl_") && second != token, "{second}");
    // Each command that printed a token stored only its hash.
    crate::api_support::assert_tokens_stored_only_hashed(&redis, &[&token, &second]);
    let (ok, _, err) = run_corral(
        &["tenants", "revoke", "--token-file", "-", "--redis", url],
        Secret::Stdin(&token),
    )
    .await;
    assert!(
        ok && err.contains("revoked token") && err.contains("of tenant acme"),
        "{err}"
    );
    let (ok, _, err) = run_corral(&["jobs", "list", "--redis", url], Secret::Env(&token)).await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    // The new one, from a file.
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{second}\n")).unwrap();
    let file = file.display().to_string();
    let (ok, out, err) = plain(&["jobs", "list", "--redis", url, "--token-file", &file]).await;
    assert!(ok && out.contains("stats v2"), "{err}");
    let (ok, _, err) = run_corral(
        &["tenants", "revoke", "--token-from-env", "--redis", url],
        Secret::Env(&token),
    )
    .await;
    assert!(!ok && err.contains("no tenant has that token"), "{err}");
    let (ok, _, err) = plain(&["tenants", "token", "nobody", "--redis", url]).await;
    assert!(!ok && err.contains("no tenant `nobody`"), "{err}");

    // Changing limits: only those given; the rest stay.
    let (ok, out, err) = plain(&[
        "tenants",
        "limits",
        "acme",
        "--redis",
        url,
        "--max-concurrency",
        "3",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"max_concurrency\": 3"), "{out}");
    let acme = catalog.tenant("acme").await.unwrap().unwrap();
    assert_eq!(acme.limits.max_concurrency, 3);
    assert_eq!(acme.limits.max_fuel, 5_000_000);
    let (ok, _, err) = plain(&["tenants", "limits", "nobody", "--redis", url]).await;
    assert!(!ok && err.contains("no tenant `nobody`"), "{err}");
}

/// The operator's edges, through the real binary: `default` is reserved,
/// limits that overflow are refused, tokens are listed by id and revoked
/// by id, and a token given as an argument is refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_edges_reserved_name_overflow_and_token_ids() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();
    let catalog = RedisCatalog::connect(url).await.unwrap();

    // `default` is reserved, in the catalog and in `corral serve` alike.
    let (ok, _, err) = plain(&["tenants", "create", "default", "--redis", url]).await;
    assert!(!ok && err.contains("reserved"), "{err}");
    assert_eq!(catalog.tenant("default").await.unwrap(), None);
    let (ok, _, err) = plain(&["serve", "--listen", "127.0.0.1:0", "--tenant", "default"]).await;
    assert!(!ok && err.contains("reserved"), "{err}");

    // Sizes and times that do not fit are refused, never wrapped; generated
    // values past each flag's ceiling, and the ceiling itself accepted.
    let (ok, _, err) = plain(&["tenants", "create", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    let mut rng = rand::rng();
    let flags: [(&str, u64, &str); 5] = [
        ("--max-memory-mib", u64::MAX >> 20, "max_memory_bytes"),
        ("--max-module-kib", u64::MAX >> 10, "max_module_bytes"),
        (
            "--max-module-storage-mib",
            u64::MAX >> 20,
            "max_module_storage_bytes",
        ),
        ("--max-output-kib", u64::MAX >> 10, "max_output_bytes"),
        ("--max-log-kib", u64::MAX >> 10, "max_log_bytes"),
    ];
    for (flag, ceiling, field) in flags {
        let mut over = vec![ceiling + 1, u64::MAX, 1 << 60];
        over.extend((0..3).map(|_| rand::Rng::random_range(&mut rng, ceiling + 1..=u64::MAX)));
        for value in over {
            let value = value.to_string();
            let (ok, _, err) =
                plain(&["tenants", "limits", "acme", "--redis", url, flag, &value]).await;
            assert!(!ok && err.contains("too large"), "{flag} {value}: {err}");
        }
        let value = ceiling.to_string();
        let (ok, out, err) =
            plain(&["tenants", "limits", "acme", "--redis", url, flag, &value]).await;
        assert!(ok, "{flag} {value}: {err}");
        let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let unit = if flag.ends_with("mib") {
            1 << 20
        } else {
            1 << 10
        };
        assert_eq!(printed[field], ceiling * unit, "{out}");
    }
    for value in ["20000000000000000s", "5124095576030431h", "1e30s"] {
        let (ok, _, err) = plain(&[
            "tenants",
            "limits",
            "acme",
            "--redis",
            url,
            "--max-timeout",
            value,
        ])
        .await;
        assert!(!ok && err.contains("--max-timeout"), "{value}: {err}");
    }
    let (ok, _, err) = plain(&[
        "tenants",
        "create",
        "wrapped",
        "--redis",
        url,
        "--max-memory-mib",
        "1152921504606846976",
    ])
    .await;
    assert!(!ok && err.contains("too large"), "{err}");
    assert_eq!(catalog.tenant("wrapped").await.unwrap(), None);
    // Every limit has its flag, printed back with the rest.
    let (ok, out, err) = plain(&[
        "tenants",
        "limits",
        "acme",
        "--redis",
        url,
        "--max-queues",
        "7",
        "--max-modules",
        "8",
        "--max-jobs",
        "9",
        "--max-job-versions",
        "10",
        "--max-handlers-per-job",
        "11",
    ])
    .await;
    assert!(ok, "{err}");
    let acme = catalog.tenant("acme").await.unwrap().unwrap().limits;
    assert_eq!(
        (
            acme.max_queues,
            acme.max_modules,
            acme.max_jobs,
            acme.max_job_versions,
            acme.max_handlers_per_job
        ),
        (7, 8, 9, 10, 11)
    );
    assert!(out.contains("\"max_handlers_per_job\": 11"), "{out}");

    // Token ids: listed with creation times, never the secrets.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (ok, token, err) = plain(&["tenants", "token", "acme", "--redis", url]).await;
        assert!(ok, "{err}");
        let token = corral::tenant::Token::from_presented(&token);
        assert!(err.contains(token.hash().id().as_str()), "{err}");
        tokens.push(token);
    }
    let (ok, listed, err) = plain(&["tenants", "tokens", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    for token in &tokens {
        assert!(listed.contains(token.hash().id().as_str()), "{listed}");
        assert!(!listed.contains(token.expose()) && !listed.contains(&token.hash().0));
    }
    // The creation token too: four lines, each an id and a time.
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed
            .lines()
            .all(|l| l.starts_with("tok_") && l.contains(" created "))
    );

    // Revoked by id: that token stops working, the others do not.
    let gone = &tokens[1];
    let id = gone.hash().id();
    let (ok, _, err) = plain(&["tenants", "revoke", "acme", id.as_str(), "--redis", url]).await;
    assert!(
        ok && err.contains(&format!("revoked token {id} of tenant acme")),
        "{err}"
    );
    let (ok, _, err) = run_corral(
        &["jobs", "list", "--redis", url],
        Secret::Env(gone.expose()),
    )
    .await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    for kept in [&tokens[0], &tokens[2]] {
        let (ok, _, err) = run_corral(
            &["jobs", "list", "--redis", url],
            Secret::Env(kept.expose()),
        )
        .await;
        assert!(ok, "{err}");
    }
    let (ok, listed, _) = plain(&["tenants", "tokens", "acme", "--redis", url]).await;
    assert!(
        ok && !listed.contains(id.as_str()) && listed.lines().count() == 3,
        "{listed}"
    );
    let (ok, _, err) = plain(&["tenants", "revoke", "acme", id.as_str(), "--redis", url]).await;
    assert!(!ok && err.contains("has no token"), "{err}");
    // An id names a token of one tenant only.
    let (ok, _, err) = plain(&["tenants", "create", "zed", "--redis", url]).await;
    assert!(ok, "{err}");
    let kept = tokens[0].hash().id();
    let (ok, _, err) = plain(&["tenants", "revoke", "zed", kept.as_str(), "--redis", url]).await;
    assert!(!ok && err.contains("has no token"), "{err}");
    let (ok, _, err) = plain(&["tenants", "revoke", "acme", "tok_nothex", "--redis", url]).await;
    assert!(!ok && err.contains("not a token id"), "{err}");

    // The old argument forms are refused, saying what to do instead (the
    // values here are not tokens).
    for args in [
        vec!["tenants", "revoke", "crl_fake", "--redis", url],
        vec!["tenants", "revoke", "acme", "crl_fake", "--redis", url],
        vec!["tenants", "revoke", "--token", "crl_fake", "--redis", url],
        vec!["jobs", "list", "--redis", url, "--token", "crl_fake"],
        vec![
            "jobs", "register", "j", "x.wasm", "--redis", url, "--token", "crl_fake",
        ],
    ] {
        let (ok, _, err) = plain(&args).await;
        assert!(
            !ok && err.contains("CORRAL_TOKEN") && err.contains("--token-file"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("crl_fake"),
            "the refusal repeats the secret: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_runs_jobs_uploaded_through_another_process() {
    let _limit = crate::limit::minutes(5);
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
