//! Per-server load of a map ([`MapStats`]) and the balance invariants every
//! planned map satisfies ([`check_balanced`]). The cluster manager uses these
//! to decide whether a rebalance is needed and to show each server's share;
//! the planner's tests use them as the definition of "balanced". The
//! invariants: each vbucket has an active and [`effective_replicas`]
//! replicas, all on distinct servers of the set, later positions empty;
//! active counts per server differ by at most one, and so do replica counts
//! (all replica positions counted together).

use crate::map::{ServerIdx, VbucketId, VbucketMap};

use super::effective_replicas;
use super::place::{ServerSet, NONE};

/// How many actives and replicas each server holds in one map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    actives: Vec<usize>,
    replicas: Vec<usize>,
    without_active: usize,
    empty_replica_slots: usize,
}

impl MapStats {
    /// Count every slot of `map`.
    pub fn new(map: &VbucketMap) -> Self {
        let mut stats = MapStats::default();
        let bump = |counts: &mut Vec<usize>, s: ServerIdx| {
            let i = usize::from(s);
            if counts.len() <= i {
                counts.resize(i + 1, 0);
            }
            counts[i] += 1;
        };
        for (_, chain) in map.chains() {
            match chain[0] {
                Some(s) => bump(&mut stats.actives, s),
                None => stats.without_active += 1,
            }
            for slot in &chain[1..] {
                match *slot {
                    Some(s) => bump(&mut stats.replicas, s),
                    None => stats.empty_replica_slots += 1,
                }
            }
        }
        stats
    }

    /// Vbuckets active on `server`.
    pub fn actives(&self, server: ServerIdx) -> usize {
        self.actives.get(usize::from(server)).copied().unwrap_or(0)
    }

    /// Replica slots (any position) held by `server`.
    pub fn replicas(&self, server: ServerIdx) -> usize {
        self.replicas.get(usize::from(server)).copied().unwrap_or(0)
    }

    /// Vbuckets with no active copy.
    pub fn without_active(&self) -> usize {
        self.without_active
    }

    /// Replica positions that are `None`, over all vbuckets.
    pub fn empty_replica_slots(&self) -> usize {
        self.empty_replica_slots
    }
}

/// Why a map is not balanced for a server set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    /// A position that should hold a server is empty.
    #[error("vbucket {vbucket} has no server at position {position}")]
    EmptySlot {
        /// The vbucket.
        vbucket: VbucketId,
        /// Its empty chain position (0 = active).
        position: usize,
    },
    /// A position past the effective replica count holds a server.
    #[error("vbucket {vbucket} has a server at position {position}, past the replicas the servers allow")]
    ExtraCopy {
        /// The vbucket.
        vbucket: VbucketId,
        /// The chain position that should be empty.
        position: usize,
    },
    /// A chain names a server outside the set.
    #[error("vbucket {vbucket} is on server {server}, which is not in the set")]
    UnknownServer {
        /// The vbucket.
        vbucket: VbucketId,
        /// The server it names.
        server: ServerIdx,
    },
    /// A chain names one server twice.
    #[error("vbucket {vbucket} has two copies on server {server}")]
    DuplicateCopy {
        /// The vbucket.
        vbucket: VbucketId,
        /// The repeated server.
        server: ServerIdx,
    },
    /// Active counts per server differ by more than one.
    #[error("actives per server range from {min} to {max}")]
    ActivesUneven {
        /// The smallest count.
        min: usize,
        /// The largest count.
        max: usize,
    },
    /// Replica counts per server differ by more than one.
    #[error("replicas per server range from {min} to {max}")]
    ReplicasUneven {
        /// The smallest count.
        min: usize,
        /// The largest count.
        max: usize,
    },
}

