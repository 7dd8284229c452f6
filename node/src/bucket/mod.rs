//! The bucket runtime: the node's live buckets, each an engine, a store, a
//! flusher and its background work, created and deleted at runtime.
//!
//! Modules:
//! - [`spec`]: [`BucketSpec`] (a bucket's settings, defined once: the REST
//!   API parses it, the cluster metadata embeds it, the runtime builds
//!   from it), [`BucketKind`] and the [`Durability`] level.
//! - [`live`]: [`LiveBucket`], one running bucket and what every connection
//!   on it shares: reads through to disk for ejected values, vbucket state
//!   changes in memory and on disk, `flush_all`.
//! - [`buckets`]: [`Buckets`], every bucket of the node, by name.
//! - [`durability`]: [`DurabilityMonitor`], which replicas acknowledged
//!   what, for durable writes.
//! - `background`: per bucket, warmup, the flusher thread and the ticker
//!   (clock, pager, expiry purge).
//! - [`clock`], [`counters`]: the request clock and the node's server
//!   counters.
//! - [`open`]: the store and bucket `default` as a node's config describes
//!   them.
//!
//! Layer: above the `shoal-engine` and `shoal-persist` crates, below the
//! data service (`server`) and replication, which both work on live
//! buckets. Must not import: `server`, `replication`, `cluster_view`,
//! `manager`, `admin`, `node`.

mod background;
pub mod buckets;
pub mod clock;
pub mod counters;
pub mod durability;
pub mod live;
pub mod open;
pub mod spec;

pub use buckets::{Buckets, NodeSettings};
pub use clock::Clock;
pub use counters::ServerStats;
pub use durability::{DurabilityError, DurabilityMonitor, DURABILITY_TIMEOUT};
pub use live::{BucketAccess, FlushError, LiveBucket};
pub use spec::{BucketKind, BucketSpec, Durability};

/// The bucket a standalone node serves, and the one a connection starts
/// on.
pub const DEFAULT_BUCKET: &str = "default";

/// Why a bucket could not be created, started, stopped or found.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The store could not be opened or written.
    #[error("persistence: {0}")]
    Persist(#[from] shoal_persist::PersistError),
    /// The flusher could not write everything when stopping.
    #[error("flush at shutdown: {0}")]
    Flush(#[from] shoal_persist::FlushError),
    /// The bucket's settings do not make a valid engine.
    #[error("bucket: {0}")]
    Config(#[from] shoal_engine::ConfigError),
    /// Creating the data dir failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Warmup failed.
    #[error("warmup: {0}")]
    Warmup(String),
    /// No bucket of that name on this node.
    #[error("no bucket {0:?}")]
    NoSuchBucket(String),
    /// The node is shutting down: buckets can no longer be created.
    #[error("the node is stopping")]
    Stopped,
    /// A blocking task (opening, deleting or syncing a keyspace) panicked
    /// or was cancelled.
    #[error("background task: {0}")]
    Task(String),
}
