//! Laws of the planner, checked on generated maps and server sets (STYLE
//! rule 22): every planned map is balanced, plans move as little as balance
//! requires, and failover never drops a surviving copy. Vbucket counts are
//! the powers of two 1..=1024 with 1024 drawn often, server sets up to 64
//! servers with sparse, shuffled indices (the planner must treat them as a
//! set), replica counts 0..=3.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::map::VbucketId;

// === strategies ===

/// A vbucket count: a power of two in 1..=1024, half the time exactly 1024.
fn vbuckets() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1024usize), any_vbuckets()]
}

/// A vbucket count: any power of two in 1..=1024, all equally likely (for
/// the costlier properties; 1024 still comes up one case in eleven).
fn any_vbuckets() -> impl Strategy<Value = usize> {
    (0u32..=10).prop_map(|e| 1usize << e)
}

/// `min..=max` distinct server indices below 200, in a shuffled order.
fn servers(min: usize, max: usize) -> impl Strategy<Value = Vec<ServerIdx>> {
    prop::collection::btree_set(0u16..200, min..=max)
        .prop_map(|set| set.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

/// Any map over servers `0..12`: holes, strays, repeated servers in a chain.
fn arbitrary_map() -> impl Strategy<Value = VbucketMap> {
    (0u32..=7, 0usize..=3).prop_flat_map(|(e, r)| {
        let slot = prop::option::weighted(0.75, 0u16..12);
        prop::collection::vec(prop::collection::vec(slot, r + 1), 1usize << e).prop_map(
            move |chains| {
                let mut map = VbucketMap::empty(chains.len(), r).unwrap();
                for (vb, chain) in chains.iter().enumerate() {
                    for (pos, &s) in chain.iter().enumerate() {
                        map.set(vb as VbucketId, pos, s);
                    }
                }
                map
            },
        )
    })
}

// === helpers ===

/// The plan's moves are exactly the vbuckets whose chain differs, each with
/// its true old and new chain, each listed once, and interleaved: the first
/// moves come from distinct sources.
fn assert_moves_consistent(current: &VbucketMap, plan: &RebalancePlan) {
    let mut listed = BTreeSet::new();
    for mv in &plan.moves {
        assert!(
            listed.insert(mv.vbucket),
            "vbucket {} listed twice",
            mv.vbucket
        );
        assert_eq!(mv.from, current.chain(mv.vbucket));
        assert_eq!(mv.to, plan.target.chain(mv.vbucket));
        assert_ne!(mv.from, mv.to);
    }
    for (vb, chain) in current.chains() {
        if !listed.contains(&vb) {
            assert_eq!(
                chain,
                plan.target.chain(vb),
                "vbucket {vb} changed without a move"
            );
        }
    }
    let sources: BTreeSet<_> = plan.moves.iter().map(Move::source).collect();
    let head: BTreeSet<_> = plan
        .moves
        .iter()
        .take(sources.len())
        .map(Move::source)
        .collect();
    assert_eq!(head.len(), sources.len(), "the first moves repeat a source");
}

/// Copies created by a plan: servers in a new chain without a copy now.
fn new_copies(plan: &RebalancePlan) -> usize {
    plan.moves.iter().map(|m| m.new_copies().count()).sum()
}

/// Each target server keeps every active it had unless it holds more than
/// its new share, and then sheds exactly the surplus.
fn assert_actives_stay(current: &VbucketMap, plan: &RebalancePlan, servers: &[ServerIdx]) {
    let (before, after) = (MapStats::new(current), MapStats::new(&plan.target));
    for &s in servers {
        let lost = current
            .chains()
            .filter(|&(vb, chain)| chain[0] == Some(s) && plan.target.active(vb) != Some(s))
            .count();
        assert_eq!(
            lost,
            before.actives(s).saturating_sub(after.actives(s)),
            "server {s}"
        );
    }
}

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A fresh map is balanced, complete, independent of server order, a
    /// fixed point of rebalancing, and spreads each server's first replicas
    /// over the others: server a's first replicas put at most
    /// ⌈actives(a)/(S−1)⌉ + 1 on any one server, and failing any one server
    /// leaves no survivor with more than ⌈V/S⌉ + ⌈⌈V/S⌉/(S−1)⌉ + 1 actives.
    #[test]
    fn fresh_map_is_balanced(
        v in vbuckets(),
        servers in servers(0, 64),
        r in 0usize..=3,
        failed in any::<prop::sample::Index>(),
    ) {
        let map = fresh_map(v, &servers, r).unwrap();
        prop_assert_eq!(map.num_vbuckets(), v);
        prop_assert_eq!(map.num_replicas(), r);
        prop_assert_eq!(check_balanced(&map, &servers), Ok(()));
        for (_, chain) in map.chains() {
            prop_assert_eq!(chain.len(), r + 1);
            prop_assert_eq!(chain[0].is_some(), !servers.is_empty());
        }
        let mut sorted = servers.clone();
        sorted.sort_unstable();
        prop_assert_eq!(&fresh_map(v, &sorted, r).unwrap(), &map);
        let again = plan_rebalance(&map, &servers, r).unwrap();
        prop_assert!(again.moves.is_empty());
        prop_assert_eq!(&again.target, &map);

        let s = servers.len();
        if effective_replicas(r, s) == 0 {
            return Ok(());
        }
        let stats = MapStats::new(&map);
        let mut pairs = std::collections::BTreeMap::new();
        for (_, chain) in map.chains() {
            *pairs.entry((chain[0], chain[1])).or_insert(0usize) += 1;
        }
        for (&(a, b), &n) in &pairs {
            let a = a.unwrap();
            prop_assert!(n <= div_ceil(stats.actives(a), s - 1) + 1, "{n} first replicas of {a} on {b:?}");
        }
        let out = fail_over(&map, servers[failed.index(s)], None);
        prop_assert!(out.lost_vbuckets.is_empty());
        let after = MapStats::new(&out.map);
        let share = div_ceil(v, s);
        let bound = share + div_ceil(share, s - 1) + 1;
        for &x in &servers {
            prop_assert!(after.actives(x) <= bound, "server {x}: {} > {bound}", after.actives(x));
        }
    }

    /// From any map — holes, servers outside the set, duplicates, another
    /// replica count — the target is balanced, the moves describe exactly
    /// the change, target servers keep their actives up to their share, the
    /// plan does not depend on server order, and replanning moves nothing.
    #[test]
    fn rebalance_from_any_map(
        current in arbitrary_map(),
        servers in servers(0, 12).prop_map(|s| s.into_iter().map(|x| x % 12).collect::<Vec<_>>()),
        r in 0usize..=3,
    ) {
        let plan = plan_rebalance(&current, &servers, r).unwrap();
        prop_assert_eq!(check_balanced(&plan.target, &servers), Ok(()));
        assert_moves_consistent(&current, &plan);
        assert_actives_stay(&current, &plan, &servers);
        let mut reversed = servers.clone();
        reversed.reverse();
        prop_assert_eq!(&plan_rebalance(&current, &reversed, r).unwrap(), &plan);
        prop_assert!(plan_rebalance(&plan.target, &servers, r).unwrap().moves.is_empty());
    }

    /// Adding one server to a balanced map of S moves at most ⌈V/(S+1)⌉
    /// actives (the new server's share) and creates at most
    /// ⌈V·(R'+1)/(S+1)⌉ copies, plus V per replica that the extra server
    /// newly allows (R' = effective replicas after the add).
    #[test]
    fn adding_a_server_moves_its_share(
        v in vbuckets(),
        servers in servers(1, 64),
        r in 0usize..=3,
    ) {
        let current = fresh_map(v, &servers, r).unwrap();
        let added = (0u16..).find(|x| !servers.contains(x)).unwrap();
        let mut more = servers.clone();
        more.push(added);
        let plan = plan_rebalance(&current, &more, r).unwrap();
        prop_assert_eq!(check_balanced(&plan.target, &more), Ok(()));
        assert_moves_consistent(&current, &plan);
        assert_actives_stay(&current, &plan, &more);
        let s = servers.len();
        let moved = plan.moves.iter().filter(|m| m.changes_active()).count();
        prop_assert!(moved <= div_ceil(v, s + 1), "{moved} actives moved");
        let (before, after) = (effective_replicas(r, s), effective_replicas(r, s + 1));
        let bound = div_ceil(v * (after + 1), s + 1) + v * (after - before);
        prop_assert!(new_copies(&plan) <= bound, "{} copies > {bound}", new_copies(&plan));
    }

    /// Removing servers from a balanced map: no surviving active moves
    /// (provable: survivors' shares only grow, and the larger shares go to
    /// the most loaded), and the bystanders — vbuckets with no copy on a
    /// removed server that still change — number at most E + M. E is the
    /// survivors' surplus over their new shares (actives and replicas; only
    /// a shrinking replica count or a reshuffle of which servers carry the
    /// odd extra makes it non-zero) and M the copies the removal takes away.
    /// A bystander changes only to shed surplus or when an augmenting path
    /// shifts one of its replicas to make room for a refilled slot, and there
    /// is at most one path per lost copy; paths are searched through
    /// vbuckets that change anyway first, so in practice bystanders are rare
    /// (at most one per removal over every V, S ≤ 64, R ≤ 3 we tried).
    #[test]
    fn removing_servers_touches_their_vbuckets(
        v in any_vbuckets(),
        servers in servers(2, 64),
        r in 0usize..=3,
        keep in prop::collection::vec(any::<bool>(), 64),
    ) {
        let current = fresh_map(v, &servers, r).unwrap();
        let mut survivors: Vec<ServerIdx> =
            servers.iter().zip(&keep).filter(|(_, &k)| k).map(|(&s, _)| s).collect();
        if survivors.len() == servers.len() {
            survivors.pop();
        }
        if survivors.is_empty() {
            survivors.push(servers[0]);
        }
        let removed: Vec<ServerIdx> =
            servers.iter().copied().filter(|s| !survivors.contains(s)).collect();
        let plan = plan_rebalance(&current, &survivors, r).unwrap();
        prop_assert_eq!(check_balanced(&plan.target, &survivors), Ok(()));
        assert_moves_consistent(&current, &plan);
        for (vb, chain) in current.chains() {
            if survivors.contains(&chain[0].unwrap()) {
                prop_assert_eq!(plan.target.active(vb), chain[0]);
            }
        }
        let (before, after) = (MapStats::new(&current), MapStats::new(&plan.target));
        let surplus: usize = survivors
            .iter()
            .map(|&s| {
                before.actives(s).saturating_sub(after.actives(s))
                    + before.replicas(s).saturating_sub(after.replicas(s))
            })
            .sum();
        let emptied: usize =
            removed.iter().map(|&s| before.actives(s) + before.replicas(s)).sum();
        let bystanders = plan
            .moves
            .iter()
            .filter(|m| !m.from.iter().any(|s| s.is_some_and(|s| removed.contains(&s))))
            .count();
        prop_assert!(
            bystanders <= surplus + emptied,
            "{bystanders} bystanders > {surplus} + {emptied}"
        );
    }

    /// Failovers then a rebalance (with up to two servers added): the target
    /// is balanced, the moves are consistent, target servers keep their
    /// actives up to their share, and every vbucket that still has a copy
    /// keeps one or is moved from one.
    #[test]
    fn rebalance_after_failovers(
        v in any_vbuckets(),
        servers in servers(1, 64),
        r in 0usize..=3,
        fail in prop::collection::vec(any::<prop::sample::Index>(), 0..=3),
        add in 0u16..=2,
    ) {
        let mut map = fresh_map(v, &servers, r).unwrap();
        let mut survivors = servers.clone();
        for f in &fail {
            if survivors.len() <= 1 {
                break;
            }
            let gone = survivors.remove(f.index(survivors.len()));
            map = fail_over(&map, gone, None).map;
        }
        let mut target_set = survivors.clone();
        target_set.extend((1000..1000 + add).filter(|x| !servers.contains(x)));
        let plan = plan_rebalance(&map, &target_set, r).unwrap();
        prop_assert_eq!(check_balanced(&plan.target, &target_set), Ok(()));
        assert_moves_consistent(&map, &plan);
        assert_actives_stay(&map, &plan, &target_set);
        // Nothing held is lost: a vbucket with a surviving copy either keeps
        // one in place or is moved from one (a rebalance may move a vbucket
        // wholesale when balance needs its only server's slots; the data
        // streams from that source before the old copy is dropped).
        for (vb, chain) in map.chains() {
            if chain.iter().any(Option::is_some) {
                let target = plan.target.chain(vb);
                let kept = target.iter().any(|s| s.is_some() && chain.contains(s));
                let sourced = plan.moves.iter().any(|mv| {
                    mv.vbucket == vb && mv.source().is_some_and(|s| chain.contains(&Some(s)))
                });
                prop_assert!(kept || sourced, "vbucket {vb}: {chain:?} -> {target:?} with no source");
            }
        }
    }

    /// Failover keeps every surviving copy, promotes actives only from the
    /// replicas (the highest seqno when given, else the first in chain
    /// order), names the failed server nowhere, leaves chains without it
    /// untouched, and reports exactly the vbuckets left with no copy.
    #[test]
    fn failover_keeps_surviving_copies(
        current in arbitrary_map(),
        failed in 0u16..12,
        seqnos in prop::option::of(prop::collection::btree_map((0u16..128, 0u16..12), 0u64..4, 0..256)),
    ) {
        let seqnos: Option<ReplicaSeqnos> = seqnos.map(|m| m.into_iter().collect());
        let out = fail_over(&current, failed, seqnos.as_ref());
        prop_assert_eq!(out.map.num_vbuckets(), current.num_vbuckets());
        prop_assert_eq!(out.map.num_replicas(), current.num_replicas());
        let mut lost = Vec::new();
        for (vb, old) in current.chains() {
            let new = out.map.chain(vb);
            prop_assert!(!new.contains(&Some(failed)));
            if !old.contains(&Some(failed)) {
                prop_assert_eq!(old, new);
                continue;
            }
            let survivors = |c: &[Option<ServerIdx>]| -> BTreeSet<ServerIdx> {
                c.iter().flatten().copied().filter(|&s| s != failed).collect()
            };
            prop_assert_eq!(survivors(old), survivors(new), "vbucket {}", vb);
            // No gaps: replicas sit at the front of the replica positions.
            let filled = new[1..].iter().take_while(|s| s.is_some()).count();
            prop_assert!(new[1 + filled..].iter().all(Option::is_none));
            if old[0] == Some(failed) {
                let replicas: Vec<ServerIdx> =
                    old[1..].iter().flatten().copied().filter(|&s| s != failed).collect();
                match &seqnos {
                    _ if replicas.is_empty() => prop_assert_eq!(new[0], None),
                    None => prop_assert_eq!(new[0], Some(replicas[0])),
                    Some(seq) => {
                        let best = replicas.iter().map(|&s| seq.get(&(vb, s)).copied()).max().unwrap();
                        let promoted = new[0].unwrap();
                        prop_assert!(replicas.contains(&promoted));
                        prop_assert_eq!(seq.get(&(vb, promoted)).copied(), best);
                    }
                }
            } else {
                prop_assert_eq!(new[0], old[0]);
            }
            if new.iter().all(Option::is_none) {
                lost.push(vb);
            }
        }
        prop_assert_eq!(out.lost_vbuckets, lost);
    }
}
