//! [`ServerStats`]: the node's server counters (memcached's names), shared
//! by every bucket's [`LiveBucket`](super::LiveBucket). Imports nothing of
//! this crate.

use std::sync::atomic::AtomicU64;

/// Counters of the server around the engine (memcached's names). One set
/// per node, shared by the contexts of all its buckets: connections and
/// bytes belong to the node, not to whichever bucket a connection selected.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Open client connections.
    pub curr_connections: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    /// Values read back from disk because they were ejected.
    pub bg_fetches: AtomicU64,
    /// Requests rejected by a parser.
    pub protocol_errors: AtomicU64,
    /// Writes answered with an error because their bucket's durability
    /// level was not met in time.
    pub durability_timeouts: AtomicU64,
}
