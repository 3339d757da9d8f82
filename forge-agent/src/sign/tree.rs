//! The SHA3-256 tree digest: SHA3-256 over fixed-size leaves, then over
//! their digests. A signed manifest marks such an entry `tree` (see
//! [`super::manifest`]); capsules use it for their Wasm module.
//!
//! ```text
//! leaf i   = bytes[8192·i .. min(8192·(i+1), len)]      (no leaf when len = 0)
//! digest   = SHA3-256("forgeone-tree-v1\0" ‖ len as u64 little endian
//!                     ‖ SHA3-256(leaf 0) ‖ SHA3-256(leaf 1) ‖ …)
//! ```
//!
//! Why: one SHA3-256 stream is sequential, about 2.6 ms per MiB on a
//! current x86 core, while leaves are independent, so eight of them go
//! through one AVX-512 permutation ([`super::keccak_x8`]) several times
//! faster. The tree is two levels with the length committed, so two inputs
//! with the same digest would mean a SHA3-256 collision at one of the
//! levels (the same argument as fs-verity's Merkle tree).

use sha3::{Digest as _, Sha3_256};

use super::digest::Digest;

/// Leaf size in bytes.
pub const LEAF: usize = 8192;
/// Prefix of the root's input.
pub const DOMAIN: &[u8] = b"forgeone-tree-v1\0";

/// Inputs at least this large are hashed on two threads (when the
/// machine has two CPUs): below it, starting a thread costs more than it saves.
const PARALLEL_MIN: usize = 256 << 10;

/// The tree digest of `bytes`.
pub fn sha3_256_tree(bytes: &[u8]) -> Digest {
    let mut root = Sha3_256::new();
    root.update(DOMAIN);
    root.update((bytes.len() as u64).to_le_bytes());
    let mut leaves = Vec::with_capacity(bytes.len().div_ceil(LEAF));
    if bytes.len() >= PARALLEL_MIN && cpus() > 1 {
        // Split at a multiple of eight leaves, so both halves use every lane.
        let (first, second) = bytes.split_at(bytes.len() / (16 * LEAF) * 8 * LEAF);
        let mut later = Vec::with_capacity(second.len().div_ceil(LEAF));
        std::thread::scope(|s| {
            s.spawn(|| leaf_digests(second, &mut later));
            leaf_digests(first, &mut leaves);
        });
        leaves.append(&mut later);
    } else {
        leaf_digests(bytes, &mut leaves);
    }
    for d in &leaves {
        root.update(d);
    }
    Digest(root.finalize().into())
}

/// Appends the SHA3-256 of each leaf of `bytes` to `out`.
fn leaf_digests(bytes: &[u8], out: &mut Vec<[u8; 32]>) {
    #[cfg(target_arch = "x86_64")]
    if super::keccak_x8::available() {
        // Eight whole leaves at a time. A last group of two to seven fills
        // the unused lanes with copies: that still beats hashing them one
        // by one, while a single leaf (whole or short) goes faster alone.
        let whole = bytes.chunks_exact(LEAF);
        let short = whole.remainder();
        let mut group: Vec<&[u8]> = Vec::with_capacity(8);
        for leaf in whole {
            group.push(leaf);
            if group.len() == 8 {
                out.extend(x8(&group));
                group.clear();
            }
        }
        match group.len() {
            0 => {}
            1 => out.push(Sha3_256::digest(group[0]).into()),
            n => out.extend_from_slice(&x8(&group)[..n]),
        }
        if !short.is_empty() {
            out.push(Sha3_256::digest(short).into());
        }
        return;
    }
    out.extend(bytes.chunks(LEAF).map(|leaf| <[u8; 32]>::from(Sha3_256::digest(leaf))));
}

/// [`super::keccak_x8::sha3_256_x8`] of up to eight leaves of one length.
#[cfg(target_arch = "x86_64")]
fn x8(leaves: &[&[u8]]) -> [[u8; 32]; 8] {
    super::keccak_x8::sha3_256_x8(std::array::from_fn(|i| leaves[i.min(leaves.len() - 1)]))
}

/// CPUs this process may use (asked once: the answer reads cgroup files).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The definition, one leaf at a time with the `sha3` crate: what
/// [`sha3_256_tree`] must equal on every machine.
#[cfg(test)]
pub(crate) fn reference(bytes: &[u8]) -> Digest {
    let mut input = DOMAIN.to_vec();
    input.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    for leaf in bytes.chunks(LEAF) {
        input.extend_from_slice(&Sha3_256::digest(leaf));
    }
    super::digest::sha3_256(&input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        // Not periodic in the leaf size, so swapped leaves would show.
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn equals_the_definition_at_every_leaf_boundary() {
        for len in [
            0,
            1,
            7,
            134,
            135,
            136,
            137,
            271,
            272,
            LEAF - 1,
            LEAF,
            LEAF + 1,
            8 * LEAF - 1,
            8 * LEAF,
            8 * LEAF + 1,
            2 * LEAF,
            3 * LEAF + 5,
            17 * LEAF + 100,
            PARALLEL_MIN - 1,
            PARALLEL_MIN,
            PARALLEL_MIN + 8 * LEAF + 7,
            (1 << 20) - 2,
            1 << 20,
        ] {
            let b = bytes(len);
            assert_eq!(sha3_256_tree(&b), reference(&b), "length {len}");
        }
    }

    #[test]
    fn known_answers() {
        // Computed independently with Python's hashlib:
        //   sha3_256(b"forgeone-tree-v1\0" + len.to_bytes(8, "little")
        //            + b"".join(sha3_256(leaf).digest() for leaf in leaves))
        assert_eq!(
            sha3_256_tree(b"").to_hex(),
            "6a3d0d3a9a255985c5acd08ac96694327a01059f38635496bf3671e4f04bb66f"
        );
        assert_eq!(
            sha3_256_tree(&vec![0x61; 8 * LEAF + 3]).to_hex(),
            "66a36a327853ccc9d31e838432fdd3489d62c7a9bd7b383d9954be65931fc0a5"
        );
    }

    #[test]
    fn differs_from_plain_sha3_and_with_length() {
        let b = bytes(3 * LEAF);
        assert_ne!(sha3_256_tree(&b), super::super::digest::sha3_256(&b));
        assert_ne!(sha3_256_tree(&b[..LEAF]), sha3_256_tree(&b[..LEAF + 1]));
        // A zero leaf appended is a different input.
        let mut z = b.clone();
        z.extend_from_slice(&[0; LEAF]);
        assert_ne!(sha3_256_tree(&b), sha3_256_tree(&z));
    }
}
