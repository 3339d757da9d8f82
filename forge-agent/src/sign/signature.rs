//! Detached signatures over a manifest, and how they are counted against a
//! trust configuration.
//!
//! The signatures file has one line per signature:
//!
//! ```text
//! ed25519 <64 hex: signer's public key> <128 hex: signature over the signed message>
//! ```
//!
//! Lines may repeat (files from independent signers can be merged by
//! concatenation); a key is counted at most once however often it appears.

use std::fmt;

use super::{
    digest::is_lower_hex,
    keys::{KeyId, PublicKey, SigningKey},
    trust::TrustConfig,
};

/// Most signature lines accepted.
pub const MAX_SIGNATURES: usize = 1024;
const ALGORITHM: &str = "ed25519";

/// Errors of this module: a signatures file that is not well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("more than {limit} signatures")]
    TooMany { limit: usize },
}

/// Why one signature did not count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("signer {key_id} is not a trusted key")]
    Untrusted { key_id: KeyId },
    #[error(
        "signature by {key_id}{} does not verify (made over a different manifest, or corrupted)",
        with_label(.label)
    )]
    BadSignature { key_id: KeyId, label: String },
    #[error("signature by {key_id}{} is a duplicate; the key is counted once", with_label(.label))]
    Duplicate { key_id: KeyId, label: String },
}

fn with_label(l: &str) -> String {
    if l.is_empty() { String::new() } else { format!(" ({l})") }
}

impl Rejection {
    pub fn key_id(&self) -> KeyId {
        match self {
            Self::Untrusted { key_id }
            | Self::BadSignature { key_id, .. }
            | Self::Duplicate { key_id, .. } => *key_id,
        }
    }

    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Untrusted { .. } => "untrusted_signer",
            Self::BadSignature { .. } => "bad_signature",
            Self::Duplicate { .. } => "duplicate_signature",
        }
    }
}

/// A trusted key whose signature counted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Signer {
    pub key_id: KeyId,
    pub label: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.key_id, with_label(&self.label))
    }
}

/// The outcome of counting signatures: who counted and what did not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub counted: Vec<Signer>,
    pub rejected: Vec<Rejection>,
}

/// One signature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    pub key: PublicKey,
    pub signature: [u8; 64],
}

/// What [`Signatures::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// The key had not signed.
    Added,
    /// The key's earlier signature (over another manifest) was replaced.
    Replaced,
    /// The key had already signed this very manifest; nothing changed.
    Unchanged,
}

/// The signatures on one manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signatures(Vec<SignatureEntry>);

impl Signatures {
    pub fn entries(&self) -> &[SignatureEntry] {
        &self.0
    }

    /// Signatures already parsed elsewhere (a trust record's single signer).
    pub fn from_entries(entries: Vec<SignatureEntry>) -> Self {
        Self(entries)
    }

    /// Parses a signatures file (empty means unsigned).
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let mut out = Vec::new();
        if bytes.is_empty() {
            return Ok(Self(out));
        }
        let Some(body) = bytes.strip_suffix(b"\n") else {
            return Err(SignatureError::Syntax {
                line: bytes.iter().filter(|b| **b == b'\n').count() + 1,
                message: "missing final newline".to_string(),
            });
        };
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            let n = i + 1;
            if out.len() == MAX_SIGNATURES {
                return Err(SignatureError::TooMany { limit: MAX_SIGNATURES });
            }
            out.push(parse_line(n, line)?);
        }
        Ok(Self(out))
    }

    /// The file's bytes: one line per signature, sorted, so that the same
    /// set of signatures always gives the same file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut lines: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{ALGORITHM} {} {}\n", e.key.to_hex(), hex::encode(e.signature)))
            .collect();
        lines.sort();
        lines.concat().into_bytes()
    }

    /// Signs `message` with `key`, replacing any earlier signature by the
    /// same key (so a key never appears twice after signing).
    pub fn add(&mut self, key: &SigningKey, message: &[u8]) -> AddOutcome {
        let public = key.public_key();
        let signature = key.sign(message);
        let before = self.0.len();
        let had_same = self.0.iter().any(|e| e.key == public && e.signature == signature);
        self.0.retain(|e| e.key != public);
        let removed = before - self.0.len();
        self.0.push(SignatureEntry { key: public, signature });
        match (removed, had_same) {
            (0, _) => AddOutcome::Added,
            (1, true) => AddOutcome::Unchanged,
            _ => AddOutcome::Replaced,
        }
    }

    /// Counts the signatures over `message` from distinct keys in `trust`.
    /// Untrusted signers, signatures that do not verify and repeats of a
    /// key already counted are reported and not counted.
    pub fn tally(&self, message: &[u8], trust: &TrustConfig) -> Tally {
        let mut t = Tally::default();
        for e in &self.0 {
            let key_id = e.key.id();
            let Some(trusted) = trust.find(&e.key) else {
                t.rejected.push(Rejection::Untrusted { key_id });
                continue;
            };
            let label = trusted.label.clone();
            if !e.key.verify(message, &e.signature) {
                t.rejected.push(Rejection::BadSignature { key_id, label });
            } else if t.counted.iter().any(|s| s.key_id == key_id) {
                t.rejected.push(Rejection::Duplicate { key_id, label });
            } else {
                t.counted.push(Signer { key_id, label });
            }
        }
        t
    }
}

