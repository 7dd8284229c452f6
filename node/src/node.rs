//! [`Node`]: the wiring — the one module that knows every layer. It opens
//! the store and bucket `default`, binds the data and admin ports, starts
//! the cluster manager and its loops, accepts clients (handing a
//! connection that opens a DCP stream from the data service to the
//! replication producer), and stops it all gracefully.
//!
//! [`Node::start`] returns as soon as both ports accept connections;
//! requests get "temporary failure" until warmup completes.
//! [`Node::shutdown`] stops accepting, closes connections, writes every
//! queued mutation of every bucket to disk and returns.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shoal_net::accept::SeatKind;
use shoal_net::http::HttpCounters;
use shoal_net::{ConnectionBudget, Seat, Stream, TlsAcceptor, TlsConnector, TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use shoal_auth::PasswordHash;

use crate::access::{Authenticator, ClusterSecret};
use crate::bucket::{open, BucketError, Buckets, LiveBucket, ServerStats, DEFAULT_BUCKET};
use crate::cluster_view::ClusterView;
use crate::config::{Credentials, NodeConfig};
use crate::manager::state::join_host_port;
use crate::manager::Manager;
use crate::server::{Handoff, Served};
use crate::transport::Transport;

/// How long shutdown waits for open connections to finish their batch.
const CONNECTION_GRACE: Duration = Duration::from_secs(10);

/// How long shutdown waits for the admin port's open responses.
const ADMIN_GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Binding or accepting failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// A bucket could not be opened, started or stopped.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The cluster manager could not start.
    #[error("cluster manager: {0}")]
    Manager(String),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    buckets: Arc<Buckets>,
    /// The cluster manager (`None` on a standalone node).
    manager: Option<Arc<Manager>>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// The TLS data port's and HTTPS admin port's addresses, when open.
    tls_addrs: TlsAddrs,
    /// Every admin port's server loop.
    admin: Vec<JoinHandle<()>>,
    view: Arc<ClusterView>,
    shutdown: watch::Sender<bool>,
    /// Every data port's accept loop.
    accept: Vec<JoinHandle<()>>,
    connections: ConnectionBudget,
    /// Checks credentials on every port; holds the cluster secret.
    auth: Arc<Authenticator>,
}

impl Node {
    /// Opens the data dir, creates bucket `default` if
    /// [`NodeConfig::default_bucket`] says so (starting its warmup) and
    /// binds the data and admin ports; returns as soon as they accept
    /// connections.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let store = open::open_store(&config)?;
        let secret = ClusterSecret::load_or_create(&config.data_dir)?;
        let auth = Arc::new(Authenticator::new(secret.clone()));
        let buckets = Arc::new(Buckets::new(store, open::settings(&config)));
        if config.default_bucket {
            buckets.create(open::default_spec(&config)).await?;
        }
        let tls = match &config.tls {
            Some(files) => Some(TlsAcceptor::from_files(files)?),
            None => None,
        };
        let ports = Listeners::bind(&config).await?;
        let addrs = ports.addrs()?;
        let advertised = config.advertised_host();
        let view = Arc::new(ClusterView::open(
            &config.data_dir,
            join_host_port(&advertised, addrs.data.port()),
            config.standalone,
        ));
        if config.standalone {
            view.publish_standalone(
                &advertised,
                addrs.data.port(),
                addrs.admin.port(),
                config.num_vbuckets,
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let manager = if config.standalone {
            None
        } else {
            let manager =
                start_manager(&config, &addrs, &buckets, &view, &secret, &shutdown_rx).await?;
            auth.set_directory(manager.clone());
            Some(manager)
        };
        let router = crate::admin::router(
            crate::admin::Services {
                buckets: buckets.clone(),
                view: view.clone(),
                manager: manager.clone(),
                auth: auth.clone(),
            },
            shutdown_rx.clone(),
        );
        let connections =
            ConnectionBudget::new(config.max_connections, config.max_system_connections);
        let stats = buckets.stats();
        stats
            .max_connections
            .store(connections.max_clients() as u64, Ordering::Relaxed);
        stats
            .max_system_connections
            .store(connections.max_system() as u64, Ordering::Relaxed);
        let served = Served {
            buckets: buckets.clone(),
            auth: auth.clone(),
            deadlines: config.deadlines,
            shutdown: shutdown_rx.clone(),
        };
        let (data_ports, admin_ports) = ports.split(tls.as_ref());
        let mut accept = Vec::new();
        let mut admin = Vec::new();
        for (listener, tls) in data_ports {
            let serve = serve_clients(served.clone(), tls);
            let loop_ =
                shoal_net::accept_loop(listener, connections.clone(), shutdown_rx.clone(), serve);
            accept.push(tokio::spawn(loop_));
        }
        let counters = Arc::new(AdminCounters(stats.clone()));
        for (listener, tls) in admin_ports {
            admin.push(tokio::spawn(shoal_net::http::serve(
                listener,
                router.clone(),
                tls,
                config.admin_limits,
                counters.clone(),
                shutdown_rx.clone(),
                ADMIN_GRACE,
            )));
        }
        tracing::info!(data_addr = %addrs.data, admin_addr = %addrs.admin, tls_data_addr = ?addrs.tls.data, https_addr = ?addrs.tls.admin, dir = %config.data_dir.display(), "node listening");
        Ok(Node {
            buckets,
            manager,
            data_addr: addrs.data,
            admin_addr: addrs.admin,
            tls_addrs: addrs.tls,
            admin,
            view,
            shutdown,
            accept,
            connections,
            auth,
        })
    }

    /// The TLS data port's address, when the node has one.
    pub fn tls_data_addr(&self) -> Option<SocketAddr> {
        self.tls_addrs.data
    }

    /// The HTTPS admin port's address, when the node has one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.tls_addrs.admin
    }

