//! The loop that makes a node match the metadata: after every applied
//! change it publishes each bucket's config, creates the buckets this node
//! should host, drives their vbucket states to its place in the map, and
//! deletes buckets the cluster no longer has here. A node the cluster has
//! ejected drops every bucket. A failed-over node keeps its buckets' data,
//! serving none of it (every vbucket dead), until an admin chooses its
//! recovery: delta keeps the data for the rebalance that takes it back,
//! full drops it. It also points replication at the map: the
//! streams this node's replica vbuckets pull from their actives, and the
//! replicas each of its active vbuckets waits for (durable writes).
//!
//! During a rebalance the bucket also has forward chains: a node named in
//! a vbucket's forward chain but not in its current one builds a replica
//! (it streams from the current active). When the map then makes a node
//! active for a vbucket it was streaming from another live node, it takes
//! it over (`takeover`). A vbucket that moved away is dropped (memory and
//! disk) once it has been dead for [`DROP_GRACE`] with no stream reading
//! it.
//!
//! Reconciling is idempotent and level-triggered — it looks at the whole
//! state, not the change — so a failed step is simply retried on the next
//! change or after a short pause; a pass says what it could not do
//! ([`ReconcileError`]) and the loop logs it. The UUID of every bucket
//! hosted here is kept (`hosted`), so a bucket deleted and created again
//! under the same name never inherits the old one's data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_engine::VbucketState;
use shoal_vbmap::map::VbucketMap;
use tokio::sync::{watch, Notify};

use super::hosted::Hosted;
use super::peers::PeerClient;
use super::state::{BucketRecord, ClusterState, Membership, NodeRecord, Recovery};
use super::takeover::{take_over, TakeOver, Takeovers};
use super::Manager;
use crate::bucket::{BucketError, BucketKind, Buckets, Durability, LiveBucket};
use crate::cluster_view::ClusterView;
use crate::replication::consumer::Replicator;

/// How soon a pass that left work undone is retried without a new change.
const RETRY: Duration = Duration::from_secs(2);

/// How long a vbucket that moved away stays dead before its data is
/// dropped: its last mutations must reach the node that took it over
/// first (the takeover waits for them; this is far longer).
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Why a pass could not do all it had to (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A bucket that is no longer hosted here could not be deleted.
    #[error("bucket {bucket:?}: could not delete it: {source}")]
    Delete {
        /// The bucket.
        bucket: String,
        /// Why.
        source: BucketError,
    },
    /// A bucket hosted here could not be created.
    #[error("bucket {bucket:?}: could not create it: {source}")]
    Create {
        /// The bucket.
        bucket: String,
        /// Why.
        source: BucketError,
    },
    /// Noting the bucket's UUID on disk failed (its data is not written
    /// before that is done).
    #[error("bucket {0:?}: could not record it as hosted here")]
    Record(String),
    /// The map's vbucket count is not the bucket's.
    #[error("bucket {bucket:?}: the map has {map} vbuckets, the bucket {held}")]
    VbucketCount {
        /// The bucket.
        bucket: String,
        /// vbuckets in the map.
        map: usize,
        /// vbuckets in the bucket here.
        held: usize,
    },
    /// A vbucket state could not be set (in memory or on disk).
    #[error("bucket {bucket:?}: vbucket {vb}: could not set it {state:?}: {reason}")]
    State {
        /// The bucket.
        bucket: String,
        /// The vbucket.
        vb: u16,
        /// The state it should have had.
        state: VbucketState,
        /// Why.
        reason: String,
    },
    /// Vbuckets that moved away could not be dropped.
    #[error("bucket {bucket:?}: {count} vbuckets that moved away could not be dropped")]
    Drop {
        /// The bucket.
        bucket: String,
        /// How many.
        count: usize,
    },
    /// A blocking task panicked or was cancelled.
    #[error("bucket {0:?}: a background task failed")]
    Task(String),
    /// The metadata holds a bucket with no valid config (a bug).
    #[error("bucket {0:?}: the metadata holds no valid config for it")]
    NoConfig(String),
}