fn parse_line(n: usize, line: &[u8]) -> Result<SignatureEntry, SignatureError> {
    let syntax = |message: String| SignatureError::Syntax { line: n, message };
    let expected = || syntax(format!("expected `{ALGORITHM} <64 hex public key> <128 hex signature>`"));
    let text = std::str::from_utf8(line).map_err(|_| expected())?;
    let mut parts = text.split(' ');
    let (Some(alg), Some(key), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(expected());
    };
    if alg != ALGORITHM {
        return Err(syntax(format!(
            "unknown signature algorithm {:?}",
            alg.chars().take(32).collect::<String>()
        )));
    }
    if key.len() != 64 || sig.len() != 128 || !is_lower_hex(key) || !is_lower_hex(sig) {
        return Err(expected());
    }
    let mut key_bytes = [0u8; 32];
    let mut signature = [0u8; 64];
    hex::decode_to_slice(key, &mut key_bytes).map_err(|_| expected())?;
    hex::decode_to_slice(sig, &mut signature).map_err(|_| expected())?;
    let key = PublicKey::from_bytes(&key_bytes, "signer").map_err(|e| syntax(e.to_string()))?;
    Ok(SignatureEntry { key, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::trust::TrustedKey;

    fn trust(keys: &[&SigningKey], k: usize) -> TrustConfig {
        let keys = keys.iter().map(|s| TrustedKey { key: s.public_key(), label: String::new() }).collect();
        TrustConfig::new(k, keys, "test").unwrap()
    }

    #[test]
    fn round_trips_and_sorts() {
        let (a, b) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let mut s = Signatures::default();
        s.add(&b, b"m");
        s.add(&a, b"m");
        let bytes = s.to_bytes();
        let parsed = Signatures::parse(&bytes).unwrap();
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(parsed.entries().len(), 2);
    }

    #[test]
    fn adding_twice_does_not_duplicate() {
        let a = SigningKey::generate().unwrap();
        let mut s = Signatures::default();
        assert_eq!(s.add(&a, b"m1"), AddOutcome::Added);
        assert_eq!(s.add(&a, b"m1"), AddOutcome::Unchanged);
        assert_eq!(s.add(&a, b"m2"), AddOutcome::Replaced);
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn tally_counts_distinct_trusted_valid_keys_only() {
        let (a, b, c) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let mut s = Signatures::default();
        s.add(&a, b"m");
        s.add(&b, b"other");
        s.add(&c, b"m");
        // Merged by concatenation: a appears twice.
        let mut bytes = s.to_bytes();
        bytes.extend(s.to_bytes());
        let s = Signatures::parse(&bytes).unwrap();
        let t = s.tally(b"m", &trust(&[&a, &b], 1));
        assert_eq!(t.counted.len(), 1);
        assert_eq!(t.counted[0].key_id, a.public_key().id());
        let codes: Vec<_> = t.rejected.iter().map(Rejection::code).collect();
        assert_eq!(codes.iter().filter(|c| **c == "untrusted_signer").count(), 2);
        assert_eq!(codes.iter().filter(|c| **c == "bad_signature").count(), 2);
        assert_eq!(codes.iter().filter(|c| **c == "duplicate_signature").count(), 1);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let a = SigningKey::generate().unwrap();
        let mut s = Signatures::default();
        s.add(&a, b"m");
        let good = String::from_utf8(s.to_bytes()).unwrap();
        for bad in [
            format!("{good}rsa 00 00\n"),
            format!("{good}{}", good.to_uppercase()),
            format!("{good}{} extra\n", good.trim_end()),
            format!("{good}\n"),
            good.trim_end().to_string(),
        ] {
            let err = Signatures::parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SignatureError::Syntax { line: 2, .. } | SignatureError::Syntax { line: 1, .. }
                ),
                "{err}"
            );
        }
        assert!(matches!(
            Signatures::parse(format!("{good}rsa 00 00\n").as_bytes()),
            Err(SignatureError::Syntax { line: 2, .. })
        ));
    }
}
