//! Precompiled components on disk, kept so each module compiles once.
//!
//! Artifacts are named by content hash and an engine fingerprint, so a
//! restarted worker loads a job in milliseconds instead of recompiling it.
//! The directory is bounded in bytes: past the bound, the artifacts used
//! longest ago are deleted (a load marks its file as used). The in-memory
//! cache is the sandbox's [`Lru`](corral_core::lru::Lru) of loaded handlers.
//!
//! A precompiled artifact is native code that wasmtime maps and runs without
//! validating it again, so a file is trusted only when all of these hold:
//! the header is ours, it names the module hash and engine fingerprint being
//! asked for (a file copied or renamed from another module or another engine
//! is foreign), its length is the length the header records (a truncated
//! file), and its payload's sha256 matches the header (a corrupt file).
//! Anything else is deleted and the module recompiled. The checksums catch
//! accidents, not attackers: someone who can write the cache directory can
//! also write a matching checksum, so the directory is created private to
//! the worker's user and one writable by others is refused.
//!
//! This module never decides what a handler may do; it only stores them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A module's content hash: lowercase hex sha256 of its bytes.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ModuleHash(pub String);

impl ModuleHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex(&Sha256::digest(bytes)))
    }

    /// Parses a 64-character lowercase hex string.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Where a component came from when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Already in memory.
    Memory,
    /// Deserialized from a precompiled artifact on disk.
    Disk,
    /// Compiled from the module bytes.
    Compiled,
}

/// The default place for precompiled artifacts: `$CORRAL_CACHE_DIR` when
/// set, else `$XDG_CACHE_HOME/corral/components`, else
/// `$HOME/.cache/corral/components`; `None` when none of them is set.
///
/// The library never uses it on its own ([`SandboxConfig::default`]
/// keeps artifacts in memory only, so an embedding application decides
/// where its process writes); the `corral` command line does.
///
/// [`SandboxConfig::default`]: super::SandboxConfig
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CORRAL_CACHE_DIR") {
        return Some(dir);
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("corral").join("components"))
}

/// Why the disk cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// The directory could not be created or inspected.
    #[error("cache directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Others may write the directory, so its artifacts cannot be trusted.
    #[error(
        "cache directory {dir} is writable by other users (mode {mode:o}); \
         precompiled code from it would run unchecked, so it is not used"
    )]
    NotPrivate {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns the directory.
    #[error("cache directory {dir} belongs to another user (uid {owner}), so it is not used")]
    NotOwned {
        /// The directory.
        dir: PathBuf,
        /// Its owner's uid.
        owner: u32,
    },
}

/// Precompiled artifacts on disk.
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// sha256 over everything that makes an artifact usable by this engine.
    fingerprint: [u8; 32],
    /// Most bytes of artifacts kept in `dir`.
    max_bytes: u64,
}

/// Artifact layout, all integers little-endian:
///
/// | bytes | what |
/// | --- | --- |
/// | 8 | [`MAGIC`] |
/// | 32 | the module's content hash (raw sha256) |
/// | 32 | the engine fingerprint |
/// | 8 | payload length |
/// | 32 | payload sha256 |
/// | 8 | how long compiling took, in nanoseconds |
/// | n | payload: `Engine::precompile_component` output |
const MAGIC: &[u8; 8] = b"CORRAL\x03\n";
const HEADER_LEN: usize = 8 + 32 + 32 + 8 + 32 + 8;

/// Distinguishes temporary files of concurrent stores in one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Why an artifact was not used; logged, then the file is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsound {
    /// Not our header, or too short to hold one.
    Foreign,
    /// Our header, but for another module or engine.
    Mismatched,
    /// Shorter (or longer) than its header says.
    Truncated,
    /// The payload's checksum does not match.
    Corrupt,
    /// wasmtime refused the payload.
    Rejected,
}

impl DiskCache {
    /// Opens (creating, private to this user) the cache in `dir` for
    /// artifacts of `engine`.
    pub(crate) fn open(
        dir: &Path,
        engine: &Engine,
        max_bytes: u64,
    ) -> Result<Self, DiskCacheError> {
        let io = |source| DiskCacheError::Io {
            dir: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        check_private(dir)?;
        let mut hasher = Sha256::new();
        hasher.update(b"corral precompiled component\n");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(b"\n");
        // Covers wasmtime's version and every setting that changes the code
        // it generates (fuel, epochs, stack limit, target features, ...).
        std::hash::Hash::hash(
            &engine.precompile_compatibility_hash(),
            &mut HashWriter(&mut hasher),
        );
        Ok(Self {
            dir: dir.to_owned(),
            fingerprint: hasher.finalize().into(),
            max_bytes,
        })
    }

    /// The directory artifacts live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the artifact for `hash` lives in.
    pub(crate) fn path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir
            .join(format!("{hash}-{}.cwasm", &hex(&self.fingerprint)[..16]))
    }

