//! Graceful failover (Couchbase's `startGracefulFailover`), for taking a
//! healthy node out for maintenance without an error or a lost write: each
//! vbucket the node leads is handed to its first replica — a takeover, as
//! in a rebalance's switch, so the replica turns active only once it holds
//! everything the node had — in batches, and then the node, now holding
//! replicas only, is failed over like any other (it keeps its data for a
//! delta recovery). It runs as the cluster's one rebalance-like task:
//! progress in `rebalanceProgress`, stopped by `stopRebalance` (the batches
//! already handed over stay; the node stays active).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::rebalance::{Failure, MOVES_PER_NODE};
use super::state::{ClusterState, Membership, NodeId, Rejection};
use super::{Manager, ManagerError};
use crate::bucket::BucketKind;

impl Manager {
    /// Leader side of `POST /controller/startGracefulFailover`: checks that
    /// node `id` can go gracefully and starts it in the background.
    pub fn start_graceful_failover(self: &Arc<Self>, id: NodeId) -> Result<(), ManagerError> {
        let state = self.state();
        check_graceful(&state, id)?;
        let stop = self.begin_task(&state)?;
        let manager = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = manager.graceful_failover(id, stop).await;
            manager.end_task("graceful failover", started, result);
        });
        Ok(())
    }

    async fn graceful_failover(
        &self,
        id: NodeId,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let names: Vec<String> = self
            .state()
            .buckets
            .values()
            .filter(|b| b.spec.kind == BucketKind::Membase)
            .map(|b| b.spec.name.clone())
            .collect();
        for (i, name) in names.iter().enumerate() {
            self.rebalancer.update(|s| {
                s.bucket = Some(name.clone());
                s.done = i;
            });
            self.hand_over_actives(name, id, &mut stop)
                .await
                .map_err(|e| format!("bucket {name:?}: {e}"))?;
        }
        self.rebalancer.update(|s| {
            s.done = names.len();
            s.phase = "failover";
        });
        self.fail_over(id, false).await.map_err(|e| e.to_string())
    }

    /// Hands every vbucket of bucket `name` that node `id` leads to its
    /// first replica, a batch at a time, waiting for each batch's
    /// takeovers.
    async fn hand_over_actives(
        &self,
        name: &str,
        id: NodeId,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let state = self.state();
        let Some(bucket) = state.buckets.get(name) else {
            return Ok(()); // deleted meanwhile
        };
        let Some(idx) = bucket.servers.iter().position(|s| *s == id) else {
            return Ok(());
        };
        let idx = idx as i64;
        let servers = bucket.servers.clone();
        let mut now = bucket.chains.clone();
        let led: Vec<usize> = (0..now.len()).filter(|&vb| now[vb][0] == idx).collect();
        self.rebalancer.update(|s| {
            s.vbuckets_done = 0;
            s.vbuckets_total = led.len();
        });
        for (done, batch) in led.chunks(MOVES_PER_NODE).enumerate() {
            let mut next = now.clone();
            for &vb in batch {
                // [node, replica, …] becomes [replica, node, …].
                next[vb].swap(0, 1);
            }
            self.rebalancer.update(|s| s.phase = "switch");
            self.switch_to(name, &servers, &next, stop).await?;
            now = next;
            self.rebalancer.update(|s| {
                s.vbuckets_done = (done * MOVES_PER_NODE + batch.len()).min(led.len());
            });
        }
        Ok(())
    }
}

/// Refuses a graceful failover of node `id` that could not finish: the
/// node must be active, not the last one, and every vbucket it leads must
/// have a replica to hand over to.
fn check_graceful(state: &ClusterState, id: NodeId) -> Result<(), ManagerError> {
    let node = state
        .nodes
        .get(&id)
        .ok_or_else(|| Rejection::NotFound(format!("no node with id {id}")))?;
    let conflict = |m: String| ManagerError::Rejected(Rejection::Conflict(m));
    if node.membership != Membership::Active {
        return Err(conflict(format!(
            "{} is not active: only an active node can be failed over gracefully",
            node.otp_node()
        )));
    }
    for bucket in state.buckets.values() {
        let Some(idx) = bucket.servers.iter().position(|s| *s == id) else {
            continue;
        };
        let idx = idx as i64;
        if let Some(vb) = bucket
            .chains
            .iter()
            .position(|c| c.first() == Some(&idx) && c.get(1).is_none_or(|r| *r < 0))
        {
            return Err(conflict(format!(
                "vbucket {vb} of bucket {:?} has no replica for {} to hand it to; \
                 rebalance first or fail the node over hard",
                bucket.spec.name,
                node.otp_node()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::state::{BucketRecord, NodeRecord};

    fn state(chains: Vec<Vec<i64>>) -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=2 {
            s.nodes.insert(
                id,
                NodeRecord {
                    id,
                    host: "h".into(),
                    data_port: 1,
                    admin_port: id as u16,
                    tls_data_port: None,
                    tls_admin_port: None,
                    membership: Membership::Active,
                    recovery: None,
                    memory_mb: None,
                },
            );
        }
        let bucket = BucketRecord {
            spec: crate::bucket::BucketSpec {
                name: "b".into(),
                kind: BucketKind::Membase,
                ram_quota_mb: 100,
                replicas: 1,
                durability: crate::bucket::Durability::None,
                num_vbuckets: 2,
                password: None,
                flush_enabled: false,
            },
            uuid: "u".into(),
            servers: vec![1, 2],
            chains,
            forward: None,
            rev: 1,
        };
        s.buckets.insert("b".into(), bucket);
        s
    }

    #[test]
    fn a_led_vbucket_without_a_replica_refuses_graceful_failover() {
        assert!(check_graceful(&state(vec![vec![0, 1], vec![1, 0]]), 1).is_ok());
        let err = check_graceful(&state(vec![vec![0, -1], vec![1, 0]]), 1).unwrap_err();
        assert!(err.to_string().contains("vbucket 0"), "{err}");
        // Node 2 leads vbucket 1, whose replica is there.
        assert!(check_graceful(&state(vec![vec![0, -1], vec![1, 0]]), 2).is_ok());
        assert!(check_graceful(&state(vec![vec![0, 1]]), 9).is_err());
    }
}
