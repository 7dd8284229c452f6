//! The loop that makes a node match the metadata: after every applied
//! change it publishes each bucket's config, creates the buckets this node
//! should host, drives their vbucket states to its place in the map, and
//! deletes buckets the cluster no longer has here. A node the cluster has
//! ejected drops every bucket.
//!
//! Reconciling is idempotent and level-triggered — it looks at the whole
//! state, not the change — so a failed step is simply retried on the next
//! change or after a short pause.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::{BucketRecord, ClusterState, Membership};
use super::Meta;
use crate::cluster::{drive_vbuckets, ClusterView};
use crate::server::{BucketSpec, Buckets};

/// How soon a failed reconcile is retried without a new change.
const RETRY: Duration = Duration::from_secs(2);

/// Runs until `shutdown` flips.
pub async fn run(
    meta: Arc<Meta>,
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = meta.subscribe();
    loop {
        let state = changes.borrow_and_update().clone();
        let ok = reconcile(&meta, &buckets, &view, &state).await;
        let pause = async {
            if ok {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(RETRY).await;
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = pause => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// One pass; returns whether every step succeeded.
async fn reconcile(
    meta: &Meta,
    buckets: &Buckets,
    view: &ClusterView,
    state: &ClusterState,
) -> bool {
    let me = meta.me().id;
    let Some(record) = state.nodes.get(&me) else {
        if !state.nodes.is_empty() {
            // A cluster exists and this node is not (or no longer) in it:
            // whatever it holds is not the cluster's.
            return drop_all(buckets, view).await;
        }
        return true;
    };
    let mut ok = true;
    for bucket in state.buckets.values() {
        match state.bucket_config(bucket) {
            Some(config) => view.publish(&bucket.name, config.rev.unwrap_or(0), config.to_json()),
            None => {
                tracing::warn!(bucket = %bucket.name, "metadata holds a bucket with no valid config")
            }
        }
    }
    view.retain(|name| state.buckets.contains_key(name));
    for name in buckets.names() {
        let keep = state
            .buckets
            .get(&name)
            .is_some_and(|b| hosts(record.membership, b, me));
        if !keep {
            tracing::info!(bucket = %name, "deleting bucket no longer hosted here");
            if let Err(error) = buckets.delete(&name).await {
                tracing::error!(%error, bucket = %name, "could not delete bucket");
                ok = false;
            }
        }
    }
    for bucket in state.buckets.values() {
        if !hosts(record.membership, bucket, me) {
            continue;
        }
        let spec = BucketSpec {
            name: bucket.name.clone(),
            kind: bucket.kind,
            ram_quota_mb: bucket.ram_quota_mb as usize,
            num_vbuckets: bucket.num_vbuckets as usize,
        };
        let ctx = match buckets.create(spec).await {
            Ok(ctx) => ctx,
            Err(error) => {
                tracing::error!(%error, bucket = %bucket.name, "could not create bucket");
                ok = false;
                continue;
            }
        };
        let Some(map) = bucket.map() else { continue };
        let index = bucket
            .servers
            .iter()
            .position(|id| *id == me)
            .and_then(|i| u16::try_from(i).ok());
        let name = bucket.name.clone();
        let driven = tokio::task::spawn_blocking(move || drive_vbuckets(&ctx, &map, index)).await;
        match driven {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, bucket = %name, "could not set vbucket states");
                ok = false;
            }
            Err(_) => ok = false,
        }
    }
    ok
}

/// Whether a node with `membership` and id `me` hosts `bucket`.
fn hosts(membership: Membership, bucket: &BucketRecord, me: u64) -> bool {
    membership == Membership::Active && bucket.servers.contains(&me)
}

async fn drop_all(buckets: &Buckets, view: &ClusterView) -> bool {
    let mut ok = true;
    view.retain(|_| false);
    view.forget_adopted();
    for name in buckets.names() {
        tracing::info!(bucket = %name, "not a member of the cluster: deleting bucket");
        if let Err(error) = buckets.delete(&name).await {
            tracing::error!(%error, bucket = %name, "could not delete bucket");
            ok = false;
        }
    }
    ok
}