    /// The component stored for `hash`, if a sound artifact is there, and
    /// how long compiling it took.
    pub(crate) fn load(&self, engine: &Engine, hash: &ModuleHash) -> Option<(Component, Duration)> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        let verdict = match self.payload(hash, &bytes) {
            // SAFETY: the payload is byte for byte what `store` wrote from
            // `Engine::precompile_component` on an engine with this
            // fingerprint, for this module (header and checksum matched, in
            // a directory only this user can write); wasmtime also re-checks
            // engine compatibility while deserializing.
            Ok((payload, compile_time)) => match unsafe { Component::deserialize(engine, payload) }
            {
                Ok(component) => {
                    // Marks it used, for the eviction order; a failure only
                    // makes it look older.
                    if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                        let _ = file.set_modified(SystemTime::now());
                    }
                    return Some((component, compile_time));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "precompiled artifact refused by wasmtime");
                    Unsound::Rejected
                }
            },
            Err(unsound) => unsound,
        };
        tracing::warn!(path = %path.display(), reason = ?verdict, "discarding unusable precompiled artifact; recompiling");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// The payload of `bytes` and the compile time it records, if it is a
    /// sound artifact for `hash`.
    pub(crate) fn payload<'a>(
        &self,
        hash: &ModuleHash,
        bytes: &'a [u8],
    ) -> Result<(&'a [u8], Duration), Unsound> {
        if bytes.len() < HEADER_LEN || !bytes.starts_with(MAGIC) {
            return Err(Unsound::Foreign);
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        let module = &header[8..40];
        let fingerprint = &header[40..72];
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[72..80]);
        let checksum = &header[80..112];
        let mut nanos = [0u8; 8];
        nanos.copy_from_slice(&header[112..120]);
        if hex(module) != hash.as_str() || fingerprint != self.fingerprint {
            return Err(Unsound::Mismatched);
        }
        if u64::from_le_bytes(len) != payload.len() as u64 {
            return Err(Unsound::Truncated);
        }
        if Sha256::digest(payload)[..] != *checksum {
            return Err(Unsound::Corrupt);
        }
        Ok((payload, Duration::from_nanos(u64::from_le_bytes(nanos))))
    }

    /// Stores a precompiled artifact, then deletes the artifacts used
    /// longest ago while the directory holds more than its bound; a failure
    /// only costs a recompile later.
    pub(crate) fn store(&self, hash: &ModuleHash, artifact: &[u8], compile_time: Duration) {
        let path = self.path(hash);
        let Some(module) = raw_hash(hash) else {
            return;
        };
        let tmp = self.dir.join(format!(
            ".{hash}.{}-{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&module);
        header.extend_from_slice(&self.fingerprint);
        header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        header.extend_from_slice(&Sha256::digest(artifact));
        let nanos = u64::try_from(compile_time.as_nanos()).unwrap_or(u64::MAX);
        header.extend_from_slice(&nanos.to_le_bytes());
        // Write to a temporary name and rename: readers (this or another
        // worker sharing the directory) see a whole artifact or none.
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&header)?;
            file.write_all(artifact)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not store precompiled artifact");
            let _ = std::fs::remove_file(&tmp);
        }
        self.evict();
    }

    /// Deletes the artifacts used longest ago until the directory's
    /// artifacts fit `max_bytes`. Runs after each store (a compile, which
    /// costs far more than listing the directory).
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::debug!(path = %path.display(), "evicted precompiled artifact");
                total -= len;
            }
        }
    }
}

/// The raw 32 bytes of a hex module hash.
fn raw_hash(hash: &ModuleHash) -> Option<[u8; 32]> {
    let text = hash.as_str().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Feeds `std::hash::Hash` output into sha256, for the fingerprint.
struct HashWriter<'a>(&'a mut Sha256);

impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn check_private(dir: &Path) -> Result<(), DiskCacheError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(dir).map_err(|source| DiskCacheError::Io {
        dir: dir.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    // Group- or world-writable, even with the sticky bit: artifact names are
    // predictable, so another user could plant one before we write it.
    if mode & 0o022 != 0 {
        return Err(DiskCacheError::NotPrivate {
            dir: dir.to_owned(),
            mode,
        });
    }
    // Owned by someone else: they can write it whatever the mode says to us.
    // (`/proc/self` belongs to this process's user; where there is no /proc,
    // the mode check stands alone.)
    if let Ok(me) = std::fs::metadata("/proc/self")
        && me.uid() != meta.uid()
    {
        return Err(DiskCacheError::NotOwned {
            dir: dir.to_owned(),
            owner: meta.uid(),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Path) -> Result<(), DiskCacheError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_hash_round_trips() {
        let hash = ModuleHash::of(b"abc");
        let raw = raw_hash(&hash).unwrap_or_default();
        assert_eq!(hex(&raw), hash.as_str());
        assert_eq!(raw_hash(&ModuleHash("zz".repeat(32))), None);
    }

    #[test]
    fn default_dir_prefers_corral_cache_dir() {
        // Only read here, never set: tests run in parallel in one process.
        match std::env::var_os("CORRAL_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => assert_eq!(default_cache_dir(), Some(PathBuf::from(dir))),
            None => {
                if let Some(dir) = default_cache_dir() {
                    assert!(dir.ends_with("corral/components"), "{}", dir.display());
                }
            }
        }
    }
}
