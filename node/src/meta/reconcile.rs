//! The loop that makes a node match the metadata: after every applied
//! change it publishes each bucket's config, creates the buckets this node
//! should host, drives their vbucket states to its place in the map, and
//! deletes buckets the cluster no longer has here. A node the cluster has
//! ejected drops every bucket. It also points replication at the map: the
//! streams this node's replica vbuckets pull from their actives, and the
//! replicas each of its active vbuckets waits for (durable writes).
//!
//! Reconciling is idempotent and level-triggered — it looks at the whole
//! state, not the change — so a failed step is simply retried on the next
//! change or after a short pause. The UUID of every bucket hosted here is
//! kept in `raft/hosted.json`: a bucket deleted and created again under the
//! same name (even while this node was down) has a new UUID, and its old
//! data is deleted before the new bucket is created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::Durability;
use super::state::{BucketRecord, ClusterState, Membership};
use super::Meta;
use crate::cluster::{drive_vbuckets, ClusterView};
use crate::replication::consumer::Replicator;
use crate::server::{BucketSpec, Buckets, Context};

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
    let mut hosted = Hosted::load(meta.dir());
    let replicator = Replicator::new(super::state::join_host_port(
        &meta.me().host,
        meta.me().data_port,
    ));
    let sides = Sides {
        buckets: &buckets,
        view: &view,
        replicator: &replicator,
    };
    loop {
        let state = changes.borrow_and_update().clone();
        let ok = reconcile(&meta, &sides, &state, &mut hosted).await;
        let pause = async {
            if ok {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(RETRY).await;
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = pause => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    replicator.stop_all();
}

/// What reconciling drives besides the metadata.
struct Sides<'a> {
    buckets: &'a Buckets,
    view: &'a ClusterView,
    replicator: &'a Replicator,
}

/// One pass; returns whether every step succeeded.
async fn reconcile(
    meta: &Meta,
    sides: &Sides<'_>,
    state: &ClusterState,
    hosted: &mut Hosted,
) -> bool {
    let Sides {
        buckets,
        view,
        replicator,
    } = *sides;
    let me = meta.me().id;
    let Some(record) = state.nodes.get(&me) else {
        if !state.nodes.is_empty() {
            // A cluster exists and this node is not (or no longer) in it:
            // whatever it holds is not the cluster's.
            hosted.forget_all();
            replicator.stop_all();
            return drop_all(buckets, view).await;
        }
        return true;
    };
    let mut ok = true;
    view.retain(|name| state.buckets.contains_key(name));
    // Local buckets and data the state does not want here, or wants with
    // another UUID (a new bucket under an old name).
    let mut names = buckets.names();
    names.extend(hosted.uuids.keys().cloned());
    names.sort();
    names.dedup();
    for name in names {
        let keep = state.buckets.get(&name).is_some_and(|b| {
            hosts(record.membership, b, me) && hosted.uuids.get(&name).is_none_or(|u| *u == b.uuid)
        });
        if !keep {
            tracing::info!(bucket = %name, "deleting bucket no longer hosted here");
            replicator.stop_bucket(&name);
            match buckets.delete(&name).await {
                Ok(_) => hosted.forget(&name),
                Err(error) => {
                    tracing::error!(%error, bucket = %name, "could not delete bucket");
                    ok = false;
                }
            }
        }
    }
    for bucket in state.buckets.values() {
        // A bucket hosted here is published only once this node serves it
        // as the config says, so whoever reads the config here can use it.
        if hosts(record.membership, bucket, me)
            && (!hosted.record(&bucket.name, &bucket.uuid)
                || !host(buckets, replicator, state, bucket, me).await)
        {
            ok = false;
            continue;
        }
        match state.bucket_config(bucket) {
            Some(config) => view.publish(&bucket.name, config.rev.unwrap_or(0), config.to_json()),
            None => {
                tracing::warn!(bucket = %bucket.name, "metadata holds a bucket with no valid config")
            }
        }
    }
    ok
}

/// Creates `bucket` here if needed, sets its vbucket states from the map
/// and points its replication at the map; returns whether all worked.
async fn host(
    buckets: &Buckets,
    replicator: &Replicator,
    state: &ClusterState,
    bucket: &BucketRecord,
    me: u64,
) -> bool {
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
            return false;
        }
    };
    let Some(map) = bucket.map() else {
        return true;
    };
    let index = bucket
        .servers
        .iter()
        .position(|id| *id == me)
        .and_then(|i| u16::try_from(i).ok());
    let name = bucket.name.clone();
    let driven = {
        let (ctx, map) = (ctx.clone(), map.clone());
        tokio::task::spawn_blocking(move || drive_vbuckets(&ctx, &map, index)).await
    };
    match driven {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, bucket = %name, "could not set vbucket states");
            return false;
        }
        Err(_) => return false,
    }
    replicate(replicator, state, bucket, &ctx, &map, index);
    true
}

/// Sets, from the map, the replicas each vbucket active here waits for and
/// the actives this node's replica vbuckets stream from.
fn replicate(
    replicator: &Replicator,
    state: &ClusterState,
    bucket: &BucketRecord,
    ctx: &Arc<Context>,
    map: &shoal_vbmap::map::VbucketMap,
    me: Option<u16>,
) {
    let address = |idx: Option<u16>| {
        let id = bucket.servers.get(usize::from(idx?))?;
        Some(state.nodes.get(id)?.data_address())
    };
    ctx.durability.set_level(bucket.durability);
    ctx.durability.set_expects_replicas(map.num_replicas() > 0);
    let mut sources: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (vb, chain) in map.chains() {
        let position = me.and_then(|me| chain.iter().position(|s| *s == Some(me)));
        let replicas = match position {
            Some(0) => chain[1..].iter().filter_map(|s| address(*s)).collect(),
            _ => Vec::new(),
        };
        ctx.durability.set_replicas(vb, replicas);
        if let (Some(p), Some(active)) = (position, chain.first()) {
            if p > 0 {
                if let Some(source) = address(*active) {
                    sources.entry(source).or_default().push(vb);
                }
            }
        }
    }
    let ack_persisted = bucket.durability == Durability::PersistToMajority;
    replicator.set_streams(ctx.clone(), sources, ack_persisted);
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

/// The UUIDs of the buckets hosted here, kept across restarts.
#[derive(Debug)]
struct Hosted {
    path: PathBuf,
    uuids: BTreeMap<String, String>,
}

impl Hosted {
    fn load(dir: &Path) -> Hosted {
        let path = dir.join("hosted.json");
        let uuids = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Hosted { path, uuids }
    }

    /// Notes that bucket `name` with `uuid` is hosted here, durably, before
    /// any of its data is written; returns whether that worked.
    fn record(&mut self, name: &str, uuid: &str) -> bool {
        if self.uuids.get(name).is_some_and(|u| u == uuid) {
            return true;
        }
        self.uuids.insert(name.to_string(), uuid.to_string());
        self.save()
    }

    fn forget(&mut self, name: &str) {
        if self.uuids.remove(name).is_some() {
            self.save();
        }
    }

    fn forget_all(&mut self) {
        if !self.uuids.is_empty() {
            self.uuids.clear();
            self.save();
        }
    }

    fn save(&self) -> bool {
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec(&self.uuids)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(error) = &result {
            tracing::error!(%error, "could not record the hosted buckets");
        }
        result.is_ok()
    }
}
