//! The Shoal smart proxy.
//!
//! Stateless: accepts memcached clients (ASCII, meta and binary on one port),
//! routes each key through the current cluster map (held in one `ArcSwap`
//! snapshot) to the node that owns it, and multiplexes requests over a few
//! binary connections per node. It never depends on the node crate.
//!
//! Modules arrive with the proxy work; this crate is intentionally empty
//! until then.
#![forbid(unsafe_code)]
