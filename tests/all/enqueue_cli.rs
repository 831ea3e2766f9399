//! `corral enqueue` as scripts and people use it, as real processes on a
//! private Redis: the tenant and job checked against the catalog (nothing
//! stored when refused), the job's version pinned, the tenant's queue
//! quotas applied as the API applies them, `--arg` strings and `--json-arg`
//! JSON, bulk `--from` JSON Lines (every line enqueued, a bad line named),
//! no progress output when stderr is not a terminal, and `completions`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use corral::broker::{Broker, QueueStats, RedisBroker, RedisConfig};
use corral::task::{Task, TaskId};

use crate::support::redis::RedisServer;

fn corral(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("--no-disk-cache")
        .args(args)
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    corral(args).output().expect("run corral")
}

/// Runs with `input` on standard input.
fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = corral(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corral");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
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

/// Runs and requires exit status 1; returns stderr.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}",
        text(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    text(&out.stderr)
}

/// Creates `tenant` with `limits` flags and registers `noop` for it.
fn tenant_with_noop(url: &str, tenant: &str, limits: &[&str]) {
    let mut create = vec!["tenants", "create", tenant, "--redis", url];
    create.extend_from_slice(limits);
    ok(&create);
    let noop = crate::support::job("noop");
    let noop = noop.to_str().expect("a UTF-8 path");
    ok(&[
        "jobs", "register", "noop", noop, "--redis", url, "--tenant", tenant,
    ]);
}

/// Reads the broker from this process.
struct Store {
    rt: tokio::runtime::Runtime,
    broker: RedisBroker,
}

impl Store {
    fn new(url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let broker = rt
            .block_on(RedisBroker::connect(RedisConfig::new(url)))
            .expect("connect");
        Self { rt, broker }
    }

    fn stats(&self, tenant: &str) -> QueueStats {
        self.rt
            .block_on(self.broker.tenant_stats(tenant))
            .expect("stats")
    }

    fn stored(&self, tenant: &str) -> usize {
        let s = self.stats(tenant);
        s.pending + s.scheduled + s.active + s.completed + s.dead
    }

    fn task(&self, tenant: &str, id: &str) -> Task {
        let id: TaskId = id.trim().parse().expect("a task id");
        self.rt
            .block_on(self.broker.task(tenant, id))
            .expect("read")
            .expect("the task is stored")
    }
}

#[test]
fn unknown_tenants_and_jobs_are_refused_and_nothing_is_stored() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    tenant_with_noop(&url, "acme", &[]);

    let e = refused(&["enqueue", "noop", "--redis", &url, "--tenant", "nobody"]);
    assert!(e.contains("no tenant `nobody`"), "{e}");
    let e = refused(&["enqueue", "nope", "--redis", &url, "--tenant", "acme"]);
    assert!(e.contains("unknown job `nope` for tenant `acme`"), "{e}");
    assert!(e.contains("nothing was enqueued"), "{e}");
    // `default` is never in the catalog, but it has no `noop` until a
    // worker registers one: acme's is not its.
    let e = refused(&["enqueue", "noop", "--redis", &url]);
    assert!(e.contains("unknown job `noop` for tenant `default`"), "{e}");
    // A version that does not exist, through a line of --from.
    let out = run_with_input(
        &[
            "enqueue", "--redis", &url, "--tenant", "acme", "--from", "-",
        ],
        br#"{"job": "noop", "version": 7}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 1: job `noop` has no version 7"),
        "{}",
        text(&out.stderr)
    );
    for tenant in ["acme", "nobody", "default"] {
        assert_eq!(store.stored(tenant), 0, "{tenant}");
    }
    // And a known one goes in.
    let id = ok(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    assert_eq!(store.task("acme", &id).job_name, "noop");
    assert_eq!(store.stored("acme"), 1);
}

#[test]
fn tasks_are_pinned_to_the_current_version() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    tenant_with_noop(&url, "acme", &[]);
    let before = ok(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    let noop = crate::support::job("noop");
    let noop = noop.to_str().expect("a UTF-8 path");
    ok(&[
        "jobs",
        "register",
        "noop",
        noop,
        "--replace",
        "--redis",
        &url,
        "--tenant",
        "acme",
    ]);
    let after = ok(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    assert_eq!(store.task("acme", &before).job_version, Some(1));
    assert_eq!(store.task("acme", &after).job_version, Some(2));
    let bulk = run_with_input(
        &[
            "enqueue", "noop", "--redis", &url, "--tenant", "acme", "--from", "-",
        ],
        b"{}\n{\"version\": 1}\n",
    );
    assert!(bulk.status.success(), "{}", text(&bulk.stderr));
    let ids: Vec<String> = text(&bulk.stdout).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(store.task("acme", &ids[0]).job_version, Some(2));
    assert_eq!(store.task("acme", &ids[1]).job_version, Some(1));
}

#[test]
fn the_tenants_queue_quotas_apply() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    tenant_with_noop(&url, "capped", &["--max-queued", "3", "--max-queues", "1"]);
    let enqueue = ["enqueue", "noop", "--redis", &url, "--tenant", "capped"];
    for _ in 0..3 {
        ok(&enqueue);
    }
    let e = refused(&enqueue);
    assert!(e.contains("would pass its limit of 3"), "{e}");
    // A batch that does not fit is refused whole.
    ok(&[
        "tenants",
        "limits",
        "capped",
        "--redis",
        &url,
        "--max-queued",
        "4",
    ]);
    let out = run_with_input(
        &[
            "enqueue", "noop", "--redis", &url, "--tenant", "capped", "--from", "-",
        ],
        b"{}\n{}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("line 1:") && e.contains("limit of 4"), "{e}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(store.stats("capped").pending, 3);
    // A second queue name is one more than max_queues allows.
    ok(&[
        "tenants",
        "limits",
        "capped",
        "--redis",
        &url,
        "--max-queued",
        "100",
    ]);
    let mut other = enqueue.to_vec();
    other.extend(["--queue", "other"]);
    let e = refused(&other);
    assert!(e.contains("its limit being 1"), "{e}");
    assert_eq!(store.stored("capped"), 3);
    // Under the raised limit, the default queue takes more.
    ok(&enqueue);
    assert_eq!(store.stored("capped"), 4);
}

#[test]
fn arg_values_are_strings_and_json_args_are_json() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    tenant_with_noop(&url, "acme", &[]);
    let id = ok(&[
        "enqueue",
        "noop",
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--arg",
        "n=5",
        "--arg",
        "t=true",
        "--json-arg",
        "m=5",
        "--json-arg",
        r#"list=["a",1]"#,
    ]);
    let task = store.task("acme", &id);
    assert_eq!(task.args_map["n"], "5");
    assert_eq!(task.args_map["t"], "true");
    assert_eq!(task.args_map["m"], 5);
    assert_eq!(task.args_map["list"], serde_json::json!(["a", 1]));
    let e = refused(&[
        "enqueue",
        "noop",
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--json-arg",
        "m=five",
    ]);
    assert!(e.contains("argument `m`: `five` is not JSON"), "{e}");
    assert_eq!(store.stored("acme"), 1);
    // `corral run` reads them the same way: the string "5" reaches the
    // handler, which returns the args it got.
    let noop = crate::support::job("noop");
    let out = ok(&[
        "run",
        noop.to_str().expect("a UTF-8 path"),
        "--arg",
        "n=5",
        "--json-arg",
        "m=5",
    ]);
    assert!(out.contains(r#"final args: {"m":5,"n":"5"}"#), "{out}");
}

/// Writes `lines` lines of noop tasks, each with its index as arg `i`.
fn jsonl(path: &Path, lines: usize, bad_at: Option<usize>) {
    let mut body = String::new();
    for i in 1..=lines {
        if Some(i) == bad_at {
            body.push_str("{\"job\": \"noop\", \"args\": {\"i\": 1}\n");
        } else {
            body.push_str(&format!("{{\"args\": {{\"i\": {i}}}}}\n"));
        }
    }
    std::fs::write(path, body).expect("write the lines");
}

#[test]
fn from_a_file_every_line_is_enqueued_and_a_bad_line_is_named() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    tenant_with_noop(&url, "acme", &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tasks.jsonl");
    let lines = 5000;
    jsonl(&file, lines, None);
    let file_arg = file.to_str().expect("a UTF-8 path");
    let start = Instant::now();
    let out = corral(&[
        "enqueue", "noop", "--redis", &url, "--tenant", "acme", "--from", file_arg,
    ])
    .output()
    .expect("run corral");
    let took = start.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // stderr is a pipe here: no progress bar, nothing at all.
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let ids: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), lines);
    eprintln!(
        "enqueue --from: {lines} tasks in {took:?} ({:.0} tasks/s, process start included)",
        lines as f64 / took.as_secs_f64()
    );
    assert_eq!(store.stats("acme").pending, lines);
    // The ids come in the lines' order.
    for i in [1, 999, 1000, 1001, lines] {
        assert_eq!(store.task("acme", &ids[i - 1]).args_map["i"], i, "line {i}");
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), lines);

    // --quiet: the count alone.
    let out = ok(&[
        "enqueue", "noop", "--redis", &url, "--tenant", "acme", "--from", file_arg, "--quiet",
    ]);
    assert_eq!(out.trim(), lines.to_string());
    assert_eq!(store.stats("acme").pending, 2 * lines);

    // Line 2501 is not JSON: the 2,500 before it are in, nothing after.
    let bad = dir.path().join("bad.jsonl");
    jsonl(&bad, lines, Some(2501));
    let out = run(&[
        "enqueue",
        "noop",
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--from",
        bad.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("line 2501: not JSON"), "{e}");
    assert!(
        e.contains("2500 task(s) from the lines before line 2501"),
        "{e}"
    );
    assert_eq!(text(&out.stdout).lines().count(), 2500);
    assert_eq!(store.stats("acme").pending, 2 * lines + 2500);

    // Standard input, a line naming its own job and queue, blank lines
    // skipped, an unknown field refused with its line.
    let out = run_with_input(
        &[
            "enqueue", "--redis", &url, "--tenant", "acme", "--from", "-",
        ],
        b"{\"job\": \"noop\", \"queue\": \"default\"}\n\n{\"job\": \"noop\", \"urgency\": 1}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("line 3: not a task: unknown field `urgency`"),
        "{e}"
    );
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn wait_prints_no_spinner_off_a_terminal() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    tenant_with_noop(&url, "acme", &[]);
    let id = ok(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    // No worker: the task stays pending; the timeout's message is all of
    // stderr.
    let out = run(&[
        "wait",
        id.trim(),
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let e = text(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("still pending"), "{e}");
}

#[test]
fn a_worker_takes_higher_priorities_first() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let store = Store::new(&url);
    ok(&["tenants", "create", "acme", "--redis", &url]);
    let sleep = crate::support::job("sleep");
    let sleep = sleep.to_str().expect("a UTF-8 path");
    ok(&[
        "jobs", "register", "nap", sleep, "--redis", &url, "--tenant", "acme",
    ]);
    let enqueue = |extra: &[&str]| {
        let mut args = vec![
            "enqueue",
            "nap",
            "--json-arg",
            "ms=40",
            "--redis",
            &url,
            "--tenant",
            "acme",
        ];
        args.extend_from_slice(extra);
        ok(&args).trim().to_owned()
    };
    // No worker yet: all of them wait.
    let mut order = vec![(0, enqueue(&[])), (0, enqueue(&[]))];
    order.push((9, enqueue(&["--priority", "9"])));
    order.push((4, enqueue(&["--priority", "4"])));
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = dir.path().join("tasks.jsonl");
    std::fs::write(&lines, "{\"priority\": 7}\n{}\n").expect("write lines");
    let ids = ok(&[
        "enqueue",
        "nap",
        "--json-arg",
        "ms=40",
        "--from",
        lines.to_str().expect("a UTF-8 path"),
        "--redis",
        &url,
        "--tenant",
        "acme",
    ]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    order.push((7, ids[0].to_owned()));
    order.push((0, ids[1].to_owned()));
    let out = run(&[
        "enqueue",
        "nap",
        "--priority",
        "10",
        "--redis",
        &url,
        "--tenant",
        "acme",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--priority"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(store.stats("acme").pending, 6);

    let mut worker = corral(&["worker", "--redis", &url, "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral worker");
    let start = Instant::now();
    while store.stats("acme").completed < 6 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the worker did not finish: {:?}",
            store.stats("acme")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = worker.kill();
    let _ = worker.wait();
    // One at a time, 40 ms each: finishing order is taking order.
    let mut finished: Vec<(chrono::DateTime<chrono::Utc>, u8, String)> = order
        .iter()
        .map(|(priority, id)| {
            let task = store.task("acme", id);
            assert_eq!(task.priority, *priority, "{id}");
            (task.updated_at, task.priority, id.clone())
        })
        .collect();
    finished.sort();
    let taken: Vec<&str> = finished.iter().map(|(_, _, id)| id.as_str()).collect();
    let want: Vec<&str> = [2, 4, 3, 0, 1, 5]
        .iter()
        .map(|&i| order[i].1.as_str())
        .collect();
    assert_eq!(taken, want, "{finished:?}");
}

/// Runs `args` on a pseudo-terminal (util-linux's `script`, which Debian
/// always has): what the terminal showed, stdout and stderr together.
fn on_a_terminal(args: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_corral"))
        .chain(["--no-disk-cache"])
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run `script` (util-linux) for a pseudo-terminal");
    text(&out.stdout)
}

/// The spinner and the bar appear on a terminal (and, as the tests above
/// check, nowhere else).
#[test]
fn a_terminal_shows_the_spinner_and_the_bar() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    tenant_with_noop(&url, "acme", &[]);
    let id = ok(&["enqueue", "noop", "--redis", &url, "--tenant", "acme"]);
    let shown = on_a_terminal(&[
        "wait",
        id.trim(),
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--timeout",
        "1s",
    ]);
    assert!(
        shown.contains(&format!("waiting for task {}", id.trim())),
        "{shown}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tasks.jsonl");
    jsonl(&file, 20_000, None);
    let shown = on_a_terminal(&[
        "enqueue",
        "noop",
        "--redis",
        &url,
        "--tenant",
        "acme",
        "--quiet",
        "--from",
        file.to_str().expect("a UTF-8 path"),
    ]);
    assert!(shown.contains("tasks enqueued ["), "{shown}");
    assert!(shown.contains("20000"), "{shown}");
}

#[test]
fn completions_are_scripts_the_shell_accepts() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let script = ok(&["completions", "bash"]);
    assert!(script.contains("--json-arg"), "{script}");
    assert!(script.contains("enqueue"), "{script}");
    let path = dir.path().join("corral.bash");
    std::fs::write(&path, &script).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));
    for shell in ["zsh", "fish"] {
        let script = ok(&["completions", shell]);
        assert!(script.contains("--from"), "{shell}: {script}");
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid value 'tcsh'"));
}
