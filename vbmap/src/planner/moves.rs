//! [`Move`]: one vbucket's chain change in a rebalance plan, and the order a
//! plan lists them in. A move names the whole old and new chain rather than
//! single positions, because a rebalance driver acts per vbucket (backfill
//! the new copies, then take over) and needs both ends to do it. Moves are
//! interleaved round-robin across source servers: a driver that walks the
//! list and runs a bounded number of moves per node in parallel then finds
//! work for every node near the front of the list instead of draining one
//! node at a time.

use std::collections::BTreeMap;
use std::collections::VecDeque;

use crate::map::{ServerIdx, VbucketId, VbucketMap};

/// One vbucket whose chain changes: `from` is its chain in the current map,
/// `to` its chain in the target (position 0 = active, then replicas).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Move {
    /// The vbucket that moves.
    pub vbucket: VbucketId,
    /// Its chain now (length = current `num_replicas + 1`).
    pub from: Vec<Option<ServerIdx>>,
    /// Its chain after the move (length = target `num_replicas + 1`).
    pub to: Vec<Option<ServerIdx>>,
}

impl Move {
    /// The server that streams this vbucket's data to new copies: the current
    /// active, or, when there is none, the first surviving copy in chain
    /// order. `None` when no copy exists (the vbucket starts empty).
    pub fn source(&self) -> Option<ServerIdx> {
        self.from.iter().flatten().copied().next()
    }

    /// Whether the active copy changes server.
    pub fn changes_active(&self) -> bool {
        self.from.first().copied().flatten() != self.to.first().copied().flatten()
    }

    /// Servers in the new chain that hold no copy now: each needs a backfill.
    pub fn new_copies(&self) -> impl Iterator<Item = ServerIdx> + '_ {
        self.to
            .iter()
            .flatten()
            .copied()
            .filter(|s| !self.from.contains(&Some(*s)))
    }

    /// Servers holding a copy now that are not in the new chain: their copy
    /// is dropped once the move completes.
    pub fn dropped_copies(&self) -> impl Iterator<Item = ServerIdx> + '_ {
        self.from
            .iter()
            .flatten()
            .copied()
            .filter(|s| !self.to.contains(&Some(*s)))
    }
}

/// Every vbucket whose chain differs between `current` and `target`, ordered
/// round-robin over source servers (ascending server index; vbuckets with no
/// copy at all come last in their own group), vbucket order within a source.
pub(super) fn diff(current: &VbucketMap, target: &VbucketMap) -> Vec<Move> {
    // BTreeMap keeps the group order a function of the input alone; `None`
    // sorts after every `Some` by keying on `(is_none, server)`.
    let mut by_source: BTreeMap<(bool, ServerIdx), VecDeque<Move>> = BTreeMap::new();
    let mut total = 0;
    for ((vb, from), (_, to)) in current.chains().zip(target.chains()) {
        if from == to {
            continue;
        }
        let mv = Move {
            vbucket: vb,
            from: from.to_vec(),
            to: to.to_vec(),
        };
        let key = mv.source().map_or((true, 0), |s| (false, s));
        by_source.entry(key).or_default().push_back(mv);
        total += 1;
    }
    let mut moves = Vec::with_capacity(total);
    while moves.len() < total {
        for queue in by_source.values_mut() {
            if let Some(mv) = queue.pop_front() {
                moves.push(mv);
            }
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_helpers() {
        let mv = Move {
            vbucket: 3,
            from: vec![Some(0), Some(1), None],
            to: vec![Some(1), Some(2), Some(0)],
        };
        assert_eq!(mv.source(), Some(0));
        assert!(mv.changes_active());
        assert_eq!(mv.new_copies().collect::<Vec<_>>(), vec![2]);
        assert_eq!(mv.dropped_copies().count(), 0);
        let orphan = Move {
            vbucket: 0,
            from: vec![None, Some(4)],
            to: vec![Some(4), Some(5)],
        };
        assert_eq!(orphan.source(), Some(4));
        assert_eq!(orphan.dropped_copies().count(), 0);
    }

    #[test]
    fn diff_interleaves_sources_and_puts_empty_vbuckets_last() {
        let from = VbucketMap::from_chains(
            &[
                vec![0],
                vec![0],
                vec![1],
                vec![-1],
                vec![0],
                vec![2],
                vec![1],
                vec![2],
            ],
            0,
            4,
        )
        .unwrap();
        let to = VbucketMap::from_chains(&vec![vec![3]; 8], 0, 4).unwrap();
        let order: Vec<VbucketId> = diff(&from, &to).iter().map(|m| m.vbucket).collect();
        assert_eq!(order, vec![0, 2, 5, 3, 1, 6, 7, 4]);
    }
}
