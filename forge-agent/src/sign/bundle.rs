//! Policy bundles: a directory of policy documents, a manifest naming each
//! one with its SHA3-256 digest, and k-of-n ed25519 signatures over the
//! manifest.
//!
//! ```text
//! BUNDLE/
//!   MANIFEST        the signed manifest (kind `policy-bundle`; see manifest.rs)
//!   SIGNATURES      one `ed25519 <public key> <signature>` line per signer (see signature.rs)
//!   documents/      the policy documents, exactly the files MANIFEST lists
//! ```
//!
//! Other files at the top level are ignored; a file in `documents/` that the
//! manifest does not list is refused, so nobody can believe a policy is in
//! force because it sits in the directory. Documents are read once, without
//! following symlinks, and [`VerifiedBundle`] hands out exactly the bytes
//! that were hashed: what is verified is what gets applied.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{
    files::{self, Read},
    keys::{KeyId, SigningKey},
    manifest::{Entry, MAX_MANIFEST_BYTES, Manifest, ManifestError},
    signature::{AddOutcome, MAX_SIGNATURES, Rejection, SignatureError, Signatures, Signer},
    trust::TrustConfig,
    verify::{Refusal, verify},
};

/// The manifest kind of a policy bundle.
pub const KIND: &str = "policy-bundle";
pub const MANIFEST_FILE: &str = "MANIFEST";
pub const SIGNATURES_FILE: &str = "SIGNATURES";
pub const DOCUMENTS_DIR: &str = "documents";
/// Largest policy document accepted.
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
const MAX_SIGNATURES_BYTES: u64 = (MAX_SIGNATURES as u64) * 200;

/// Errors of this module. Refusals of verification are [`BundleError::Refused`].
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error(
        "malformed bundle: {path} is not a bundle directory (expected {MANIFEST_FILE}, {SIGNATURES_FILE}, {DOCUMENTS_DIR}/)"
    )]
    NotABundle { path: PathBuf },
    #[error("malformed bundle: {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("malformed bundle: {path}: {source}")]
    Signatures {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("malformed bundle: {path} is listed in {MANIFEST_FILE} but does not exist")]
    MissingDocument { path: PathBuf },
    #[error(
        "malformed bundle: {path} is not listed in {MANIFEST_FILE}; refusing a bundle with unsigned documents"
    )]
    UnlistedFile { path: PathBuf },
    #[error("malformed bundle: {path} is not a regular file (symlinks are not followed)")]
    NotRegularFile { path: PathBuf },
    #[error("malformed bundle: {path} is {size} bytes, more than the limit of {limit}")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: Box<Refusal>,
    },
}

impl BundleError {
    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Exists { .. } => "exists",
            Self::NotABundle { .. }
            | Self::Manifest { .. }
            | Self::Signatures { .. }
            | Self::MissingDocument { .. }
            | Self::UnlistedFile { .. }
            | Self::NotRegularFile { .. }
            | Self::TooLarge { .. } => "malformed_bundle",
            Self::Refused { source, .. } => source.code(),
        }
    }

    /// The refusal, if verification refused the bundle.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// A named document and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Document {
    /// The document as UTF-8 text (policy documents are YAML).
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.bytes)
    }
}

/// A bundle as read from disk, not yet verified.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    manifest: Manifest,
    signatures: Signatures,
    documents: Vec<Document>,
}

/// A bundle that passed [`Bundle::verify`].
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    pub path: PathBuf,
    pub name: String,
    pub version: u64,
    /// Documents in manifest order (sorted by name), exactly the verified bytes.
    pub documents: Vec<Document>,
    /// Trusted keys whose signatures counted.
    pub signers: Vec<Signer>,
    /// Signatures that did not count (untrusted, bad, duplicate): worth a warning.
    pub rejected: Vec<Rejection>,
    pub threshold: usize,
    /// The signed manifest and the signatures, as verified (kept with the
    /// set of record so it can be verified again).
    pub manifest: Manifest,
    pub signatures: Signatures,
}

impl VerifiedBundle {
    pub fn signer_ids(&self) -> Vec<KeyId> {
        self.signers.iter().map(|s| s.key_id).collect()
    }
}

/// What [`Bundle::sign`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignReport {
    pub key_id: KeyId,
    pub outcome: AddOutcome,
    /// Signature lines in the bundle afterwards.
    pub signatures: usize,
}

