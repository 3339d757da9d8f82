//! Verification of a signed manifest and its payloads, independent of how
//! they are stored (a policy bundle directory, a `.forgepkg` capsule, ...).
//!
//! Order: the manifest's kind, then k-of-n signatures (nothing the manifest
//! says is believed before that), then the version against the last applied
//! one, then every payload's digest.

use super::{
    digest::Digest,
    keys::KeyId,
    manifest::Manifest,
    signature::{Rejection, Signatures, Signer, Tally},
    trust::TrustConfig,
};

/// Why a signed manifest was refused. Each names what it concerns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{name:?} is a {found}, not a {expected}; refusing it")]
    WrongKind { name: String, found: String, expected: String },
    #[error(
        "{valid} valid signature{} from distinct trusted keys, {required} required{}",
        if *.valid == 1 { "" } else { "s" },
        not_counted(.rejected)
    )]
    TooFewSignatures { valid: usize, required: usize, counted: Vec<Signer>, rejected: Vec<Rejection> },
    #[error(
        "{name:?} version {version} is not newer than the last applied version {last_applied}{}: \
         refused as a replay or rollback",
        applied_as(.newest)
    )]
    Replay {
        name: String,
        version: u64,
        last_applied: u64,
        /// The bundle of record that holds `last_applied`, when known.
        newest: Option<String>,
    },
    #[error("document {name:?} is listed in the signed manifest but missing")]
    MissingPayload { name: String },
    #[error(
        "document {name:?} was modified after signing: its sha3-256 is {actual} ({actual_size} bytes), \
         the signed manifest says {expected} ({expected_size} bytes)"
    )]
    DigestMismatch { name: String, expected: Digest, expected_size: u64, actual: Digest, actual_size: u64 },
}

fn applied_as(newest: &Option<String>) -> String {
    newest.as_ref().map_or_else(String::new, |n| {
        format!(" (bundle {n:?}; versions increase across every bundle name of the trust domain)")
    })
}

fn not_counted(rejected: &[Rejection]) -> String {
    if rejected.is_empty() {
        return String::new();
    }
    let list: Vec<String> = rejected.iter().map(ToString::to_string).collect();
    format!("; not counted: {}", list.join("; "))
}

impl Refusal {
    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongKind { .. } => "wrong_kind",
            Self::TooFewSignatures { .. } => "too_few_signatures",
            Self::Replay { .. } => "replay",
            Self::MissingPayload { .. } => "missing_document",
            Self::DigestMismatch { .. } => "digest_mismatch",
        }
    }
}

/// What verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Trusted keys whose valid signatures counted, in file order.
    pub signers: Vec<Signer>,
    /// Signatures that did not count, and why.
    pub rejected: Vec<Rejection>,
    /// The threshold that was met.
    pub threshold: usize,
}

impl Verification {
    pub fn signer_ids(&self) -> Vec<KeyId> {
        self.signers.iter().map(|s| s.key_id).collect()
    }
}

/// Verifies `manifest` (expected to be of `kind`) with its `signatures`
/// against `trust`, refuses a version not newer than `last_applied`, and
/// checks each payload that `payload(name)` returns against its digest.
pub fn verify<'a>(
    manifest: &Manifest,
    signatures: &Signatures,
    kind: &str,
    trust: &TrustConfig,
    last_applied: Option<u64>,
    payload: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Verification, Refusal> {
    if manifest.kind() != kind {
        return Err(Refusal::WrongKind {
            name: manifest.name().to_string(),
            found: manifest.kind().to_string(),
            expected: kind.to_string(),
        });
    }
    let Tally { counted, rejected } = signatures.tally(&manifest.signed_message(), trust);
    if counted.len() < trust.threshold() {
        return Err(Refusal::TooFewSignatures {
            valid: counted.len(),
            required: trust.threshold(),
            counted,
            rejected,
        });
    }
    if let Some(last) = last_applied
        && manifest.version() <= last
    {
        return Err(Refusal::Replay {
            name: manifest.name().to_string(),
            version: manifest.version(),
            last_applied: last,
            newest: None,
        });
    }
    for e in manifest.entries() {
        let bytes = payload(&e.name).ok_or_else(|| Refusal::MissingPayload { name: e.name.clone() })?;
        let actual = e.hash.digest(bytes);
        if actual != e.digest || bytes.len() as u64 != e.size {
            return Err(Refusal::DigestMismatch {
                name: e.name.clone(),
                expected: e.digest,
                expected_size: e.size,
                actual,
                actual_size: bytes.len() as u64,
            });
        }
    }
    Ok(Verification { signers: counted, rejected, threshold: trust.threshold() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{keys::SigningKey, manifest::Entry, trust::TrustedKey};

    #[test]
    fn too_few_message_counts_and_lists() {
        let k = SigningKey::generate().unwrap();
        let r = Refusal::TooFewSignatures {
            valid: 2,
            required: 3,
            counted: vec![],
            rejected: vec![Rejection::Untrusted { key_id: k.public_key().id() }],
        };
        assert_eq!(
            r.to_string(),
            format!(
                "2 valid signatures from distinct trusted keys, 3 required; not counted: signer {} is not a trusted key",
                k.public_key().id()
            )
        );
    }

    #[test]
    fn kind_is_checked_before_anything_else() {
        let k = SigningKey::generate().unwrap();
        let m = Manifest::new("forgepkg", "cap", 1, vec![Entry::of("a.wasm", b"x")]).unwrap();
        let mut s = Signatures::default();
        s.add(&k, &m.signed_message());
        let trust =
            TrustConfig::new(1, vec![TrustedKey { key: k.public_key(), label: "k".into() }], "t").unwrap();
        let err = verify(&m, &s, "policy-bundle", &trust, None, |_| Some(&b"x"[..])).unwrap_err();
        assert_eq!(err.code(), "wrong_kind");
        assert!(verify(&m, &s, "forgepkg", &trust, None, |_| Some(&b"x"[..])).is_ok());
    }
}
