//! The `.forgepkg` container: one file holding a capsule's manifest, its
//! Wasm module and the signatures over both.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "FORGEPKG"
//! 8       2     format version, little endian (1)
//! 10      ...   four sections, always in this order, each
//!               4 bytes tag | 4 bytes length (u32 LE) | length bytes:
//!                 CAPS  capsule.toml (see manifest.rs)
//!                 WASM  the Wasm module
//!                 MANI  the signed manifest: kind `forge-capsule`, the capsule's name and
//!                       version, the sha3-256 and size of `capsule.toml` (a `file` line), and
//!                       the SHA3-256 tree digest and size of `module.wasm` (a `tree` line)
//!                 SIGS  the signatures over MANI, one `ed25519 <key> <signature>` line each
//! end     -     nothing may follow SIGS
//! ```
//!
//! Signatures cover the MANI bytes (see `sign::manifest`), which pin the
//! exact bytes of the other two payloads: what is signed is unambiguous, and
//! any byte changed in CAPS or WASM is a digest mismatch. A file has exactly
//! one encoding, so parsing and writing it back gives the same bytes.

use crate::sign::{
    Digest, Manifest, Refusal, SigningKey, TrustConfig,
    manifest::{Entry, Hash, ManifestError},
    sha3_256,
    signature::{AddOutcome, Rejection, SignatureError, Signatures, Signer},
    verify::verify,
};

use super::manifest::{CapsuleManifest, CapsuleManifestError};

pub const MAGIC: &[u8; 8] = b"FORGEPKG";
pub const FORMAT_VERSION: u16 = 1;
/// The manifest kind of a capsule (a policy bundle's signature never counts here).
pub const KIND: &str = "forge-capsule";
pub const CAPS_NAME: &str = "capsule.toml";
pub const MODULE_NAME: &str = "module.wasm";
/// Largest Wasm module accepted.
pub const MAX_MODULE_BYTES: usize = 64 << 20;
const MAX_SIGS_BYTES: usize = 256 << 10;

/// The sections, in file order, with their size limits.
const SECTIONS: [(&[u8; 4], usize); 4] = [
    (b"CAPS", super::manifest::MAX_MANIFEST_BYTES),
    (b"WASM", MAX_MODULE_BYTES),
    (b"MANI", crate::sign::manifest::MAX_MANIFEST_BYTES),
    (b"SIGS", MAX_SIGS_BYTES),
];

