//! The `corral` process's sandbox settings, from its global options: where
//! precompiled components are cached on disk.
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
//! [`cli::run`](super::run) records the options once, before any subcommand
//! starts; subcommands build their sandbox from [`sandbox_config`]. This
//! module only turns options into a [`SandboxConfig`].

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::sandbox::{SandboxConfig, default_cache_dir};

static CONFIG: OnceLock<SandboxConfig> = OnceLock::new();

/// Global options: the disk cache of precompiled components.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Directory for precompiled components, so a restarted worker loads its
    /// jobs without compiling them [default: $XDG_CACHE_HOME/corral/components
    /// or ~/.cache/corral/components]
    #[arg(long, global = true, env = "CORRAL_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Keep precompiled components in memory only.
    #[arg(long, global = true)]
    no_disk_cache: bool,
}

impl CacheArgs {
    /// The sandbox settings these options ask for.
    pub fn config(&self) -> SandboxConfig {
        let cache_dir = if self.no_disk_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        };
        SandboxConfig {
            cache_dir,
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
        ..SandboxConfig::default()
    })
}
