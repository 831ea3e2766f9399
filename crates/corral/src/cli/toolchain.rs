//! The tools that turn a guest project into a component, found or installed.
//!
//! Owns where each language's componentizer comes from: Rust's toolchain
//! for `wasm32-wasip2` (rustup's target, else Debian's `rustc-web` building
//! std from source), `componentize-py` (PyPI) and `componentize-js` (npm),
//! each at the version the guest SDKs are written against. A missing
//! componentizer is installed into Corral's own toolchain folder (never
//! into the system's Python or Node.js), so a user needs no root for
//! Python or JavaScript; Rust's toolchain needs rustup's servers or, as
//! root on Debian, apt. When none of that is possible the error says what to
//! install. This module only finds and runs tools: what a project looks like
//! is `cli/build.rs`'s business.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The componentize-py release the Python SDK is written against (its
/// generated modules are `wit_world` and `componentize_py_types`).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The componentize-js release the JavaScript SDK is built with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The Rust target guests are built for.
pub const RUST_TARGET: &str = "wasm32-wasip2";

/// Debian's packages for a Rust toolchain that builds `wasm32-wasip2`
/// components without rustup's servers.
const DEBIAN_RUST_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-llvm",
    "lld-22",
    "wasi-libc",
];

/// How long `rustup target add` may take: it has been seen to hang, not
/// fail, where rustup's servers are unreachable.
const RUSTUP_ADD_TIMEOUT: Duration = Duration::from_secs(180);

/// Where Corral keeps the componentizers it installs:
/// `$CORRAL_TOOLCHAIN_DIR`, else `$XDG_CACHE_HOME/corral/toolchains`, else
/// `~/.cache/corral/toolchains`.
pub fn toolchain_dir() -> anyhow::Result<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CORRAL_TOOLCHAIN_DIR") {
        return Ok(dir);
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".cache")))
        .context("neither CORRAL_TOOLCHAIN_DIR, XDG_CACHE_HOME nor HOME is set: nowhere to keep the componentizers")?;
    Ok(base.join("corral").join("toolchains"))
}

