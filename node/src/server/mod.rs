//! The storage node's data service: a memcached listener (ASCII, meta and
//! binary on one port) in front of any number of buckets, with
//! write-behind persistence, warmup, the pager and graceful shutdown.
//!
//! Modules: [`buckets`] (the node's buckets, created and deleted at
//! runtime), [`context`] (what connections on one bucket share),
//! `connection` (the per-client read/parse/run/write loop and its bucket
//! selection), `ascii`, `meta` and `binary` (one front end per protocol),
//! `stats` (the `stats` groups), `background` (per bucket: clock, pager,
//! expiry purge, flusher thread, warmup).
//!
//! [`Node::start`] binds, creates bucket `default` when configured to
//! (starting its warmup) and returns at once; requests get "temporary
//! failure" until warmup completes. A connection starts on `default` when
//! it exists and selects another bucket with binary SASL PLAIN (the user
//! names the bucket) or SELECT_BUCKET. [`Node::shutdown`] stops accepting,
//! closes connections, writes every queued mutation of every bucket to
//! disk and returns.

mod ascii;
mod background;
mod binary;
pub mod buckets;
mod connection;
pub use buckets::{BucketKind, BucketSpec, Buckets};
pub use connection::{drive, DriveOutcome};
pub mod context;
mod meta;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_protocol::Limits;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::cluster::ClusterView;
use crate::config::NodeConfig;
use crate::engine::{EngineError, VbucketState};
use crate::meta::Meta;
use crate::mutation::VbucketId;
use crate::persist::{PersistError, Store, StoreOptions};
use buckets::BucketSettings;
pub use context::Context;
use context::ServerStats;

/// The bucket a standalone node serves, and the one a connection starts
/// on.
pub const DEFAULT_BUCKET: &str = "default";

/// What a request does to the connection after its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Read-only: nothing for the flusher.
    Read,
    /// Wrote to the bucket: the flusher has work.
    Wrote,
    /// Close the connection (quit, or an unrecoverable stream).
    Close,
    /// The connection turns into a replication stream (DCP_OPEN).
    Dcp,
}

