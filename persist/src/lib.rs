//! Write-behind persistence: [`Mutation`](shoal_engine::Mutation)s in, an embedded
//! LSM store (`fjall`) on disk, items back out at warmup and background fetch.
//!
//! Modules: [`record`] is the sans-IO on-disk codec (key = vbucket u16 BE ++
//! item key; value = versioned, CRC-checked header ++ value bytes); [`store`]
//! owns the fjall database — one keyspace per bucket plus one metadata
//! keyspace — and its durability policy; [`bucket`] is one bucket's reads and
//! writes (batches, metadata, warmup, backfill scans, vbucket deletion);
//! [`flusher`] is the synchronous loop a node thread runs to drain the
//! engine's queue into the store; `testdir` (tests, and other crates' tests
//! with the `testing` feature) a temporary directory. Nothing here is async
//! or knows the engine's types beyond `Mutation`: it depends on
//! `shoal-engine` for that one type and on no async runtime or protocol
//! crate, and the node calls it from a dedicated thread (or
//! `spawn_blocking`).
//!
//! # What is durable when
//!
//! A mutation counts as **persisted** (removed from `ep_queue_size`, its item
//! clean and ejectable, its seqno reported through the flusher's
//! `mark_persisted`) once [`BucketStore::write_batch`] has returned `Ok` for
//! it. At that point its whole batch is in fjall's journal and handed to the
//! operating system, so it survives the Shoal process being killed
//! (`kill -9`, a panic, an OOM kill) under every policy. What it survives
//! beyond that depends on [`FsyncPolicy`]:
//!
//! | policy | fjall mode per batch | survives power loss / kernel crash |
//! |---|---|---|
//! | `EveryBatch` | `PersistMode::SyncData` (`fdatasync` of the journal) before `write_batch` returns | yes, as soon as `write_batch` returns |
//! | `Interval(d)` | `PersistMode::Buffer`; a store thread runs `SyncData` every `d` when something was written | all but at most the last `d` (plus one sync's duration) |
//! | `Never` | `PersistMode::Buffer` | whatever the kernel wrote back (Linux: usually within ~30 s) |
//!
//! `SyncData` rather than `SyncAll`: fjall pre-allocates its journal files,
//! and `fdatasync` still flushes any size change needed to read the data
//! back; what `SyncAll` adds is timestamps, which recovery never reads.
//! Batches are atomic in every mode: fjall's journal ends each batch with a
//! checksum and recovery drops a torn tail, so after any crash the data and
//! the persisted seqnos (written in the same batch) agree. Metadata changes
//! (vbucket states, flush deadline, vbucket deletion) are rare and are synced
//! under every policy. A clean close ([`Store`] dropped, or the flusher's
//! `shutdown`) syncs under every policy too.

#![forbid(unsafe_code)]

pub mod bucket;
pub mod flusher;
pub mod record;
pub mod store;

#[cfg(any(test, feature = "testing"))]
pub mod testdir;

pub use bucket::{BucketStore, ScanStats, WarmupStats};
pub use flusher::{BatchWriter, FlushError, Flusher, FlusherConfig, FlusherStats};
pub use record::{decode_record, RecordError, RecordHeader, RecordKind, StoredItem};
pub use store::{validate_bucket_name, FsyncPolicy, Store, StoreOptions};

/// Why a persistence operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The storage engine failed (I/O, journal recovery, or a poisoned
    /// database after a failed fsync — fjall then refuses all writes and the
    /// node should restart and recover).
    #[error("storage engine: {0}")]
    Fjall(#[from] fjall::Error),
    /// Creating the store's directory failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes on disk are not what this build wrote.
    #[error("corrupt data on disk: {reason}")]
    Corrupt {
        /// What was wrong.
        reason: &'static str,
    },
    /// A bucket name that cannot be a keyspace name.
    #[error("invalid bucket name {0:?}: use 1 to 100 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidBucketName(String),
    /// [`StoreOptions`] that cannot work.
    #[error("invalid store options: {reason}")]
    InvalidOptions {
        /// What was wrong.
        reason: &'static str,
    },
    /// The data directory's filesystem has less free space than the store
    /// keeps for the storage engine's own writes: nothing is written until
    /// space returns.
    #[error("disk full: {free} bytes free on the data directory's filesystem, {kept} kept free")]
    DiskFull {
        /// Free bytes now.
        free: u64,
        /// Free bytes the store keeps.
        kept: u64,
    },
    /// The bucket was deleted (`Store::delete_bucket`) while this handle
    /// was held.
    #[error("the bucket was deleted")]
    BucketDeleted,
    /// An item key longer than a record can hold (the engine enforces
    /// memcached's 250 bytes, so this means a bug upstream).
    #[error("item key of {len} bytes is longer than the {max}-byte limit", max = record::MAX_ITEM_KEY_LEN)]
    KeyTooLong {
        /// The offending key's length.
        len: usize,
    },
}

impl From<RecordError> for PersistError {
    fn from(e: RecordError) -> Self {
        PersistError::Corrupt { reason: e.reason() }
    }
}
