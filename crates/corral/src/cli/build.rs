//! `corral build [DIR]...`: a guest project in Rust, Python or JavaScript
//! into a handler component.
//!
//! Owns what a project is (its language, read from the files in it; its
//! name; where its component goes) and the build of each language against
//! the WIT contract and guest SDKs this binary carries, so a project needs
//! nothing but its own sources. Python and JavaScript builds take tens of
//! seconds and are pure functions of their inputs, so each result is kept
//! under the hash of everything that went in (sources, SDK, WIT,
//! componentizer version) and an unchanged project is copied, not rebuilt.
//! It never runs or uploads a component: `corral run` and `corral jobs`
//! do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;

use super::toolchain::{
    COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, ComponentizeJs, ComponentizePy, RUST_TARGET,
    RustToolchain, run_tool, toolchain_dir,
};
use crate::sandbox::ModuleHash;

/// The WIT contract every handler targets.
pub const JOB_WIT: &str = include_str!("../../../../wit/job.wit");
/// The Python guest SDK (package `corral`).
pub const PYTHON_SDK: &str = include_str!("../../../../guest-sdk/python/corral/__init__.py");
/// The JavaScript guest SDK (module `corral.js`).
pub const JS_SDK: &str = include_str!("../../../../guest-sdk/js/corral.js");

/// The file a Python project's handler lives in.
pub const PYTHON_ENTRY: &str = "app.py";
/// The file a JavaScript project's handler lives in.
pub const JS_ENTRY: &str = "handler.js";

/// Builds kept for unchanged Python and JavaScript projects; the oldest
/// beyond this are deleted.
const KEPT_BUILDS: usize = 64;

/// Files larger than this are not hashed into a Python or JavaScript build
/// (nor can they be part of one sensibly): a guard against a stray data
/// file making every build slow.
const MAX_SOURCE_BYTES: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Project folders (default: the current folder). Each holds a
    /// `Cargo.toml` (Rust), an `app.py` (Python) or a `handler.js`
    /// (JavaScript).
    dirs: Vec<PathBuf>,
    /// Where the component goes (one project only) [default:
    /// DIR/NAME.wasm].
    #[arg(short, long, value_name = "FILE", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Put each component in this folder as NAME.wasm.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Fail instead of installing a missing componentizer or toolchain.
    #[arg(long)]
    no_install: bool,
    /// Rebuild Python and JavaScript projects even when unchanged.
    #[arg(long)]
    force: bool,
}

/// A project's language, from the files in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    /// The language of the project in `dir`.
    pub fn detect(dir: &Path) -> anyhow::Result<Self> {
        let found: Vec<Lang> = [
            (Lang::Rust, "Cargo.toml"),
            (Lang::Python, PYTHON_ENTRY),
            (Lang::Js, JS_ENTRY),
        ]
        .into_iter()
        .filter(|(_, file)| dir.join(file).is_file())
        .map(|(lang, _)| lang)
        .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => bail!(
                "{} is not a guest project: it has no Cargo.toml (Rust), {PYTHON_ENTRY} (Python) or {JS_ENTRY} (JavaScript); `corral new NAME --lang rust|python|js` makes one",
                dir.display()
            ),
            _ => bail!(
                "{} holds more than one of Cargo.toml, {PYTHON_ENTRY} and {JS_ENTRY}: one project per folder",
                dir.display()
            ),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        })
    }
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dirs = if args.dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.dirs.clone()
    };
    if args.out.is_some() && dirs.len() > 1 {
        bail!("--out names one component; with several projects use --out-dir");
    }
    for dir in &dirs {
        let project = Project::open(dir)?;
        let out = match (&args.out, &args.out_dir) {
            (Some(out), _) => out.clone(),
            (None, Some(out_dir)) => out_dir.join(format!("{}.wasm", project.file_stem())),
            (None, None) => dir.join(format!("{}.wasm", project.file_stem())),
        };
        let started = Instant::now();
        let how = build(&project, &out, !args.no_install, args.force)
            .with_context(|| format!("building {} ({} project)", dir.display(), project.lang))?;
        let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        say!(
            "built {} ({}, {how}) -> {} ({} bytes, {:.1}s)",
            project.name,
            project.lang,
            out.display(),
            bytes,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A guest project: a folder, its language and its name.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub lang: Lang,
    /// The crate's name for Rust; the folder's name otherwise.
    pub name: String,
}

impl Project {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a folder", dir.display());
        }
        let lang = Lang::detect(dir)?;
        let name = match lang {
            Lang::Rust => crate_name(dir)?,
            Lang::Python | Lang::Js => {
                let canonical = dir
                    .canonicalize()
                    .with_context(|| format!("resolving {}", dir.display()))?;
                canonical
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .context("the project folder has no name")?
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            lang,
            name,
        })
    }

    /// The component's file name without `.wasm`: the name with `-` turned
    /// into `_`, as cargo names a Rust crate's output.
    pub fn file_stem(&self) -> String {
        self.name.replace('-', "_")
    }
}

fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml"))
        .with_context(|| format!("reading {}", dir.join("Cargo.toml").display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}/Cargo.toml", dir.display()))?;
    let lib_name = manifest
        .get("lib")
        .and_then(|lib| lib.get("name"))
        .and_then(|n| n.as_str());
    let package_name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str());
    lib_name
        .or(package_name)
        .map(str::to_owned)
        .with_context(|| format!("{}/Cargo.toml has no [package] name", dir.display()))
}

/// Builds `project` into `out`; says how ("built", "unchanged").
pub fn build(
    project: &Project,
    out: &Path,
    install: bool,
    force: bool,
) -> anyhow::Result<&'static str> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match project.lang {
        Lang::Rust => build_rust(project, out, install).map(|()| "built"),
        Lang::Python | Lang::Js => build_cached(project, out, install, force),
    }
}

fn build_rust(project: &Project, out: &Path, install: bool) -> anyhow::Result<()> {
    let toolchain = RustToolchain::find(install)?;
    eprintln!(
        "corral build: {} with {}",
        project.name,
        toolchain.describe()
    );
    let mut cargo = toolchain.cargo_build(&project.dir);
    // The target folder is cargo's to choose (a workspace's, or the
    // crate's own): ask it where that is.
    let target_dir = target_directory(&project.dir)?;
    cargo.env("CARGO_TARGET_DIR", &target_dir);
    run_tool(&mut cargo, "cargo build")?;
    let built = target_dir
        .join(RUST_TARGET)
        .join("release")
        .join(format!("{}.wasm", project.file_stem()));
    check_component(&built)?;
    copy_into_place(&built, out)
}

