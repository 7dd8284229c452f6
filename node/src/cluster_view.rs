//! [`ClusterView`]: the bucket configs this node serves to clients and
//! proxies, one per bucket, and [`drive_vbuckets`], which sets a bucket's
//! vbucket states from its map.
//!
//! In a cluster the configs come from the replicated metadata (the
//! cluster manager's reconcile loop publishes them). A node outside any cluster can
//! still be handed a config over REST ([`ClusterView::adopt`]); it is
//! adopted only when its `rev` is higher than the one held (the rule every
//! smart client follows too) and kept next to the data. A standalone node
//! derives its config (every vbucket active here) and never adopts another.
//!
//! Layer: above the bucket runtime (whose vbucket states it drives), below
//! the cluster manager (which publishes through it). Must not import:
//! `server`, `replication`, `manager`, `admin`, `node`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use shoal_vbmap::config::{BucketConfig, NodeAddress};
use shoal_vbmap::VbucketMap;
use tokio::sync::watch;

use shoal_engine::VbucketState;

use crate::bucket::{Buckets, LiveBucket, DEFAULT_BUCKET};

/// A config as published: its revision and the exact JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct Published {
    /// The config's `rev`.
    pub rev: i64,
    /// The JSON served over REST, byte for byte.
    pub json: Arc<str>,
}

/// Every bucket's published config, by name.
pub type Configs = BTreeMap<String, Arc<Published>>;

/// Why a config was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The JSON is not a valid bucket config.
    #[error("invalid bucket config: {0}")]
    Invalid(#[from] shoal_vbmap::config::ConfigError),
    /// A config without `rev` cannot be ordered against the held one.
    #[error("bucket config has no rev")]
    NoRev,
    /// The config names a bucket this node does not have.
    #[error("this node has no bucket {0:?}")]
    NoBucket(String),
    /// Its vbucket count differs from the bucket's.
    #[error("config has {config} vbuckets; the bucket has {node}")]
    VbucketCount {
        /// In the config.
        config: usize,
        /// On the node.
        node: usize,
    },
    /// A standalone node serves its own config only.
    #[error("a standalone node does not take cluster configs")]
    Standalone,
    /// A cluster member takes its configs from the cluster metadata.
    #[error("this node belongs to a cluster; change buckets through the cluster's REST API")]
    Managed,
    /// Writing the config or a vbucket state to disk failed.
    #[error("persisting: {0}")]
    Persist(String),
}

/// The configs this node serves and where an adopted one is kept.
#[derive(Debug)]
pub struct ClusterView {
    current: watch::Sender<Arc<Configs>>,
    /// Where an adopted `default` config is kept across restarts.
    path: PathBuf,
    /// This node's data address as it appears in `serverList`.
    me: String,
    standalone: bool,
}

impl ClusterView {
    /// The view for a node whose data port is `me` (`host:port`), loading
    /// the config adopted before a restart from `data_dir`.
    pub fn open(data_dir: &std::path::Path, me: String, standalone: bool) -> ClusterView {
        let path = data_dir.join("bucket-config.json");
        let mut configs = Configs::new();
        let loaded = (!standalone)
            .then(|| std::fs::read_to_string(&path).ok())
            .flatten()
            .and_then(|json| {
                let config = BucketConfig::parse(&json).ok()?;
                Some(Arc::new(Published {
                    rev: config.rev?,
                    json: Arc::from(json),
                }))
            });
        if let Some(p) = loaded {
            configs.insert(DEFAULT_BUCKET.to_string(), p);
        }
        ClusterView {
            current: watch::channel(Arc::new(configs)).0,
            path,
            me,
            standalone,
        }
    }

    /// The config served for `bucket`, if any.
    pub fn current(&self, bucket: &str) -> Option<Arc<Published>> {
        self.current.borrow().get(bucket).cloned()
    }

