//! Authentication for Shoal, sans-IO: how passwords are kept (salted,
//! iterated hashes, never the password), how SASL PLAIN and SCRAM-SHA
//! exchanges run on the data port (the server side and the client side that
//! nodes and proxies use), HTTP Basic credentials, and the random secrets
//! and passwords Shoal makes.
//!
//! Modules:
//! - [`hash`]: the three hash functions SCRAM names (SHA-1, SHA-256,
//!   SHA-512) behind one enum, with HMAC and PBKDF2.
//! - [`password`]: [`PasswordHash`], what is stored for a user or a bucket
//!   password: a salt, an iteration count and the SCRAM keys per hash.
//! - [`plain`]: parsing a SASL PLAIN message (RFC 4616).
//! - [`scram`]: the SCRAM exchange (RFC 5802, RFC 7677) as a server
//!   ([`scram::ServerFirst`]) and as a client ([`scram::Client`]).
//! - [`basic`]: the HTTP `Authorization: Basic` header.
//! - [`secret`]: [`Secret`], a cluster's shared key, and random passwords.
//!
//! Every parser here is total: bad input gives a typed error, never a panic,
//! and every length is bounded before anything is allocated or hashed. No
//! I/O, no async runtime, no other Shoal crate.
#![forbid(unsafe_code)]

pub mod basic;
pub mod hash;
pub mod password;
pub mod plain;
pub mod scram;
pub mod secret;

pub use hash::Hash;
pub use password::PasswordHash;
pub use secret::Secret;

/// The operating system's random generator failed (it does not on Linux,
/// but a caller must not pretend it worked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomError;

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| RandomError)?;
    Ok(out)
}