impl Flow {
    /// This flow, noting that the bucket was written (unless closing).
    fn or_wrote(self) -> Flow {
        match self {
            Flow::Read => Flow::Wrote,
            other => other,
        }
    }
}

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Binding or accepting failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened or written.
    #[error("persistence: {0}")]
    Persist(#[from] PersistError),
    /// The flusher could not write everything at shutdown.
    #[error("flush at shutdown: {0}")]
    Flush(#[from] crate::persist::FlushError),
    /// The bucket configuration is invalid.
    #[error("bucket: {0}")]
    Bucket(#[from] crate::engine::ConfigError),
    /// Warmup failed.
    #[error("warmup: {0}")]
    Warmup(String),
    /// The cluster metadata service could not start.
    #[error("cluster metadata: {0}")]
    Meta(String),
    /// No bucket of that name on this node.
    #[error("no bucket {0:?}")]
    NoSuchBucket(String),
    /// The node is shutting down: buckets can no longer be created.
    #[error("the node is stopping")]
    Stopped,
    /// A blocking task (opening, deleting or syncing a keyspace) panicked
    /// or was cancelled.
    #[error("background task: {0}")]
    Task(String),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    buckets: Arc<Buckets>,
    /// The cluster metadata service (`None` on a standalone node).
    meta: Option<Arc<Meta>>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: JoinHandle<()>,
    view: Arc<ClusterView>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl Node {
    /// Opens the data dir, creates bucket `default` if
    /// [`NodeConfig::default_bucket`] says so (starting its warmup) and
    /// binds the data and admin ports; returns as soon as they accept
    /// connections.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let store = open_store(&config)?;
        let buckets = Arc::new(Buckets::new(store, settings(&config)));
        if config.default_bucket {
            buckets.create(default_spec(&config)).await?;
        }
        let listener = TcpListener::bind((config.host, config.port)).await?;
        let data_addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind((config.host, config.admin_port)).await?;
        let admin_addr = admin_listener.local_addr()?;
        let view = Arc::new(ClusterView::open(
            &config.data_dir,
            data_addr.to_string(),
            config.standalone,
        ));
        if config.standalone {
            view.publish_standalone(
                &config.host.to_string(),
                data_addr.port(),
                admin_addr.port(),
                config.num_vbuckets,
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let meta = if config.standalone {
            None
        } else {
            Some(
                start_meta(
                    &config,
                    data_addr,
                    admin_addr,
                    &buckets,
                    &view,
                    &shutdown_rx,
                )
                .await?,
            )
        };
        let admin = tokio::spawn(crate::admin::serve(
            admin_listener,
            buckets.clone(),
            view.clone(),
            meta.clone(),
            shutdown_rx.clone(),
        ));
        let accept = tokio::spawn(accept_loop(
            listener,
            buckets.clone(),
            connections.clone(),
            shutdown_rx,
        ));
        tracing::info!(%data_addr, %admin_addr, dir = %config.data_dir.display(), "node listening");
        Ok(Node {
            buckets,
            meta,
            data_addr,
            admin_addr,
            admin,
            view,
            shutdown,
            accept,
            connections,
            max_connections: config.max_connections,
        })
    }

    /// The bound data port's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The bound admin (REST) port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bucket config this node serves.
    pub fn cluster_view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    /// The cluster metadata service, unless standalone.
    pub fn meta(&self) -> Option<&Arc<Meta>> {
        self.meta.as_ref()
    }

    /// The node's buckets: create, delete, look up.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    /// Bucket `default`, if the node has one (for stats and tests).
    pub fn context(&self) -> Option<Arc<Context>> {
        self.buckets.get(DEFAULT_BUCKET)
    }

    /// Waits until every bucket the node has now has warmed up (or one
    /// failed).
    pub async fn ready(&self) -> Result<(), NodeError> {
        for name in self.buckets.names() {
            match self.buckets.ready(&name).await {
                // Deleted meanwhile: nothing to wait for.
                Err(NodeError::NoSuchBucket(_)) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Graceful stop: no new connections, open ones closed after their
    /// current batch, every queued mutation of every bucket written and
    /// synced.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
        // Every connection holds a permit; all returned = all closed.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.connections.acquire_many(all)).await;
        if let Some(meta) = &self.meta {
            meta.shutdown().await;
        }
        self.buckets.shutdown().await
    }
}

/// Starts the metadata service, the loop that drives this node's buckets
/// from it, and — if asked — forming or joining a cluster (in the
/// background: a joiner retries until the cluster answers).
async fn start_meta(
    config: &NodeConfig,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    buckets: &Arc<Buckets>,
    view: &Arc<ClusterView>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Arc<Meta>, NodeError> {
    let meta = Meta::start(
        &config.data_dir,
        config.host.to_string(),
        data_addr.port(),
        admin_addr.port(),
    )
    .await
    .map_err(|e| NodeError::Meta(e.to_string()))?;
    tokio::spawn(crate::meta::reconcile::run(
        meta.clone(),
        buckets.clone(),
        view.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::meta::autofailover::run(
        meta.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::meta::rebalance::clear_leftovers(
        meta.clone(),
        shutdown.clone(),
    ));
    if config.init_cluster {
        let meta = meta.clone();
        tokio::spawn(async move {
            match meta.init_cluster().await {
                Ok(()) => tracing::info!(id = meta.me().id, "cluster initialised"),
                Err(error) => tracing::error!(%error, "could not initialise the cluster"),
            }
        });
    }
    if let Some(url) = config.join.clone() {
        let meta = meta.clone();
        tokio::spawn(async move {
            match meta.join(&url).await {
                Ok(()) => tracing::info!(%url, "joined the cluster"),
                Err(error) => tracing::error!(%error, %url, "could not join the cluster"),
            }
        });
    }
    Ok(meta)
}

/// The node's parser limits.
fn limits(config: &NodeConfig) -> Limits {
    Limits {
        max_value_len: config.max_value_len,
        // memcached reads a `get` line of any length and clients rely on
        // it (pymemcache sends a whole `get_many` as one line); 1 MiB is
        // ~80k short keys and still bounds a line without CRLF.
        max_line_len: 1024 * 1024,
        ..Limits::default()
    }
}

/// What every bucket of a node with `config` is built with.
fn settings(config: &NodeConfig) -> BucketSettings {
    BucketSettings {
        standalone: config.standalone,
        max_value_len: config.max_value_len,
        limits: limits(config),
    }
}

/// Bucket `default` as the node's config describes it.
fn default_spec(config: &NodeConfig) -> BucketSpec {
    BucketSpec {
        name: DEFAULT_BUCKET.to_owned(),
        kind: BucketKind::Membase,
        ram_quota_mb: config.ram_quota_mb,
        num_vbuckets: config.num_vbuckets,
    }
}

/// Opens (creating) the data dir and the node's store.
fn open_store(config: &NodeConfig) -> Result<Store, NodeError> {
    std::fs::create_dir_all(&config.data_dir)?;
    Ok(Store::open(
        &config.data_dir.join("data"),
        StoreOptions {
            fsync: config.fsync,
            ..StoreOptions::for_quota(config.quota_bytes())
        },
    )?)
}

/// Opens the data dir and builds the [`Context`] of bucket `default`
/// (still warming up, nothing started), without binding anything: for
/// harnesses that drive sessions without sockets (see [`drive`]).
pub fn open(config: &NodeConfig) -> Result<(Arc<Context>, Store), NodeError> {
    let store = open_store(config)?;
    let bucket_store = store.bucket(DEFAULT_BUCKET)?;
    let ctx = buckets::new_context(
        &default_spec(config),
        &settings(config),
        Some(bucket_store),
        Arc::new(ServerStats::default()),
        Instant::now(),
    )?;
    Ok((Arc::new(ctx), store))
}

async fn accept_loop(
    listener: TcpListener,
    buckets: Arc<Buckets>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stats = buckets.stats().clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                stats.total_connections.fetch_add(1, Ordering::Relaxed);
                stats.curr_connections.fetch_add(1, Ordering::Relaxed);
                let (buckets, stats) = (buckets.clone(), stats.clone());
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    connection::serve(stream, buckets, shutdown).await;
                    stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of descriptors and the like: back off instead of
                // spinning on a listener that keeps failing.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// `flush_all`: invalidates everything as of `deadline` (0 = now) and
/// records the deadline so a restart honours it.
fn flush_all(ctx: &Context, deadline: u32, now: u32) -> Result<(), EngineError> {
    let effective = ctx.bucket.flush_all(deadline, now)?;
    let Some(store) = &ctx.store else {
        return Ok(());
    };
    if let Err(error) = store.set_flush_deadline(effective) {
        tracing::error!(bucket = %ctx.name, %error, "could not persist flush_all deadline");
        return Err(EngineError::TempFail);
    }
    Ok(())
}

/// SET_VBUCKET: changes the state in memory and on disk.
pub(crate) fn set_vbucket_state(
    ctx: &Context,
    vb: VbucketId,
    state: VbucketState,
) -> Result<(), EngineError> {
    ctx.bucket.set_vbucket_state(vb, state)?;
    let Some(store) = &ctx.store else {
        return Ok(());
    };
    let wire = u8::try_from(state.to_wire()).unwrap_or(u8::MAX);
    // An active vbucket may have started a new history: its failover log
    // goes to disk with the state, in one synced batch.
    let result = if state == VbucketState::Active {
        let log = ctx.bucket.failover_log(vb);
        store.set_failover_logs(&[(vb, Some(wire), &log[..])])
    } else {
        store.set_vbucket_state(vb, wire)
    };
    if let Err(error) = result {
        tracing::error!(bucket = %ctx.name, %error, vb, "could not persist vbucket state");
        return Err(EngineError::TempFail);
    }
    Ok(())
}

/// DEL_VBUCKET: drops a vbucket's items from memory and disk.
pub(crate) fn delete_vbucket(ctx: &Context, vb: VbucketId) -> Result<(), EngineError> {
    ctx.bucket.delete_vbucket(vb)?;
    let Some(store) = &ctx.store else {
        return Ok(());
    };
    let wire = u8::try_from(VbucketState::Dead.to_wire()).unwrap_or(u8::MAX);
    let result = store
        .delete_vbucket(vb)
        .and_then(|_| store.set_vbucket_state(vb, wire));
    if let Err(error) = result {
        tracing::error!(bucket = %ctx.name, %error, vb, "could not delete vbucket on disk");
        return Err(EngineError::TempFail);
    }
    Ok(())
}
