//! Bucket-wide commands: vbucket states (SET_VBUCKET, GET_VBUCKET, `stats
//! vbucket`), DEL_VBUCKET, `flush_all`, and `stats`. A state change takes
//! the vbucket's lock, so it is ordered with every operation on that
//! vbucket: once `set_vbucket_state` returns, no request still runs against
//! the old state.

use std::sync::atomic::Ordering;

use super::vbucket::VbucketState;
use super::{Bucket, EngineError};
use crate::mutation::VbucketId;

// === impl Bucket ===

impl Bucket {
    /// SET_VBUCKET. NOT_MY_VBUCKET for an id beyond `num_vbuckets`.
    /// Allowed during warmup (the server restores states first). A
    /// vbucket that becomes active starts a new history: a failover log
    /// entry at its high seqno.
    pub fn set_vbucket_state(&self, vb: VbucketId, state: VbucketState) -> Result<(), EngineError> {
        let vbucket = self.vbucket(vb)?;
        let mut inner = vbucket.lock();
        if state == VbucketState::Active && vbucket.state() != VbucketState::Active {
            Bucket::new_failover_entry(&mut inner);
        }
        let changed = vbucket.state() != state;
        vbucket.set_state(&mut inner, state);
        if changed {
            // Streams of this vbucket learn of the change at once (a
            // dead vbucket ends its streams).
            inner.wake_cursors();
        }
        Ok(())
    }

    /// GET_VBUCKET; `None` beyond `num_vbuckets`.
    pub fn vbucket_state(&self, vb: VbucketId) -> Option<VbucketState> {
        self.vbucket(vb).ok().map(|v| v.state())
    }

    /// Every vbucket that is not dead, with its state (`stats vbucket`).
    pub fn vbucket_states(&self) -> Vec<(VbucketId, VbucketState)> {
        (0..self.vbuckets.len())
            .filter_map(|i| {
                let vb = VbucketId::try_from(i).ok()?;
                let state = self.vbucket_state(vb)?;
                (state != VbucketState::Dead).then_some((vb, state))
            })
            .collect()
    }

    /// DEL_VBUCKET: marks `vb` dead and drops its items and its queued
    /// mutations; returns how many items were dropped. Nothing is queued:
    /// the caller then tells the store to drop the vbucket's range (and
    /// whatever the flusher writes for it meanwhile is dropped with it).
    /// Seqnos carry on from where they were, so a late persisted report
    /// about the old contents cannot mark new items clean; the history
    /// (failover log) goes with the data, so a replica stream can never
    /// resume the empty vbucket from its old seqno — its active answers
    /// "rollback" to a request on no branch. Couchbase refuses to delete an
    /// active vbucket; that policy is the caller's.
    pub fn delete_vbucket(&self, vb: VbucketId) -> Result<usize, EngineError> {
        let vbucket = self.vbucket(vb)?;
        let mut inner = vbucket.lock();
        vbucket.set_state(&mut inner, VbucketState::Dead);
        let cleared = inner.forget();
        drop(inner);
        self.uncharge(cleared);
        Ok(cleared.0)
    }

    /// Takes what a cleared vbucket held — `(items, queued mutations,
    /// bytes charged)` — off the bucket's totals.
    pub(super) fn uncharge(&self, (items, queued, released): (usize, usize, usize)) {
        self.mem.release(released);
        self.items.fetch_sub(items, Ordering::Relaxed);
        self.queued.fetch_sub(queued, Ordering::Relaxed);
    }

    /// `flush_all`: at the absolute `deadline` (unix seconds; 0, or not
    /// after `now + 1`, = immediately — resolve a client's delay with
    /// [`resolve_exptime`](super::resolve_exptime), as memcached does),
    /// every item last changed before it becomes invisible, in O(1); the
    /// background purge then deletes them. Returns the effective deadline
    /// for the caller to persist and pass to
    /// [`Bucket::load_flush_deadline`] at the next warmup.
    pub fn flush_all(&self, deadline: u32, now: u32) -> Result<u32, EngineError> {
        if self.is_warming_up() {
            return Err(EngineError::TempFail);
        }
        self.stats.cmd_flush.incr();
        Ok(self.flush.flush(deadline, now, || self.next_cas()))
    }

