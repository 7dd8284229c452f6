//! The storage node's data service: a memcached listener (ASCII, meta and
//! binary on one port) in front of one bucket, with write-behind
//! persistence, warmup, the pager and graceful shutdown.
//!
//! Modules: [`context`] (what connections share), `connection` (the
//! per-client read/parse/run/write loop), `ascii`, `meta` and `binary` (one
//! front end per protocol), `stats` (the `stats` groups), `background`
//! (clock, pager, expiry purge, flusher thread, warmup).
//!
//! [`Node::start`] binds, starts warmup and returns at once; requests get
//! "temporary failure" until warmup completes. [`Node::shutdown`] stops
//! accepting, closes connections, writes every queued mutation to disk and
//! returns.

mod ascii;
mod background;
mod binary;
mod connection;
pub use connection::{drive, DriveOutcome};
pub mod context;
mod meta;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_protocol::Limits;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::cluster::ClusterView;
use crate::config::NodeConfig;
use crate::engine::{Bucket, BucketConfig, EngineError, VbucketState};
use crate::mutation::VbucketId;
use crate::persist::{Flusher, FlusherConfig, PersistError, Store, StoreOptions};
pub use context::Context;
use context::{Clock, ServerStats};

/// The one bucket a standalone node serves.
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
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    ctx: Arc<Context>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: JoinHandle<()>,
    view: Arc<ClusterView>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    background: background::Background,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl Node {
    /// Opens the data dir, binds the data port and starts warmup; returns
    /// as soon as the port accepts connections.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (ctx, store) = open(&config)?;
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
        let background = background::Background::start(
            ctx.clone(),
            store,
            config.standalone,
            shutdown_rx.clone(),
        );
        let admin = tokio::spawn(crate::admin::serve(
            admin_listener,
            ctx.clone(),
            view.clone(),
            shutdown_rx.clone(),
        ));
        let accept = tokio::spawn(accept_loop(
            listener,
            ctx.clone(),
            connections.clone(),
            shutdown_rx,
        ));
        tracing::info!(%data_addr, %admin_addr, dir = %config.data_dir.display(), "node listening");
        Ok(Node {
            ctx,
            data_addr,
            admin_addr,
            admin,
            view,
            shutdown,
            accept,
            background,
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

    /// The shared state (for stats and tests).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Waits until warmup has finished (or failed).
    pub async fn ready(&self) -> Result<(), NodeError> {
        self.background.warmed_up().await
    }

    /// Graceful stop: no new connections, open ones closed after their
    /// current batch, every queued mutation written and synced.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
        // Every connection holds a permit; all returned = all closed.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.connections.acquire_many(all)).await;
        self.background.stop(&self.ctx).await
    }
}

/// Opens the data dir and builds the shared [`Context`] (bucket still
/// warming up), without binding anything: [`Node::start`] uses it, and so do
/// harnesses that drive sessions without sockets.
pub fn open(config: &NodeConfig) -> Result<(Arc<Context>, Store), NodeError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(
        &config.data_dir.join("data"),
        StoreOptions {
            fsync: config.fsync,
            ..StoreOptions::for_quota(config.quota_bytes())
        },
    )?;
    let bucket_store = store.bucket(DEFAULT_BUCKET)?;
    let bucket = Bucket::try_new(BucketConfig {
        num_vbuckets: config.num_vbuckets,
        quota_bytes: config.quota_bytes(),
        max_value_len: config.max_value_len,
        ..BucketConfig::default()
    })?;
    bucket.set_warming_up(true);
    let ctx = Arc::new(Context {
        bucket,
        store: bucket_store,
        flusher: Flusher::new(FlusherConfig::default()),
        limits: Limits {
            max_value_len: config.max_value_len,
            // memcached reads a `get` line of any length and clients rely
            // on it (pymemcache sends a whole `get_many` as one line); 1 MiB
            // is ~80k short keys and still bounds a line without CRLF.
            max_line_len: 1024 * 1024,
            ..Limits::default()
        },
        clock: Clock::new(),
        stats: ServerStats::default(),
        started: Instant::now(),
        warmup_done: AtomicBool::new(false),
        warmup_count: AtomicU64::new(0),
        hash_keys: config.standalone,
    });
    Ok((ctx, store))
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
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
                ctx.stats.total_connections.fetch_add(1, Ordering::Relaxed);
                ctx.stats.curr_connections.fetch_add(1, Ordering::Relaxed);
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    connection::serve(stream, ctx.clone(), shutdown).await;
                    ctx.stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
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
    if let Err(error) = ctx.store.set_flush_deadline(effective) {
        tracing::error!(%error, "could not persist flush_all deadline");
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
    let wire = u8::try_from(state.to_wire()).unwrap_or(u8::MAX);
    if let Err(error) = ctx.store.set_vbucket_state(vb, wire) {
        tracing::error!(%error, vb, "could not persist vbucket state");
        return Err(EngineError::TempFail);
    }
    Ok(())
}

/// DEL_VBUCKET: drops a vbucket's items from memory and disk.
fn delete_vbucket(ctx: &Context, vb: VbucketId) -> Result<(), EngineError> {
    ctx.bucket.delete_vbucket(vb)?;
    let wire = u8::try_from(VbucketState::Dead.to_wire()).unwrap_or(u8::MAX);
    let result = ctx
        .store
        .delete_vbucket(vb)
        .and_then(|_| ctx.store.set_vbucket_state(vb, wire));
    if let Err(error) = result {
        tracing::error!(%error, vb, "could not delete vbucket on disk");
        return Err(EngineError::TempFail);
    }
    Ok(())
}