/// A command with the variables an outer cargo leaves behind removed
/// (`corral build` run by `cargo run`, or from a test): which toolchain,
/// which rustc and wrappers, flags, the jobserver, the target folder. They
/// would redirect or break the guest's build.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let keep = name == "CARGO_HOME"
            || [
                "CARGO_NET_",
                "CARGO_HTTP_",
                "CARGO_REGISTRIES_",
                "CARGO_REGISTRY_",
                "CARGO_TERM_",
            ]
            .iter()
            .any(|p| name.starts_with(p));
        if !keep && (name == "CARGO" || name.starts_with("CARGO_") || name.starts_with("__CARGO_"))
        {
            cmd.env_remove(name);
        }
    }
    for name in [
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_BOOTSTRAP",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// Runs `cmd` with its output on this process's stderr, failing with
/// `what` and the exit status when it does not succeed.
pub fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn output_text(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs as root: `/proc/self` belongs to the
/// process's effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// How Rust guests are built here.
#[derive(Debug, Clone)]
pub enum RustToolchain {
    /// A rustup toolchain with the `wasm32-wasip2` target: plain cargo.
    Rustup(String),
    /// Debian's `rustc-web`, building std from its sources against
    /// Debian's wasi-libc.
    Debian,
}

impl RustToolchain {
    /// Finds one, or installs one when `install` (rustup's target first,
    /// then, as root on Debian, Debian's packages).
    pub fn find(install: bool) -> anyhow::Result<Self> {
        if let Some(found) = Self::present() {
            return Ok(found);
        }
        if install {
            if on_path("rustup").is_some() {
                eprintln!("corral build: adding rustup's {RUST_TARGET} target");
                let mut add = clean_command("timeout");
                add.arg(RUSTUP_ADD_TIMEOUT.as_secs().to_string()).args([
                    "rustup",
                    "target",
                    "add",
                    RUST_TARGET,
                ]);
                if run_tool(&mut add, "rustup target add").is_ok()
                    && let Some(found) = Self::present()
                {
                    return Ok(found);
                }
            }
            if is_root()
                && Path::new("/etc/debian_version").exists()
                && on_path("apt-get").is_some()
            {
                eprintln!(
                    "corral build: installing Debian's Rust toolchain for {RUST_TARGET}: {}",
                    DEBIAN_RUST_PACKAGES.join(" ")
                );
                apt_install(DEBIAN_RUST_PACKAGES)?;
                if let Some(found) = Self::present() {
                    return Ok(found);
                }
            }
        }
        bail!(
            "no toolchain that builds {RUST_TARGET} components was found; install one of:\n  \
             - with rustup (needs rustup's servers): rustup target add {RUST_TARGET}\n  \
             - on Debian, as root: apt-get install -y --no-install-recommends {}",
            DEBIAN_RUST_PACKAGES.join(" ")
        )
    }

    fn present() -> Option<Self> {
        if on_path("rustup").is_some() {
            let active = output_text(
                clean_command("rustup")
                    .env("RUSTUP_AUTO_INSTALL", "0")
                    .args(["show", "active-toolchain"]),
            )?;
            if let Some(toolchain) = active.split_whitespace().next() {
                let installed = output_text(
                    clean_command("rustup")
                        .env("RUSTUP_AUTO_INSTALL", "0")
                        .args(["target", "list", "--installed", "--toolchain", toolchain]),
                )
                .unwrap_or_default();
                if installed.lines().any(|l| l.trim() == RUST_TARGET) {
                    return Some(Self::Rustup(toolchain.to_owned()));
                }
            }
        }
        Self::debian_present().then_some(Self::Debian)
    }

    fn debian_present() -> bool {
        if !is_executable(Path::new("/usr/bin/rustc"))
            || !is_executable(Path::new("/usr/bin/cargo"))
            || !Path::new("/usr/lib/wasm32-wasi").is_dir()
        {
            return false;
        }
        let Some(sysroot) =
            output_text(Command::new("/usr/bin/rustc").args(["--print", "sysroot"]))
        else {
            return false;
        };
        if !Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library")
            .is_dir()
        {
            return false;
        }
        output_text(Command::new("/usr/bin/rustc").args(["--print", "target-list"]))
            .is_some_and(|list| list.lines().any(|l| l.trim() == RUST_TARGET))
    }

    /// `cargo build --release` for the guest target, run in `dir`.
    pub fn cargo_build(&self, dir: &Path) -> Command {
        match self {
            Self::Rustup(toolchain) => {
                let mut cmd = clean_command("rustup");
                cmd.args([
                    "run",
                    toolchain,
                    "cargo",
                    "build",
                    "--release",
                    "--target",
                    RUST_TARGET,
                ]);
                cmd.current_dir(dir);
                cmd
            }
            Self::Debian => {
                let mut cmd = clean_command("/usr/bin/cargo");
                cmd.env("RUSTC", "/usr/bin/rustc")
                    .env("RUSTDOC", "/usr/bin/rustdoc")
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env(
                        "RUSTFLAGS",
                        "-C link-self-contained=no -L native=/usr/lib/wasm32-wasi",
                    )
                    .args([
                        "build",
                        "--release",
                        "--target",
                        RUST_TARGET,
                        "-Zbuild-std=std,panic_abort",
                    ])
                    .current_dir(dir);
                cmd
            }
        }
    }

    /// One line for the user: which toolchain builds.
    pub fn describe(&self) -> String {
        match self {
            Self::Rustup(toolchain) => format!("rustup toolchain {toolchain}"),
            Self::Debian => "Debian's rustc-web with -Zbuild-std".to_owned(),
        }
    }
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    run_tool(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_tool(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
        "apt-get install",
    )
}

/// `componentize-py`, run by a Python 3 from its install folder.
#[derive(Debug, Clone)]
pub struct ComponentizePy {
    python: PathBuf,
    /// The folder `pip install --target` filled (on PYTHONPATH).
    site: PathBuf,
}

impl ComponentizePy {
    /// Finds the pinned release in Corral's toolchain folder, installing it
    /// with pip when missing and `install`.
    pub fn find(install: bool) -> anyhow::Result<Self> {
        let python = on_path("python3").context(
            "Python guests need python3 with pip to install componentize-py \
             (on Debian: apt-get install python3 python3-pip)",
        )?;
        let site = toolchain_dir()?.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
        let found = Self { python, site };
        if found.works() {
            return Ok(found);
        }
        if !install {
            bail!(
                "componentize-py {COMPONENTIZE_PY_VERSION} is not installed in {}; \
                 run `corral build` without --no-install to install it",
                found.site.display()
            );
        }
        eprintln!(
            "corral build: installing componentize-py {COMPONENTIZE_PY_VERSION} (PyPI) into {}",
            found.site.display()
        );
        // Into a folder of its own, a new one each time, renamed into place
        // only once complete: an interrupted install leaves no half folder.
        let staging = found
            .site
            .with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        // `--target` keeps it out of the system's Python (which Debian marks
        // as externally managed) and needs no virtual environment.
        let installed = run_tool(
            Command::new(&found.python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-warn-script-location",
                    "--target",
                ])
                .arg(&staging)
                .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
            "pip install componentize-py",
        );
        if let Err(e) = installed {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(
                "could not install componentize-py from PyPI (python3 needs pip: on Debian, apt-get install python3-pip)",
            ));
        }
        let _ = std::fs::remove_dir_all(&found.site);
        std::fs::rename(&staging, &found.site)
            .with_context(|| format!("moving {} into place", staging.display()))?;
        if !found.works() {
            bail!(
                "componentize-py was installed into {} but does not run",
                found.site.display()
            );
        }
        Ok(found)
    }

    fn works(&self) -> bool {
        self.site.join("componentize_py").is_dir()
            && self
                .command()
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// `componentize-py` with no arguments yet.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        let mut path = OsString::from(&self.site);
        if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(existing);
        }
        cmd.env("PYTHONPATH", path).args([
            "-c",
            "import sys; sys.argv[0] = 'componentize-py'; from componentize_py import script; sys.exit(script())",
        ]);
        cmd
    }
}

