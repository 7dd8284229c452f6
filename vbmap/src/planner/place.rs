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
//! — one always exists (see [`Replicas`]) — searched in tiers from the
//! cheapest (no extra copy, no extra vbucket moved) to the dearest. Cost:
//! O(V·R·S) for the fill, O(V·R² + S²) per path search.

use std::cmp::Reverse;

use crate::map::{MapError, ServerIdx, VbucketMap};

use super::effective_replicas;

/// "No server" in the rank-indexed working arrays.
pub(super) const NONE: u32 = u32::MAX;

/// Most (active server, replica server) spread counters kept at once: 2²⁰
/// entries (4 MiB per table) cover every pair up to 1024 servers; larger
/// sets are filled in batches of active servers.
const PAIR_BUDGET: usize = 1 << 20;

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
    let actives = Actives::assign(&copies, &settled, s_n);
    let replicas = Replicas::assign(&copies, &settled, &actives, s_n, r);
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

// === impl Actives ===

/// The active stage's result: the active rank of every vbucket, and which
/// servers got the larger active quota.
struct Actives {
    /// The active's rank, per vbucket.
    server: Vec<u32>,
    /// Each server's active share.
    quota: Vec<usize>,
}

impl Actives {
    fn assign(copies: &Copies, settled: &[bool], s_n: usize) -> Actives {
        let v_n = copies.len();
        let mut server: Vec<u32> = (0..v_n).map(|v| copies.chain(v)[0]).collect();
        let mut load = vec![0usize; s_n];
        for &a in server.iter().filter(|&&a| a != NONE) {
            load[a as usize] += 1;
        }
        // Replicas of homeless vbuckets, per server: where they can be
        // promoted.
        let mut promotable_here = vec![0usize; s_n];
        for v in (0..v_n).filter(|&v| server[v] == NONE) {
            for &c in copies.chain(v)[1..].iter().filter(|&&c| c != NONE) {
                promotable_here[c as usize] += 1;
            }
        }
        // Larger quotas to the most loaded servers: the surplus to shed is
        // then the least any balanced map needs. Among equals, to servers
        // that can promote the most homeless vbuckets instead of copying.
        let quota = quotas(v_n, s_n, |s| {
            (Reverse(load[s]), Reverse(promotable_here[s]), s)
        });
        let mut deficit: Vec<usize> = (0..s_n).map(|s| quota[s].saturating_sub(load[s])).collect();
        let mut surplus: Vec<usize> = (0..s_n).map(|s| load[s].saturating_sub(quota[s])).collect();

        // The replica holder with the most room left, first in chain order
        // on ties: promoting it costs no data copy.
        let promotable = |v: usize, deficit: &[usize]| -> Option<u32> {
            copies.chain(v)[1..]
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c != NONE && deficit[c as usize] > 0)
                .max_by_key(|&(pos, &c)| (deficit[c as usize], Reverse(pos)))
                .map(|(_, &c)| c)
        };

        // Homeless vbuckets (no active, or an active on a leaving server)
        // promote a replica where one has room.
        for (v, slot) in server.iter_mut().enumerate() {
            if *slot == NONE {
                if let Some(b) = promotable(v, &deficit) {
                    *slot = b;
                    deficit[b as usize] -= 1;
                }
            }
        }

        // Over-quota servers shed unsettled vbuckets first, then lower
        // vbucket ids; promotions first, taking turns so each over-quota
        // server gets its share of the cheap moves.
        let mut owned: Vec<Vec<usize>> = vec![Vec::new(); s_n];
        for (v, &a) in server.iter().enumerate() {
            if a != NONE && surplus[a as usize] > 0 {
                owned[a as usize].push(v);
            }
        }
        for list in &mut owned {
            list.sort_by_key(|&v| (settled[v], v));
        }
        let mut cursor = vec![0usize; s_n];
        let mut progressed = true;
        while progressed {
            progressed = false;
            for s in 0..s_n {
                while surplus[s] > 0 && cursor[s] < owned[s].len() {
                    let v = owned[s][cursor[s]];
                    cursor[s] += 1;
                    if let Some(b) = promotable(v, &deficit) {
                        server[v] = b;
                        deficit[b as usize] -= 1;
                        surplus[s] -= 1;
                        progressed = true;
                        break;
                    }
                }
            }
        }

