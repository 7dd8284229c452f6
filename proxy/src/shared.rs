//! [`Shared`]: the state every part of a running proxy reads — its
//! settings, the map store, the counters, the drain flag and the refresh
//! wake-up — and how it is built from a [`ProxyConfig`].
//!
//! Layer 2: may import `config`, `routing`, `stats` and `downstream`.
//! Must not import: `watcher`, `session`, `admin`, `server`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use shoal_protocol::Limits;
use tokio::sync::Notify;

use crate::config::{MapSource, ProxyConfig};
use crate::downstream::DownstreamConfig;
use crate::routing::MapStore;
use crate::stats::ProxyStats;

/// What every part of the proxy shares.
#[derive(Debug)]
pub struct Shared {
    /// The validated settings.
    pub config: ProxyConfig,
    /// The current map.
    pub maps: MapStore,
    /// Counters.
    pub stats: ProxyStats,
    /// Set when shutdown begins (`/health` answers 503).
    pub draining: AtomicBool,
    /// Woken when a request learns the map is stale (NOT_MY_VBUCKET): the
    /// watcher then fetches a fresh config at once instead of waiting for
    /// the stream.
    pub refresh: Notify,
    /// The cluster refused the bucket's credentials for its config (HTTP
    /// 401 or 403): the password the proxy holds is wrong, or missing.
    pub config_refused: AtomicBool,
    /// What a client request may be: the downstream parsing limits with
    /// the item size limit ([`ProxyConfig::max_value_len`]).
    pub client_limits: Limits,
    /// Client sessions started, numbering them (see
    /// [`crate::downstream::SESSION`]).
    pub sessions: AtomicUsize,
    /// When this proxy started (`stats` `uptime`).
    pub started: std::time::Instant,
}

impl Shared {
    /// State for a proxy with `config`, holding the empty map (the proxy
    /// installs a static map when it starts; harnesses may install their
    /// own).
    pub fn new(config: ProxyConfig) -> Arc<Shared> {
        Arc::new(Shared {
            maps: MapStore::new(downstream_config(&config)),
            stats: ProxyStats::default(),
            draining: AtomicBool::new(false),
            refresh: Notify::new(),
            config_refused: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            started: std::time::Instant::now(),
            client_limits: Limits {
                max_value_len: config.max_value_len,
                ..config.downstream.limits
            },
            config,
        })
    }

    /// Whether the cluster refuses the proxy's credentials for its bucket:
    /// for the config, or on any node of the current map. While it does,
    /// `/health` says so and requests fail at once with that reason.
    pub fn credentials_refused(&self) -> bool {
        self.config_refused.load(Ordering::Relaxed)
            || self.maps.load().pools.iter().any(|p| p.auth_refused())
    }
}

/// The downstream settings of a proxy with `config`: in vbucket mode the
/// bucket is selected on every node connection, `default` included — a
/// connection only starts on `default` if the node had it when the
/// connection was accepted, and the bucket may be created or re-created
/// later.
fn downstream_config(config: &ProxyConfig) -> DownstreamConfig {
    let mut downstream = config.downstream.clone();
    if let MapSource::Cluster {
        bucket, password, ..
    } = &config.source
    {
        if downstream.bucket.is_none() {
            downstream.bucket = Some(bucket.clone());
            downstream.password = password.clone();
        }
    }
    downstream
}
