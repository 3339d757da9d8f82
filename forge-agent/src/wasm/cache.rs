//! Compiled modules on disk, by module digest, so a second start of the
//! same capsule skips compilation.
//!
//! A cache file is Wasmtime's serialized module, a 32-byte tag, then
//! `FORGECWASM3\n`. The tag is keyed BLAKE3 (a MAC) with a secret key
//! kept beside the cache (0600, made on first use), over the module digest
//! and the serialized bytes: a file that was changed, truncated, or written
//! by anyone without the key is not loaded (it is compiled again and
//! replaced). Wasmtime itself refuses an artifact of another version or
//! configuration, which is also a miss. (BLAKE3 rather than sha3 here:
//! the check is on every warm start and BLAKE3 is several times faster.)
//!
//! The artifact comes first so that Wasmtime can map the file instead of
//! copying it into fresh memory, which is most of a warm start. It maps
//! the very file that was checked: the open descriptor, through
//! `/proc/self/fd`, so a file renamed into place meanwhile is not the one
//! loaded. Files are only ever replaced whole (written aside, renamed),
//! never changed in place, and the directory is the owner's alone (0700).

use std::{
    fs,
    io::{Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use rand_core::RngCore as _;
use wasmtime::{Engine, Module, component::Component};

use crate::sign::Digest;

/// The end of every cache file (after the artifact and its tag).
const TRAILER: &[u8] = b"FORGECWASM3\n";
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

    /// The cache file for `digest`, opened, if its tag holds: the open
    /// file and its bytes.
    fn checked(&self, digest: &Digest) -> Option<Checked> {
        let path = self.path(digest);
        let mut file = fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let rest = bytes.strip_suffix(TRAILER)?;
        let at = rest.len().checked_sub(32)?;
        let (artifact, tag) = rest.split_at(at);
        // Compared in constant time (blake3::Hash's equality).
        if blake3::Hash::from_bytes(tag.try_into().ok()?)
            != blake3::Hash::from_bytes(self.tag(digest, artifact))
        {
            tracing::warn!(path = %path.display(), "a cached module failed its integrity check; compiling again");
            return None;
        }
        Some(Checked { path, file, bytes, len: at })
    }

    /// The cached module, if present, intact and loadable by this engine.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Module> {
        let c = self.checked(digest)?;
        // Module::deserialize* trust their input to be an artifact Wasmtime
        // produced. This one is: the tag checked in `checked` is keyed with
        // a secret only this cache's owner can read, and it covers every
        // byte of the artifact as `store` wrote it. Wasmtime still checks
        // the version and configuration and errors (a miss) if they differ.
        let loaded = match c.file.try_clone() {
            // SAFETY: as above; the file mapped is the one checked (the
            // same open file), and cache files are never written in place.
            Ok(f) => unsafe { Module::deserialize_open_file(engine, f) },
            // SAFETY: as above; these are the checked bytes themselves.
            Err(_) => unsafe { Module::deserialize(engine, c.artifact()) },
        };
        c.usable(loaded)
    }

    /// The cached component, if present, intact and loadable by this engine.
    pub fn load_component(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let c = self.checked(digest)?;
        // As in `load`: the keyed tag proves `store_component` wrote these
        // bytes from Wasmtime's own serialization, and Wasmtime checks the
        // version and configuration.
        let loaded = match c.fd_path() {
            // SAFETY: as above; the path opens the checked open file itself,
            // and cache files are never written in place.
            Some(p) => unsafe { Component::deserialize_file(engine, p) },
            // SAFETY: as above; these are the checked bytes themselves.
            None => unsafe { Component::deserialize(engine, c.artifact()) },
        };
        c.usable(loaded)
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
        let tag = self.tag(digest, &artifact);
        let mut bytes = artifact;
        bytes.extend_from_slice(&tag);
        bytes.extend_from_slice(TRAILER);
        crate::sign::files::write_atomic(&path, &bytes, 0o600).map_err(|source| CacheError { path, source })
    }
}

/// A cache file whose tag held.
struct Checked {
    path: PathBuf,
    file: fs::File,
    bytes: Vec<u8>,
    /// The artifact is `bytes[..len]`.
    len: usize,
}

impl Checked {
    fn artifact(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// A path that opens this very file, if `/proc` is mounted.
    fn fd_path(&self) -> Option<PathBuf> {
        let p = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        p.exists().then_some(p)
    }

    fn usable<T>(&self, loaded: wasmtime::Result<T>) -> Option<T> {
        loaded
            .inspect_err(|e| {
                tracing::info!(path = %self.path.display(), error = %e, "cached module not usable by this engine; compiling again")
            })
            .ok()
    }
}
