//! What one handler call may consume.
//!
//! Limits are set per job when it is registered (defaults below) and applied
//! to every handler of its chain, one fresh store per call. This module only
//! describes limits; the sandbox enforces them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-call resource limits for a job's handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel units (roughly wasm instructions) one handler call may burn.
    pub fuel: u64,
    /// Bytes of linear memory one handler instance may grow to. Capped at
    /// the sandbox's `max_memory_bytes` (512 MiB by default).
    pub memory_bytes: u64,
    /// Wall-clock time one handler call may take, in milliseconds.
    pub timeout_ms: u64,
    /// Bytes of output (args JSON plus result-log text) one call may return.
    pub max_output_bytes: u64,
    /// Bytes of stdout, stderr and `log` lines kept per call; the rest is
    /// dropped and the drop noted in the task's log. Capped at the
    /// sandbox's `max_log_bytes` (1 MiB by default).
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
            timeout_ms: 10_000,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// The wall-clock budget as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// These limits, each narrowed to at most `cap`'s.
    pub fn capped_by(&self, cap: &Limits) -> Limits {
        Limits {
            fuel: self.fuel.min(cap.fuel),
            memory_bytes: self.memory_bytes.min(cap.memory_bytes),
            timeout_ms: self.timeout_ms.min(cap.timeout_ms),
            max_output_bytes: self.max_output_bytes.min(cap.max_output_bytes),
            max_log_bytes: self.max_log_bytes.min(cap.max_log_bytes),
        }
    }

    /// Refuses limits of zero, which would fail every call.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("fuel", self.fuel),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
            ("max_output_bytes", self.max_output_bytes),
        ] {
            if v == 0 {
                return Err(format!("limit `{name}` must be greater than 0"));
            }
        }
        Ok(())
    }
}
