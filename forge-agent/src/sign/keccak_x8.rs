//! SHA3-256 of eight equal leaves at once: eight Keccak-f[1600] states,
//! one per 64-bit lane of 25 AVX-512 registers.
//!
//! A single SHA3-256 stream cannot go faster than its permutation allows
//! (about 2.6 ms per MiB here). Eight independent leaves can share each
//! instruction, which is what makes the tree digest ([`super::tree`]) fast.
//! The result is bit for bit SHA3-256 of each input; the tree's tests
//! compare it with the `sha3` crate at every length around a block or
//! leaf boundary.

use std::arch::x86_64::{
    __m512i, _mm512_rolv_epi64, _mm512_set1_epi64, _mm512_setr_epi64, _mm512_setzero_si512,
    _mm512_storeu_si512, _mm512_ternarylogic_epi64, _mm512_xor_si512,
};

/// SHA3-256's rate: bytes absorbed per permutation.
const RATE: usize = 136;
const LANES: usize = RATE / 8;

/// Rotation of lane `x + 5y` (FIPS 202, ρ).
const RHO: [i64; 25] =
    [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14];

/// Round constants (FIPS 202, ι).
const RC: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808a,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808b,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008a,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000a,
    0x0000_0000_8000_808b,
    0x8000_0000_0000_008b,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800a,
    0x8000_0000_8000_000a,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// True if this CPU runs [`sha3_256_x8`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The SHA3-256 of each of eight inputs of one length.
///
/// # Panics
/// If the inputs differ in length, or the CPU lacks AVX-512F (check
/// [`available`] first).
pub fn sha3_256_x8(leaves: [&[u8]; 8]) -> [[u8; 32]; 8] {
    let len = leaves[0].len();
    assert!(leaves.iter().all(|l| l.len() == len), "sha3_256_x8 takes eight inputs of one length");
    assert!(available(), "sha3_256_x8 needs AVX-512F");
    // SAFETY: the CPU has AVX-512F (checked above), the one feature
    // `absorb` is compiled for.
    unsafe { absorb(leaves) }
}

/// The sponge: every whole block, then the last one padded (SHA3's
/// `0x06 … 0x80`), then the first 32 bytes of each state.
#[target_feature(enable = "avx512f")]
fn absorb(leaves: [&[u8]; 8]) -> [[u8; 32]; 8] {
    let len = leaves[0].len();
    let whole = len / RATE;
    let mut s = [_mm512_setzero_si512(); 25];
    for b in 0..whole {
        xor_block(&mut s, leaves.map(|l| &l[b * RATE..(b + 1) * RATE]));
        permute(&mut s);
    }
    let mut last = [[0u8; RATE]; 8];
    for (block, leaf) in last.iter_mut().zip(leaves) {
        let tail = &leaf[whole * RATE..];
        block[..tail.len()].copy_from_slice(tail);
        block[tail.len()] ^= 0x06;
        block[RATE - 1] ^= 0x80;
    }
    xor_block(&mut s, last.each_ref().map(|b| &b[..]));
    permute(&mut s);

    let mut lanes = [[0u64; 8]; 4];
    for (out, lane) in lanes.iter_mut().zip(&s) {
        // SAFETY: `out` is 64 writable bytes; the store may be unaligned.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *lane) };
    }
    let mut digests = [[0u8; 32]; 8];
    for (leaf, d) in digests.iter_mut().enumerate() {
        for (w, l) in lanes.iter().enumerate() {
            d[w * 8..w * 8 + 8].copy_from_slice(&l[leaf].to_le_bytes());
        }
    }
    digests
}

/// XORs one block (`RATE` bytes) of each input into its state.
#[target_feature(enable = "avx512f")]
#[inline]
fn xor_block(s: &mut [__m512i; 25], blocks: [&[u8]; 8]) {
    for (w, lane) in s.iter_mut().enumerate().take(LANES) {
        let word = |k: usize| {
            let b: &[u8; RATE] = blocks[k].try_into().expect("a whole block");
            i64::from_le_bytes([
                b[w * 8],
                b[w * 8 + 1],
                b[w * 8 + 2],
                b[w * 8 + 3],
                b[w * 8 + 4],
                b[w * 8 + 5],
                b[w * 8 + 6],
                b[w * 8 + 7],
            ])
        };
        let v = _mm512_setr_epi64(word(0), word(1), word(2), word(3), word(4), word(5), word(6), word(7));
        *lane = _mm512_xor_si512(*lane, v);
    }
}

/// Keccak-f[1600] on eight states (FIPS 202, 24 rounds).
#[target_feature(enable = "avx512f")]
fn permute(a: &mut [__m512i; 25]) {
    // x ^ y ^ z, and x ^ (!y & z), as AVX-512 ternary logic tables.
    const XOR3: i32 = 0x96;
    const CHI: i32 = 0xd2;
    let mut rho = [_mm512_setzero_si512(); 25];
    for (r, n) in rho.iter_mut().zip(RHO) {
        *r = _mm512_set1_epi64(n);
    }
    let one = _mm512_set1_epi64(1);
    for rc in RC {
        // θ
        let mut c = [_mm512_setzero_si512(); 5];
        for (x, c) in c.iter_mut().enumerate() {
            let t = _mm512_ternarylogic_epi64::<XOR3>(a[x], a[x + 5], a[x + 10]);
            *c = _mm512_ternarylogic_epi64::<XOR3>(t, a[x + 15], a[x + 20]);
        }
        for x in 0..5 {
            let d = _mm512_xor_si512(c[(x + 4) % 5], _mm512_rolv_epi64(c[(x + 1) % 5], one));
            for y in 0..5 {
                a[x + 5 * y] = _mm512_xor_si512(a[x + 5 * y], d);
            }
        }
        // ρ and π: B[y, 2x + 3y] = rot(A[x, y], r[x, y])
        let mut b = [_mm512_setzero_si512(); 25];
        for x in 0..5 {
            for y in 0..5 {
                b[y + 5 * ((2 * x + 3 * y) % 5)] = _mm512_rolv_epi64(a[x + 5 * y], rho[x + 5 * y]);
            }
        }
        // χ
        for y in 0..5 {
            for x in 0..5 {
                a[x + 5 * y] = _mm512_ternarylogic_epi64::<CHI>(
                    b[x + 5 * y],
                    b[(x + 1) % 5 + 5 * y],
                    b[(x + 2) % 5 + 5 * y],
                );
            }
        }
        // ι
        a[0] = _mm512_xor_si512(a[0], _mm512_set1_epi64(rc as i64));
    }
}