        // Everything still to place gets a fresh copy on the server with the
        // most room; ties rotate with the vbucket id, which makes a fresh map
        // round-robin.
        let mut to_place: Vec<usize> = (0..v_n).filter(|&v| server[v] == NONE).collect();
        for s in 0..s_n {
            let shed = owned[s]
                .iter()
                .copied()
                .filter(|&v| server[v] == s as u32)
                .take(surplus[s]);
            to_place.extend(shed);
        }
        for v in to_place {
            let mut b = v % s_n;
            for i in 1..s_n {
                let c = (v + i) % s_n;
                if deficit[c] > deficit[b] {
                    b = c;
                }
            }
            debug_assert!(deficit[b] > 0, "quotas add up to the vbucket count");
            server[v] = b as u32;
            deficit[b] -= 1;
        }
        Actives { server, quota }
    }
}

// === impl Replicas ===

/// The replica stage: a degree-constrained assignment where every vbucket
/// needs `r` distinct servers other than its active and every server `s`
/// takes exactly `cap[s]` replicas in total.
///
/// Feasibility: by max-flow/min-cut such an assignment exists iff every set
/// `X` of servers satisfies `Σ_X cap ≤ Σ_v min(r, |X \ {active(v)}|)`. For
/// `|X| > r` the right side is `V·r`, the total; for `|X| ≤ r` it reduces to
/// `actives(s) + cap(s) ≤ V` for each `s ∈ X`, which the quota choice below
/// guarantees. So a partial assignment that cannot be extended greedily
/// always has an augmenting path, and [`Replicas::augment`] finds one. The
/// same search restricted to existing copies raises the kept set to the
/// largest the shares allow before filling starts (filling shifts a kept
/// copy only when no cheaper path exists).
struct Replicas {
    /// Replicas per vbucket (the effective count).
    r: usize,
    /// `r` slots per vbucket, the first `len[v]` in use.
    reps: Vec<u32>,
    /// Replicas assigned so far, per vbucket.
    len: Vec<usize>,
    /// Room left under each server's replica share.
    cap: Vec<usize>,
}

