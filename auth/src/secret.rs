//! [`Secret`]: a cluster's shared key — 32 random bytes that every member
//! holds and that nodes prove to each other (as the internal user
//! [`CLUSTER_USER`]) before Raft, internal REST calls, replication streams
//! and vbucket commands are accepted — and [`random_password`] for the
//! admin password `shoal up` makes.

use subtle::ConstantTimeEq;

use crate::{random_bytes, RandomError};

/// The user name nodes authenticate as with the cluster secret. It starts
/// with `@`, which no user or bucket name may.
pub const CLUSTER_USER: &str = "@cluster";

/// A cluster's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    /// A new random secret.
    pub fn generate() -> Result<Secret, RandomError> {
        Ok(Secret(random_bytes()?))
    }

    /// The secret written as 64 hex digits: its password form and how it
    /// is kept on disk.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Option<Secret> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Secret(out))
    }

    /// Whether `password` is this secret's hex form, in constant time.
    pub fn matches(&self, password: &[u8]) -> bool {
        let own = self.to_hex();
        own.as_bytes().ct_eq(password).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Letters and digits without the ones that read alike (0/O, 1/l/I).
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/// A random password of `len` characters from an unambiguous alphabet
/// (20 characters carry about 115 bits).
pub fn random_password(len: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>()? {
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - 256 % PASSWORD_ALPHABET.len();
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(
                    PASSWORD_ALPHABET[usize::from(b) % PASSWORD_ALPHABET.len()],
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_matches_only_itself() {
        let s = Secret::generate().unwrap();
        let hex = s.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(Secret::from_hex(&format!(" {hex}\n")), Some(s.clone()));
        assert!(s.matches(hex.as_bytes()));
        assert!(!s.matches(&hex.as_bytes()[1..]));
        assert!(!s.matches(Secret::generate().unwrap().to_hex().as_bytes()));
        assert_eq!(Secret::from_hex("zz"), None);
        assert_eq!(Secret::from_hex(&"g".repeat(64)), None);
        assert!(!format!("{s:?}").contains(&hex));
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let a = random_password(20).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        assert_ne!(a, random_password(20).unwrap());
    }
}
