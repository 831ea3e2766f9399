//! Operating the fleet from the command line, as real processes against a
//! private Redis: `corral admin token|tokens|revoke` and what `corral
//! serve`'s API makes of those tokens; `corral tenants ls` as a table and
//! as JSON, a page at a time; `corral jobs rm`, which asks first and whose
//! removal fails the tasks already queued; and `--prefix` / `--cluster`
//! reaching the catalog of every tenant and job command, so two prefixes on
//! one Redis are two catalogs.

use std::process::Stdio;

use corral::catalog::{Catalog, RedisCatalog};
use corral::tenant::{TenantLimits, Token};
use serde_json::{Value, json};

use crate::api_cli::{Secret, corral, plain, run_corral, serve};
use crate::api_support::{self, RedisServer};
use crate::support;

/// Parses a command's JSON output, failing the test with it otherwise.
fn parsed(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The `name` of each element of a JSON array.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_and_the_tenant_listing_from_the_command_line() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();
    let mut tokens = Vec::new();
    for (name, concurrency) in [("beta", "7"), ("acme", "3")] {
        let (ok, token, err) = plain(&[
            "tenants",
            "create",
            name,
            "--redis",
            url,
            "--max-concurrency",
            concurrency,
        ])
        .await;
        assert!(ok, "{err}");
        tokens.push(token.trim().to_owned());
    }
    let (ok, _, err) = plain(&["tenants", "token", "beta", "--redis", url]).await;
    assert!(ok, "{err}");

    // The listing: a header, then one aligned row per tenant, by name.
    let (ok, out, err) = plain(&["tenants", "ls", "--redis", url]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(lines[1].starts_with("acme "), "{out}");
    assert!(lines[2].starts_with("beta "), "{out}");
    assert!(lines[1].contains("concurrency=3 "), "{out}");
    assert!(lines[2].contains("concurrency=7 "), "{out}");
    let column = |line: &str, what: &str| line.find(what);
    assert_eq!(
        column(lines[1], "concurrency="),
        column(lines[2], "concurrency=")
    );
    assert_eq!(column(lines[0], "LIMITS"), column(lines[1], "concurrency="));
    // Token counts are right-aligned just before the limits.
    assert!(lines[1].contains(" 1  concurrency="), "{out}");
    assert!(lines[2].contains(" 2  concurrency="), "{out}");
    assert!(!out.contains("crl_"), "{out}");
    // As JSON: every limit, the creation time and the token count.
    let (ok, out, err) = plain(&["tenants", "ls", "--json", "--redis", url]).await;
    assert!(ok, "{err}");
    let listed = parsed(&out);
    assert_eq!(names(&listed), ["acme", "beta"]);
    assert_eq!(listed[0]["tokens"], 1);
    assert_eq!(listed[1]["tokens"], 2);
    assert_eq!(listed[0]["limits"]["max_concurrency"], 3);
    assert_eq!(
        listed[1]["limits"]["max_queued"],
        json!(TenantLimits::default().max_queued)
    );
    assert!(listed[0]["created_at"].is_string(), "{out}");
    // A page at a time: `--limit` stops and says where to go on.
    let (ok, out, err) = plain(&["tenants", "ls", "--json", "--limit", "1", "--redis", url]).await;
    assert!(ok, "{err}");
    assert_eq!(names(&parsed(&out)), ["acme"]);
    assert!(err.contains("--after acme"), "{err}");
    let (ok, out, err) =
        plain(&["tenants", "ls", "--json", "--after", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    assert_eq!(names(&parsed(&out)), ["beta"]);
    assert!(!err.contains("--after"), "{err}");

    // An admin token: printed once, stored hashed, listed by id and name.
    let (ok, admin, err) = plain(&["admin", "token", "--name", "ci runner", "--redis", url]).await;
    assert!(ok, "{err}");
    let admin = admin.trim().to_owned();
    assert!(admin.starts_with("crl_") && admin.len() == 68, "{admin}");
    let id = Token::from_presented(&admin).hash().id();
    assert!(err.contains(id.as_str()), "{err}");
    api_support::assert_tokens_stored_only_hashed(&redis, &[&admin]);
    let (ok, out, err) = plain(&["admin", "tokens", "--redis", url]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(id.as_str()) && out.contains("ci runner"),
        "{out}"
    );
    assert!(!out.contains("crl_"), "{out}");
    let (ok, out, err) = plain(&["admin", "tokens", "--json", "--redis", url]).await;
    assert!(ok, "{err}");
    let listed = parsed(&out);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["name"], "ci runner");
    let (ok, _, err) = plain(&["admin", "token", "--name", "", "--redis", url]).await;
    assert!(!ok && err.contains("name"), "{err}");
    // It is no tenant's token: the tenant commands do not take it.
    let (ok, _, err) = run_corral(&["jobs", "list", "--redis", url], Secret::Env(&admin)).await;
    assert!(!ok && err.contains("invalid token"), "{err}");
    let (ok, _, err) = run_corral(
        &["tenants", "revoke", "--token-from-env", "--redis", url],
        Secret::Env(&admin),
    )
    .await;
    assert!(!ok && err.contains("no tenant has that token"), "{err}");

    // Through `corral serve` on the same Redis, it acts on every tenant.
    let (mut api_process, _, api) = serve(&["--redis", url, "--workers", "0"]).await;
    let tenants = api.get("/v1/tenants", &admin).await;
    tenants.expect(200, "");
    assert_eq!(names(&tenants.body["tenants"]), ["acme", "beta"]);
    api.get("/v1/stats?tenant=acme", &admin)
        .await
        .expect(200, "");
    api.get("/v1/tenants", &tokens[0])
        .await
        .expect(403, "admin_required");
    // Revoked by id, it is refused at once.
    let (ok, _, err) = plain(&["admin", "revoke", id.as_str(), "--redis", url]).await;
    assert!(ok && err.contains("revoked admin token"), "{err}");
    api.get("/v1/stats?tenant=acme", &admin)
        .await
        .expect(401, "unauthorized");
    let (ok, out, err) = plain(&["admin", "tokens", "--redis", url]).await;
    assert!(ok && !out.contains(id.as_str()), "{out}{err}");
    let (ok, _, err) = plain(&["admin", "revoke", id.as_str(), "--redis", url]).await;
    assert!(!ok && err.contains("no admin token"), "{err}");
    let (ok, _, err) = plain(&["admin", "revoke", "tok_nope", "--redis", url]).await;
    assert!(!ok && err.contains("not a token id"), "{err}");
    // The tenants' own tokens were never touched.
    api.get("/v1/stats", &tokens[1]).await.expect(200, "");
    api_process.kill().await.expect("stop the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_rm_asks_first_and_the_queued_tasks_then_fail() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();
    let (ok, token, err) = plain(&["tenants", "create", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let normalize = support::job("normalize").display().to_string();
    for job in ["doomed", "kept"] {
        let (ok, _, err) = plain(&[
            "jobs", "register", job, &normalize, "--tenant", "acme", "--redis", url,
        ])
        .await;
        assert!(ok, "{err}");
    }
    // A task queued for it, with no worker yet.
    let (mut api_process, _, api) = serve(&["--redis", url, "--workers", "0"]).await;
    let queued = api.enqueue(&token, "doomed", json!({"text": "X"})).await;

    // A rate limit on it, which goes with the job.
    let (ok, _, err) = plain(&[
        "jobs",
        "rate-limit",
        "doomed",
        "5/1s",
        "--tenant",
        "acme",
        "--redis",
        url,
    ])
    .await;
    assert!(ok, "{err}");
    let broker = corral::broker::RedisBroker::connect(corral::broker::RedisConfig::new(url))
        .await
        .unwrap();
    let rates = || async {
        corral::broker::Broker::job_rates(&broker, "acme")
            .await
            .unwrap()
    };
    assert_eq!(rates().await.len(), 1);

    // Without a terminal and without --yes it refuses, and removes nothing.
    let rm = ["jobs", "rm", "doomed", "--tenant", "acme", "--redis", url];
    let (ok, _, err) = plain(&rm).await;
    assert!(!ok && err.contains("--yes"), "{err}");
    let catalog = RedisCatalog::connect(url).await.unwrap();
    assert!(catalog.job("acme", "doomed", None).await.unwrap().is_some());
    // With --yes it goes; by the tenant's own token too.
    let (ok, _, err) = run_corral(
        &["jobs", "rm", "doomed", "--yes", "--redis", url],
        Secret::Env(&token),
    )
    .await;
    assert!(ok && err.contains("removed job `doomed`"), "{err}");
    assert_eq!(catalog.job("acme", "doomed", None).await.unwrap(), None);
    assert!(
        rates().await.is_empty(),
        "the job's rate limit went with it"
    );
    let (ok, out, err) = plain(&["jobs", "list", "--tenant", "acme", "--redis", url]).await;
    assert!(
        ok && !out.contains("doomed") && out.contains("kept v1"),
        "{out}{err}"
    );
    let (ok, _, err) = plain(&[&rm[..], &["--yes"]].concat()).await;
    assert!(!ok && err.contains("has no job `doomed`"), "{err}");

    // A worker that starts now fails the queued task as an unknown job.
    let mut worker = corral()
        .args(["worker", "--redis", url, "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral worker");
    let done = api.wait(&token, &queued).await;
    assert_eq!(done["state"], "dead", "{done}");
    assert_eq!(done["error"]["kind"], "unknown_job", "{done}");
    let kept = api.enqueue(&token, "kept", json!({"text": "Y"})).await;
    assert_eq!(api.wait(&token, &kept).await["state"], "completed");
    worker.kill().await.expect("stop the worker");
    api_process.kill().await.expect("stop the API");
}

/// Runs `corral ARGS` on a pseudo-terminal (util-linux `script`), typing
/// `typed` at it; (exit status, what the terminal showed). Bounded: killed
/// after a minute.
fn on_a_terminal(args: &[&str], typed: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_corral"))
        .chain(["--no-disk-cache"])
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut child = std::process::Command::new("timeout")
        .args([
            "--kill-after=5s",
            "60s",
            "script",
            "-qec",
            &quoted.join(" "),
            "/dev/null",
        ])
        .env("TERM", "xterm")
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run `script` (util-linux) for a pseudo-terminal");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(typed.as_bytes()).expect("type the answer");
    drop(stdin);
    let out = child.wait_with_output().expect("script ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// On a terminal, `jobs rm` asks, and only a yes removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_rm_on_a_terminal_removes_only_on_yes() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();
    let (ok, _, err) = plain(&["tenants", "create", "acme", "--redis", url]).await;
    assert!(ok, "{err}");
    let normalize = support::job("normalize").display().to_string();
    let (ok, _, err) = plain(&[
        "jobs", "register", "doomed", &normalize, "--tenant", "acme", "--redis", url,
    ])
    .await;
    assert!(ok, "{err}");
    let catalog = RedisCatalog::connect(url).await.unwrap();
    let rm = ["jobs", "rm", "doomed", "--tenant", "acme", "--redis", url];
    for no in ["n\n", "\n", "yes please\n"] {
        let rm = rm.map(str::to_owned);
        let typed = no.to_owned();
        let (status, shown) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = rm.iter().map(String::as_str).collect();
            on_a_terminal(&args, &typed)
        })
        .await
        .expect("the terminal run");
        assert!(
            shown.contains("remove job `doomed` of tenant acme"),
            "{no:?}: {shown}"
        );
        assert!(shown.contains("[y/N]"), "{no:?}: {shown}");
        assert_eq!(status, Some(1), "{no:?}: {shown}");
        assert!(shown.contains("left as it was"), "{no:?}: {shown}");
        assert!(catalog.job("acme", "doomed", None).await.unwrap().is_some());
    }
    let args = rm.map(str::to_owned);
    let (status, shown) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        on_a_terminal(&args, "y\n")
    })
    .await
    .expect("the terminal run");
    assert_eq!(status, Some(0), "{shown}");
    assert!(shown.contains("removed job `doomed`"), "{shown}");
    assert_eq!(catalog.job("acme", "doomed", None).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_on_one_redis_are_two_catalogs() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let url = redis.url();
    let url = url.as_str();
    // `one` under p1 by the flag; `two` under p2 by the config file's
    // top-level key (which applies to every command on Redis).
    let (ok, _, err) = plain(&["tenants", "create", "one", "--redis", url, "--prefix", "p1"]).await;
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("corral.toml");
    std::fs::write(&config, format!("redis = \"{url}\"\nprefix = \"p2\"\n")).expect("write config");
    let config = config.display().to_string();
    let (ok, _, err) = plain(&["--config", &config, "tenants", "create", "two"]).await;
    assert!(ok, "{err}");

    let listing = |args: Vec<&'static str>| {
        let url = url.to_owned();
        async move {
            let mut full = vec!["tenants", "ls", "--json", "--redis", url.as_str()];
            full.extend(args);
            let (ok, out, err) = plain(&full).await;
            assert!(ok, "{full:?}: {err}");
            names(&parsed(&out))
        }
    };
    assert_eq!(listing(vec!["--prefix", "p1"]).await, ["one"]);
    assert_eq!(listing(vec!["--prefix", "p2"]).await, ["two"]);
    assert!(listing(vec![]).await.is_empty());
    let (ok, out, err) = plain(&["--config", &config, "tenants", "ls", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(names(&parsed(&out)), ["two"]);

    // Jobs, tokens and limits follow the prefix too.
    let normalize = support::job("normalize").display().to_string();
    let (ok, _, err) = plain(&[
        "jobs", "register", "j", &normalize, "--tenant", "one", "--redis", url, "--prefix", "p1",
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = plain(&[
        "jobs", "list", "--tenant", "one", "--redis", url, "--prefix", "p1",
    ])
    .await;
    assert!(ok && out.contains("j v1"), "{out}{err}");
    let (ok, _, err) = plain(&["--config", &config, "jobs", "list", "--tenant", "one"]).await;
    assert!(!ok && err.contains("no tenant `one`"), "{err}");
    let (ok, _, err) = plain(&["tenants", "token", "one", "--redis", url, "--prefix", "p2"]).await;
    assert!(!ok && err.contains("no tenant `one`"), "{err}");
    let (ok, _, err) = plain(&["admin", "token", "--redis", url, "--prefix", "p1"]).await;
    assert!(ok, "{err}");
    let p1 = RedisCatalog::connect_with_prefix(url, "p1").await.unwrap();
    let p2 = RedisCatalog::connect_with_prefix(url, "p2").await.unwrap();
    assert!(p1.tenant("one").await.unwrap().is_some());
    assert_eq!(p2.tenant("one").await.unwrap(), None);
    assert_eq!(p1.admin_tokens().await.unwrap().len(), 1);
    assert!(p2.admin_tokens().await.unwrap().is_empty());
    // Every key the commands wrote is under one of the two prefixes.
    let keys = api_support::keys(&redis);
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(
            key.starts_with("p1:") || key.starts_with("p2:"),
            "a key outside the prefixes: {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_commands_reach_a_cluster_with_cluster() {
    let _limit = crate::limit::minutes(5);
    let urls = tokio::task::spawn_blocking(|| crate::support::redis::cluster().urls())
        .await
        .expect("cluster start");
    let prefix = crate::support::redis::unique_prefix("fleet");
    let seed = urls[0].as_str();
    let mut created = Vec::new();
    // Enough names to land in slots of every node.
    for i in 0..6 {
        let name = format!("t{i}");
        let (ok, _, err) = plain(&[
            "tenants",
            "create",
            &name,
            "--redis",
            seed,
            "--cluster",
            "--prefix",
            &prefix,
        ])
        .await;
        assert!(ok, "{name}: {err}");
        created.push(name);
    }
    let (ok, out, err) = plain(&[
        "tenants",
        "ls",
        "--json",
        "--redis",
        seed,
        "--cluster",
        "--prefix",
        &prefix,
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(names(&parsed(&out)), created);
    let (ok, _, err) = plain(&[
        "admin",
        "token",
        "--redis",
        seed,
        "--cluster",
        "--prefix",
        &prefix,
    ])
    .await;
    assert!(ok, "{err}");
}
