//! [`compare_value`]: the CAS a text client's compare token becomes when it
//! is checked by a binary peer or the engine.
//!
//! The text protocols (`cas … <unique>` and meta `C<token>`) always compare:
//! a token of 0 is just a value no item holds, so memcached answers
//! `EXISTS`/`NOT_FOUND`. The binary protocol and Shoal's engine read a CAS of
//! 0 as "do not compare". A text token of 0 therefore travels as
//! [`NEVER_MATCHES`], which no item is ever given. Pure: no I/O.

/// A CAS no item is ever given (the engine's CAS counter starts at 1 and
/// would need 2^64 writes to reach it).
pub const NEVER_MATCHES: u64 = u64::MAX;

/// The CAS to send downstream for a text request's compare token: `None`
/// (a plain `set`, an `ms` without `C`) → 0, "do not compare"; `Some(0)` →
/// [`NEVER_MATCHES`]; any other token as it is.
#[inline]
pub const fn compare_value(token: Option<u64>) -> u64 {
    match token {
        None => 0,
        Some(0) => NEVER_MATCHES,
        Some(token) => token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_token_never_matches_and_no_token_never_compares() {
        assert_eq!(compare_value(None), 0);
        assert_eq!(compare_value(Some(0)), NEVER_MATCHES);
        assert_eq!(compare_value(Some(42)), 42);
        assert_eq!(compare_value(Some(u64::MAX)), u64::MAX);
    }
}
