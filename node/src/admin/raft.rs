//! The receiving side of Raft's transport (the cluster manager sends):
//! each endpoint hands the request to the local Raft and answers with the
//! serialized `Result`, so the sender sees the remote error as such. Only
//! the cluster reaches these (see `routes`); even so, a snapshot chunk is
//! bounded before Raft sees it, so no request can make the node allocate
//! more than [`MAX_SNAPSHOT`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{error, json, Admin};
use crate::manager::{Manager, NodeId, TypeConfig};

/// Decodes the body, runs `call` on this node's Raft, encodes the result.
async fn handle<Req, Resp, Fut>(
    admin: Admin,
    body: axum::body::Bytes,
    call: impl FnOnce(std::sync::Arc<Manager>, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    let Some(manager) = admin.manager else {
        return error(StatusCode::NOT_FOUND, "a standalone node runs no Raft");
    };
    let request: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed Raft RPC: {e}")),
    };
    let result = call(manager, request).await;
    match serde_json::to_string(&result) {
        Ok(text) => json(text),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

pub(super) async fn append(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    handle(
        admin,
        body,
        |manager, rpc: AppendEntriesRequest<TypeConfig>| async move {
            manager.raft().append_entries(rpc).await
        },
    )
    .await
}

pub(super) async fn vote(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    handle(
        admin,
        body,
        |manager, rpc: VoteRequest<NodeId>| async move { manager.raft().vote(rpc).await },
    )
    .await
}

/// The largest snapshot a node takes, bytes: the cluster metadata is a few
/// hundred KiB even for thousands of vbuckets; a chunk that would grow the
/// snapshot past this (an offset of 2^40, say) is refused before Raft
/// writes it into memory.
pub const MAX_SNAPSHOT: u64 = 64 * 1024 * 1024;

pub(super) async fn snapshot(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let request: InstallSnapshotRequest<TypeConfig> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed Raft RPC: {e}")),
    };
    let end = request.offset.checked_add(request.data.len() as u64);
    if end.is_none_or(|end| end > MAX_SNAPSHOT) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("snapshot chunk beyond {MAX_SNAPSHOT} bytes refused"),
        );
    }
    handle(
        admin,
        body,
        |manager, rpc: InstallSnapshotRequest<TypeConfig>| async move {
            manager.raft().install_snapshot(rpc).await
        },
    )
    .await
}
