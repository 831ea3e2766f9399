//! Compiled components, kept so each module compiles once.
//!
//! In memory: content hash → [`LoadedHandler`] (the compiled component and its
//! pre-instantiated form). On disk (optional): precompiled artifacts named by
//! content hash and an engine fingerprint, so a restarted worker loads a job
//! in milliseconds. A disk artifact is trusted only after its own checksum
//! matches; a corrupt, truncated or foreign file is deleted and recompiled.
//! This module never decides what a handler may do; it only stores them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// The in-memory cache.
pub(crate) struct MemoryCache<T> {
    entries: RwLock<HashMap<ModuleHash, Arc<T>>>,
}

impl<T> MemoryCache<T> {
    pub(crate) fn new() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, hash: &ModuleHash) -> Option<Arc<T>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    pub(crate) fn insert(&self, hash: ModuleHash, value: Arc<T>) -> Arc<T> {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash)
            .or_insert(value)
            .clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Precompiled artifacts on disk.
pub(crate) struct DiskCache {
    dir: PathBuf,
    fingerprint: String,
}

/// Artifact layout: MAGIC, 32-byte sha256 of the payload, payload.
const MAGIC: &[u8; 8] = b"CORRAL1\0";

impl DiskCache {
    pub(crate) fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.fingerprint))
    }

    /// The component stored for `hash`, if a sound artifact is there.
    pub(crate) fn load(&self, engine: &Engine, hash: &ModuleHash) -> Option<Component> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        let sound = bytes.len() > MAGIC.len() + 32
            && bytes.starts_with(MAGIC)
            && Sha256::digest(&bytes[MAGIC.len() + 32..])[..]
                == bytes[MAGIC.len()..MAGIC.len() + 32];
        if !sound {
            tracing::warn!(path = %path.display(), "discarding corrupt precompiled artifact");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: the payload is exactly what `store` wrote from
        // `Engine::precompile_component` for an engine with this fingerprint
        // (its checksum matched), and wasmtime re-checks engine compatibility
        // while deserializing.
        match unsafe { Component::deserialize(engine, &bytes[MAGIC.len() + 32..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable precompiled artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a precompiled artifact; failures only cost a recompile later.
    pub(crate) fn store(&self, hash: &ModuleHash, artifact: &[u8]) {
        let path = self.path(hash);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut data = Vec::with_capacity(MAGIC.len() + 32 + artifact.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&Sha256::digest(artifact));
        data.extend_from_slice(artifact);
        let written = std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not store precompiled artifact");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
