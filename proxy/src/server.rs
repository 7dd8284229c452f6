//! [`Proxy`]: binds the client and admin ports, starts the map source
//! (config watcher or static ring), accepts clients, and drains on
//! shutdown — `/health` turns 503, no new clients, in-flight requests
//! finish, then it returns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{MapSource, ProxyConfig};
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
}

impl Shared {
    /// State for a proxy with `config`, holding the empty map (static maps
    /// are installed by [`Proxy::start`]; harnesses may install their own).
    pub fn new(config: ProxyConfig) -> Arc<Shared> {
        Arc::new(Shared {
            maps: MapStore::new(downstream_config(&config)),
            stats: ProxyStats::default(),
            draining: AtomicBool::new(false),
            refresh: Notify::new(),
            config,
        })
    }
}

/// The downstream settings of a proxy with `config`: in vbucket mode the
/// bucket is selected on every node connection, `default` included — a
/// connection only starts on `default` if the node had it when the
/// connection was accepted, and the bucket may be created or re-created
/// later.
fn downstream_config(config: &ProxyConfig) -> crate::downstream::DownstreamConfig {
    let mut downstream = config.downstream.clone();
    if let MapSource::Cluster { bucket, .. } = &config.source {
        if downstream.bucket.is_none() {
            downstream.bucket = Some(bucket.clone());
        }
    }
    downstream
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    connections: Arc<Semaphore>,
}

impl Proxy {
    /// Binds both ports and starts serving (requests wait for the first map
    /// up to the retry deadline).
    pub async fn start(config: ProxyConfig) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((config.host, config.port)).await?;
        let admin_listener = TcpListener::bind((config.host, config.admin_port)).await?;
        let data_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let shared = Shared::new(config);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        match &shared.config.source {
            MapSource::Static { servers, weights } => {
                shared.maps.install_static(servers.clone(), weights);
            }
            MapSource::Cluster { .. } => {
                tasks.push(tokio::spawn(crate::watcher::run(
                    shared.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
        tasks.push(tokio::spawn(crate::admin::serve(
            admin_listener,
            shared.clone(),
            shutdown_rx.clone(),
        )));
        let connections = Arc::new(Semaphore::new(shared.config.max_connections));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            connections.clone(),
            shutdown_rx,
        )));
        tracing::info!(%data_addr, %admin_addr, "proxy listening");
        Ok(Proxy {
            shared,
            data_addr,
            admin_addr,
            shutdown,
            tasks,
            connections,
        })
    }

    /// The client port's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The admin port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What the proxy's parts share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until a map is loaded.
    pub async fn ready(&self) {
        let mut generation = self.shared.maps.subscribe();
        while !self.shared.maps.load().is_ready() {
            if generation.changed().await.is_err() {
                return;
            }
        }
    }

    /// Graceful drain: `/health` → 503, stop accepting, let open
    /// connections finish their current requests (up to `grace`), stop.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        let all = u32::try_from(self.shared.config.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.connections.acquire_many(all)).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
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
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                shared
                    .stats
                    .total_connections
                    .fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .curr_connections
                    .fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    crate::session::serve(stream, shared.clone(), shutdown).await;
                    shared
                        .stats
                        .curr_connections
                        .fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
