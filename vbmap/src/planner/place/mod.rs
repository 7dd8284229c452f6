//! The assignment algorithm behind [`fresh_map`](super::fresh_map) and
//! [`plan_rebalance`](super::plan_rebalance): from any current map and a
//! target server set, a balanced map close to the current one, computed on
//! dense server ranks (positions in the sorted set). Actives first: shares of
//! ⌊V/S⌋ or ⌈V/S⌉, the larger ones to the servers that already hold the most
//! actives, so only surplus moves; a vbucket that must move (homeless, or
//! shed by an over-quota server) goes to an under-quota server holding its
//! replica when there is one (a promotion, no data copied), else to the
//! server with the most room. Replicas second: shares of ⌊VR/S⌋ or ⌈VR/S⌉;
//! existing copies are kept in priority order, and the kept count is raised
//! to the most the shares allow with augmenting paths over existing copies;
//! missing replicas are then filled position by position, each on the server
//! holding the fewest replicas of that vbucket's active server so far, which
//! spreads the load a failover promotes. When every server with room already
//! holds the vbucket, an augmenting path shifts other replicas to make room
//! — one always exists (see [`Replicas`](replicas::Replicas)) — searched in
//! tiers from the cheapest (no extra copy, no extra vbucket moved) to the
//! dearest. Cost: O(V·R·S) for the fill, O(V·R² + S²) per path search.
//! Submodules: `actives` and `replicas`, one per stage; this module holds
//! what both read (the server set, the current copies, the share split).

mod actives;
mod replicas;

use crate::map::{MapError, ServerIdx, VbucketMap};

use super::effective_replicas;
use actives::assign_actives;
use replicas::assign_replicas;

/// "No server" in the rank-indexed working arrays.
pub(super) const NONE: u32 = u32::MAX;

/// A server set, sorted and deduplicated, with a reverse index from
/// [`ServerIdx`] to dense rank.
pub(super) struct ServerSet {
    /// The servers, ascending: rank → server.
    list: Vec<ServerIdx>,
    /// Server → rank, [`NONE`] for servers outside the set.
    rank: Vec<u32>,
}

impl ServerSet {
    pub(super) fn new(servers: &[ServerIdx]) -> Self {
        let mut list = servers.to_vec();
        list.sort_unstable();
        list.dedup();
        let mut rank = vec![NONE; list.last().map_or(0, |&s| usize::from(s) + 1)];
        for (i, &s) in list.iter().enumerate() {
            rank[usize::from(s)] = i as u32;
        }
        ServerSet { list, rank }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The rank of `server`, or [`NONE`] when it is absent or not in the set.
    pub(super) fn rank_of(&self, server: Option<ServerIdx>) -> u32 {
        server
            .and_then(|s| self.rank.get(usize::from(s)).copied())
            .unwrap_or(NONE)
    }

    fn server(&self, rank: u32) -> ServerIdx {
        self.list[rank as usize]
    }
}

/// The current map's copies as ranks in the target set, in chain order.
/// Slots naming a server outside the set, or repeating a server earlier in
/// the same chain, are [`NONE`] and mark the vbucket as needing a change.
struct Copies {
    /// The current chain length (`num_replicas + 1` of the current map).
    width: usize,
    /// `width` ranks per vbucket.
    ranks: Vec<u32>,
    /// Per vbucket: some slot names a server outside the set or twice.
    stray: Vec<bool>,
}

impl Copies {
    fn new(current: &VbucketMap, set: &ServerSet) -> Self {
        let width = current.num_replicas() + 1;
        let mut ranks = Vec::with_capacity(current.num_vbuckets() * width);
        let mut stray = Vec::with_capacity(current.num_vbuckets());
        for (_, chain) in current.chains() {
            let start = ranks.len();
            let mut is_stray = false;
            for &slot in chain {
                let rank = set.rank_of(slot);
                let dup = rank != NONE && ranks[start..].contains(&rank);
                is_stray |= slot.is_some() && (rank == NONE || dup);
                ranks.push(if dup { NONE } else { rank });
            }
            stray.push(is_stray);
        }
        Copies {
            width,
            ranks,
            stray,
        }
    }

    fn len(&self) -> usize {
        self.stray.len()
    }

    fn chain(&self, v: usize) -> &[u32] {
        &self.ranks[v * self.width..(v + 1) * self.width]
    }
}

/// Compute the balanced map for `servers` closest to `current` (see the
/// module doc). Deterministic in its inputs; the order of `servers` does not
/// matter. Fails only when `num_replicas` exceeds
/// [`MAX_REPLICAS`](crate::map::MAX_REPLICAS).
pub(super) fn place(
    current: &VbucketMap,
    servers: &[ServerIdx],
    num_replicas: usize,
) -> Result<VbucketMap, MapError> {
    let set = ServerSet::new(servers);
    let mut target = VbucketMap::empty(current.num_vbuckets(), num_replicas)?;
    let s_n = set.len();
    if s_n == 0 {
        return Ok(target);
    }
    let r = effective_replicas(num_replicas, s_n);
    let copies = Copies::new(current, &set);
    // A vbucket is settled when its current chain would be a valid target
    // chain as it stands; moving anything of a settled vbucket adds a move,
    // so both stages prefer to disturb unsettled ones.
    let settled: Vec<bool> = (0..copies.len())
        .map(|v| {
            let chain = copies.chain(v);
            copies.width == num_replicas + 1
                && !copies.stray[v]
                && chain[0] != NONE
                && chain[1..=r].iter().all(|&c| c != NONE)
                && chain[r + 1..].iter().all(|&c| c == NONE)
        })
        .collect();
    let actives = assign_actives(&copies, &settled, s_n);
    let replicas = assign_replicas(&copies, &settled, &actives, s_n, r);
    for v in 0..copies.len() {
        let vb = v as u16;
        target.set(vb, 0, Some(set.server(actives.server[v])));
        for (i, &rank) in replicas.of(v).iter().enumerate() {
            target.set(vb, i + 1, Some(set.server(rank)));
        }
    }
    Ok(target)
}

/// Split `total` into `s_n` shares differing by at most one; the larger
/// shares go to the servers that sort first by `key`.
fn quotas<K: Ord>(total: usize, s_n: usize, key: impl Fn(usize) -> K) -> Vec<usize> {
    let base = total / s_n;
    let mut order: Vec<usize> = (0..s_n).collect();
    order.sort_by_key(|&s| key(s));
    let mut quota = vec![base; s_n];
    for &s in &order[..total % s_n] {
        quota[s] += 1;
    }
    quota
}
