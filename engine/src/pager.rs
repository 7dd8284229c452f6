//! Keeping memory under the quota: the item pager ejects the values of
//! clean items (metadata stays) — or, in an ephemeral (memcached) bucket,
//! evicts whole items, as memcached's LRU does — and the expiry purge
//! deletes expired and flushed items. The pager is a clock (second chance): a hand per vbucket
//! walks the table, clears the reference bit of items used since its last
//! pass and ejects those it finds unreferenced; the hands of replica (and
//! dead) vbuckets go first, as Couchbase ejects replica items first, then
//! those of active (and pending) ones. All work is bounded per call, one
//! vbucket lock at a time. Writes that find the quota full eject inline
//! through the same path before giving up with OutOfMemory.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::get::Miss;
use super::item::Item;
use super::memory::item_charge;
use super::vbucket::{VBucket, VbucketState};
use super::Bucket;
use crate::mutation::VbucketId;

/// Items a [`Bucket::run_pager`] call examines at most: a few milliseconds
/// of work, so a server can call it from a periodic task.
const PAGER_MAX_VISITS: usize = 100_000;

/// Items a write examines at most when ejecting inline: tens of
/// microseconds, paid only by writes that found the quota full.
const INLINE_MAX_VISITS: usize = 4_096;

/// An inline ejection frees at least this fraction of the quota (1/256),
/// not just what one write needs, so the writes that follow find room.
const INLINE_MIN_FRACTION: usize = 256;

/// What a [`Bucket::run_pager`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagerReport {
    /// Items examined.
    pub visited: usize,
    /// Values ejected.
    pub ejected: usize,
    /// Bytes those values held.
    pub freed_bytes: usize,
    /// Whole items evicted (ephemeral buckets only).
    pub evicted: usize,
    /// Dead (expired or flushed) items found and deleted on the way.
    pub purged: usize,
    /// Whether memory ended at or below the low watermark.
    pub below_low_watermark: bool,
}

/// What a [`Bucket::purge_expired`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Items examined.
    pub visited: usize,
    /// Expired items deleted.
    pub expired: usize,
    /// Flushed items deleted.
    pub flushed: usize,
}

/// Which turn of the pager a vbucket's values wait for: replica (and dead)
/// vbuckets first, then active (and pending) ones.
fn pager_phase(state: VbucketState) -> usize {
    match state {
        VbucketState::Replica | VbucketState::Dead => 0,
        VbucketState::Active | VbucketState::Pending => 1,
    }
}

/// One clock pass's parameters and tallies.
struct Sweep {
    /// Bytes still to free.
    want: usize,
    /// Items still allowed to examine.
    budget: usize,
    /// Values with a seqno above this are dirty.
    persisted: u64,
    /// Delete dead items at this time (active vbuckets, pager only).
    purge_at: Option<u32>,
    /// Evict whole items rather than eject values (ephemeral buckets).
    evict: bool,
    visited: usize,
    /// Bytes freed so far, ejected values and evicted items alike.
    freed: usize,
    ejected: usize,
    dead: Vec<Bytes>,
    /// Items chosen for eviction, removed once the sweep is over.
    victims: Vec<Bytes>,
    /// The part of `freed` those items hold (released by their removal).
    victim_bytes: usize,
}

impl Sweep {
    fn done(&self) -> bool {
        self.freed >= self.want || self.visited >= self.budget
    }
}

// === impl Bucket ===

impl Bucket {
    /// Whether memory is above the high watermark.
    pub fn needs_paging(&self) -> bool {
        self.mem.used() > self.mem.high()
    }

    /// Ejects clean values until memory is at the low watermark, or the
    /// call's work bound is spent (call again while
    /// [`needs_paging`](Bucket::needs_paging)). Dead items in active
    /// vbuckets are deleted on the way. Values that are not yet persisted
    /// are never ejected: without the flusher, nothing is freed.
    pub fn run_pager(&self, now: u32) -> PagerReport {
        let want = self.mem.used().saturating_sub(self.mem.low());
        let mut report = self.eject(want, PAGER_MAX_VISITS, Some(now));
        if self.mem.used() > self.mem.high() {
            // Ejection could not make room: what pins memory may be
            // mutations kept for replication cursors of slow or dead
            // replicas. Dropping those cursors turns their streams into
            // disk backfills, which cost no memory.
            self.drop_lagging_cursors(0);
        }
        report.below_low_watermark = self.mem.used() <= self.mem.low();
        report
    }

