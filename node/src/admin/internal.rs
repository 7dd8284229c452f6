//! The endpoints nodes call on each other (`/internal/*`, the cluster's
//! own; `routes` holds them to the cluster secret), and the one a node
//! outside any cluster answers to be let in (`/internal/join`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::{error, json, manager_error, no_bucket, Admin};
use crate::cluster_view::AdoptError;

/// `GET /internal/seqnos/<b>`: this node's high seqno of every vbucket of
/// bucket `b` it holds, `[[vbucket, seqno], …]` — what a failover asks the
/// survivors so it can promote the most up-to-date replica.
pub(super) async fn seqnos(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
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
pub(super) async fn vbuckets(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
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

/// `GET /internal/lease`: this node's applied log index, for the fencing
/// probes of the other voters (answering is being reachable).
pub(super) async fn lease(State(admin): State<Admin>) -> Response {
    match &admin.manager {
        Some(manager) => {
            json(serde_json::json!({ "applied": manager.applied_index() }).to_string())
        }
        None => error(StatusCode::CONFLICT, "a standalone node is in no cluster"),
    }
}

pub(super) async fn node_info(State(admin): State<Admin>) -> Response {
    match &admin.manager {
        Some(manager) => json(serde_json::to_string(manager.me()).unwrap_or_default()),
        None => error(
            StatusCode::CONFLICT,
            "a standalone node cannot join a cluster",
        ),
    }
}

/// Hands a node outside any cluster a config (tests and tools that build
/// maps themselves).
pub(super) async fn adopt(State(admin): State<Admin>, body: String) -> Response {
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

/// The body of `POST /internal/join`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Handoff {
    /// The cluster secret, 64 hex digits.
    secret: String,
    /// The token this node sent with its own `addNode`, if it asked.
    join_token: Option<String>,
}

/// `POST /internal/join`: the leader of a cluster adding this node hands
/// it the cluster secret. Refused by a node that already belongs to a
/// cluster, and by one that asked to join with another token.
pub(super) async fn join(State(admin): State<Admin>, Json(handoff): Json<Handoff>) -> Response {
    let Some(manager) = &admin.manager else {
        return error(
            StatusCode::CONFLICT,
            "a standalone node cannot join a cluster",
        );
    };
    let Some(secret) = shoal_auth::Secret::from_hex(&handoff.secret) else {
        return error(StatusCode::BAD_REQUEST, "secret: 64 hex digits expected");
    };
    match manager.accept_handoff(secret, handoff.join_token.as_deref()) {
        Ok(()) => json(serde_json::json!({ "joined": true }).to_string()),
        Err(e) => manager_error(e),
    }
}
