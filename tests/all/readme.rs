//! What the README tells a user to type, run as typed: its code blocks are
//! read from `README.md` and given to `sh`, with the real `corral` binary on
//! `PATH`, from the repository's root. Only the Redis address changes (to a
//! private server's) and compiled components go to a temporary cache. A
//! README edit that breaks a command breaks this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::redis::{RedisServer, WorkerProcess};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README's fenced `bash` block that contains `marker`.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let mut blocks = readme.split("```bash\n").skip(1).map(|rest| {
        rest.split_once("\n```")
            .map(|(block, _)| block.to_owned())
            .unwrap_or_default()
    });
    blocks
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("README.md has no bash block with `{marker}`"))
}

/// Runs `script` with `sh -e` as a user's shell would, `corral` on PATH,
/// from the repository's root; `cache` keeps compiled components. Bounded:
/// the shell is killed after two minutes.
fn sh(script: &str, cache: &Path) -> Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_corral"));
    let bin_dir = bin.parent().expect("the binary's folder");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir.to_owned()];
    dirs.extend(std::env::split_paths(&path));
    Command::new("timeout")
        .args(["--kill-after=5s", "120s", "sh", "-ec", script])
        .current_dir(repo_root())
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env("CORRAL_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `cargo run --release -- run ...`: the `corral run` example, typed as
/// `corral run ...` (the binary `cargo run` would build and start).
#[test]
fn the_readme_run_example_runs_the_chain() {
    let _limit = crate::limit::minutes(5);
    let block = readme_block("-- run jobs/dist/normalize.wasm");
    let script = block.replace("cargo run --release --", "corral");
    let cache = tempfile::tempdir().expect("cache dir");
    let out = sh(&script, cache.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{script}\n{stdout}\n{stderr}");
    // normalize then count_words on "Hello hello world".
    assert!(stdout.contains("state=completed"), "{stdout}");
    assert!(
        stdout.contains(r#""counts":{"hello":2,"world":1}"#),
        "{stdout}"
    );
}

/// `corral enqueue`, `status` and `wait` as the README shows them, against
/// a worker started as it shows (`corral worker --redis ... --jobs-dir
/// jobs/dist`).
#[test]
fn the_readme_shell_commands_enqueue_look_and_wait() {
    let _limit = crate::limit::minutes(5);
    let worker_line = readme_block("corral worker --redis");
    assert_eq!(
        worker_line.trim(),
        "corral worker --redis redis://127.0.0.1:6379 --jobs-dir jobs/dist",
        "the README's worker command changed: update WorkerProcess::start's use here"
    );
    let server = RedisServer::start();
    let url = server.url();
    let logs = tempfile::tempdir().expect("log dir");
    // The README's worker: default prefix, the example jobs.
    let mut worker = WorkerProcess::start(&url, "corral", &[], logs.path().join("worker.log"));
    // As the README says: enqueue once the worker has registered its jobs.
    worker.wait_started();

    let block = readme_block("corral enqueue text-stats");
    let script = format!(
        "{}\necho \"id=$id\"",
        block.replace("redis://127.0.0.1:6379", &url)
    );
    let cache = tempfile::tempdir().expect("cache dir");
    let out = sh(&script, cache.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{script}\n{stdout}\n{stderr}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("id="))
        .unwrap_or_else(|| panic!("no id printed: {stdout}"));
    assert!(id.parse::<corral::TaskId>().is_ok(), "{id}");
    // `status` showed the task (in whatever state it was), `wait` showed
    // it completed: two summaries of the same task.
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("task {id} job=text-stats state=")))
        .collect();
    assert_eq!(summaries.len(), 2, "{stdout}");
    assert!(summaries[1].contains("state=completed"), "{stdout}");
    assert!(
        stdout.contains(r#""top":[["hello",2],["world",1]]"#),
        "{stdout}"
    );
    assert!(worker.stop(), "the worker did not stop cleanly");
}

/// `scripts/demo.sh` builds the jobs (the test command already did) and
/// runs `corral demo`: every task of the demo ends as the demo says.
#[test]
fn the_demo_runs_its_jobs() {
    let _limit = crate::limit::minutes(5);
    let script = std::fs::read_to_string(repo_root().join("scripts/demo.sh")).expect("demo.sh");
    assert!(
        script.contains("\"$corral\" demo \"$@\"")
            && script.contains("build jobs/python/*/ jobs/js/*/ --out-dir jobs/dist"),
        "scripts/demo.sh no longer builds the polyglot jobs and runs `corral demo`: update this test"
    );
    // The target folder's cache: the Python and JavaScript handlers take
    // seconds to compile, once per content.
    let cache = crate::interpreters::component_cache();
    let out = sh("corral demo", &cache);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("job=text-stats state=completed"),
        "{stdout}"
    );
    // Rust, Python and JavaScript handlers in one chain.
    assert!(
        stdout.contains("job=text-stats-polyglot state=completed"),
        "{stdout}"
    );
}
