//! DCP flow control, producer side: [`FlowWindow`] counts the bytes sent
//! and not yet returned by the consumer's DCP_BUFFER_ACKNOWLEDGEMENT, and
//! [`parse_buffer_size`] reads the window the consumer asks for with
//! DCP_CONTROL `connection_buffer_size`.

/// The flow-control window until the consumer sets one (Couchbase's
/// default `connection_buffer_size` for replication is 10 MiB).
pub const DEFAULT_BUFFER_SIZE: usize = 10 * 1024 * 1024;

/// Smallest window accepted: below a few frames the stream would stall on
/// round trips.
pub const MIN_BUFFER_SIZE: usize = 64 * 1024;

/// Largest window accepted: bounds what a slow replica can make us write
/// ahead of its acknowledgements.
pub const MAX_BUFFER_SIZE: usize = 64 * 1024 * 1024;

/// Bytes sent and not yet acknowledged. Every byte written on the
/// connection counts (the Shoal consumer acknowledges every byte it reads),
/// and no stream data is produced while the window is full; control
/// replies and NOOPs still go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowWindow {
    /// The consumer's `connection_buffer_size`.
    limit: usize,
    /// Bytes sent since the last acknowledgement covered them.
    unacked: usize,
}

impl FlowWindow {
    /// An empty window of `limit` bytes.
    pub fn new(limit: usize) -> FlowWindow {
        FlowWindow { limit, unacked: 0 }
    }

    /// Whether more stream data may be sent.
    pub fn is_open(&self) -> bool {
        self.unacked < self.limit
    }

    /// Counts `n` bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.unacked = self.unacked.saturating_add(n);
    }

    /// Returns `n` acknowledged bytes. An acknowledgement of more than was
    /// sent just empties the window: the consumer cannot earn credit ahead.
    pub fn acked(&mut self, n: usize) {
        self.unacked = self.unacked.saturating_sub(n);
    }

    /// Changes the window's size (DCP_CONTROL).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Bytes sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked
    }
}

/// A `connection_buffer_size` control value: decimal bytes, clamped to
/// [`MIN_BUFFER_SIZE`]..=[`MAX_BUFFER_SIZE`]; `None` if it is not a number.
pub fn parse_buffer_size(value: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(value).ok()?;
    let n: u64 = text.trim().parse().ok()?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    Some(n.clamp(MIN_BUFFER_SIZE, MAX_BUFFER_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_closes_at_its_limit_and_acks_reopen_it() {
        let mut w = FlowWindow::new(100);
        assert!(w.is_open());
        w.sent(60);
        assert!(w.is_open());
        w.sent(40);
        assert!(!w.is_open(), "full at the limit");
        w.sent(500);
        assert_eq!(w.unacked(), 600, "one step may overshoot");
        w.acked(550);
        assert!(w.is_open());
        w.acked(1_000);
        assert_eq!(w.unacked(), 0, "no credit ahead of what was sent");
        w.sent(usize::MAX);
        w.sent(1);
        assert_eq!(w.unacked(), usize::MAX);
        w.set_limit(usize::MAX);
        assert!(!w.is_open());
    }

    #[test]
    fn buffer_sizes_are_decimal_and_clamped() {
        assert_eq!(parse_buffer_size(b"10485760"), Some(10 * 1024 * 1024));
        assert_eq!(parse_buffer_size(b"1"), Some(MIN_BUFFER_SIZE));
        assert_eq!(parse_buffer_size(b"1000000000"), Some(MAX_BUFFER_SIZE));
        assert_eq!(parse_buffer_size(b" 70000 "), Some(70_000));
        assert_eq!(
            parse_buffer_size(b"99999999999999999999"),
            None,
            "beyond u64"
        );
        assert_eq!(parse_buffer_size(b"ten"), None);
        assert_eq!(parse_buffer_size(b"-1"), None);
        assert_eq!(parse_buffer_size(b""), None);
        assert_eq!(parse_buffer_size(b"\xff"), None);
    }
}
