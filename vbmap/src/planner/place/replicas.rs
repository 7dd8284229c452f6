//! The replica stage of [`place`](super::place): every vbucket's replicas,
//! within balanced shares, keeping as many existing copies as they allow
//! and spreading the rest (see the parent module doc).

use std::cmp::Reverse;

use super::actives::Actives;
use super::{quotas, Copies, NONE};

/// Most (active server, replica server) spread counters kept at once: 2²⁰
/// entries (4 MiB per table) cover every pair up to 1024 servers; larger
/// sets are filled in batches of active servers.
const PAIR_BUDGET: usize = 1 << 20;

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
pub(super) struct Replicas {
    /// Replicas per vbucket (the effective count).
    r: usize,
    /// `r` slots per vbucket, the first `len[v]` in use.
    reps: Vec<u32>,
    /// Replicas assigned so far, per vbucket.
    len: Vec<usize>,
    /// Room left under each server's replica share.
    cap: Vec<usize>,
}

/// Choose `r` replicas for every vbucket (see [`Replicas`]): set each
/// server's share, keep as many existing copies as the shares allow, then
/// fill the rest.
pub(super) fn assign_replicas(
    copies: &Copies,
    settled: &[bool],
    actives: &Actives,
    s_n: usize,
    r: usize,
) -> Replicas {
    let v_n = copies.len();
    let mut state = Replicas {
        r,
        reps: vec![NONE; v_n * r],
        len: vec![0; v_n],
        cap: vec![0; s_n],
    };
    if r == 0 {
        return state;
    }
    let active = &actives.server;
    let inputs = ReplicaInputs {
        copies,
        active,
        unchanged: (0..v_n)
            .map(|v| settled[v] && active[v] == copies.chain(v)[0])
            .collect(),
    };
    let candidates = inputs.keep_candidates();
    state.cap = replica_quotas(&candidates, actives, r);
    state.keep_existing(&inputs, &candidates);
    state.fill(&inputs);
    state
}

/// Each server's replica share, given the existing copies that could stay
/// (`candidates`, best first).
fn replica_quotas(candidates: &[(usize, u32)], actives: &Actives, r: usize) -> Vec<usize> {
    let v_n = actives.server.len();
    let s_n = actives.quota.len();
    // What each server would keep if quotas allowed: a vbucket keeps its
    // r best candidates. (Counting every candidate would favour servers
    // whose demoted actives are bound to be dropped.)
    let mut wanted = vec![0usize; v_n];
    let mut held = vec![0usize; s_n];
    for &(v, c) in candidates {
        if wanted[v] < r {
            wanted[v] += 1;
            held[c as usize] += 1;
        }
    }
    // Vbuckets short of replicas, by active server: room on that server
    // is room they cannot use.
    let mut needy = vec![0usize; s_n];
    for v in 0..v_n {
        needy[actives.server[v] as usize] += usize::from(wanted[v] < r);
    }

    // Larger replica quotas go to servers that hold the most copies now,
    // except where that would break `actives + replicas ≤ V` (only
    // possible in tiny maps); among equals, to servers whose room the
    // vbuckets short of replicas can use, then to servers without the
    // larger active quota so total load evens out too.
    let base_a = v_n / s_n;
    let base_r = v_n * r / s_n;
    quotas(v_n * r, s_n, |s| {
        (
            actives.quota[s] + base_r + 1 > v_n,
            Reverse(held[s]),
            needy[s],
            actives.quota[s] > base_a,
            s,
        )
    })
}

// === impl ReplicaInputs ===

/// What the replica stage reads besides its own state.
struct ReplicaInputs<'a> {
    /// The current map's copies.
    copies: &'a Copies,
    /// The new active's rank, per vbucket.
    active: &'a [u32],
    /// Per vbucket: settled and keeping its active, so nothing of it has
    /// changed yet.
    unchanged: Vec<bool>,
}

