//! [`PasswordHash`]: what Shoal keeps of a password — a random salt, an
//! iteration count and, for each SCRAM hash, SCRAM's `StoredKey` and
//! `ServerKey` (RFC 5802 §3). Enough to verify a SASL PLAIN or HTTP Basic
//! password and to run a SCRAM exchange as the server; never enough to
//! log in as the user. Serialised (for the cluster metadata) as base64
//! strings, and checked when read back: a hash with a salt, an iteration
//! count or a key of the wrong size is refused, not trusted.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{random_bytes, Hash, RandomError};

/// Iterations of PBKDF2 for a new password (Couchbase's default for its
/// SCRAM credentials). Each check of a PLAIN or Basic password costs this
/// many HMACs, so callers cache successful checks.
pub const ITERATIONS: u32 = 15_000;

/// Fewest iterations accepted: RFC 7677 asks for at least 4096.
pub const MIN_ITERATIONS: u32 = 4096;

/// Most iterations accepted from storage or from a SCRAM server: bounds the
/// work one check (or one malicious server) can cause.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Bytes of a new salt.
const SALT_LEN: usize = 16;

/// Salts accepted from storage, bytes.
const SALT_RANGE: std::ops::RangeInclusive<usize> = 8..=64;

/// The longest password hashed (a longer one is refused before any work).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// SCRAM's two keys for one hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    /// The keys of `salted_password` (SCRAM's `SaltedPassword`).
    pub fn from_salted(hash: Hash, salted_password: &[u8]) -> ScramKeys {
        let client_key = hash.hmac(salted_password, b"Client Key");
        ScramKeys {
            stored_key: hash.digest(&client_key),
            server_key: hash.hmac(salted_password, b"Server Key"),
        }
    }
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// A salted, iterated password hash with SCRAM keys for every hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredHash", into = "StoredHash")]
pub struct PasswordHash {
    salt: Vec<u8>,
    iterations: u32,
    /// Indexed like [`Hash::ALL`]: SHA-512, SHA-256, SHA-1.
    keys: [ScramKeys; 3],
}

/// Why a password could not be hashed or a stored hash was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Longer than [`MAX_PASSWORD_LEN`].
    #[error("password longer than {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    /// No salt could be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// A stored hash that this build would not have written.
    #[error("invalid stored password hash: {0}")]
    Invalid(&'static str),
}

impl PasswordHash {
    /// Hashes `password` with a new random salt and [`ITERATIONS`].
    pub fn new(password: &[u8]) -> Result<PasswordHash, PasswordError> {
        let salt = random_bytes::<SALT_LEN>()?;
        PasswordHash::with_salt(password, &salt, ITERATIONS)
    }

    /// Hashes `password` with `salt` and `iterations` (which must be in
    /// range).
    pub fn with_salt(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<PasswordHash, PasswordError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::TooLong);
        }
        check_salt_and_iterations(salt, iterations)?;
        let keys = Hash::ALL.map(|hash| {
            ScramKeys::from_salted(hash, &hash.salted_password(password, salt, iterations))
        });
        Ok(PasswordHash {
            salt: salt.to_vec(),
            iterations,
            keys,
        })
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The SCRAM keys for `hash`.
    pub fn keys(&self, hash: Hash) -> &ScramKeys {
        let i = Hash::ALL.iter().position(|h| *h == hash).unwrap_or(0);
        &self.keys[i]
    }

    /// Whether `password` is the one hashed (in constant time once hashed;
    /// costs [`PasswordHash::iterations`] HMACs).
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        let hash = Hash::Sha512;
        let salted = hash.salted_password(password, &self.salt, self.iterations);
        let candidate = ScramKeys::from_salted(hash, &salted);
        candidate
            .stored_key
            .ct_eq(&self.keys(hash).stored_key)
            .into()
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn check_salt_and_iterations(salt: &[u8], iterations: u32) -> Result<(), PasswordError> {
    if !SALT_RANGE.contains(&salt.len()) {
        return Err(PasswordError::Invalid("salt length"));
    }
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(PasswordError::Invalid("iteration count"));
    }
    Ok(())
}

// === storage form ===

