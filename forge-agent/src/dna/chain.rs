//! The hash chain and the checkpoint signatures: what is hashed and what is
//! signed, byte for byte (keys and signing: [`crate::sign`]). Every input starts with its own domain string, so
//! a hash or signature made for one purpose is never valid for another.

use std::fmt;

use serde::Serialize;
use sha3::{Digest as _, Sha3_256};

const GENESIS_DOMAIN: &[u8] = b"forgeone-dna-genesis-v1\0";
const RECORD_DOMAIN: &[u8] = b"forgeone-dna-record-v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"forgeone-dna-checkpoint-v1\0";

/// A SHA3-256 digest; shown and serialized as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What record 0 links to: `sha3-256(domain || identity payload bytes)`.
pub fn genesis(identity_payload: &[u8]) -> Hash {
    let mut h = Sha3_256::new();
    h.update(GENESIS_DOMAIN);
    h.update(identity_payload);
    Hash(h.finalize().into())
}

/// A record's hash: `sha3-256(domain || kind || prev || payload)`. It is both
/// the record's checksum and what the next record links to.
pub fn record_hash(kind: u8, prev: &Hash, payload: &[u8]) -> Hash {
    let mut h = Sha3_256::new();
    h.update(RECORD_DOMAIN);
    h.update([kind]);
    h.update(prev.0);
    h.update(payload);
    Hash(h.finalize().into())
}

/// The bytes a checkpoint signs: domain, genesis (which workload), the
/// checkpoint's own index, the chain head it follows (the hash of every
/// record before it), its wall-clock time and the signer's public key.
pub fn checkpoint_message(genesis: &Hash, index: u64, head: &Hash, unix_ns: u64, key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 32 + 8 + 32 + 8 + 32);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&genesis.0);
    m.extend_from_slice(&index.to_le_bytes());
    m.extend_from_slice(&head.0);
    m.extend_from_slice(&unix_ns.to_le_bytes());
    m.extend_from_slice(key);
    m
}
