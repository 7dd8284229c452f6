//! The loop that makes a node match the metadata: after every applied
//! change it publishes each bucket's config, creates the buckets this node
//! should host, drives their vbucket states to its place in the map, and
//! deletes buckets the cluster no longer has here. A node the cluster has
//! ejected drops every bucket. It also points replication at the map: the
//! streams this node's replica vbuckets pull from their actives, and the
//! replicas each of its active vbuckets waits for (durable writes).
//!
//! During a rebalance the bucket also has forward chains: a node named in
//! a vbucket's forward chain but not in its current one builds a replica
//! (it streams from the current active). When the map then makes a node
//! active for a vbucket it was streaming from another live node, it takes
//! over: the vbucket stays pending (clients are told NOT_MY_VBUCKET and
//! retry) until the old active has stopped being active and this node has
//! everything it had, then becomes active — so no acknowledged write of
//! the old active is left behind. A vbucket that moved away is dropped
//! (memory and disk) once it has been dead for [`DROP_GRACE`] with no
//! stream reading it.
//!
//! Reconciling is idempotent and level-triggered — it looks at the whole
//! state, not the change — so a failed step is simply retried on the next
//! change or after a short pause. The UUID of every bucket hosted here is
//! kept in `raft/hosted.json`: a bucket deleted and created again under the
//! same name (even while this node was down) has a new UUID, and its old
//! data is deleted before the new bucket is created.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_vbmap::map::VbucketMap;
use tokio::sync::{watch, Notify};

use shoal_engine::VbucketState;

use super::state::{BucketRecord, ClusterState, Membership};
use super::Manager;
use crate::bucket::{Buckets, Durability, LiveBucket};
use crate::cluster_view::ClusterView;
use crate::replication::consumer::Replicator;

/// How soon a failed reconcile is retried without a new change.
const RETRY: Duration = Duration::from_secs(2);

