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
    /// Connections beyond the client limit that did not authenticate as
    /// the cluster, answered "too many open connections" and closed.
    pub rejected_conns: AtomicU64,
    /// Connections closed holding a half-sent request (or an unfinished
    /// TLS handshake) with nothing new for the request deadline.
    pub request_timeouts: AtomicU64,
    /// Idle connections closed after the idle deadline.
    pub idle_kicks: AtomicU64,
    /// Connections closed because the client left its replies unread for
    /// the write deadline.
    pub write_timeouts: AtomicU64,
    /// TLS handshakes that failed (plaintext on a TLS port, an untrusted
    /// certificate, a timeout).
    pub tls_handshake_failures: AtomicU64,
    /// Mutations and deletions this node's replica vbuckets received over
    /// their streams (what a rebalance or a recovery copied here).
    pub replica_items_received: AtomicU64,
    /// Bytes this node's replica streams read.
    pub replica_bytes_received: AtomicU64,
    /// Replica vbuckets emptied because their history diverged from their
    /// active's.
    pub replica_rollbacks: AtomicU64,
    /// The cluster's own connections open now (replication streams and
    /// the like), outside the client budget.
    pub system_connections: AtomicU64,
    /// The client connection limit (memcached's `max_connections`).
    pub max_connections: AtomicU64,
    /// Connections reserved for the cluster beyond the client limit.
    pub max_system_connections: AtomicU64,
}
