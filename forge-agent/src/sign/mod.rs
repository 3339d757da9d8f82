//! Signed manifests: k-of-n ed25519 signatures over a manifest of named,
//! SHA3-256-digested payloads. Policy bundles use it today; `.forgepkg`
//! capsules will use the same manifest, signatures and trust configuration
//! with another `kind`.
//!
//! | module | concern |
//! |---|---|
//! | [`digest`] | SHA3-256 |
//! | [`tree`] | the SHA3-256 tree digest of large payloads (8 leaves at a time with AVX-512) |
//! | [`keys`] | ed25519 key files (private 0600), key ids |
//! | [`manifest`] | the canonical manifest and the exact signed bytes |
//! | [`signature`] | the signatures file; counting signatures against trust |
//! | [`trust`] | `trust.toml`: trusted keys and the threshold k |
//! | [`verify`] | verification independent of storage; refusals |
//! | [`bundle`] | policy bundle directories: create, load, sign, verify |
//! | [`state`] | the trust domain's version and the policy set of record (no rollback, across restarts) |
//!
//! A verifier believes nothing in a manifest before k distinct trusted keys
//! have signed its exact bytes; then it refuses a version not newer than the
//! last applied one; then it checks every payload's digest. Each refusal is
//! its own [`verify::Refusal`] variant naming the document, signer or version.
//! For policy bundles the last applied version is the trust domain's, across
//! every bundle name, and bundle names compose ([`state`]).

pub mod bundle;
pub mod digest;
pub mod files;
#[cfg(target_arch = "x86_64")]
mod keccak_x8;
pub mod keys;
pub mod manifest;
pub mod signature;
pub mod state;
pub mod tree;
pub mod trust;
pub mod verify;

#[cfg(test)]
mod tests;

pub use bundle::{Bundle, BundleError, Document, VerifiedBundle};
pub use digest::{Digest, sha3_256};
pub use keys::{KeyId, PublicKey, SigningKey, key_id};
pub use manifest::Manifest;
pub use tree::sha3_256_tree;
pub use trust::TrustConfig;
pub use verify::Refusal;
