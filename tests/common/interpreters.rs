//! One sandbox per test binary for guests that carry an interpreter
//! (Python, JavaScript: 10-20 MB components that take seconds to compile),
//! its compiled components kept on disk in the target folder, so each
//! compiles once per content however many tests and runs load it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use corral::sandbox::{Sandbox, SandboxConfig};

/// The on-disk cache of compiled components shared by every test (and the
/// `corral` processes they start with `--cache-dir`).
pub fn component_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("components")
}

/// The binary's sandbox over [`component_cache`].
pub fn cached_sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Sandbox::new(SandboxConfig {
                max_instances: 32,
                cache_dir: Some(component_cache()),
                ..SandboxConfig::default()
            })
            .expect("sandbox")
        })
        .clone()
}
