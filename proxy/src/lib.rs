//! The Shoal smart proxy.
//!
//! Stateless: accepts memcached clients (ASCII, meta and binary on one port),
//! routes each key through the current cluster map — one immutable snapshot
//! behind one `ArcSwap` — to the node that owns it, and multiplexes requests
//! over a few binary connections per node. It never depends on the node
//! crate.
//!
//! Modules:
//! - [`config`]: [`ProxyConfig`], validated settings.
//! - [`routing`]: [`routing::Routing`] snapshots and the [`routing::MapStore`]
//!   that swaps them.
//! - [`downstream`]: per-node pools of multiplexed binary connections.
//! - [`watcher`]: streams bucket configs from the cluster, failing over
//!   between nodes, into the map store.
//! - [`session`]: one client connection — parse, route, retry, answer in
//!   order.
//! - [`admin`]: the HTTP admin port (`/health`, `/metrics`, `/config`).
//! - [`stats`]: the proxy's counters and latency histogram.
//! - [`server`]: [`Proxy`], which starts and drains all of the above.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod downstream;
pub mod routing;
pub mod server;
pub mod session;
pub mod stats;
pub mod watcher;

pub use config::{MapSource, ProxyConfig};
pub use server::{Proxy, Shared};
