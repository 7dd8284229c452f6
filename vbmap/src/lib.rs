//! The cluster map, pure and free of I/O.
//!
//! Modules:
//! - [`map`]: [`VbucketMap`], which servers hold each vbucket (active first,
//!   then replicas), stored flat for one-indexing lookups on the request path.
//! - [`hash`]: key → vbucket exactly as libvbucket computes it (CRC32).
//! - [`ketama`]: key → server rings compatible with libmemcached (MD5
//!   libketama mode, one-at-a-time mode) and libvbucket's ring for memcached
//!   buckets.
//! - [`config`]: the Couchbase bucket-config JSON that smart clients read,
//!   with serde types, validation and conversion to a [`VbucketMap`].
//! - [`planner`]: balanced fresh maps, rebalance move plans and failover
//!   promotion.
//!
//! This crate does no I/O and knows nothing of sockets, files or clocks: it is
//! shared by the node, the proxy and the cluster manager so they agree on
//! every placement.
#![forbid(unsafe_code)]

pub mod config;
pub mod hash;
pub mod ketama;
pub mod map;
pub mod planner;

pub use map::{ServerIdx, VbucketId, VbucketMap};