/// What a pass left undone: errors, and whether work is waiting for time
/// to pass (vbuckets to drop after their grace).
#[derive(Debug, Default)]
struct Unfinished {
    errors: Vec<ReconcileError>,
    waiting: bool,
}

impl Unfinished {
    fn is_empty(&self) -> bool {
        self.errors.is_empty() && !self.waiting
    }
}

/// Runs until `shutdown` flips.
pub async fn run(
    manager: Arc<Manager>,
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = manager.subscribe();
    let mut hosted = Hosted::load(manager.dir());
    let replicator = Replicator::new(
        super::state::join_host_port(&manager.me().host, manager.me().data_port),
        manager.peers().secret().clone(),
        manager.peers().transport().clone(),
    );
    let kick = Arc::new(Notify::new());
    let takeovers = Takeovers::default();
    let dead_since = DeadSince::default();
    let sides = Sides {
        buckets: &buckets,
        view: &view,
        replicator: &replicator,
        takeovers: &takeovers,
        dead_since: &dead_since,
        kick: &kick,
        peers: manager.peers(),
        fence: &manager.fence,
    };
    loop {
        // Read before the state: the state is at least this new.
        let index = manager.applied_index();
        let state = changes.borrow_and_update().clone();
        manager.learn_peers();
        let unfinished = reconcile(manager.me().id, &sides, &state, &mut hosted).await;
        manager.fence.reconciled(index);
        for error in &unfinished.errors {
            tracing::error!(%error, "reconcile");
        }
        let pause = async {
            if unfinished.is_empty() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(RETRY).await;
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = pause => {}
            () = kick.notified() => {}
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
    takeovers: &'a Takeovers,
    dead_since: &'a DeadSince,
    /// Runs the loop again (a takeover finished).
    kick: &'a Arc<Notify>,
    /// Whether the node fences: a bucket created now starts as it says.
    fence: &'a super::fence::Fence,
    peers: &'a PeerClient,
}

/// Since when each vbucket with data has been dead here, by (bucket,
/// vbucket).
#[derive(Debug, Default)]
struct DeadSince(Mutex<BTreeMap<(String, u16), Instant>>);

/// One pass over the whole state, as node `me`.
async fn reconcile(
    me: u64,
    sides: &Sides<'_>,
    state: &ClusterState,
    hosted: &mut Hosted,
) -> Unfinished {
    let Some(record) = state.nodes.get(&me) else {
        if !state.nodes.is_empty() {
            // A cluster exists and this node is not (or no longer) in it:
            // whatever it holds is not the cluster's.
            hosted.forget_all();
            sides.replicator.stop_all();
            return drop_all(sides.buckets, sides.view).await;
        }
        return Unfinished::default();
    };
    sides.view.retain(|name| state.buckets.contains_key(name));
    let mut unfinished = drop_unwanted(record, sides, state, hosted).await;
    for bucket in state.buckets.values() {
        // A bucket hosted here is published only once this node serves it
        // as the config says, so whoever reads the config here can use it.
        match role(record, bucket, hosted) {
            Role::Host => {
                let name = &bucket.spec.name;
                if !hosted.record(name, &bucket.uuid) {
                    unfinished.errors.push(ReconcileError::Record(name.clone()));
                    continue;
                }
                match host(sides, state, bucket, record).await {
                    Ok(waiting) => unfinished.waiting |= waiting,
                    Err(error) => {
                        unfinished.errors.push(error);
                        continue;
                    }
                }
            }
            Role::Keep => {
                if let Err(error) = keep(sides, bucket).await {
                    unfinished.errors.push(error);
                }
            }
            Role::Drop => {}
        }
        match state.bucket_config(bucket) {
            Some(config) => {
                let rev = config.rev.unwrap_or(0);
                sides.view.publish(&bucket.spec.name, rev, config.to_json());
            }
            None => unfinished
                .errors
                .push(ReconcileError::NoConfig(bucket.spec.name.clone())),
        }
    }
    unfinished
}

/// Deletes the local buckets (and data left on disk) the state does not
/// want here, or wants with another UUID (a new bucket under an old name).
async fn drop_unwanted(
    record: &NodeRecord,
    sides: &Sides<'_>,
    state: &ClusterState,
    hosted: &mut Hosted,
) -> Unfinished {
    let mut unfinished = Unfinished::default();
    let mut names = sides.buckets.names();
    names.extend(hosted.uuids.keys().cloned());
    names.sort();
    names.dedup();
    for name in names {
        let keep = state.buckets.get(&name).is_some_and(|b| {
            role(record, b, hosted) != Role::Drop
                && hosted.uuids.get(&name).is_none_or(|u| *u == b.uuid)
        });
        if keep {
            continue;
        }
        tracing::info!(bucket = %name, "deleting bucket no longer hosted here");
        sides.replicator.stop_bucket(&name);
        match sides.buckets.delete(&name).await {
            Ok(_) => hosted.forget(&name),
            Err(source) => unfinished.errors.push(ReconcileError::Delete {
                bucket: name,
                source,
            }),
        }
    }
    unfinished
}

/// Creates `bucket` here if needed, sets its vbucket states from the map,
/// points its durability and replication at the map and starts the
/// takeovers it calls for. Returns whether vbuckets are waiting to be
/// dropped.
async fn host(
    sides: &Sides<'_>,
    state: &ClusterState,
    bucket: &BucketRecord,
    record: &NodeRecord,
) -> Result<bool, ReconcileError> {
    let me = record.id;
    let name = &bucket.spec.name;
    let live = open(sides, bucket).await?;
    // Password and flush setting may have been edited since.
    live.apply_access(&bucket.spec);
    let Some(map) = bucket.map() else {
        return Ok(false);
    };
    let held = live.engine.config().num_vbuckets;
    if map.num_vbuckets() != held {
        return Err(ReconcileError::VbucketCount {
            bucket: name.clone(),
            map: map.num_vbuckets(),
            held,
        });
    }
    let forward = bucket
        .forward
        .as_ref()
        .and_then(|f| VbucketMap::from_chains(f, map.num_replicas(), bucket.servers.len()).ok());
    let index = bucket
        .servers
        .iter()
        .position(|id| *id == me)
        .and_then(|i| u16::try_from(i).ok());
    let plan = plan(
        sides.replicator,
        state,
        bucket,
        &live,
        &map,
        forward.as_ref(),
        index,
    );
    apply_states(sides.takeovers, &live, &plan.states).await?;
    // A node coming back by delta recovery keeps every vbucket it holds
    // until the rebalance is done: the batches still to come give it back
    // the ones it had.
    let waiting = match record.recovery {
        Some(Recovery::Delta) => false,
        _ => drop_moved_away(sides.dead_since, &live, &plan.states).await?,
    };
    live.durability.set_level(bucket.spec.durability);
    live.durability.set_expects_replicas(map.num_replicas() > 0);
    for (vb, replicas) in plan.replicas {
        live.durability.set_replicas(vb, replicas);
    }
    let ack_persisted = bucket.spec.durability == Durability::PersistToMajority;
    sides
        .replicator
        .set_streams(live.clone(), plan.sources, ack_persisted);
    start_takeovers(sides, &live, plan.takeovers);
    Ok(waiting)
}

/// `bucket` here, created (and warmed up) if needed, fenced if the node
/// is.
async fn open(sides: &Sides<'_>, bucket: &BucketRecord) -> Result<Arc<LiveBucket>, ReconcileError> {
    let live = sides
        .buckets
        .create(bucket.spec.clone())
        .await
        .map_err(|source| ReconcileError::Create {
            bucket: bucket.spec.name.clone(),
            source,
        })?;
    live.engine.set_fenced(sides.fence.is_fenced());
    Ok(live)
}

/// A failed-over node's copy of `bucket`: opened (warmed up from disk) so
/// its vbuckets can be set dead — it serves and streams nothing — and its
/// data kept for a delta recovery.
async fn keep(sides: &Sides<'_>, bucket: &BucketRecord) -> Result<(), ReconcileError> {
    sides.replicator.stop_bucket(&bucket.spec.name);
    let live = open(sides, bucket).await?;
    let held = live.engine.config().num_vbuckets;
    let dead: Vec<(u16, VbucketState)> = (0..held)
        .filter_map(|vb| u16::try_from(vb).ok())
        .map(|vb| (vb, VbucketState::Dead))
        .collect();
    apply_states(sides.takeovers, &live, &dead).await
}

/// Sets every vbucket's state as planned (on a blocking thread: state
/// changes are synced to disk), under the takeovers' state-write lock.
async fn apply_states(
    takeovers: &Takeovers,
    live: &Arc<LiveBucket>,
    states: &[(u16, VbucketState)],
) -> Result<(), ReconcileError> {
    let (live, states, takeovers) = (live.clone(), states.to_vec(), takeovers.clone());
    let name = live.name.clone();
    tokio::task::spawn_blocking(move || {
        let _writing = takeovers.write_states();
        for (vb, want) in states {
            let current = live.engine.vbucket_state(vb);
            if want == VbucketState::Pending && current == Some(VbucketState::Active) {
                // Planned as a takeover that has finished since.
                continue;
            }
            if current != Some(want) {
                live.set_vbucket_state(vb, want)
                    .map_err(|e| ReconcileError::State {
                        bucket: live.name.clone(),
                        vb,
                        state: want,
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| ReconcileError::Task(name))?
}

/// Starts a takeover task per old active for the vbuckets not already
/// being taken over.
fn start_takeovers(
    sides: &Sides<'_>,
    live: &Arc<LiveBucket>,
    takeovers: BTreeMap<String, Vec<u16>>,
) {
    for (source_admin, vbs) in takeovers {
        let vbs = sides.takeovers.start(&live.name, vbs);
        if vbs.is_empty() {
            continue;
        }
        tracing::info!(bucket = %live.name, from = %source_admin, vbuckets = vbs.len(), "taking over vbuckets");
        tokio::spawn(take_over(TakeOver {
            ctx: live.clone(),
            peers: sides.peers.clone(),
            source_admin,
            vbs,
            takeovers: sides.takeovers.clone(),
            kick: sides.kick.clone(),
        }));
    }
}

/// Drops the data of vbuckets that are dead here (they moved away) once
/// they have been for [`DROP_GRACE`] and no stream reads them; returns
/// whether some are still waiting for that.
async fn drop_moved_away(
    dead_since: &DeadSince,
    live: &Arc<LiveBucket>,
    states: &[(u16, VbucketState)],
) -> Result<bool, ReconcileError> {
    let now = Instant::now();
    let mut due = Vec::new();
    let mut waiting = false;
    {
        let mut since = dead_since.0.lock().unwrap_or_else(|e| e.into_inner());
        for &(vb, want) in states {
            let key = (live.name.clone(), vb);
            if want != VbucketState::Dead || !live.engine.holds_data(vb) {
                since.remove(&key);
                continue;
            }
            let first = *since.entry(key).or_insert(now);
            if now.duration_since(first) >= DROP_GRACE && !live.engine.has_cursors(vb) {
                due.push(vb);
            } else {
                waiting = true;
            }
        }
    }
    if due.is_empty() {
        return Ok(waiting);
    }
    tracing::info!(bucket = %live.name, vbuckets = due.len(), "dropping vbuckets that moved away");
    let job = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || {
            due.into_iter()
                .filter(|vb| {
                    // Checked again: the map may have changed meanwhile.
                    live.engine.vbucket_state(*vb) == Some(VbucketState::Dead)
                        && !live.engine.has_cursors(*vb)
                        && live.delete_vbucket(*vb).is_err()
                })
                .count()
        })
    };
    match job.await {
        Ok(0) => Ok(waiting),
        Ok(count) => Err(ReconcileError::Drop {
            bucket: live.name.clone(),
            count,
        }),
        Err(_) => Err(ReconcileError::Task(live.name.clone())),
    }
}

/// What one bucket's vbuckets should be on this node.
#[derive(Debug, Default)]
struct Plan {
    /// Every vbucket's state.
    states: Vec<(u16, VbucketState)>,
    /// The replicas each vbucket waits for (empty unless active here).
    replicas: Vec<(u16, Vec<String>)>,
    /// Source data address → the vbuckets streamed from it.
    sources: BTreeMap<String, Vec<u16>>,
    /// Source admin address → vbuckets to take over from it.
    takeovers: BTreeMap<String, Vec<u16>>,
}

/// Works out [`Plan`] from the map (and the forward map during a
/// rebalance).
fn plan(
    replicator: &Replicator,
    state: &ClusterState,
    bucket: &BucketRecord,
    ctx: &LiveBucket,
    map: &VbucketMap,
    forward: Option<&VbucketMap>,
    me: Option<u16>,
) -> Plan {
    let node = |idx: Option<u16>| {
        let id = bucket.servers.get(usize::from(idx?))?;
        state.nodes.get(id)
    };
    let mut plan = Plan::default();
    let forward_chains: Vec<Vec<Option<u16>>> = forward
        .map(|f| f.chains().map(|(_, c)| c.to_vec()).collect())
        .unwrap_or_default();
    for (vb, chain) in map.chains() {
        let position = me.and_then(|me| chain.iter().position(|s| *s == Some(me)));
        let building = me.is_some()
            && forward_chains
                .get(usize::from(vb))
                .is_some_and(|f| f.contains(&me));
        let mut want = match position {
            Some(0) => VbucketState::Active,
            Some(_) => VbucketState::Replica,
            None if building => VbucketState::Replica,
            None => VbucketState::Dead,
        };
        let current = ctx.engine.vbucket_state(vb);
        if want == VbucketState::Active
            && matches!(current, Some(VbucketState::Replica | VbucketState::Pending))
        {
            // Streaming from a live node that was active: take over.
            let old = replicator
                .source_of(&bucket.spec.name, vb)
                .and_then(|source| {
                    state
                        .nodes
                        .values()
                        .find(|n| n.data_address() == source && n.membership == Membership::Active)
                });
            if let Some(old) = old {
                want = VbucketState::Pending;
                plan.takeovers
                    .entry(old.admin_address())
                    .or_default()
                    .push(vb);
                plan.sources.entry(old.data_address()).or_default().push(vb);
            }
        }
        let replicas = match position {
            Some(0) => chain[1..]
                .iter()
                .filter_map(|s| node(*s).map(|n| n.data_address()))
                .collect(),
            _ => Vec::new(),
        };
        plan.replicas.push((vb, replicas));
        if want == VbucketState::Replica {
            if let Some(active) = chain.first().and_then(|a| node(*a)) {
                plan.sources
                    .entry(active.data_address())
                    .or_default()
                    .push(vb);
            }
        }
        plan.states.push((vb, want));
    }
    plan
}

/// What this node does with a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Serves it as the map says.
    Host,
    /// Keeps its data without serving it (failed over, or waiting for a
    /// delta recovery).
    Keep,
    /// Holds nothing of it.
    Drop,
}

/// The role of node `record` for `bucket`. A failed-over node keeps only
/// data it already holds for this very bucket (not one created since under
/// the same name).
fn role(record: &NodeRecord, bucket: &BucketRecord, hosted: &Hosted) -> Role {
    let held = hosted.uuids.get(&bucket.spec.name) == Some(&bucket.uuid);
    match (record.membership, record.recovery) {
        (Membership::Active, _) if bucket.servers.contains(&record.id) => Role::Host,
        (Membership::InactiveFailed, _) | (Membership::InactiveAdded, Some(Recovery::Delta))
            if held && bucket.spec.kind == BucketKind::Membase =>
        {
            Role::Keep
        }
        _ => Role::Drop,
    }
}

/// Drops every bucket here: this node is not a member of the cluster.
async fn drop_all(buckets: &Buckets, view: &ClusterView) -> Unfinished {
    let mut unfinished = Unfinished::default();
    view.retain(|_| false);
    view.forget_adopted();
    for name in buckets.names() {
        tracing::info!(bucket = %name, "not a member of the cluster: deleting bucket");
        if let Err(source) = buckets.delete(&name).await {
            unfinished.errors.push(ReconcileError::Delete {
                bucket: name,
                source,
            });
        }
    }
    unfinished
}