impl Replicas {
    fn assign(
        copies: &Copies,
        settled: &[bool],
        actives: &Actives,
        s_n: usize,
        r: usize,
    ) -> Replicas {
        let v_n = copies.len();
        let active = &actives.server;
        let mut state = Replicas {
            r,
            reps: vec![NONE; v_n * r],
            len: vec![0; v_n],
            cap: vec![0; s_n],
        };
        if r == 0 {
            return state;
        }
        // The servers holding data of `v` it may keep as replicas.
        let is_copy = |v: usize, b: u32| b != active[v] && copies.chain(v).contains(&b);

        // Existing copies that could stay as replicas, best first: replicas
        // of vbuckets that change anyway, then of untouched vbuckets, then
        // demoted actives; lower chain positions first, then vbucket order.
        // Changing vbuckets go first because they are the ones that often
        // cannot use the servers with room (a vbucket whose active moved to
        // a new server cannot put a replica there), while an untouched
        // vbucket that loses a replica can; the other order paints the fill
        // into corners. Bucketing by (class, position) sorts in O(V·R).
        let unchanged: Vec<bool> = (0..v_n)
            .map(|v| settled[v] && active[v] == copies.chain(v)[0])
            .collect();
        let width = copies.width;
        let mut buckets: Vec<Vec<(usize, u32)>> = vec![Vec::new(); 3 * width];
        for v in 0..v_n {
            for (pos, &c) in copies.chain(v).iter().enumerate() {
                if c != NONE && c != active[v] {
                    let class = match (pos, unchanged[v]) {
                        (0, _) => 2,
                        (_, false) => 0,
                        (_, true) => 1,
                    };
                    buckets[class * width + pos].push((v, c));
                }
            }
        }
        let candidates: Vec<(usize, u32)> = buckets.concat();
        // What each server would keep if quotas allowed: a vbucket keeps its
        // r best candidates. (Counting every candidate would favour servers
        // whose demoted actives are bound to be dropped.)
        let mut wanted = vec![0usize; v_n];
        let mut held = vec![0usize; s_n];
        for &(v, c) in &candidates {
            if wanted[v] < r {
                wanted[v] += 1;
                held[c as usize] += 1;
            }
        }
        // Vbuckets short of replicas, by active server: room on that server
        // is room they cannot use.
        let mut needy = vec![0usize; s_n];
        for v in 0..v_n {
            needy[active[v] as usize] += usize::from(wanted[v] < r);
        }

        // Larger replica quotas go to servers that hold the most copies now,
        // except where that would break `actives + replicas ≤ V` (only
        // possible in tiny maps); among equals, to servers whose room the
        // vbuckets short of replicas can use, then to servers without the
        // larger active quota so total load evens out too.
        let base_a = v_n / s_n;
        let base_r = v_n * r / s_n;
        state.cap = quotas(v_n * r, s_n, |s| {
            (
                actives.quota[s] + base_r + 1 > v_n,
                Reverse(held[s]),
                needy[s],
                actives.quota[s] > base_a,
                s,
            )
        });

        // Keep greedily in priority order, then raise the kept count to the
        // maximum with augmenting paths that only shift kept copies onto
        // other existing copies (e.g. a vbucket whose active moved keeps its
        // demoted active instead of a replica on a full server).
        for &(v, c) in &candidates {
            if state.len[v] < r && state.cap[c as usize] > 0 {
                state.cap[c as usize] -= 1;
                state.push(v, c);
            }
        }
        // A path can only end on a server with room that holds some copy;
        // once none is left (typically: the room is all on new servers),
        // stop searching.
        let mut is_candidate = vec![false; s_n];
        for &(_, c) in &candidates {
            is_candidate[c as usize] = true;
        }
        let any_room = |cap: &[usize]| (0..s_n).any(|b| cap[b] > 0 && is_candidate[b]);
        for v in 0..v_n {
            while state.len[v] < r
                && copies
                    .chain(v)
                    .iter()
                    .any(|&c| c != NONE && !state.holds(v, c) && c != active[v])
                && any_room(&state.cap)
            {
                let tier = Tier {
                    start: &|b| is_copy(v, b),
                    shift: &|_, _| true,
                    land: Some(&|w| copies.chain(w)),
                };
                match state.augment(v, active, &[tier]) {
                    Some(b) => state.push(v, b),
                    None => break,
                }
            }
            // Kept copies keep their relative chain order.
            let position = |b: &u32| copies.chain(v).iter().position(|c| c == b);
            state.reps[v * r..v * r + state.len[v]].sort_by_key(position);
        }

        // Fill position by position. The spread counters are per (active
        // server, replica server) pair: first[a][b] / all[b] count first
        // replicas / replicas on b of the vbuckets active on a, and
        // minimising them spreads a's replicas, and with it the load a
        // failover of a promotes. Vbuckets are taken round-robin over their
        // active servers so no server's vbuckets are left with whatever
        // room remains at the end; servers are processed in batches whose
        // counter rows fit in `PAIR_BUDGET`.
        let mut by_active: Vec<Vec<usize>> = vec![Vec::new(); s_n];
        for v in 0..v_n {
            by_active[active[v] as usize].push(v);
        }
        let batch = (PAIR_BUDGET / s_n).clamp(1, s_n);
        let mut first = vec![0u32; batch * s_n];
        let mut all = vec![0u32; batch * s_n];
        for k in 0..r {
            for lo in (0..s_n).step_by(batch) {
                let hi = (lo + batch).min(s_n);
                first.fill(0);
                all.fill(0);
                for (i, group) in by_active[lo..hi].iter().enumerate() {
                    let row = i * s_n;
                    for &v in group {
                        for (pos, &b) in state.of(v).iter().enumerate() {
                            all[row + b as usize] += 1;
                            first[row + b as usize] += u32::from(pos == 0);
                        }
                    }
                }
                let longest = by_active[lo..hi].iter().map(Vec::len).max().unwrap_or(0);
                for j in 0..longest {
                    for (i, group) in by_active[lo..hi].iter().enumerate() {
                        let Some(&v) = group.get(j) else {
                            continue;
                        };
                        if state.len[v] != k {
                            continue;
                        }
                        let a = lo + i;
                        let row = i * s_n;
                        let first = &mut first[row..row + s_n];
                        let all = &mut all[row..row + s_n];
                        // min by (spread, all, Reverse(cap), rotation),
                        // packed into one integer; a plain loop, as this is
                        // the O(V·R·S) heart of the planner.
                        let mut pick = None;
                        let mut best = u128::MAX;
                        for b in 0..s_n {
                            let cap = state.cap[b];
                            if cap == 0 || b == a {
                                continue;
                            }
                            let spread = if k == 0 { first[b] } else { all[b] };
                            let rotation = (b + 2 * s_n - a - 1 - j % s_n) % s_n;
                            let key = (u128::from(spread) << 96)
                                | (u128::from(all[b]) << 64)
                                | (u128::from(u32::MAX - cap as u32) << 32)
                                | rotation as u128;
                            if key < best && !state.holds(v, b as u32) {
                                best = key;
                                pick = Some(b);
                            }
                        }
                        let b = match pick {
                            Some(b) => {
                                state.cap[b] -= 1;
                                b as u32
                            }
                            // Stuck: every server with room already holds v.
                            // Shift other replicas out of the way along the
                            // cheapest kind of path: starting where v already
                            // has data saves v a copy; shifting a replica that
                            // is new anyway costs nothing, shifting one of a
                            // vbucket that changes anyway costs a copy, and
                            // shifting any other costs a copy and a move.
                            None => {
                                let data = |b: u32| is_copy(v, b);
                                let any = |_: u32| true;
                                let fresh = |w: usize, y: u32| !is_copy(w, y);
                                let cheap = |w: usize, y: u32| !is_copy(w, y) || !unchanged[w];
                                let anyone = |_: usize, _: u32| true;
                                let tier = |start, shift| Tier {
                                    start,
                                    shift,
                                    land: None,
                                };
                                let tiers = [
                                    tier(&data, &fresh),
                                    tier(&data, &cheap),
                                    tier(&any, &fresh),
                                    tier(&data, &anyone),
                                    tier(&any, &cheap),
                                    tier(&any, &anyone),
                                ];
                                state.augment(v, active, &tiers).unwrap_or_else(|| {
                                    // Unreachable while the quotas respect the
                                    // feasibility bound (see the type doc);
                                    // degrade to an over-quota server rather
                                    // than leave a chain short.
                                    (0..s_n as u32)
                                        .find(|&b| b != active[v] && !state.holds(v, b))
                                        .expect("r < number of servers")
                                })
                            }
                        };
                        state.push(v, b);
                        all[b as usize] += 1;
                        first[b as usize] += u32::from(k == 0);
                    }
                }
            }
        }
        state
    }

