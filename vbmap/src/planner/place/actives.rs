//! The active stage of [`place`](super::place): every vbucket's active,
//! within balanced shares and as close to the current map as they allow
//! (see the parent module doc).

use std::cmp::Reverse;

use super::{quotas, Copies, NONE};

/// The active stage's result: the active rank of every vbucket, and which
/// servers got the larger active quota.
pub(super) struct Actives {
    /// The active's rank, per vbucket.
    pub(super) server: Vec<u32>,
    /// Each server's active share.
    pub(super) quota: Vec<usize>,
}

/// Choose every vbucket's active (see the `place` module doc): actives within their
/// server's quota stay, a vbucket that must move is promoted where it has a
/// replica with room, and the rest are copied to the servers with the most
/// room.
pub(super) fn assign_actives(copies: &Copies, settled: &[bool], s_n: usize) -> Actives {
    let current: Vec<u32> = (0..copies.len()).map(|v| copies.chain(v)[0]).collect();
    let mut load = vec![0usize; s_n];
    for &a in current.iter().filter(|&&a| a != NONE) {
        load[a as usize] += 1;
    }
    let quota = active_quotas(copies, &current, &load);
    let mut draft = ActiveDraft {
        copies,
        deficit: (0..s_n).map(|s| quota[s].saturating_sub(load[s])).collect(),
        surplus: (0..s_n).map(|s| load[s].saturating_sub(quota[s])).collect(),
        server: current,
    };
    draft.promote_homeless();
    let owned = draft.shed_by_promotion(settled);
    draft.copy_remaining(&owned);
    Actives {
        server: draft.server,
        quota,
    }
}

/// Each server's active share, given the `current` active rank of every
/// vbucket ([`NONE`] when homeless) and the `load` it puts on each server.
fn active_quotas(copies: &Copies, current: &[u32], load: &[usize]) -> Vec<usize> {
    let s_n = load.len();
    // Replicas of homeless vbuckets, per server: where they can be
    // promoted.
    let mut promotable_here = vec![0usize; s_n];
    for v in (0..copies.len()).filter(|&v| current[v] == NONE) {
        for &c in copies.chain(v)[1..].iter().filter(|&&c| c != NONE) {
            promotable_here[c as usize] += 1;
        }
    }
    // Larger quotas to the most loaded servers: the surplus to shed is
    // then the least any balanced map needs. Among equals, to servers
    // that can promote the most homeless vbuckets instead of copying.
    quotas(copies.len(), s_n, |s| {
        (Reverse(load[s]), Reverse(promotable_here[s]), s)
    })
}

/// The active stage in progress.
struct ActiveDraft<'a> {
    /// The current map's copies.
    copies: &'a Copies,
    /// The active's rank, per vbucket; [`NONE`] while homeless.
    server: Vec<u32>,
    /// Actives each server may still take under its quota.
    deficit: Vec<usize>,
    /// Actives each server holds beyond its quota and has yet to shed.
    surplus: Vec<usize>,
}

impl ActiveDraft<'_> {
    /// The replica holder of `v` with the most room left, first in chain
    /// order on ties: promoting it costs no data copy.
    fn promotable(&self, v: usize) -> Option<u32> {
        self.copies.chain(v)[1..]
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c != NONE && self.deficit[c as usize] > 0)
            .max_by_key(|&(pos, &c)| (self.deficit[c as usize], Reverse(pos)))
            .map(|(_, &c)| c)
    }

    /// Make `b` the active of `v`, taking one of `b`'s places.
    fn set_active(&mut self, v: usize, b: u32) {
        self.server[v] = b;
        self.deficit[b as usize] -= 1;
    }

    /// Homeless vbuckets (no active, or an active on a leaving server)
    /// promote a replica where one has room.
    fn promote_homeless(&mut self) {
        for v in 0..self.server.len() {
            if self.server[v] == NONE {
                if let Some(b) = self.promotable(v) {
                    self.set_active(v, b);
                }
            }
        }
    }

    /// Over-quota servers shed unsettled vbuckets first, then lower
    /// vbucket ids; promotions first, taking turns so each over-quota
    /// server gets its share of the cheap moves. Returns each over-quota
    /// server's vbuckets in that order, for
    /// [`ActiveDraft::copy_remaining`] to shed what promotion could not.
    fn shed_by_promotion(&mut self, settled: &[bool]) -> Vec<Vec<usize>> {
        let s_n = self.surplus.len();
        let mut owned: Vec<Vec<usize>> = vec![Vec::new(); s_n];
        for (v, &a) in self.server.iter().enumerate() {
            if a != NONE && self.surplus[a as usize] > 0 {
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
                while self.surplus[s] > 0 && cursor[s] < owned[s].len() {
                    let v = owned[s][cursor[s]];
                    cursor[s] += 1;
                    if let Some(b) = self.promotable(v) {
                        self.set_active(v, b);
                        self.surplus[s] -= 1;
                        progressed = true;
                        break;
                    }
                }
            }
        }
        owned
    }

    /// Everything still to place (homeless, or the surplus left in `owned`)
    /// gets a fresh copy on the server with the most room; ties rotate with
    /// the vbucket id, which makes a fresh map round-robin.
    fn copy_remaining(&mut self, owned: &[Vec<usize>]) {
        let s_n = self.deficit.len();
        let mut to_place: Vec<usize> = (0..self.server.len())
            .filter(|&v| self.server[v] == NONE)
            .collect();
        for (s, list) in owned.iter().enumerate() {
            let shed = list
                .iter()
                .copied()
                .filter(|&v| self.server[v] == s as u32)
                .take(self.surplus[s]);
            to_place.extend(shed);
        }
        for v in to_place {
            let mut b = v % s_n;
            for i in 1..s_n {
                let c = (v + i) % s_n;
                if self.deficit[c] > self.deficit[b] {
                    b = c;
                }
            }
            debug_assert!(self.deficit[b] > 0, "quotas add up to the vbucket count");
            self.set_active(v, b as u32);
        }
    }
}
