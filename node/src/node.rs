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

use shoal_accept::ConnectionCap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use shoal_auth::PasswordHash;

use crate::access::{Authenticator, ClusterSecret};
use crate::bucket::{open, BucketError, Buckets, LiveBucket, DEFAULT_BUCKET};
use crate::cluster_view::ClusterView;
use crate::config::{Credentials, NodeConfig};
use crate::manager::state::join_host_port;
use crate::manager::Manager;
use crate::server::Handoff;

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
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    buckets: Arc<Buckets>,
    /// The cluster manager (`None` on a standalone node).
    manager: Option<Arc<Manager>>,
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: JoinHandle<()>,
    view: Arc<ClusterView>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    connections: ConnectionCap,
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
        let listener = TcpListener::bind((config.host, config.port)).await?;
        let data_addr = listener.local_addr()?;
        let admin_host = config.admin_host.unwrap_or(config.host);
        let admin_listener = TcpListener::bind((admin_host, config.admin_port)).await?;
        let admin_addr = admin_listener.local_addr()?;
        let advertised = config.advertised_host();
        let view = Arc::new(ClusterView::open(
            &config.data_dir,
            join_host_port(&advertised, data_addr.port()),
            config.standalone,
        ));
        if config.standalone {
            view.publish_standalone(
                &advertised,
                data_addr.port(),
                admin_addr.port(),
                config.num_vbuckets,
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let connections = ConnectionCap::new(config.max_connections);
        let manager = if config.standalone {
            None
        } else {
            let ports = (data_addr.port(), admin_addr.port());
            let manager =
                start_manager(&config, ports, &buckets, &view, &secret, &shutdown_rx).await?;
            auth.set_directory(manager.clone());
            Some(manager)
        };
        let admin = tokio::spawn(crate::admin::serve(
            admin_listener,
            crate::admin::Services {
                buckets: buckets.clone(),
                view: view.clone(),
                manager: manager.clone(),
                auth: auth.clone(),
            },
            shutdown_rx.clone(),
        ));
        let accept = tokio::spawn(shoal_accept::accept_loop(
            listener,
            connections.clone(),
            shutdown_rx.clone(),
            serve_clients(buckets.clone(), auth.clone(), shutdown_rx),
        ));
        tracing::info!(%data_addr, %admin_addr, dir = %config.data_dir.display(), "node listening");
        Ok(Node {
            buckets,
            manager,
            data_addr,
            admin_addr,
            admin,
            view,
            shutdown,
            accept,
            connections,
            auth,
        })
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
        let _ = self.accept.await;
        let _ = tokio::time::timeout(ADMIN_GRACE, self.admin).await;
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
    ports: (u16, u16),
    buckets: &Arc<Buckets>,
    view: &Arc<ClusterView>,
    secret: &ClusterSecret,
    shutdown: &watch::Receiver<bool>,
) -> Result<Arc<Manager>, NodeError> {
    let (data_port, admin_port) = ports;
    let manager = Manager::start(
        &config.data_dir,
        config.advertised_host(),
        data_port,
        admin_port,
        secret.clone(),
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
    tokio::spawn(crate::manager::rebalance::clear_leftovers(
        manager.clone(),
        shutdown.clone(),
    ));
    if config.init_cluster {
        tokio::spawn(init_cluster(manager.clone(), config.credentials.clone()));
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

/// Initialises the cluster with `credentials` as its first admin user
/// (hashed off the async threads: the hash costs tens of milliseconds).
async fn init_cluster(manager: Arc<Manager>, credentials: Option<Credentials>) {
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
    match manager.init_cluster(admin).await {
        Ok(()) => tracing::info!(id = manager.me().id, "cluster initialised"),
        Err(error) => tracing::error!(%error, "could not initialise the cluster"),
    }
}

/// Serves every accepted client: the data service, and the replication
/// producer for a connection that opens a DCP stream.
fn serve_clients(
    buckets: Arc<Buckets>,
    auth: Arc<Authenticator>,
    shutdown: watch::Receiver<bool>,
) -> impl FnMut(TcpStream, SocketAddr) -> BoxedConnection {
    let stats = buckets.stats().clone();
    move |stream, _peer| {
        stats.total_connections.fetch_add(1, Ordering::Relaxed);
        stats.curr_connections.fetch_add(1, Ordering::Relaxed);
        let (buckets, stats, shutdown) = (buckets.clone(), stats.clone(), shutdown.clone());
        let auth = auth.clone();
        Box::pin(async move {
            serve_connection(stream, buckets, auth, shutdown).await;
            stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
        })
    }
}

/// A connection's future, boxed so the closure above has a nameable type.
type BoxedConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One client connection: the data service until it ends, or until it
/// turns into a replica's DCP stream, which the producer serves.
async fn serve_connection(
    stream: TcpStream,
    buckets: Arc<Buckets>,
    auth: Arc<Authenticator>,
    shutdown: watch::Receiver<bool>,
) {
    let served = crate::server::serve(stream, buckets, auth, shutdown.clone()).await;
    if let Some(Handoff::Dcp(dcp)) = served {
        crate::replication::producer::serve(dcp.stream, dcp.bucket, dcp.buffered, shutdown).await;
    }
}
