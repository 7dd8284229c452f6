//! [`Routing`]: one immutable snapshot of where every key goes, and
//! [`MapStore`], the single `ArcSwap` that holds the current one.
//!
//! A snapshot bundles the map revision, the placement rule (a vbucket map
//! with its forward map, or a ketama ring), the server addresses and — at
//! the same indices — the downstream pool of each server, so a request
//! resolves key → vbucket → server → pool from one `load()` with no lock and
//! no allocation. New configs are built into a fresh snapshot off the
//! request path (reusing the pools of servers that stay) and swapped in with
//! one `store`; configs with a revision not newer than the held one are
//! ignored.
//!
//! Layer 1: may import `downstream` and `stats`. Must not import: `config`,
//! `shared`, `watcher`, `session`, `admin`, `server`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use shoal_vbmap::config::{
    should_replace, BucketConfig, ConfigError, NodeLocator, Revision, ServerAddr,
};
use shoal_vbmap::hash::vbucket_of;
use shoal_vbmap::ketama::{KetamaMode, KetamaRing, ServerSpec};
use shoal_vbmap::{ServerIdx, VbucketId, VbucketMap};
use tokio::sync::watch;

use crate::downstream::{DownstreamConfig, NodePool, Wire};

/// How keys are placed.
#[derive(Debug)]
pub enum Locator {
    /// No map yet: nothing can be routed.
    Empty,
    /// Couchbase vbuckets: CRC32 → vbucket → chain.
    Vbucket {
        /// The current map.
        map: VbucketMap,
        /// Where vbuckets are moving during a rebalance, if published.
        forward: Option<VbucketMap>,
    },
    /// A consistent-hash ring (memcached buckets, or static `--servers`).
    Ketama(KetamaRing),
}

/// Where one key goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The server index, or `None` when the map names no server for it.
    pub server: Option<ServerIdx>,
    /// The vbucket to put in the binary header (0 for ketama).
    pub vbucket: VbucketId,
}

/// One immutable routing snapshot.
#[derive(Debug)]
pub struct Routing {
    /// The map's revision (`None` for static maps and the empty snapshot).
    pub revision: Option<Revision>,
    /// The placement rule.
    pub locator: Locator,
    /// Data addresses, by server index.
    pub servers: Vec<ServerAddr>,
    /// Downstream pools, by server index (same length as `servers`).
    pub pools: Vec<Arc<NodePool>>,
    /// A static ring's meta text pools, by server index (empty for a
    /// cluster's maps: nodes take meta in the binary META envelope).
    pub meta_pools: Vec<Arc<NodePool>>,
    /// The config JSON this snapshot came from (served at `/config`).
    pub source: Option<Arc<str>>,
}

impl Routing {
    /// The snapshot before any map arrives.
    pub fn empty() -> Routing {
        Routing {
            revision: None,
            locator: Locator::Empty,
            servers: Vec::new(),
            pools: Vec::new(),
            meta_pools: Vec::new(),
            source: None,
        }
    }

    /// True once a map can route keys.
    pub fn is_ready(&self) -> bool {
        !matches!(self.locator, Locator::Empty)
    }

    /// Routes `key` with the current map.
    #[inline]
    pub fn route(&self, key: &[u8]) -> Route {
        match &self.locator {
            Locator::Empty => Route {
                server: None,
                vbucket: 0,
            },
            Locator::Vbucket { map, .. } => {
                let vbucket = vbucket_of(key, map.num_vbuckets());
                Route {
                    server: map.active(vbucket),
                    vbucket,
                }
            }
            Locator::Ketama(ring) => Route {
                server: ring.server_for(key),
                vbucket: 0,
            },
        }
    }

    /// Where `vbucket` is going according to the forward map, if any.
    pub fn forward(&self, vbucket: VbucketId) -> Option<ServerIdx> {
        match &self.locator {
            Locator::Vbucket {
                forward: Some(forward),
                ..
            } => forward.active(vbucket),
            _ => None,
        }
    }

    /// The pool of server `idx`.
    #[inline]
    pub fn pool(&self, idx: ServerIdx) -> Option<&Arc<NodePool>> {
        self.pools.get(usize::from(idx))
    }

    /// The pool of server `idx` that speaks `wire`.
    #[inline]
    pub fn pool_for(&self, idx: ServerIdx, wire: Wire) -> Option<&Arc<NodePool>> {
        match wire {
            Wire::Binary => self.pool(idx),
            Wire::MetaText => self.meta_pools.get(usize::from(idx)),
        }
    }
}

/// The one place the current [`Routing`] lives.
#[derive(Debug)]
pub struct MapStore {
    current: ArcSwap<Routing>,
    /// Bumped on every swap, so requests waiting for a newer map wake up.
    generation: watch::Sender<u64>,
    downstream: DownstreamConfig,
}

impl MapStore {
    /// A store holding the empty snapshot.
    pub fn new(downstream: DownstreamConfig) -> MapStore {
        MapStore {
            current: ArcSwap::from_pointee(Routing::empty()),
            generation: watch::channel(0).0,
            downstream,
        }
    }

