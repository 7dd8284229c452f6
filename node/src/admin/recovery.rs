//! Taking nodes out and back in without losing anything, Couchbase's way:
//! `POST /controller/startGracefulFailover` (a healthy node hands its
//! actives to their replicas, then is failed over) and
//! `POST /controller/setRecoveryType` (a failed-over node is to come back
//! by delta or full recovery at the next rebalance); and the cluster's
//! memory quota, `POST /pools/default memoryQuota=`. All of them change
//! the cluster, so they run on the leader and need a full admin.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::controller::{find_node, form, on_leader, Incoming};
use super::{error, manager_error, Admin};
use crate::manager::state::Recovery;
use crate::manager::Command;

/// `POST /controller/startGracefulFailover` with `otpNode=` (an otpNode or
/// `host:adminport`): starts it and answers at once; progress is in
/// `/pools/default/rebalanceProgress`.
pub(super) async fn graceful_failover(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let node = match find_node(&manager, &form(&body)) {
            Ok(node) => node,
            Err(response) => return response,
        };
        match manager.start_graceful_failover(node.id) {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /controller/setRecoveryType` with `otpNode=` and
/// `recoveryType=delta|full`.
pub(super) async fn set_recovery_type(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let node = match find_node(&manager, &form) {
            Ok(node) => node,
            Err(response) => return response,
        };
        let recovery = match form.get("recoveryType").map(String::as_str) {
            Some("delta") => Recovery::Delta,
            Some("full") => Recovery::Full,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "recoveryType must be delta or full",
                )
            }
        };
        let command = Command::SetRecovery {
            id: node.id,
            recovery: Some(recovery),
        };
        match manager.write(command).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `POST /pools/default` with `memoryQuota=<MiB>` (Couchbase's cluster
/// settings; the only one Shoal has).
pub(super) async fn set_pool(State(admin): State<Admin>, incoming: Incoming) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let Some(text) = form.get("memoryQuota") else {
            return error(StatusCode::BAD_REQUEST, "memoryQuota is required");
        };
        let Ok(quota) = text.parse::<u64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("memoryQuota must be a whole number of MB (got {text:?})"),
            );
        };
        match manager.write(Command::SetMemoryQuota(quota)).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}