/// Why a package was refused. Each names the section or check concerned.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("not a .forgepkg: the file does not start with \"FORGEPKG\"")]
    BadMagic,
    #[error("format version {found} is not supported (this agent reads version {FORMAT_VERSION})")]
    Version { found: u16 },
    #[error("truncated at byte {offset}: {what}")]
    Truncated { offset: usize, what: String },
    #[error("section {index} at byte {offset} is {found:?}, expected {expected}")]
    SectionOrder { index: usize, offset: usize, found: String, expected: &'static str },
    #[error("section {tag} is {size} bytes; at most {limit} are accepted")]
    SectionTooLarge { tag: &'static str, size: usize, limit: usize },
    #[error("{extra} unexpected byte(s) after the last section (at byte {offset})")]
    Trailing { offset: usize, extra: usize },
    #[error("section CAPS: {0}")]
    Caps(#[from] CapsuleManifestError),
    #[error("section MANI: {0}")]
    Manifest(#[from] ManifestError),
    #[error("section SIGS: {0}")]
    Signatures(#[from] SignatureError),
    #[error("section MANI: {0}")]
    Inconsistent(String),
    #[error("section SIGS: the signature lines are not in sorted order (a package has one encoding)")]
    NonCanonicalSignatures,
    #[error("{0}")]
    Refused(Box<Refusal>),
    #[error("section WASM: {0}")]
    Module(String),
}

impl PackageError {
    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::Version { .. } => "unsupported_version",
            Self::Truncated { .. } => "truncated",
            Self::SectionOrder { .. } => "bad_section",
            Self::SectionTooLarge { .. } => "oversized_section",
            Self::Trailing { .. } => "trailing_bytes",
            Self::Caps(_) => "bad_capsule_manifest",
            Self::Manifest(_) | Self::Inconsistent(_) => "bad_manifest",
            Self::Signatures(_) | Self::NonCanonicalSignatures => "bad_signatures",
            Self::Refused(r) => r.code(),
            Self::Module(_) => "invalid_module",
        }
    }
}

/// A parsed package (nothing in it is believed yet: see [`Package::verify`]).
#[derive(Clone, Debug)]
pub struct Package {
    caps_bytes: Vec<u8>,
    caps: CapsuleManifest,
    module: Vec<u8>,
    signed: Manifest,
    signatures: Signatures,
}

/// A package whose signatures and digests held against a trust configuration.
#[derive(Clone, Debug)]
pub struct VerifiedPackage {
    pub package: Package,
    pub signers: Vec<Signer>,
    pub rejected: Vec<Rejection>,
    pub threshold: usize,
}

impl VerifiedPackage {
    /// The module's sha3-256 as signed: verification checked the module's
    /// bytes against it, so it is not computed again.
    pub fn module_digest(&self) -> Digest {
        self.package
            .signed
            .entries()
            .iter()
            .find(|e| e.name == MODULE_NAME)
            .map_or_else(|| self.package.module_digest(), |e| e.digest)
    }

    /// Key ids of the signers that counted, as policy selectors name them.
    pub fn signer_ids(&self) -> Vec<String> {
        self.signers.iter().map(|s| s.key_id.to_string()).collect()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8], PackageError> {
        let rest = &self.bytes[self.offset..];
        if rest.len() < n {
            return Err(PackageError::Truncated { offset: self.bytes.len(), what: what() });
        }
        let out = &rest[..n];
        self.offset += n;
        Ok(out)
    }
}

fn tag_name(tag: &[u8; 4]) -> &'static str {
    match tag {
        b"CAPS" => "CAPS",
        b"WASM" => "WASM",
        b"MANI" => "MANI",
        _ => "SIGS",
    }
}

impl Package {
    /// Builds an unsigned package from `capsule.toml` bytes and a module.
    pub fn build(caps_bytes: Vec<u8>, module: Vec<u8>) -> Result<Self, PackageError> {
        let caps = CapsuleManifest::parse(&caps_bytes)?;
        if module.len() > MAX_MODULE_BYTES {
            return Err(PackageError::SectionTooLarge {
                tag: "WASM",
                size: module.len(),
                limit: MAX_MODULE_BYTES,
            });
        }
        let signed = Manifest::new(
            KIND,
            &caps.name,
            caps.version,
            vec![Entry::of(CAPS_NAME, &caps_bytes), Entry::tree_of(MODULE_NAME, &module)],
        )?;
        Ok(Self { caps_bytes, caps, module, signed, signatures: Signatures::default() })
    }

    /// Parses a package file. Structure only: signatures and digests are
    /// checked by [`Self::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Self, PackageError> {
        let mut c = Cursor { bytes, offset: 0 };
        let magic = c.take(8, || "the magic".into()).map_err(|_| PackageError::BadMagic)?;
        if magic != MAGIC {
            return Err(PackageError::BadMagic);
        }
        let v = c.take(2, || "the format version".into())?;
        let version = u16::from_le_bytes([v[0], v[1]]);
        if version != FORMAT_VERSION {
            return Err(PackageError::Version { found: version });
        }
        let mut sections: Vec<&[u8]> = Vec::with_capacity(4);
        for (index, (tag, limit)) in SECTIONS.iter().enumerate() {
            let name = tag_name(tag);
            let at = c.offset;
            let found = c.take(4, || format!("section {name}'s tag"))?;
            if found != *tag {
                return Err(PackageError::SectionOrder {
                    index,
                    offset: at,
                    found: String::from_utf8_lossy(found).into_owned(),
                    expected: name,
                });
            }
            let l = c.take(4, || format!("section {name}'s length"))?;
            let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            if len > *limit {
                return Err(PackageError::SectionTooLarge { tag: name, size: len, limit: *limit });
            }
            let remaining = bytes.len() - c.offset;
            sections
                .push(c.take(len, || format!("section {name} declares {len} bytes, {remaining} remain"))?);
        }
        if c.offset != bytes.len() {
            return Err(PackageError::Trailing { offset: c.offset, extra: bytes.len() - c.offset });
        }
        let caps = CapsuleManifest::parse(sections[0])?;
        let signed = Manifest::parse(sections[2])?;
        let signatures = Signatures::parse(sections[3])?;
        // One encoding per package: the signature lines sorted, no repeats.
        if signatures.to_bytes() != sections[3] {
            return Err(PackageError::NonCanonicalSignatures);
        }
        let p =
            Self { caps_bytes: sections[0].to_vec(), caps, module: sections[1].to_vec(), signed, signatures };
        p.check_consistent()?;
        Ok(p)
    }

    fn check_consistent(&self) -> Result<(), PackageError> {
        let m = &self.signed;
        let names: Vec<&str> = m.entries().iter().map(|e| e.name.as_str()).collect();
        if names != [CAPS_NAME, MODULE_NAME] {
            return Err(PackageError::Inconsistent(format!(
                "lists {names:?}; a capsule's manifest lists exactly {CAPS_NAME:?} and {MODULE_NAME:?}"
            )));
        }
        if m.name() != self.caps.name || m.version() != self.caps.version {
            return Err(PackageError::Inconsistent(format!(
                "names {} version {}, but capsule.toml says {} version {}",
                m.name(),
                m.version(),
                self.caps.name,
                self.caps.version
            )));
        }
        Ok(())
    }

    /// The file's bytes (the one canonical encoding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mani = self.signed.to_bytes();
        let sigs = self.signatures.to_bytes();
        let parts: [&[u8]; 4] = [&self.caps_bytes, &self.module, &mani, &sigs];
        let mut out = Vec::with_capacity(10 + 32 + parts.iter().map(|p| p.len()).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for ((tag, _), part) in SECTIONS.iter().zip(parts) {
            out.extend_from_slice(*tag);
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Adds `key`'s signature over the manifest, after checking the payloads
    /// against it: nobody signs what they have not looked at.
    pub fn sign(&mut self, key: &SigningKey) -> Result<AddOutcome, PackageError> {
        self.check_digests()?;
        Ok(self.signatures.add(key, &self.signed.signed_message()))
    }

    fn payload(&self, name: &str) -> Option<&[u8]> {
        match name {
            CAPS_NAME => Some(&self.caps_bytes),
            MODULE_NAME => Some(&self.module),
            _ => None,
        }
    }

    /// Checks both payloads against the manifest's digests (no signatures involved).
    pub fn check_digests(&self) -> Result<(), PackageError> {
        for e in self.signed.entries() {
            let bytes = self.payload(&e.name).unwrap_or_default();
            let actual = e.actual(bytes);
            if actual != *e {
                return Err(PackageError::Refused(Box::new(Refusal::DigestMismatch {
                    name: e.name.clone(),
                    expected: e.digest,
                    expected_size: e.size,
                    actual: actual.digest,
                    actual_size: actual.size,
                })));
            }
        }
        Ok(())
    }

    /// k-of-n signatures from `trust` over the manifest, then both digests.
    pub fn verify(self, trust: &TrustConfig) -> Result<VerifiedPackage, PackageError> {
        let v = verify(&self.signed, &self.signatures, KIND, trust, None, |n| self.payload(n))
            .map_err(|r| PackageError::Refused(Box::new(r)))?;
        Ok(VerifiedPackage {
            package: self,
            signers: v.signers,
            rejected: v.rejected,
            threshold: v.threshold,
        })
    }

    pub fn manifest(&self) -> &CapsuleManifest {
        &self.caps
    }

    pub fn caps_bytes(&self) -> &[u8] {
        &self.caps_bytes
    }

    pub fn module(&self) -> &[u8] {
        &self.module
    }

    pub fn signed_manifest(&self) -> &Manifest {
        &self.signed
    }

    pub fn signatures(&self) -> &Signatures {
        &self.signatures
    }

    /// The module's digest as its manifest entry computes it (the SHA3-256
    /// tree digest, or the plain SHA3-256 in packages built before it): the
    /// capsule's code identity (policy selectors' `digests`).
    pub fn module_digest(&self) -> Digest {
        self.module_hash().digest(&self.module)
    }

    /// How the manifest digests the module: [`Hash::Tree`] since the tree
    /// digest, [`Hash::Plain`] in packages built before it.
    pub fn module_hash(&self) -> Hash {
        self.signed.entry(MODULE_NAME).map_or(Hash::Tree, |e| e.hash)
    }

    /// The sha3-256 of the signed manifest: one package build.
    pub fn package_digest(&self) -> Digest {
        sha3_256(&self.signed.to_bytes())
    }
}