    /// A write found the quota `need` bytes short: eject a bounded amount
    /// (with no lock held) before it tries again.
    pub(super) fn eject_inline(&self, need: usize) {
        let want = need.max(self.mem.quota() / INLINE_MIN_FRACTION);
        self.eject(want, INLINE_MAX_VISITS, None);
    }

    fn eject(&self, want: usize, budget: usize, purge_at: Option<u32>) -> PagerReport {
        let mut report = PagerReport::default();
        let n = self.vbuckets.len();
        for (phase, cursor) in self.cursors.pager.iter().enumerate() {
            // Two turns of the clock: the first may only clear reference
            // bits, the second ejects what was not used in between.
            for _ in 0..2 * n {
                if report.freed_bytes >= want || report.visited >= budget {
                    return report;
                }
                let i = cursor.fetch_add(1, Ordering::Relaxed) % n;
                let Some(vbucket) = self.vbuckets.get(i) else {
                    continue;
                };
                if pager_phase(vbucket.state()) != phase {
                    continue;
                }
                let vb = VbucketId::try_from(i).unwrap_or(VbucketId::MAX);
                let sweep = Sweep {
                    want: want - report.freed_bytes,
                    budget: budget - report.visited,
                    persisted: 0,
                    purge_at,
                    evict: self.config.ephemeral,
                    visited: 0,
                    freed: 0,
                    ejected: 0,
                    dead: Vec::new(),
                    victims: Vec::new(),
                    victim_bytes: 0,
                };
                let (sweep, purged) = self.eject_from(vb, vbucket, sweep);
                report.visited += sweep.visited;
                report.freed_bytes += sweep.freed;
                report.ejected += sweep.ejected;
                report.evicted += sweep.victims.len();
                report.purged += purged;
            }
        }
        report
    }

    /// Runs the clock hand of one vbucket.
    fn eject_from(&self, vb: VbucketId, vbucket: &VBucket, mut sweep: Sweep) -> (Sweep, usize) {
        let mut inner = vbucket.lock();
        let len = inner.table.len();
        if len == 0 {
            return (sweep, 0);
        }
        if vbucket.state() != VbucketState::Active {
            sweep.purge_at = None; // only active vbuckets create mutations
        }
        sweep.persisted = inner.persisted_seqno;
        let start = if inner.pager_hand < len {
            inner.pager_hand
        } else {
            0
        };
        let mut hand = start + self.sweep(inner.table.iter_mut().skip(start), &mut sweep);
        if hand >= len && !sweep.done() {
            hand = self.sweep(inner.table.iter_mut().take(start), &mut sweep);
        }
        inner.pager_hand = hand;
        // Evicted items release their own bytes as they are removed.
        self.mem.release(sweep.freed - sweep.victim_bytes);
        self.stats.ep_num_value_ejects.add(sweep.ejected as u64);
        for key in &sweep.victims {
            // Nothing is queued for an ephemeral bucket, so the removal's
            // time stamps nothing.
            self.remove_item(vb, &mut inner, key, sweep.purge_at.unwrap_or(0));
        }
        self.stats.evictions.add(sweep.victims.len() as u64);
        let mut purged = 0;
        if let Some(now) = sweep.purge_at {
            for key in std::mem::take(&mut sweep.dead) {
                if self.remove_item(vb, &mut inner, &key, now).is_some() {
                    purged += 1;
                }
            }
            self.stats.ep_expired_pager.add(purged as u64);
        }
        (sweep, purged)
    }

