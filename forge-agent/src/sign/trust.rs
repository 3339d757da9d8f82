//! The trust configuration: which public keys may sign, and how many
//! distinct ones must (k of n).
//!
//! ```toml
//! # trust.toml
//! threshold = 2                  # k: valid signatures from distinct trusted keys
//!
//! [[key]]
//! file = "keys/alice.pub"        # a .pub file, relative to this file's directory
//!
//! [[key]]
//! name = "bob"                   # optional label shown in reports
//! public = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
//! ```
//!
//! Each `[[key]]` has exactly one of `file` or `public` (64 hex characters, or
//! a whole `.pub` line). The threshold must be at least 1 and at most the
//! number of keys, and a key may be listed once: a configuration that could
//! never be satisfied, or that would count one signer twice, is refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::keys::{KeyError, KeyId, PublicKey};

/// Largest trust file accepted.
const MAX_TRUST_FILE: u64 = 1 << 20;

/// Errors of this module. `what` is the trust file's path (or a caller's
/// description for a configuration built in code).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Syntax { what: String, message: String },
    #[error("{what}: [[key]] number {index} needs exactly one of `file` or `public`")]
    KeySource { what: String, index: usize },
    #[error("{what}: [[key]] number {index}: {source}")]
    Key {
        what: String,
        index: usize,
        #[source]
        source: KeyError,
    },
    #[error("{what}: threshold is 0; at least one valid signature must be required")]
    ZeroThreshold { what: String },
    #[error("{what}: threshold {threshold} can never be met with {keys} trusted key(s)")]
    ThresholdTooHigh { what: String, threshold: usize, keys: usize },
    #[error("{what}: key {key_id} is listed twice; each trusted key counts once")]
    DuplicateKey { what: String, key_id: KeyId },
}

/// One trusted key and the label reports show for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: PublicKey,
    pub label: String,
}

/// A validated trust configuration.
#[derive(Clone, Debug)]
pub struct TrustConfig {
    threshold: usize,
    keys: Vec<TrustedKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    threshold: usize,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Option<String>,
    file: Option<PathBuf>,
    public: Option<String>,
}

impl TrustConfig {
    /// A configuration from keys in code; `what` names it in errors.
    pub fn new(threshold: usize, keys: Vec<TrustedKey>, what: &str) -> Result<Self, TrustError> {
        let what = what.to_string();
        if threshold == 0 {
            return Err(TrustError::ZeroThreshold { what });
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.key == k.key) {
                return Err(TrustError::DuplicateKey { what, key_id: k.key.id() });
            }
        }
        if threshold > keys.len() {
            return Err(TrustError::ThresholdTooHigh { what, threshold, keys: keys.len() });
        }
        Ok(Self { threshold, keys })
    }

    /// Reads a trust file; relative key `file`s are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        use std::io::Read as _;
        let io = |source| TrustError::Io { path: path.to_path_buf(), source };
        let mut text = String::new();
        std::fs::File::open(path).map_err(io)?.take(MAX_TRUST_FILE).read_to_string(&mut text).map_err(io)?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), &path.display().to_string())
    }

    /// Parses trust TOML; `base` resolves relative key files.
    pub fn parse(text: &str, base: &Path, what: &str) -> Result<Self, TrustError> {
        let raw: RawTrust = toml::from_str(text)
            .map_err(|e| TrustError::Syntax { what: what.to_string(), message: e.to_string() })?;
        let mut keys = Vec::with_capacity(raw.keys.len());
        for (i, k) in raw.keys.into_iter().enumerate() {
            let index = i + 1;
            let key_err = |source| TrustError::Key { what: what.to_string(), index, source };
            let (key, default_label) = match (k.file, k.public) {
                (Some(file), None) => {
                    let p = base.join(&file);
                    let label =
                        file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    (PublicKey::load(&p).map_err(key_err)?, label)
                }
                (None, Some(text)) => (
                    PublicKey::parse(&text, &format!("public key of [[key]] {index}")).map_err(key_err)?,
                    String::new(),
                ),
                _ => return Err(TrustError::KeySource { what: what.to_string(), index }),
            };
            let label = k.name.unwrap_or(default_label);
            keys.push(TrustedKey { key, label });
        }
        Self::new(raw.threshold, keys, what)
    }

    /// k: how many distinct trusted keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The trusted key equal to `key` (compared on all 32 bytes, not the id).
    pub fn find(&self, key: &PublicKey) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::keys::{SigningKey, generate_files};

    #[test]
    fn loads_files_and_inline_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate_files(dir.path(), "alice").unwrap();
        let b = SigningKey::generate().unwrap().public_key();
        let text = format!(
            "threshold = 2\n[[key]]\nfile = \"alice.pub\"\n[[key]]\nname = \"bob\"\npublic = \"{}\"\n",
            b.to_hex()
        );
        std::fs::write(dir.path().join("trust.toml"), text).unwrap();
        let t = TrustConfig::load(&dir.path().join("trust.toml")).unwrap();
        assert_eq!(t.threshold(), 2);
        assert_eq!(t.keys()[0].label, "alice");
        assert_eq!(t.keys()[0].key.id(), a.key_id);
        assert_eq!(t.find(&b).unwrap().label, "bob");
    }

    #[test]
    fn refuses_configurations_that_cannot_be_meant() {
        let k = SigningKey::generate().unwrap().public_key().to_hex();
        let base = Path::new(".");
        let one = format!("[[key]]\npublic = \"{k}\"\n");
        let cases = [
            (format!("threshold = 0\n{one}"), "zero"),
            (format!("threshold = 2\n{one}"), "too high"),
            (format!("threshold = 1\n{one}{one}"), "duplicate"),
            ("threshold = 1\n[[key]]\nname = \"x\"\n".to_string(), "no source"),
            (format!("threshold = 1\n{one}extra = 1\n"), "unknown field"),
            ("threshold = 1\n[[key]]\npublic = \"zz\"\n".to_string(), "bad hex"),
        ];
        for (text, why) in cases {
            assert!(TrustConfig::parse(&text, base, "t").is_err(), "accepted {why}");
        }
        assert!(matches!(
            TrustConfig::parse(&format!("threshold = 1\n{one}{one}"), base, "t"),
            Err(TrustError::DuplicateKey { .. })
        ));
    }
}
