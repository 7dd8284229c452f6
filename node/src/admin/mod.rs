//! The node's REST admin port, with Couchbase's paths and JSON shapes so
//! smart clients, moxi-style proxies and Couchbase tooling recognise it.
//!
//! Reads (`/pools`, `/pools/default`, `/pools/nodes`,
//! `/pools/default/buckets[/<b>]`, `/pools/default/b/<b>`, `/tasks`) answer
//! from this node's applied metadata, so any node serves them. The config
//! streams `/pools/default/bucketsStreaming/<b>` and `/pools/default/bs/<b>`
//! send a document on every map change, each followed by `"\n\n\n\n"`, and
//! a bare `"\n\n\n\n"` keep-alive every few seconds. Changes (bucket
//! create/delete, `/controller/addNode`, `/controller/ejectNode`) run on
//! the Raft leader; any other node forwards them there (`controller`).
//! `/internal/raft/*` carries Raft itself, `/internal/nodeInfo` tells a
//! leader who a joining node is, and `POST /internal/bucketConfig` hands a
//! config to a node outside any cluster. Errors are JSON
//! `{"error": "..."}` with the right status.
//!
//! Layer: above the cluster manager, the cluster view and the bucket
//! runtime; only the wiring is above it. Must not import: `server`,
//! `replication` (it reaches them only through the manager), `node`.

mod controller;
mod raft;

pub use controller::parse_bucket_form;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bucket::{Buckets, DEFAULT_BUCKET};
use crate::cluster_view::{AdoptError, ClusterView, Published};
use crate::manager::{Manager, Membership};
use crate::version::VERSION;

/// How often an idle config stream carries a keep-alive, so a proxy can
/// tell a quiet stream from a dead node (proxies give up after ~10 s).
pub const KEEPALIVE: Duration = Duration::from_secs(3);

/// Separator after every document on a config stream.
const SEPARATOR: &str = "\n\n\n\n";

/// What the handlers share.
#[derive(Clone, Debug)]
struct Admin {
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    /// The metadata service; `None` on a standalone node.
    manager: Option<Arc<Manager>>,
    /// Ends config streams when the node stops (graceful shutdown waits
    /// for open responses, and a stream never ends by itself).
    shutdown: watch::Receiver<bool>,
    /// For forwarding changes to the leader and probing peers.
    http: reqwest::Client,
}

/// Serves the admin API on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    manager: Option<Arc<Manager>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let admin = Admin {
        buckets,
        view,
        manager,
        shutdown: shutdown.clone(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
    };
    let result = axum::serve(listener, router(admin))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin server failed");
    }
}

