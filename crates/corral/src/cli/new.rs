//! `corral new NAME --lang rust|python|js`: a ready guest project.
//!
//! Owns the project templates (`crates/corral/templates/`): a handler that
//! greets `name`, its build file, a test input and a `.gitignore`, so that
//! `corral build` and `corral run NAME.wasm --args-file input.json` work
//! at once. A Rust project depends on the guest SDK by path: the checkout
//! of Corral it is created in, else a copy of the SDK this binary carries,
//! written once to Corral's toolchain folder. It never overwrites a file
//! and never builds anything.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

use super::build::{JOB_WIT, JS_SDK, Lang};
use super::toolchain::toolchain_dir;
use crate::sandbox::ModuleHash;

const RUST_CARGO_TOML: &str = include_str!("../../templates/rust/Cargo.toml");
const RUST_LIB_RS: &str = include_str!("../../templates/rust/src/lib.rs");
const PYTHON_APP: &str = include_str!("../../templates/python/app.py");
const PYTHON_PYPROJECT: &str = include_str!("../../templates/python/pyproject.toml");
const JS_HANDLER: &str = include_str!("../../templates/js/handler.js");
const JS_PACKAGE: &str = include_str!("../../templates/js/package.json");

/// The Rust guest SDK's source, for a copy outside any Corral checkout.
const RUST_SDK_LIB: &str = include_str!("../../../../guest-sdk/src/lib.rs");
/// Its manifest there: the host workspace's inherited fields made explicit
/// (the same versions and features as the root `Cargo.toml`).
const RUST_SDK_MANIFEST: &str = r#"[package]
name = "corral-guest"
description = "Write Corral job handlers as plain Rust functions"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc"] }
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["float_roundtrip"] }

# Not a member of whatever workspace encloses this folder.
[workspace]
"#;

/// A release profile for a crate of its own: small components.
const RUST_PROFILE: &str = r#"
# Small, fast components. (In a workspace, profiles are the workspace's.)
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A workspace of its own; remove this to make the crate a member of an
# enclosing one.
[workspace]
"#;

const INPUT_JSON: &str = "{\n  \"name\": \"world\"\n}\n";

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's name: lowercase letters, digits, `-` and `_`,
    /// starting with a letter. The folder is created with this name.
    name: String,
    /// The handler's language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Create the project folder in this folder.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// Rust: the guest SDK (a folder with corral-guest's Cargo.toml) to
    /// depend on [default: the Corral checkout the project is created in,
    /// else a copy kept in Corral's toolchain folder].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args.path.join(&args.name);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = args.name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{stem}}", &stem)
    };
    let mut files: Vec<(&str, String)> = vec![
        ("input.json", INPUT_JSON.to_owned()),
        (
            ".gitignore",
            "target/\n*.wasm\n__pycache__/\nnode_modules/\n".to_owned(),
        ),
    ];
    match args.lang {
        Lang::Rust => {
            let sdk = match &args.sdk {
                Some(sdk) => sdk.clone(),
                None => rust_sdk_for(&dir)?,
            };
            let sdk_text = sdk
                .to_str()
                .context("the SDK's path is not UTF-8: pass --sdk")?
                .to_owned();
            let profile = if in_workspace(&dir) { "" } else { RUST_PROFILE };
            files.push((
                "Cargo.toml",
                fill(RUST_CARGO_TOML)
                    .replace("{{sdk_path}}", &sdk_text)
                    .replace("{{profile}}", profile),
            ));
            std::fs::create_dir_all(dir.join("src"))?;
            files.push(("src/lib.rs", fill(RUST_LIB_RS)));
        }
        Lang::Python => {
            files.push(("app.py", fill(PYTHON_APP)));
            files.push(("pyproject.toml", fill(PYTHON_PYPROJECT)));
        }
        Lang::Js => {
            files.push(("handler.js", fill(JS_HANDLER)));
            files.push(("package.json", fill(JS_PACKAGE)));
            // The SDK travels with the project: componentize-js resolves
            // imports relative to the handler's file.
            files.push(("corral.js", JS_SDK.to_owned()));
        }
    }
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    say!(
        "created {} project {} in {}",
        args.lang,
        args.name,
        dir.display()
    );
    say!("next:");
    say!("  cd {}", dir.display());
    say!("  corral build");
    say!("  corral run {stem}.wasm --args-file input.json");
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "`{name}` is not a project name: 1 to 64 of a-z, 0-9, `-` and `_`, starting with a letter"
        );
    }
    Ok(())
}

/// Whether a Cargo workspace encloses `dir` (then the crate joins it).
fn in_workspace(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors().skip(1).any(|a| {
        std::fs::read_to_string(a.join("Cargo.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t.contains_key("workspace"))
    })
}

/// The guest SDK for a new Rust project in `dir`: the enclosing Corral
/// checkout's, as a relative path, or the copy in the toolchain folder.
fn rust_sdk_for(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for ancestor in dir.ancestors().skip(1) {
        let manifest = ancestor.join("guest-sdk/Cargo.toml");
        let is_sdk = std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| {
                let name = t.get("package")?.get("name")?.as_str()?.to_owned();
                Some(name == "corral-guest")
            })
            .unwrap_or(false);
        if is_sdk {
            return Ok(relative(&dir, &ancestor.join("guest-sdk")));
        }
    }
    extracted_rust_sdk()
}

/// `to` relative to `from` (both absolute and canonical).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for part in &to[common..] {
        rel.push(part);
    }
    rel
}

/// Writes the SDK this binary carries (and the WIT it reads from `../wit`)
/// once per content, and returns the crate's folder.
fn extracted_rust_sdk() -> anyhow::Result<PathBuf> {
    let hash = ModuleHash::of(format!("{RUST_SDK_MANIFEST}{RUST_SDK_LIB}{JOB_WIT}").as_bytes());
    let root = toolchain_dir()?.join(format!("corral-guest-{}", &hash.as_str()[..16]));
    let sdk = root.join("guest-sdk");
    if sdk.join("src/lib.rs").is_file() {
        return Ok(sdk);
    }
    let staging = root.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("guest-sdk/src"))
        .and_then(|()| std::fs::create_dir_all(staging.join("wit")))
        .and_then(|()| std::fs::write(staging.join("guest-sdk/Cargo.toml"), RUST_SDK_MANIFEST))
        .and_then(|()| std::fs::write(staging.join("guest-sdk/src/lib.rs"), RUST_SDK_LIB))
        .and_then(|()| std::fs::write(staging.join("wit/job.wit"), JOB_WIT))
        .with_context(|| format!("writing the guest SDK to {}", staging.display()))?;
    if let Err(e) = std::fs::rename(&staging, &root) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another `corral new` may have put the same copy in place first.
        if !sdk.join("src/lib.rs").is_file() {
            return Err(e).with_context(|| format!("moving the guest SDK to {}", root.display()));
        }
    }
    Ok(sdk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "my-job_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1job", "Job", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/b/jobs/x"), Path::new("/a/b/guest-sdk")),
            PathBuf::from("../../guest-sdk")
        );
        assert_eq!(
            relative(Path::new("/a"), Path::new("/a/s")),
            PathBuf::from("s")
        );
    }
}
