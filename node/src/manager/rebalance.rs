//! Online rebalance, driven by the Raft leader: every membase bucket's map
//! is moved to the planner's balanced target for the nodes that stay, in
//! batches (each node receives at most [`MOVES_PER_NODE`] new copies per
//! batch, which bounds the backfills running at once), each batch in three
//! steps, each one Raft log entry that every node and proxy sees:
//!
//! 1. **Build**: the map gets forward chains (the target) over the union
//!    of old and new servers. A node named in a vbucket's forward chain but
//!    not its current one creates the vbucket as a replica and streams it
//!    from the current active — backfill from disk, then live (see
//!    `reconcile`). Proxies get `vBucketMapForward` and can route ahead.
//! 2. **Catch up**: the leader polls every node's `/internal/vbuckets/<b>`
//!    until every new copy has reached where its active was one poll
//!    earlier.
//! 3. **Switch**: the target becomes the map; servers that hold nothing
//!    any more are dropped from the bucket once the takeovers are done
//!    (a node no longer listed drops its copy). A node that becomes active
//!    for a vbucket it was streaming takes it over: pending until the old
//!    active has let go and it has everything, then active; proxies retry
//!    the NOT_MY_VBUCKETs of that short window. The leader waits for every
//!    new active before the next bucket.
//!
//! Then added nodes are active members and ejected ones are removed. A
//! stop, an unreachable node or a failed write ends the rebalance with the
//! forward chains cleared (the map still names every copy it did); the
//! next rebalance starts over from whatever map that left, so a leader
//! change or a failure midway never leaves a map that loses data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_vbmap::map::VbucketMap;
use shoal_vbmap::planner::plan_rebalance;
use tokio::sync::watch;

use super::state::{compact, ClusterState, Command, Membership, NodeId, Recovery};
use super::{Manager, ManagerError};
use crate::bucket::BucketKind;

/// How often the leader polls the nodes while copies catch up.
const POLL: Duration = Duration::from_millis(50);

/// New copies a node receives per batch of moves.
pub(super) const MOVES_PER_NODE: usize = 64;

/// How long a node may fail to answer before the rebalance stops.
const UNREACHABLE: Duration = Duration::from_secs(10);

/// How long new copies may take to catch up, per bucket.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// How long the switch may take (every takeover), per bucket.
const SWITCH_DEADLINE: Duration = Duration::from_secs(60);

/// What `/pools/default/rebalanceProgress` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebalanceStatus {
    /// A rebalance is running on this node.
    pub running: bool,
    /// The bucket being moved and the step it is in.
    pub bucket: Option<String>,
    /// "build", "catch up", "switch", "eject".
    pub phase: &'static str,
    /// Buckets done of the total.
    pub done: usize,
    /// Buckets in all.
    pub total: usize,
    /// vbuckets of the current bucket moved so far.
    pub vbuckets_done: usize,
    /// vbuckets of the current bucket to move.
    pub vbuckets_total: usize,
    /// Why the last rebalance failed or stopped, if it did.
    pub error: Option<String>,
    /// How long the last finished rebalance took.
    pub last_duration: Option<Duration>,
}

/// The leader's rebalance: its status and its stop switch.
#[derive(Debug, Default)]
pub struct Rebalancer {
    status: Mutex<RebalanceStatus>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl Rebalancer {
    /// The current status.
    pub fn status(&self) -> RebalanceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut RebalanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Asks a running rebalance to stop (a no-op when none runs).
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(true);
        }
    }
}

/// Why a rebalance ended early.
pub(super) type Failure = String;

/// How often a leader looks for what an earlier leader's rebalance left.
const LEFTOVER_CHECK: Duration = Duration::from_secs(1);

/// Runs until `shutdown` flips: while this node leads, clears the forward
/// chains of a rebalance an earlier leader did not finish (see
/// [`Manager::clear_interrupted`]).
pub async fn clear_leftovers(manager: Arc<Manager>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LEFTOVER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Raft's metrics change on an election: look at once, not a tick later.
    let mut metrics = manager.raft().metrics();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
        if manager.is_leader() {
            manager.clear_interrupted().await;
        }
    }
}

/// One node's `/internal/vbuckets/<b>`: (vbucket, state, high seqno).
type VbucketRows = Vec<(u16, u32, u64)>;

/// Every server's rows, `None` where it did not answer.
type Views = [Option<VbucketRows>];