    /// Examines items until the sweep is done; returns how many.
    fn sweep<'a>(
        &self,
        items: impl Iterator<Item = (&'a Bytes, &'a mut Item)>,
        sweep: &mut Sweep,
    ) -> usize {
        let mut examined = 0;
        for (key, item) in items {
            if sweep.done() {
                break;
            }
            examined += 1;
            sweep.visited += 1;
            if let Some(now) = sweep.purge_at {
                if self.death(item, now).is_some() {
                    sweep.dead.push(key.clone());
                    continue;
                }
            }
            if !sweep.evict && (item.value.is_none() || item.seqno > sweep.persisted) {
                continue; // ejected already, or dirty
            }
            if item.referenced {
                item.referenced = false;
                continue;
            }
            if sweep.evict {
                let bytes = item_charge(key.len(), item.resident_len());
                sweep.freed += bytes;
                sweep.victim_bytes += bytes;
                sweep.victims.push(key.clone());
                continue;
            }
            if let Some(value) = item.value.take() {
                sweep.freed += value.len();
                sweep.ejected += 1;
            }
        }
        examined
    }

    /// Deletes expired and flushed items of active vbuckets, examining
    /// about `budget` items (whole vbuckets, from where the last call
    /// stopped). Each deletion queues a tombstone, so disk never brings the
    /// item back.
    pub fn purge_expired(&self, now: u32, budget: usize) -> PurgeReport {
        let mut report = PurgeReport::default();
        let n = self.vbuckets.len();
        for _ in 0..n {
            if report.visited >= budget {
                break;
            }
            let i = self.cursors.purge.fetch_add(1, Ordering::Relaxed) % n;
            let Some(vbucket) = self.vbuckets.get(i) else {
                continue;
            };
            if vbucket.state() != VbucketState::Active {
                continue;
            }
            let mut inner = vbucket.lock();
            if vbucket.state() != VbucketState::Active {
                continue;
            }
            report.visited += inner.table.len();
            let dead: Vec<(Bytes, Miss)> = inner
                .table
                .iter()
                .filter_map(|(k, it)| Some((k.clone(), self.death(it, now)?)))
                .collect();
            let vb = VbucketId::try_from(i).unwrap_or(VbucketId::MAX);
            for (key, miss) in dead {
                if self.remove_item(vb, &mut inner, &key, now).is_none() {
                    continue;
                }
                match miss {
                    Miss::Flushed => report.flushed += 1,
                    _ => report.expired += 1,
                }
                self.stats.ep_expired_pager.incr();
            }
        }
        report
    }

    /// Ejects every clean value, ignoring reference bits (tests).
    #[cfg(test)]
    pub(super) fn eject_all_clean(&self) -> usize {
        self.eject(usize::MAX, usize::MAX, None).ejected
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bucket_with_quota, set_in, NOW};
    use super::super::{EngineError, Lookup};
    use super::*;

    fn persist_all(b: &Bucket) {
        for m in b.drain(usize::MAX) {
            b.mark_persisted(m.vbucket, m.seqno);
        }
    }

    #[test]
    fn only_clean_values_are_ejected_and_metadata_stays() {
        let b = bucket_with_quota(1 << 20);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        let m = set_in(&b, 0, "clean", "v");
        persist_all(&b);
        set_in(&b, 0, "dirty", "w");
        assert_eq!(b.eject_all_clean(), 1);
        assert_eq!(
            b.get(0, b"clean", NOW),
            Ok(Lookup::Ejected {
                cas: m.cas,
                flags: 0,
                exptime: 0,
                seqno: m.seqno
            })
        );
        assert!(b.get(0, b"dirty", NOW).unwrap().hit().is_some());
        assert_eq!(b.curr_items(), 2);
        assert!(b.stats().contains(&("ep_num_value_ejects", 1)));
        b.assert_accounting();
    }

    #[test]
    fn referenced_items_get_a_second_chance() {
        let b = bucket_with_quota(1 << 20);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        set_in(&b, 0, "k", "v");
        persist_all(&b);
        let one_turn = b.eject(usize::MAX, 1, None);
        assert_eq!((one_turn.visited, one_turn.ejected), (1, 0), "bit cleared");
        let next = b.eject(usize::MAX, 1, None);
        assert_eq!(next.ejected, 1, "not used since: ejected");
    }

    #[test]
    fn replicas_are_ejected_first() {
        let b = bucket_with_quota(1 << 20);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        b.set_vbucket_state(1, VbucketState::Active).unwrap();
        for i in 0..20 {
            set_in(&b, 0, &format!("a{i}"), "0123456789");
            set_in(&b, 1, &format!("r{i}"), "0123456789");
        }
        persist_all(&b);
        b.set_vbucket_state(1, VbucketState::Replica).unwrap();
        let report = b.eject(100, usize::MAX, None);
        assert_eq!(report.freed_bytes, 100);
        assert_eq!(b.get(0, b"a0", NOW).map(|l| l.hit().is_some()), Ok(true));
        let replica_resident = (0..20)
            .filter(|i| {
                matches!(
                    b.get_replica(1, format!("r{i}").as_bytes(), NOW),
                    Ok(Lookup::Hit(_))
                )
            })
            .count();
        assert_eq!(replica_resident, 10);
    }

    #[test]
    fn pager_runs_down_to_the_low_watermark() {
        let b = bucket_with_quota(200_000);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        let mut i = 0;
        while !b.needs_paging() {
            set_in(&b, 0, &format!("k{i}"), &"x".repeat(1000));
            i += 1;
        }
        let dirty = b.run_pager(NOW);
        assert_eq!(dirty.ejected, 0, "nothing persisted, nothing ejected");
        assert!(!dirty.below_low_watermark);
        persist_all(&b);
        let report = b.run_pager(NOW);
        assert!(report.below_low_watermark, "{report:?}");
        assert!(!b.needs_paging());
        assert!(b.mem_used() <= b.config().quota_bytes * 3 / 4);
        b.assert_accounting();
    }

    #[test]
    fn purge_deletes_expired_and_flushed_items_with_tombstones() {
        let b = bucket_with_quota(1 << 20);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        b.set_vbucket_state(1, VbucketState::Replica).unwrap();
        super::super::tests::set_with(&b, "e", "v", 0, NOW + 1);
        set_in(&b, 0, "live", "v");
        persist_all(&b);
        let report = b.purge_expired(NOW + 1, usize::MAX);
        assert_eq!((report.expired, report.flushed), (1, 0));
        b.flush_all(0, NOW + 2).unwrap();
        let report = b.purge_expired(NOW + 2, usize::MAX);
        assert_eq!((report.expired, report.flushed), (0, 1));
        assert_eq!(b.curr_items(), 0);
        let tombstones = b.drain(10);
        assert_eq!(tombstones.len(), 2);
        assert!(tombstones
            .iter()
            .all(|m| m.kind == crate::MutationKind::Delete));
        assert_eq!(b.get(0, b"live", NOW + 2), Err(EngineError::NotFound));
        b.assert_accounting();
    }

    #[test]
    fn ephemeral_buckets_evict_whole_items_and_queue_nothing() {
        let b = Bucket::try_new(super::super::EngineConfig {
            num_vbuckets: 1,
            quota_bytes: 200_000,
            ephemeral: true,
            ..super::super::EngineConfig::default()
        })
        .unwrap();
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        // Far more than fits: writes evict inline instead of failing.
        for i in 0..2_000 {
            set_in(&b, 0, &format!("k{i}"), &"x".repeat(1000));
        }
        assert_eq!(b.queue_len(), 0, "nothing is queued");
        assert!(b.drain(usize::MAX).is_empty());
        assert!(b.curr_items() < 2_000);
        assert!(b.mem_used() <= b.config().quota_bytes);
        assert!(b.get(0, b"k1999", NOW).unwrap().hit().is_some());
        assert_eq!(b.get(0, b"k0", NOW), Err(EngineError::NotFound));
        let evicted = b
            .stats()
            .iter()
            .find(|(name, _)| *name == "evictions")
            .map_or(0, |s| s.1);
        assert_eq!(evicted as usize, 2_000 - b.curr_items());
        if b.needs_paging() {
            let report = b.run_pager(NOW);
            assert!(report.evicted > 0 && report.ejected == 0, "{report:?}");
        }
        assert!(!b.needs_paging());
        b.assert_accounting();
    }

    #[test]
    fn pager_deletes_dead_items_it_meets() {
        let b = bucket_with_quota(1 << 20);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        super::super::tests::set_with(&b, "e", "v", 0, NOW + 1);
        let report = b.eject(usize::MAX, usize::MAX, Some(NOW + 1));
        assert_eq!(report.purged, 1);
        assert_eq!(b.curr_items(), 0);
        b.assert_accounting();
    }
}