    /// Every bucket's config.
    pub fn all(&self) -> Arc<Configs> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every change to any bucket's config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Configs>> {
        self.current.subscribe()
    }

    /// This node's data address (`host:port`).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Serves `json` (rev `rev`) for `bucket` unless that exact config is
    /// already served.
    pub fn publish(&self, bucket: &str, rev: i64, json: String) {
        self.current.send_if_modified(|configs| {
            if configs
                .get(bucket)
                .is_some_and(|p| p.rev == rev && *p.json == *json)
            {
                return false;
            }
            let mut next = Configs::clone(configs);
            next.insert(
                bucket.to_string(),
                Arc::new(Published {
                    rev,
                    json: Arc::from(json),
                }),
            );
            *configs = Arc::new(next);
            true
        });
    }

    /// Stops serving every bucket `keep` refuses.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.current.send_if_modified(|configs| {
            if configs.keys().all(|name| keep(name)) {
                return false;
            }
            let next: Configs = configs
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, p)| (name.clone(), p.clone()))
                .collect();
            *configs = Arc::new(next);
            true
        });
    }

    /// Builds and publishes a standalone node's config: every vbucket
    /// active on itself.
    pub fn publish_standalone(
        &self,
        host: &str,
        data_port: u16,
        admin_port: u16,
        num_vbuckets: usize,
    ) {
        let Ok(mut map) = VbucketMap::empty(num_vbuckets, 0) else {
            return;
        };
        for vb in 0..num_vbuckets {
            map.set(vb as u16, 0, Some(0));
        }
        let servers = [NodeAddress::new(host, data_port, admin_port)];
        if let Ok(config) = BucketConfig::for_vbucket_map(DEFAULT_BUCKET, 1, &servers, &map, None) {
            self.publish(DEFAULT_BUCKET, 1, config.to_json());
        }
    }

    /// Adopts `json` for the bucket it names (default `default`) if its rev
    /// is higher than the one held: applies the vbucket states it gives
    /// this node, persists it, publishes it. Returns whether it was
    /// adopted. Blocking (disk writes): call from a blocking context.
    pub fn adopt(&self, buckets: &Buckets, json: &str) -> Result<bool, AdoptError> {
        if self.standalone {
            return Err(AdoptError::Standalone);
        }
        let config = BucketConfig::parse(json)?;
        let map = config.validate()?;
        let rev = config.rev.ok_or(AdoptError::NoRev)?;
        let name = map.name().unwrap_or(DEFAULT_BUCKET).to_string();
        let ctx = buckets
            .get(&name)
            .ok_or_else(|| AdoptError::NoBucket(name.clone()))?;
        if self.current(&name).is_some_and(|held| held.rev >= rev) {
            return Ok(false);
        }
        if let Some(vbmap) = map.vbucket_map() {
            let me = map
                .servers()
                .iter()
                .position(|s| s.to_string() == self.me)
                .map(|i| i as u16);
            drive_vbuckets(&ctx, vbmap, me)?;
        }
        if name == DEFAULT_BUCKET {
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(&tmp, json)
                .and_then(|()| std::fs::rename(&tmp, &self.path))
                .map_err(|e| AdoptError::Persist(e.to_string()))?;
        }
        self.publish(&name, rev, json.to_string());
        tracing::info!(rev, bucket = %name, "adopted bucket config");
        Ok(true)
    }

    /// Forgets a config adopted outside a cluster (the node joined one).
    pub fn forget_adopted(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets each vbucket of `ctx`'s bucket from `me`'s place in its chain in
/// `map`: active at position 0, replica further down, dead when absent.
/// Blocking (disk writes).
pub fn drive_vbuckets(
    ctx: &LiveBucket,
    map: &VbucketMap,
    me: Option<u16>,
) -> Result<(), AdoptError> {
    let node = ctx.engine.config().num_vbuckets;
    if map.num_vbuckets() != node {
        return Err(AdoptError::VbucketCount {
            config: map.num_vbuckets(),
            node,
        });
    }
    for (vb, chain) in map.chains() {
        let state = match chain.iter().position(|s| s.is_some() && *s == me) {
            Some(0) => VbucketState::Active,
            Some(_) => VbucketState::Replica,
            None => VbucketState::Dead,
        };
        if ctx.engine.vbucket_state(vb) != Some(state) {
            ctx.set_vbucket_state(vb, state)
                .map_err(|e| AdoptError::Persist(format!("vbucket {vb}: {e}")))?;
        }
    }
    Ok(())
}
