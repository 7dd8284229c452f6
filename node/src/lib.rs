//! The Shoal storage node.
//!
//! Owns the data: vbuckets and their items (the `shoal-engine` crate),
//! write-behind persistence (`shoal-persist`), replication streams and the
//! cluster manager. It speaks memcached on its data port through the
//! `shoal-protocol` codecs and places keys with `shoal-vbmap`; it never
//! depends on the proxy.
//!
//! Modules, in layers: each imports only the layers below it, never one
//! above or a sibling (`docs/DESIGN.md` draws them; `tests/layering.rs`
//! holds them):
//! 1. [`config`], [`version`], [`access`], [`transport`]: [`NodeConfig`],
//!    the validated settings `shoal node` maps its flags onto; the version
//!    string; who a request acts as and what it may do; how this node
//!    reaches other nodes (plain or TLS).
//! 2. [`bucket`]: the bucket runtime — [`bucket::LiveBucket`] (one running
//!    bucket: engine, store, flusher, background work, durability) and
//!    [`bucket::Buckets`], created and deleted at runtime.
//! 3. [`server`] (the data service: one port for ASCII, meta and binary
//!    clients) and [`replication`] (replica streams between nodes, DCP
//!    over the data port) — siblings.
//! 4. [`cluster_view`]: the bucket configs this node serves and the
//!    vbucket states they drive.
//! 5. [`manager`]: the cluster manager — metadata replicated by Raft,
//!    failover, rebalance, and the loop that drives this node to match it.
//! 6. [`admin`]: the REST admin port.
//! 7. [`node`]: [`Node`], the wiring — start-up, the accept loop, shutdown.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod bucket;
pub mod cluster_view;
pub mod config;
pub mod host_memory;
pub mod manager;
pub mod node;
pub mod replication;
pub mod server;
pub mod transport;
pub mod version;

pub use config::NodeConfig;
pub use node::{Node, NodeError};
