//! Fencing: a node cut off from the cluster stops serving its active
//! vbuckets before the others can fail it over, and serves them again only
//! once it has caught up with what they decided meanwhile — so a client
//! that still talks to it with an old map never reads a value the cluster
//! has since replaced.
//!
//! Every [`PROBE_EVERY`] the node asks each other Raft voter for its
//! applied log index (`GET /internal/lease`, cluster only). Voters that
//! have not answered for [`LEASE`] count as unreachable. When the
//! unreachable ones could form a majority of the voters without this node
//! — they could fail it over — the node fences: requests for its active
//! vbuckets answer NOT_MY_VBUCKET (clients and proxies fetch the map
//! again). It unfences once a majority answers again and the state it has
//! reconciled (vbucket states set from the map) is at least as new as the
//! newest index they reported. A node whose unreachable peers could not
//! make a majority (one of two nodes) keeps serving: nobody can fail it
//! over. [`LEASE`] is shorter than the shortest auto-failover timeout, so
//! the fence is up before a failover promotes another copy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Manager, NodeId};
use crate::bucket::Buckets;

/// How often the voters are asked.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A voter that has not answered for this long counts as unreachable (the
/// shortest auto-failover timeout is 1 s, and failing over takes longer).
const LEASE: Duration = Duration::from_millis(900);

/// Whether this node fences its active vbuckets, and how far its
/// reconciling has got; shared with the reconcile loop and the admin port.
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    /// The applied log index of the last state the reconcile loop drove
    /// the buckets to.
    reconciled: AtomicU64,
}

impl Fence {
    /// A fence that starts up or down: a node restarting in a cluster of
    /// several starts fenced, as its last state may be stale.
    pub fn new(fenced: bool) -> Fence {
        Fence {
            fenced: AtomicBool::new(fenced),
            reconciled: AtomicU64::new(0),
        }
    }

    /// Whether the node fences now.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Notes that the buckets match the state applied at `index`.
    pub fn reconciled(&self, index: u64) {
        self.reconciled.fetch_max(index, Ordering::Relaxed);
    }
}

/// What the fence loop decides from one round of probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Serve,
    Fence,
}

/// Whether to fence: `voters` in all, `reachable` of them answering
/// (this node included), `fenced` now, this node's `reconciled` index and
/// the newest index the reachable ones `reported`.
fn decide(
    voters: usize,
    reachable: usize,
    fenced: bool,
    reconciled: u64,
    reported: u64,
) -> Decision {
    let majority = voters / 2 + 1;
    let unreachable = voters.saturating_sub(reachable);
    if voters > 1 && unreachable >= majority {
        return Decision::Fence;
    }
    if fenced && reconciled < reported {
        return Decision::Fence;
    }
    Decision::Serve
}

/// Runs until `shutdown` flips.
pub async fn run(
    manager: Arc<Manager>,
    buckets: Arc<Buckets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let fence = manager.fence.clone();
    // When each voter last answered, and the index it reported.
    let mut answered: BTreeMap<NodeId, (Instant, u64)> = BTreeMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let me = manager.me().id;
        let voters = manager.voters();
        for (id, index) in probe(&manager, &voters, me).await {
            answered.insert(id, (Instant::now(), index));
        }
        answered.retain(|id, _| voters.contains(id));
        let fresh: Vec<u64> = answered
            .values()
            .filter(|(at, _)| at.elapsed() < LEASE)
            .map(|&(_, index)| index)
            .collect();
        let reachable = fresh.len() + usize::from(voters.contains(&me));
        let reported = fresh.iter().copied().max().unwrap_or(0);
        let was = fence.is_fenced();
        let decision = decide(
            voters.len(),
            reachable,
            was,
            fence.reconciled.load(Ordering::Relaxed),
            reported,
        );
        let fenced = decision == Decision::Fence;
        if fenced != fence.is_fenced() {
            if fenced {
                tracing::warn!(
                    reachable,
                    voters = voters.len(),
                    "cut off from the cluster's majority: active vbuckets fenced"
                );
            } else {
                tracing::info!(
                    reachable,
                    voters = voters.len(),
                    "back with the cluster's majority and caught up: serving again"
                );
            }
        }
        fence.fenced.store(fenced, Ordering::Relaxed);
        for name in buckets.names() {
            if let Some(live) = buckets.get(&name) {
                live.engine.set_fenced(fenced);
            }
        }
    }
}

/// Asks every voter but `me` for its applied index; the ones that answered.
async fn probe(
    manager: &Manager,
    voters: &std::collections::BTreeSet<NodeId>,
    me: NodeId,
) -> Vec<(NodeId, u64)> {
    let state = manager.state();
    let asks = voters.iter().filter(|id| **id != me).filter_map(|id| {
        let node = state.nodes.get(id)?;
        let request = manager
            .peers()
            .get(&node.admin_address(), "/internal/lease");
        let id = *id;
        Some(async move {
            let reply = request.timeout(PROBE_TIMEOUT).send().await.ok()?;
            let body: serde_json::Value = reply.error_for_status().ok()?.json().await.ok()?;
            Some((id, body.get("applied")?.as_u64()?))
        })
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_when_the_unreachable_could_fail_it_over() {
        // Three voters: alone, it fences; with one peer it serves.
        assert_eq!(decide(3, 1, false, 10, 0), Decision::Fence);
        assert_eq!(decide(3, 2, false, 10, 10), Decision::Serve);
        // Two voters: the other alone is no majority, so no fence.
        assert_eq!(decide(2, 1, false, 10, 0), Decision::Serve);
        // One voter, or none yet (not in a cluster): never.
        assert_eq!(decide(1, 1, false, 0, 0), Decision::Serve);
        assert_eq!(decide(0, 0, false, 0, 0), Decision::Serve);
        // Five voters: three unreachable fence, two do not.
        assert_eq!(decide(5, 2, false, 0, 0), Decision::Fence);
        assert_eq!(decide(5, 3, false, 0, 0), Decision::Serve);
    }

    #[test]
    fn unfences_only_once_caught_up() {
        assert_eq!(decide(3, 3, true, 40, 41), Decision::Fence);
        assert_eq!(decide(3, 3, true, 41, 41), Decision::Serve);
        // Not fenced: a peer ahead is normal replication lag of the log.
        assert_eq!(decide(3, 3, false, 40, 41), Decision::Serve);
    }
}
