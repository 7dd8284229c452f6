//! The Shoal storage node.
//!
//! Owns the data: vbuckets and their items, the memory quota and ejection,
//! write-behind persistence, replication streams and the cluster manager. It
//! speaks memcached on its data port through the `shoal-protocol` codecs and
//! places keys with `shoal-vbmap`; it never depends on the proxy.
//!
//! Modules:
//! - [`admin`]: the REST admin port (Couchbase's paths and JSON shapes) and
//!   the bucket-config streams proxies and smart clients follow.
//! - [`cluster`]: [`cluster::ClusterView`], the config the node serves and
//!   the vbucket states it drives the engine to.
//! - [`config`]: [`NodeConfig`], the validated settings `shoal node` maps
//!   its flags onto.
//! - [`engine`]: the in-memory KV engine — a [`engine::Bucket`] of vbuckets
//!   with memcached item semantics, seqnos and checkpoint queues, the RAM
//!   quota and value ejection. Synchronous, no I/O.
//! - [`meta`]: the cluster metadata replicated by Raft (nodes, buckets,
//!   maps), its storage and transport, and the loop that drives this
//!   node's buckets to match it.
//! - [`mutation`]: [`Mutation`], the unit that flows from the engine to disk
//!   and to replicas.
//! - [`persist`]: write-behind persistence — the on-disk record codec, the
//!   fjall-backed store (one keyspace per bucket) and the flusher loop.
//! - [`replication`]: replica streams between nodes (DCP over the data
//!   port) and durable writes.
//! - [`server`]: the data service — one port for ASCII, meta and binary
//!   clients in front of the node's buckets, created and deleted at runtime
//!   ([`server::Buckets`]) — with warmup, the pager, the flusher thread per
//!   bucket and graceful shutdown ([`Node`]).
#![deny(unsafe_code)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod meta;
pub mod mutation;
pub mod persist;
pub mod replication;
pub mod server;

pub use config::NodeConfig;
pub use mutation::{Mutation, MutationKind, VbucketId};
pub use server::{Node, NodeError};
