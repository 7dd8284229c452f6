//! The node's REST admin port, with Couchbase's paths and JSON shapes so
//! smart clients, moxi-style proxies and Couchbase tooling recognise it.
//!
//! Every route and who may call it is in `routes` (one table the router
//! is built from, enforced by one guard): `/pools` and a node's identity
//! are open; a bucket's config and config stream are open for a bucket
//! without a password; every other read needs an admin user (read-only
//! included), every change a full admin, every `/internal/*` call the
//! cluster secret. Reads (`pools`) answer from this node's applied
//! metadata, so any node serves them. Changes (`controller`, `users`) run
//! on the Raft leader; any other node forwards them there with the
//! caller's credentials. `internal` holds what nodes ask each other, and
//! `raft` carries Raft itself. Errors are JSON `{"error": "..."}` with the
//! right status.
//!
//! Layer: above the cluster manager, the cluster view and the bucket
//! runtime; only the wiring is above it. Must not import: `server`,
//! `replication` (it reaches them only through the manager), `node`.

mod controller;
mod internal;
mod pools;
mod raft;
mod recovery;
mod routes;
mod users;

pub use controller::{parse_bucket_form, BucketForm};
pub use routes::{routes, Access, Route};

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use shoal_auth::PasswordHash;
use tokio::sync::watch;

use crate::access::Authenticator;
use crate::bucket::Buckets;
use crate::cluster_view::ClusterView;
use crate::manager::{Manager, ManagerError, Rejection};

/// How often an idle config stream carries a keep-alive, so a proxy can
/// tell a quiet stream from a dead node (proxies give up after ~10 s).
pub const KEEPALIVE: Duration = Duration::from_secs(3);

/// Separator after every document on a config stream.
const SEPARATOR: &str = "\n\n\n\n";

/// What the admin port serves, from the layers below it.
#[derive(Clone, Debug)]
pub struct Services {
    /// The node's buckets.
    pub buckets: Arc<Buckets>,
    /// The configs the node serves.
    pub view: Arc<ClusterView>,
    /// The cluster manager; `None` on a standalone node.
    pub manager: Option<Arc<Manager>>,
    /// Checks credentials.
    pub auth: Arc<Authenticator>,
}

/// What the handlers share.
#[derive(Clone, Debug)]
struct Admin {
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    /// The cluster manager; `None` on a standalone node.
    manager: Option<Arc<Manager>>,
    /// Checks credentials.
    auth: Arc<Authenticator>,
    /// Ends config streams when the node stops (graceful shutdown waits
    /// for open responses, and a stream never ends by itself).
    shutdown: watch::Receiver<bool>,
    /// For forwarding changes to the leader and probing peers.
    http: reqwest::Client,
}

impl Admin {
    /// The password of bucket `name`: `None` for no such bucket,
    /// `Some(None)` for a bucket without one. From the cluster's metadata
    /// on a member (any node answers for any bucket), else from the
    /// node's own buckets.
    fn bucket_password(&self, name: &str) -> Option<Option<PasswordHash>> {
        match &self.manager {
            Some(manager) if manager.is_member() => manager
                .state()
                .buckets
                .get(name)
                .map(|b| b.spec.password.clone()),
            _ => self
                .buckets
                .get(name)
                .map(|live| live.access().password.clone()),
        }
    }
}

/// The admin API as a router, for the wiring to serve on the admin ports
/// (plain and HTTPS). Config streams end when `shutdown` flips.
pub fn router(services: Services, shutdown: watch::Receiver<bool>) -> Router {
    // With cluster TLS, calls to peers (forwarding to the leader, probing
    // nodes) trust the cluster's CA.
    let http = services
        .manager
        .as_ref()
        .map_or_else(
            || shoal_net::tls::http_client(None),
            |m| m.peers().transport().http_client(),
        )
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let admin = Admin {
        buckets: services.buckets,
        view: services.view,
        manager: services.manager,
        auth: services.auth,
        shutdown,
        http,
    };
    routed(admin)
}

/// The admin routes, from the table in `routes`, behind its guard.
fn routed(admin: Admin) -> Router {
    let router = routes::table()
        .into_iter()
        .fold(Router::new(), |router, (route, handler)| {
            router.route(route.path, handler)
        });
    router
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            routes::guard,
        ))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(admin)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn no_bucket(bucket: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("bucket {bucket:?} not found"),
    )
}

/// The response for a failed cluster-manager operation.
fn manager_error(e: ManagerError) -> Response {
    match e {
        ManagerError::Rejected(Rejection::NotFound(m)) => error(StatusCode::NOT_FOUND, &m),
        ManagerError::Rejected(Rejection::Conflict(m)) => error(StatusCode::CONFLICT, &m),
        ManagerError::Rejected(Rejection::Invalid(m)) => error(StatusCode::BAD_REQUEST, &m),
        ManagerError::NotLeader(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "leadership changed while handling the request; nothing was changed, retry",
        ),
        ManagerError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, &m),
        ManagerError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, &m),
    }
}
