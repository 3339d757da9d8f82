//! Compiled modules on disk, by module digest, so a second start of the
//! same capsule skips compilation.
//!
//! A cache file is `FORGECWASM2\n`, a 32-byte tag, then Wasmtime's
//! serialized module. The tag is keyed BLAKE3 (a MAC) with a secret key
//! kept beside the cache (0600, made on first use), over the module digest
//! and the serialized bytes: a file that was changed, truncated, or written
//! by anyone without the key is not loaded (it is compiled again and
//! replaced). Wasmtime itself refuses an artifact of another version or
//! configuration, which is also a miss. (BLAKE3 rather than sha3 here:
//! the check is on every warm start and BLAKE3 is several times faster.)

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use rand_core::RngCore as _;
use wasmtime::{Engine, Module, component::Component};

use crate::sign::Digest;

const HEADER: &[u8] = b"FORGECWASM2\n";
const KEY_FILE: &str = "cache.key";

#[derive(Debug, thiserror::Error)]
#[error("module cache {path}: {source}")]
pub struct CacheError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub struct ModuleCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl ModuleCache {
    /// Opens (creating) the cache directory and its key.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError { path, source }
        };
        let key_path = dir.join(KEY_FILE);
        let key = match fs::read(&key_path) {
            // An existing key: the directory was made (0700) with it.
            Ok(k) if k.len() == 32 => k,
            _ => {
                fs::create_dir_all(dir).map_err(err(dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
                let mut k = [0u8; 32];
                rand_core::OsRng.fill_bytes(&mut k);
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(err(&tmp))?;
                f.write_all(&k).map_err(err(&tmp))?;
                fs::rename(&tmp, &key_path).map_err(err(&key_path))?;
                k.to_vec()
            }
        };
        let mut k = [0u8; 32];
        k.copy_from_slice(&key);
        Ok(Self { dir: dir.to_path_buf(), key: k })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.to_hex()))
    }

    fn tag(&self, digest: &Digest, artifact: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&digest.0);
        h.update(artifact);
        h.finalize().into()
    }

    /// The cached artifact for `digest`, if present and intact.
    /// The file's bytes and where the artifact starts in them.
    fn artifact(&self, digest: &Digest) -> Option<(PathBuf, Vec<u8>, usize)> {
        let path = self.path(digest);
        let bytes = fs::read(&path).ok()?;
        let rest = bytes.strip_prefix(HEADER)?;
        if rest.len() < 32 {
            return None;
        }
        let (tag, artifact) = rest.split_at(32);
        // Compared in constant time (blake3::Hash's equality).
        if blake3::Hash::from_bytes(tag.try_into().ok()?)
            != blake3::Hash::from_bytes(self.tag(digest, artifact))
        {
            tracing::warn!(path = %path.display(), "a cached module failed its integrity check; compiling again");
            return None;
        }
        let at = bytes.len() - artifact.len();
        Some((path, bytes, at))
    }

    /// The cached module, if present, intact and loadable by this engine.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Module> {
        let (path, bytes, at) = self.artifact(digest)?;
        let artifact = &bytes[at..];
        // SAFETY: Module::deserialize trusts its input to be an artifact
        // Wasmtime produced. These bytes are: the tag checked in `artifact`
        // is keyed with a secret only this cache's owner can read, and it
        // covers every byte of the artifact as `store` wrote it. Wasmtime
        // still checks the version and configuration and errors (a miss)
        // if they differ.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "cached module not usable by this engine; compiling again");
                None
            }
        }
    }

    /// The cached component, if present, intact and loadable by this engine.
    pub fn load_component(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let (path, bytes, at) = self.artifact(digest)?;
        let artifact = &bytes[at..];
        // SAFETY: as in `load`: the keyed tag proves `store_component`
        // wrote these bytes from Wasmtime's own serialization, and
        // Wasmtime checks the version and configuration.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "cached component not usable by this engine; compiling again");
                None
            }
        }
    }

    /// Stores `module` (compiled from the module with `digest`).
    pub fn store(&self, digest: &Digest, module: &Module) -> Result<(), CacheError> {
        self.store_artifact(digest, module.serialize())
    }

    /// Stores `component` (compiled from the component with `digest`).
    pub fn store_component(&self, digest: &Digest, component: &Component) -> Result<(), CacheError> {
        self.store_artifact(digest, component.serialize())
    }

    fn store_artifact(&self, digest: &Digest, artifact: wasmtime::Result<Vec<u8>>) -> Result<(), CacheError> {
        let path = self.path(digest);
        let artifact = artifact.map_err(|e| CacheError {
            path: path.clone(),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(&self.tag(digest, &artifact));
        bytes.extend_from_slice(&artifact);
        crate::sign::files::write_atomic(&path, &bytes, 0o600).map_err(|source| CacheError { path, source })
    }
}
