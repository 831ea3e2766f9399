//! The `corral` process's sandbox settings, from its global options: where
//! precompiled components are cached on disk and how large the caches grow,
//! and the bounds on compiling a module.
//!
//! The library keeps compiled components in memory only unless told
//! otherwise ([`SandboxConfig::default`]); the command line caches them on
//! disk by default, so that a restarted `corral worker` loads its jobs in
//! milliseconds instead of compiling them again: in `--cache-dir`, else
//! `$CORRAL_CACHE_DIR`, else the user's cache directory
//! (`$XDG_CACHE_HOME/corral/components` or `~/.cache/corral/components`);
//! `--no-disk-cache` turns it off. A directory that cannot be used (not
//! creatable, writable by other users) is logged and skipped: the cache only
//! ever saves time.
//!
//! Modules compile in a child process of this same binary (`corral
//! __compile`) under `--compile-cpu`, `--compile-memory-mib` and
//! `--compile-wall`, at most `--max-compiles` at once and
//! `--max-compiles-per-tenant` for one tenant; `--compile-in-process` drops
//! the CPU, memory and wall-clock bounds, for fleets that only run their own
//! modules.
//!
//! [`cli::run`](super::run) records the options once, before any subcommand
//! starts; subcommands build their sandbox from [`sandbox_config`]. This
//! module only turns options into a [`SandboxConfig`].

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::units::{parse_duration, parse_mib};
use crate::sandbox::{CompileConfig, CompileIsolation, SandboxConfig, default_cache_dir};

static CONFIG: OnceLock<SandboxConfig> = OnceLock::new();

/// Global options: the caches of compiled components and the bounds on
/// compiling.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxOptions {
    /// Directory for precompiled components, so a restarted worker loads its
    /// jobs without compiling them [default: $XDG_CACHE_HOME/corral/components
    /// or ~/.cache/corral/components]
    #[arg(long, global = true, env = "CORRAL_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Keep precompiled components in memory only.
    #[arg(long, global = true)]
    no_disk_cache: bool,
    /// Most MiB of precompiled components kept on disk (least recently used
    /// deleted first).
    #[arg(long = "disk-cache-mib", global = true, value_name = "MIB", default_value = "4096", value_parser = parse_mib)]
    disk_cache_bytes: u64,
    /// Most compiled components kept in memory.
    #[arg(long, global = true, value_name = "N", default_value_t = 1024)]
    memory_cache_entries: usize,
    /// Most MiB of compiled code kept in memory.
    #[arg(long = "memory-cache-mib", global = true, value_name = "MIB", default_value = "1024", value_parser = parse_mib)]
    memory_cache_bytes: u64,
    /// CPU time one compile may use, e.g. `120s`; past it the module is
    /// refused with `compile_limit`.
    #[arg(long, global = true, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    compile_cpu: Duration,
    /// Memory one compile may allocate, in MiB.
    #[arg(long = "compile-memory-mib", global = true, value_name = "MIB", default_value = "4096", value_parser = parse_mib)]
    compile_memory_bytes: u64,
    /// Wall-clock time one compile may take, e.g. `300s`.
    #[arg(long, global = true, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    compile_wall: Duration,
    /// Compiles at once in this process.
    #[arg(long, global = true, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    max_compiles: u32,
    /// Compiles at once for one tenant.
    #[arg(long, global = true, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    max_compiles_per_tenant: u32,
    /// Compile in this process, without the CPU, memory and wall-clock
    /// bounds: only for fleets that run nobody's modules but their own.
    #[arg(long, global = true)]
    compile_in_process: bool,
}

impl SandboxOptions {
    /// The sandbox settings these options ask for.
    pub fn config(&self) -> SandboxConfig {
        let cache_dir = if self.no_disk_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        };
        let isolation = if self.compile_in_process {
            CompileIsolation::InProcess
        } else {
            CompileIsolation::Child {
                program: this_program(),
            }
        };
        SandboxConfig {
            cache_dir,
            disk_cache_bytes: self.disk_cache_bytes,
            memory_cache_entries: self.memory_cache_entries,
            memory_cache_bytes: self.memory_cache_bytes,
            compile: CompileConfig {
                isolation,
                cpu_time: self.compile_cpu,
                memory_bytes: self.compile_memory_bytes,
                wall_time: self.compile_wall,
                max_concurrent: self.max_compiles as usize,
                max_per_owner: self.max_compiles_per_tenant as usize,
            },
            ..SandboxConfig::default()
        }
    }

    /// Records these options for [`sandbox_config`]; the first call wins.
    pub(crate) fn install(&self) {
        let _ = CONFIG.set(self.config());
    }
}

/// The settings every subcommand builds its sandbox with: the global
/// options as recorded when the command line ran, or, before that, the
/// defaults the options have.
pub fn sandbox_config() -> SandboxConfig {
    CONFIG.get().cloned().unwrap_or_else(|| SandboxConfig {
        cache_dir: default_cache_dir(),
        compile: CompileConfig {
            isolation: CompileIsolation::Child {
                program: this_program(),
            },
            ..CompileConfig::default()
        },
        ..SandboxConfig::default()
    })
}

/// The running `corral` binary, which compiles modules as its own child.
fn this_program() -> PathBuf {
    // Where the kernel cannot say (no /proc), the name as invoked.
    std::env::current_exe().unwrap_or_else(|_| {
        PathBuf::from(
            std::env::args_os()
                .next()
                .unwrap_or_else(|| "corral".into()),
        )
    })
}