/// `componentize-js`, run by Node.js from its install folder.
#[derive(Debug, Clone)]
pub struct ComponentizeJs {
    cli: PathBuf,
}

impl ComponentizeJs {
    /// Finds the pinned release in Corral's toolchain folder, installing it
    /// with npm when missing and `install`.
    pub fn find(install: bool) -> anyhow::Result<Self> {
        if on_path("node").is_none() {
            bail!(
                "JavaScript guests need Node.js 18 or later and npm to install componentize-js \
                 (on Debian: apt-get install nodejs npm)"
            );
        }
        let prefix = toolchain_dir()?.join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
        let found = Self {
            cli: prefix.join("node_modules/@bytecodealliance/componentize-js/src/cli.js"),
        };
        if found.cli.is_file() {
            return Ok(found);
        }
        if !install {
            bail!(
                "componentize-js {COMPONENTIZE_JS_VERSION} is not installed in {}; \
                 run `corral build` without --no-install to install it",
                prefix.display()
            );
        }
        let npm = on_path("npm").context(
            "JavaScript guests need npm to install componentize-js (on Debian: apt-get install npm)",
        )?;
        eprintln!(
            "corral build: installing componentize-js {COMPONENTIZE_JS_VERSION} (npm) into {}",
            prefix.display()
        );
        let staging = prefix.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        // A package.json of its own, so npm installs here and not into
        // whatever project encloses the toolchain folder.
        std::fs::write(staging.join("package.json"), "{\"private\":true}\n")?;
        let installed = run_tool(
            Command::new(npm)
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&staging)
                .arg(format!(
                    "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
                )),
            "npm install componentize-js",
        );
        if let Err(e) = installed {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context("could not install componentize-js from npm"));
        }
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::rename(&staging, &prefix)
            .with_context(|| format!("moving {} into place", staging.display()))?;
        if !found.cli.is_file() {
            bail!(
                "componentize-js was installed into {} but its CLI is missing",
                prefix.display()
            );
        }
        Ok(found)
    }

    /// `componentize-js` with no arguments yet.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("node");
        cmd.arg(&self.cli);
        cmd
    }
}
