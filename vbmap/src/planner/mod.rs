//! The vbucket planner: balanced fresh maps ([`fresh_map`]), rebalance plans
//! that move as little as balance requires ([`plan_rebalance`]), failover
//! promotion ([`fail_over`]) and the balance checks the cluster manager runs
//! on any map ([`MapStats`], [`check_balanced`]). Everything here is a pure,
//! deterministic function of its arguments — no clocks, no randomness, no
//! hash-order iteration — so every node that runs the planner on the same
//! map and server set computes the same answer. Servers are [`ServerIdx`]
//! positions in the server list that goes with a map; a server set is treated
//! as a set (order and duplicates do not matter). Submodules: `place` (the
//! assignment algorithm shared by fresh maps and rebalance), `moves` (the
//! move list and its order), `failover`, `stats`.

mod failover;
mod moves;
mod place;
mod stats;

#[cfg(test)]
mod proptests;

use crate::map::{MapError, ServerIdx, VbucketMap};

pub use failover::{fail_over, FailoverOutcome, ReplicaSeqnos};
pub use moves::Move;
pub use stats::{check_balanced, is_balanced, BalanceError, MapStats};

/// The number of replicas a balanced map over `num_servers` servers actually
/// holds: `min(num_replicas, num_servers - 1)`, because no server may hold
/// two copies of one vbucket. Chain positions past it stay `None`.
pub fn effective_replicas(num_replicas: usize, num_servers: usize) -> usize {
    num_replicas.min(num_servers.saturating_sub(1))
}

/// A balanced map for a new bucket: actives round-robin over `servers`,
/// replicas spread so that each server's first replicas of another server's
/// actives are spread over the rest (a failover then shares the promoted load).
///
/// The result passes [`check_balanced`] for `servers`: every vbucket has an
/// active (when there is at least one server), [`effective_replicas`]
/// replicas on distinct servers, and active and replica counts per server
/// differ by at most one. With no servers every slot is `None`.
///
/// # Errors
///
/// [`MapError::VbucketCount`] when `num_vbuckets` is not a power of two in
/// `1..=65536`; [`MapError::Replicas`] when `num_replicas` exceeds
/// [`MAX_REPLICAS`](crate::map::MAX_REPLICAS).
pub fn fresh_map(
    num_vbuckets: usize,
    servers: &[ServerIdx],
    num_replicas: usize,
) -> Result<VbucketMap, MapError> {
    let empty = VbucketMap::empty(num_vbuckets, num_replicas)?;
    place::place(&empty, servers, num_replicas)
}

/// A rebalance: the map to reach and the per-vbucket changes that lead there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebalancePlan {
    /// The balanced map for the new server set.
    pub target: VbucketMap,
    /// One entry per vbucket whose chain changes, interleaved across source
    /// servers (see [`plan_rebalance`]). A vbucket that is not listed keeps
    /// its chain exactly.
    pub moves: Vec<Move>,
}