impl ReplicaInputs<'_> {
    /// Whether server `b` holds data of `v` that `v` may keep as a replica.
    fn is_copy(&self, v: usize, b: u32) -> bool {
        b != self.active[v] && self.copies.chain(v).contains(&b)
    }

    /// Existing copies that could stay as replicas, best first: replicas
    /// of vbuckets that change anyway, then of untouched vbuckets, then
    /// demoted actives; lower chain positions first, then vbucket order.
    /// Changing vbuckets go first because they are the ones that often
    /// cannot use the servers with room (a vbucket whose active moved to
    /// a new server cannot put a replica there), while an untouched
    /// vbucket that loses a replica can; the other order paints the fill
    /// into corners. Bucketing by (class, position) sorts in O(V·R).
    fn keep_candidates(&self) -> Vec<(usize, u32)> {
        let width = self.copies.width;
        let mut buckets: Vec<Vec<(usize, u32)>> = vec![Vec::new(); 3 * width];
        for v in 0..self.copies.len() {
            for (pos, &c) in self.copies.chain(v).iter().enumerate() {
                if c != NONE && c != self.active[v] {
                    let class = match (pos, self.unchanged[v]) {
                        (0, _) => 2,
                        (_, false) => 0,
                        (_, true) => 1,
                    };
                    buckets[class * width + pos].push((v, c));
                }
            }
        }
        buckets.concat()
    }
}

// === impl Replicas ===

impl Replicas {
    /// Keep existing copies greedily in priority order (`candidates`, best
    /// first), then raise the kept count to the maximum with augmenting
    /// paths that only shift kept copies onto other existing copies (e.g. a
    /// vbucket whose active moved keeps its demoted active instead of a
    /// replica on a full server).
    fn keep_existing(&mut self, inputs: &ReplicaInputs<'_>, candidates: &[(usize, u32)]) {
        let (copies, active) = (inputs.copies, inputs.active);
        let (s_n, r) = (self.cap.len(), self.r);
        for &(v, c) in candidates {
            if self.len[v] < r && self.cap[c as usize] > 0 {
                self.cap[c as usize] -= 1;
                self.push(v, c);
            }
        }
        // A path can only end on a server with room that holds some copy;
        // once none is left (typically: the room is all on new servers),
        // stop searching.
        let mut is_candidate = vec![false; s_n];
        for &(_, c) in candidates {
            is_candidate[c as usize] = true;
        }
        let any_room = |cap: &[usize]| (0..s_n).any(|b| cap[b] > 0 && is_candidate[b]);
        for v in 0..copies.len() {
            while self.len[v] < r
                && copies
                    .chain(v)
                    .iter()
                    .any(|&c| c != NONE && !self.holds(v, c) && c != active[v])
                && any_room(&self.cap)
            {
                let tier = Tier {
                    start: &|b| inputs.is_copy(v, b),
                    shift: &|_, _| true,
                    land: Some(&|w| copies.chain(w)),
                };
                match self.augment(v, active, &[tier]) {
                    Some(b) => self.push(v, b),
                    None => break,
                }
            }
            // Kept copies keep their relative chain order.
            let position = |b: &u32| copies.chain(v).iter().position(|c| c == b);
            self.reps[v * r..v * r + self.len[v]].sort_by_key(position);
        }
    }

    /// Fill position by position. The spread counters are per (active
    /// server, replica server) pair (see [`SpreadCounters`]), and
    /// minimising them spreads each server's replicas, and with it the load
    /// a failover of that server promotes. Vbuckets are taken round-robin
    /// over their active servers so no server's vbuckets are left with
    /// whatever room remains at the end; servers are processed in batches
    /// whose counter rows fit in `PAIR_BUDGET`.
    fn fill(&mut self, inputs: &ReplicaInputs<'_>) {
        let s_n = self.cap.len();
        let mut by_active: Vec<Vec<usize>> = vec![Vec::new(); s_n];
        for (v, &a) in inputs.active.iter().enumerate() {
            by_active[a as usize].push(v);
        }
        let batch = (PAIR_BUDGET / s_n).clamp(1, s_n);
        let mut spread = SpreadCounters::new(batch, s_n);
        for k in 0..self.r {
            for lo in (0..s_n).step_by(batch) {
                let hi = (lo + batch).min(s_n);
                self.fill_batch(inputs, k, lo, &by_active[lo..hi], &mut spread);
            }
        }
    }

    /// Give replica position `k` to every vbucket of `groups` that lacks it,
    /// taking the groups (the vbuckets active on servers `lo..`) in turns.
    fn fill_batch(
        &mut self,
        inputs: &ReplicaInputs<'_>,
        k: usize,
        lo: usize,
        groups: &[Vec<usize>],
        spread: &mut SpreadCounters,
    ) {
        spread.recount(groups, self);
        let longest = groups.iter().map(Vec::len).max().unwrap_or(0);
        for j in 0..longest {
            for (i, group) in groups.iter().enumerate() {
                let Some(&v) = group.get(j) else {
                    continue;
                };
                if self.len[v] != k {
                    continue;
                }
                let (first, all) = spread.row(i);
                let b = match self.least_spread(v, lo + i, k, j, first, all) {
                    Some(b) => {
                        self.cap[b] -= 1;
                        b as u32
                    }
                    None => self.make_room(inputs, v),
                };
                self.push(v, b);
                all[b as usize] += 1;
                first[b as usize] += u32::from(k == 0);
            }
        }
    }