/// The target folder cargo uses for the crate in `dir`.
fn target_directory(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = super::toolchain::clean_command("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed in {} ({})",
            dir.display(),
            out.status
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata's output")?;
    metadata
        .get("target_directory")
        .and_then(|t| t.as_str())
        .map(PathBuf::from)
        .context("cargo metadata names no target directory")
}

/// Python and JavaScript: rebuild only when an input changed.
fn build_cached(
    project: &Project,
    out: &Path,
    install: bool,
    force: bool,
) -> anyhow::Result<&'static str> {
    let inputs = input_hash(project)?;
    let builds = toolchain_dir()?.join("builds");
    let kept = builds.join(format!("{inputs}.wasm"));
    if !force && kept.is_file() && check_component(&kept).is_ok() {
        copy_into_place(&kept, out)?;
        return Ok("unchanged");
    }
    // The componentizers run in a scratch folder: absolute paths only.
    let project_dir = project
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", project.dir.display()))?;
    let scratch = tempdir("corral-build")?;
    let built = scratch.path().join("component.wasm");
    let wit_dir = scratch.path().join("wit");
    std::fs::create_dir_all(&wit_dir)?;
    std::fs::write(wit_dir.join("job.wit"), JOB_WIT)?;
    match project.lang {
        Lang::Python => {
            let tool = ComponentizePy::find(install)?;
            // The SDK this binary carries, unless the project brings its own
            // `corral` package (searched first).
            let sdk = scratch.path().join("sdk");
            std::fs::create_dir_all(sdk.join("corral"))?;
            std::fs::write(sdk.join("corral/__init__.py"), PYTHON_SDK)?;
            run_tool(
                tool.command()
                    .arg("-d")
                    .arg(&wit_dir)
                    .args(["-w", "handler", "componentize", "-p"])
                    .arg(&project_dir)
                    .arg("-p")
                    .arg(&sdk)
                    .arg(PYTHON_ENTRY.trim_end_matches(".py"))
                    .arg("-o")
                    .arg(&built)
                    // componentize-py writes `__pycache__` next to the
                    // sources it imports; keep the project clean.
                    .env("PYTHONDONTWRITEBYTECODE", "1")
                    .current_dir(scratch.path()),
                "componentize-py",
            )?;
        }
        Lang::Js => {
            let tool = ComponentizeJs::find(install)?;
            // componentize-js reads imports only from inside the entry's
            // folder: build a copy of the project, with the SDK this binary
            // carries as `corral.js` unless the project brings its own.
            let src = scratch.path().join("src");
            for rel in source_files(&project_dir)? {
                let to = src.join(&rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(project_dir.join(&rel), &to)
                    .with_context(|| format!("copying {}", rel.display()))?;
            }
            if !src.join("corral.js").exists() {
                std::fs::write(src.join("corral.js"), JS_SDK)?;
            }
            run_tool(
                tool.command()
                    .arg("--wit")
                    .arg(&wit_dir)
                    .args(["--world-name", "handler"])
                    // The host offers no HTTP: without these the component
                    // imports `wasi:http` and cannot be instantiated.
                    .args(["--disable", "http", "fetch-event"])
                    .arg("-o")
                    .arg(&built)
                    .arg(src.join(JS_ENTRY))
                    .current_dir(scratch.path()),
                "componentize-js",
            )?;
        }
        Lang::Rust => bail!("a Rust project builds with cargo, not a componentizer"),
    }
    check_component(&built)?;
    std::fs::create_dir_all(&builds).with_context(|| format!("creating {}", builds.display()))?;
    let partial = builds.join(format!("{inputs}.wasm.partial-{}", std::process::id()));
    std::fs::copy(&built, &partial)?;
    std::fs::rename(&partial, &kept)?;
    prune(&builds);
    copy_into_place(&built, out)?;
    Ok("built")
}

/// The hash of everything a Python or JavaScript build reads: the
/// project's files (by relative path and content, dot-files and
/// components aside), the SDK, the WIT, the componentizer's version.
fn input_hash(project: &Project) -> anyhow::Result<ModuleHash> {
    let files = source_files(&project.dir)?;
    let mut all = Vec::new();
    let tool = match project.lang {
        Lang::Python => format!("componentize-py {COMPONENTIZE_PY_VERSION}\n{PYTHON_SDK}"),
        Lang::Js => format!("componentize-js {COMPONENTIZE_JS_VERSION}\n{JS_SDK}"),
        Lang::Rust => String::new(),
    };
    for part in [project.lang.to_string().as_str(), JOB_WIT, &tool] {
        all.extend_from_slice(&(part.len() as u64).to_le_bytes());
        all.extend_from_slice(part.as_bytes());
    }
    for rel in files {
        let bytes = std::fs::read(project.dir.join(&rel))?;
        let name = rel.to_string_lossy();
        all.extend_from_slice(&(name.len() as u64).to_le_bytes());
        all.extend_from_slice(name.as_bytes());
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(&bytes);
    }
    Ok(ModuleHash::of(&all))
}

/// A project's source files, relative to its folder, sorted.
fn source_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(root: &Path, rel: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        // Hidden files, caches, dependencies and built components are not
        // sources.
        if name_text.starts_with('.')
            || name_text == "__pycache__"
            || name_text == "node_modules"
            || name_text.ends_with(".wasm")
        {
            continue;
        }
        let path = rel.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else if kind.is_file() {
            if entry.metadata()?.len() > MAX_SOURCE_BYTES {
                bail!(
                    "{} is over {} MiB: not a source file a guest can be built from",
                    root.join(&path).display(),
                    MAX_SOURCE_BYTES >> 20
                );
            }
            files.push(path);
        }
    }
    Ok(())
}

/// Keeps the newest [`KEPT_BUILDS`] builds.
fn prune(builds: &Path) {
    let Ok(entries) = std::fs::read_dir(builds) else {
        return;
    };
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    kept.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (_, path) in kept.into_iter().skip(KEPT_BUILDS) {
        let _ = std::fs::remove_file(path);
    }
}

/// Fails unless `path` is a component (header `\0asm`, then the component
/// layer's version bytes `0d 00 01 00`; a core module has `01 00 00 00`).
fn check_component(path: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    // The header only: a component is 10-20 MB, and it is copied next.
    let mut header = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("{} was not built", path.display()))?;
    if header != *b"\0asm\x0d\x00\x01\x00" {
        bail!("{} is not a WebAssembly component", path.display());
    }
    Ok(())
}

/// Copies `from` to `out` through a temporary file beside it, so a reader
/// of `out` never sees half a component.
fn copy_into_place(from: &Path, out: &Path) -> anyhow::Result<()> {
    let partial = out.with_extension(format!("wasm.partial-{}", std::process::id()));
    std::fs::copy(from, &partial).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A folder deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new private folder under the system's temporary folder.
pub fn tempdir(prefix: &str) -> anyhow::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let path = base.join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(TempDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("could not create a temporary folder in {}", base.display())
}