    /// The node's copy of the cluster secret (for harnesses that act as
    /// the cluster).
    pub fn cluster_secret(&self) -> &ClusterSecret {
        self.auth.secret()
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

    /// The cluster manager, unless standalone.
    pub fn manager(&self) -> Option<&Arc<Manager>> {
        self.manager.as_ref()
    }

    /// The node's buckets: create, delete, look up.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    /// Bucket `default`, if the node has one (for stats and tests).
    pub fn default_bucket(&self) -> Option<Arc<LiveBucket>> {
        self.buckets.get(DEFAULT_BUCKET)
    }

    /// Waits until every bucket the node has now has warmed up (or one
    /// failed).
    pub async fn ready(&self) -> Result<(), NodeError> {
        for name in self.buckets.names() {
            match self.buckets.ready(&name).await {
                // Deleted meanwhile: nothing to wait for.
                Err(BucketError::NoSuchBucket(_)) => {}
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
        for accept in self.accept {
            let _ = accept.await;
        }
        for admin in self.admin {
            // Each drains its own connections within the grace period.
            let _ = tokio::time::timeout(ADMIN_GRACE * 2, admin).await;
        }
        self.connections.drain(CONNECTION_GRACE).await;
        if let Some(manager) = &self.manager {
            manager.shutdown().await;
        }
        Ok(self.buckets.shutdown().await?)
    }
}

/// Starts the cluster manager, the loops that drive this node's buckets
/// from it (reconcile, auto-failover, clearing an interrupted rebalance),
/// and — if asked — forming or joining a cluster (in the background: a
/// joiner retries until the cluster answers). `ports` are the bound data
/// and admin ports.
async fn start_manager(
    config: &NodeConfig,
    addrs: &Addrs,
    buckets: &Arc<Buckets>,
    view: &Arc<ClusterView>,
    secret: &ClusterSecret,
    shutdown: &watch::Receiver<bool>,
) -> Result<Arc<Manager>, NodeError> {
    let me = crate::manager::NodePorts {
        data: addrs.data.port(),
        admin: addrs.admin.port(),
        tls_data: addrs.tls.data.map(|a| a.port()),
        tls_admin: addrs.tls.admin.map(|a| a.port()),
    };
    let transport = match &config.cluster_ca {
        Some(ca) => Transport::tls(TlsConnector::trusting(ca)?),
        None => Transport::plain(),
    };
    let manager = Manager::start(
        &config.data_dir,
        config.advertised_host(),
        me,
        node_memory_mb(config),
        secret.clone(),
        transport,
    )
    .await
    .map_err(|e| NodeError::Manager(e.to_string()))?;
    tokio::spawn(crate::manager::reconcile::run(
        manager.clone(),
        buckets.clone(),
        view.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::manager::autofailover::run(
        manager.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::manager::fence::run(
        manager.clone(),
        buckets.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::manager::rebalance::clear_leftovers(
        manager.clone(),
        shutdown.clone(),
    ));
    if config.init_cluster {
        let quota = initial_memory_quota(config)?;
        tokio::spawn(init_cluster(
            manager.clone(),
            config.credentials.clone(),
            quota,
        ));
    }
    if let (Some(url), Some(credentials)) = (config.join.clone(), config.credentials.clone()) {
        let manager = manager.clone();
        tokio::spawn(async move {
            let Credentials { username, password } = credentials;
            match manager.join(&url, &username, &password).await {
                Ok(()) => tracing::info!(%url, "joined the cluster"),
                Err(error) => tracing::error!(%error, %url, "could not join the cluster"),
            }
        });
    }
    Ok(manager)
}

/// The RAM this node may use, MiB: the host's (or its control group's),
/// or less if `--memory-limit-mb` says so.
fn node_memory_mb(config: &NodeConfig) -> Option<u64> {
    match (crate::host_memory::usable_mb(), config.memory_limit_mb) {
        (Some(host), Some(limit)) => Some(host.min(limit)),
        (host, limit) => host.or(limit),
    }
}

/// The memory quota a cluster this node initialises starts with:
/// `--memory-quota-mb`, refused over 80 % of the node's RAM, or half of
/// that RAM (at least the smallest quota accepted).
fn initial_memory_quota(config: &NodeConfig) -> Result<u64, NodeError> {
    use crate::manager::state::{max_quota_for, MAX_QUOTA_PERCENT_OF_RAM, MIN_MEMORY_QUOTA_MB};
    let memory = node_memory_mb(config);
    match (config.memory_quota_mb, memory) {
        (Some(quota), Some(memory)) if quota > max_quota_for(memory) => {
            Err(NodeError::Manager(format!(
                "--memory-quota-mb {quota} is more than {MAX_QUOTA_PERCENT_OF_RAM}% of this \
                 node's RAM ({memory} MB): at most {} MB",
                max_quota_for(memory)
            )))
        }
        (Some(quota), _) => Ok(quota),
        (None, Some(memory)) => Ok((memory / 2).max(MIN_MEMORY_QUOTA_MB)),
        (None, None) => Ok(MIN_MEMORY_QUOTA_MB),
    }
}

/// Initialises the cluster with `credentials` as its first admin user
/// (hashed off the async threads: the hash costs tens of milliseconds).
async fn init_cluster(manager: Arc<Manager>, credentials: Option<Credentials>, quota_mb: u64) {
    let admin = match credentials {
        Some(Credentials { username, password }) => {
            let hashed =
                tokio::task::spawn_blocking(move || PasswordHash::new(password.as_bytes())).await;
            match hashed {
                Ok(Ok(hash)) => Some((username, hash)),
                _ => {
                    tracing::error!("could not hash the admin password");
                    return;
                }
            }
        }
        None => None,
    };
    match manager.init_cluster(admin, quota_mb).await {
        Ok(()) => tracing::info!(id = manager.me().id, "cluster initialised"),
        Err(error) => tracing::error!(%error, "could not initialise the cluster"),
    }
}

/// The node's listening sockets: the data and admin ports, and the TLS
/// data port and HTTPS admin port when configured.
struct Listeners {
    data: TcpListener,
    admin: TcpListener,
    tls_data: Option<TcpListener>,
    tls_admin: Option<TcpListener>,
}

/// Where the node's ports are bound.
#[derive(Clone, Copy, Debug)]
struct Addrs {
    data: SocketAddr,
    admin: SocketAddr,
    tls: TlsAddrs,
}

/// Where the node's TLS ports are bound, when it has them.
#[derive(Clone, Copy, Debug, Default)]
struct TlsAddrs {
    data: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every configured port: data ports on `host`, admin ports on
    /// `admin_host` (or `host`).
    async fn bind(config: &NodeConfig) -> std::io::Result<Listeners> {
        let admin_host = config.admin_host.unwrap_or(config.host);
        let optional = |host, port: Option<u16>| async move {
            match port {
                Some(port) => TcpListener::bind((host, port)).await.map(Some),
                None => Ok(None),
            }
        };
        Ok(Listeners {
            data: TcpListener::bind((config.host, config.port)).await?,
            admin: TcpListener::bind((admin_host, config.admin_port)).await?,
            tls_data: optional(config.host, config.tls_port).await?,
            tls_admin: optional(admin_host, config.admin_tls_port).await?,
        })
    }

    fn addrs(&self) -> std::io::Result<Addrs> {
        let addr = |l: &Option<TcpListener>| l.as_ref().map(TcpListener::local_addr).transpose();
        Ok(Addrs {
            data: self.data.local_addr()?,
            admin: self.admin.local_addr()?,
            tls: TlsAddrs {
                data: addr(&self.tls_data)?,
                admin: addr(&self.tls_admin)?,
            },
        })
    }

    /// The data ports and the admin ports, each with the TLS it speaks
    /// (`None`: plaintext).
    fn split(self, tls: Option<&TlsAcceptor>) -> (Vec<Port>, Vec<Port>) {
        let with_tls = |listener: Option<TcpListener>| listener.map(|l| (l, tls.cloned()));
        let data = std::iter::once((self.data, None)).chain(with_tls(self.tls_data));
        let admin = std::iter::once((self.admin, None)).chain(with_tls(self.tls_admin));
        (data.collect(), admin.collect())
    }
}

/// A listening socket and the TLS it speaks (`None`: plaintext).
type Port = (TcpListener, Option<TlsAcceptor>);

/// Serves every client accepted on one data port (over TLS when `tls` is
/// given): the data service, and the replication producer for a
/// connection that opens a DCP stream.
fn serve_clients(
    served: Served,
    tls: Option<TlsAcceptor>,
) -> impl FnMut(TcpStream, SocketAddr, Seat) -> BoxedConnection {
    move |tcp, _peer, seat| {
        let stats = served.buckets.stats().clone();
        stats.total_connections.fetch_add(1, Ordering::Relaxed);
        stats.curr_connections.fetch_add(1, Ordering::Relaxed);
        let (served, tls) = (served.clone(), tls.clone());
        Box::pin(async move {
            let stream = match tls {
                None => Some(Stream::Plain(tcp)),
                Some(tls) => match tls.accept(tcp, served.deadlines.request).await {
                    Ok(stream) => Some(stream),
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                },
            };
            if let Some(stream) = stream {
                serve_connection(stream, seat, served).await;
            }
            stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
        })
    }
}

/// A connection's future, boxed so the closure above has a nameable type.
type BoxedConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One client connection: the data service until it ends, or until it
/// turns into a replica's DCP stream, which the producer serves. A
/// connection that proved it is the cluster counts as a system connection
/// while it lasts.
async fn serve_connection(stream: Stream, mut seat: Seat, served: Served) {
    let stats = served.buckets.stats().clone();
    let shutdown = served.shutdown.clone();
    let handoff = crate::server::serve(stream, &mut seat, served).await;
    if let Handoff::Dcp(dcp) = handoff {
        crate::replication::producer::serve(dcp.stream, dcp.bucket, dcp.buffered, shutdown).await;
    }
    if seat.kind() == SeatKind::System {
        // Counted up by the data service when the connection proved it is
        // the cluster.
        stats.system_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts what the admin ports turn away in the node's stats.
struct AdminCounters(Arc<ServerStats>);

impl HttpCounters for AdminCounters {
    fn handshake_failed(&self) {
        self.0
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
    }
}
