//! [`Mutation`]: one change to one vbucket, in seqno order.
//!
//! The engine produces a `Mutation` for every write it acknowledges; the
//! flusher persists them in batches and (later) replication streams ship them
//! to replicas. Values are `Bytes` shared with the in-memory item, so queueing
//! a mutation never copies the value.

use bytes::Bytes;

/// A vbucket number.
pub type VbucketId = u16;

/// One acknowledged change to a key, as it must reach disk and replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// The vbucket the key lives in.
    pub vbucket: VbucketId,
    /// The vbucket's sequence number assigned to this change (starts at 1).
    pub seqno: u64,
    /// The key.
    pub key: Bytes,
    /// CAS of the item after the change (for a deletion, the tombstone's CAS).
    pub cas: u64,
    /// Unix time (seconds) of the change; memcached's `flush_all` with a
    /// delay invalidates items by it.
    pub time: u32,
    /// What happened.
    pub kind: MutationKind,
}

/// What a [`Mutation`] did to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutationKind {
    /// The key now holds this value.
    Set {
        /// The full value.
        value: Bytes,
        /// Client flags.
        flags: u32,
        /// Absolute expiry, unix seconds; 0 = never.
        exptime: u32,
    },
    /// The key was deleted (or expired and purged): persisted as a tombstone
    /// so an older copy on disk can never come back.
    Delete,
}