/// How a [`PasswordHash`] is written: base64 strings, one pair of keys per
/// hash, named.
#[derive(Serialize, Deserialize)]
struct StoredHash {
    salt: String,
    iterations: u32,
    sha512: StoredKeys,
    sha256: StoredKeys,
    sha1: StoredKeys,
}

#[derive(Serialize, Deserialize)]
struct StoredKeys {
    stored_key: String,
    server_key: String,
}

impl From<PasswordHash> for StoredHash {
    fn from(h: PasswordHash) -> StoredHash {
        let [sha512, sha256, sha1] = h.keys.map(|k| StoredKeys {
            stored_key: B64.encode(&k.stored_key),
            server_key: B64.encode(&k.server_key),
        });
        StoredHash {
            salt: B64.encode(&h.salt),
            iterations: h.iterations,
            sha512,
            sha256,
            sha1,
        }
    }
}

impl TryFrom<StoredHash> for PasswordHash {
    type Error = PasswordError;

    fn try_from(s: StoredHash) -> Result<PasswordHash, PasswordError> {
        let decode = |text: &str, len: usize| -> Result<Vec<u8>, PasswordError> {
            // Bound before decoding: base64 of `len` bytes.
            if text.len() > len.div_ceil(3) * 4 {
                return Err(PasswordError::Invalid("key length"));
            }
            let bytes = B64
                .decode(text)
                .map_err(|_| PasswordError::Invalid("not base64"))?;
            (bytes.len() == len)
                .then_some(bytes)
                .ok_or(PasswordError::Invalid("key length"))
        };
        if s.salt.len() > 4 * SALT_RANGE.end().div_ceil(3) {
            return Err(PasswordError::Invalid("salt length"));
        }
        let salt = B64
            .decode(&s.salt)
            .map_err(|_| PasswordError::Invalid("salt not base64"))?;
        check_salt_and_iterations(&salt, s.iterations)?;
        let stored = [&s.sha512, &s.sha256, &s.sha1];
        let mut keys = Vec::with_capacity(3);
        for (hash, k) in Hash::ALL.into_iter().zip(stored) {
            keys.push(ScramKeys {
                stored_key: decode(&k.stored_key, hash.output_len())?,
                server_key: decode(&k.server_key, hash.output_len())?,
            });
        }
        let keys: [ScramKeys; 3] = keys
            .try_into()
            .map_err(|_| PasswordError::Invalid("keys"))?;
        Ok(PasswordHash {
            salt,
            iterations: s.iterations,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(password: &str) -> PasswordHash {
        PasswordHash::with_salt(password.as_bytes(), b"0123456789abcdef", MIN_ITERATIONS).unwrap()
    }

    #[test]
    fn verifies_the_password_and_nothing_else() {
        let h = quick("pencil");
        assert!(h.verify(b"pencil"));
        assert!(!h.verify(b"pencil "));
        assert!(!h.verify(b""));
        assert!(!h.verify(&[b'x'; MAX_PASSWORD_LEN + 1]));
        let fresh = PasswordHash::new(b"pencil").unwrap();
        assert!(fresh.verify(b"pencil"));
        assert_ne!(fresh.salt(), PasswordHash::new(b"pencil").unwrap().salt());
    }

    #[test]
    fn json_round_trips_and_never_holds_the_password() {
        let h = quick("correct horse");
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("correct horse"));
        let back: PasswordHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"correct horse"));
        assert!(!format!("{h:?}").contains("Key"));
    }

    #[test]
    fn stored_hashes_of_the_wrong_shape_are_refused() {
        let good: serde_json::Value = serde_json::to_value(quick("p")).unwrap();
        let mut cases = Vec::new();
        for (path, value) in [
            ("/iterations", serde_json::json!(1)),
            ("/iterations", serde_json::json!(u32::MAX)),
            ("/salt", serde_json::json!("")),
            ("/salt", serde_json::json!("!!!")),
            ("/salt", serde_json::json!("A".repeat(1 << 20))),
            ("/sha512/stored_key", serde_json::json!("AAAA")),
            ("/sha1/server_key", serde_json::json!("A".repeat(1 << 20))),
        ] {
            let mut bad = good.clone();
            *bad.pointer_mut(path).unwrap() = value;
            cases.push(bad);
        }
        for bad in cases {
            assert!(
                serde_json::from_value::<PasswordHash>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
