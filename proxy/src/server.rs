//! [`Proxy`]: the wiring. Binds the client and admin ports, builds the
//! [`Shared`] state, starts the map source (config watcher or static ring)
//! and the admin port, accepts clients into sessions, and drains on
//! shutdown — `/health` turns 503, no new clients, in-flight requests
//! finish, then it returns.
//!
//! Layer 4, the top: the wiring, the one module that may import every
//! other one. Must not import: nothing is above it; instead, no other
//! module may import it, so what the lower layers need from here reaches
//! them as a value, a channel or a callback ([`Shared`], the shutdown
//! `watch`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shoal_accept::ConnectionCap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{MapSource, ProxyConfig};
use crate::shared::Shared;
use crate::{admin, watcher};

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    connections: ConnectionCap,
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
                tasks.push(tokio::spawn(watcher::run(
                    shared.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            shared.clone(),
            shutdown_rx.clone(),
        )));
        let connections = ConnectionCap::new(shared.config.max_connections);
        tasks.push(tokio::spawn(shoal_accept::accept_loop(
            listener,
            connections.clone(),
            shutdown_rx.clone(),
            serve_clients(shared.clone(), shutdown_rx),
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
        self.connections.drain(grace).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Serves every accepted client in a session, counting it.
fn serve_clients(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> impl FnMut(TcpStream, SocketAddr) -> BoxedConnection {
    move |stream, _peer| {
        let stats = &shared.stats;
        stats.total_connections.fetch_add(1, Ordering::Relaxed);
        stats.curr_connections.fetch_add(1, Ordering::Relaxed);
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        Box::pin(async move {
            crate::session::serve(stream, shared.clone(), shutdown).await;
            shared
                .stats
                .curr_connections
                .fetch_sub(1, Ordering::Relaxed);
        })
    }
}

/// A connection's future, boxed so the closure above has a nameable type.
type BoxedConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
