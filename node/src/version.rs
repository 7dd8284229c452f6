//! [`VERSION`]: what the node says it is, on the data port (`version`,
//! `stats`) and in the REST API. Imports nothing.

/// The version string `version` answers: memcached's protocol level, so
/// clients that gate features on it (meta commands need 1.6) enable them,
/// then Shoal's own.
pub const VERSION: &str = concat!("1.6.18-shoal-", env!("CARGO_PKG_VERSION"));