    fn of(&self, v: usize) -> &[u32] {
        &self.reps[v * self.r..v * self.r + self.len[v]]
    }

    fn holds(&self, v: usize, b: u32) -> bool {
        self.of(v).contains(&b)
    }

    fn push(&mut self, v: usize, b: u32) {
        self.reps[v * self.r + self.len[v]] = b;
        self.len[v] += 1;
    }

    /// Make room for one more replica of `v`: breadth-first over servers,
    /// an edge `y → y2` meaning some vbucket `w` holding a replica on `y`
    /// could hold it on `y2` instead. The shortest path from a server `v`
    /// may take to one with room shifts each `w` one step along it: every
    /// server on the path keeps its count except the last, which takes the
    /// new replica's place. `tiers` are tried in order, each naming the
    /// servers a path may start from and the shifts `(w, y)` it may use.
    /// Returns the first server of the path, for the caller to give to `v`
    /// (its count is unchanged: `w₁` left it), or `None` if no tier has a
    /// path.
    fn augment(&mut self, v: usize, active: &[u32], tiers: &[Tier<'_>]) -> Option<u32> {
        let s_n = self.cap.len();
        let mut holders: Vec<Vec<usize>> = vec![Vec::new(); s_n];
        for w in 0..self.len.len() {
            for &b in self.of(w) {
                holders[b as usize].push(w);
            }
        }
        for tier in tiers {
            if let Some((found, parent)) = self.search(v, active, &holders, tier) {
                self.cap[found as usize] -= 1;
                let mut to = found;
                loop {
                    let (from, w) = parent[to as usize];
                    if from == NONE {
                        return Some(to);
                    }
                    let slot = self
                        .of(w)
                        .iter()
                        .position(|&b| b == from)
                        .expect("w holds from");
                    self.reps[w * self.r + slot] = to;
                    to = from;
                }
            }
        }
        None
    }

    /// One breadth-first search of [`Replicas::augment`]: the server with
    /// room it reaches and the parent links `y → (previous server, vbucket
    /// that shifts from it to y)`; a start server has no parent.
    fn search(
        &self,
        v: usize,
        active: &[u32],
        holders: &[Vec<usize>],
        tier: &Tier<'_>,
    ) -> Option<(u32, Vec<(u32, usize)>)> {
        let s_n = self.cap.len();
        let in_chain = |w: usize, b: u32| active[w] == b || self.holds(w, b);
        let mut parent = vec![(NONE, usize::MAX); s_n];
        let mut visited = vec![false; s_n];
        // Servers not yet visited, in rank order; entries visited through a
        // `land` list are dropped lazily.
        let mut unvisited: Vec<u32> = Vec::with_capacity(s_n);
        let mut queue: Vec<u32> = Vec::with_capacity(s_n);
        for b in 0..s_n as u32 {
            if !in_chain(v, b) && (tier.start)(b) {
                if self.cap[b as usize] > 0 {
                    return Some((b, parent));
                }
                visited[b as usize] = true;
                queue.push(b);
            } else {
                unvisited.push(b);
            }
        }
        let mut reached: Vec<u32> = Vec::new();
        let mut head = 0;
        while head < queue.len() {
            let y = queue[head];
            head += 1;
            for &w in holders[y as usize].iter().filter(|&&w| (tier.shift)(w, y)) {
                reached.clear();
                if let Some(land) = tier.land {
                    // Only a few destinations: O(R) per holder.
                    reached.extend(
                        land(w)
                            .iter()
                            .copied()
                            .filter(|&y2| y2 != NONE && !visited[y2 as usize] && !in_chain(w, y2)),
                    );
                } else {
                    // Each test either takes a server, drops a stale entry
                    // or hits one of w's at most r + 1 chain members, so a
                    // search is O(V·R² + S²).
                    let mut i = 0;
                    while i < unvisited.len() {
                        let y2 = unvisited[i];
                        if visited[y2 as usize] {
                            unvisited.remove(i);
                        } else if in_chain(w, y2) {
                            i += 1;
                        } else {
                            // `remove`, not `swap_remove`: lower ranks stay
                            // first.
                            unvisited.remove(i);
                            reached.push(y2);
                        }
                    }
                }
                for &y2 in &reached {
                    visited[y2 as usize] = true;
                    parent[y2 as usize] = (y, w);
                    if self.cap[y2 as usize] > 0 {
                        return Some((y2, parent));
                    }
                    queue.push(y2);
                }
            }
        }
        None
    }
}

/// One tier of [`Replicas::augment`]: which paths it may use.
struct Tier<'a> {
    /// Servers a path may start from (the one `v` takes).
    start: &'a dyn Fn(u32) -> bool,
    /// Whether vbucket `w` may leave server `y`.
    shift: &'a dyn Fn(usize, u32) -> bool,
    /// The only servers vbucket `w` may land on ([`NONE`] entries skipped),
    /// or `None` for any server.
    land: Option<&'a dyn Fn(usize) -> &'a [u32]>,
}