impl Bundle {
    /// Writes a new, unsigned bundle at `dir` (which must not exist).
    pub fn create(
        dir: &Path,
        name: &str,
        version: u64,
        documents: Vec<Document>,
    ) -> Result<Self, BundleError> {
        let entries = documents.iter().map(|d| Entry::of(&d.name, &d.bytes)).collect();
        let manifest = Manifest::new(KIND, name, version, entries)
            .map_err(|source| BundleError::Manifest { path: dir.join(MANIFEST_FILE), source })?;
        fs::create_dir(dir).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => BundleError::Exists { path: dir.to_path_buf() },
            _ => BundleError::Io { path: dir.to_path_buf(), source },
        })?;
        let written = write_contents(dir, &manifest, &documents);
        if written.is_err() {
            // The directory is ours (create_dir succeeded): leave nothing half-made.
            let _ = fs::remove_dir_all(dir);
        }
        written?;
        let mut documents = documents;
        documents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { path: dir.to_path_buf(), manifest, signatures: Signatures::default(), documents })
    }

    /// Reads a bundle directory: the manifest, the signatures and every listed document.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() || fs::symlink_metadata(&manifest_path).is_err() {
            return Err(BundleError::NotABundle { path: dir.to_path_buf() });
        }
        let bytes = read(&manifest_path, MAX_MANIFEST_BYTES as u64)?;
        let manifest = Manifest::parse(&bytes)
            .map_err(|source| BundleError::Manifest { path: manifest_path.clone(), source })?;
        let signatures = read_signatures(dir)?;
        let docs_dir = dir.join(DOCUMENTS_DIR);
        let mut documents = Vec::with_capacity(manifest.entries().len());
        for e in manifest.entries() {
            let path = docs_dir.join(&e.name);
            if fs::symlink_metadata(&path).is_err() {
                return Err(BundleError::MissingDocument { path });
            }
            documents.push(Document { name: e.name.clone(), bytes: read(&path, MAX_DOCUMENT_BYTES)? });
        }
        let listing =
            fs::read_dir(&docs_dir).map_err(|source| BundleError::Io { path: docs_dir.clone(), source })?;
        for item in listing {
            let item = item.map_err(|source| BundleError::Io { path: docs_dir.clone(), source })?;
            let name = item.file_name();
            if name.to_str().and_then(|n| manifest.entry(n)).is_none() {
                return Err(BundleError::UnlistedFile { path: item.path() });
            }
        }
        Ok(Self { path: dir.to_path_buf(), manifest, signatures, documents })
    }

    /// A bundle from bytes kept elsewhere (the set of record in the state
    /// file): the manifest, the signatures and exactly the documents the
    /// manifest lists. `path` names where they came from in errors.
    pub fn from_parts(
        path: &Path,
        manifest: &[u8],
        signatures: &[u8],
        mut documents: Vec<Document>,
    ) -> Result<Self, BundleError> {
        let manifest = Manifest::parse(manifest)
            .map_err(|source| BundleError::Manifest { path: path.to_path_buf(), source })?;
        let signatures = Signatures::parse(signatures)
            .map_err(|source| BundleError::Signatures { path: path.to_path_buf(), source })?;
        let doc_path = |name: &str| path.join(DOCUMENTS_DIR).join(name);
        if let Some(d) = documents.iter().find(|d| manifest.entry(&d.name).is_none()) {
            return Err(BundleError::UnlistedFile { path: doc_path(&d.name) });
        }
        if let Some(e) = manifest.entries().iter().find(|e| !documents.iter().any(|d| d.name == e.name)) {
            return Err(BundleError::MissingDocument { path: doc_path(&e.name) });
        }
        documents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { path: path.to_path_buf(), manifest, signatures, documents })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn signatures(&self) -> &Signatures {
        &self.signatures
    }

    /// Documents in manifest order; not verified yet.
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// Verifies the bundle against `trust`: at least k valid signatures from
    /// distinct trusted keys over the manifest, a version newer than
    /// `last_applied` (when given), and every document's digest.
    pub fn verify(
        &self,
        trust: &TrustConfig,
        last_applied: Option<u64>,
    ) -> Result<VerifiedBundle, BundleError> {
        let payload = |name: &str| self.documents.iter().find(|d| d.name == name).map(|d| d.bytes.as_slice());
        let v = verify(&self.manifest, &self.signatures, KIND, trust, last_applied, payload)
            .map_err(|source| BundleError::Refused { path: self.path.clone(), source: Box::new(source) })?;
        Ok(VerifiedBundle {
            path: self.path.clone(),
            name: self.manifest.name().to_string(),
            version: self.manifest.version(),
            documents: self.documents.clone(),
            signers: v.signers,
            rejected: v.rejected,
            threshold: v.threshold,
            manifest: self.manifest.clone(),
            signatures: self.signatures.clone(),
        })
    }

    /// Checks every document against its digest in the manifest (no
    /// signatures involved): what a signer does before signing.
    pub fn check_digests(&self) -> Result<(), BundleError> {
        for (e, d) in self.manifest.entries().iter().zip(&self.documents) {
            let actual = e.actual(&d.bytes);
            if actual != *e || d.name != e.name {
                return Err(BundleError::Refused {
                    path: self.path.clone(),
                    source: Box::new(Refusal::DigestMismatch {
                        name: d.name.clone(),
                        expected: e.digest,
                        expected_size: e.size,
                        actual: actual.digest,
                        actual_size: actual.size,
                    }),
                });
            }
        }
        Ok(())
    }

    /// Adds `key`'s signature to the bundle at `dir`. The documents must
    /// match the manifest first: nobody signs what they have not looked at.
    /// Signing again with the same key replaces its signature (or changes
    /// nothing); concurrent signers on one host are serialised by a lock on
    /// the directory.
    pub fn sign(dir: &Path, key: &SigningKey) -> Result<(Self, SignReport), BundleError> {
        let handle =
            fs::File::open(dir).map_err(|source| BundleError::Io { path: dir.to_path_buf(), source })?;
        let _lock = Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| BundleError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::from(errno),
        })?;
        let mut bundle = Self::load(dir)?;
        bundle.check_digests()?;
        let outcome = bundle.signatures.add(key, &bundle.manifest.signed_message());
        if outcome != AddOutcome::Unchanged {
            let path = dir.join(SIGNATURES_FILE);
            files::write_atomic(&path, &bundle.signatures.to_bytes(), 0o644)
                .map_err(|source| BundleError::Io { path, source })?;
        }
        let report = SignReport {
            key_id: key.public_key().id(),
            outcome,
            signatures: bundle.signatures.entries().len(),
        };
        Ok((bundle, report))
    }
}

