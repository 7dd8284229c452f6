//! The Shoal storage node.
//!
//! Owns the data: vbuckets and their items, the memory quota and ejection,
//! write-behind persistence, replication streams and the cluster manager. It
//! speaks memcached on its data port through the `shoal-protocol` codecs and
//! places keys with `shoal-vbmap`; it never depends on the proxy.
//!
//! Modules:
//! - [`mutation`]: [`Mutation`], the unit that flows from the engine to disk
//!   and to replicas.
#![deny(unsafe_code)]

pub mod mutation;

pub use mutation::{Mutation, MutationKind, VbucketId};