    /// The current snapshot. Do not hold it across an `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.current.load()
    }

    /// The current snapshot, owned (may be held across awaits).
    pub fn snapshot(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// A receiver that changes whenever a new snapshot is stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Offers a bucket config (as streamed from a node). Returns `Ok(true)`
    /// if it was newer and is now in use, `Ok(false)` if it was ignored,
    /// or the validation error. Must run inside the tokio runtime (new
    /// servers get pools, whose tasks it spawns).
    pub fn offer(&self, config: &BucketConfig, source: Arc<str>) -> Result<bool, ConfigError> {
        let map = config.validate()?;
        let old = self.current.load_full();
        if !should_replace(old.revision, map.revision()) {
            return Ok(false);
        }
        let locator = match map.locator() {
            NodeLocator::Vbucket => Locator::Vbucket {
                map: map
                    .vbucket_map()
                    .cloned()
                    .ok_or(ConfigError::MissingServerMap)?,
                forward: map.forward_map().cloned(),
            },
            NodeLocator::Ketama => {
                Locator::Ketama(ring_of(KetamaMode::Libvbucket, map.servers(), &[]))
            }
        };
        let servers = map.servers().to_vec();
        let tls_ports = tls_ports(config, &servers);
        self.install(
            &old,
            Some(map.revision()),
            locator,
            (servers, tls_ports),
            (Some(source), Vec::new()),
        );
        Ok(true)
    }

    /// Installs a static ketama map over `servers` (libmemcached's
    /// libketama-compatible placement, optional weights), as
    /// `shoal proxy --servers` does.
    pub fn install_static(&self, servers: Vec<ServerAddr>, weights: &[u32]) {
        let old = self.current.load_full();
        let ring = ring_of(KetamaMode::Libketama, &servers, weights);
        let no_tls = vec![None; servers.len()];
        // Meta text pools for the plain memcached servers (each connects
        // only when a meta request first needs it).
        let meta = DownstreamConfig {
            wire: Wire::MetaText,
            ..self.downstream.clone()
        };
        let meta_pools = servers
            .iter()
            .map(|addr| NodePool::new(addr.clone(), &meta))
            .collect();
        let locator = Locator::Ketama(ring);
        self.install(&old, None, locator, (servers, no_tls), (None, meta_pools));
    }

    fn install(
        &self,
        old: &Routing,
        revision: Option<Revision>,
        locator: Locator,
        (servers, tls_ports): (Vec<ServerAddr>, Vec<Option<u16>>),
        (source, meta_pools): (Option<Arc<str>>, Vec<Arc<NodePool>>),
    ) {
        // Keep the pools (and their warm connections) of servers that stay.
        let pools = servers
            .iter()
            .zip(tls_ports)
            .map(|(addr, tls_port)| {
                old.servers
                    .iter()
                    .position(|a| a == addr)
                    .and_then(|i| old.pools.get(i).cloned())
                    .filter(|pool| pool.tls_port() == tls_port)
                    .unwrap_or_else(|| {
                        NodePool::with_tls_port(addr.clone(), tls_port, &self.downstream)
                    })
            })
            .collect();
        self.current.store(Arc::new(Routing {
            revision,
            locator,
            servers,
            pools,
            meta_pools,
            source,
        }));
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Each server's TLS data port, from the node list of `config`
/// (`ports.sslDirect` of the node with that host and data port).
fn tls_ports(config: &BucketConfig, servers: &[ServerAddr]) -> Vec<Option<u16>> {
    servers
        .iter()
        .map(|server| {
            let node = config.nodes.iter().find(|n| {
                let host = n.hostname.rsplit_once(':').map_or(&*n.hostname, |(h, _)| h);
                n.ports.direct == server.port
                    && host.trim_start_matches('[').trim_end_matches(']') == server.host
            })?;
            let port = node.ports.extra.get("sslDirect")?.as_u64()?;
            u16::try_from(port).ok()
        })
        .collect()
}

fn ring_of(mode: KetamaMode, servers: &[ServerAddr], weights: &[u32]) -> KetamaRing {
    let specs: Vec<ServerSpec<'_>> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            ServerSpec::new(&s.host, s.port).with_weight(weights.get(i).copied().unwrap_or(1))
        })
        .collect();
    // The ring holds at most 65536 servers; a config with more was already
    // refused by validation, so this cannot fail in practice.
    KetamaRing::new(mode, &specs).unwrap_or_else(|_| {
        KetamaRing::new(mode, &[] as &[ServerSpec<'_>]).expect("an empty ring always builds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ports_come_from_the_node_list() {
        let config = BucketConfig::parse(
            r#"{"rev":1,"name":"b","nodes":[
                {"hostname":"10.0.0.1:8091","ports":{"direct":11210,"sslDirect":11207}},
                {"hostname":"[::1]:8091","ports":{"direct":11210,"sslDirect":11307}},
                {"hostname":"10.0.0.2:8091","ports":{"direct":11210}}],
               "vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,
                "serverList":["10.0.0.1:11210","[::1]:11210","10.0.0.2:11210"],
                "vBucketMap":[[0],[1],[2],[0]]}}"#,
        )
        .unwrap();
        let servers = config.validate().unwrap().servers().to_vec();
        assert_eq!(
            tls_ports(&config, &servers),
            [Some(11207), Some(11307), None]
        );
    }
}