    /// Every stat the engine keeps, with memcached/Couchbase names.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let mut stats = vec![
            ("curr_items", as_u64(self.curr_items())),
            ("mem_used", as_u64(self.mem.used())),
            ("ep_queue_size", as_u64(self.queue_len())),
            ("ep_max_data_size", as_u64(self.mem.quota())),
            ("ep_mem_high_wat", as_u64(self.mem.high())),
            ("ep_mem_low_wat", as_u64(self.mem.low())),
        ];
        stats.extend(self.stats.counters());
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, get_value, set, set_at, NOW};
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn requests_to_a_vbucket_not_active_here() {
        let b = active_bucket();
        set(&b, "k", "v");
        for state in [
            VbucketState::Replica,
            VbucketState::Pending,
            VbucketState::Dead,
        ] {
            b.set_vbucket_state(0, state).unwrap();
            assert_eq!(b.vbucket_state(0), Some(state));
            assert_eq!(b.get(0, b"k", NOW), Err(EngineError::NotMyVbucket));
            assert_eq!(b.delete(0, b"k", 0, NOW), Err(EngineError::NotMyVbucket));
            assert_eq!(b.touch(0, b"k", 0, NOW), Err(EngineError::NotMyVbucket));
        }
        assert_eq!(b.get(60_000, b"k", NOW), Err(EngineError::NotMyVbucket));
        assert_eq!(
            b.set_vbucket_state(60_000, VbucketState::Active),
            Err(EngineError::NotMyVbucket)
        );
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        assert_eq!(
            get_value(&b, "k"),
            Some("v".into()),
            "data kept across states"
        );
        assert!(b.stats().contains(&("ep_num_not_my_vbuckets", 10)));
        assert_eq!(b.vbucket_states(), vec![(0, VbucketState::Active)]);
    }

    #[test]
    fn warmup_answers_temp_fail_never_not_my_vbucket() {
        let b = active_bucket();
        b.set_warming_up(true);
        assert!(b.is_warming_up());
        assert_eq!(b.get(0, b"k", NOW), Err(EngineError::TempFail));
        assert_eq!(
            b.get(5, b"k", NOW),
            Err(EngineError::TempFail),
            "dead vbucket"
        );
        assert_eq!(b.get(60_000, b"k", NOW), Err(EngineError::TempFail));
        assert_eq!(b.flush_all(0, NOW), Err(EngineError::TempFail));
        b.set_warming_up(false);
        assert_eq!(b.get(0, b"k", NOW), Err(EngineError::NotFound));
    }

    #[test]
    fn delete_vbucket_drops_everything_and_queues_nothing() {
        let b = active_bucket();
        set(&b, "a", "1");
        set(&b, "b", "2");
        b.drain(1);
        assert!(!b.failover_log(0).is_empty());
        assert_eq!(b.delete_vbucket(0), Ok(2));
        assert_eq!(b.vbucket_state(0), Some(VbucketState::Dead));
        assert_eq!(b.failover_log(0), vec![], "the history goes with the data");
        assert_eq!((b.curr_items(), b.queue_len(), b.mem_used()), (0, 0, 0));
        assert!(b.drain(10).is_empty());
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        assert_eq!(b.get(0, b"a", NOW), Err(EngineError::NotFound));
        assert_eq!(set(&b, "a", "3").seqno, 3, "seqnos carry on");
        b.mark_persisted(0, 2);
        assert_eq!(b.persisted_seqno(0), Some(2));
        b.assert_accounting();
    }

    #[test]
    fn flush_all_now_and_with_delay() {
        let b = active_bucket();
        set_at(&b, "old", "1", NOW - 1);
        set_at(&b, "same_second", "2", NOW);
        assert_eq!(b.flush_all(0, NOW), Ok(NOW));
        assert_eq!(b.get(0, b"old", NOW), Err(EngineError::NotFound));
        assert_eq!(b.get(0, b"same_second", NOW), Err(EngineError::NotFound));
        set_at(&b, "after", "3", NOW);
        assert!(b.get(0, b"after", NOW).is_ok(), "written after the flush");
        // flush_all 10 at NOW+1: memcached sets oldest_live = NOW+10.
        assert_eq!(b.flush_all(NOW + 11, NOW + 1), Ok(NOW + 11));
        assert!(b.get(0, b"after", NOW + 9).is_ok());
        set_at(&b, "at_oldest_live", "4", NOW + 10);
        assert_eq!(b.get(0, b"after", NOW + 10), Err(EngineError::NotFound));
        assert_eq!(
            b.get(0, b"at_oldest_live", NOW + 10),
            Err(EngineError::NotFound)
        );
        set_at(&b, "later", "5", NOW + 11);
        assert!(b.get(0, b"later", NOW + 11).is_ok());
        let stats = b.stats();
        assert!(stats.contains(&("get_flushed", 4)) && stats.contains(&("cmd_flush", 2)));
    }

    #[test]
    fn stat_names_are_unique() {
        let stats = active_bucket().stats();
        let names: HashSet<_> = stats.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), stats.len());
        for name in [
            "curr_items",
            "mem_used",
            "ep_queue_size",
            "evictions",
            "total_items",
        ] {
            assert!(names.contains(name), "{name}");
        }
    }
}
