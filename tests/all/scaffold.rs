//! From an empty folder to a running job, as a new user would: `corral new
//! NAME --lang rust|python|js`, `corral build`, `corral run NAME.wasm
//! --args-file input.json`, each with the real `corral` binary and the real
//! toolchains (Rust's for `wasm32-wasip2`, componentize-py, componentize-js;
//! the test command installs the componentizers when missing). The Rust
//! project is made outside any Corral checkout, so it builds against the
//! guest SDK the binary carries.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn corral(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("--cache-dir")
        .arg(crate::interpreters::component_cache())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run corral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn succeeded(what: &str, out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

fn new_build_run(lang: &str) {
    let root = tempfile::tempdir().expect("temp dir");
    let name = format!("hello-{lang}");
    let stem = name.replace('-', "_");
    succeeded(
        "corral new",
        &corral(root.path(), &["new", &name, "--lang", lang]),
    );
    let project = root.path().join(&name);
    assert!(project.join("input.json").is_file());
    // A second `new` over the same folder refuses rather than overwrite.
    let again = corral(root.path(), &["new", &name, "--lang", lang]);
    assert!(!again.status.success(), "{}", text(&again.stdout));
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );

    // `--force`: this very template may have been built before, and the
    // test is of the componentizer, not of the build cache.
    let built = succeeded("corral build", &corral(&project, &["build", "--force"]));
    assert!(built.contains(&format!("{stem}.wasm")), "{built}");
    let component = std::fs::read(project.join(format!("{stem}.wasm"))).expect("component");
    assert!(
        component.starts_with(b"\0asm\x0d\x00\x01\x00"),
        "not a component"
    );

    let ran = succeeded(
        "corral run",
        &corral(
            &project,
            &[
                "run",
                &format!("{stem}.wasm"),
                "--args-file",
                "input.json",
                "--arg",
                "extra=kept",
            ],
        ),
    );
    assert!(ran.contains("state=completed"), "{ran}");
    assert!(ran.contains("greeted world"), "{ran}");
    assert!(ran.contains("Hello, world!"), "{ran}");
    assert!(ran.contains("kept"), "{ran}");
}

#[test]
fn a_python_project_goes_from_new_to_build_to_run() {
    let _limit = crate::limit::minutes(15);
    new_build_run("python");
}

#[test]
fn a_javascript_project_goes_from_new_to_build_to_run() {
    let _limit = crate::limit::minutes(15);
    new_build_run("js");
}

#[test]
fn a_rust_project_outside_a_checkout_goes_from_new_to_build_to_run() {
    let _limit = crate::limit::minutes(20);
    new_build_run("rust");
}

#[test]
fn build_says_what_a_folder_lacks() {
    let _limit = crate::limit::minutes(2);
    let root = tempfile::tempdir().expect("temp dir");
    let out = corral(root.path(), &["build"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not a guest project"), "{stderr}");
    assert!(stderr.contains("corral new"), "{stderr}");
}