    /// The server with room for replica `k` of `v` (active on `a`, `j`th
    /// in its group) that keeps the spread lowest: min by (spread, all,
    /// Reverse(cap), rotation), packed into one integer; a plain loop, as
    /// this is the O(V·R·S) heart of the planner. `None` when every server
    /// with room already holds `v`.
    fn least_spread(
        &self,
        v: usize,
        a: usize,
        k: usize,
        j: usize,
        first: &[u32],
        all: &[u32],
    ) -> Option<usize> {
        let s_n = self.cap.len();
        let mut pick = None;
        let mut best = u128::MAX;
        for b in 0..s_n {
            let cap = self.cap[b];
            if cap == 0 || b == a {
                continue;
            }
            let spread = if k == 0 { first[b] } else { all[b] };
            let rotation = (b + 2 * s_n - a - 1 - j % s_n) % s_n;
            let key = (u128::from(spread) << 96)
                | (u128::from(all[b]) << 64)
                | (u128::from(u32::MAX - cap as u32) << 32)
                | rotation as u128;
            if key < best && !self.holds(v, b as u32) {
                best = key;
                pick = Some(b);
            }
        }
        pick
    }

    /// Stuck: every server with room already holds `v`. Shift other
    /// replicas out of the way along the cheapest kind of path, and return
    /// the server `v` takes: starting where `v` already has data saves `v`
    /// a copy; shifting a replica that is new anyway costs nothing,
    /// shifting one of a vbucket that changes anyway costs a copy, and
    /// shifting any other costs a copy and a move.
    fn make_room(&mut self, inputs: &ReplicaInputs<'_>, v: usize) -> u32 {
        let data = |b: u32| inputs.is_copy(v, b);
        let any = |_: u32| true;
        let fresh = |w: usize, y: u32| !inputs.is_copy(w, y);
        let cheap = |w: usize, y: u32| !inputs.is_copy(w, y) || !inputs.unchanged[w];
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
        let active = inputs.active;
        self.augment(v, active, &tiers).unwrap_or_else(|| {
            // Unreachable while the quotas respect the feasibility bound
            // (see the type doc); degrade to an over-quota server rather
            // than leave a chain short.
            (0..self.cap.len() as u32)
                .find(|&b| b != active[v] && !self.holds(v, b))
                .expect("r < number of servers")
        })
    }

    pub(super) fn of(&self, v: usize) -> &[u32] {
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

// === impl Tier, SpreadCounters ===

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

/// The spread counters of [`Replicas::fill`] for one batch of active
/// servers: row `i` belongs to the batch's `i`th active server, and holds,
/// per replica server `b`, how many of the replicas of its vbuckets sit on
/// `b` (`all`) and how many of those are first replicas (`first`).
struct SpreadCounters {
    /// Row length: the number of servers.
    s_n: usize,
    /// First replicas, row by row.
    first: Vec<u32>,
    /// All replicas, row by row.
    all: Vec<u32>,
}

impl SpreadCounters {
    /// Counters for batches of up to `batch` active servers.
    fn new(batch: usize, s_n: usize) -> Self {
        SpreadCounters {
            s_n,
            first: vec![0; batch * s_n],
            all: vec![0; batch * s_n],
        }
    }

    /// Count afresh the replicas assigned so far of each group's vbuckets.
    fn recount(&mut self, groups: &[Vec<usize>], state: &Replicas) {
        self.first.fill(0);
        self.all.fill(0);
        for (i, group) in groups.iter().enumerate() {
            let row = i * self.s_n;
            for &v in group {
                for (pos, &b) in state.of(v).iter().enumerate() {
                    self.all[row + b as usize] += 1;
                    self.first[row + b as usize] += u32::from(pos == 0);
                }
            }
        }
    }

    /// Row `i`, as `(first, all)`.
    fn row(&mut self, i: usize) -> (&mut [u32], &mut [u32]) {
        let row = i * self.s_n..(i + 1) * self.s_n;
        (&mut self.first[row.clone()], &mut self.all[row])
    }
}
