//! [`ClusterView`]: the bucket config this node serves to clients and
//! proxies, and the vbucket states it drives the engine to.
//!
//! A config is adopted only when its `rev` is higher than the one held
//! (the rule every smart client follows too). Adopting one sets each
//! vbucket's state from this node's place in its chain — active at
//! position 0, replica further down, dead when absent — persists the
//! config next to the data, and publishes it to every open config stream.
//! A standalone node derives its config (every vbucket active here) and
//! never adopts another.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_vbmap::config::{BucketConfig, NodeAddress};
use shoal_vbmap::VbucketMap;
use tokio::sync::watch;

use crate::engine::VbucketState;
use crate::server::context::Context;
use crate::server::{set_vbucket_state, DEFAULT_BUCKET};

/// A config as published: parsed, its revision, and the exact JSON.
#[derive(Debug)]
pub struct Published {
    /// The config's `rev`.
    pub rev: i64,
    /// The JSON served over REST (what was adopted, byte for byte).
    pub json: Arc<str>,
}

/// Why a config was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The JSON is not a valid bucket config.
    #[error("invalid bucket config: {0}")]
    Invalid(#[from] shoal_vbmap::config::ConfigError),
    /// A config without `rev` cannot be ordered against the held one.
    #[error("bucket config has no rev")]
    NoRev,
    /// The config is for another bucket.
    #[error("config is for bucket {0:?}; this node serves {DEFAULT_BUCKET:?}")]
    OtherBucket(String),
    /// Its vbucket count differs from this node's.
    #[error("config has {config} vbuckets; this node has {node}")]
    VbucketCount {
        /// In the config.
        config: usize,
        /// On the node.
        node: usize,
    },
    /// A standalone node serves its own config only.
    #[error("a standalone node does not take cluster configs")]
    Standalone,
    /// Writing the config or a vbucket state to disk failed.
    #[error("persisting: {0}")]
    Persist(String),
}

/// The config this node serves and where it is kept.
#[derive(Debug)]
pub struct ClusterView {
    current: watch::Sender<Option<Arc<Published>>>,
    /// Where adopted configs are kept across restarts.
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
        ClusterView {
            current: watch::channel(loaded).0,
            path,
            me,
            standalone,
        }
    }

    /// The config being served, if any.
    pub fn current(&self) -> Option<Arc<Published>> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every newly adopted config.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.current.subscribe()
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
            let json = config.to_json();
            self.current.send_replace(Some(Arc::new(Published {
                rev: 1,
                json: Arc::from(json),
            })));
        }
    }

    /// Adopts `json` if its rev is higher than the held one: applies the
    /// vbucket states it gives this node, persists it, publishes it.
    /// Returns whether it was adopted. Blocking (disk writes): call from a
    /// blocking context.
    pub fn adopt(&self, ctx: &Context, json: &str) -> Result<bool, AdoptError> {
        if self.standalone {
            return Err(AdoptError::Standalone);
        }
        let config = BucketConfig::parse(json)?;
        let map = config.validate()?;
        let rev = config.rev.ok_or(AdoptError::NoRev)?;
        if let Some(name) = map.name() {
            if name != DEFAULT_BUCKET {
                return Err(AdoptError::OtherBucket(name.to_string()));
            }
        }
        if self.current().is_some_and(|held| held.rev >= rev) {
            return Ok(false);
        }
        if let Some(vbmap) = map.vbucket_map() {
            let node = ctx.bucket.config().num_vbuckets;
            if vbmap.num_vbuckets() != node {
                return Err(AdoptError::VbucketCount {
                    config: vbmap.num_vbuckets(),
                    node,
                });
            }
            let me = map
                .servers()
                .iter()
                .position(|s| s.to_string() == self.me)
                .map(|i| i as u16);
            for (vb, chain) in vbmap.chains() {
                let state = match chain.iter().position(|s| s.is_some() && *s == me) {
                    Some(0) => VbucketState::Active,
                    Some(_) => VbucketState::Replica,
                    None => VbucketState::Dead,
                };
                if ctx.bucket.vbucket_state(vb) != Some(state) {
                    set_vbucket_state(ctx, vb, state)
                        .map_err(|e| AdoptError::Persist(format!("vbucket {vb}: {e}")))?;
                }
            }
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| AdoptError::Persist(e.to_string()))?;
        self.current.send_replace(Some(Arc::new(Published {
            rev,
            json: Arc::from(json),
        })));
        tracing::info!(rev, "adopted bucket config");
        Ok(true)
    }
}