/// Runs until `shutdown` flips.
pub async fn run(
    manager: Arc<Manager>,
    buckets: Arc<Buckets>,
    view: Arc<ClusterView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = manager.subscribe();
    let mut hosted = Hosted::load(manager.dir());
    let replicator = Replicator::new(super::state::join_host_port(
        &manager.me().host,
        manager.me().data_port,
    ));
    let kick = Arc::new(Notify::new());
    let takeovers = Takeovers::default();
    let dead_since = DeadSince::default();
    let sides = Sides {
        buckets: &buckets,
        view: &view,
        replicator: &replicator,
        takeovers: &takeovers,
        dead_since: &dead_since,
        again: std::sync::atomic::AtomicBool::new(false),
        kick: &kick,
        http: manager.http(),
    };
    loop {
        let state = changes.borrow_and_update().clone();
        sides
            .again
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let ok = reconcile(&manager, &sides, &state, &mut hosted).await
            && !sides.again.load(std::sync::atomic::Ordering::Relaxed);
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
    /// Set by a pass that left work for later (vbuckets to drop).
    again: std::sync::atomic::AtomicBool,
    /// Runs the loop again (a takeover finished).
    kick: &'a Arc<Notify>,
    http: &'a reqwest::Client,
}

/// How long a vbucket that moved away stays dead before its data is
/// dropped: its last mutations must reach the node that took it over
/// first (the takeover waits for them; this is far longer).
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Since when each vbucket with data has been dead here, by (bucket,
/// vbucket).
#[derive(Debug, Default)]
struct DeadSince(Mutex<BTreeMap<(String, u16), Instant>>);

/// Takeovers in progress, by (bucket, vbucket), and the lock that orders
/// the two writers of vbucket states: a pass applying its plan and a
/// takeover activating what it took over. Without it a pass planned just
/// before an activation would turn the fresh active back to pending.
#[derive(Debug, Default, Clone)]
struct Takeovers {
    running: Arc<Mutex<BTreeSet<(String, u16)>>>,
    state_writes: Arc<Mutex<()>>,
}

impl Takeovers {
    /// Marks `vbs` as being taken over; returns those that were not yet.
    fn start(&self, bucket: &str, vbs: Vec<u16>) -> Vec<u16> {
        let mut set = self.running.lock().unwrap_or_else(|e| e.into_inner());
        vbs.into_iter()
            .filter(|vb| set.insert((bucket.to_string(), *vb)))
            .collect()
    }

    fn finish(&self, bucket: &str, vb: u16) {
        let mut set = self.running.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&(bucket.to_string(), vb));
    }

    /// Held while vbucket states are read and written.
    fn write_states(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state_writes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One pass; returns whether every step succeeded.
async fn reconcile(
    manager: &Manager,
    sides: &Sides<'_>,
    state: &ClusterState,
    hosted: &mut Hosted,
) -> bool {
    let Sides {
        buckets,
        view,
        replicator,
        ..
    } = *sides;
    let me = manager.me().id;
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
            && (!hosted.record(&bucket.spec.name, &bucket.uuid)
                || !host(sides, state, bucket, me).await)
        {
            ok = false;
            continue;
        }
        match state.bucket_config(bucket) {
            Some(config) => {
                view.publish(&bucket.spec.name, config.rev.unwrap_or(0), config.to_json())
            }
            None => {
                tracing::warn!(bucket = %bucket.spec.name, "metadata holds a bucket with no valid config")
            }
        }
    }
    ok
}

/// Creates `bucket` here if needed, sets its vbucket states from the map
/// and points its replication at the map; returns whether all worked.
async fn host(sides: &Sides<'_>, state: &ClusterState, bucket: &BucketRecord, me: u64) -> bool {
    let ctx = match sides.buckets.create(bucket.spec.clone()).await {
        Ok(ctx) => ctx,
        Err(error) => {
            tracing::error!(%error, bucket = %bucket.spec.name, "could not create bucket");
            return false;
        }
    };
    let Some(map) = bucket.map() else {
        return true;
    };
    if map.num_vbuckets() != ctx.engine.config().num_vbuckets {
        tracing::error!(bucket = %bucket.spec.name, "the map's vbucket count is not the bucket's");
        return false;
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
        &ctx,
        &map,
        forward.as_ref(),
        index,
    );
    let name = bucket.spec.name.clone();
    let driven = {
        let (ctx, states, takeovers) = (ctx.clone(), plan.states.clone(), sides.takeovers.clone());
        tokio::task::spawn_blocking(move || {
            let _writing = takeovers.write_states();
            for (vb, want) in states {
                let current = ctx.engine.vbucket_state(vb);
                if want == VbucketState::Pending && current == Some(VbucketState::Active) {
                    // Planned as a takeover that has finished since.
                    continue;
                }
                if current != Some(want) {
                    ctx.set_vbucket_state(vb, want)
                        .map_err(|e| format!("vbucket {vb}: {e}"))?;
                }
            }
            Ok::<(), String>(())
        })
        .await
    };
    match driven {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, bucket = %name, "could not set vbucket states");
            return false;
        }
        Err(_) => return false,
    }
    let dropped_all = drop_moved_away(sides.dead_since, &ctx, &plan.states).await;
    ctx.durability.set_level(bucket.spec.durability);
    ctx.durability.set_expects_replicas(map.num_replicas() > 0);
    for (vb, replicas) in plan.replicas {
        ctx.durability.set_replicas(vb, replicas);
    }
    let ack_persisted = bucket.spec.durability == Durability::PersistToMajority;
    sides
        .replicator
        .set_streams(ctx.clone(), plan.sources, ack_persisted);
    for (source_admin, vbs) in plan.takeovers {
        let vbs = sides.takeovers.start(&bucket.spec.name, vbs);
        if vbs.is_empty() {
            continue;
        }
        tracing::info!(bucket = %bucket.spec.name, from = %source_admin, vbuckets = vbs.len(), "taking over vbuckets");
        tokio::spawn(take_over(TakeOver {
            ctx: ctx.clone(),
            http: sides.http.clone(),
            source_admin,
            vbs,
            takeovers: sides.takeovers.clone(),
            kick: sides.kick.clone(),
        }));
    }
    if !dropped_all {
        // Vbuckets still waiting to be dropped: come back later (the loop
        // retries a pass that is not ok).
        sides
            .again
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    true
}

/// Drops the data of vbuckets that are dead here (they moved away) once
/// they have been for [`DROP_GRACE`] and no stream reads them; returns
/// false while some are waiting.
async fn drop_moved_away(
    dead_since: &DeadSince,
    ctx: &Arc<LiveBucket>,
    states: &[(u16, VbucketState)],
) -> bool {
    let now = Instant::now();
    let mut due = Vec::new();
    let mut waiting = false;
    {
        let mut since = dead_since.0.lock().unwrap_or_else(|e| e.into_inner());
        for &(vb, want) in states {
            let key = (ctx.name.clone(), vb);
            if want != VbucketState::Dead || !ctx.engine.holds_data(vb) {
                since.remove(&key);
                continue;
            }
            let first = *since.entry(key).or_insert(now);
            if now.duration_since(first) >= DROP_GRACE && !ctx.engine.has_cursors(vb) {
                due.push(vb);
            } else {
                waiting = true;
            }
        }
    }
    if due.is_empty() {
        return !waiting;
    }
    tracing::info!(bucket = %ctx.name, vbuckets = due.len(), "dropping vbuckets that moved away");
    let job = {
        let (ctx, due) = (ctx.clone(), due.clone());
        tokio::task::spawn_blocking(move || {
            due.into_iter()
                .filter(|vb| {
                    // Checked again: the map may have changed meanwhile.
                    ctx.engine.vbucket_state(*vb) == Some(VbucketState::Dead)
                        && !ctx.engine.has_cursors(*vb)
                        && ctx.delete_vbucket(*vb).is_err()
                })
                .count()
        })
    };
    let failed = job.await.unwrap_or(1);
    !waiting && failed == 0
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

/// A takeover of `vbs` from the node at `source_admin`.
struct TakeOver {
    ctx: Arc<LiveBucket>,
    http: reqwest::Client,
    source_admin: String,
    vbs: Vec<u16>,
    takeovers: Takeovers,
    kick: Arc<Notify>,
}

/// How often a takeover asks the old active where it is.
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

/// How long the old active may be unreachable before its vbuckets are
/// taken over without its last word (it is down: whatever it did not
/// stream is lost with it, as in a failover).
const TAKEOVER_UNREACHABLE: Duration = Duration::from_secs(5);

/// How long a takeover waits for the old active to give its vbuckets up.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Activates each vbucket once the old active no longer is and this node
/// has reached the old active's high seqno, then runs the loop again.
async fn take_over(job: TakeOver) {
    let TakeOver {
        ctx,
        http,
        source_admin,
        mut vbs,
        takeovers,
        kick,
    } = job;
    let url = format!("http://{source_admin}/internal/vbuckets/{}", ctx.name);
    let started = Instant::now();
    let mut reached = Instant::now();
    while !vbs.is_empty() && !ctx.is_deleted() {
        let reply = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        let states: Option<Vec<(u16, u32, u64)>> = match reply {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let give_up = started.elapsed() > TAKEOVER_DEADLINE;
        let mut ready = Vec::new();
        match states {
            Some(states) => {
                reached = Instant::now();
                for &vb in &vbs {
                    let Some(&(_, st, high)) = states.iter().find(|s| s.0 == vb) else {
                        ready.push(vb);
                        continue;
                    };
                    let released = st != VbucketState::Active.to_wire();
                    let caught_up = ctx.engine.high_seqno(vb).unwrap_or(0) >= high;
                    if (released && caught_up) || give_up {
                        ready.push(vb);
                    }
                }
            }
            None if reached.elapsed() > TAKEOVER_UNREACHABLE || give_up => {
                tracing::warn!(bucket = %ctx.name, from = %source_admin, "old active unreachable: taking over without it");
                ready = vbs.clone();
            }
            None => {}
        }
        if !ready.is_empty() {
            let activate = {
                let (ctx, ready, takeovers) = (ctx.clone(), ready.clone(), takeovers.clone());
                tokio::task::spawn_blocking(move || {
                    let _writing = takeovers.write_states();
                    for vb in ready {
                        if ctx.engine.vbucket_state(vb) == Some(VbucketState::Pending) {
                            let _ = ctx.set_vbucket_state(vb, VbucketState::Active);
                        }
                    }
                })
            };
            let _ = activate.await;
            vbs.retain(|vb| !ready.contains(vb));
            for vb in ready {
                takeovers.finish(&ctx.name, vb);
            }
            kick.notify_one();
        }
        if !vbs.is_empty() {
            tokio::time::sleep(TAKEOVER_POLL).await;
        }
    }
    for vb in vbs {
        takeovers.finish(&ctx.name, vb);
    }
    kick.notify_one();
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
