//! The data service: one port for ASCII, meta and binary memcached
//! clients in front of the node's live buckets.
//!
//! Modules: `connection` (the per-client read/parse/run/write loop and its
//! durable-write waits), `session` (who the connection is — SASL PLAIN and
//! SCRAM — and which bucket it works on), `ascii`, `meta` and `binary` (one
//! front end per protocol), `stats` (the `stats` groups).
//!
//! A connection starts as nobody on bucket `default` when it exists and
//! has no password, and authenticates (binary SASL) or selects another
//! bucket (SELECT_BUCKET) as Couchbase's data service lets it; vbucket
//! commands and DCP are the cluster's alone. A connection that opens a DCP stream is not served here:
//! [`serve`] returns it as a [`Handoff`] and the wiring gives it to the
//! replication producer, so this layer never imports replication (its
//! sibling). Must not import: `replication`, `cluster_view`, `manager`,
//! `admin`, `node`.

mod ascii;
mod binary;
mod connection;
mod meta;
mod session;
mod stats;

pub use connection::{drive, serve, DcpHandoff, DriveOutcome, Handoff, Served};

/// What a request does to the connection after its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Read-only: nothing for the flusher.
    Read,
    /// Wrote to the bucket: the flusher has work.
    Wrote,
    /// Close the connection (quit, or an unrecoverable stream).
    Close,
    /// The connection turns into a replication stream (DCP_OPEN).
    Dcp,
}

impl Flow {
    /// This flow, noting that the bucket was written (unless closing).
    fn or_wrote(self) -> Flow {
        match self {
            Flow::Read => Flow::Wrote,
            other => other,
        }
    }
}
