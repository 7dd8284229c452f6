//! [`Proxy`]: the wiring. Binds the client ports (plain and TLS) and the
//! admin port, builds the [`Shared`] state, starts the map source (config
//! watcher or static ring) and the admin port, accepts clients into
//! sessions within the connection budget, and drains on shutdown —
//! `/health` turns 503, no new clients, in-flight requests finish, then it
//! returns.
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

use shoal_net::http::HttpCounters;
use shoal_net::{ConnectionBudget, Seat, Stream, TlsAcceptor};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{MapSource, ProxyConfig};
use crate::shared::Shared;
use crate::{admin, watcher};

/// Connections accepted beyond the client limit only to be told so and
/// closed (memcached's `rejected_conns`), rather than left waiting unseen
/// in the kernel's queue.
const REFUSAL_SEATS: usize = 64;

/// What a client beyond the limit reads before the proxy closes it.
const TOO_MANY: &[u8] = b"SERVER_ERROR too many open connections\r\n";

/// How long the admin port lets requests in progress finish once the
/// proxy has drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    /// Stops the client ports (the drain begins).
    shutdown: watch::Sender<bool>,
    /// Stops the admin port, after the drain.
    admin_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    connections: ConnectionBudget,
}

impl Proxy {
    /// Binds every port and starts serving (requests wait for the first
    /// map up to the retry deadline). Fails on a port that cannot be bound
    /// or TLS files that cannot be loaded.
    pub async fn start(config: ProxyConfig) -> std::io::Result<Proxy> {
        let tls = match &config.tls {
            Some(files) => Some(TlsAcceptor::from_files(files).map_err(std::io::Error::other)?),
            None => None,
        };
        let listener = TcpListener::bind((config.host, config.port)).await?;
        let admin_listener = TcpListener::bind((config.host, config.admin_port)).await?;
        let tls_listener = match config.tls_port {
            Some(port) => Some(TcpListener::bind((config.host, port)).await?),
            None => None,
        };
        let data_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Shared::new(config);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_stop, admin_stop_rx) = watch::channel(false);
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
        tasks.push(tokio::spawn(shoal_net::http::serve(
            admin_listener,
            admin::router(shared.clone()),
            None,
            shared.config.admin_limits,
            Arc::new(PlainAdmin),
            admin_stop_rx,
            ADMIN_GRACE,
        )));
        // One budget for both client ports: the limit is on clients, not
        // on each port.
        let connections = ConnectionBudget::new(shared.config.max_connections, REFUSAL_SEATS);
        let ports = [(Some(listener), None), (tls_listener, tls)];
        for (listener, tls) in ports.into_iter().filter_map(|(l, t)| Some((l?, t))) {
            tasks.push(tokio::spawn(shoal_net::accept_loop(
                listener,
                connections.clone(),
                shutdown_rx.clone(),
                serve_clients(shared.clone(), tls, shutdown_rx.clone()),
            )));
        }
        tracing::info!(%data_addr, ?tls_addr, %admin_addr, "proxy listening");
        Ok(Proxy {
            shared,
            data_addr,
            tls_addr,
            admin_addr,
            shutdown,
            admin_stop,
            tasks,
            connections,
        })
    }

    /// The client port's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The TLS client port's address, if it has one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
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
        let _ = self.admin_stop.send(true);
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The proxy's admin port has no TLS, so no handshake fails on it.
struct PlainAdmin;

impl HttpCounters for PlainAdmin {
    fn handshake_failed(&self) {}
}

/// Serves every accepted client in a session (after the TLS handshake on
/// the TLS port), counting it; a client beyond the limit is told so and
/// closed.
fn serve_clients(
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) -> impl FnMut(TcpStream, SocketAddr, Seat) -> BoxedConnection {
    move |tcp, _peer, seat| {
        let (shared, tls, shutdown) = (shared.clone(), tls.clone(), shutdown.clone());
        Box::pin(async move {
            let stats = &shared.stats;
            if seat.is_provisional() {
                stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                refuse(tcp).await;
                return;
            }
            let stream = match tls {
                None => Stream::Plain(tcp),
                Some(tls) => match tls.accept(tcp, shared.config.deadlines.request).await {
                    Ok(stream) => stream,
                    Err(_) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
            };
            stats.total_connections.fetch_add(1, Ordering::Relaxed);
            stats.curr_connections.fetch_add(1, Ordering::Relaxed);
            crate::session::serve(stream, shared.clone(), shutdown).await;
            stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
            drop(seat);
        })
    }
}

/// Tells a client beyond the limit so, briefly, and closes.
async fn refuse(mut tcp: TcpStream) {
    let told = tcp.write_all(TOO_MANY);
    let _ = tokio::time::timeout(Duration::from_millis(100), told).await;
}

/// A connection's future, boxed so the closure above has a nameable type.
type BoxedConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
