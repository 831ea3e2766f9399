//! The command's logs as a deployment reads them: `--log-format json`
//! gives one JSON object per line with the task's span on every event of
//! its run; text written to a pipe carries no colour codes; `-vv` raises
//! Corral's own events to debug and keeps the libraries quiet, `-vvv` lets
//! them speak.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support;

/// Runs `corral <flags> run normalize.wasm --arg text=...` with stderr on
/// a pipe; returns stderr. Bounded by the test's limit.
fn run_logged(flags: &[&str], env: &[(&str, &str)]) -> String {
    let cache = tempfile::tempdir().expect("cache dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.args(flags)
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("run")
        .arg(support::job("normalize"))
        .args(["--arg", "text=Hello"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("CORRAL_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn json_logs_are_one_object_per_line_with_the_tasks_span() {
    let _limit = crate::limit::minutes(5);
    for (flags, env) in [
        (&["--log-format", "json", "-vv"][..], &[][..]),
        (&["-vv"][..], &[("CORRAL_LOG_FORMAT", "json")][..]),
    ] {
        let stderr = run_logged(flags, env);
        let events: Vec<Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let finished = events
            .iter()
            .find(|e| e["fields"]["message"] == "handler finished")
            .unwrap_or_else(|| panic!("no handler event: {stderr}"));
        assert_eq!(finished["level"], "DEBUG");
        let span = &finished["span"];
        assert_eq!(span["name"], "task", "{finished}");
        assert_eq!(span["tenant"], "default");
        assert_eq!(span["job"], "local");
        assert_eq!(span["attempt"], 1);
        assert_eq!(span["task"], finished["fields"]["task"]);
    }
}

#[test]
fn text_logs_on_a_pipe_have_no_colour_and_verbosity_raises_corral_first() {
    let _limit = crate::limit::minutes(5);
    let quiet = run_logged(&[], &[]);
    assert!(!quiet.contains("handler finished"), "{quiet}");
    let debug = run_logged(&["-vv"], &[]);
    assert!(debug.contains("handler finished"), "{debug}");
    assert!(
        debug.contains("task{task="),
        "the task's span is on its events: {debug}"
    );
    assert!(!debug.contains('\x1b'), "colour codes on a pipe: {debug:?}");
    let library = |text: &str| {
        text.lines()
            .filter(|l| l.contains(" cranelift") || l.contains(" wasmtime"))
            .count()
    };
    assert_eq!(library(&debug), 0, "libraries speak at -vv: {debug}");
    let everything = run_logged(&["-vvv"], &[]);
    assert!(library(&everything) > 0, "libraries are silent at -vvv");
}