impl Manager {
    /// Leader side of `POST /controller/rebalance`: checks the request and
    /// starts the rebalance in the background. `known` must name every node
    /// that takes part (ejected ones included); `ejected` are removed.
    pub fn start_rebalance(
        self: &Arc<Self>,
        known: Vec<NodeId>,
        ejected: Vec<NodeId>,
    ) -> Result<(), ManagerError> {
        let state = self.state();
        let conflict = |m: String| ManagerError::Rejected(super::state::Rejection::Conflict(m));
        let invalid = |m: String| ManagerError::Rejected(super::state::Rejection::Invalid(m));
        if let Some(id) = ejected.iter().find(|id| !known.contains(id)) {
            return Err(invalid(format!(
                "ejected node {id} is not among knownNodes"
            )));
        }
        let stays: Vec<NodeId> = known
            .iter()
            .copied()
            .filter(|id| !ejected.contains(id))
            .collect();
        if stays.is_empty() {
            return Err(invalid("a rebalance must keep at least one node".into()));
        }
        for id in &stays {
            match state.nodes.get(id).map(|n| n.membership) {
                Some(Membership::Active | Membership::InactiveAdded) => {}
                Some(Membership::InactiveFailed) => {
                    return Err(conflict(format!(
                        "node {id} is failed over; eject it, or choose its recovery \
                         (POST /controller/setRecoveryType) first"
                    )))
                }
                None => return Err(invalid(format!("no node {id} in the cluster"))),
            }
        }
        if let Some(missing) = state
            .nodes
            .iter()
            .find(|(id, n)| n.membership == Membership::Active && !known.contains(id))
        {
            return Err(invalid(format!(
                "knownNodes must list every active node; {} is missing",
                missing.1.otp_node()
            )));
        }
        let rx = self.begin_task(&state)?;
        let manager = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = manager.rebalance(&stays, &ejected, rx).await;
            manager.end_task("rebalance", started, result);
        });
        Ok(())
    }

    /// Marks a rebalance-like task (a rebalance or a graceful failover)
    /// running, refused while one runs; returns its stop signal.
    pub(super) fn begin_task(
        &self,
        state: &ClusterState,
    ) -> Result<watch::Receiver<bool>, ManagerError> {
        let (tx, rx) = watch::channel(false);
        let mut stop = self
            .rebalancer
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.rebalancer.status().running {
            return Err(ManagerError::Rejected(super::state::Rejection::Conflict(
                "a rebalance is already running".into(),
            )));
        }
        *stop = Some(tx);
        let total = state
            .buckets
            .values()
            .filter(|b| b.spec.kind == BucketKind::Membase)
            .count();
        self.rebalancer.update(|s| {
            *s = RebalanceStatus {
                running: true,
                phase: "start",
                total,
                ..RebalanceStatus::default()
            }
        });
        Ok(rx)
    }

    /// Records how a task begun with [`begin_task`](Self::begin_task) ended.
    pub(super) fn end_task(&self, what: &str, started: Instant, result: Result<(), Failure>) {
        if let Err(e) = &result {
            tracing::warn!(error = %e, "{what} ended early");
        } else {
            tracing::info!(secs = started.elapsed().as_secs_f64(), "{what} done");
        }
        self.rebalancer.update(|s| {
            s.running = false;
            s.bucket = None;
            s.phase = "";
            s.error = result.err();
            s.last_duration = Some(started.elapsed());
        });
    }

    async fn rebalance(
        &self,
        stays: &[NodeId],
        ejected: &[NodeId],
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let state = self.state();
        let names: Vec<String> = state
            .buckets
            .values()
            .filter(|b| b.spec.kind == BucketKind::Membase)
            .map(|b| b.spec.name.clone())
            .collect();
        self.rebalancer.update(|s| s.total = names.len());
        self.wait_emptied_for_full_recovery(&state, stays, &names, &mut stop)
            .await?;
        for id in stays {
            if state.nodes.get(id).map(|n| n.membership) == Some(Membership::InactiveAdded) {
                self.write(Command::SetMembership {
                    id: *id,
                    membership: Membership::Active,
                })
                .await
                .map_err(|e| e.to_string())?;
            }
        }
        for (i, name) in names.iter().enumerate() {
            self.rebalancer.update(|s| {
                s.bucket = Some(name.clone());
                s.done = i;
            });
            let result = self.rebalance_bucket(name, stays, &mut stop).await;
            if let Err(e) = result {
                self.clear_forward(name).await;
                return Err(format!("bucket {name:?}: {e}"));
            }
        }
        self.rebalancer.update(|s| {
            s.done = names.len();
            s.phase = "eject";
        });
        for id in ejected {
            self.eject_node(*id).await.map_err(|e| e.to_string())?;
        }
        for id in stays {
            if state.nodes.get(id).is_some_and(|n| n.recovery.is_some()) {
                let command = Command::SetRecovery {
                    id: *id,
                    recovery: None,
                };
                self.write(command).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Waits until every node coming back by full recovery has dropped
    /// the data it kept while failed over, so it is filled from empty.
    async fn wait_emptied_for_full_recovery(
        &self,
        state: &ClusterState,
        stays: &[NodeId],
        names: &[String],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let full: Vec<NodeId> = stays
            .iter()
            .copied()
            .filter(|id| {
                state.nodes.get(id).is_some_and(|n| {
                    n.membership == Membership::InactiveAdded && n.recovery == Some(Recovery::Full)
                })
            })
            .collect();
        if full.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        for name in names {
            loop {
                let views = self.poll(name, &full, &mut Poll::new(full.len())).await?;
                // A node that dropped the bucket answers 404 (`None`).
                let holding = views
                    .iter()
                    .flatten()
                    .filter(|rows| !rows.is_empty())
                    .count();
                if holding == 0 {
                    break;
                }
                if started.elapsed() > SWITCH_DEADLINE {
                    return Err(format!(
                        "{holding} nodes coming back by full recovery still hold bucket {name:?}"
                    ));
                }
                pause(stop).await?;
            }
        }
        Ok(())
    }

    /// Moves one bucket to its balanced map over `stays`.
    async fn rebalance_bucket(
        &self,
        name: &str,
        stays: &[NodeId],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let state = self.state();
        let Some(bucket) = state.buckets.get(name) else {
            return Ok(()); // deleted meanwhile
        };
        let Some(map) = bucket.map() else {
            return Err("the bucket has no valid map".into());
        };
        let replicas = map.num_replicas();
        let mut servers = bucket.servers.clone();
        for id in stays {
            if !servers.contains(id) {
                servers.push(*id);
            }
        }
        let current = VbucketMap::from_chains(&map.to_chains(), replicas, servers.len())
            .map_err(|e| e.to_string())?;
        let indexes: Vec<u16> = stays
            .iter()
            .filter_map(|id| servers.iter().position(|s| s == id))
            .filter_map(|i| u16::try_from(i).ok())
            .collect();
        // Nodes coming back by delta recovery count, for the planner, as
        // holding the copies they kept: it then gives them those back (only
        // what they missed is streamed) where balance allows.
        let kept = self.kept_copies(name, &state, &servers, stays).await;
        let hint = VbucketMap::from_chains(
            &with_kept_copies(&current.to_chains(), &kept),
            replicas,
            servers.len(),
        )
        .map_err(|e| e.to_string())?;
        let plan = plan_rebalance(&hint, &indexes, replicas).map_err(|e| e.to_string())?;
        let (final_servers, final_chains) = compact(&servers, &plan.target.to_chains());
        if plan.target == current && final_servers == bucket.servers {
            return Ok(());
        }
        // Moves go in batches: each node receives at most
        // `MOVES_PER_NODE` new copies per batch, which bounds the backfills
        // (disk reads, stream buffers, replica memory) running at once.
        let target = plan.target.to_chains();
        let mut now = current.to_chains();
        let mut pending: Vec<usize> = (0..now.len()).filter(|&vb| now[vb] != target[vb]).collect();
        let total = pending.len();
        self.rebalancer.update(|s| {
            s.vbuckets_done = 0;
            s.vbuckets_total = total;
        });
        while !pending.is_empty() {
            let (batch, rest) = next_batch(&now, &target, pending);
            pending = rest;
            let mut next = now.clone();
            for &vb in &batch {
                next[vb] = target[vb].clone();
            }
            let as_map = |chains: &[Vec<i64>]| {
                VbucketMap::from_chains(chains, replicas, servers.len()).map_err(|e| e.to_string())
            };
            let (from, to) = (as_map(&now)?, as_map(&next)?);
            self.rebalancer.update(|s| s.phase = "build");
            self.write(Command::SetBucketMap {
                name: name.to_string(),
                servers: servers.clone(),
                chains: now.clone(),
                forward: Some(next.clone()),
            })
            .await
            .map_err(|e| e.to_string())?;
            self.rebalancer.update(|s| s.phase = "catch up");
            self.wait_built(name, &servers, &from, &to, stop).await?;
            self.rebalancer.update(|s| s.phase = "switch");
            // The servers that end up with nothing stay listed until every
            // takeover is done: a node no longer listed drops the bucket,
            // and it must first hand its vbuckets' last mutations over.
            self.switch_to(name, &servers, &next, stop).await?;
            now = next;
            self.rebalancer
                .update(|s| s.vbuckets_done = total - pending.len());
        }
        if final_servers != servers {
            self.write(Command::SetBucketMap {
                name: name.to_string(),
                servers: final_servers,
                chains: final_chains,
                forward: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The vbuckets (with data) of bucket `name` that each node of `stays`
    /// coming back by delta recovery kept, by its index in `servers`.
    async fn kept_copies(
        &self,
        name: &str,
        state: &ClusterState,
        servers: &[NodeId],
        stays: &[NodeId],
    ) -> Vec<(i64, Vec<u16>)> {
        let mut kept = Vec::new();
        for id in stays {
            let delta = state
                .nodes
                .get(id)
                .is_some_and(|n| n.recovery == Some(Recovery::Delta));
            let Some(idx) = servers.iter().position(|s| s == id) else {
                continue;
            };
            if !delta {
                continue;
            }
            let views = self.poll(name, &[*id], &mut Poll::new(1)).await;
            let rows = views
                .ok()
                .and_then(|mut v| v.pop().flatten())
                .unwrap_or_default();
            let vbs: Vec<u16> = rows
                .into_iter()
                .filter(|&(_, _, high)| high > 0)
                .map(|(vb, _, _)| vb)
                .collect();
            tracing::info!(
                bucket = name,
                node = id,
                vbuckets = vbs.len(),
                "delta recovery: copies kept"
            );
            kept.push((idx as i64, vbs));
        }
        kept
    }

    /// Clears a bucket's forward chains after a rebalance ended early.
    async fn clear_forward(&self, name: &str) {
        let command = Command::ClearForward {
            name: name.to_string(),
        };
        if let Err(e) = self.write(command).await {
            tracing::warn!(bucket = name, error = %e, "could not clear the forward map");
        }
    }

    /// On a leader that runs no rebalance, forward chains are what a
    /// rebalance driven by an earlier leader left when leadership moved:
    /// clears them (the map names complete copies only, so nothing is
    /// lost and nodes stop building copies nobody will switch to) and says
    /// so in `rebalanceProgress`. Starting a rebalance meanwhile is
    /// refused as for a running one.
    async fn clear_interrupted(&self) {
        let state = self.state();
        let left: Vec<String> = state
            .buckets
            .values()
            .filter(|b| b.forward.is_some())
            .map(|b| b.spec.name.clone())
            .collect();
        if left.is_empty() {
            return;
        }
        {
            let _starting = self
                .rebalancer
                .stop
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if self.rebalancer.status().running {
                return;
            }
            self.rebalancer.update(|s| {
                *s = RebalanceStatus {
                    running: true,
                    phase: "clear",
                    ..RebalanceStatus::default()
                }
            });
        }
        tracing::warn!(buckets = ?left, "clearing the forward map of a rebalance an earlier leader did not finish");
        for name in &left {
            self.clear_forward(name).await;
        }
        // Forward chains outlive a rebalance only when the write clearing
        // them failed — leadership moved — even if it was this node's own.
        let error = format!(
            "rebalance interrupted: the cluster leader changed before it finished \
             (buckets {left:?}); the map keeps every copy it had, rebalance again to finish"
        );
        self.rebalancer.update(|s| {
            *s = RebalanceStatus {
                error: Some(error),
                ..RebalanceStatus::default()
            }
        });
    }

    /// Polls `servers` until every copy the target adds has caught up with
    /// its active.
    async fn wait_built(
        &self,
        name: &str,
        servers: &[NodeId],
        current: &VbucketMap,
        target: &VbucketMap,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let mut prev_active: Vec<u64> = vec![u64::MAX; current.num_vbuckets()];
        let current_chains: Vec<_> = current.chains().collect();
        let behind = |views: &Views| {
            let mut behind = 0usize;
            for (vb, chain) in target.chains() {
                let old = current_chains[usize::from(vb)].1;
                let active = old.first().copied().flatten();
                let active_high = active.and_then(|a| high_of(views, a, vb));
                for s in chain.iter().flatten() {
                    if old.contains(&Some(*s)) {
                        continue;
                    }
                    // A new copy counts once its node builds it (replica)
                    // and has reached where the active was.
                    let building = state_of(views, *s, vb) == Some(2);
                    let ok = match (high_of(views, *s, vb), prev_active[usize::from(vb)]) {
                        (Some(h), prev) => building && prev != u64::MAX && h >= prev,
                        (None, _) => false,
                    };
                    if !ok {
                        behind += 1;
                    }
                }
                // An active that did not answer this time says nothing:
                // its copies are not known to have caught up with it.
                prev_active[usize::from(vb)] = active_high.unwrap_or(u64::MAX);
            }
            behind
        };
        let late = |n| format!("{n} new copies did not catch up in time");
        self.poll_until(name, servers, CATCH_UP_DEADLINE, stop, behind, late)
            .await
    }

    /// Makes `chains` bucket `name`'s map (no forward chains) and waits
    /// until every new active has taken its vbuckets over.
    pub(super) async fn switch_to(
        &self,
        name: &str,
        servers: &[NodeId],
        chains: &[Vec<i64>],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        self.write(Command::SetBucketMap {
            name: name.to_string(),
            servers: servers.to_vec(),
            chains: chains.to_vec(),
            forward: None,
        })
        .await
        .map_err(|e| e.to_string())?;
        self.wait_switched(name, servers, chains, stop).await
    }

    /// Polls until every vbucket's new active reports itself active.
    async fn wait_switched(
        &self,
        name: &str,
        servers: &[NodeId],
        chains: &[Vec<i64>],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let waiting = |views: &Views| {
            chains
                .iter()
                .enumerate()
                .filter(|(vb, chain)| {
                    let Some(active) = chain.first().and_then(|a| u16::try_from(*a).ok()) else {
                        return false;
                    };
                    state_of(views, active, *vb as u16) != Some(1)
                })
                .count()
        };
        let late = |n| format!("{n} vbuckets were not taken over in time");
        self.poll_until(name, servers, SWITCH_DEADLINE, stop, waiting, late)
            .await
    }

    /// Polls `servers` until `waiting` counts nothing left to wait for in
    /// what they answered; past `deadline`, fails with `late` of the count.
    async fn poll_until(
        &self,
        name: &str,
        servers: &[NodeId],
        deadline: Duration,
        stop: &mut watch::Receiver<bool>,
        mut waiting: impl FnMut(&Views) -> usize,
        late: impl Fn(usize) -> Failure,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let mut seen = Poll::new(servers.len());
        loop {
            let views = self.poll(name, servers, &mut seen).await?;
            let left = waiting(&views);
            if left == 0 {
                return Ok(());
            }
            if started.elapsed() > deadline {
                return Err(late(left));
            }
            pause(stop).await?;
        }
    }

    /// Every server's `/internal/vbuckets/<b>`, `None` for one that did not
    /// answer this time; fails once one has not answered for
    /// [`UNREACHABLE`].
    async fn poll(
        &self,
        name: &str,
        servers: &[NodeId],
        seen: &mut Poll,
    ) -> Result<Vec<Option<VbucketRows>>, Failure> {
        let state = self.state();
        let requests = servers.iter().map(|id| {
            let path = format!("/internal/vbuckets/{name}");
            let request = state
                .nodes
                .get(id)
                .map(|n| self.peers().get(&n.admin_address(), &path));
            async move {
                let reply = request?.timeout(Duration::from_secs(2)).send().await.ok()?;
                if !reply.status().is_success() {
                    return None;
                }
                reply.json::<VbucketRows>().await.ok()
            }
        });
        let views = futures_util::future::join_all(requests).await;
        for (i, view) in views.iter().enumerate() {
            if view.is_some() {
                seen.last[i] = Instant::now();
            } else if seen.last[i].elapsed() > UNREACHABLE {
                let who = servers
                    .get(i)
                    .and_then(|id| state.nodes.get(id))
                    .map_or_else(|| "a node".to_string(), |n| n.otp_node());
                return Err(format!("{who} stopped answering"));
            }
        }
        Ok(views)
    }
}

/// When each server last answered a poll.
struct Poll {
    last: Vec<Instant>,
}

impl Poll {
    fn new(n: usize) -> Poll {
        Poll {
            last: vec![Instant::now(); n],
        }
    }
}

/// Waits one poll interval; fails if the rebalance was stopped.
/// Why a stopped rebalance ended.
const STOPPED: &str = "stopped by POST /controller/stopRebalance";

async fn pause(stop: &mut watch::Receiver<bool>) -> Result<(), Failure> {
    if *stop.borrow() {
        return Err(STOPPED.into());
    }
    tokio::select! {
        () = tokio::time::sleep(POLL) => Ok(()),
        _ = stop.changed() => Err(STOPPED.into()),
    }
}

/// The state (SET_VBUCKET numbering) server `s` reports for `vb`.
fn state_of(views: &Views, s: u16, vb: u16) -> Option<u32> {
    views
        .get(usize::from(s))?
        .as_ref()?
        .iter()
        .find(|r| r.0 == vb)
        .map(|r| r.1)
}

/// The high seqno server `s` reports for `vb`.
fn high_of(views: &Views, s: u16, vb: u16) -> Option<u64> {
    views
        .get(usize::from(s))?
        .as_ref()?
        .iter()
        .find(|r| r.0 == vb)
        .map(|r| r.2)
}

/// Splits `pending` (vbuckets whose chain differs between `now` and
/// `target`) into the next batch — as many as fit with each server
/// receiving at most [`MOVES_PER_NODE`] new copies, always at least one —
/// and the rest, both in their original order.
fn next_batch(
    now: &[Vec<i64>],
    target: &[Vec<i64>],
    pending: Vec<usize>,
) -> (Vec<usize>, Vec<usize>) {
    let mut incoming: BTreeMap<i64, usize> = BTreeMap::new();
    let (mut batch, mut rest) = (Vec::new(), Vec::new());
    for vb in pending {
        let new: Vec<i64> = target[vb]
            .iter()
            .copied()
            .filter(|s| *s >= 0 && !now[vb].contains(s))
            .collect();
        let fits = new
            .iter()
            .all(|s| incoming.get(s).copied().unwrap_or(0) < MOVES_PER_NODE);
        if fits || batch.is_empty() {
            for s in new {
                *incoming.entry(s).or_default() += 1;
            }
            batch.push(vb);
        } else {
            rest.push(vb);
        }
    }
    (batch, rest)
}

/// `chains` with each node of `kept` (server index, vbuckets it holds)
/// written into a free replica slot of the vbuckets it holds: the map as
/// it would be had those copies never left it.
fn with_kept_copies(chains: &[Vec<i64>], kept: &[(i64, Vec<u16>)]) -> Vec<Vec<i64>> {
    let mut chains = chains.to_vec();
    for (idx, vbs) in kept {
        for vb in vbs {
            let Some(chain) = chains.get_mut(usize::from(*vb)) else {
                continue;
            };
            if chain.contains(idx) || chain.first() == Some(&-1) {
                continue;
            }
            if let Some(slot) = chain.iter_mut().skip(1).find(|s| **s == -1) {
                *slot = *idx;
            }
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_copies_fill_free_replica_slots_only() {
        let chains = vec![vec![0, -1], vec![1, 0], vec![-1, -1], vec![1, -1]];
        let kept = vec![(2, vec![0, 1, 2, 3, 9])];
        assert_eq!(
            with_kept_copies(&chains, &kept),
            vec![vec![0, 2], vec![1, 0], vec![-1, -1], vec![1, 2]],
            "a full chain and a chain without an active stay as they are"
        );
    }

    #[test]
    fn batches_cap_what_each_server_receives() {
        let n = MOVES_PER_NODE * 2 + 3;
        let now: Vec<Vec<i64>> = (0..n).map(|_| vec![0, 1]).collect();
        let mut target = now.clone();
        for chain in target.iter_mut().take(MOVES_PER_NODE * 2 + 1) {
            *chain = vec![2, 0];
        }
        target[n - 1] = vec![1, 0]; // a swap: no server receives a copy
        let pending: Vec<usize> = (0..n).filter(|&vb| now[vb] != target[vb]).collect();
        let (batch, rest) = next_batch(&now, &target, pending);
        assert_eq!(batch.len(), MOVES_PER_NODE + 1, "the swap fits any batch");
        assert!(batch.contains(&(n - 1)));
        let (batch, rest) = next_batch(&now, &target, rest);
        assert_eq!(batch.len(), MOVES_PER_NODE);
        let (batch, rest) = next_batch(&now, &target, rest);
        assert_eq!((batch.len(), rest.len()), (1, 0));
    }
}
