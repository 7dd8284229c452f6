//! A node's buckets as its [`NodeConfig`] describes them: the node-wide
//! [`NodeSettings`] every bucket is built with, the node's one store, and
//! bucket `default`. Used by the wiring at start-up and by harnesses that
//! drive a bucket without sockets (fuzz targets, session tests).

use std::sync::Arc;
use std::time::Instant;

use shoal_persist::{Store, StoreOptions};
use shoal_protocol::Limits;

use super::{buckets, BucketError, BucketKind, BucketSpec, Durability, LiveBucket, NodeSettings};
use super::{ServerStats, DEFAULT_BUCKET};
use crate::config::NodeConfig;

/// memcached reads a `get` line of any length and clients rely on it
/// (pymemcache sends a whole `get_many` as one line); 1 MiB is ~80k short
/// keys and still bounds a line without CRLF.
const MAX_LINE_LEN: usize = 1024 * 1024;

/// What every bucket of a node with `config` is built with.
pub fn settings(config: &NodeConfig) -> NodeSettings {
    NodeSettings {
        standalone: config.standalone,
        max_value_len: config.max_value_len,
        limits: Limits {
            max_value_len: config.max_value_len,
            max_line_len: MAX_LINE_LEN,
            ..Limits::default()
        },
    }
}

/// Bucket `default` as the node's config describes it: open and
/// flushable, like memcached (a standalone node has no replicas to wait
/// for).
pub fn default_spec(config: &NodeConfig) -> BucketSpec {
    BucketSpec {
        name: DEFAULT_BUCKET.to_owned(),
        kind: BucketKind::Membase,
        ram_quota_mb: u64::try_from(config.ram_quota_mb).unwrap_or(u64::MAX),
        replicas: 0,
        durability: Durability::None,
        num_vbuckets: u32::try_from(config.num_vbuckets).unwrap_or(u32::MAX),
        password: None,
        flush_enabled: true,
    }
}

/// Opens (creating) the data dir and the node's store.
pub fn open_store(config: &NodeConfig) -> Result<Store, BucketError> {
    std::fs::create_dir_all(&config.data_dir)?;
    Ok(Store::open(
        &config.data_dir.join("data"),
        StoreOptions {
            fsync: config.fsync,
            ..StoreOptions::for_quota(config.quota_bytes())
        },
    )?)
}

/// Opens the data dir and builds bucket `default` (still warming up,
/// nothing started), without binding anything: for harnesses that drive
/// sessions without sockets. The store must outlive the bucket.
pub fn open_standalone(config: &NodeConfig) -> Result<(Arc<LiveBucket>, Store), BucketError> {
    let store = open_store(config)?;
    let bucket_store = store.bucket(DEFAULT_BUCKET)?;
    let bucket = buckets::build(
        &default_spec(config),
        &settings(config),
        Some(bucket_store),
        Arc::new(ServerStats::default()),
        Instant::now(),
    )?;
    Ok((Arc::new(bucket), store))
}
