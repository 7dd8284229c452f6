//! The read endpoints: `/pools`, `/pools/default` (`/pools/nodes`), the
//! bucket list and a bucket's config, tasks, rebalance progress,
//! auto-failover settings — and the config streams proxies and smart
//! clients follow (each document followed by `"\n\n\n\n"`, a bare
//! `"\n\n\n\n"` keep-alive every few seconds, the end when the bucket is
//! deleted or the node stops). Who may call each is in `routes`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream;

use super::{json, no_bucket, Admin, KEEPALIVE, SEPARATOR};
use crate::access::Principal;
use crate::bucket::DEFAULT_BUCKET;
use crate::cluster_view::Published;
use crate::manager::{Manager, Membership};
use crate::version::VERSION;

pub(super) async fn pools(Extension(principal): Extension<Principal>) -> Response {
    json(
        serde_json::json!({
            "pools": [{ "name": "default", "uri": "/pools/default", "streamingUri": "/poolsStreaming/default" }],
            "isAdminCreds": principal.is_admin(),
            "implementationVersion": concat!("shoal-", env!("CARGO_PKG_VERSION")),
        })
        .to_string(),
    )
}

/// `/pools/default` and `/pools/nodes`: the nodes with their membership
/// and health (each peer probed now, half a second at most), the Raft
/// roles, and where the buckets are.
pub(super) async fn pool_default(State(admin): State<Admin>) -> Response {
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
    let memory = admin
        .manager
        .as_ref()
        .map(|m| memory_totals(&m.state()))
        .unwrap_or_default();
    json(
        serde_json::json!({
            "name": "default",
            "memoryQuota": memory.quota_mb,
            "storageTotals": { "ram": memory.ram },
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

/// The memory quota and Couchbase's `storageTotals.ram`: the quota and
/// what the buckets take of it, per node and over the nodes that serve.
#[derive(Default)]
struct MemoryTotals {
    quota_mb: Option<u64>,
    ram: serde_json::Value,
}

fn memory_totals(state: &crate::manager::ClusterState) -> MemoryTotals {
    const MIB: u64 = 1024 * 1024;
    let serving = state
        .nodes
        .values()
        .filter(|n| n.membership == Membership::Active)
        .count() as u64;
    let total: u64 = state
        .nodes
        .values()
        .filter_map(|n| n.memory_mb)
        .map(|mb| mb * MIB)
        .sum();
    let per_node_quota = state.memory_quota_mb.unwrap_or(0) * MIB;
    let per_node_used = state.buckets_quota_mb() * MIB;
    MemoryTotals {
        quota_mb: state.memory_quota_mb,
        ram: serde_json::json!({
            "total": total,
            "quotaTotal": per_node_quota * serving,
            "quotaUsed": per_node_used * serving,
            "quotaTotalPerNode": per_node_quota,
            "quotaUsedPerNode": per_node_used,
        }),
    }
}

async fn cluster_nodes(admin: &Admin, manager: &Manager) -> serde_json::Value {
    let state = manager.state();
    let roles = manager.raft_roles();
    let me = manager.me().id;
    // Each node is asked for its alerts: answering is being healthy.
    let probes = state.nodes.values().map(|n| {
        let request = manager.peers().get(&n.admin_address(), "/internal/alerts");
        let local = n.id == me;
        async move {
            if local {
                return Some(local_alerts(admin));
            }
            let reply = request
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .ok()?;
            reply
                .error_for_status()
                .ok()?
                .json::<Vec<String>>()
                .await
                .ok()
        }
    });
    let probed = futures_util::future::join_all(probes).await;
    let nodes: Vec<serde_json::Value> = state
        .nodes
        .values()
        .zip(probed)
        .map(|(n, alerts)| {
            let up = alerts.is_some();
            serde_json::json!({
                "hostname": n.admin_address(),
                "otpNode": n.otp_node(),
                "clusterMembership": n.membership,
                "status": if up { "healthy" } else { "unhealthy" },
                "thisNode": n.id == me,
                "ports": { "direct": n.data_port },
                "version": VERSION,
                "raftRole": roles.get(&n.id).copied().unwrap_or("none"),
                "recoveryType": n.recovery.map_or("none", |r| r.as_str()),
                "memoryTotal": n.memory_mb.map(|mb| mb * 1024 * 1024),
                "alerts": alerts.unwrap_or_default(),
            })
        })
        .collect();
    serde_json::Value::Array(nodes)
}

/// What is wrong on this node that an operator must see: fencing, and
/// buckets whose disk writes fail, with why.
pub(super) fn local_alerts(admin: &Admin) -> Vec<String> {
    let fenced = admin.manager.as_ref().is_some_and(|m| m.fence.is_fenced());
    let fence = fenced.then(|| {
        "cut off from the majority of the cluster (or not caught up since): active vbuckets fenced"
            .to_string()
    });
    let disks = admin.buckets.names().into_iter().filter_map(|name| {
        let live = admin.buckets.get(&name)?;
        let why = live.flusher.stats().failing?;
        Some(format!("bucket {name}: disk writes failing: {why}"))
    });
    fence.into_iter().chain(disks).collect()
}

/// `GET /internal/alerts`: [`local_alerts`], for the node answering
/// `/pools/default`.
pub(super) async fn alerts(State(admin): State<Admin>) -> Response {
    json(serde_json::to_string(&local_alerts(&admin)).unwrap_or_default())
}

pub(super) async fn buckets(State(admin): State<Admin>) -> Response {
    let all = admin.view.all();
    let docs: Vec<&str> = all.values().map(|p| &*p.json).collect();
    json(format!("[{}]", docs.join(",")))
}

pub(super) async fn bucket(State(admin): State<Admin>, Path(bucket): Path<String>) -> Response {
    match admin.view.current(&bucket) {
        Some(p) => json(p.json.to_string()),
        None => no_bucket(&bucket),
    }
}

pub(super) async fn tasks(State(admin): State<Admin>) -> Response {
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
pub(super) fn rebalance_progress_body(manager: &crate::manager::Manager) -> String {
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
pub(super) async fn auto_failover(State(admin): State<Admin>) -> Response {
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

/// The config stream of one bucket: the current config at once, then one
/// document per change, keep-alives in between; it ends when the bucket
/// is deleted or the node stops.
pub(super) async fn bucket_stream(
    State(admin): State<Admin>,
    Path(bucket): Path<String>,
) -> Response {
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
