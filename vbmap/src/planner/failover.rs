//! Failover: take one server out of every chain and promote a replica for
//! each vbucket it was active for. No data moves and nothing is rebalanced
//! here — the map only stops naming the failed server — so a failover can
//! be applied the moment the orchestrator decides it; a later
//! [`plan_rebalance`](super::plan_rebalance) restores balance and replica
//! count. The promoted replica is, by default, the first surviving one in
//! chain order (replica 1 is the one the active streams to first), or, when
//! the caller has asked the survivors for their high seqnos, the most
//! up-to-date one, which loses the fewest acknowledged writes.

use std::collections::HashMap;

use crate::map::{ServerIdx, VbucketId, VbucketMap};

/// High seqno per (vbucket, server holding a replica of it), as reported by
/// the surviving nodes. Missing entries rank below every reported seqno.
pub type ReplicaSeqnos = HashMap<(VbucketId, ServerIdx), u64>;

/// The map after a failover and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverOutcome {
    /// The map without the failed server.
    pub map: VbucketMap,
    /// Vbuckets that had a copy before and have none now (the failed server
    /// held the only one). Their active is `None`; the cluster manager
    /// refuses such a failover unless forced.
    pub lost_vbuckets: Vec<VbucketId>,
}

/// Remove `failed` from every chain of `current`.
///
/// For each vbucket whose active is on `failed`, a surviving replica becomes
/// active: the one with the highest seqno in `replica_seqnos` when given
/// (ties go to the earlier chain position), otherwise the first in chain
/// order. In every chain that named `failed`, the surviving replicas shift up
/// in their order so the chain has no gaps, and the freed slots become
/// `None`. Chains that did not name `failed` are left exactly as they were,
/// including an earlier hole in the active position: filling it is a
/// rebalance's job. Every surviving copy stays in the map.
pub fn fail_over(
    current: &VbucketMap,
    failed: ServerIdx,
    replica_seqnos: Option<&ReplicaSeqnos>,
) -> FailoverOutcome {
    let mut map = current.clone();
    let mut lost_vbuckets = Vec::new();
    let mut survivors: Vec<ServerIdx> = Vec::with_capacity(current.num_replicas());
    for (vb, chain) in current.chains() {
        if !chain.contains(&Some(failed)) {
            continue;
        }
        survivors.clear();
        for &s in chain[1..].iter().flatten() {
            if s != failed && !survivors.contains(&s) {
                survivors.push(s);
            }
        }
        let active = match chain[0] {
            Some(a) if a == failed => {
                let best = match replica_seqnos {
                    // max_by_key keeps the last maximum; scanning in reverse
                    // makes that the earliest chain position.
                    Some(seqnos) => survivors
                        .iter()
                        .enumerate()
                        .rev()
                        .max_by_key(|&(_, s)| seqnos.get(&(vb, *s)).copied())
                        .map(|(i, _)| i),
                    None => (!survivors.is_empty()).then_some(0),
                };
                best.map(|i| survivors.remove(i))
            }
            other => other,
        };
        if active.is_none() && survivors.is_empty() {
            lost_vbuckets.push(vb);
        }
        map.set(vb, 0, active);
        for pos in 1..=current.num_replicas() {
            map.set(vb, pos, survivors.get(pos - 1).copied());
        }
    }
    FailoverOutcome { map, lost_vbuckets }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(chains: &[&[i64]], replicas: usize) -> VbucketMap {
        let chains: Vec<Vec<i64>> = chains.iter().map(|c| c.to_vec()).collect();
        VbucketMap::from_chains(&chains, replicas, 8).unwrap()
    }

    #[test]
    fn promotes_first_surviving_replica() {
        let m = map(&[&[0, 1, 2], &[1, 0, 2], &[2, 1, -1], &[0, -1, -1]], 2);
        let out = fail_over(&m, 0, None);
        assert_eq!(
            out.map.to_chains(),
            vec![
                vec![1, 2, -1],
                vec![1, 2, -1],
                vec![2, 1, -1],
                vec![-1, -1, -1]
            ]
        );
        assert_eq!(out.lost_vbuckets, vec![3]);
    }

    #[test]
    fn promotes_highest_seqno_with_ties_in_chain_order() {
        let m = map(
            &[&[0, 1, 2, 3], &[0, 1, 2, 3], &[0, 1, 2, 3], &[4, 0, 1, 2]],
            3,
        );
        let seqnos: ReplicaSeqnos = [
            ((0, 1), 5),
            ((0, 2), 9),
            ((0, 3), 7),
            ((1, 2), 4),
            ((1, 3), 4),
            ((2, 3), 1),
        ]
        .into_iter()
        .collect();
        let out = fail_over(&m, 0, Some(&seqnos));
        assert_eq!(
            out.map.to_chains(),
            vec![
                vec![2, 1, 3, -1],
                vec![2, 1, 3, -1],
                vec![3, 1, 2, -1],
                vec![4, 1, 2, -1]
            ]
        );
        assert!(out.lost_vbuckets.is_empty());
    }

    #[test]
    fn leaves_unrelated_chains_alone() {
        let m = map(&[&[-1, 1, -1], &[1, 2, -1], &[2, -1, 0], &[2, 0, 1]], 2);
        let out = fail_over(&m, 0, None);
        assert_eq!(
            out.map.to_chains(),
            vec![
                vec![-1, 1, -1],
                vec![1, 2, -1],
                vec![2, -1, -1],
                vec![2, 1, -1]
            ]
        );
        let again = fail_over(&out.map, 5, None);
        assert_eq!(again.map, out.map, "a server the map does not name");
    }

    #[test]
    fn replica_only_copy_lost() {
        let m = map(&[&[-1, 0], &[1, 0]], 1);
        let out = fail_over(&m, 0, None);
        assert_eq!(out.lost_vbuckets, vec![0]);
        assert_eq!(out.map.to_chains(), vec![vec![-1, -1], vec![1, -1]]);
    }
}
