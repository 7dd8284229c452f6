//! [`FlushBarrier`]: `flush_all` in O(1), with memcached's `oldest_live`
//! semantics (`proto_text.c` `process_flush_all_command`, `items.c`
//! `item_is_flushed`). A flush at deadline `D` sets `oldest_live = D - 1`;
//! once `now >= oldest_live`, every item whose last change (`time`) is at or
//! before `oldest_live` is invisible. An immediate flush also records the
//! next CAS, hiding items written earlier in the same second. Nothing is
//! removed here: lookups treat flushed items as absent and the background
//! purge deletes them (queueing tombstones, so disk agrees).
//!
//! One deliberate difference: memcached keeps a single `oldest_live`, so a
//! delayed `flush_all` issued after an immediate one makes the flushed (but
//! not yet reclaimed) items visible again until its deadline. Here a flush
//! that has taken effect stays in effect; a later flush can only add to it.
//! A delayed flush that has not taken effect yet is replaced by a newer one,
//! as in memcached. Readers never lock: three atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The bucket's flush state.
#[derive(Debug, Default)]
pub(super) struct FlushBarrier {
    /// The union of every flush already in force: items changed at or
    /// before this second are flushed (0 = no flush yet).
    oldest_live: AtomicU32,
    /// Items with a non-zero CAS below this are flushed (0 = none): set by
    /// an immediate flush, which `time` alone cannot separate from writes
    /// later in the same second.
    oldest_cas: AtomicU64,
    /// A delayed flush's `oldest_live`, in force once `now` reaches it
    /// (0 = none pending).
    pending: AtomicU32,
    /// Serialises `flush_all` callers (rare); readers never take it.
    writer: Mutex<()>,
}

// === impl FlushBarrier ===

impl FlushBarrier {
    /// Whether an item last changed at `time` with `cas` is flushed at
    /// `now`.
    pub(super) fn is_flushed(&self, time: u32, cas: u64, now: u32) -> bool {
        let live = self.oldest_live.load(Ordering::Acquire);
        if live != 0 && time <= live {
            return true;
        }
        let oldest_cas = self.oldest_cas.load(Ordering::Acquire);
        if oldest_cas != 0 && cas != 0 && cas < oldest_cas {
            return true;
        }
        let pending = self.pending.load(Ordering::Acquire);
        pending != 0 && pending <= now && time <= pending
    }

    /// `flush_all` at `now`, taking effect at the absolute `deadline` (0 or
    /// not after `now + 1` = immediately, as memcached reads `flush_all 0`
    /// and `flush_all 1`; memcached ignores a past absolute deadline
    /// entirely, an accident this does not copy). `next_cas` is called for
    /// an immediate flush. Returns the effective deadline, for the caller
    /// to persist (`oldest_live + 1`).
    pub(super) fn flush(&self, deadline: u32, now: u32, next_cas: impl FnOnce() -> u64) -> u32 {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.promote_pending(now);
        let new_oldest = deadline.max(now).max(1);
        let live = new_oldest - 1;
        if live <= now {
            // In force at once. Raise the barrier before dropping any
            // pending flush, so a reader never sees less flushed than
            // before; `max` because the union of two flushes hides exactly
            // what either hides.
            self.oldest_live.fetch_max(live, Ordering::AcqRel);
            self.oldest_cas.fetch_max(next_cas(), Ordering::AcqRel);
            self.pending.store(0, Ordering::Release);
        } else {
            self.pending.store(live, Ordering::Release);
        }
        new_oldest
    }

    /// Restores a deadline persisted by an earlier run (warmup). The CAS
    /// part of an immediate flush is not restored: CAS values do not carry
    /// across restarts, so items written in the flush's own second before
    /// it reappear unless the background purge had already deleted them.
    pub(super) fn restore(&self, deadline: u32) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if deadline == 0 {
            return;
        }
        let live = deadline - 1;
        let pending = self.pending.load(Ordering::Acquire);
        if live > pending {
            self.pending.store(live, Ordering::Release);
        }
    }

    fn promote_pending(&self, now: u32) {
        let pending = self.pending.load(Ordering::Acquire);
        if pending != 0 && pending <= now {
            self.oldest_live.fetch_max(pending, Ordering::AcqRel);
            self.pending.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 1_800_000_000;

    #[test]
    fn nothing_is_flushed_before_any_flush() {
        let f = FlushBarrier::default();
        assert!(!f.is_flushed(0, 0, T));
        assert!(!f.is_flushed(T, 5, T));
    }

    #[test]
    fn immediate_flush_hides_earlier_writes_of_the_same_second() {
        let f = FlushBarrier::default();
        assert_eq!(f.flush(0, T, || 10), T);
        assert!(f.is_flushed(T - 1, 3, T));
        assert!(f.is_flushed(T, 9, T), "same second, older CAS");
        assert!(!f.is_flushed(T, 10, T), "written after the flush");
        assert!(!f.is_flushed(T + 1, 11, T + 1));
        // `flush_all 1` is immediate too: oldest_live = now.
        let f = FlushBarrier::default();
        assert_eq!(f.flush(T + 1, T, || 10), T + 1);
        assert!(f.is_flushed(T, 10, T), "oldest_live = T covers all of T");
    }

    #[test]
    fn delayed_flush_uses_oldest_live_exactly() {
        // memcached: `flush_all 10` at T → oldest_live = T + 9.
        let f = FlushBarrier::default();
        assert_eq!(f.flush(T + 10, T, || unreachable!()), T + 10);
        assert!(!f.is_flushed(T, 1, T + 8), "not in force before T+9");
        assert!(f.is_flushed(T, 1, T + 9), "in force at oldest_live");
        assert!(f.is_flushed(T + 9, 2, T + 9), "same-second writes too");
        assert!(!f.is_flushed(T + 10, 3, T + 10));
    }

    #[test]
    fn newer_delayed_flush_replaces_a_pending_one() {
        let f = FlushBarrier::default();
        f.flush(T + 10, T, || 1);
        f.flush(T + 100, T + 1, || 1);
        assert!(!f.is_flushed(T, 1, T + 50));
        assert!(f.is_flushed(T, 1, T + 99));
    }

    #[test]
    fn a_flush_in_force_is_never_undone() {
        // memcached regression: a delayed flush after an immediate one
        // would bring the immediately flushed items back.
        let f = FlushBarrier::default();
        f.flush(0, T, || 50);
        f.flush(T + 100, T + 1, || 60);
        assert!(f.is_flushed(T - 5, 3, T + 2));
        assert!(f.is_flushed(T, 49, T + 2));
        // And a delayed flush that took effect survives a later one.
        let f = FlushBarrier::default();
        f.flush(T + 10, T, || 1);
        f.flush(T + 100, T + 20, || 1);
        assert!(f.is_flushed(T + 5, 1, T + 20));
        assert!(!f.is_flushed(T + 15, 1, T + 20));
    }

    #[test]
    fn past_absolute_deadline_is_immediate() {
        let f = FlushBarrier::default();
        assert_eq!(f.flush(5, T, || 7), T);
        assert!(f.is_flushed(T - 1, 1, T));
    }

    #[test]
    fn restored_deadline_applies_by_time() {
        let f = FlushBarrier::default();
        f.restore(0);
        assert!(!f.is_flushed(1, 1, T));
        f.restore(T);
        assert!(f.is_flushed(T - 1, 1, T));
        assert!(!f.is_flushed(T, 1, T));
        f.restore(T - 100);
        assert!(
            f.is_flushed(T - 1, 1, T),
            "an older deadline never lowers it"
        );
    }
}