/// The admin routes.
fn router(admin: Admin) -> Router {
    Router::new()
        .route("/pools", get(pools))
        .route("/pools/default", get(pool_default))
        .route("/pools/nodes", get(pool_default))
        .route(
            "/pools/default/buckets",
            get(buckets).post(controller::create_bucket),
        )
        .route(
            "/pools/default/buckets/{bucket}",
            get(bucket).delete(controller::delete_bucket),
        )
        .route("/pools/default/b/{bucket}", get(bucket))
        .route(
            "/pools/default/bucketsStreaming/{bucket}",
            get(bucket_stream),
        )
        .route("/pools/default/bs/{bucket}", get(bucket_stream))
        .route("/pools/default/tasks", get(tasks))
        .route("/controller/addNode", post(controller::add_node))
        .route("/controller/ejectNode", post(controller::eject_node))
        .route("/controller/failOver", post(controller::fail_over))
        .route("/controller/rebalance", post(controller::rebalance))
        .route(
            "/controller/stopRebalance",
            post(controller::stop_rebalance),
        )
        .route(
            "/pools/default/rebalanceProgress",
            get(controller::rebalance_progress),
        )
        .route(
            "/settings/autoFailover",
            get(auto_failover).post(controller::set_auto_failover),
        )
        .route("/internal/bucketConfig", post(adopt))
        .route("/internal/nodeInfo", get(node_info))
        .route("/internal/seqnos/{bucket}", get(seqnos))
        .route("/internal/vbuckets/{bucket}", get(vbuckets))
        .route("/internal/raft/append", post(raft::append))
        .route("/internal/raft/vote", post(raft::vote))
        .route("/internal/raft/snapshot", post(raft::snapshot))
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

async fn pools() -> Response {
    json(
        serde_json::json!({
            "pools": [{ "name": "default", "uri": "/pools/default", "streamingUri": "/poolsStreaming/default" }],
            "isAdminCreds": true,
            "implementationVersion": concat!("shoal-", env!("CARGO_PKG_VERSION")),
        })
        .to_string(),
    )
}

/// `/pools/default` and `/pools/nodes`: the nodes with their membership
/// and health (each peer probed now, half a second at most), the Raft
/// roles, and where the buckets are.
async fn pool_default(State(admin): State<Admin>) -> Response {
    let nodes = match &admin.manager {
        Some(manager) if manager.is_member() => cluster_nodes(&admin, manager).await,
        _ => {
            // Outside a cluster: the nodes of the config being served.
            admin
                .view
                .current(DEFAULT_BUCKET)
                .and_then(|p| shoal_vbmap::config::BucketConfig::parse(&p.json).ok())
                .map(|c| serde_json::to_value(&c.nodes).unwrap_or_default())
                .unwrap_or_else(|| serde_json::json!([]))
        }
    };
    let leader = admin
        .manager
        .as_ref()
        .and_then(|m| m.leader())
        .map(|(id, _)| id);
    let balanced = admin.manager.as_ref().is_none_or(|m| {
        m.state()
            .nodes
            .values()
            .all(|n| n.membership == Membership::Active)
    });
    json(
        serde_json::json!({
            "name": "default",
            "nodes": nodes,
            "buckets": { "uri": "/pools/default/buckets" },
            "rebalanceStatus": "none",
            "balanced": balanced,
            "raftLeader": leader,
            "raftTerm": admin.manager.as_ref().map(|m| m.term()),
        })
        .to_string(),
    )
}

async fn cluster_nodes(admin: &Admin, manager: &Manager) -> serde_json::Value {
    let state = manager.state();
    let roles = manager.raft_roles();
    let me = manager.me().id;
    let probes = state.nodes.values().map(|n| {
        let url = format!("http://{}/internal/nodeInfo", n.admin_address());
        let http = admin.http.clone();
        let local = n.id == me;
        async move {
            if local {
                return true;
            }
            http.get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    });
    let healthy = futures_util::future::join_all(probes).await;
    let nodes: Vec<serde_json::Value> = state
        .nodes
        .values()
        .zip(healthy)
        .map(|(n, up)| {
            serde_json::json!({
                "hostname": n.admin_address(),
                "otpNode": n.otp_node(),
                "clusterMembership": n.membership,
                "status": if up { "healthy" } else { "unhealthy" },
                "thisNode": n.id == me,
                "ports": { "direct": n.data_port },
                "version": VERSION,
                "raftRole": roles.get(&n.id).copied().unwrap_or("none"),
            })
        })
        .collect();
    serde_json::Value::Array(nodes)
}

async fn buckets(State(admin): State<Admin>) -> Response {
    let all = admin.view.all();
    let docs: Vec<&str> = all.values().map(|p| &*p.json).collect();
    json(format!("[{}]", docs.join(",")))
}

fn no_bucket(bucket: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("bucket {bucket:?} not found"),
    )
}

async fn bucket(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    match admin.view.current(&bucket) {
        Some(p) => json(p.json.to_string()),
        None => no_bucket(&bucket),
    }
}

async fn tasks(State(admin): State<Admin>) -> Response {
    let status = admin
        .manager
        .as_ref()
        .map(|m| m.rebalancer.status())
        .unwrap_or_default();
    let task = if status.running {
        serde_json::json!({
            "type": "rebalance",
            "status": "running",
            "bucket": status.bucket,
            "phase": status.phase,
            "progress": progress_percent(&status),
        })
    } else {
        let mut task = serde_json::json!({ "type": "rebalance", "status": "notRunning" });
        if let Some(e) = &status.error {
            task["errorMessage"] = serde_json::Value::from(e.as_str());
        }
        task
    };
    json(serde_json::json!([task]).to_string())
}

/// The body of `GET /pools/default/rebalanceProgress` on the leader (the
/// route forwards there): `{"status": "running", ...}` while its rebalance
/// runs, else `{"status": "none"}` (with `errorMessage` when the last one
/// failed or was stopped, and the last one's duration).
pub(crate) fn rebalance_progress_body(manager: &crate::manager::Manager) -> String {
    let status = manager.rebalancer.status();
    let body = if status.running {
        serde_json::json!({
            "status": "running",
            "bucket": status.bucket,
            "phase": status.phase,
            "bucketsDone": status.done,
            "bucketsTotal": status.total,
            "vbucketsDone": status.vbuckets_done,
            "vbucketsTotal": status.vbuckets_total,
            "progress": progress_percent(&status),
        })
    } else {
        let mut body = serde_json::json!({ "status": "none" });
        if let Some(e) = &status.error {
            body["errorMessage"] = serde_json::Value::from(e.as_str());
        }
        if let Some(d) = status.last_duration {
            body["lastDurationSeconds"] = serde_json::Value::from(d.as_secs_f64());
        }
        body
    };
    body.to_string()
}

/// Buckets done (the current one by its vbuckets moved), as a
/// percentage.
fn progress_percent(status: &crate::manager::rebalance::RebalanceStatus) -> f64 {
    if status.total == 0 {
        return 0.0;
    }
    let current = if status.vbuckets_total == 0 {
        0.0
    } else {
        status.vbuckets_done as f64 / status.vbuckets_total as f64
    };
    100.0 * (status.done as f64 + current) / status.total as f64
}

/// `GET /settings/autoFailover`.
async fn auto_failover(State(admin): State<Admin>) -> Response {
    let settings = admin
        .manager
        .as_ref()
        .map(|m| m.state().auto_failover)
        .unwrap_or_default();
    json(
        serde_json::json!({
            "enabled": settings.enabled,
            "timeout": settings.timeout_s,
            "maxCount": 1,
        })
        .to_string(),
    )
}

/// `GET /internal/seqnos/<b>`: this node's high seqno of every vbucket of
/// bucket `b` it holds, `[[vbucket, seqno], …]` — what a failover asks the
/// survivors so it can promote the most up-to-date replica.
async fn seqnos(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    let Some(ctx) = admin.buckets.get(&bucket) else {
        return no_bucket(&bucket);
    };
    let n = ctx.engine.config().num_vbuckets;
    let pairs: Vec<(u16, u64)> = (0..n)
        .filter_map(|vb| {
            let vb = u16::try_from(vb).ok()?;
            Some((vb, ctx.engine.high_seqno(vb)?))
        })
        .collect();
    json(serde_json::to_string(&pairs).unwrap_or_default())
}

/// `GET /internal/vbuckets/<b>`: `[vbucket, state, high seqno]` of every
/// vbucket of bucket `b` here (state as SET_VBUCKET numbers it: 1 active,
/// 2 replica, 3 pending, 4 dead). A rebalance watches it to see copies
/// catch up, a takeover to see the old active let go.
async fn vbuckets(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    let Some(ctx) = admin.buckets.get(&bucket) else {
        return no_bucket(&bucket);
    };
    let n = ctx.engine.config().num_vbuckets;
    let rows: Vec<(u16, u32, u64)> = (0..n)
        .filter_map(|vb| {
            let vb = u16::try_from(vb).ok()?;
            let state = ctx.engine.vbucket_state(vb)?;
            Some((vb, state.to_wire(), ctx.engine.high_seqno(vb)?))
        })
        .collect();
    json(serde_json::to_string(&rows).unwrap_or_default())
}

async fn node_info(State(admin): State<Admin>) -> Response {
    match &admin.manager {
        Some(manager) => json(serde_json::to_string(manager.me()).unwrap_or_default()),
        None => error(
            StatusCode::CONFLICT,
            "a standalone node cannot join a cluster",
        ),
    }
}

/// The config stream of one bucket: the current config at once, then one
/// document per change, keep-alives in between; it ends when the bucket
/// is deleted or the node stops.
async fn bucket_stream(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    if admin.view.current(&bucket).is_none() {
        return no_bucket(&bucket);
    }
    let rx = admin.view.subscribe();
    let seen: Option<Arc<Published>> = None;
    let body = stream::unfold(
        (rx, admin.shutdown, seen, bucket),
        |(mut rx, mut stop, seen, bucket)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                // Deleted: end the stream so clients look elsewhere.
                let current = rx.borrow_and_update().get(&bucket).cloned()?;
                if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                    let chunk = format!("{}{SEPARATOR}", current.json);
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                        (rx, stop, Some(current), bucket),
                    ));
                }
                let next = tokio::select! {
                    next = tokio::time::timeout(KEEPALIVE, rx.changed()) => next,
                    _ = stop.changed() => return None,
                };
                match next {
                    // Some bucket changed: look at ours again.
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((Ok(Bytes::from(SEPARATOR)), (rx, stop, seen, bucket))),
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Hands a node outside any cluster a config (tests and tools that build
/// maps themselves).
async fn adopt(State(admin): State<Admin>, body: String) -> Response {
    if admin.manager.as_ref().is_some_and(|m| m.is_member()) {
        return error(StatusCode::CONFLICT, &AdoptError::Managed.to_string());
    }
    let result = tokio::task::spawn_blocking(move || admin.view.adopt(&admin.buckets, &body)).await;
    match result {
        Ok(Ok(adopted)) => json(serde_json::json!({ "adopted": adopted }).to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "adopting the config failed",
        ),
    }
}
