//! The Shoal smart proxy.
//!
//! Stateless: accepts memcached clients (ASCII, meta and binary on one port),
//! routes each key through the current cluster map — one immutable snapshot
//! behind one `ArcSwap` — to the node that owns it, and multiplexes requests
//! over a few binary connections per node. It never depends on the node
//! crate.
//!
//! Modules, in layers that only look down (a module imports its own
//! submodules and modules of lower layers, never a sibling or a higher
//! layer; each module's doc names what it must not import):
//! - layer 0, the leaves:
//!   - [`stats`]: the proxy's counters and latency histogram.
//!   - [`downstream`]: per-node pools of multiplexed binary connections.
//! - layer 1:
//!   - [`config`]: [`ProxyConfig`], validated settings.
//!   - [`routing`]: [`routing::Routing`] snapshots and the
//!     [`routing::MapStore`] that swaps them.
//! - layer 2:
//!   - [`shared`]: [`Shared`], what every running part of the proxy reads.
//! - layer 3, siblings that never import one another:
//!   - [`watcher`]: streams bucket configs from the cluster, failing over
//!     between nodes, into the map store.
//!   - [`session`]: one client connection — parse, route, retry, answer in
//!     order.
//!   - [`admin`]: the HTTP admin port (`/health`, `/metrics`, `/config`).
//! - layer 4:
//!   - [`server`]: [`Proxy`], the wiring that starts and drains all of the
//!     above.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod downstream;
pub mod routing;
pub mod server;
pub mod session;
pub mod shared;
pub mod stats;
pub mod watcher;

pub use config::{MapSource, ProxyConfig};
pub use server::Proxy;
pub use shared::Shared;