/// Check every balance invariant of `map` for `servers` (see the module doc);
/// the first violation found is returned. With no servers, every slot must
/// be empty.
pub fn check_balanced(map: &VbucketMap, servers: &[ServerIdx]) -> Result<(), BalanceError> {
    let set = ServerSet::new(servers);
    let r = effective_replicas(map.num_replicas(), set.len());
    let mut actives = vec![0usize; set.len()];
    let mut replicas = vec![0usize; set.len()];
    for (vbucket, chain) in map.chains() {
        for (position, &slot) in chain.iter().enumerate() {
            let wanted = !servers.is_empty() && position <= r;
            let server = match (slot, wanted) {
                (None, false) => continue,
                (None, true) => return Err(BalanceError::EmptySlot { vbucket, position }),
                (Some(_), false) => return Err(BalanceError::ExtraCopy { vbucket, position }),
                (Some(s), true) => s,
            };
            let rank = set.rank_of(slot);
            if rank == NONE {
                return Err(BalanceError::UnknownServer { vbucket, server });
            }
            if chain[..position].contains(&slot) {
                return Err(BalanceError::DuplicateCopy { vbucket, server });
            }
            let counts = if position == 0 {
                &mut actives
            } else {
                &mut replicas
            };
            counts[rank as usize] += 1;
        }
    }
    let spread = |counts: &[usize]| {
        let min = counts.iter().copied().min().unwrap_or(0);
        let max = counts.iter().copied().max().unwrap_or(0);
        (min, max)
    };
    let (min, max) = spread(&actives);
    if max > min + 1 {
        return Err(BalanceError::ActivesUneven { min, max });
    }
    let (min, max) = spread(&replicas);
    if max > min + 1 {
        return Err(BalanceError::ReplicasUneven { min, max });
    }
    Ok(())
}

/// Whether [`check_balanced`] finds nothing wrong.
pub fn is_balanced(map: &VbucketMap, servers: &[ServerIdx]) -> bool {
    check_balanced(map, servers).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(chains: &[&[i64]], replicas: usize) -> VbucketMap {
        let chains: Vec<Vec<i64>> = chains.iter().map(|c| c.to_vec()).collect();
        VbucketMap::from_chains(&chains, replicas, 8).unwrap()
    }

    #[test]
    fn counts_per_server() {
        let stats = MapStats::new(&map(&[&[0, 1], &[1, -1], &[-1, 0], &[0, 2]], 1));
        assert_eq!(
            (stats.actives(0), stats.actives(1), stats.actives(7)),
            (2, 1, 0)
        );
        assert_eq!(
            (stats.replicas(0), stats.replicas(1), stats.replicas(2)),
            (1, 1, 1)
        );
        assert_eq!(stats.without_active(), 1);
        assert_eq!(stats.empty_replica_slots(), 1);
    }

    #[test]
    fn finds_each_violation() {
        use BalanceError::*;
        let check =
            |chains: &[&[i64]], servers: &[ServerIdx]| check_balanced(&map(chains, 1), servers);
        assert_eq!(check(&[&[0, 1], &[1, 0]], &[0, 1]), Ok(()));
        assert_eq!(
            check(&[&[0, 1], &[1, -1]], &[0, 1]),
            Err(EmptySlot {
                vbucket: 1,
                position: 1
            })
        );
        assert_eq!(
            check(&[&[0, 1], &[0, -1]], &[0]),
            Err(ExtraCopy {
                vbucket: 0,
                position: 1
            })
        );
        assert_eq!(
            check(&[&[0, 2], &[1, 0]], &[0, 1]),
            Err(UnknownServer {
                vbucket: 0,
                server: 2
            })
        );
        assert_eq!(
            check(&[&[0, 0], &[1, 0]], &[0, 1]),
            Err(DuplicateCopy {
                vbucket: 0,
                server: 0
            })
        );
        assert_eq!(
            check(&[&[0, 1], &[0, 2], &[0, 1], &[1, 2]], &[0, 1, 2]),
            Err(ActivesUneven { min: 0, max: 3 })
        );
        assert_eq!(
            check(&[&[0, 2], &[1, 2], &[2, 0], &[0, 2]], &[0, 1, 2]),
            Err(ReplicasUneven { min: 0, max: 3 })
        );
        assert_eq!(check(&[&[-1, -1], &[-1, -1]], &[]), Ok(()));
    }
}
