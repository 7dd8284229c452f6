//! [`Limits`]: the bounds every parser checks before it buffers or allocates.

/// memcached's key limit, in bytes (ASCII and binary alike).
pub const MAX_KEY_LEN: usize = 250;

/// Default largest value, in bytes: 20 MiB, comfortably above memcached's
/// default item size (1 MiB) and Couchbase's document limit (20 MiB).
pub const DEFAULT_MAX_VALUE_LEN: usize = 20 * 1024 * 1024;

/// Default longest ASCII command line, including its CRLF. Long enough for a
/// `get` of ~30 maximal keys; memcached itself reads keys in 2 KiB chunks.
pub const DEFAULT_MAX_LINE_LEN: usize = 8 * 1024;

/// What a binary body may carry beyond the value: extras (at most 255 bytes)
/// plus a key (at most 250 bytes), rounded up.
pub const BINARY_BODY_HEADROOM: usize = 1024;

/// Bounds applied by every parser in this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_len: usize,
    /// Largest value a storage command may carry, in bytes.
    pub max_value_len: usize,
    /// Longest ASCII line (command or reply header) including CRLF.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: MAX_KEY_LEN,
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            max_line_len: DEFAULT_MAX_LINE_LEN,
        }
    }
}

impl Limits {
    /// Largest binary body (extras + key + value) accepted.
    pub fn max_binary_body(&self) -> usize {
        self.max_value_len.saturating_add(BINARY_BODY_HEADROOM)
    }
}
