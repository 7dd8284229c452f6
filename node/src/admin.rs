//! The node's REST admin port, with Couchbase's paths and JSON shapes so
//! smart clients, moxi-style proxies and Couchbase tooling recognise it:
//! `/pools`, `/pools/default`, `/pools/default/buckets[/<b>]`,
//! `/pools/default/b/<b>`, and the config streams
//! `/pools/default/bucketsStreaming/<b>` and `/pools/default/bs/<b>` (a
//! document on every map change, each followed by `"\n\n\n\n"`, and a bare
//! `"\n\n\n\n"` keep-alive every few seconds).
//!
//! `POST /internal/bucketConfig` hands the node a new config (the cluster
//! manager's job; `shoal up` does it until the replicated metadata lands).
//! Errors are JSON `{"error": "..."}` with the right status.

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

use crate::cluster::{ClusterView, Published};
use crate::server::context::Context;
use crate::server::DEFAULT_BUCKET;

/// How often an idle config stream carries a keep-alive, so a proxy can
/// tell a quiet stream from a dead node (proxies give up after ~10 s).
pub const KEEPALIVE: Duration = Duration::from_secs(3);

/// Separator after every document on a config stream.
const SEPARATOR: &str = "\n\n\n\n";

/// What the handlers share.
#[derive(Clone, Debug)]
struct Admin {
    ctx: Arc<Context>,
    view: Arc<ClusterView>,
    /// Ends config streams when the node stops (graceful shutdown waits
    /// for open responses, and a stream never ends by itself).
    shutdown: watch::Receiver<bool>,
}

/// Serves the admin API on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    view: Arc<ClusterView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(ctx, view, shutdown.clone());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin server failed");
    }
}

/// The admin routes.
fn router(ctx: Arc<Context>, view: Arc<ClusterView>, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/pools", get(pools))
        .route("/pools/default", get(pool_default))
        .route("/pools/default/buckets", get(buckets))
        .route("/pools/default/buckets/{bucket}", get(bucket))
        .route("/pools/default/b/{bucket}", get(bucket))
        .route(
            "/pools/default/bucketsStreaming/{bucket}",
            get(bucket_stream),
        )
        .route("/pools/default/bs/{bucket}", get(bucket_stream))
        .route("/internal/bucketConfig", post(adopt))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(Admin {
            ctx,
            view,
            shutdown,
        })
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

async fn pool_default(State(admin): State<Admin>) -> Response {
    let nodes = admin
        .view
        .current()
        .and_then(|p| shoal_vbmap::config::BucketConfig::parse(&p.json).ok())
        .map(|c| serde_json::to_value(&c.nodes).unwrap_or_default())
        .unwrap_or_else(|| serde_json::json!([]));
    json(
        serde_json::json!({
            "name": "default",
            "nodes": nodes,
            "buckets": { "uri": "/pools/default/buckets" },
        })
        .to_string(),
    )
}

async fn buckets(State(admin): State<Admin>) -> Response {
    match admin.view.current() {
        Some(p) => json(format!("[{}]", p.json)),
        None => json("[]".to_string()),
    }
}

/// The reply for a bucket this node does not serve, if it is one.
fn unknown(bucket: &str) -> Option<Response> {
    (bucket != DEFAULT_BUCKET).then(|| error(StatusCode::NOT_FOUND, "no such bucket"))
}

async fn bucket(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    if let Some(r) = unknown(&bucket) {
        return r;
    }
    match admin.view.current() {
        Some(p) => json(p.json.to_string()),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no bucket config yet",
        ),
    }
}

async fn bucket_stream(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    if let Some(r) = unknown(&bucket) {
        return r;
    }
    let mut rx = admin.view.subscribe();
    // The first poll sends whatever is current, marked seen.
    rx.mark_changed();
    let body = stream::unfold((rx, admin.shutdown), |(mut rx, mut stop)| async move {
        if *stop.borrow() {
            return None;
        }
        let next = tokio::select! {
            next = tokio::time::timeout(KEEPALIVE, rx.changed()) => next,
            _ = stop.changed() => return None,
        };
        let chunk = match next {
            Ok(Ok(())) => {
                let current: Option<Arc<Published>> = rx.borrow_and_update().clone();
                match current {
                    Some(p) => format!("{}{SEPARATOR}", p.json),
                    None => SEPARATOR.to_string(),
                }
            }
            // The view is gone: the node is stopping; end the stream.
            Ok(Err(_)) => return None,
            Err(_) => SEPARATOR.to_string(),
        };
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
            (rx, stop),
        ))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn adopt(State(admin): State<Admin>, body: String) -> Response {
    let result = tokio::task::spawn_blocking(move || admin.view.adopt(&admin.ctx, &body)).await;
    match result {
        Ok(Ok(adopted)) => json(serde_json::json!({ "adopted": adopted }).to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "adopting the config failed",
        ),
    }
}