/// Plan a rebalance of `current` onto `servers` (the server set after adds
/// and removes) with `num_replicas` replicas per vbucket.
///
/// The target passes [`check_balanced`] for `servers`, and it is as close to
/// `current` as balance allows: an active stays where it is unless its server
/// is leaving or holds more than its share; a vbucket that must find a new
/// active is first offered to an under-loaded server that already holds a
/// replica (a promotion, no data copied); existing replicas and demoted
/// actives are kept as replicas wherever quotas allow. A map that is already
/// balanced for `servers` gives no moves. `current` may have holes (no active
/// after a failover, missing replicas), servers outside `servers`, and a
/// different replica count.
///
/// Moves are ordered round-robin over their source server (the current
/// active, or the first surviving copy) so a driver that runs a few moves per
/// node at a time keeps every node busy.
///
/// # Errors
///
/// [`MapError::Replicas`] when `num_replicas` exceeds
/// [`MAX_REPLICAS`](crate::map::MAX_REPLICAS).
pub fn plan_rebalance(
    current: &VbucketMap,
    servers: &[ServerIdx],
    num_replicas: usize,
) -> Result<RebalancePlan, MapError> {
    let target = place::place(current, servers, num_replicas)?;
    let moves = moves::diff(current, &target);
    Ok(RebalancePlan { target, moves })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(chains: &[&[i64]], replicas: usize, servers: usize) -> VbucketMap {
        let chains: Vec<Vec<i64>> = chains.iter().map(|c| c.to_vec()).collect();
        VbucketMap::from_chains(&chains, replicas, servers).unwrap()
    }

    #[test]
    fn fresh_four_vbuckets_two_servers_one_replica() {
        let m = fresh_map(4, &[0, 1], 1).unwrap();
        assert_eq!(
            m.to_chains(),
            vec![vec![0, 1], vec![1, 0], vec![0, 1], vec![1, 0]]
        );
        assert!(is_balanced(&m, &[0, 1]));
    }

    #[test]
    fn fresh_map_caps_replicas_at_servers_minus_one() {
        let m = fresh_map(4, &[3, 5], 3).unwrap();
        for (_, chain) in m.chains() {
            assert!(chain[0].is_some() && chain[1].is_some());
            assert_eq!(&chain[2..], &[None, None]);
        }
        assert!(is_balanced(&m, &[5, 3]));
        let single = fresh_map(2, &[7], 2).unwrap();
        assert_eq!(single.to_chains(), vec![vec![7, -1, -1], vec![7, -1, -1]]);
    }

    #[test]
    fn fresh_map_without_servers_is_empty() {
        let m = fresh_map(8, &[], 1).unwrap();
        assert!(m.chains().all(|(_, c)| c.iter().all(Option::is_none)));
        assert!(is_balanced(&m, &[]));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(fresh_map(3, &[0], 0), Err(MapError::VbucketCount(3)));
        assert_eq!(fresh_map(0, &[0], 0), Err(MapError::VbucketCount(0)));
        assert_eq!(fresh_map(4, &[0], 99), Err(MapError::Replicas(99)));
        let m = fresh_map(4, &[0], 1).unwrap();
        assert_eq!(plan_rebalance(&m, &[0], 99), Err(MapError::Replicas(99)));
    }

    #[test]
    fn fresh_map_ignores_server_order_and_duplicates() {
        let a = fresh_map(64, &[4, 1, 9, 1], 2).unwrap();
        let b = fresh_map(64, &[1, 4, 9], 2).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fresh_map_spreads_first_replicas() {
        // 4 servers, 12 vbuckets: each server is active for 3 vbuckets and
        // their first replicas land on the 3 other servers, one each.
        let m = fresh_map(16, &[0, 1, 2, 3], 1).unwrap();
        let mut pairs = [[0u32; 4]; 4];
        for (_, chain) in m.chains() {
            pairs[chain[0].unwrap() as usize][chain[1].unwrap() as usize] += 1;
        }
        for (a, row) in pairs.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                if a != b {
                    assert!((1..=2).contains(&n), "{pairs:?}");
                }
            }
        }
    }

    #[test]
    fn balanced_map_needs_no_moves() {
        let m = fresh_map(1024, &[0, 1, 2, 3, 4], 2).unwrap();
        let plan = plan_rebalance(&m, &[0, 1, 2, 3, 4], 2).unwrap();
        assert_eq!(plan.target, m);
        assert!(plan.moves.is_empty());
    }

    #[test]
    fn adding_a_server_moves_its_share() {
        let m = fresh_map(4, &[0, 1], 1).unwrap();
        let plan = plan_rebalance(&m, &[0, 1, 2], 1).unwrap();
        assert!(is_balanced(&plan.target, &[0, 1, 2]));
        let stats = MapStats::new(&plan.target);
        assert_eq!(stats.actives(2), 1);
        let moved = plan.moves.iter().filter(|m| m.from[0] != m.to[0]).count();
        assert_eq!(moved, 1);
    }

    #[test]
    fn removing_a_server_promotes_its_replicas() {
        // [0,1] [1,0] [0,1] [1,0] without server 1: its actives are promoted
        // on 0 (which already holds them), nothing is copied.
        let m = fresh_map(4, &[0, 1], 1).unwrap();
        let plan = plan_rebalance(&m, &[0], 1).unwrap();
        assert_eq!(plan.target.to_chains(), vec![vec![0, -1]; 4]);
        assert_eq!(plan.moves.len(), 4);
        assert!(plan.moves.iter().all(|m| m.new_copies().next().is_none()));
    }

    #[test]
    fn rebalance_prefers_promotion_to_copying() {
        // Server 0 holds all actives; 1 and 2 hold replicas. Balancing hands
        // actives to the replica holders and demotes 0 to replica: no copies.
        let m = map(
            &[
                &[0, 1],
                &[0, 2],
                &[0, 1],
                &[0, 2],
                &[0, 1],
                &[0, 2],
                &[0, 1],
                &[0, 2],
            ],
            1,
            3,
        );
        let plan = plan_rebalance(&m, &[0, 1, 2], 1).unwrap();
        assert!(is_balanced(&plan.target, &[0, 1, 2]));
        let copied: usize = plan.moves.iter().map(|m| m.new_copies().count()).sum();
        let promoted = plan
            .moves
            .iter()
            .filter(|m| m.changes_active() && m.from.contains(&m.to[0]))
            .count();
        assert_eq!(promoted, 5, "{:?}", plan.target.to_chains());
        // Server 0 can keep only 3 of the 5 demoted copies as replicas (its
        // replica quota), so exactly 2 replicas must be copied.
        assert_eq!(copied, 2, "{:?}", plan.target.to_chains());
    }

    #[test]
    fn rebalance_fills_holes_from_surviving_replicas() {
        let m = map(&[&[-1, 1], &[1, -1], &[-1, -1], &[0, -1]], 1, 2);
        let plan = plan_rebalance(&m, &[0, 1], 1).unwrap();
        assert!(is_balanced(&plan.target, &[0, 1]));
        assert_eq!(plan.target.active(0), Some(1), "promoted, not copied");
        assert_eq!(plan.target.active(1), Some(1));
        assert_eq!(plan.target.active(3), Some(0));
    }

    #[test]
    fn rebalance_changes_replica_count() {
        let m = fresh_map(8, &[0, 1, 2], 1).unwrap();
        let plan = plan_rebalance(&m, &[0, 1, 2], 2).unwrap();
        assert!(is_balanced(&plan.target, &[0, 1, 2]));
        assert_eq!(plan.target.num_replicas(), 2);
        for (vb, chain) in m.chains() {
            assert_eq!(&plan.target.chain(vb)[..2], chain, "existing copies stay");
        }
    }

    #[test]
    fn moves_interleave_sources() {
        let m = fresh_map(64, &[0, 1, 2, 3], 1).unwrap();
        let plan = plan_rebalance(&m, &[0, 1, 2, 3, 4, 5], 1).unwrap();
        let first: Vec<_> = plan.moves.iter().take(4).map(Move::source).collect();
        assert_eq!(first, vec![Some(0), Some(1), Some(2), Some(3)]);
    }
}
