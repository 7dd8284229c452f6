//! [`Exptime`]: memcached's expiry field and its rules.

/// Seconds in 30 days: memcached reads an exptime above this as an absolute
/// unix time, at or below it as seconds from now.
pub const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

/// An expiry time exactly as a client sent it.
///
/// memcached's rules: `0` never expires; a negative value means "already
/// expired" (the item is stored and immediately invisible); `1..=2_592_000` is
/// seconds from now; anything larger is an absolute unix time (which, if in
/// the past, is also already expired). The binary protocol carries a `u32`,
/// the text protocol a signed decimal; both fit an `i64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Exptime(pub i64);

/// When an item stops being visible, resolved against a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Never expires.
    Never,
    /// Already expired.
    Expired,
    /// Expires at this unix time, in seconds.
    At(u64),
}

impl Exptime {
    /// No expiry.
    pub const NEVER: Exptime = Exptime(0);

    /// Resolve against `now_unix` (seconds since the epoch).
    pub fn resolve(self, now_unix: u64) -> Expiry {
        match self.0 {
            0 => Expiry::Never,
            t if t < 0 => Expiry::Expired,
            t if t <= RELATIVE_EXPTIME_MAX => Expiry::At(now_unix.saturating_add(t as u64)),
            t if (t as u64) <= now_unix => Expiry::Expired,
            t => Expiry::At(t as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn memcached_rules() {
        assert_eq!(Exptime(0).resolve(NOW), Expiry::Never);
        assert_eq!(Exptime(-1).resolve(NOW), Expiry::Expired);
        assert_eq!(Exptime(10).resolve(NOW), Expiry::At(NOW + 10));
        assert_eq!(
            Exptime(RELATIVE_EXPTIME_MAX).resolve(NOW),
            Expiry::At(NOW + RELATIVE_EXPTIME_MAX as u64)
        );
        // Just past 30 days is an absolute time — long in the past.
        assert_eq!(
            Exptime(RELATIVE_EXPTIME_MAX + 1).resolve(NOW),
            Expiry::Expired
        );
        assert_eq!(Exptime(NOW as i64 + 5).resolve(NOW), Expiry::At(NOW + 5));
        assert_eq!(Exptime(NOW as i64).resolve(NOW), Expiry::Expired);
    }
}
