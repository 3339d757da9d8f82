//! SHA3-256 digests: the one hash the signing machinery uses, for payload
//! digests and key ids.

use std::{fmt, str::FromStr};

use sha3::{Digest as _, Sha3_256};

/// Errors of this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("{text:?} is not a sha3-256 digest: expected 64 lowercase hex characters")]
    Malformed { text: String },
}

/// A SHA3-256 digest. Displays (and parses) as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// The SHA3-256 digest of `bytes`.
pub fn sha3_256(bytes: &[u8]) -> Digest {
    Digest(Sha3_256::digest(bytes).into())
}

impl Digest {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    /// Only the canonical form: exactly 64 lowercase hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DigestError::Malformed { text: s.chars().take(80).collect() };
        if s.len() != 64 || !is_lower_hex(s) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

/// True if `s` is only `0-9a-f`: the one hex spelling the formats accept.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // FIPS 202 test vector for the empty message.
        assert_eq!(
            sha3_256(b"").to_hex(),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        assert_eq!(
            sha3_256(b"abc").to_hex(),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
    }

    #[test]
    fn parses_only_canonical_hex() {
        let d = sha3_256(b"x");
        assert_eq!(d.to_hex().parse::<Digest>(), Ok(d));
        assert!(d.to_hex().to_uppercase().parse::<Digest>().is_err());
        assert!(d.to_hex()[1..].parse::<Digest>().is_err());
        assert!(format!("{d}0").parse::<Digest>().is_err());
        assert!(format!("+{}", &d.to_hex()[1..]).parse::<Digest>().is_err());
    }
}