fn write_contents(dir: &Path, manifest: &Manifest, documents: &[Document]) -> Result<(), BundleError> {
    let io = |path: PathBuf| move |source| BundleError::Io { path, source };
    let docs = dir.join(DOCUMENTS_DIR);
    fs::create_dir(&docs).map_err(io(docs.clone()))?;
    for d in documents {
        let p = docs.join(&d.name);
        files::write_new(&p, &d.bytes, 0o644).map_err(io(p.clone()))?;
    }
    let p = dir.join(SIGNATURES_FILE);
    files::write_new(&p, b"", 0o644).map_err(io(p.clone()))?;
    // The manifest last: a bundle with a MANIFEST is complete.
    let p = dir.join(MANIFEST_FILE);
    files::write_new(&p, &manifest.to_bytes(), 0o644).map_err(io(p.clone()))
}

fn read_signatures(dir: &Path) -> Result<Signatures, BundleError> {
    let path = dir.join(SIGNATURES_FILE);
    if fs::symlink_metadata(&path).is_err() {
        // A bundle nobody has signed yet may lack the file.
        return Ok(Signatures::default());
    }
    let bytes = read(&path, MAX_SIGNATURES_BYTES)?;
    Signatures::parse(&bytes).map_err(|source| BundleError::Signatures { path, source })
}

fn read(path: &Path, limit: u64) -> Result<Vec<u8>, BundleError> {
    match files::read_regular(path, limit) {
        Ok(Read::Bytes(b)) => Ok(b),
        Ok(Read::TooLarge(size)) => Err(BundleError::TooLarge { path: path.to_path_buf(), size, limit }),
        Ok(Read::NotRegular) => Err(BundleError::NotRegularFile { path: path.to_path_buf() }),
        Err(source) => Err(BundleError::Io { path: path.to_path_buf(), source }),
    }
}
