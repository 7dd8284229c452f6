//! [`Hash`]: SHA-1, SHA-256 or SHA-512, the hash functions SCRAM-SHA1,
//! SCRAM-SHA256 and SCRAM-SHA512 are built on, with the three operations
//! SCRAM needs (hash, HMAC, PBKDF2-HMAC).

use hmac::{Hmac, Mac};
use sha2::Digest;

/// One of the hash functions SCRAM uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    /// SHA-1 (SCRAM-SHA1; kept for old clients).
    Sha1,
    /// SHA-256 (SCRAM-SHA256).
    Sha256,
    /// SHA-512 (SCRAM-SHA512, what Couchbase SDKs use).
    Sha512,
}

/// Runs `$body` with `$h` bound to the hash type of `$hash`.
macro_rules! with_hash {
    ($hash:expr, $h:ident => $body:expr) => {
        match $hash {
            Hash::Sha1 => {
                type $h = sha1::Sha1;
                $body
            }
            Hash::Sha256 => {
                type $h = sha2::Sha256;
                $body
            }
            Hash::Sha512 => {
                type $h = sha2::Sha512;
                $body
            }
        }
    };
}

impl Hash {
    /// Every hash, strongest first (the order mechanisms are offered in).
    pub const ALL: [Hash; 3] = [Hash::Sha512, Hash::Sha256, Hash::Sha1];

    /// Output length, bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    /// `H(data)`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        with_hash!(self, H => H::digest(data).to_vec())
    }

    /// `HMAC(key, data)`.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        with_hash!(self, H => {
            // HMAC takes keys of any length: this cannot fail.
            let mut mac = <Hmac<H> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| <Hmac<H> as Mac>::new(&Default::default()));
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        })
    }

    /// PBKDF2-HMAC of `password` with `salt` over `iterations` rounds,
    /// one output block long (SCRAM's `SaltedPassword`).
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        with_hash!(self, H => pbkdf2::pbkdf2_hmac::<H>(password, salt, iterations, &mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_outputs() {
        for hash in Hash::ALL {
            assert_eq!(hash.digest(b"x").len(), hash.output_len());
            assert_eq!(hash.hmac(b"k", b"x").len(), hash.output_len());
            assert_eq!(
                hash.salted_password(b"p", b"salt", 2).len(),
                hash.output_len()
            );
        }
    }

    /// RFC 6070's first PBKDF2-HMAC-SHA1 vector.
    #[test]
    fn pbkdf2_sha1_matches_rfc_6070() {
        let out = Hash::Sha1.salted_password(b"password", b"salt", 1);
        assert_eq!(
            out,
            [
                0x0c, 0x60, 0xc8, 0x0f, 0x96, 0x1f, 0x0e, 0x71, 0xf3, 0xa9, 0xb5, 0x24, 0xaf, 0x60,
                0x12, 0x06, 0x2f, 0xe0, 0x37, 0xa6
            ]
        );
    }
}
