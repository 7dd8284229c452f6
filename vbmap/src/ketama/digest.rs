//! The two 32-bit hashes the ketama rings use, for keys and for ring points.
//!
//! - [`md5_hash`]: the first four bytes of the key's MD5 digest read as a
//!   little-endian `u32`. libmemcached's `hashkit_md5`, libketama and
//!   libvbucket's `hash_ketama` (`src/ketama.c`) all compute exactly this; the
//!   ring points of the MD5 modes are the same reading of bytes `4k..4k+3`
//!   ([`md5_points`]).
//! - [`one_at_a_time`]: Bob Jenkins' one-at-a-time hash as libhashkit's
//!   `hashkit_one_at_a_time` computes it, which reads the key through a
//!   `const char *` and widens each byte with `(uint32_t) *ptr`: on every
//!   platform libmemcached ships for, `char` is signed, so bytes ≥ 0x80 are
//!   sign-extended (0x80 adds 0xffff_ff80, not 0x80). The
//!   `shared/vectors/ketama-oaat.tsv` README states the same rule.

use md5::{Digest, Md5};

/// The MD5 key hash of libmemcached's `hashkit_md5` and libvbucket's
/// `hash_ketama`: digest bytes 0..4 as a little-endian `u32`.
#[inline]
pub fn md5_hash(key: &[u8]) -> u32 {
    md5_points(key)[0]
}

/// All four ring points one MD5 digest gives: point `k` is digest bytes
/// `4k..4k+3` as a little-endian `u32` (libmemcached `ketama_server_hash`
/// with `alignment = k`; libvbucket `update_ketama_continuum`, `nn = k`).
#[inline]
pub(super) fn md5_points(name: &[u8]) -> [u32; 4] {
    let digest = Md5::digest(name);
    let word = |k: usize| {
        u32::from_le_bytes([
            digest[4 * k],
            digest[4 * k + 1],
            digest[4 * k + 2],
            digest[4 * k + 3],
        ])
    };
    [word(0), word(1), word(2), word(3)]
}

/// Jenkins one-at-a-time over `key`, reading each byte as a *signed* char
/// (sign-extended to 32 bits) as libhashkit does.
#[inline]
pub fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in key {
        // `(uint32_t) *ptr` on a signed `char`: sign-extend, do not zero-extend.
        h = h.wrapping_add(b as i8 as i32 as u32);
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}
